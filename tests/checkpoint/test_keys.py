"""Key fitting: wrapper prefixes anywhere, any order, removed or added; renames; module versions."""

from __future__ import annotations

import pytest
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st

from torchsmith.checkpoint.keys import fit_keys, strip_wrappers, wrapper_prefix
from torchsmith.errors import InputError

PLAIN = ["conv.weight", "conv.bias", "fc.weight", "fc.bias"]


@pytest.mark.parametrize(
    ("key", "plain"),
    [
        ("module.fc.weight", "fc.weight"),
        ("_orig_mod.fc.weight", "fc.weight"),
        ("_orig_mod.module.fc.weight", "fc.weight"),
        ("module._orig_mod.fc.weight", "fc.weight"),
        ("model._orig_mod.fc.weight", "model.fc.weight"),
        ("fc.weight", "fc.weight"),
        ("module", "module"),  # a tensor's own name is never stripped
        ("layer.module", "layer.module"),
    ],
)
def test_strip_wrappers(key, plain):
    assert strip_wrappers(key) == plain


def test_wrapper_prefix():
    assert wrapper_prefix("_orig_mod.module.fc.weight") == "_orig_mod.module."
    assert wrapper_prefix("model._orig_mod.fc.bias") == "model._orig_mod."
    assert wrapper_prefix("fc.bias") == ""


@pytest.mark.parametrize("prefix", ["module.", "_orig_mod.", "_orig_mod.module.", "module._orig_mod."])
def test_removes_wrapper_prefixes(prefix):
    m = fit_keys([prefix + k for k in PLAIN], PLAIN)
    assert m.mapping == {prefix + k: k for k in PLAIN}
    assert m.prefixes_removed == [prefix]
    assert m.prefixes_added == []
    assert not m.unmatched_source and not m.unmatched_target
    assert "removed wrapper prefix" in m.describe()


def test_adds_wrapper_prefixes_and_converts_between_wrappers():
    m = fit_keys(PLAIN, ["module." + k for k in PLAIN])
    assert m.mapping == {k: "module." + k for k in PLAIN}
    assert m.prefixes_added == ["module."]
    m = fit_keys(["module." + k for k in PLAIN], ["_orig_mod." + k for k in PLAIN])
    assert m.mapping["module.fc.bias"] == "_orig_mod.fc.bias"
    assert m.prefixes_removed == ["module."] and m.prefixes_added == ["_orig_mod."]


def test_inner_wrapper_component():
    m = fit_keys(["backbone._orig_mod.fc.weight"], ["backbone.fc.weight"])
    assert m.mapping == {"backbone._orig_mod.fc.weight": "backbone.fc.weight"}


def test_unmatched_reported_both_ways():
    m = fit_keys(["module.fc.weight", "module.extra.weight"], ["fc.weight", "head.weight"])
    assert m.mapping == {"module.fc.weight": "fc.weight"}
    assert m.unmatched_source == ["module.extra.weight"]
    assert m.unmatched_target == ["head.weight"]
    assert "1 source keys unmatched" in m.describe()


def test_misspelt_prefix_is_not_needed():
    # Trap 4: the seeds strip 'modeule.' (a typo) and silently keep every 'module.' key.
    m = fit_keys(["module." + k for k in PLAIN], PLAIN)
    assert len(m.mapping) == len(PLAIN)


def test_exact_keys_win_over_wrapped_duplicates():
    m = fit_keys(["fc.weight", "module.fc.weight"], ["fc.weight"])
    assert m.mapping == {"fc.weight": "fc.weight"}
    assert m.unmatched_source == ["module.fc.weight"]
    assert not m.changed


