"""S15: transfer learning by keeping the matching keys -- and seed trap 5 made loud.

The seed (001) saves ``net.state_dict()``, loads it, keeps the keys the new net also has, and
``update``s the new net's state dict -- then never calls ``load_state_dict``. ``state_dict()``
returns a fresh dict, so the update changes nothing and the "fine-tuned" net keeps its random
weights, silently (trap 5). ``torchsmith.load_weights`` does the whole job in one call, returns a
report of what was loaded, adapted, skipped and missing, and raises when nothing was loaded or the
file is another architecture (``allow_partial=True`` keeps the matching keys on purpose).

Run: ``python examples/transfer/s15_transfer_learning.py``
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch


def main(image_size: int = 64) -> dict:
    import importlib.util

    spec = importlib.util.spec_from_file_location("s14", Path(__file__).with_name("s14_init_weights.py"))
    s14 = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(s14)
    Net = s14.Net

    import torchsmith
    from torchsmith import InitRule, init_weights, load_weights

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "net_weights.pkl"
        net = Net(image_size)
        # (pretend it was trained) save the parameters, as the seed does
        torch.save(net.state_dict(), path)

        # --- the seed's code: trap 5 ---
        pretrained_params = torch.load(path, weights_only=True)
        net2 = Net(image_size)
        net_state_dict = net2.state_dict()
        pre_dict = {k: v for k, v in pretrained_params.items() if k in net_state_dict}
        net_state_dict.update(pre_dict)
        seed_loaded = torch.equal(net2.conv1.weight, net.conv1.weight)
        print(f"seed's update() without load_state_dict(): weights loaded = {seed_loaded}")

        # --- torchsmith: one call and a report ---
        net3 = Net(image_size, num_classes=10)  # a new task: 10 classes instead of 101
        report = load_weights(net3, path)  # .pkl read safely (no arbitrary unpickling)
        print(report)
        loaded = torch.equal(net3.conv1.weight, net.conv1.weight)

        # the new head gets a fresh init; loaded weights are never overwritten (skip=report)
        init_report = init_weights(net3, [InitRule("normal", type="Linear", std=0.01)], skip=report, seed=0)
        print(init_report)

        # another architecture (a bigger image: fc1 takes more inputs) is refused, not half-loaded
        # silently; the seed's "keep the keys both have" is one explicit word: allow_partial=True
        try:
            load_weights(Net(image_size * 2), path)
            partial_refused = ""
        except torchsmith.TransferError as e:
            partial_refused = str(e)
            print(f"refused: {partial_refused}")
        partial = load_weights(Net(image_size * 2), path, allow_partial=True)
        print(partial.summary())

        # a load that takes nothing raises instead of passing silently
        try:
            load_weights(Net(image_size), {"backbone.conv.weight": torch.zeros(1)})
            refused = ""
        except torchsmith.TransferError as e:
            refused = str(e)
            print(f"refused: {refused}")
    return {
        "seed_loaded": seed_loaded,
        "torchsmith_loaded": loaded,
        "skipped": [e["key"] for e in report.skipped_shape],
        "fraction": report.fraction,
        "head_rule": init_report.rule_of("fc3.weight"),
        "conv1_skipped": "conv1.weight" in init_report.skipped,
        "still_loaded": torch.equal(net3.conv1.weight, net.conv1.weight),
        "refused": refused,
        "partial_refused": partial_refused,
        "partial_skipped": [e["key"] for e in partial.skipped_shape],
    }


if __name__ == "__main__":
    main()
