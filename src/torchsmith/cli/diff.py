"""``torchsmith diff A B``: keys only in one, shape/dtype differences, value and byte differences.

Exit status as ``diff``/``cmp``: 0 when the checkpoints are identical (bytes included), 1 when they
differ, 2 on bad input.
"""

from __future__ import annotations

import argparse

HELP = "compare two checkpoints (prefixes fitted): keys, shapes, dtypes, values, bytes; exit 1 if they differ"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("a", help="first checkpoint")
    parser.add_argument("b", help="second checkpoint")
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")
    parser.add_argument(
        "--allow-expand",
        action="store_true",
        help="compare even tensors that materialise far more bytes than their file holds (stride-0 views)",
    )


def run(args: argparse.Namespace) -> int:
    from torchsmith.checkpoint.diff import diff_checkpoints
    from torchsmith.cli._output import format_table, print_json

    d = diff_checkpoints(args.a, args.b, allow_expand=args.allow_expand)
    status = 0 if d["identical"] else 1
    if args.json:
        print_json(d)
        return status
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
    if d["bytes_differ"]:
        shown = ", ".join(d["bytes_differ"][:5]) + (" ..." if len(d["bytes_differ"]) > 5 else "")
        print(
            f"bytes differ, values equal: {len(d['bytes_differ'])} tensors ({shown}): -0.0 vs +0.0 or "
            "NaN payloads"
        )
    if d["identical"]:
        print("identical")
    elif d["values_equal"]:
        print("values equal, not bit-identical")
    else:
        print(f"{len(changed)} tensors differ in value")
    return status
