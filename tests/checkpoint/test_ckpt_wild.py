"""Files written by the real libraries read bit-identically (issue 11, checkpoint side)."""

from __future__ import annotations

import json
import pickle
import struct
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import safetensors.torch
import torch

from torchsmith.checkpoint import diff_checkpoints, read_checkpoint, read_state_dict, sniff, verify_checkpoint
from torchsmith.checkpoint._refs import QUANTIZED_DTYPES
from torchsmith.checkpoint.formats import open_raw
from torchsmith.errors import CheckpointError


def _bits_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.dtype != b.dtype or a.shape != b.shape or a.stride() != b.stride():
        return False
    return torch.equal(a.contiguous().view(-1).view(torch.uint8), b.contiguous().view(-1).view(torch.uint8))


def _random_of(dtype: torch.dtype, shape=(4, 6)) -> torch.Tensor:
    g = torch.Generator().manual_seed(hash(str(dtype)) % 1000)
    itemsize = torch.empty(0, dtype=dtype).element_size()
    raw = torch.randint(0, 256, (shape[0], shape[1] * itemsize), dtype=torch.uint8, generator=g)
    return raw.view(dtype)


def _savable_dtypes() -> list[torch.dtype]:
    """Every dtype this torch's torch.save writes (found by trying each one)."""
    found = []
    for name in sorted(dir(torch)):
        dt = getattr(torch, name)
        if not isinstance(dt, torch.dtype) or dt in found or str(dt)[6:] in QUANTIZED_DTYPES:
            continue  # quantized: refused by name (test below)
        try:
            t = _random_of(dt)
            torch.save(t, _Null())
        except Exception:
            continue
        found.append(dt)
    return found


class _Null:
    def write(self, b):
        return len(b)

    def flush(self):
        pass


def _st_with_header_length(path, target: int) -> bytes:
    """A safetensors file written by safetensors.save_file whose header length is exactly ``target``."""
    tensors = {
        "w": torch.arange(6, dtype=torch.float32).reshape(2, 3),
        "b": torch.ones(3, dtype=torch.float16),
    }
    pad = 10
    for _ in range(8):
        safetensors.torch.save_file(tensors, str(path), metadata={"pad": "x" * pad})
        (n,) = struct.unpack("<Q", path.read_bytes()[:8])
        if n == target:
            return path.read_bytes()
        pad += target - n
    raise AssertionError(f"could not reach header length {target:#x}")


@pytest.mark.parametrize("length", [0x280, 0x380, 0x480, 0x580, 0x10280])
def test_safetensors_whose_header_length_looks_like_a_pickle(tmp_path, length):
    path = tmp_path / "m.safetensors"
    data = _st_with_header_length(path, length)
    assert data[0] == 0x80 and 2 <= data[1] <= 5  # the bytes a pickle starts with
    assert sniff(path) == "safetensors"
    ours, ref = read_state_dict(path), safetensors.torch.load_file(str(path))
    assert ours.keys() == ref.keys() and all(_bits_equal(ours[k], ref[k]) for k in ref)
    assert verify_checkpoint(path)["ok"]


def test_damaged_safetensors_header_still_named(tmp_path):
    path = tmp_path / "m.safetensors"
    data = bytearray(_st_with_header_length(path, 0x280))
    # an offset past the end: neither a valid safetensors file nor a pickle
    text = data[8 : 8 + 0x280].decode().replace('"data_offsets":[0,24]', '"data_offsets":[0,99]')
    assert "[0,99]" in text
    path.write_bytes(bytes(data[:8]) + text.encode() + bytes(data[8 + 0x280 :]))
    expected = r"tensor 'w': shape \[2, 3\].*data_offsets \[0, 99\].*nor is it a readable pickle"
    with pytest.raises(CheckpointError, match=expected):
        read_state_dict(path)


def test_every_dtype_torch_save_writes_reads_bit_identically(tmp_path):
    dtypes = _savable_dtypes()
    names = {str(d) for d in dtypes}
    # the ones issue 11 names must be among them (they are what torch writes as UntypedStorage)
    for must in ("float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz", "float8_e8m0fnu",
                 "uint16", "uint32", "uint64", "bool", "complex64", "complex128", "bfloat16"):  # fmt: skip
        assert f"torch.{must}" in names
    sd = {str(d): _random_of(d) for d in dtypes}
    sd["view"] = sd["torch.float32"][1:, ::2]  # a strided view into a shared storage
    path = tmp_path / "all.pt"
    torch.save(sd, path)
    ref = torch.load(path, weights_only=True)
    ours = read_state_dict(path)
    assert ours.keys() == ref.keys()
    bad = [k for k in ref if not _bits_equal(ours[k], ref[k])]
    assert not bad


