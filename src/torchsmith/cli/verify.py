"""``torchsmith verify CKPT``: check structure, CRCs and the SHA-256 recorded per tensor."""

from __future__ import annotations

import argparse

HELP = "verify a checkpoint's integrity (structure, CRC-32, per-tensor SHA-256)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="checkpoint to verify")
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")


def run(args: argparse.Namespace) -> int:
    from torchsmith.checkpoint.verify import verify_checkpoint
    from torchsmith.cli._output import print_json

    result = verify_checkpoint(args.checkpoint)
    if args.json:
        print_json(result)
    else:
        checks = ", ".join(result["checks"])
        print(f"{result['path']}: ok ({result['format']}, {result['tensors']} tensors; checked {checks})")
        if result.get("note"):
            print(f"note: {result['note']}")
    return 0
