"""``torchsmith eval [RECIPE] --checkpoint C``: evaluate a checkpoint on a recipe's validation data."""

from __future__ import annotations

import argparse

HELP = "evaluate a training checkpoint on a recipe's validation data"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", nargs="?", help="recipe file (default: the recipe stored in the checkpoint)")
    p.add_argument(
        "--checkpoint", required=True, help="a checkpoint written by torchsmith train (last.pt, best.pt)"
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a recipe field (repeatable)",
    )
    p.add_argument(
        "--data",
        metavar="FOLDER",
        help="evaluate on this image folder (one sub-folder per class) instead of the recipe's data",
    )
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")


def run(args: argparse.Namespace) -> int:
    from torchsmith.cli._output import format_table, print_json
    from torchsmith.training import evaluate

    metrics = evaluate(args.recipe, args.checkpoint, overrides=args.overrides, data=args.data)
    if args.json:
        print_json(metrics)
        return 0
    rows = []
    for k, v in metrics.items():
        if isinstance(v, float) and ("acc" in k or "top" in k):
            v = f"{100 * v:.2f}%"
        elif isinstance(v, float):
            v = f"{v:.4f}"
        rows.append((k, v))
    print(format_table(["metric", "value"], rows, "lr"))
    return 0
