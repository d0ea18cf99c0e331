"""``torchsmith tune lr|batch-size [RECIPE]``: the LR range test and the batch-size finder.

Both run on the recipe's own model and data in this process and write no run folder. ``tune lr``
writes its plot to ``--plot PATH`` (default ``<recipe name>-lr-find.png`` in the current folder,
named in the output; ``--no-plot`` for none).
"""

from __future__ import annotations

import argparse

HELP = "find a learning rate (LR range test) or the largest batch size that fits, for a recipe"
DESCRIPTION = (
    "tune lr: Leslie Smith's LR range test on the recipe's model and data (exponential LR sweep, "
    "smoothed loss, stop on divergence); suggests the LR of steepest descent and plots the curve. "
    "The model and optimizer are restored afterwards; no run folder is touched. "
    "tune batch-size: the largest data.batch_size whose training step fits, by doubling and "
    "bisecting: out of memory on a GPU, --max-memory on the CPU (required there; measured as the "
    "step's peak resident memory)."
)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", nargs="?", help="recipe file (YAML); default: the built-in digits recipe")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a recipe field by dotted key, e.g. --set data.limit=512 (repeatable)",
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="what", metavar="lr|batch-size", required=True)
    lr = sub.add_parser(
        "lr", help="LR range test: a suggested optimizer.lr and a plot", description=DESCRIPTION
    )
    _common(lr)
    lr.add_argument("--min-lr", type=float, default=1e-7, help="first LR of the sweep (default 1e-7)")
    lr.add_argument("--max-lr", type=float, default=10.0, help="last LR of the sweep (default 10)")
    lr.add_argument("--steps", type=int, help="optimizer steps at most (default: half an epoch's, 10 to 100)")
    lr.add_argument(
        "--diverge",
        type=float,
        default=4.0,
        help="stop when the smoothed loss passes this many times its best",
    )
    lr.add_argument("--plot", metavar="PATH", help="where to write the plot (default: ./<name>-lr-find.png)")
    lr.add_argument("--no-plot", action="store_true", help="write no plot")
    bs = sub.add_parser(
        "batch-size", help="the largest batch whose training step fits", description=DESCRIPTION
    )
    _common(bs)
    bs.add_argument(
        "--max-memory",
        metavar="SIZE",
        help="memory budget, e.g. 2GiB or 512MB (required on the CPU; on a GPU a cap below the card)",
    )
    bs.add_argument(
        "--start", type=int, help="first batch size tried (default: the recipe's data.batch_size)"
    )
    bs.add_argument(
        "--max-batch", type=int, help="largest batch size tried (default: the training set's size)"
    )


def run(args: argparse.Namespace) -> int:
    from torchsmith.cli._output import print_json

    log = None if args.quiet else _log
    if args.what == "lr":
        from torchsmith.training.recipe import load_recipe
        from torchsmith.training.tune import tune_lr

        plot = None
        if not args.no_plot:
            plot = args.plot or f"{load_recipe(args.recipe, args.overrides)['name']}-lr-find.png"
        result = tune_lr(
            args.recipe,
            overrides=args.overrides,
            min_lr=args.min_lr,
            max_lr=args.max_lr,
            steps=args.steps,
            diverge=args.diverge,
            plot=plot,
            log=log,
        )
        if args.json:
            print_json(result.to_dict())
            return 0
        if result.suggestion is not None:
            print(f"suggested lr    {result.suggestion:.3g}   (--set optimizer.lr={result.suggestion:.3g})")
        else:
            print(f"suggested lr    none: {result.reason}")
        print(f"steps           {result.steps}, lr {result.min_lr:g} .. {result.lrs[-1]:.3g}")
        if result.stopped:
            print(f"stopped         {result.stopped}")
        if result.plot_file:
            print(f"plot            {result.plot_file}")
        return 0
    from torchsmith.training.tune import tune_batch_size

    result = tune_batch_size(
        args.recipe,
        overrides=args.overrides,
        max_memory=args.max_memory,
        start=args.start,
        max_batch=args.max_batch,
        log=log,
    )
    if args.json:
        print_json(result.to_dict())
        return 0
    print(f"largest batch   {result.batch_size}   (--set data.batch_size={result.batch_size})")
    print(f"limited by      {result.limited_by}")
    print(f"device          {result.device}: {result.measure}")
    tried = ", ".join(f"{t['batch_size']}" + ("" if t["fits"] else " (too big)") for t in result.trials)
    print(f"trials          {tried}")
    return 0 if result.batch_size > 0 else 1


def _log(line: str) -> None:
    from torchsmith.training.api import _stderr

    _stderr(line)
