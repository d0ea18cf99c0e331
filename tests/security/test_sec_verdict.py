"""inspect's safety verdict: every global a pickle names is classified; unknown is never called safe."""

from __future__ import annotations

import os

import pytest
import torch
from _sec_corpus import Reduce, named_call_pickle

from torchsmith.checkpoint.inspect import inspect_checkpoint
from torchsmith.errors import CheckpointError


class _Custom:
    pass


def test_plain_state_dict_is_known_safe(tmp_path):
    torch.save({"w": torch.zeros(2)}, tmp_path / "a.pt")
    s = inspect_checkpoint(tmp_path / "a.pt")["safety"]
    assert s["verdict"] == "known-safe" and {c["class"] for c in s["calls"]} == {"known-safe"}


def test_unknown_class_is_reported_unknown(tmp_path):
    torch.save({"w": torch.zeros(2), "x": _Custom()}, tmp_path / "b.pt")
    s = inspect_checkpoint(tmp_path / "b.pt")["safety"]
    assert s["verdict"] == "unknown"
    assert {"name": f"{__name__}._Custom", "class": "unknown"} in s["calls"]


@pytest.mark.parametrize(
    "qualname",
    ["cProfile.run", "timeit.timeit", "pydoc.pipepager", "torch.fx.graph_module._exec_with_source"],
)
def test_gadgets_are_dangerous_and_refused(tmp_path, qualname):
    danger = {"name": qualname, "class": "dangerous", "danger": "code execution"}
    f = tmp_path / "g.pkl"
    f.write_bytes(named_call_pickle(qualname, "print(1)"))
    with pytest.raises(CheckpointError, match="treat the whole file as hostile") as e:
        inspect_checkpoint(f)
    assert e.value.safety["verdict"] == "dangerous"
    assert danger in e.value.safety["calls"]


def test_os_system_message_does_not_bless_torch_load(tmp_path):
    import pickle

    (tmp_path / "e.pkl").write_bytes(pickle.dumps({"w": Reduce(os.system, "true")}))
    with pytest.raises(CheckpointError) as e:
        inspect_checkpoint(tmp_path / "e.pkl")
    assert "do not load it with torch.load" not in str(e.value)
    assert "hostile" in str(e.value)


def test_cli_explains_a_refused_file_in_text_and_json(tmp_path, capsys):
    import json
    import pickle

    from torchsmith.cli.main import main

    f = tmp_path / "e.pkl"
    f.write_bytes(pickle.dumps({"w": Reduce(os.system, "true")}))
    assert main(["inspect", str(f)]) == 2
    out = capsys.readouterr().out
    assert "refused; safety dangerous" in out and "posix.system" in out and "dangerous" in out
    assert main(["inspect", str(f), "--json"]) == 2
    obj = json.loads(capsys.readouterr().out)
    assert obj["exit_code"] == 2 and obj["details"]["safety"]["verdict"] == "dangerous"
    entry = {"name": "posix.system", "class": "dangerous", "danger": "process"}
    assert entry in obj["details"]["safety"]["calls"]
