"""convert / diff / verify / fit_keys / load_model by classes of variants (issues 22, 24, 28).

Amplification (stride-0, broadcast, overlapping windows, many views of one storage), bytes versus
values in ``diff``, metadata of the wrong type in ``verify``, folders of several model files, stale
files under the asked name, entries ``convert`` cannot write, module versions through key fitting,
and ``load_model(device=)``. Every file is real (torch.save, safetensors, torchsmith.save).
"""

from __future__ import annotations

import dataclasses
import json
import struct
import zipfile
from collections import OrderedDict

import pytest
import torch
from _ckpt_fixtures import same_state
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

import torchsmith
from torchsmith.checkpoint import convert as convert_mod
from torchsmith.checkpoint import read_state_dict, save
from torchsmith.checkpoint.convert import check_expansion, convert_checkpoint
from torchsmith.checkpoint.diff import diff_checkpoints
from torchsmith.checkpoint.keys import fit_keys
from torchsmith.cli.main import main
from torchsmith.errors import CheckpointError, InputError


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


# --- amplification: one budget for convert and diff outputs ------------------------------------------


def _expanding(kind: str) -> dict[str, torch.Tensor]:
    """A few stored bytes that materialise to about 8 MiB, in four shapes of the trick."""
    base = torch.arange(64, dtype=torch.float32)
    if kind == "stride0":
        return {"w": base[:1].expand(1 << 21)}
    if kind == "broadcast":
        return {"w": base.view(1, 64).expand(1 << 15, 64)}
    if kind == "windows":  # overlapping sliding windows over one small storage
        return {"w": base.as_strided((1 << 15, 64), (0, 1))}
    if kind == "many_views":  # each view is the whole (16 KiB) storage: 8 MiB from ~80 KiB of file
        big = torch.arange(4096, dtype=torch.float32)
        return {f"v{i}": big.view(64, 64) for i in range(1 << 9)}
    raise AssertionError(kind)


KINDS = ["stride0", "broadcast", "windows", "many_views"]


@pytest.fixture
def small_budget(monkeypatch):
    # 4x the input + 0 bytes: the ~8 MiB results above are far over it, and nothing large is written.
    monkeypatch.setattr(convert_mod, "EXPAND_SLACK", 0)


@pytest.mark.parametrize("kind", KINDS)
def test_convert_and_diff_refuse_amplification(tmp_path, kind, small_budget, capsys):
    src = tmp_path / "amp.pt"
    torch.save(_expanding(kind), src)
    assert src.stat().st_size < 1 << 20
    dst = tmp_path / "out.safetensors"
    code, _, err = run_cli(capsys, "convert", src, dst)
    assert code == 2 and "materialise" in err and "--allow-expand" in err, err
    assert ("'w'" in err) if kind != "many_views" else ("'v" in err)
    assert str(src.stat().st_size) in err.replace(" B input", "") or "KiB input" in err
    assert not dst.exists()
    code, _, err = run_cli(capsys, "diff", src, src)
    assert code == 2 and "materialise" in err, err
    # asked for: written in full, and the values are the views' values
    code, _, err = run_cli(capsys, "convert", src, dst, "--allow-expand")
    assert code == 0, err
    assert same_state(read_state_dict(dst), {k: v.contiguous() for k, v in _expanding(kind).items()})
    code, out, _ = run_cli(capsys, "diff", src, dst, "--allow-expand", "--json")
    assert code == 0 and json.loads(out)["identical"]


def test_default_budget_refuses_a_gibibyte_from_a_few_bytes(tmp_path):
    src = tmp_path / "gib.pt"
    torch.save({"w": torch.zeros(1).expand(1 << 28)}, src)  # 4 bytes stored, 1 GiB materialised
    with pytest.raises(CheckpointError, match=r"'w' alone is 1 GiB \(1073741824 bytes\)"):
        convert_checkpoint(src, tmp_path / "out.safetensors")
    with pytest.raises(CheckpointError, match="diff would materialise 1 GiB"):
        diff_checkpoints(src, src)
    assert not (tmp_path / "out.safetensors").exists()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    n=st.integers(1, 64),
    shape=st.lists(st.integers(0, 40), min_size=1, max_size=3),
    zero_dims=st.lists(st.booleans(), min_size=3, max_size=3),
    input_size=st.integers(0, 10_000),
)
def test_budget_property(n, shape, zero_dims, input_size):
    """Refused exactly when the materialised bytes (from shape) exceed 4x input + slack; never by storage."""
    stride = [0 if z else 1 for z, _ in zip(zero_dims, shape)]
    # every stride-1 dim walks the storage: keep the view inside it
    span = sum((d - 1) * s for d, s in zip(shape, stride) if d > 0)
    view = torch.zeros(max(n, span + 1)).as_strided(shape, stride)
    materialised = view.numel() * 4
    limit = convert_mod.EXPAND_FACTOR * input_size + convert_mod.EXPAND_SLACK
    if materialised > limit:
        with pytest.raises(CheckpointError, match="materialise"):
            check_expansion({"t": view}, input_size, what="convert", where="f")
    else:
        assert check_expansion({"t": view}, input_size, what="convert", where="f") == materialised
    assert check_expansion({"t": view}, input_size, what="x", where="f", allow_expand=True) == materialised