def test_quantized_dtype_refused_by_name(tmp_path):
    torch.save({"q": torch.zeros(4, dtype=torch.uint8).view(torch.qint8)}, tmp_path / "q.pt")
    with pytest.raises(CheckpointError, match="quantized dtype qint8"):
        read_state_dict(tmp_path / "q.pt")


def test_legacy_torch_format_dtypes(tmp_path):
    # the legacy (non-zip) format, for the dtypes torch itself can read back from it
    sd = {
        str(d): _random_of(d)
        for d in (torch.float32, torch.bfloat16, torch.bool, torch.complex64, torch.int8)
    }
    path = tmp_path / "legacy.pt"
    torch.save(sd, path, _use_new_zipfile_serialization=False)
    assert sniff(path) == "torch-legacy"
    ref, ours = torch.load(path, weights_only=True), read_state_dict(path)
    assert all(_bits_equal(ours[k], ref[k]) for k in ref)


def test_numpy_values_beside_a_state_dict(tmp_path, monkeypatch):
    sd = {"fc.weight": torch.randn(3, 2), "fc.bias": torch.randn(3)}
    extras = {
        "best_acc": np.float64(0.8125),
        "epoch": np.int64(7),
        "flag": np.bool_(True),
        "curve": np.linspace(0, 1, 6, dtype=np.float32).reshape(2, 3),
        "fortran": np.asfortranarray(np.arange(6, dtype=np.int16).reshape(2, 3)),
        "big_endian": np.arange(3, dtype=">u4"),
        "labels": np.array(["cat", "dog"]),
        "mixed": np.array([1, "a", None], dtype=object),
        "cplx": np.complex128(1 - 2j),
    }
    path = tmp_path / "ckpt.pt"
    torch.save({"state_dict": sd, **extras}, path)
    ckpt = read_checkpoint(path)
    assert ckpt.container_key == "state_dict"
    assert all(_bits_equal(ckpt.state_dict[k], sd[k]) for k in sd)
    obj = open_raw(path).obj
    ref = torch.load(path, weights_only=False)
    for k, v in extras.items():
        got = obj[k]
        assert type(got) is type(ref[k]), k
        if isinstance(v, np.ndarray):
            assert got.dtype == ref[k].dtype and got.shape == ref[k].shape and (got == ref[k]).all(), k
            assert got.flags.f_contiguous == ref[k].flags.f_contiguous
        else:
            assert got == ref[k], k
    assert "numpy array float32[2, 3]" in ckpt.other_keys["curve"]
    # protocol 5 (numpy's _frombuffer path) in a plain pickle
    p5 = tmp_path / "plain.pkl"
    p5.write_bytes(pickle.dumps({"a": np.arange(4.0), "s": np.float32(2.5)}, protocol=5))
    got = open_raw(p5).obj
    assert got["a"].tolist() == [0.0, 1.0, 2.0, 3.0] and got["s"] == np.float32(2.5)


def test_numpy_constructors_only_with_checked_arguments(tmp_path):
    # a dtype made from something that is not a type string, and _reconstruct of another class,
    # stay recorded calls: nothing is built from them and nothing is imported
    class Evil:
        def __reduce__(self):
            return (np.dtype, (np.ndarray, False, True))

    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"d": Evil(), "x": np.ma.masked_array([1, 2])}, protocol=2))
    obj = open_raw(path).obj
    assert "not executed" in repr(obj["d"])
    assert not isinstance(obj["x"], np.ndarray)


