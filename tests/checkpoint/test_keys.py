"""Key fitting: wrapper prefixes anywhere, any order, removed or added; rename rules on top."""

from __future__ import annotations

import pytest

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