# --- diff: bytes and values separately ---------------------------------------------------------------


def _nan(dtype: torch.dtype, payload: int) -> torch.Tensor:
    ints = {torch.float16: torch.int16, torch.bfloat16: torch.int16, torch.float32: torch.int32,
            torch.float64: torch.int64}  # fmt: skip
    quiet = {torch.float16: 0x7E00, torch.bfloat16: 0x7FC0, torch.float32: 0x7FC00000,
             torch.float64: 0x7FF8000000000000}  # fmt: skip
    return torch.tensor([quiet[dtype] | payload], dtype=ints[dtype]).view(dtype)


FLOATS = [torch.float16, torch.bfloat16, torch.float32, torch.float64]


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("case", ["signed_zero", "nan_payload", "value", "same"])
@pytest.mark.parametrize("fmt", ["safetensors", "pt"])
def test_diff_bytes_versus_values(tmp_path, capsys, dtype, case, fmt):
    a = torch.tensor([1.0, 0.0, 2.5, 3.0], dtype=dtype)
    b = a.clone()
    if case == "signed_zero":
        b[1] = -0.0
    elif case == "nan_payload":
        a[3], b[3] = _nan(dtype, 1)[0], _nan(dtype, 2)[0]
    elif case == "value":
        b[2] = 3.5
    pa, pb = tmp_path / f"a.{fmt}", tmp_path / f"b.{fmt}"
    for path, t in ((pa, a), (pb, b)):
        (save_file if fmt == "safetensors" else torch.save)({"x": t, "y": torch.ones(2)}, str(path))
    code, out, _ = run_cli(capsys, "diff", pa, pb, "--json")
    res = json.loads(out)
    values_equal = case != "value"
    assert res["values_equal"] is values_equal
    assert res["identical"] is res["bit_identical"] is (case == "same")
    assert res["bytes_differ"] == (["x"] if case in ("signed_zero", "nan_payload") else [])
    assert res["max_abs_diff"]["x"] == (1.0 if case == "value" else 0.0)
    assert code == (0 if case == "same" else 1)  # like cmp: any difference, bytes included, is 1
    code, out, _ = run_cli(capsys, "diff", pa, pb)
    assert code == (0 if case == "same" else 1)
    last = out.strip().splitlines()[-1]
    expect = {"same": "identical", "value": "differ in value"}.get(case, "values equal, not bit-identical")
    assert expect in last, out
    if case in ("signed_zero", "nan_payload"):
        assert "bytes differ, values equal: 1 tensors (x)" in out


@settings(max_examples=30, deadline=None)
@given(
    values=st.lists(
        st.sampled_from([0.0, -0.0, 1.5, float("nan"), float("inf"), -2.0]), min_size=1, max_size=12
    ),
    flips=st.lists(st.sampled_from(["keep", "sign", "payload", "value"]), min_size=12, max_size=12),
    dtype=st.sampled_from(FLOATS),
)
def test_diff_property_against_numpy_bytes(values, flips, dtype):
    """bytes_differ / values_equal agree with a byte-level and a value-level reference, any mix."""
    import tempfile
    from pathlib import Path

    a = torch.tensor(values, dtype=torch.float64).to(dtype)
    b = a.clone()
    for i, f in enumerate(flips[: len(values)]):
        if f == "sign" and b[i] == 0:
            b[i] = -b[i]
        elif f == "payload" and torch.isnan(b[i]):
            b[i] = _nan(dtype, 3)[0]
        elif f == "value" and torch.isfinite(b[i]):
            b[i] = b[i] + 1
    same_values = bool(((a.double() == b.double()) | (a.isnan() & b.isnan())).all())
    ints = {2: torch.int16, 4: torch.int32, 8: torch.int64}[a.element_size()]
    same_bytes = torch.equal(a.view(ints), b.view(ints))
    with tempfile.TemporaryDirectory() as d:
        pa, pb = Path(d) / "a.safetensors", Path(d) / "b.safetensors"
        save_file({"x": a}, str(pa))
        save_file({"x": b}, str(pb))
        res = diff_checkpoints(pa, pb)
    assert res["values_equal"] is same_values
    assert res["identical"] is (same_values and same_bytes)
    assert res["bytes_differ"] == (["x"] if same_values and not same_bytes else [])


