"""kill -9 between the renames of a checkpoint write and of retention: a resume completes them.

Each case kills a child run just before one file operation (``_kill_rename.py``), resumes it in this
process, and compares the run folder with an uninterrupted run of the same recipe: ``best.pt`` is
the same checkpoint, ``checkpoints/`` keeps the same files, ``recipe.yaml`` and the metrics exist
and agree, and no temporary file is left. The moments are classes: between ``last.pt`` and each
name renamed after it, before the retention link, before the retention pruning; at the first,
a middle and the last checkpoint.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from _tiny import recipe

from torchsmith.training import train
from torchsmith.training.checkpointing import load_checkpoint

KILL = str(Path(__file__).with_name("_kill_rename.py"))

# 3 epochs of 4 steps, a checkpoint every 2 steps: 6 checkpoints; keep the last 2 and the best 1.
_RECIPE = recipe(
    data={"limit": 160, "batch_size": 32, "val_fraction": 0.2},
    optimizer={"name": "Adam", "lr": 0.05},
    checkpoint={"every_n_steps": 2, "keep_last": 2, "keep_best": 1, "metric": "val_loss"},
    logging=["jsonl", "csv"],
    train={"epochs": 3, "progress": False, "plot": False, "threads": 1},
)


def _folder_summary(out: Path) -> dict:
    best = load_checkpoint(out / "best.pt")
    last = load_checkpoint(out / "last.pt")
    strip = lambda rows: [{k: v for k, v in r.items() if k != "time"} for r in rows]  # noqa: E731
    jsonl = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return {
        "best": (best["epoch"], best["step"]),
        "last": (last["epoch"], last["step"]),
        "kept": sorted(p.name for p in (out / "checkpoints").iterdir()),
        "metrics": strip(jsonl),
        "csv_rows": len((out / "metrics.csv").read_text().splitlines()),
        "recipe": (out / "recipe.yaml").is_file(),
        "tmp": sorted(p.name for p in out.rglob("*.tmp")),
    }


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The unbroken run's folder, and how often it renamed onto each name (to aim at the last)."""
    root = tmp_path_factory.mktemp("ref")
    path = root / "r.yaml"
    path.write_text(yaml.safe_dump(_RECIPE))
    renames: dict[str, int] = {}
    real = os.replace

    def counting(src, dst, *args, **kwargs):
        name = os.path.basename(os.fspath(dst))
        renames[name] = renames.get(name, 0) + 1
        return real(src, dst, *args, **kwargs)

    os.replace = counting
    try:
        train(path, out=root / "whole", log=None)
    finally:
        os.replace = real
    return path, _folder_summary(root / "whole"), renames


# (operation, file name, which occurrence): the 6 checkpoints are at steps 2, 4 (epoch 1), 6, ... 12;
# each writes last.pt, best.pt when val_loss improved, the metrics files (and recipe.yaml first).
ALL_CASES = [
    ("replace", "best.pt", 1),  # the first checkpoint: best.pt never existed before
    ("replace", "best.pt", -1),  # its last write: no later improvement rewrites it (lost before the fix)
    ("replace", "recipe.yaml", 1),  # between last.pt and the run's first recipe.yaml
    ("replace", "metrics.jsonl", 2),
    ("replace", "metrics.csv", 6),  # the last checkpoint
    ("replace", "epoch-*", 6),  # the last checkpoint's retention link
    ("unlink", "epoch-*", 4),  # the last checkpoint's pruning: one file too many without a resume prune
]
# Each case is a training subprocess (~8 s of CPU): the suite runs a sample of the classes (the
# last best.pt, the first recipe.yaml, the last link, the last pruning); TORCHSMITH_ALL_KILLS=1
# runs them all. -1: the last time the unbroken run did it.
CASES = ALL_CASES if os.environ.get("TORCHSMITH_ALL_KILLS") else [ALL_CASES[i] for i in (1, 2, 5, 6)]


@pytest.mark.parametrize(("op", "name", "nth"), CASES, ids=[f"{o}-{n}-{k}" for o, n, k in CASES])
def test_resume_completes_what_a_kill_interrupted(tmp_path, reference, op, name, nth):
    path, expected, renames = reference
    if nth < 0:
        nth = renames[name] + 1 + nth
    out = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, KILL, str(path), str(out), op, name, str(nth)], env=env, capture_output=True
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    lines: list[str] = []
    train(path, out=out, resume=True, log=lines.append)
    got = _folder_summary(out)
    assert got == expected, "\n".join(lines)
