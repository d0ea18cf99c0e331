"""Which folder a run writes to, chosen so that a run never replaces another run.

* No ``out``: a new folder, ``runs/NAME``, then ``runs/NAME-2``, ``runs/NAME-3`` ... (the first that
  does not exist or is empty). A resume without ``out`` continues the newest of them (the highest
  number), which is also where a command restarted by ``torchrun --max-restarts`` finds its run.
* An explicit ``out`` that already holds files is refused unless the run resumes it (``resume``)
  or replaces it (``overwrite``): starting a recipe into a folder by mistake costs an error
  message, not the earlier run.

The temporary files an interrupted atomic write leaves (``.NAME.PID.XXXXXXXX[.ckpt].tmp``) do not
count as content: they are what a resume completes or removes.

>>> import tempfile, pathlib
>>> root = pathlib.Path(tempfile.mkdtemp())
>>> new_run_folder(root / "digits").name
'digits'
>>> (root / "digits").mkdir(); (root / "digits" / "last.pt").write_bytes(b"x")
1
>>> new_run_folder(root / "digits").name, latest_run_folder(root / "digits").name
('digits-2', 'digits')
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from torchsmith.errors import InputError

__all__ = ["check_out_folder", "latest_run_folder", "new_run_folder", "run_outputs"]

_TMP = re.compile(r"\..+\.\d+\.[0-9a-f]{8}(\.ckpt)?\.tmp")

# What a run writes into its folder; ``overwrite`` removes these (and nothing else) before the new
# run's first checkpoint.
_RUN_FILES = (
    "last.pt",
    "best.pt",
    "recipe.yaml",
    "metrics.jsonl",
    "metrics.csv",
    "curves.png",
    "model.safetensors",
)
_RUN_FOLDERS = ("checkpoints", "dcp", "tensorboard", "profile")


def _entries(folder: Path) -> list[str]:
    """The folder's entries that are not an interrupted write's temporary files."""
    try:
        return sorted(p.name for p in folder.iterdir() if not _TMP.fullmatch(p.name))
    except (FileNotFoundError, NotADirectoryError):
        return []


def holds_files(folder: str | os.PathLike) -> bool:
    """True when ``folder`` exists and has entries other than temporary files."""
    return bool(_entries(Path(folder)))


def _numbered(base: Path) -> list[tuple[int, Path]]:
    pattern = re.compile(rf"{re.escape(base.name)}(?:-(\d+))?")
    found = []
    if base.parent.is_dir():
        for p in base.parent.iterdir():
            m = pattern.fullmatch(p.name)
            if m and p.is_dir() and (m.group(1) is None or int(m.group(1)) >= 2):
                found.append((int(m.group(1) or 1), p))
    return sorted(found)


def new_run_folder(base: str | os.PathLike) -> Path:
    """``base`` when it is free (absent or empty), else ``base-2``, ``base-3``, ...: the first free one."""
    base = Path(base)
    if not holds_files(base):
        return base
    taken = {n for n, _ in _numbered(base)}
    n = max(taken, default=1) + 1
    while holds_files(base.with_name(f"{base.name}-{n}")):  # pragma: no cover - a folder made meanwhile
        n += 1
    return base.with_name(f"{base.name}-{n}")


def latest_run_folder(base: str | os.PathLike) -> Path | None:
    """The newest of ``base``, ``base-2``, ... that exists (the highest number), or None."""
    found = _numbered(Path(base))
    return found[-1][1] if found else None


# What a run writes before its first checkpoint: a folder holding only these holds no run to lose.
BEFORE_FIRST_CHECKPOINT = ("tensorboard", "profile")


def check_out_folder(
    out: str | os.PathLike, *, resume: bool, overwrite: bool, allow: tuple[str, ...] = ()
) -> None:
    """Refuse (``InputError``, CLI exit 2) to start a new run in a folder that already holds files.

    ``resume``: the run continues what is there; ``overwrite``: the user asked to replace it;
    ``allow``: entries that do not count (``resume="auto"`` after a kill before the first
    checkpoint: :data:`BEFORE_FIRST_CHECKPOINT`).
    """
    if resume or overwrite:
        return
    entries = [e for e in _entries(Path(out)) if e not in allow]
    if not entries:
        return
    if not Path(out).is_dir():
        raise InputError(f"--out {out}: exists and is not a folder")
    shown = ", ".join(entries[:6]) + (" ..." if len(entries) > 6 else "")
    raise InputError(
        f"--out {out}: the folder already holds files ({shown}); a new run never replaces another: "
        "use --resume to continue that run, --overwrite to replace it, or another --out "
        "(without --out each run gets a new folder runs/NAME, runs/NAME-2, ...)"
    )


def run_outputs(folder: str | os.PathLike) -> list[Path]:
    """The files and folders an earlier run left in ``folder`` (what ``overwrite`` removes)."""
    folder = Path(folder)
    out = [folder / n for n in _RUN_FILES if (folder / n).exists()]
    out += [folder / n for n in _RUN_FOLDERS if (folder / n).is_dir()]
    if folder.is_dir():
        out += sorted(p for p in folder.iterdir() if _TMP.fullmatch(p.name))
    return out
