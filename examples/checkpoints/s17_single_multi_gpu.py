"""S17: the four single/multi-device save/load combinations, for weights and whole models.

Multi-GPU training wraps the model (``nn.DataParallel`` or DDP), which prefixes every key with
``module.``; a whole-model pickle of a wrapper also stores its device ids. The seeds strip or add
the prefix by hand (once with a typo, ``'modeule.'``: trap 4). torchsmith fits wrapper prefixes
automatically both ways and reads GPU-saved tensors on a CPU-only machine.

This runs on a CPU: ``nn.DataParallel`` without GPUs and a one-process gloo DDP group produce the
same ``module.``-prefixed files a multi-GPU run does.

Run:  python examples/checkpoints/s17_single_multi_gpu.py [OUTDIR]
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn

import torchsmith


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    single = torchsmith.create_model("mlp").eval()
    x = torch.randn(4, 1, 28, 28)
    expected = single(x)
    multi = nn.DataParallel(single)  # "multi-GPU" model: keys become module.*

    rendezvous = out / "rendezvous"
    rendezvous.unlink(missing_ok=True)
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=0, world_size=1)
    ddp = nn.parallel.DistributedDataParallel(single)

    saved = {
        "single": single.state_dict(),
        "dataparallel": multi.state_dict(),
        "ddp": ddp.state_dict(),
    }
    for name, sd in saved.items():
        torch.save(sd, out / f"{name}.pth")
        print(f"saved {name:13s} first key: {next(iter(sd))}")

    # Load each into a single-device model and into a multi-device (wrapped) model: 3 x 2 cases.
    for name in saved:
        for target_kind in ("single", "multi"):
            fresh = torchsmith.create_model("mlp")
            target = fresh if target_kind == "single" else nn.DataParallel(fresh)
            report = torchsmith.load_weights(target, out / f"{name}.pth", strict=True)
            assert torch.equal(fresh.eval()(x), expected)
            print(f"{name:13s} -> {target_kind:6s} model: {report.summary()[:60]}")

    # Whole models: a pickled DataParallel stores device ids and the wrapper itself.
    torch.save(multi, out / "whole_multi.pkl")
    rescued = torchsmith.read_state_dict(out / "whole_multi.pkl")  # no trust needed for the tensors
    print("whole_multi.pkl rescued keys:", list(rescued)[:2], "...")
    whole = torchsmith.load_model(out / "whole_multi.pkl", trust_pickle=True)  # unwrapped to the plain model
    assert not isinstance(whole, nn.DataParallel) and torch.equal(whole.eval()(x), expected)

    # torchsmith.save unwraps: the file has plain keys whatever wrapped the model.
    path = torchsmith.save(ddp, out / "from_ddp.safetensors")
    print("torchsmith.save(ddp) keys:", torchsmith.inspect_checkpoint(path)["keys"][:2])
    assert torch.allclose(
        torchsmith.load_model(path).eval()(x), expected, rtol=1e-5, atol=1e-6
    )  # weights mapped from the file
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp()))
