"""Export sweep and ONNX Runtime vs PyTorch eager latency on the CPU, in one run.

For each model: export to ONNX and .pt2 with a dynamic batch (each export is proven equal to PyTorch
at batch sizes 1, 2 and 3 by torchsmith.export itself), then time PyTorch eager and ONNX Runtime on
the same input at batch 1 and 8 and print the ratio (eager time / ORT time: above 1, ORT is faster).

    .venv/bin/python bench/bench_export.py                      # resnet18, resnet50, vit_b_16, timm models
    .venv/bin/python bench/bench_export.py --models torchvision:resnet18 --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

MODELS = [
    "simple_cnn",  # zoo models: their input shape is the one they declare
    "resnet_fpn",  # a dict of feature maps
    "unet",
    "torchvision:resnet18",
    "torchvision:resnet50",
    "torchvision:vit_b_16",
    "timm:convnext_atto",
    "timm:efficientnet_b0",
    "timm:vit_tiny_patch16_224",
]


def _time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=MODELS)
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    ap.add_argument("--repeats", type=int, default=10)
    args = ap.parse_args()

    import onnxruntime as ort
    import torch

    import torchsmith

    torch.manual_seed(0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            model = torchsmith.create_model(name).eval()
            # library models declare no input (timm's pretrained_cfg does; torchvision's does not)
            shape = (1, 3, 224, 224) if name.startswith("torchvision:") else None
            proofs = {}
            for fmt in ("onnx", "pt2"):
                t = time.perf_counter()
                try:
                    report = torchsmith.export(
                        model, Path(tmp) / f"m.{fmt}", input_shape=shape, dynamic_batch=True, overwrite=True
                    )
                    worst = max(c.max_abs for c in report.checks)
                    proofs[fmt] = f"PASS {worst:.1e} ({time.perf_counter() - t:.0f} s)"
                except torchsmith.TorchsmithError as e:
                    proofs[fmt] = f"REFUSED: {str(e).splitlines()[0][:80]}"
            print(f"{name}: onnx {proofs['onnx']}; pt2 {proofs['pt2']}", flush=True)
            if not proofs["onnx"].startswith("PASS") or report.outputs != ["output"]:
                continue  # the latency table is for single-output classifiers
            sess = ort.InferenceSession(str(Path(tmp) / "m.onnx"), providers=["CPUExecutionProvider"])
            for batch in args.batches:
                x = torch.randn(batch, *report.inputs["x"]["shape"][1:])
                with torch.no_grad():
                    eager = _time(lambda x=x, m=model: m(x), args.repeats)
                feed = {sess.get_inputs()[0].name: x.numpy()}
                onnx_t = _time(lambda feed=feed, s=sess: s.run(None, feed), args.repeats)
                rows.append((name, batch, eager * 1e3, onnx_t * 1e3, eager / onnx_t))
    print(f"\n{'model':28} {'batch':>5} {'eager ms':>10} {'ORT ms':>10} {'eager/ORT':>10}")
    for name, batch, e, o, r in rows:
        print(f"{name:28} {batch:>5} {e:>10.1f} {o:>10.1f} {r:>10.2f}")
    print(f"torch {torch.__version__}, onnxruntime {ort.__version__}, threads {torch.get_num_threads()}")


if __name__ == "__main__":
    main()
