"""Benchmark: a structure port against a plain ``load_state_dict`` of the same weights, in one run.

Run:  .venv/bin/python bench/bench_port.py [--repeat 7] [--threads 2]

For each pair (torchvision resnet50 -> timm resnet50 at 64x64; timm vit_base_patch16_224 -> HF ViT
base at 224x224) the baseline loads the *already renamed* state_dict into the target with
``load_state_dict`` (what a hand-written key map costs); torchsmith's ``load_weights(...,
match="structure")`` traces the source on the check input (its output is the check's reference),
takes the target's graph cheaply (a crop of the input or the meta device), pairs the tensors,
applies equivalences (fused qkv for ViT), runs the target with the ported tensors for the
numerical check and copies them in. The ratio is port time / baseline time.

The goal (issue 24) is restated from the floor: a proven port costs at most the floor (one forward
of each model plus the copy) + 50 %, so ``port / floor`` is printed with the goal's verdict. A
port from the *state_dict* (``sd port``, with ``source_model=`` naming its architecture: a
resnet50 state_dict also fits timm's resnetblur50, so it is not guessed) builds that architecture
with random weights and loads the state_dict into it (what a proof needs), so its row shows what
that adds.

Also printed, from the same interleaved repeats: one plain forward of each model on the check
input, and the floor of any port proven by running both models (source forward + target forward
+ the copy that ``load_state_dict`` is) as a ratio to the baseline. Timings swing with machine
load; every figure is a median of repeats interleaved with the baseline's.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import timm
import torch
import torchvision

from torchsmith.transfer import load_weights
from torchsmith.zoo import create_model


def _interleaved(fns: dict[str, Callable[[], object]], repeat: int) -> dict[str, float]:
    """Median seconds of each function, the repeats interleaved so machine load hits all alike."""
    for fn in fns.values():
        fn()  # warm-up
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def bench(name: str, source, target, x, repeat: int, source_name: str) -> None:
    report = load_weights(target, source, match="structure", example_input=x)
    renamed = {t: source.state_dict()[s] for t, s in ((e["key"], e["source_key"]) for e in report.loaded)}
    # the baseline gets the equivalences for free: the values the port computed, under target names
    full = {k: v.clone() for k, v in target.state_dict().items()}
    full.update({k: v for k, v in renamed.items() if v.shape == full[k].shape})

    def forward(model):
        def run():
            with torch.no_grad():
                model(x)

        return run

    target.eval()
    sd = source.state_dict()
    t = _interleaved(
        {
            "base": lambda: target.load_state_dict(full),
            "port": lambda: load_weights(target, source, match="structure", example_input=x),
            "sd port": lambda: load_weights(
                target, sd, match="structure", example_input=x, source_model=source_name
            ),
            "src": forward(source),
            "tgt": forward(target),
        },
        repeat,
    )
    floor = t["src"] + t["tgt"] + t["base"]
    print(
        f"{name:<36} load_state_dict {t['base'] * 1e3:7.1f} ms   structure port {t['port'] * 1e3:7.1f} ms   "
        f"ratio {t['port'] / t['base']:5.2f}x\n"
        f"{'':<36} forward source {t['src'] * 1e3:7.1f} ms, target {t['tgt'] * 1e3:7.1f} ms   "
        f"floor (both forwards + load) {floor / t['base']:5.2f}x   "
        f"port - floor {(t['port'] - floor) * 1e3:6.1f} ms\n"
        f"{'':<36} port / floor {t['port'] / floor:5.2f} (goal <= 1.50: "
        f"{'met' if t['port'] <= 1.5 * floor else 'NOT met'})   from the state_dict "
        f"{t['sd port'] * 1e3:7.1f} ms = {t['sd port'] / floor:5.2f} x floor"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=7)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--only", choices=["resnet50", "vit_base"], help="run one pair")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.2f}")
    torch.manual_seed(0)
    if args.only in (None, "resnet50"):
        bench(
            "resnet50 torchvision -> timm (64x64)",
            torchvision.models.resnet50().eval(),
            timm.create_model("resnet50"),
            torch.randn(1, 3, 64, 64),
            args.repeat,
            "torchvision:resnet50",
        )
    if args.only in (None, "vit_base"):
        bench(
            "vit_base timm -> HF ViT (224x224)",
            timm.create_model("vit_base_patch16_224").eval(),
            create_model("hf:vit-base/image-classification"),
            torch.randn(1, 3, 224, 224),
            args.repeat,
            "timm:vit_base_patch16_224",
        )
    print(f"load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
