"""``torchsmith summary MODEL``: a layer table (names, types, output shapes, parameters, trainable)."""

from __future__ import annotations

import argparse

HELP = "print a model's layers, output shapes and parameter counts (tied weights counted once)"
DESCRIPTION = (
    "Build MODEL (a zoo name, 'torchvision:NAME' or 'timm:NAME', random weights) and print one row per "
    "module: name, type, output shape for the given input, parameters and whether they train. "
    "Shared or tied parameters are counted once."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="zoo name (see 'torchsmith zoo'), torchvision:NAME or timm:NAME")
    p.add_argument(
        "--input-shape",
        metavar="N,C,H,W",
        help="input shape, batch first (default: the model's sample input, e.g. 1,3,224,224)",
    )
    p.add_argument("--depth", type=int, default=3, help="show modules down to this nesting depth (default 3)")
    p.add_argument("--no-forward", action="store_true", help="list layers and parameters without running")
    p.add_argument(
        "--arg",
        dest="model_args",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a model argument, e.g. --arg num_classes=10 (value read as YAML; repeatable)",
    )
    p.add_argument("--json", action="store_true", help="print the summary as JSON")


def run(args: argparse.Namespace) -> int:
    from torchsmith.cli._output import model_kwargs, parse_shape, print_json
    from torchsmith.errors import InputError
    from torchsmith.summary import summarize_model

    if args.depth < 0:
        raise InputError(f"--depth must be 0 or more, got {args.depth}")
    shape = parse_shape(args.input_shape) if args.input_shape else None
    summary = summarize_model(
        args.model,
        shape,
        depth=args.depth,
        forward=not args.no_forward,
        model_kwargs=model_kwargs(args.model_args),
    )
    if args.json:
        print_json({"name": args.model, **summary.to_dict()})
    else:
        print(f"{args.model}  (input {summary.input_shape})" if summary.input_shape else args.model)
        print(summary)
    return 0
