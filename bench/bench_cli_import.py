"""Benchmark: the whole-process time of ``torchsmith build`` / ``summary`` against ``import torch``.

Run:  .venv/bin/python bench/bench_cli_import.py [--repeat 5]

Each command is a fresh ``python`` process (the user's experience: start-up, imports, work, exit),
run round-robin with the baseline ``python -c "import torch"`` so load drifts hit all alike; the
median of each is printed with its ratio to the baseline (goal: <= 1.2x). A second reference, one
linear layer run on the meta device after ``import torch``, is torch's own price for the meta pass
that every spec check makes: torch imports ``torch._dynamo`` and ``sympy`` for its first meta
matmul/conv. The last column says whether the process imported timm or torchvision (it should not,
for specs and zoo names that do not name them).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MLP = str(ROOT / "examples" / "specs" / "s1_mlp.yaml")
PROBE = (
    "import sys, atexit\n"
    "atexit.register(lambda: sys.stderr.write('\\nLIBS=' + ','.join(m for m in ('timm', 'torchvision') "
    "if m in sys.modules) + '\\n'))\n"
)


def commands() -> dict[str, list[str]]:
    py = sys.executable
    cli = PROBE + "from torchsmith.cli.main import main\nsys.exit(main(sys.argv[1:]))\n"
    return {
        "python -c 'import torch' (baseline)": [py, "-c", "import torch"],
        "import torch + one meta Linear (torch's meta floor)": [
            py,
            "-c",
            "import torch\nx = torch.empty(1, 4, device='meta')\ntorch.nn.Linear(4, 3, device='meta')(x)",
        ],
        "torchsmith build s1_mlp.yaml --check": [py, "-c", cli, "build", MLP, "--check"],
        "torchsmith build s1_mlp.yaml": [py, "-c", cli, "build", MLP],
        "torchsmith summary mlp": [py, "-c", cli, "summary", "mlp"],
    }


def run(cmd: list[str]) -> tuple[float, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    t = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, check=False)
    elapsed = time.perf_counter() - t
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:2])} ... failed ({done.returncode}): {done.stderr[-500:]}")
    libs = ""
    for line in done.stderr.splitlines():
        if line.startswith("LIBS="):
            libs = line[5:] or "none"
    return elapsed, libs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    cmds = commands()
    for cmd in cmds.values():
        run(cmd)  # warm the file cache
    times: dict[str, list[float]] = {k: [] for k in cmds}
    libs: dict[str, str] = {}
    for _ in range(args.repeat):
        for name, cmd in cmds.items():
            elapsed, found = run(cmd)
            times[name].append(elapsed)
            libs[name] = found
    base = statistics.median(times["python -c 'import torch' (baseline)"])
    print(f"{'command':<55} {'median s':>9} {'x import torch':>15}  timm/torchvision imported")
    for name, values in times.items():
        med = statistics.median(values)
        print(f"{name:<55} {med:>9.2f} {med / base:>14.2f}x  {libs.get(name) or '-'}")


if __name__ == "__main__":
    main()
