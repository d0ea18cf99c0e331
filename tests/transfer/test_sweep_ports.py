"""A small seeded matrix of bench/sweep_ports.py: WRONG stays 0 from models and from state_dicts (issue 24).

The whole sweep (``.venv/bin/python bench/sweep_ports.py``, minutes) is in docs/transfer.md; here a
few pairs, both directions, from the model and from its state_dict.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from torchsmith.errors import TransferError
from torchsmith.transfer import load_weights

_PATH = Path(__file__).resolve().parents[2] / "bench" / "sweep_ports.py"


@pytest.fixture(scope="module")
def sweep():
    spec = importlib.util.spec_from_file_location("sweep_ports", _PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["sweep_ports"] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("pair", ["gpt2 hf/nanogpt", "mnasnet1_0 tv/timm"])
def test_a_seeded_matrix_has_no_wrong_port(sweep, pair):
    pairs = [p for p in sweep.named_pairs() if p.name == pair]
    directions = ("a->b", "b->a") if pair.startswith("gpt2") else ("a->b",)
    rows = sweep.sweep(pairs, directions=directions)
    assert rows and not [r for r in rows if r["result"] in ("WRONG", "ERROR")], sweep.table(rows)
    by = {(r["direction"], r["from"]): r["result"] for r in rows}
    assert by[("a->b", "model")] == "PASS"  # the proven path ports these pairs
    if pair.startswith("mnasnet"):
        assert by[("a->b", "state_dict")] == "PASS"  # torchvision's MNASNet is identified and proven


def test_gpt2_from_a_state_dict_is_refused_naming_the_head_counts_or_ported_unverified(sweep):
    """The head count is not in GPT-2's shapes: candidates compute different functions."""
    torch.manual_seed(0)
    hf = sweep._hf("gpt2", "causal-lm", vocab_size=96, n_positions=32, n_embd=64, n_layer=2, n_head=4)()
    sd = hf.state_dict()
    model = sweep.NanoGPT()
    with pytest.raises(TransferError, match=r"n_head=.*compute different functions.*source_model="):
        load_weights(model, sd, match="structure", example_input=torch.randint(0, 96, (2, 16)))
    report = load_weights(model, sd, match="structure", example_input=torch.randint(0, 96, (2, 16)),
                          allow_unverified=True)  # fmt: skip
    assert str(report).startswith("UNVERIFIED: ") and report.to_dict()["verified"] is False
    assert any("transposed Conv1D = Linear" in e["equivalence"] for e in report.to_dict()["equivalences"])
    x = torch.randint(0, 96, (2, 16))
    with torch.no_grad():
        assert torch.allclose(model.eval()(x), hf.eval()(x).logits, atol=1e-5)