def test_diff_compares_large_tensors_in_chunks(tmp_path, monkeypatch):
    from torchsmith.checkpoint import diff as diff_mod

    monkeypatch.setattr(diff_mod, "_CHUNK", 64)  # many chunks, each compared on its own
    a = torch.randn(100, 7)
    b = a.clone()
    b[99, 6] = -b[99, 6] if b[99, 6] != 0 else 1.0
    b[37, 0] = 0.0 * -1 if a[37, 0] == 0 else a[37, 0]
    a[50, 3], b[50, 3] = 0.0, -0.0
    save_file({"x": a}, str(tmp_path / "a.safetensors"))
    save_file({"x": b}, str(tmp_path / "b.safetensors"))
    res = diff_checkpoints(tmp_path / "a.safetensors", tmp_path / "b.safetensors")
    assert res["max_abs_diff"]["x"] == pytest.approx(2 * abs(a[99, 6].item()))
    b[99, 6] = a[99, 6]
    save_file({"x": b}, str(tmp_path / "b.safetensors"))
    res = diff_checkpoints(tmp_path / "a.safetensors", tmp_path / "b.safetensors")
    assert res["values_equal"] and res["bytes_differ"] == ["x"]


# --- verify: metadata of the wrong type, folders of several model files ------------------------------


def _rewrite_safetensors_metadata(path, change):
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    change(header["__metadata__"])
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data[8 + n :])


def _rewrite_zip_metadata(path, change):
    from torchsmith.checkpoint.torch_files import METADATA_RECORD

    tmp = path.with_suffix(".tmp")
    with zipfile.ZipFile(path) as zin, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename.endswith(METADATA_RECORD):
                meta = json.loads(data)
                change(meta)
                data = json.dumps(meta).encode()
            zout.writestr(info.filename, data)
    tmp.replace(path)


SHA_VARIANTS = {
    "list": "[1, 2]",
    "number": "5",
    "null": "null",
    "string": '"abc"',
    "int_values": None,  # filled per file: {name: 7}
    "nested": None,  # {name: {"a": 1}}
    "short_hex": None,  # {name: "abc"}
    "not_json": "{",
    "deep": "[" * 5000 + "]" * 5000,
}


@pytest.mark.parametrize("variant", list(SHA_VARIANTS))
@pytest.mark.parametrize("ext", ["safetensors", "pt", "sharded"])
def test_verify_checksum_table_of_the_wrong_type_is_damaged(tmp_path, capsys, variant, ext):
    if ext == "sharded":  # the table of one shard of several
        index = save(torchsmith.create_model("mlp"), tmp_path / "m.safetensors", max_shard_size="100KB")
        path, ext = sorted(tmp_path.glob("m-*-of-*.safetensors"))[-1], "safetensors"
    else:
        index = path = save(torchsmith.create_model("mlp"), tmp_path / f"m.{ext}")

    def change(meta):
        names = list(json.loads(meta["torchsmith.checksums"]))
        value = SHA_VARIANTS[variant]
        if value is None:
            inner = {"int_values": 7, "nested": {"a": 1}, "short_hex": "abc"}[variant]
            value = json.dumps({n: inner for n in names})
        meta["torchsmith.checksums"] = value

    (_rewrite_safetensors_metadata if ext == "safetensors" else _rewrite_zip_metadata)(path, change)
    code, _, err = run_cli(capsys, "verify", index)
    assert code == 2 and "damaged" in err and "internal error" not in err, err
    assert err.count("\n") == 1
    with pytest.raises(CheckpointError, match="damaged"):
        torchsmith.load_model(index)
    code, _, err = run_cli(capsys, "convert", index, tmp_path / "out.safetensors")
    assert code == 2 and "--force" in err, err
    code, _, err = run_cli(capsys, "convert", index, tmp_path / "out.safetensors", "--force")
    assert code == 0, err


@pytest.mark.parametrize("where", ["safetensors header", "index", "index metadata", "index weight_map"])
def test_json_nested_beyond_the_stack_is_a_clean_refusal(tmp_path, capsys, where):
    deep = "[" * 100_000 + "]" * 100_000
    if where == "safetensors header":
        path = tmp_path / "m.safetensors"
        text = ('{"a":' + deep + "}").encode()
        path.write_bytes(struct.pack("<Q", len(text)) + text)
    else:
        path = tmp_path / "m.safetensors.index.json"
        body = {"index": deep, "index metadata": '{"weight_map": {"a": "b"}, "metadata": ' + deep + "}",
                "index weight_map": '{"weight_map": {"a": ' + deep + "}}"}[where]  # fmt: skip
        path.write_text(body)
    for cmd in (["verify"], ["inspect"], ["diff", path], ["convert"]):
        argv = [cmd[0], *cmd[1:], path] + ([tmp_path / "o.safetensors"] if cmd[0] == "convert" else [])
        code, _, err = run_cli(capsys, *argv)
        assert code == 2 and "internal error" not in err and "m.safetensors" in err, (cmd, err)


