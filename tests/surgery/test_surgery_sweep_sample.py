"""A seeded sample of bench/sweep_surgery.py (issue 23, item 4): no operation is WRONG against its
library's oracle, and no refused operation damages the model. The full sweep runs from the command
line (see docs/surgery.md)."""

from __future__ import annotations

import importlib.util
import json
import random
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[2] / "bench" / "sweep_surgery.py"


@pytest.fixture(scope="module")
def sweep():
    spec = importlib.util.spec_from_file_location("sweep_surgery", _PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# Small models only: the sample must stay within the suite's budget on two cores.
_POOL = {
    "torchvision": ["mobilenet_v3_small", "squeezenet1_1", "shufflenet_v2_x0_5", "lraspp_mobilenet_v3_large"],
    "timm": ["resnet10t", "mobilenetv3_small_050", "deit_tiny_distilled_patch16_224", "convnext_atto"],
    "transformers": ["vit", "gpt2", "resnet", "bert"],
}


def test_a_seeded_sample_is_never_wrong_nor_damaging(sweep, tmp_path):
    rng = random.Random(0)
    names = {lib: set(rng.sample(pool, 1)) for lib, pool in _POOL.items()}
    cases = [c for c in sweep.cases_for(list(_POOL), 0, 0) if c.name in names[c.lib]]
    assert len(cases) == 3
    rows: list[dict] = []
    ops = ["set_num_classes_7", "set_in_channels_1", "feature_info"]
    for case in cases:
        sweep.sweep_case(case, ops, set(), rows.append)
    assert len(rows) == len(ops) * len(cases)
    bad = [r for r in rows if r["verdict"] in ("WRONG", "DAMAGED")]
    assert not bad, json.dumps(bad, indent=1)
    assert sum(r["verdict"] == "PASS" for r in rows) >= len(rows) - 1
    assert "| library | op | PASS |" in sweep.table(rows)
