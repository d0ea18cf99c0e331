"""Benchmark: what surgery's forward-pass tricks cost and save, against plain PyTorch, in one run.

Run:  .venv/bin/python bench/bench_surgery.py [--repeat 5] [--size 224] [--threads 1]

* features only: ``return_features(resnet50, ["layer2"], output=False)`` stops after layer2; compared
  with the full forward a plain forward hook needs (the baseline), and with torchvision's FX
  ``create_feature_extractor`` (which prunes the graph; it cannot handle dynamic control flow).
* features alongside the output: hooks + wrapper vs the plain forward (overhead should be ~1.0x).
* the meta-device sample pass (``find_head``) vs one real forward at the same input size.
Ratios below 1.0 mean torchsmith is faster.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torchvision
from torchvision.models.feature_extraction import create_feature_extractor

from torchsmith.surgery import find_head, return_features


def interleaved(fns: dict, repeat: int) -> dict[str, float]:
    """Median time of each function, run round-robin so that load drifts hit all of them alike."""
    for fn in fns.values():
        fn()  # warm-up
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is steadiest on a busy machine)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.randn(1, 3, args.size, args.size)
    plain = torchvision.models.resnet50(weights=None).eval()
    only = torchvision.models.resnet50(weights=None).eval()
    both = torchvision.models.resnet50(weights=None).eval()
    return_features(only, ["layer2"], output=False)
    return_features(both, ["layer2"])
    fx = create_feature_extractor(torchvision.models.resnet50(weights=None).eval(), {"layer2": "layer2"})
    with torch.no_grad():
        t = interleaved(
            {
                "full": lambda: plain(x),
                "only": lambda: only(x),
                "both": lambda: both(x),
                "fx": lambda: fx(x),
                "meta": lambda: find_head(plain, (1, 3, args.size, args.size)),
            },
            args.repeat,
        )
    t_full, t_only, t_both, t_fx, t_meta = (t[k] for k in ("full", "only", "both", "fx", "meta"))
    threads = torch.get_num_threads()
    shape = f"1x3x{args.size}x{args.size}"
    print(f"resnet50, input {shape}, median of {args.repeat} interleaved runs, {threads} thread(s)")
    print(f"  full forward (baseline)                 {t_full * 1e3:8.1f} ms")
    print(f"  features only, stop after layer2        {t_only * 1e3:8.1f} ms   ratio {t_only / t_full:.2f}x")
    print(f"  torchvision FX extractor up to layer2   {t_fx * 1e3:8.1f} ms   ratio {t_fx / t_full:.2f}x")
    print(f"  features alongside output (overhead)    {t_both * 1e3:8.1f} ms   ratio {t_both / t_full:.2f}x")
    print(f"  find_head meta pass vs real forward     {t_meta * 1e3:8.1f} ms   ratio {t_meta / t_full:.2f}x")


if __name__ == "__main__":
    main()