@pytest.mark.parametrize(
    "tied", ['["a"]', '{"fc1.weight": 5}', '{"fc1.weight": ["x"]}', "{", '"s"', "[" * 5000 + "]" * 5000]
)
def test_verify_tied_table_of_the_wrong_type_is_damaged(tmp_path, capsys, tied):
    path = save(torchsmith.create_model("mlp"), tmp_path / "m.safetensors")
    _rewrite_safetensors_metadata(path, lambda meta: meta.__setitem__("torchsmith.tied", tied))
    code, _, err = run_cli(capsys, "verify", path)
    assert code == 2 and "damaged" in err and "internal error" not in err, err


@pytest.mark.parametrize("layout", ["single", "sharded"])
def test_verify_tied_copies_with_other_bytes(tmp_path, capsys, layout):
    """Tied names written twice: a copy changed after saving is found (plain safetensors reads it)."""
    emb = torch.randn(64, 16)
    state = {"emb.weight": emb, "head.weight": emb, "other": torch.randn(64, 16)}
    out = save(state, tmp_path / "tied.safetensors", max_shard_size="5KB" if layout == "sharded" else None)
    code, out_text, _ = run_cli(capsys, "verify", out, "--json")
    assert code == 0 and "tied" in json.loads(out_text)["checks"]
    path = (
        out
        if layout == "single"
        else next(p for p in tmp_path.glob("tied-*") if b"head.weight" in p.read_bytes())
    )
    data = bytearray(path.read_bytes())
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    start = 8 + n + header["head.weight"]["data_offsets"][0]
    data[start] ^= 0x01
    path.write_bytes(bytes(data))
    code, _, err = run_cli(capsys, "verify", out)
    assert code == 2 and "'head.weight'" in err and "tied" in err and path.name in err, err


def _accelerate_like(folder, kind):
    """The files accelerate's save_state writes for two models, an optimizer and a scheduler."""
    folder.mkdir()
    torch.manual_seed(0)
    models = [torch.nn.Linear(4, 3), torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))]
    names = ["model.safetensors", "model_1.safetensors"] if kind == "safetensors" else [
        "pytorch_model.bin", "pytorch_model_1.bin"]  # fmt: skip
    for m, name in zip(models, names):
        if kind == "safetensors":
            save(m.state_dict(), folder / name)  # with checksums: a flipped byte is found
        else:
            torch.save(m.state_dict(), folder / name)  # a torch zip: its CRCs find it
    opt = torch.optim.SGD(models[0].parameters(), momentum=0.9)  # AdamW's first step imports for 9 s
    for param in models[0].parameters():  # gradients set by hand: a first backward costs ~10 s here
        param.grad = torch.ones_like(param)
    opt.step()
    torch.save(opt.state_dict(), folder / "optimizer.bin")
    sched = torch.optim.lr_scheduler.StepLR(opt, 3)
    torch.save(sched.state_dict(), folder / "scheduler.bin")  # no tensors at all
    torch.save({"step": 3}, folder / "random_states_0.pkl")
    return names


@pytest.mark.parametrize("kind", ["safetensors", "bin"])
@pytest.mark.parametrize("damaged", [None, 0, 1])
def test_verify_checks_every_model_file_of_a_folder(tmp_path, capsys, kind, damaged):
    folder = tmp_path / "state"
    names = _accelerate_like(folder, kind)
    if damaged is not None:
        path = folder / names[damaged]
        data = bytearray(path.read_bytes())
        if kind == "safetensors":
            data[-3] ^= 0x10  # inside the last tensor's bytes
        else:
            from torchsmith.checkpoint.formats import open_raw
            from torchsmith.checkpoint.read import select_tensors

            refs, *_ = select_tensors(open_raw(path))
            data[next(iter(refs.values())).storage.offset] ^= 0x10
        path.write_bytes(bytes(data))
    code, out, err = run_cli(capsys, "verify", folder, "--json")
    if damaged is None:
        assert code == 0, err
        res = json.loads(out)
        assert res["format"] == "folder"
        assert {p.split("/")[-1] for p in (f["path"] for f in res["files"])} == {
            *names, "optimizer.bin", "scheduler.bin"}  # fmt: skip
        assert res["tensors"] == 2 + 7 + 2  # Linear(4,3); Linear(3,2) + BatchNorm1d; momentum buffers
    else:
        assert code == 2 and names[damaged] in err and "damaged" in err, err


