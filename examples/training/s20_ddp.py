"""S20: the same recipe on one process and on two, through torch.distributed (DDP, gloo on the CPU).

Seed 004 (§2.3) names data parallelism with ``nn.DataParallel``. torchsmith uses
``DistributedDataParallel`` under ``torchrun`` instead: one process per device, gloo on CPUs, NCCL on
GPUs, a distributed sampler, rank-0 logging and checkpoints. ``data.batch_size`` is the *global*
batch, split evenly over the processes, so both runs below take the same optimisation steps and end
with the same weights (up to float summation order).

    .venv/bin/python examples/training/s20_ddp.py

The launch line it runs, which is what you would type (GPUs: the same, one process per GPU)::

    torchrun --standalone --nproc_per_node=2 -m torchsmith train recipe.yaml --out runs/ddp

Across machines, torchrun's rendezvous flags (run on every node)::

    torchrun --nnodes=2 --nproc_per_node=8 --rdzv_backend=c10d --rdzv_endpoint=HOST:29400 \\
             --rdzv_id=job42 -m torchsmith train recipe.yaml
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import yaml

RECIPE = {
    "name": "s20",
    # the seed's simple CNN `Net` (S5) from the zoo, for 1-channel 32x32 digits
    "model": {"name": "simple_cnn", "kwargs": {"num_classes": 10, "in_chans": 1, "pool_size": 5}},
    "data": {"kind": "digits", "channels": 1, "image_size": 32, "batch_size": 64, "limit": 1600,
             "val_fraction": 0.2},
    "optimizer": {"name": "Adam", "lr": 0.002},
    "train": {"epochs": 3, "progress": False, "threads": 1},
}  # fmt: skip


def main() -> None:
    from torchsmith.training import train
    from torchsmith.training.checkpointing import load_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        path = tmp / "recipe.yaml"
        path.write_text(yaml.safe_dump(RECIPE))
        launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
        cmd = [*launch, "-m", "torchsmith", "train", str(path), "--out", str(tmp / "ddp"), "--quiet"]
        print("$", " ".join(cmd[2:]))
        subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        one = train(path, out=tmp / "single", log=None)
        two = load_checkpoint(tmp / "ddp" / "last.pt")
        # (a model with BatchNorm would differ: each process normalises its half of the batch)
        worst = max((two["model"][k] - v).abs().max().item() for k, v in one.model.state_dict().items())
        print(
            f"2 processes: {two['step']} steps, world size {two['world_size']}; 1 process: {one.steps} steps"
        )
        print(
            f"largest weight difference between the two runs: {worst:.2e} "
            f"(float summation order, grown over {one.steps} Adam steps)"
        )
        print(
            f"held-out accuracy: 2 processes {json.loads(two['history'])[-1]['val_acc']:.3f}, "
            f"1 process {one.val_acc:.3f}"
        )


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
