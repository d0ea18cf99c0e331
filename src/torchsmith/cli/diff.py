"""``torchsmith diff A B``: keys only in one, shape/dtype differences, max abs difference per tensor."""

from __future__ import annotations

import argparse

HELP = "compare two checkpoints (wrapper prefixes fitted): keys, shapes, dtypes, values"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("a", help="first checkpoint")
    parser.add_argument("b", help="second checkpoint")
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")


def run(args: argparse.Namespace) -> int:
    from torchsmith.checkpoint.diff import diff_checkpoints
    from torchsmith.cli._output import format_table, print_json

    d = diff_checkpoints(args.a, args.b)
    if args.json:
        print_json(d)
        return 0
    print(f"a: {d['a']['path']} ({d['a']['format']}, {d['a']['tensors']} tensors)")
    print(f"b: {d['b']['path']} ({d['b']['format']}, {d['b']['tensors']} tensors)")
    if d["prefixes_removed"] or d["prefixes_added"]:
        print(f"wrapper prefixes fitted: removed {d['prefixes_removed']}, added {d['prefixes_added']}")
    for side in ("only_in_a", "only_in_b"):
        for k in d[side]:
            print(f"{side.replace('_', ' ')}: {k}")
    for item in d["shape_differs"]:
        print(f"shape differs: {item['key']}: {item['a']} vs {item['b']}")
    for item in d["dtype_differs"]:
        print(f"dtype differs: {item['key']}: {item['a']} vs {item['b']}")
    changed = [(k, f"{v:.6g}") for k, v in d["max_abs_diff"].items() if v != 0]
    if changed:
        print(format_table(["tensor", "max abs diff"], changed, "lr"))
    print("identical" if d["identical"] else f"{len(changed)} tensors differ in value")
    return 0
