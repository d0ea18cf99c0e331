"""Differential property tests: torchsmith's reader against torch.load(weights_only=True) itself.

For every generated checkpoint (pickle programs over allowlisted, unknown and dangerous globals,
persistent ids, shared storages, offsets, strides, nesting, memo reuse, record rewrites; zip and
legacy containers, mutated zips and mutated real files; see ``_diff_gen.py``) torchsmith returns
exactly what torch returns (bytes, dtype, shape, strides, storage offset, storage sharing,
container types and values) or refuses with a CheckpointError; a file naming a dangerous global is
always refused. The seeded sample here is bounded (about 30 s); ``scripts/fuzz_reader.py`` runs the
long campaign, under an audit hook.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from _diff_gen import check_case, gen_case
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[2]


@settings(max_examples=250, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(rnd=st.randoms(use_true_random=False))
def test_generated_checkpoints_read_as_torch_reads_them_or_refused(tmp_path_factory, rnd):
    path = tmp_path_factory.mktemp("diff") / "case.pt"
    known = gen_case(rnd, path)
    outcome = check_case(path, known)
    assert not outcome.startswith("DIFF"), (known, outcome)


def test_campaign_script_under_audit_hook_finds_no_difference():
    # The script a long campaign runs, on a seeded sample, in a fresh process with its audit hook:
    # no file but the checkpoint opened, no import, process or network while torchsmith reads.
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "fuzz_reader.py"), "--examples", "250", "--seed", "7",
         "--json"],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["differences"] == 0 and summary["examples"] == 250 and summary["audit"]
    # The sample reaches both sides: files torch reads (compared) and files both refuse.
    assert summary["outcomes"].get("equal", 0) > 30 and summary["outcomes"].get("both-refuse", 0) > 30
