"""``torchsmith export SOURCE -o FILE``: ONNX or .pt2, checked against PyTorch before it is named."""

from __future__ import annotations

import argparse

HELP = "export a model to ONNX or torch.export (.pt2), proven equal to PyTorch"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "source",
        help="a model saved by torchsmith.save, a training checkpoint (best.pt), a spec file or a model name",
    )
    p.add_argument("-o", "--output", required=True, help="the file to write (.onnx or .pt2)")
    p.add_argument("--format", choices=["onnx", "pt2"], help="default: from the output's suffix")
    p.add_argument("--input-shape", help="batch first, e.g. 1,3,224,224 (default: what the source records)")
    p.add_argument("--dynamic-batch", action="store_true", help="keep the batch dimension symbolic")
    p.add_argument("--opset", type=int, help="ONNX opset version (default: the exporter's)")
    p.add_argument("--atol", type=float, default=1e-4, help="absolute tolerance of the check (default 1e-4)")
    p.add_argument("--rtol", type=float, default=1e-3, help="relative tolerance of the check (default 1e-3)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def run(args: argparse.Namespace) -> int:
    from torchsmith.cli._output import print_json
    from torchsmith.export import export

    report = export(
        args.source,
        args.output,
        format=args.format,
        input_shape=args.input_shape,
        dynamic_batch=args.dynamic_batch,
        opset=args.opset,
        atol=args.atol,
        rtol=args.rtol,
        overwrite=args.overwrite,
    )
    if args.json:
        print_json(report.to_dict())
    else:
        print(report.summary())
    return 0
