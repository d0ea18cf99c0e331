"""``torchsmith verify CKPT``: check structure, CRCs and the checksum recorded per tensor."""

from __future__ import annotations

import argparse

HELP = "verify a checkpoint's integrity (structure, CRC-32, tensor checksums; every model file of a folder)"


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
        for one in result.get("files", [result]):  # a folder of several model files: one line each
            checks = ", ".join(one["checks"])
            print(f"{one['path']}: ok ({one['format']}, {one['tensors']} tensors; checked {checks})")
            if one.get("note"):
                print(f"note: {one['note']}")
        if "files" in result:
            print(f"{result['path']}: ok ({len(result['files'])} files, {result['tensors']} tensors)")
    return 0
