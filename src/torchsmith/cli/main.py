"""``torchsmith`` entry point: dispatches to one module per command.

Each command module in ``torchsmith.cli`` defines ``HELP`` (one line), ``add_arguments(parser)``
and ``run(args) -> int``. Command modules import torch only inside ``run``, so ``torchsmith --help``
and light commands start fast.

Exit codes: 0 ok, 1 failure, 2 bad usage or bad input, 141 when the reader of stdout went
away (``torchsmith zoo --json | head``: quietly, like coreutils killed by SIGPIPE, no traceback).
A :class:`TorchsmithError` becomes one line
on stderr; ``--debug`` shows the traceback instead. With ``--json`` every failure -- bad usage, bad
input, a failure, an internal error -- also prints one JSON object on stdout,
``{"error": MESSAGE, "kind": ..., "exit_code": N}`` (see :func:`torchsmith.cli._output.error_json`),
so a machine reading stdout always gets JSON.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

# command name -> module. Keep this table the only place a command is declared.
COMMANDS: dict[str, str] = {
    "train": "torchsmith.cli.train",
    "tune": "torchsmith.cli.tune",
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
    "weights": "torchsmith.cli.weights",
    "export": "torchsmith.cli.export",
}


class _UsageError(Exception):
    def __init__(self, parser: argparse.ArgumentParser, message: str) -> None:
        super().__init__(message)
        self.parser = parser


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors reach :func:`main` (which prints them as text or JSON)."""

    def error(self, message: str):  # type: ignore[override]
        raise _UsageError(self, message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
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


EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: what a shell reports for `yes | head`


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``torchsmith`` command line with ``argv`` (default ``sys.argv[1:]``); the exit code."""
    try:
        code = _main(argv)
        sys.stdout.flush()  # a closed pipe fails here, not in the interpreter's shutdown
        return code
    except BrokenPipeError:
        # The reader (head, less, grep -m1) has what it wanted. Point stdout at /dev/null so the
        # interpreter's final flush does not print "Exception ignored ... BrokenPipeError".
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):  # no real file descriptor behind stdout (tests)
            pass
        return EXIT_BROKEN_PIPE


def _main(argv: Sequence[str] | None = None) -> int:
    from torchsmith.cli._output import error_json

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except _UsageError as e:
        if "--json" in argv:
            error_json(str(e), "usage", 2)
        e.parser.print_usage(sys.stderr)
        print(f"{e.parser.prog}: error: {e}", file=sys.stderr)
        return 2
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    from torchsmith.errors import TorchsmithError

    as_json = bool(getattr(args, "json", False))
    try:
        return int(args._run(args) or 0)
    except TorchsmithError as e:
        if args.debug:
            raise
        if as_json:
            error_json(str(e), type(e).__name__, e.exit_code, getattr(e, "details", None))
        print(f"torchsmith {args.command}: error: {e}", file=sys.stderr)
        return e.exit_code
    except BrokenPipeError:
        raise  # the reader went away: main() ends quietly
    except KeyboardInterrupt:
        if as_json:
            error_json("interrupted", "interrupted", 130)
        print(f"torchsmith {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if args.debug:
            raise
        if as_json:
            error_json(f"{type(e).__name__}: {e}", "internal", 1)
        print(
            f"torchsmith {args.command}: internal error: {type(e).__name__}: {e} "
            "(run with --debug for the traceback)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
