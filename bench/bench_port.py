"""Benchmark: a structure port against a plain ``load_state_dict`` of the same weights, in one run.

Run:  .venv/bin/python bench/bench_port.py [--repeat 3] [--threads 2]

For each pair (torchvision resnet50 -> timm resnet50 at 64x64; timm vit_base_patch16_224 -> HF ViT
base at 224x224) the baseline loads the *already renamed* state_dict into the target with
``load_state_dict`` (what a hand-written key map costs); torchsmith's ``load_weights(...,
match="structure")`` traces both dataflow graphs, pairs the tensors, applies equivalences (fused
qkv for ViT), copies and runs the numerical check (one forward of each model). The ratio is
port time / baseline time; the goal is <= 3x on the CPU.
"""

from __future__ import annotations

import argparse
import statistics
import time

import timm
import torch
import torchvision

from torchsmith.transfer import load_weights
from torchsmith.zoo import create_model


def _median(fn, repeat: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def bench(name: str, source, target, x, repeat: int) -> None:
    report = load_weights(target, source, match="structure", example_input=x)
    renamed = {t: source.state_dict()[s] for t, s in ((e["key"], e["source_key"]) for e in report.loaded)}
    # the baseline gets the equivalences for free: the values the port computed, under target names
    full = {k: v.clone() for k, v in target.state_dict().items()}
    full.update({k: v for k, v in renamed.items() if v.shape == full[k].shape})
    base = _median(lambda: target.load_state_dict(full), repeat)
    port = _median(lambda: load_weights(target, source, match="structure", example_input=x), repeat)
    print(
        f"{name:<36} load_state_dict {base * 1e3:8.1f} ms   structure port {port * 1e3:8.1f} ms   "
        f"ratio {port / base:5.2f}x"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    bench(
        "resnet50 torchvision -> timm (64x64)",
        torchvision.models.resnet50().eval(),
        timm.create_model("resnet50"),
        torch.randn(1, 3, 64, 64),
        args.repeat,
    )
    bench(
        "vit_base timm -> HF ViT (224x224)",
        timm.create_model("vit_base_patch16_224").eval(),
        create_model("hf:vit-base/image-classification"),
        torch.randn(1, 3, 224, 224),
        args.repeat,
    )


if __name__ == "__main__":
    main()
