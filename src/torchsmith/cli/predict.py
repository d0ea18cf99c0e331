"""``torchsmith predict --checkpoint C INPUTS...``: classify image files with a training checkpoint.

``--model FILE.onnx`` classifies with a model exported by ``torchsmith export`` instead, through ONNX
Runtime, without importing torch.
"""

from __future__ import annotations

import argparse

HELP = "classify image files with a training checkpoint, a saved pretrained model or an exported .onnx"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--checkpoint",
        help="a checkpoint written by torchsmith train, or a pretrained model saved by torchsmith.save",
    )
    source.add_argument(
        "--model",
        help="an ONNX file written by torchsmith export (runs with onnxruntime; torch is not imported)",
    )
    p.add_argument("--top-k", type=int, default=1, help="also list the k most likely classes")
    p.add_argument(
        "--json",
        action="store_true",
        help='print one JSON object: {"checkpoint" or "model", "top_k", "predictions": [one per input]}',
    )


def run(args: argparse.Namespace) -> int:
    from torchsmith.cli._output import format_table, print_json

    if args.model is not None:
        from torchsmith.export.onnx_predict import predict_onnx

        results = predict_onnx(args.model, args.inputs, top_k=args.top_k)
        source = {"model": args.model}
    else:
        from torchsmith.training import predict

        results = predict(args.checkpoint, args.inputs, top_k=args.top_k)
        source = {"checkpoint": args.checkpoint}
    if args.json:
        # One object, as every --json command prints: the predictions are a list inside it.
        print_json({**source, "top_k": args.top_k, "predictions": results})
        return 0
    rows = []
    for r in results:
        others = ", ".join(f"{t['class']} {100 * t['probability']:.1f}%" for t in r["top"][1:])
        rows.append((r["input"], r["class"], f"{100 * r['probability']:.1f}%", others))
    print(format_table(["input", "class", "probability", "next"], rows, "llrl"))
    return 0
