"""``torchsmith`` entry point: dispatches to one module per command.

Each command module in ``torchsmith.cli`` defines ``HELP`` (one line), ``add_arguments(parser)``
and ``run(args) -> int``. Command modules import torch only inside ``run``, so ``torchsmith --help``
and light commands start fast.

Exit codes: 0 ok, 1 failure, 2 bad usage or bad input. A :class:`TorchsmithError` becomes one line
on stderr; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# command name -> module. Keep this table the only place a command is declared.
COMMANDS: dict[str, str] = {
    "train": "torchsmith.cli.train",
    "eval": "torchsmith.cli.eval",
    "predict": "torchsmith.cli.predict",
    "zoo": "torchsmith.cli.zoo",
    "summary": "torchsmith.cli.summary",
    "inspect": "torchsmith.cli.inspect",
    "convert": "torchsmith.cli.convert",
    "diff": "torchsmith.cli.diff",
    "verify": "torchsmith.cli.verify",
    "build": "torchsmith.cli.build",
    "doctor": "torchsmith.cli.doctor",
    "load": "torchsmith.cli.load",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="torchsmith",
        description="Define, reshape, initialise, transfer, train and save PyTorch models.",
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    parser.add_argument("--version", action="version", version=f"torchsmith {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=module.HELP, description=getattr(module, "DESCRIPTION", module.HELP))
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("torchsmith")
    except PackageNotFoundError:
        return "unknown"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    from torchsmith.errors import TorchsmithError

    try:
        return int(args._run(args) or 0)
    except TorchsmithError as e:
        if args.debug:
            raise
        print(f"torchsmith {args.command}: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"torchsmith {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if args.debug:
            raise
        print(
            f"torchsmith {args.command}: internal error: {type(e).__name__}: {e} "
            "(run with --debug for the traceback)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