def test_hf_save_pretrained_sharded(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(
        vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=32,
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.BertModel(config)
    model.save_pretrained(tmp_path / "hf", max_shard_size="20KB")
    shards = sorted((tmp_path / "hf").glob("*.safetensors"))
    assert len(shards) >= 2
    ref = {}
    for s in shards:
        ref.update(safetensors.torch.load_file(str(s)))
    ours = read_state_dict(tmp_path / "hf")
    assert ours.keys() == ref.keys() and all(_bits_equal(ours[k], ref[k]) for k in ref)
    for s in shards:  # each shard on its own too, whatever its header length
        assert sniff(s) == "safetensors"


def test_lightning_checkpoint_from_a_real_fit(tmp_path):
    pl = pytest.importorskip("pytorch_lightning")

    class Tiny(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = torch.nn.Sequential(
                torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 1)
            )

        def training_step(self, batch, _):
            x, y = batch
            return torch.nn.functional.mse_loss(self.model(x), y)

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=0.01)

    torch.manual_seed(0)
    data = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(torch.randn(16, 3), torch.randn(16, 1)), batch_size=8
    )
    trainer = pl.Trainer(
        max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, accelerator="cpu", default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(Tiny(), data)
    path = tmp_path / "last.ckpt"
    trainer.save_checkpoint(path)
    ref = torch.load(path, weights_only=False)["state_dict"]
    ckpt = read_checkpoint(path)
    assert ckpt.container_key == "state_dict" and "optimizer_states" in ckpt.other_keys
    assert ckpt.state_dict.keys() == ref.keys() and all(_bits_equal(ckpt.state_dict[k], ref[k]) for k in ref)


def test_verify_damaged_non_tensor_record_is_a_checkpoint_error(tmp_path):
    path = tmp_path / "m.pt"
    torch.save({"w": torch.ones(4)}, path)
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        info = next(i for i in zf.infolist() if i.filename.endswith("/version"))
    data[info.header_offset : info.header_offset + 4] = b"XXXX"  # its local header, not a tensor
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="version"):
        verify_checkpoint(path)


def test_shape_torch_cannot_hold_is_refused_by_name(tmp_path):
    header = {"a": {"dtype": "F32", "shape": [2**40, 2**40, 0], "data_offsets": [0, 0]},
              "b": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}  # fmt: skip
    text = json.dumps(header).encode()
    path = tmp_path / "odd.safetensors"
    path.write_bytes(struct.pack("<Q", len(text)) + text + bytes(8))
    assert verify_checkpoint(path)["ok"]  # the file is valid; only torch cannot make tensor 'a'
    from torchsmith.checkpoint import convert_checkpoint

    with pytest.raises(CheckpointError, match=r"1099511627776, 1099511627776, 0.*overflows 64 bits"):
        convert_checkpoint(path, tmp_path / "out.safetensors")
    assert not (tmp_path / "out.safetensors").exists()


def test_diff_complex_nan_inf(tmp_path):
    nan_inf = torch.tensor([float("nan"), float("inf"), -float("inf"), 1.0])
    torch.save(
        {"c": torch.tensor([1 + 1j, 2 + 0j]), "n": nan_inf, "i": torch.tensor([2**53])}, tmp_path / "a.pt"
    )
    torch.save(
        {"c": torch.tensor([1 + 2j, 2 + 0j]), "n": nan_inf.clone(), "i": torch.tensor([2**53 + 1])},
        tmp_path / "b.pt",
    )
    d = diff_checkpoints(tmp_path / "a.pt", tmp_path / "b.pt")
    assert d["max_abs_diff"] == {"c": 1.0, "n": 0.0, "i": 1.0} and not d["identical"]
    assert diff_checkpoints(tmp_path / "a.pt", tmp_path / "a.pt")["identical"]
    torch.save({"n": torch.tensor([float("nan"), float("inf"), 1.0, 1.0])}, tmp_path / "c.pt")
    assert diff_checkpoints(tmp_path / "a.pt", tmp_path / "c.pt")["max_abs_diff"]["n"] == float("inf")


def test_readers_do_not_import_the_dispatcher():
    # the formats <-> readers circle: readers join a registry in _raw.py and never import formats
    code = (
        "import sys\n"
        "for m in ('torch_files', 'safetensors_io', 'dcp', 'pickle_reader'):\n"
        "    __import__('torchsmith.checkpoint.' + m)\n"
        "assert 'torchsmith.checkpoint.formats' not in sys.modules, 'formats imported'\n"
        "from torchsmith.checkpoint._raw import READERS\n"
        "assert {'torch-zip', 'torch-legacy', 'pickle', 'safetensors', 'dcp'} <= set(READERS), READERS\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# ---------------------------------------------------------------------------------------------------
# key fitting, convert key edits, tied tensors, aligned tensor data


def _net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 3)).eval()


@pytest.mark.parametrize("prefix", ["module.model.", "_orig_mod.model.", "module._orig_mod.model.",
                                    "model.module.", "_orig_mod.module.backbone."])  # fmt: skip
def test_inner_prefix_under_wrappers_in_any_order(tmp_path, prefix):
    from torchsmith.transfer.load import load_weights

    src = _net()
    path = tmp_path / "w.pt"
    torch.save({prefix + k: v for k, v in src.state_dict().items()}, path)
    dst = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 3)).eval()
    load_weights(dst, path)
    assert all(torch.equal(a, b) for a, b in zip(src.state_dict().values(), dst.state_dict().values()))


