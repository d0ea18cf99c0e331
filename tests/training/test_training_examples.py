"""The training examples run as users run them: S19 (seed loops, trap 12 fixed), S20 (DDP, 2 processes)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "training"


def _run(name: str) -> str:
    out = subprocess.run([sys.executable, str(EXAMPLES / name)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_s19_seed_loops_fixed_and_as_a_recipe():
    text = _run("s19_seed_loops.py")
    seed = float(re.search(r"seed loops \(fixed\): validation accuracy ([\d.]+)", text).group(1))
    ours = float(re.search(r"torchsmith recipe:\s+validation accuracy ([\d.]+)", text).group(1))
    assert seed > 0.5 and ours > 0.5  # both learn the digits: the swapped loss would not
    assert "Validation Loss" in text  # the seed printed "Training Loss" for validation too


def test_s20_two_processes_match_one():
    text = _run("s20_ddp.py")
    steps = re.search(r"2 processes: (\d+) steps, world size 2; 1 process: (\d+) steps", text)
    assert steps and steps.group(1) == steps.group(2)
    two, one = map(float, re.search(r"2 processes ([\d.]+), 1 process ([\d.]+)", text).groups())
    assert one > 0.8 and abs(two - one) <= 0.03
    assert (
        float(re.search(r"largest weight difference between the two runs: ([\d.e+-]+)", text).group(1)) < 0.1
    )
