"""Code blocks of README.md and docs/*.md, as a user would copy them, and how each one is checked.

A block is run as written: ``python`` blocks by the project's interpreter in a fresh process,
shell blocks (``bash``, ``sh`` or no language) line by line with ``bash`` and the INSTALLED console
script ``torchsmith`` first on ``PATH``. An HTML comment on the line just before a fence changes
that (it is invisible when the markdown is rendered)::

    <!-- docs-test: skip (REASON) -->              shown as SKIPPED with REASON
    <!-- docs-test: save-as NAME; run COMMAND -->   write the block to NAME, then run COMMAND

In a shell block, a line ``$ COMMAND`` is followed by the output the doc shows: every such output
line (up to a trailing ``...``) must appear in what the command prints. A line that shows a
command's syntax (``torchsmith inspect CKPT [--json]``: an ALL-CAPS placeholder or ``[...]``) is
checked against ``torchsmith COMMAND --help``: the command and each ``--option`` must exist.
"""

from __future__ import annotations

import dataclasses
import re
import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

_FENCE = re.compile(r"^(```+)\s*([\w+-]*)\s*$")
_DIRECTIVE = re.compile(r"^<!--\s*docs-test:\s*(.*?)\s*-->\s*$")
_SKIP = re.compile(r"^skip\s*\((.+)\)$")
_SAVE_AS = re.compile(r"^save-as\s+(\S+)\s*;\s*run\s+(.+)$")
_PLACEHOLDER = re.compile(r"^[A-Z][A-Z0-9_]*(\.\.\.)?$")
_SHELL = {"", "bash", "sh", "shell", "console"}

#: Lines (or blocks) that cannot run in a test, whatever the doc says: (pattern, why).
LINE_SKIPS = [
    (
        re.compile(r"^torchrun\b"),
        "starts several processes under torchrun (tests/training/test_distributed.py)",
    ),
]


@dataclasses.dataclass(frozen=True)
class Block:
    """One fenced code block: where it is, its language, its text and the directive before it."""

    doc: Path
    line: int  # 1-based line of the opening fence
    lang: str
    text: str
    directive: str | None

    @property
    def id(self) -> str:
        """``docs/zoo.md:6``: the test id and the place a failure names."""
        doc = self.doc.relative_to(ROOT) if self.doc.is_relative_to(ROOT) else self.doc.name
        return f"{doc}:{self.line}"

    @property
    def skip_reason(self) -> str | None:
        """The reason given by a ``skip (...)`` directive, or None."""
        m = _SKIP.match(self.directive or "")
        return m.group(1) if m else None

    @property
    def save_as(self) -> tuple[str, str] | None:
        """``(file name, command)`` from a ``save-as NAME; run COMMAND`` directive, or None."""
        m = _SAVE_AS.match(self.directive or "")
        return (m.group(1), m.group(2)) if m else None


def blocks(doc: Path) -> list[Block]:
    """Every fenced code block of ``doc``, in order."""
    lines = doc.read_text(encoding="utf-8").splitlines()
    found: list[Block] = []
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, lang, start = m.group(1), m.group(2).lower(), i
        j = i + 1
        while j < len(lines) and lines[j].strip() != fence:
            j += 1
        prev = start - 1
        while prev >= 0 and not lines[prev].strip():
            prev -= 1
        d = _DIRECTIVE.match(lines[prev]) if prev >= 0 else None
        found.append(
            Block(doc, start + 1, lang, "\n".join(lines[start + 1 : j]) + "\n", d.group(1) if d else None)
        )
        i = j + 1
    return found


def all_blocks() -> list[Block]:
    """The blocks of README.md and every docs/*.md page."""
    return [b for doc in DOCS for b in blocks(doc)]


@dataclasses.dataclass
class Step:
    """One thing to do for a shell block: run ``command``, check syntax, or skip it (``skip`` = why)."""

    line: int
    command: str
    kind: str  # "run", "syntax" or "skip"
    expect: list[str] = dataclasses.field(default_factory=list)
    skip: str = ""


def _is_syntax(command: str) -> bool:
    try:
        words = shlex.split(command, comments=True)
    except ValueError:
        return False
    return any(w.startswith("[") or _PLACEHOLDER.match(w) for w in words[1:])


def shell_steps(block: Block) -> list[Step]:
    """The commands of a shell block with the output each one shows; a block without one is an error."""
    steps: list[Step] = []
    has_prompt = any(line.startswith("$ ") for line in block.text.splitlines())
    for offset, raw in enumerate(block.text.splitlines()):
        line = raw.rstrip()
        if not line.strip():
            continue
        if has_prompt and not line.startswith("$ "):
            if not steps:
                raise ValueError(f"{block.id}: output before any '$ ' command")
            steps[-1].expect.append(line)
            continue
        command = line[2:] if line.startswith("$ ") else line
        if command.startswith(" ") and steps:  # a continuation line of a syntax block
            steps[-1].command += " " + command.strip()
            continue
        step = Step(block.line + 1 + offset, command, "syntax" if _is_syntax(command) else "run")
        for pattern, why in LINE_SKIPS:
            if pattern.search(command):
                step.kind, step.skip = "skip", why
        steps.append(step)
    return steps


def options_in(command: str) -> tuple[str | None, list[str]]:
    """The ``torchsmith`` subcommand and the ``--options`` a syntax line names."""
    words = re.sub(r"#.*", "", command).replace("[", " ").replace("]", " ").replace("|", " ").split()
    if not words or not words[0].endswith("torchsmith"):
        return None, []
    sub = words[1] if len(words) > 1 and not words[1].startswith("-") else None
    opts = [re.split(r"[=\s]", w)[0].rstrip(".") for w in words if w.startswith("--")]
    return sub, opts


def expected_line(shown: str) -> str:
    """The part of an output line the doc shows that must appear as is (``...`` and after: anything)."""
    return shown.split("...")[0].strip()