def test_convert_strip_wrappers_and_rename(tmp_path):
    from torchsmith.checkpoint.convert import convert_checkpoint
    from torchsmith.cli.main import main
    from torchsmith.errors import InputError

    sd = _net().state_dict()
    torch.save({"state_dict": {"module._orig_mod.model." + k: v for k, v in sd.items()}}, tmp_path / "l.ckpt")
    convert_checkpoint(tmp_path / "l.ckpt", tmp_path / "a.safetensors", strip_wrappers=True)
    got = safetensors.torch.load_file(str(tmp_path / "a.safetensors"))
    assert got.keys() == sd.keys() and all(torch.equal(got[k], sd[k]) for k in sd)
    # rename sees the keys as written (before stripping); the CLI is the same call
    assert main(["convert", str(tmp_path / "l.ckpt"), str(tmp_path / "b.safetensors"),
                 "--rename", r"^module\._orig_mod\.model\.0\.=stem.", "--strip-wrappers"]) == 0  # fmt: skip
    got = safetensors.torch.load_file(str(tmp_path / "b.safetensors"))
    assert "stem.weight" in got and "model.2.weight" in got  # not all keys had model. after the rename
    with pytest.raises(InputError, match="would both be written as"):
        convert_checkpoint(tmp_path / "l.ckpt", tmp_path / "c.safetensors", rename=[r"\.(weight|bias)$=.x"])


def test_tied_tensors_reach_plain_safetensors(tmp_path):
    from torchsmith.checkpoint import save
    from torchsmith.checkpoint.convert import convert_checkpoint

    emb = torch.nn.Embedding(10, 4)
    head = torch.nn.Linear(4, 10, bias=False)
    head.weight = emb.weight
    model = torch.nn.ModuleDict({"emb": emb, "head": head})
    torch.save(model.state_dict(), tmp_path / "tied.pt")
    convert_checkpoint(tmp_path / "tied.pt", tmp_path / "t.safetensors")
    save(model, tmp_path / "s.safetensors")
    for name in ("t.safetensors", "s.safetensors"):
        got = safetensors.torch.load_file(str(tmp_path / name))
        assert set(got) == {"emb.weight", "head.weight"} and torch.equal(
            got["head.weight"], emb.weight.detach()
        )
    convert_checkpoint(tmp_path / "tied.pt", tmp_path / "d.safetensors", dedupe_tied=True)
    assert set(safetensors.torch.load_file(str(tmp_path / "d.safetensors"))) == {"emb.weight"} or set(
        safetensors.torch.load_file(str(tmp_path / "d.safetensors"))
    ) == {"head.weight"}
    assert set(read_state_dict(tmp_path / "d.safetensors")) == {"emb.weight", "head.weight"}


def test_saved_tensors_aligned_and_reload_bit_exact(tmp_path):
    from torchsmith.checkpoint import save

    torch.manual_seed(0)
    # odd sizes (biases of 3, 5, 7 floats) between the larger tensors
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 5, 3), torch.nn.BatchNorm2d(5), torch.nn.ReLU(), torch.nn.Conv2d(5, 16, 3),
        torch.nn.Flatten(), torch.nn.Linear(16 * 4 * 4, 7), torch.nn.Linear(7, 3),
    ).eval()  # fmt: skip
    x = torch.randn(4, 3, 8, 8)
    want = model(x)
    path = save(model, tmp_path / "m.safetensors")
    header_len = struct.unpack("<Q", path.read_bytes()[:8])[0]
    header = json.loads(path.read_bytes()[8 : 8 + header_len])
    header.pop("__metadata__")
    assert (8 + header_len) % 64 == 0
    sizes = {k: v["data_offsets"][1] - v["data_offsets"][0] for k, v in header.items()}
    assert all(header[k]["data_offsets"][0] % 64 == 0 for k in sizes if sizes[k] % 64 == 0)
    sd = read_state_dict(path)
    assert all(t.data_ptr() % 64 == 0 for t in sd.values() if t.numel())  # unaligned ones were copied
    model.load_state_dict(sd)
    assert torch.equal(model(x).view(torch.int32), want.view(torch.int32))
    # a file from another writer whose tensors sit at odd offsets: still aligned once read
    odd = {"a": torch.randn(3), "b": torch.randn(17, 5)}
    safetensors.torch.save_file(odd, str(tmp_path / "odd.safetensors"))
    got = read_state_dict(tmp_path / "odd.safetensors")
    assert all(t.data_ptr() % 64 == 0 for t in got.values()) and all(torch.equal(got[k], odd[k]) for k in odd)