def test_renames_apply_to_keys_as_written_in_the_source():
    # the rule a user writes after reading the file (wrappers included) matches; issue 11
    m = fit_keys(
        ["module.model.fc.weight", "module.model.conv.weight"],
        ["fc.weight", "conv.weight"],
        renames=[(r"^module\.model\.", "")],
    )
    assert m.mapping == {
        "module.model.fc.weight": "fc.weight",
        "module.model.conv.weight": "conv.weight",
    }
    assert m.renamed["module.model.fc.weight"] == "fc.weight"
    # a rule written for the wrapper-less names does not see a key whose written form differs
    miss = fit_keys(["module.backbone.fc.weight"], ["fc.weight"], renames=[(r"^backbone\.", "")])
    assert miss.mapping == {} and miss.unmatched_source == ["module.backbone.fc.weight"]
    assert "renamed by rules" in m.describe()


def test_bad_rename_rule():
    with pytest.raises(InputError, match=r"renames\[0\].*regular expression"):
        fit_keys(["a.b"], ["a.b"], renames=[("(", "")])
    with pytest.raises(InputError, match=r"renames\[0\]"):
        fit_keys(["a.b"], ["a.b"], renames=["oops"])


def test_package_import_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, torchsmith.checkpoint.keys, torchsmith.checkpoint; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_public_names_are_functions_even_after_submodule_imports():
    import torchsmith
    import torchsmith.checkpoint as ckpt
    import torchsmith.checkpoint.convert
    import torchsmith.checkpoint.inspect
    import torchsmith.checkpoint.saving

    for name in ckpt.__all__:
        assert not isinstance(getattr(ckpt, name), type(ckpt)), name
    assert torchsmith.save is ckpt.save and callable(torchsmith.save)


# --- module versions (_metadata) renamed with the keys: any module tree, any wrapper chain -------------


LEAVES = {
    "linear": lambda: nn.Linear(2, 2),
    "bn": lambda: nn.BatchNorm1d(2),  # _version 2
    "relu": lambda: nn.ReLU(),  # no tensors: its entry follows its nearest renamed ancestor
    "ln": lambda: nn.LayerNorm(2),
}
TREES = st.recursive(
    st.sampled_from(sorted(LEAVES)),
    lambda children: st.lists(children, min_size=1, max_size=3),
    max_leaves=6,
)
CHAINS = st.lists(st.sampled_from(["module", "_orig_mod"]), max_size=3)


def _build(tree):
    if isinstance(tree, str):
        return LEAVES[tree]()
    return nn.Sequential(*[_build(t) for t in tree])


class _Wrap(nn.Module):
    """DataParallel/DDP keep the model as .module, torch.compile as ._orig_mod: the same key layout."""

    def __init__(self, inner: nn.Module, name: str) -> None:
        super().__init__()
        setattr(self, name, inner)


def _wrap(model, chain):
    for name in reversed(chain):
        model = _Wrap(model, name)
    return model


@settings(max_examples=40, deadline=None)
@given(tree=TREES, source_chain=CHAINS, target_chain=CHAINS)
def test_module_versions_follow_the_keys_through_any_wrappers(tree, source_chain, target_chain):
    model = nn.Sequential(_build(tree), nn.Linear(2, 2))  # at least one tensor
    source = _wrap(model, source_chain).state_dict()
    target = _wrap(model, target_chain).state_dict()
    fit = fit_keys(source, list(target))
    assert not fit.unmatched_source and not fit.unmatched_target
    out = fit.apply(source)
    assert list(out) == list(target)
    # every entry of the model's own modules, under the target's names and with their values;
    # the target's wrapper entries (above the model's root) only where the source had them too
    wrappers = {".".join(target_chain[:i]) for i in range(len(target_chain))}
    for k, v in target._metadata.items():
        assert k in wrappers or out._metadata[k] == v, k
    assert all(target._metadata[k] == v for k, v in out._metadata.items())
    assert fit.metadata == out._metadata
    _wrap(model, target_chain).load_state_dict(out)


def test_keys_without_metadata_stay_without():
    fit = fit_keys({"module.fc.weight": 1}, ["fc.weight"])
    assert fit.metadata is None and not hasattr(fit.apply({"module.fc.weight": 1}), "_metadata")
