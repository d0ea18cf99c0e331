"""``torchsmith build SPEC``: check a model spec, build it, summarise it, optionally save it.

torchsmith build examples/specs/s10_unet.yaml --param width=8 --input-shape 1,3,64,64
torchsmith build examples/specs/s12_extra_input.yaml --input-shape x=2,3,64,64 --input-shape add_variable=2
torchsmith build model.yaml -o model.safetensors      # the checkpoint carries the spec
torchsmith build model.yaml --check --json            # validate only, nothing allocated
"""

from __future__ import annotations

import argparse
from typing import Any

HELP = "build a model from a YAML/JSON spec: check it, summarise it, optionally save it"
DESCRIPTION = (
    "Build a model from a declarative spec (see docs/spec.md). The spec is checked completely on the "
    "meta device first (types, arguments, wiring, shapes), so errors name the spec line before any "
    "memory is allocated."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", help="the spec file (.yaml, .yml or .json)")
    parser.add_argument(
        "--input-shape",
        action="append",
        default=[],
        metavar="SHAPE",
        help="sample input shape, e.g. 1,3,224,224; for several inputs NAME=SHAPE, repeated",
    )
    parser.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="override a spec parameter (repeatable)",
    )
    parser.add_argument("-o", "--output", metavar="OUT", help="save the built model here (torchsmith.save)")
    parser.add_argument("--check", action="store_true", help="only validate; allocate no weights")
    parser.add_argument(
        "--allow-imports", action="store_true", help="let the spec name Python import paths (runs their code)"
    )
    parser.add_argument(
        "--max-parameters",
        type=float,
        default=2e9,
        metavar="N",
        help="refuse models with more parameters than this, before allocating (default 2e9; 0: no limit)",
    )
    parser.add_argument("--json", action="store_true", help="print a machine-readable report")


def _parse_shapes(values: list[str]) -> Any:
    from torchsmith.cli._output import parse_shape
    from torchsmith.errors import InputError

    if not values:
        return None
    named = [v for v in values if "=" in v]
    if named and len(named) != len(values):
        raise InputError("--input-shape: give either one SHAPE or NAME=SHAPE for every input, not a mix")
    if not named:
        if len(values) > 1:
            raise InputError("--input-shape: several shapes need names: NAME=SHAPE")
        return list(parse_shape(values[0]))
    out = {}
    for v in values:
        name, _, shape = v.partition("=")
        out[name.strip()] = list(parse_shape(shape, f"--input-shape {name.strip()}"))
    return out


def _parse_params(values: list[str]) -> dict:
    import yaml

    from torchsmith.errors import InputError

    out = {}
    for v in values:
        name, sep, raw = v.partition("=")
        if not sep or not name.strip():
            raise InputError(f"--param: expected NAME=VALUE, got {v!r}")
        if len(raw) > 1000:
            raise InputError(f"--param {name}: the value is longer than 1000 characters")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        if not (value is None or isinstance(value, (bool, int, float, str, list))):
            value = raw
        out[name.strip()] = value
    return out


def _shape_text(shape: Any) -> str:
    if shape is None:
        return "?"
    if isinstance(shape, list) and all(isinstance(d, int) for d in shape):
        return "(" + ", ".join(map(str, shape)) + ")"
    if isinstance(shape, list):
        return "[" + ", ".join(_shape_text(s) for s in shape) + "]"
    if isinstance(shape, dict):
        return "{" + ", ".join(f"{k}: {_shape_text(v)}" for k, v in shape.items()) + "}"
    return str(shape)


def run(args: argparse.Namespace) -> int:
    from torchsmith.cli._output import format_table, print_json
    from torchsmith.errors import TorchsmithError
    from torchsmith.spec import build_with_report

    input_shape = _parse_shapes(args.input_shape)
    params = _parse_params(args.param)
    model, report = build_with_report(
        args.spec,
        input_shape=input_shape,
        params=params or None,
        allow_imports=args.allow_imports,
        max_parameters=int(args.max_parameters) if args.max_parameters > 0 else None,
        build=not args.check,
    )
    saved = None
    if args.output and not args.check:
        import torchsmith

        try:
            save = torchsmith.save
        except (AttributeError, ImportError):
            raise TorchsmithError(
                "-o needs torchsmith.save (the checkpoint concern), which this installation lacks"
            ) from None
        save(model, args.output)
        saved = args.output
    if args.json:
        print_json({**report, "built": not args.check, "saved": saved})
        return 0
    name = report["name"] or args.spec
    ins = ", ".join(f"{k} {_shape_text(v)}" for k, v in report["inputs"].items())
    print(f"{name}: inputs {ins} -> outputs {_shape_text(report['outputs'])}")
    rows = [
        [layer["name"], layer["type"], _shape_text(layer["output_shape"]), f"{layer['parameters']:,}"]
        for layer in report["layers"]
    ]
    if rows:
        print(format_table(["name", "type", "output shape", "parameters"], rows, "lllr"))
    print(f"parameters: {report['parameters']:,} (trainable {report['trainable_parameters']:,})")
    if report["inferred"]:
        shown = "; ".join(
            f"{path or '(model)'}: " + ", ".join(f"{k}={v}" for k, v in vals.items())
            for path, vals in list(report["inferred"].items())[:8]
        )
        more = len(report["inferred"]) - 8
        print(f"inferred from shapes: {shown}" + (f"; and {more} more" if more > 0 else ""))
    if args.check:
        print("spec is valid (checked on the meta device; nothing built)")
    elif saved:
        print(f"saved to {saved}")
    return 0
