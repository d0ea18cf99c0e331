"""Differential campaign: torchsmith's checkpoint reader against ``torch.load(weights_only=True)``.

Generates checkpoints (``tests/security/_diff_gen.py``: pickle programs over allowlisted, unknown and
dangerous globals, storages, offsets, strides, nesting, memo tricks and record rewrites, in zip and
legacy containers, plus mutated real ``torch.save`` files), reads each with both readers and counts
outcomes. A difference is torchsmith returning anything torch did not, or failing with anything but
a ``CheckpointError``. With ``--audit`` (the default) an audit hook installed before torchsmith is
imported checks, during torchsmith's reads only, that no file other than the checkpoint is opened
and that no process, network or import happens.

    .venv/bin/python scripts/fuzz_reader.py --examples 100000 --seed 0        # a long campaign
    .venv/bin/python scripts/fuzz_reader.py --examples 200 --seed 1 --json    # what CI runs

Prints the examples tried, the outcome counts and every difference (seed and description); exits 1
when there is any difference or audit finding.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

_HERE = Path(__file__).resolve().parent
_EVENTS_BAD = ("subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork",
               "socket.connect", "socket.getaddrinfo", "urllib.Request", "ctypes.dlopen", "exec",
               "compile")  # fmt: skip

_armed: list[str | None] = [None]  # the path being read while armed
_findings: list[str] = []


def _hook(event: str, args: tuple) -> None:
    path = _armed[0]
    if path is None:
        return
    if event == "open":
        target = args[0]
        if isinstance(target, int):
            return  # os.fdopen of a descriptor already checked
        if os.path.realpath(os.fsdecode(target)) != os.path.realpath(path):
            _findings.append(f"opened {target!r} while reading {path}")
    elif event == "import":
        _findings.append(f"imported {args[0]} while reading {path}")
    elif event.startswith(_EVENTS_BAD):
        _findings.append(f"{event} while reading {path}")


def main(argv: list[str] | None = None) -> int:
    """Run the campaign; returns the exit status (0: no difference, no audit finding)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--examples", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0, help="first seed; example i uses seed + i")
    ap.add_argument("--no-audit", action="store_true")
    ap.add_argument("--json", action="store_true", help="print one JSON object at the end")
    ap.add_argument("--report-every", type=int, default=0, help="print progress every N examples")
    args = ap.parse_args(argv)
    if not args.no_audit:
        sys.addaudithook(_hook)
    sys.path.insert(0, str(_HERE.parent / "tests" / "security"))
    sys.path.insert(0, str(_HERE.parent / "src"))
    import _diff_gen as gen  # (after the hook: its imports are not armed)
    import numpy  # noqa: F401  (numpy values decode with numpy, imported before arming)

    from torchsmith.checkpoint import formats, read, torch_files  # noqa: F401

    counts: dict[str, int] = {}
    diffs: list[str] = []
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fuzz_reader_") as tmp:
        path = Path(tmp) / "case.pt"
        # Warm-up: lazy imports of the reader's own modules happen here, before arming.
        for warm in range(20):
            gen.check_case(path, gen.gen_case(random.Random(-1 - warm), path))
        for i in range(args.examples):
            seed = args.seed + i
            known = gen.gen_case(random.Random(seed), path)
            orig_ours = gen.ours

            def armed_ours(p, _orig=orig_ours):
                _armed[0] = str(p)
                try:
                    return _orig(p)
                finally:
                    _armed[0] = None

            gen.ours = armed_ours
            try:
                n_before = len(_findings)
                outcome = gen.check_case(path, known)
            finally:
                gen.ours = orig_ours
            if len(_findings) > n_before:
                outcome = "DIFF: audit: " + "; ".join(_findings[n_before:][:3])
            key = "difference" if outcome.startswith("DIFF") else outcome
            counts[key] = counts.get(key, 0) + 1
            if outcome.startswith("DIFF"):
                diffs.append(f"seed {seed} ({known['kind']}): {outcome}")
                if args.report_every:
                    print("  " + diffs[-1], flush=True)
            if args.report_every and (i + 1) % args.report_every == 0:
                print(
                    f"{i + 1} examples, {len(diffs)} differences, {time.perf_counter() - start:.0f} s",
                    flush=True,
                )
    elapsed = time.perf_counter() - start
    summary = {"examples": args.examples, "seed": args.seed, "differences": len(diffs),
               "outcomes": counts, "seconds": round(elapsed, 1), "audit": not args.no_audit,
               "first_differences": diffs[:20]}  # fmt: skip
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"examples tried: {args.examples} (seeds {args.seed}..{args.seed + args.examples - 1})")
        print(f"differences found: {len(diffs)}")
        print(f"outcomes: {json.dumps(counts, sort_keys=True)}")
        print(f"time: {elapsed:.1f} s; audit hook: {'on' if not args.no_audit else 'off'}")
        for d in diffs[:20]:
            print("  " + d)
    return 1 if diffs else 0


if __name__ == "__main__":
    sys.exit(main())
