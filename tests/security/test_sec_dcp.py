"""DCP folders: torch never unpickles an unchecked .metadata; the checked one still loads."""

from __future__ import annotations

import builtins
import os
import pickle

import pytest
import torch
from _sec_corpus import Reduce, dcp_folder, poison_dcp

from torchsmith.checkpoint import read_checkpoint, read_state_dict
from torchsmith.checkpoint.dcp import load_dcp, read_dcp_metadata, safe_load_planner, safe_storage_reader
from torchsmith.checkpoint.verify import verify_checkpoint
from torchsmith.errors import CheckpointError


def test_checked_metadata_is_torchs_own_object_and_loads(tmp_path):
    sd = {"w": torch.randn(3, 4), "b": {"c": torch.arange(5)}, "step": 7, "name": "x"}
    dcp_folder(tmp_path / "ck", sd)
    meta = read_dcp_metadata(tmp_path / "ck")
    from torch.distributed.checkpoint.metadata import Metadata, TensorStorageMetadata

    assert type(meta) is Metadata
    assert isinstance(meta.state_dict_metadata["w"], TensorStorageMetadata)
    assert meta.state_dict_metadata["w"].size == torch.Size([3, 4])
    out = {"w": torch.zeros(3, 4), "b": {"c": torch.zeros(5, dtype=torch.long)}, "step": 0, "name": ""}
    load_dcp(out, tmp_path / "ck", no_dist=True)
    assert torch.equal(out["w"], sd["w"]) and torch.equal(out["b"]["c"], sd["b"]["c"])
    assert out["step"] == 7 and out["name"] == "x"
    # The same pieces, handed to torch directly.
    import torch.distributed.checkpoint as dcp

    out2 = {"w": torch.zeros(3, 4)}
    dcp.load(
        out2, storage_reader=safe_storage_reader(tmp_path / "ck"), planner=safe_load_planner(), no_dist=True
    )
    assert torch.equal(out2["w"], sd["w"])


PAYLOADS = {
    "exec": lambda m: Reduce(builtins.exec, f"open({str(m)!r}, 'w').close()"),
    "eval": lambda m: Reduce(builtins.eval, f"open({str(m)!r}, 'w')"),
    "os.system": lambda m: Reduce(os.system, f"touch {m}"),
    "getattr": lambda m: Reduce(getattr, Reduce(__import__, "os"), "system"),
    "fx_exec_with_source": lambda m: Reduce(
        __import__("torch.fx.graph_module", fromlist=["x"])._exec_with_source, f"open({str(m)!r}, 'w')", {}
    ),
}


@pytest.mark.parametrize("field", ["planner_data", "storage_meta", "version"])
@pytest.mark.parametrize("kind", sorted(PAYLOADS))
def test_poisoned_metadata_never_runs(tmp_path, kind, field):
    marker = tmp_path / "PWNED"
    ck = poison_dcp(dcp_folder(tmp_path / "ck"), field, PAYLOADS[kind](marker))
    for call in (
        lambda: read_state_dict(ck),
        lambda: verify_checkpoint(ck),
        lambda: read_dcp_metadata(ck),
        lambda: load_dcp({"w": torch.zeros(2, 3)}, ck, no_dist=True),
    ):
        with pytest.raises(CheckpointError, match=r"refus|not valid"):
            call()
    assert not marker.exists()


def test_bytes_entry_pickle_is_not_run(tmp_path):
    # A non-tensor entry whose bytes in .distcp are a code-running pickle: torch's default planner
    # reads it with weights_only=False; the safe planner refuses it.
    marker = tmp_path / "PWNED"
    ck = dcp_folder(tmp_path / "ck", {"w": torch.zeros(2), "extra": Reduce(os.system, f"touch {marker}")})
    with pytest.raises(CheckpointError, match="'extra' is not plain data"):
        load_dcp({"w": torch.zeros(2), "extra": None}, ck, no_dist=True)
    assert not marker.exists()


def test_data_files_must_stay_inside_the_folder(tmp_path):
    ck = dcp_folder(tmp_path / "ck")
    with open(ck / ".metadata", "rb") as f:
        meta = pickle.load(f)
    (tmp_path / "outside.distcp").write_bytes((ck / "__0_0.distcp").read_bytes())
    for rel in ("../outside.distcp", str(tmp_path / "outside.distcp"), "sub/../__0_0.distcp"):
        for info in meta.storage_data.values():
            info.relative_path = rel
        with open(ck / ".metadata", "wb") as f:
            pickle.dump(meta, f)
        with pytest.raises(CheckpointError, match="not a file name inside the folder"):
            read_dcp_metadata(ck)
    os.symlink(tmp_path / "outside.distcp", ck / "link.distcp")
    for info in meta.storage_data.values():
        info.relative_path = "link.distcp"
    with open(ck / ".metadata", "wb") as f:
        pickle.dump(meta, f)
    with pytest.raises(CheckpointError, match="leaves the folder"):
        read_state_dict(ck)


def test_wrong_field_types_are_clean_errors(tmp_path):
    ck = dcp_folder(tmp_path / "ck")
    with open(ck / ".metadata", "rb") as f:
        meta = pickle.load(f)
    meta.state_dict_metadata["w"].size = "big"
    with open(ck / ".metadata", "wb") as f:
        pickle.dump(meta, f)
    with pytest.raises(CheckpointError, match=r"w: size"):
        read_checkpoint(ck)
    (ck / ".metadata").write_bytes(b"\x80\x04garbage")
    with pytest.raises(CheckpointError, match="damaged"):
        read_checkpoint(ck)