@dataclasses.dataclass
class TrainingArgs:
    """Stands for transformers' TrainingArguments, which a Trainer pickles into training_args.bin."""

    output_dir: str = "out"
    learning_rate: float = 1e-3


@pytest.mark.parametrize("damaged", [None, "model.safetensors", "optimizer.pt", "rng_state.pth"])
def test_verify_a_trainer_checkpoint_folder(tmp_path, capsys, damaged):
    folder = tmp_path / "checkpoint-500"
    folder.mkdir()
    model = torch.nn.Linear(4, 3)
    save(model.state_dict(), folder / "model.safetensors")
    opt = torch.optim.SGD(model.parameters(), momentum=0.9)
    for param in model.parameters():
        param.grad = torch.ones_like(param)
    opt.step()
    torch.save(opt.state_dict(), folder / "optimizer.pt")
    torch.save({"cpu": torch.get_rng_state(), "python": 3}, folder / "rng_state.pth")
    torch.save(TrainingArgs(), folder / "training_args.bin")  # an object, no tensors: not weights
    (folder / "trainer_state.json").write_text("{}")
    if damaged:
        path = folder / damaged
        data = bytearray(path.read_bytes())
        if damaged.endswith(".safetensors"):
            data[-2] ^= 0x10
        else:
            with zipfile.ZipFile(path) as zf:
                info = next(i for i in zf.infolist() if "/data/" in i.filename)
            name_len, extra_len = struct.unpack(
                "<HH", data[info.header_offset + 26 : info.header_offset + 30]
            )
            data[info.header_offset + 30 + name_len + extra_len] ^= 0x10  # first byte of a tensor record
        path.write_bytes(bytes(data))
    code, out, err = run_cli(capsys, "verify", folder, "--json")
    if damaged is None:
        assert code == 0, err
        files = {f["path"].split("/")[-1]: f for f in json.loads(out)["files"]}
        assert set(files) == {"model.safetensors", "optimizer.pt", "rng_state.pth", "training_args.bin"}
        assert (
            files["training_args.bin"]["tensors"] == 0 and "not weights" in files["training_args.bin"]["note"]
        )
    else:
        assert code == 2 and damaged in err and "damaged" in err, err


def test_verify_one_model_file_folder_is_that_file(tmp_path, capsys):
    folder = tmp_path / "one"
    folder.mkdir()
    save(torch.nn.Linear(2, 2).state_dict(), folder / "model.safetensors")
    code, out, _ = run_cli(capsys, "verify", folder, "--json")
    assert code == 0 and json.loads(out)["format"] == "safetensors"


# --- convert: nothing dropped silently, nothing stale under the asked name ---------------------------


def _unwritable_entries() -> dict[str, object]:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter(
            "ignore"
        )  # quantized creation is deprecated, CSR is beta; files still hold them
        return {
            "sparse": torch.sparse_coo_tensor(
                torch.tensor([[0, 1], [1, 0]]), torch.tensor([1.0, 2.0]), (2, 2)
            ),
            "csr": torch.eye(3).to_sparse_csr(),
            "quantized": torch.quantize_per_tensor(torch.randn(3), 0.1, 0, torch.qint8),
            "epoch": 3,
            "name": "resnet",
        }


@pytest.mark.parametrize("entry", ["sparse", "csr", "quantized", "epoch", "name"])
@pytest.mark.parametrize("ext", ["safetensors", "pt"])
def test_convert_refuses_an_entry_it_cannot_write_unless_skipped(tmp_path, capsys, entry, ext):
    sd = {"fc.weight": torch.randn(3, 3), "fc.bias": torch.randn(3), "fc2.bias": torch.randn(2)}
    sd[entry] = _unwritable_entries()[entry]
    src = tmp_path / "src.pt"
    torch.save(sd, src)
    dst = tmp_path / f"out.{ext}"
    code, _, err = run_cli(capsys, "convert", src, dst)
    assert code == 2 and repr(entry) in err and "--skip" in err and "internal error" not in err, err
    assert not dst.exists()
    code, out, err = run_cli(capsys, "convert", src, dst, "--skip", entry)
    assert code == 0, err
    assert f"left out (skip): {entry}" in out
    assert set(read_state_dict(dst)) == {"fc.weight", "fc.bias", "fc2.bias"}
    code, _, err = run_cli(capsys, "convert", src, dst, "--skip", "nothing*")  # a skip that misses
    assert code == 2 and repr(entry) in err


