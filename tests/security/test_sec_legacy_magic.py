"""A legacy torch file is known by its magic number's value, as torch knows it, not by its bytes."""

from __future__ import annotations

import pickle
import warnings

import pytest
import torch

from torchsmith.checkpoint import read_state_dict

MAGIC = 0x1950A86A20F9469CFC6C


@pytest.mark.parametrize(
    ("encoding", "protocol"),
    # protocols 4 and 5 pickle with FRAME, which torch's weights_only reader refuses: only the byte varies
    [("long1", 2), ("long1", 3), ("long1", 4), ("long1", 5), ("other_protocol_pickle", 3)],
)
def test_a_legacy_file_with_another_magic_encoding_reads_as_torch_reads_it(tmp_path, protocol, encoding):
    path = tmp_path / "legacy.pt"
    state = {"w": torch.randn(3), "s": torch.tensor(7)}
    torch.save(state, path, _use_new_zipfile_serialization=False)
    data = bytearray(path.read_bytes())
    head = pickle.dumps(MAGIC, protocol=2)
    assert data.startswith(head)
    if encoding == "long1":
        data[1] = protocol  # the protocol byte alone changed (a mutation the differential campaign found)
    else:
        data[: len(head)] = b""
        data[0:0] = pickle.dumps(MAGIC, protocol=protocol)  # the same number pickled another way
    path.write_bytes(bytes(data))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch warns about non-default pickle protocols
        want = torch.load(path, weights_only=True)
    got = read_state_dict(path)
    assert list(got) == list(want)
    assert all(torch.equal(got[k], want[k]) for k in want)
