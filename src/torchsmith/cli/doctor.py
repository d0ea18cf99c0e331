"""``torchsmith doctor MODEL``: find the seed traps 1, 3, 7 and 11 in a model."""

from __future__ import annotations

import argparse
import os

HELP = "check a model for silent mistakes (shadowed state_dict, stale attributes, unused layers, softmax+CE)"
DESCRIPTION = (
    "Build MODEL (a zoo name, 'torchvision:NAME' or 'timm:NAME', random weights; or load a checkpoint "
    "written by torchsmith.save) and check it for the "
    "mistakes PyTorch lets pass silently: state_dict replaced by a dict (trap 1), attributes that disagree "
    "with weight shapes (trap 3), layers with parameters never used in forward (trap 7), a classifier "
    "ending in softmax (trap 11). Exit code 1 when anything is found."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "model", help="zoo name (see 'torchsmith zoo'), torchvision:NAME, timm:NAME or a checkpoint file"
    )
    p.add_argument(
        "--input-shape", metavar="N,C,H,W", help="sample input shape, batch first (default: guessed)"
    )
    p.add_argument(
        "--no-forward", action="store_true", help="skip the checks that need a forward pass (7, 11)"
    )
    p.add_argument("--json", action="store_true", help="print the findings as JSON")
    p.add_argument(
        "--trust-pickle",
        action="store_true",
        help="allow unpickling a whole-model checkpoint (runs its code)",
    )


def run(args: argparse.Namespace) -> int:
    from torchsmith.cli._output import parse_shape, print_json
    from torchsmith.surgery import doctor
    from torchsmith.zoo import create_model

    shape = parse_shape(args.input_shape) if args.input_shape else None
    if os.path.isfile(args.model):
        from torchsmith.checkpoint import load_model

        model = load_model(args.model, trust_pickle=args.trust_pickle)
    else:
        model = create_model(args.model)
    findings = doctor(model, shape, forward=not args.no_forward)
    if args.json:
        print_json({"model": args.model, "findings": [f.to_dict() for f in findings]})
    elif findings:
        for f in findings:
            print(f)
    else:
        checks = "1, 3" if args.no_forward else "1, 3, 7, 11"
        print(f"{args.model}: no problems found (checked traps {checks})")
    return 1 if findings else 0