def test_convert_names_the_container_keys_it_leaves(tmp_path, capsys):
    src = tmp_path / "train.ckpt"
    torch.save({"state_dict": {"w": torch.ones(2)}, "epoch": 4, "optimizer_states": []}, src)
    code, out, _ = run_cli(capsys, "convert", src, tmp_path / "w.safetensors")
    assert code == 0 and "not weights, not written: epoch, optimizer_states" in out


def _sharded_layout(folder, stem, ext):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(stem))


@pytest.mark.parametrize("ext", ["safetensors", "pt"])
@pytest.mark.parametrize(
    "before,args,after",
    [
        ("single", ["--max-shard-size", "100KB"], "sharded"),  # an older single file beside new shards
        ("sharded", ["--max-shard-size", "10MB"], "single"),  # fits: one file, as transformers writes
        ("sharded", [], "single"),
        ("sharded3", ["--max-shard-size", "200KB"], "sharded"),  # other shard count
        ("none", ["--max-shard-size", "10MB"], "single"),
    ],
)
def test_convert_leaves_nothing_stale_under_the_asked_name(tmp_path, capsys, ext, before, args, after):
    old_model, new_model = torchsmith.create_model("mlp"), torchsmith.create_model("mlp")
    with torch.no_grad():
        for p in new_model.parameters():
            p.add_(1.0)
    out = tmp_path / "out"
    out.mkdir()
    dst = out / f"model.{ext}"
    if before == "single":
        save(old_model, dst)
    elif before == "sharded":
        save(old_model, dst, max_shard_size="100KB")
    elif before == "sharded3":
        save(old_model, dst, max_shard_size="80KB")
    src = tmp_path / "new.safetensors"
    save(new_model, src)
    code, _, err = run_cli(capsys, "convert", src, dst, *args)
    assert code == 0, err
    names = _sharded_layout(out, "model", ext)
    index = out / f"model.{ext}.index.json"
    if after == "single":
        assert names == [dst.name]
    else:
        assert dst.name not in names and index.exists()
        weight_map = json.loads(index.read_text())["weight_map"]
        assert set(names) == {index.name, *weight_map.values()}  # no shard of the older save left
    expect = new_model.state_dict()
    assert same_state(read_state_dict(out), expect)  # the folder, as a later reader opens it
    assert same_state(read_state_dict(index if after == "sharded" else dst), expect)
    assert not list(out.glob("*replaced~"))


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    ext=st.sampled_from(["safetensors", "pt"]),
    steps=st.lists(
        st.tuples(st.sampled_from(["save", "convert"]), st.sampled_from([None, "5KB", "9KB", "17KB"])),
        min_size=2,
        max_size=4,
    ),
)
def test_any_sequence_of_writes_leaves_only_the_last(tmp_path_factory, ext, steps):
    """Whatever layouts earlier writes left (one file, 2 or 4 shards), a read returns the last write."""
    folder = tmp_path_factory.mktemp("seq")
    dst = folder / f"w.{ext}"
    for i, (how, shard) in enumerate(steps):
        state = {f"t{j}": torch.full((1024,), float(i * 10 + j)) for j in range(4)}  # 4 KiB each
        if how == "save":
            out = save(state, dst, max_shard_size=shard)
        else:
            src = folder.parent / f"{folder.name}-src{i}.safetensors"
            save(state, src)
            out = convert_checkpoint(src, dst, max_shard_size=shard)
        sharded = shard in ("5KB", "9KB")  # 4 or 2 shards of 16 KiB; 17KB holds it all: one file
        assert out.name.endswith(".index.json") is sharded
        names = sorted(p.name for p in folder.iterdir())
        if sharded:
            shards = set(json.loads(out.read_text())["weight_map"].values())
            assert names == sorted({out.name, *shards})
        else:
            assert names == [dst.name]
        assert same_state(read_state_dict(folder), state)
        assert same_state(read_state_dict(out), state)


def test_convert_in_place_both_ways(tmp_path, capsys):
    """The source is the file being replaced: its tensors are mapped, so moving it aside is safe."""
    model = torchsmith.create_model("mlp")
    single = save(model, tmp_path / "m.safetensors")
    code, _, err = run_cli(capsys, "convert", single, single, "--max-shard-size", "100KB")
    assert code == 0 and not single.exists(), err
    index = tmp_path / "m.safetensors.index.json"
    assert same_state(read_state_dict(tmp_path), model.state_dict())
    code, _, err = run_cli(capsys, "convert", index, single)
    assert code == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]
    assert same_state(read_state_dict(tmp_path), model.state_dict())


