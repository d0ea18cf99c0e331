"""``torchsmith train [RECIPE]``: run a training recipe (the built-in digits finetune without one)."""

from __future__ import annotations

import argparse

HELP = "train a model from a YAML recipe (no RECIPE: the built-in digits finetune)"
DESCRIPTION = (
    "Train from a YAML recipe: model, surgery, init, weights, freezing, data, loss, optimizer, "
    "scheduler, loop. Without RECIPE it runs the built-in default, a finetune on scikit-learn's "
    "handwritten digits. Under torchrun it trains on every process with DistributedDataParallel."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", nargs="?", help="recipe file (YAML); default: the built-in digits recipe")
    p.add_argument(
        "--out",
        help="output folder (default: a new runs/<recipe name>, runs/<recipe name>-2, ...); a folder "
        "that holds files is refused unless --resume or --overwrite",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run in --out (its files are removed once the new run is set up)",
    )
    p.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=False,
        metavar="auto|CHECKPOINT",
        help="continue from the output folder's last.pt (or CHECKPOINT); 'auto': resume when last.pt "
        "exists, else start (what a torchrun --max-restarts command line wants)",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a recipe field by dotted key, e.g. --set train.epochs=3 (repeatable)",
    )
    p.add_argument(
        "--check",
        action="store_true",
        help="validate the recipe, its data and its model without training or writing anything "
        "(exit 0: ready to run; exit 2: what is wrong, with FILE:LINE)",
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument(
        "--quiet",
        action="store_true",
        help="no progress bar or per-epoch lines (the 'resumed from' line stays)",
    )


def run(args: argparse.Namespace) -> int:
    from torchsmith.cli._output import print_json
    from torchsmith.training import train

    resume = args.resume
    if isinstance(resume, str) and args.recipe is None and resume.endswith((".yaml", ".yml")):
        args.recipe, resume = resume, True  # `train --resume recipe.yaml`: the flag took the recipe
    overrides = list(args.overrides)
    if args.check:
        from torchsmith.training import check_recipe

        summary = check_recipe(args.recipe, overrides=overrides, log=_notices_only if args.quiet else _log)
        if args.json:
            print_json(summary)
        else:
            print(
                f"recipe OK: {summary['recipe']}: {summary['train_samples']} training / "
                f"{summary['val_samples']} validation samples, {summary['classes']} classes, "
                f"{summary['parameters']:,} parameters, {summary['steps_per_epoch']} steps per epoch, "
                f"{summary['optimizer']} on {summary['loss']}"
            )
        return 0
    if args.quiet:
        overrides.append("train.progress=false")
    result = train(
        args.recipe,
        out=args.out,
        resume=resume,
        overwrite=args.overwrite,
        overrides=overrides,
        log=_notices_only if args.quiet else _log,
    )
    if _is_main():  # under torchrun, only rank 0 reports
        if args.json:
            print_json(result.to_dict())
        else:
            _print_result(result)
    return 0


def _print_result(result) -> None:
    acc = result.val_acc
    print(f"run folder      {result.out_dir}")
    print(f"epochs / steps  {len(result.history)} / {result.steps}  ({result.seconds:.1f} s)")
    if acc is not None:
        print(f"held-out acc    {100 * acc:.2f}%")
    if result.reloaded_acc is not None:
        print(
            f"reloaded acc    {100 * result.reloaded_acc:.2f}%"
            f"  (from {result.model_file or result.checkpoint})"
        )
    print(
        f"checkpoints     {result.checkpoint}"
        + (f", {result.best_checkpoint}" if result.best_checkpoint else "")
    )
    files = [str(p) for p in result.logs.values()] + ([str(result.plot_file)] if result.plot_file else [])
    if files:
        print(f"metrics         {', '.join(files)}")
    if result.stop_reason:
        print(f"stopped         {result.stop_reason}")


def _log(line: str) -> None:
    from torchsmith.training.api import _stderr

    _stderr(line)


# Lines --quiet still prints: where a run continues from, and what a resume cleaned up.
_NOTICES = ("resumed from ", "elastic restart", "removed ", "completed ", "overwrite: ", "stopped: ")


def _notices_only(line: str) -> None:
    if line.startswith(_NOTICES):
        _log(line)


def _is_main() -> bool:
    import os

    return os.environ.get("RANK", "0") in ("", "0")
