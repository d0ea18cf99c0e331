"""``torchsmith load MODEL CKPT``: load a checkpoint into a model, print what fitted, optionally save."""

from __future__ import annotations

import argparse

HELP = "load checkpoint weights into a model (by name or by structure) and report what was loaded"
DESCRIPTION = (
    "Build MODEL (a zoo name, 'torchvision:NAME', 'timm:NAME' or a spec file) with random weights, load "
    "CKPT into it and print the report: loaded, adapted, skipped-for-shape, missing and unexpected keys "
    "and the share of parameters that came from the checkpoint. --match structure ports weights between "
    "two implementations whose names differ. A load that takes nothing, or that shows another "
    "architecture (shape skips outside the head and the input layer, or less than --min-fraction, default "
    "50%, of the parameters loaded), is refused with exit code 2 and nothing saved, unless --allow-partial."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="zoo name, torchvision:NAME, timm:NAME, or a spec file (.yaml/.yml/.json)")
    p.add_argument(
        "checkpoint", metavar="CKPT", help="checkpoint file (any format 'torchsmith inspect' reads)"
    )
    p.add_argument("--match", choices=["name", "structure"], default="name", help="how keys are paired")
    p.add_argument(
        "--rename", action="append", default=[], metavar="REGEX=REPL", help="rename source keys (repeatable)"
    )
    p.add_argument("--include", action="append", default=[], metavar="PATTERN", help="load only these keys")
    p.add_argument("--exclude", action="append", default=[], metavar="PATTERN", help="never load these keys")
    p.add_argument(
        "--adapt",
        choices=["input", "all", "none"],
        default="input",
        help="shape adaptations: first-conv input channels (default), also the classifier (all), or none",
    )
    p.add_argument(
        "--strict", choices=["none", "target", "all"], default="none", help="what must fit (default none)"
    )
    p.add_argument(
        "--min-fraction",
        type=float,
        default=None,
        metavar="F",
        help="refuse (exit 2, save nothing) when less than this share of parameters is loaded (default 0.5; "
        "an explicit value applies even with --allow-partial)",
    )
    p.add_argument(
        "--allow-partial",
        action="store_true",
        help="load the keys both sides have even from another architecture (warned on stderr)",
    )
    p.add_argument(
        "--trust-pickle", action="store_true", help="allow unpickling arbitrary objects (trusted files)"
    )
    p.add_argument(
        "--arg",
        dest="model_args",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a model argument, e.g. --arg num_classes=10 (value read as YAML; repeatable)",
    )
    p.add_argument(
        "--source-model",
        metavar="NAME",
        help="with --match structure: the checkpoint's own architecture (zoo, torchvision:, timm:, hf: name "
        "or a spec file); CKPT is loaded into it by name and ported model to model",
    )
    p.add_argument(
        "--allow-unverified",
        action="store_true",
        help="with --match structure: port even when the port cannot be proven numerically (the source's "
        "architecture is not identified); the report then starts with UNVERIFIED",
    )
    p.add_argument(
        "--no-adopt-hparams",
        dest="adopt_hparams",
        action="store_false",
        help="with --match structure: refuse instead of giving the model the source's norm eps where they "
        "differ",
    )
    p.add_argument(
        "--source-prefix",
        metavar="PREFIX",
        help="take the source keys under PREFIX (e.g. ema) when the checkpoint holds several weight sets",
    )
    p.add_argument(
        "--input-shape", metavar="N,C,H,W", help="sample input for --match structure (default: guessed)"
    )
    p.add_argument("--show-loaded", action="store_true", help="list the loaded keys too")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("-o", "--output", metavar="OUT", help="save the loaded model here (atomically)")


def build_cli_model(name: str, kwargs: dict):
    """A zoo/library model by name, or a spec file built with :func:`torchsmith.spec.build_model`."""
    from pathlib import Path

    from torchsmith.errors import InputError

    path = Path(name)
    if path.suffix.lower() in (".yaml", ".yml", ".json"):
        if not path.is_file():
            raise InputError(f"{name}: spec file not found")
        from torchsmith.spec import build_model

        if kwargs:
            return build_model(path, params=kwargs)
        return build_model(path)
    from torchsmith.zoo import create_model

    return create_model(name, **kwargs)


def run(args: argparse.Namespace) -> int:
    import sys

    import torch

    from torchsmith.cli._output import model_kwargs, parse_shape, print_json
    from torchsmith.errors import InputError, TransferError
    from torchsmith.transfer import load_weights

    if args.min_fraction is not None and not 0.0 <= args.min_fraction <= 1.0:
        raise InputError(f"--min-fraction: expected a number between 0 and 1, got {args.min_fraction}")
    model = build_cli_model(args.model, model_kwargs(args.model_args))
    example = torch.randn(parse_shape(args.input_shape)) if args.input_shape else None
    adapt = {"input": True, "all": "all", "none": False}[args.adapt]
    source, source_note = args.checkpoint, ""
    if args.source_model:
        if args.match != "structure":
            raise InputError("--source-model: only used with --match structure")
        from torchsmith.transfer.source_model import load_source_model

        source, _ = load_source_model(args.source_model, args.checkpoint, trust_pickle=args.trust_pickle)
        source_note = f"{args.checkpoint} loaded by name into {args.source_model}, then ported by structure"
    if args.allow_unverified and args.match != "structure":
        raise InputError("--allow-unverified: only used with --match structure")
    head = {"model": args.model, "checkpoint": args.checkpoint}
    try:
        report = load_weights(
            model,
            source,
            match=args.match,
            rename=args.rename,
            include=args.include,
            exclude=args.exclude,
            strict=args.strict,
            adapt=adapt,
            allow_partial=args.allow_partial,
            min_fraction=args.min_fraction,
            trust_pickle=args.trust_pickle,
            example_input=example,
            source_prefix=args.source_prefix,
            allow_unverified=args.allow_unverified,
            adopt_hparams=args.adopt_hparams,
        )
    except TransferError as e:
        refused = getattr(e, "report", None)
        if refused is not None:  # show what would have been loaded, then the error (exit 2)
            if source_note:
                refused.notes.insert(0, source_note)
            if args.json:
                e.details = {**head, "ok": False, "output": None, **refused.to_dict()}  # type: ignore[attr-defined]
            else:
                print(refused.format(show_loaded=args.show_loaded))
                if args.output:
                    print("nothing saved")
        raise
    if source_note:
        report.notes.insert(0, source_note)
    saved = None
    if args.output:
        from torchsmith.checkpoint import save

        saved = str(save(model, args.output))
    if args.json:
        print_json({**head, "ok": True, "output": saved, **report.to_dict()})
    else:
        print(report.format(show_loaded=args.show_loaded))
        if saved:
            print(f"saved to {saved}")
    partial = [n for n in report.notes if n.startswith("partial load allowed")]
    if partial:  # asked for, but never silent
        print(f"torchsmith load: warning: {partial[0]}", file=sys.stderr)
    if report.unverified:
        print(f"torchsmith load: warning: UNVERIFIED port: {report.unverified}", file=sys.stderr)
    return 0