@pytest.mark.parametrize("before", ["single", "sharded"])
def test_a_failed_write_puts_the_older_file_back(tmp_path, monkeypatch, before):
    from torchsmith.checkpoint import saving

    model = torchsmith.create_model("mlp")
    dst = tmp_path / "model.safetensors"
    first = save(model, dst) if before == "single" else save(model, dst, max_shard_size="100KB")
    listing = sorted(p.name for p in tmp_path.iterdir())

    def boom(*a, **k):
        raise OSError("injected: disk full")

    monkeypatch.setattr(saving, "_write_one", boom)
    with pytest.raises(OSError, match="injected"):
        save(model, dst, max_shard_size=None if before == "sharded" else "100KB")
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == listing
    assert same_state(read_state_dict(first), model.state_dict())


def test_save_with_a_shard_size_that_fits_writes_one_file(tmp_path):
    model = torchsmith.create_model("mlp")
    out = save(model, tmp_path / "m.safetensors", max_shard_size="1GB")
    assert out == tmp_path / "m.safetensors" and sorted(p.name for p in tmp_path.iterdir()) == [
        "m.safetensors"
    ]


def test_convert_refuses_a_damaged_source_unless_forced(tmp_path, capsys):
    path = save(torchsmith.create_model("mlp"), tmp_path / "m.safetensors")
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x01
    path.write_bytes(bytes(data))
    dst = tmp_path / "out.pt"
    code, _, err = run_cli(capsys, "convert", path, dst)
    assert code == 2 and "damaged" in err and "--force" in err and not dst.exists()
    with pytest.raises(CheckpointError, match="ignore_checksums=True"):
        convert_checkpoint(path, dst)
    assert convert_checkpoint(path, dst, ignore_checksums=True) == dst


# --- fit_keys keeps module versions (_metadata) -----------------------------------------------------


def _mnasnet():
    import torchvision

    torch.manual_seed(0)
    return torchvision.models.mnasnet0_5().eval()


WRAPS = ["module.", "_orig_mod.", "_orig_mod.module.", "module._orig_mod."]


@pytest.mark.parametrize("wrap", WRAPS)
@pytest.mark.parametrize("direction", ["strip", "add"])
def test_fit_keys_renames_module_versions_like_the_keys(wrap, direction):
    """torchvision MNASNet refuses a state dict without its root version: it must travel with the keys."""
    src_model = _mnasnet()
    sd = src_model.state_dict()
    own = sd._metadata
    if direction == "strip":
        wrapped = OrderedDict((wrap + k, v) for k, v in sd.items())
        wrapped._metadata = OrderedDict(
            [("", {"version": 1}), *((wrap + m if m else wrap[:-1], v) for m, v in own.items())]
        )
        target_model = _mnasnet()
        fit = fit_keys(wrapped, list(target_model.state_dict()))
        result = fit.apply(wrapped)
        assert result._metadata == own  # the wrapper's own root entry is gone, the model's is root
        target_model.load_state_dict(result)
        assert same_state(target_model.state_dict(), sd)
    else:
        target = OrderedDict((wrap + k, v) for k, v in sd.items())
        fit = fit_keys(sd, list(target))
        result = fit.apply(sd)
        assert set(result) == set(target)
        assert all(result._metadata[(wrap + m) if m else wrap[:-1]] == v for m, v in own.items())


def test_load_weights_style_round_trip_for_mnasnet_through_a_file(tmp_path):
    """The state dict without _metadata is what a file gives: the model says why (torch's check)."""
    model = _mnasnet()
    sd = model.state_dict()
    plain = OrderedDict(sd)  # no _metadata, as read from safetensors
    with pytest.raises(ValueError, match="version"):
        _mnasnet().load_state_dict(plain)
    fit = fit_keys(sd, list(sd))
    target = _mnasnet()
    target.load_state_dict(fit.apply(sd))


# --- load_model(device=) ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved_mlp(tmp_path_factory):
    model = torchsmith.create_model("mlp")
    return save(model, tmp_path_factory.mktemp("dev") / "m.safetensors"), model


@pytest.mark.parametrize("device", ["cpu", torch.device("cpu"), "meta"])
def test_load_model_accepts_device(saved_mlp, device):
    path, model = saved_mlp
    loaded = torchsmith.load_model(path, device=device)
    want = torch.device(device).type
    assert {p.device.type for p in loaded.parameters()} == {want}
    if want == "cpu":
        assert same_state(loaded.state_dict(), model.state_dict())


@pytest.mark.parametrize(
    "kwargs,words",
    [
        ({"device": "gpu0"}, "not a device"),
        ({"device": 3.5}, "not a device"),
        ({"device": "cpu", "map_location": "meta"}, "different places"),
    ],
)
def test_load_model_bad_device_is_input_error(saved_mlp, kwargs, words):
    with pytest.raises(InputError, match=words):
        torchsmith.load_model(saved_mlp[0], **kwargs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_load_model_on_a_missing_device_is_input_error(saved_mlp):
    with pytest.raises(InputError, match="cannot place the model on"):
        torchsmith.load_model(saved_mlp[0], device="cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_load_model_device_cuda(saved_mlp):
    loaded = torchsmith.load_model(saved_mlp[0], device="cuda")
    assert {p.device.type for p in loaded.parameters()} == {"cuda"}


# --- real files from transformers' save_pretrained --------------------------------------------------


@pytest.fixture(scope="module")
def hf_gpt2(tmp_path_factory):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=100, n_positions=32))
    d = tmp_path_factory.mktemp("hf")
    model.save_pretrained(d / "single")
    model.save_pretrained(d / "sharded", max_shard_size="20KB")
    return d


@pytest.mark.parametrize("layout", ["single", "sharded"])
@pytest.mark.parametrize("ext", ["safetensors", "bin"])
def test_transformers_files_through_verify_convert_diff(hf_gpt2, tmp_path, capsys, layout, ext):
    src = hf_gpt2 / layout
    code, out, err = run_cli(capsys, "verify", src, "--json")
    assert code == 0 and json.loads(out)["format"] == ("safetensors" if layout == "single" else "sharded"), (
        err
    )
    out_dir = tmp_path / "out"
    dst = out_dir / f"model.{ext}"
    out_dir.mkdir()
    (out_dir / f"model.{ext}").write_bytes(b"stale bytes of an older file")
    code, _, err = run_cli(capsys, "convert", src, dst, "--max-shard-size", "10MB")  # fits: one file
    assert code == 0, err
    assert sorted(p.name for p in out_dir.iterdir()) == [dst.name]
    code, out, _ = run_cli(capsys, "diff", src, out_dir, "--json")
    assert code == 0 and json.loads(out)["identical"]
    code, _, err = run_cli(capsys, "convert", src, dst, "--max-shard-size", "20KB")  # shards replace it
    assert code == 0 and not dst.exists(), err
    code, out, _ = run_cli(capsys, "diff", src, out_dir, "--json")
    assert code == 0 and json.loads(out)["b"]["format"] == "sharded"
    code, out, _ = run_cli(capsys, "verify", out_dir, "--json")
    assert code == 0 and "xxh3-128" in json.loads(out)["checks"]


# --- module versions (_metadata) through save, convert, read_state_dict and load_model ---------------


@pytest.fixture(scope="module")
def mnasnet_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("mnas")
    model = torchsmith.create_model("torchvision:mnasnet0_5")
    torch.save(torch.nn.DataParallel(model).state_dict(), d / "dp.pth")  # wrapper keys and versions
    return d, model


@pytest.mark.parametrize(
    "how,ext,shards",
    [("save", "safetensors", None), ("save", "pt", "1MB"), ("save", "safetensors", "1MB"),
     ("convert", "pt", None), ("convert", "safetensors", "1MB")],
)  # fmt: skip
def test_module_versions_travel_through_files(mnasnet_files, tmp_path, ext, shards, how):
    """torchvision's MNASNet refuses a state dict without its versions: every path must keep them."""
    import torchvision

    d, model = mnasnet_files
    if how == "save":
        out = save(model, tmp_path / f"m.{ext}", max_shard_size=shards)
    else:
        out = convert_checkpoint(
            d / "dp.pth", tmp_path / f"m.{ext}", strip_wrappers=True, max_shard_size=shards
        )
    assert out.name.endswith(".index.json") is (shards is not None)
    sd = read_state_dict(out)
    assert sd._metadata[""] == {"version": 2}  # the model's root, not the DataParallel wrapper's
    fresh = torchvision.models.mnasnet0_5()
    fresh.load_state_dict(sd)  # strict, and MNASNet checks its version
    assert same_state(fresh.state_dict(), model.state_dict())
    if how == "save":
        assert same_state(torchsmith.load_model(out).state_dict(), model.state_dict())


@pytest.mark.parametrize("table", ["[1]", "{", '{"": 5}', "[" * 5000 + "]" * 5000, '{"": {"version": [1]}}'])
def test_module_versions_of_the_wrong_type_are_ignored_with_a_note(tmp_path, table):
    path = save(torch.nn.BatchNorm1d(3), tmp_path / "bn.safetensors")
    _rewrite_safetensors_metadata(path, lambda meta: meta.__setitem__("torchsmith.module_versions", table))
    ckpt = torchsmith.read_checkpoint(path)
    versions = getattr(ckpt.state_dict, "_metadata", None)
    if versions is None:
        assert any("module_versions" in n for n in ckpt.notes)
    else:  # a list inside an entry: that value is dropped, the entry kept
        assert versions == {"": {}}
    torch.nn.BatchNorm1d(3).load_state_dict(ckpt.state_dict)
