"""The reader's guarantees by construction, each tested as a class of variants (issue 28).

* records cannot be rewritten: no opcode (BUILD, slot state, SETITEM, APPEND) changes a storage or
  tensor record or an allowlisted global, so no path from a pickle is ever opened;
* only regular files are opened: FIFOs, devices and files swapped after reading are refused;
* nested-load, file, network, process and code globals are refused by name with their class,
  however they are spelt (GLOBAL, STACK_GLOBAL, dotted names, attribute walks, Python 2 names);
* zip members are unambiguous: duplicates, overlaps, a second archive, renamed local headers;
* amplification is bounded: stride-0 views stay views (as torch returns them) and every
  materialisation and allocating call is charged to one budget per read.
"""

from __future__ import annotations

import _compat_pickle
import os
import pickle
import signal
import struct
import zipfile
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import torchsmith
from torchsmith.checkpoint._budget import BudgetExceeded
from torchsmith.checkpoint._globals import (
    ALLOWED,
    DANGER_CLASSES,
    DANGEROUS,
    DANGEROUS_VERBS,
    classify,
    resolve,
)
from torchsmith.checkpoint._values import materialised_nbytes
from torchsmith.checkpoint.formats import open_raw
from torchsmith.checkpoint.inspect import inspect_checkpoint
from torchsmith.checkpoint.pickle_reader import DangerousPickle
from torchsmith.checkpoint.read import select_tensors
from torchsmith.errors import CheckpointError

SECRET = b"TOP-SECRET-BYTES" * 4


@contextmanager
def deadline(seconds: int = 10):
    """Fail instead of hanging (a FIFO read blocks forever)."""

    def boom(*_):
        raise TimeoutError("the read blocked")

    old = signal.signal(signal.SIGALRM, boom)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


# -- a tiny pickle assembler ------------------------------------------------------------------


def _s(text: str) -> bytes:
    data = text.encode()
    return b"X" + struct.pack("<I", len(data)) + data


def _g(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _storage_pid(key: str = "0", numel: int = 4) -> bytes:
    return (
        b"("
        + _s("storage")
        + _g("torch", "FloatStorage")
        + _s(key)
        + _s("cpu")
        + b"K"
        + bytes([numel])
        + b"tQ"
    )


def _tensor(storage: bytes, numel: int = 4) -> bytes:
    return (
        _g("torch._utils", "_rebuild_tensor_v2") + b"(" + storage + b"K\x00K" + bytes([numel])
        + b"\x85K\x01\x85\x89" + _g("collections", "OrderedDict") + b")RtR"
    )  # fmt: skip


def _zip(path: Path, pkl: bytes, records: dict[str, bytes] | None = None) -> Path:
    records = {"archive/data/0": bytes(16)} if records is None else records
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", pkl)
        zf.writestr("archive/byteorder", b"little")
        for name, data in records.items():
            zf.writestr(name, data)
    return path


def _legacy(path: Path, pkl: bytes, keys=("0",), data=bytes(16)) -> Path:
    out = bytearray()
    for v in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}):
        out += pickle.dumps(v, protocol=2)
    out += pkl + pickle.dumps(list(keys), protocol=2)
    for _ in keys:
        out += struct.pack("<q", len(data) // 4) + data
    path.write_bytes(bytes(out))
    return path


# -- record rewriting: never a foreign file's bytes --------------------------------------------

# Each variant: a pickle that builds a tensor over storage "0", memoised as 0 (storage) and 1
# (tensor), then tries to point a record at the secret file (or at other bytes), and returns
# {"w": tensor}.
_REWRITES = {
    "build-dict-on-storage": lambda secret: b"h\x00}" + _s("file") + _s(secret) + b"sb0",
    "build-slots-on-storage": lambda secret: b"h\x00N}" + _s("file") + _s(secret) + b"s\x86b0",
    "build-offset-on-storage": lambda secret: b"h\x00}" + _s("offset") + b"J\x00\x00\x00\x00sb0",
    "setitem-on-storage": lambda secret: b"h\x00" + _s("file") + _s(secret) + b"s0",
    "build-storage-on-tensor": lambda secret: b"h\x01}" + _s("storage") + b"h\x00sb0",
    "append-on-tensor": lambda secret: b"h\x01" + _s(secret) + b"a0",
    "build-on-rebuild-global": lambda secret: _g("torch._utils", "_rebuild_tensor_v2") + b"}" + _s("fn")
    + _g("builtins", "open") + b"sb0",
    "build-class-on-ordereddict": lambda secret: _g("collections", "OrderedDict") + b")R}" + _s("__class__")
    + _g("builtins", "dict") + b"sb0",
}  # fmt: skip


def _rewrite_pickle(variant: str, secret: str) -> bytes:
    head = b"\x80\x02" + _storage_pid() + b"q\x00" + b"0"  # storage memoised as 0
    tensor = _tensor(b"h\x00") + b"q\x01"
    return head + tensor + b"0" + _REWRITES[variant](secret) + b"}" + _s("w") + b"h\x01s."


@pytest.mark.parametrize("container", ["zip", "legacy"])
@pytest.mark.parametrize("variant", sorted(_REWRITES))
def test_records_cannot_be_rewritten(tmp_path, variant, container):
    secret = tmp_path / "secret.bin"
    secret.write_bytes(SECRET)
    pkl = _rewrite_pickle(variant, str(secret))
    path = _zip(tmp_path / "a.pt", pkl) if container == "zip" else _legacy(tmp_path / "a.pt", pkl)
    rebuild = resolve("torch._utils._rebuild_tensor_v2")
    try:
        sd = torchsmith.read_state_dict(path)
    except CheckpointError as e:
        assert "TOP-SECRET" not in str(e)
    else:  # read: then only the archive's own bytes, exactly as torch reads them
        assert bytes(sd["w"].numpy().tobytes()) == bytes(16)
    # The allowlisted global is the same frozen object, unchanged for the next read.
    assert (
        resolve("torch._utils._rebuild_tensor_v2") is rebuild and rebuild.fn.__name__ == "rebuild_tensor_v2"
    )
    with pytest.raises(AttributeError):
        rebuild.fn = print


@pytest.mark.parametrize("key", ["../../secret.bin", "/etc/passwd", "data/0", "", "0\x00"])
def test_storage_keys_name_only_members_of_the_archive(tmp_path, key):
    (tmp_path / "secret.bin").write_bytes(SECRET)
    pkl = b"\x80\x02}" + _s("w") + _tensor(_storage_pid(key)) + b"s."
    with pytest.raises(CheckpointError, match=r"missing from the zip|storage key|persistent"):
        torchsmith.read_state_dict(_zip(tmp_path / "k.pt", pkl))


# -- only regular files -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["fifo", "fifo-symlink", "dev-zero", "dev-null", "directory-fifo"])
@pytest.mark.parametrize("op", ["read_state_dict", "inspect", "sniff"])
def test_fifos_and_devices_are_refused_without_blocking(tmp_path, kind, op):
    if kind.startswith("fifo") or kind == "directory-fifo":
        fifo = tmp_path / "model.pt"
        os.mkfifo(fifo)
        path = fifo
        if kind == "fifo-symlink":
            path = tmp_path / "link.pt"
            path.symlink_to(fifo)
        elif kind == "directory-fifo":
            path = tmp_path
    else:
        path = Path("/dev/zero" if kind == "dev-zero" else "/dev/null")
        if not path.exists():
            pytest.skip(f"{path} missing")
    fn = {"read_state_dict": torchsmith.read_state_dict, "inspect": inspect_checkpoint,
          "sniff": torchsmith.checkpoint.sniff}[op]  # fmt: skip
    with deadline(10), pytest.raises(CheckpointError, match=r"regular file|not a checkpoint|empty"):
        fn(path)


def test_a_file_swapped_after_reading_is_not_mapped(tmp_path):
    path = tmp_path / "m.pt"
    torch.save({"w": torch.arange(4.0)}, path)
    refs, *_ = select_tensors(open_raw(path))
    other = tmp_path / "other.pt"
    torch.save({"w": torch.full((4,), 7.0)}, other)
    os.replace(other, path)  # another inode at the same path
    from torchsmith.checkpoint._refs import FileMaps, materialize

    with pytest.raises(CheckpointError, match="replaced"):
        materialize(refs["w"], FileMaps())
    os.unlink(path)
    os.mkfifo(path)
    with deadline(10), pytest.raises(CheckpointError, match="regular file"):
        materialize(refs["w"], FileMaps())


# -- dangerous globals, however spelt ----------------------------------------------------------

NESTED = """torch.load torch.serialization.load torch.serialization._load torch.storage._load_from_bytes
    torch.UntypedStorage.from_file torch.from_file pickle.loads _pickle.loads marshal.loads numpy.load
    numpy.fromfile joblib.load dill.loads torch.hub.load_state_dict_from_url mylib.io.load
    transformers.AutoModel.from_pretrained safetensors.torch.load_file"""
OTHERS = {
    "builtins.open": "file", "shutil.rmtree": "file", "posix.system": "process",
    "subprocess.Popen": "process",
    "socket.create_connection": "network", "urllib.request.urlopen": "network",
    "builtins.eval": "code execution", "builtins.getattr.__self__": "code execution",
    "torch.Tensor.__reduce_ex__.__globals__": "code execution", "importlib.import_module": "code execution",
    "sys.modules": "process", "gc.get_objects": "process",
}  # fmt: skip


def _spellings(qualname: str) -> dict[str, bytes]:
    module, name = qualname.split(".", 1) if qualname.count(".") >= 1 else ("builtins", qualname)
    mod, _, last = qualname.rpartition(".")
    call = _s("x") + b"\x85R"
    return {
        "GLOBAL": b"\x80\x02" + _g(mod, last) + call + b".",
        "STACK_GLOBAL-dotted": b"\x80\x04" + _s(module) + _s(name) + b"\x93" + call + b".",
        "named-not-called": b"\x80\x02}" + _s("x") + _g(mod, last) + b"s.",
    }


@pytest.mark.parametrize("qualname,danger", [*((q, "nested load") for q in NESTED.split()), *OTHERS.items()])
def test_dangerous_globals_are_refused_with_their_class_however_spelt(tmp_path, qualname, danger):
    for how, pkl in _spellings(qualname).items():
        for container in ("plain", "zip", "legacy"):
            path = tmp_path / f"{how}-{container}.pt"
            if container == "plain":
                path.write_bytes(pkl)
            elif container == "zip":
                _zip(path, pkl, {})
            else:
                _legacy(path, pkl, keys=(), data=b"")
            with pytest.raises(DangerousPickle) as e:
                torchsmith.read_state_dict(path)
            assert danger in str(e.value) and "hostile" in str(e.value), (how, container)
            with pytest.raises(DangerousPickle) as e:
                inspect_checkpoint(path)
            entries = [c for c in e.value.safety["calls"] if c["class"] == "dangerous"]
            assert entries and all(c["danger"] in DANGER_CLASSES for c in entries)
            assert {c["danger"] for c in entries} == {danger}, (how, entries)


def test_python2_names_are_judged_after_mapping(tmp_path):
    f = tmp_path / "p0.pkl"
    f.write_bytes(b"\x80\x02c__builtin__\neval\n(S'1'\ntR.")  # a Python 2 module name
    with pytest.raises(DangerousPickle, match=r"builtins\.eval"):
        torchsmith.read_state_dict(f)


# -- one table: inspect's verdict and the reader's behaviour agree ------------------------------


def _every_table_name() -> list[str]:
    # A module entry ("os") is named as a global inside it ("os.anything").
    names = set(ALLOWED or {}) | {q if "." in q else f"{q}.anything" for q in DANGEROUS}
    names |= {f"somelib.sub.{verb}" for verb in DANGEROUS_VERBS}
    names |= {f"{q}.attr" for q in list(DANGEROUS)[:40]} | {
        "mymodels.Net",
        "argparse.Namespace",
        "__main__.Net",
    }
    return sorted(names)


def test_verdict_and_behaviour_agree_for_every_table_entry(tmp_path):
    resolve("builtins.dict")  # fills the allowlist
    names = _every_table_name()
    assert len(names) > 300
    disagree = []
    for i, named in enumerate(names):
        mod, _, last = named.rpartition(".")
        # The reader judges the name after Python 2 names are mapped (cPickle -> pickle), as pickle does.
        q = f"{_compat_pickle.IMPORT_MAPPING.get(mod, mod)}.{last}"
        path = tmp_path / f"{i}.pt"
        # The global named as a value (not called), beside a real tensor: what would the reader do?
        _zip(path, b"\x80\x02}(" + _s("w") + _tensor(_storage_pid()) + _s("g") + _g(mod, last) + b"u.")
        verdict = classify(q)
        try:
            info = inspect_checkpoint(path)
            entry = next(c for c in info["safety"]["calls"] if c["name"] == q)
            behaviour = "read"
        except DangerousPickle as e:
            entry = next(c for c in e.safety["calls"] if c["name"] == q)
            behaviour = "refused"
        except CheckpointError as e:  # e.g. a builder that wants arguments: not a safety refusal
            entry, behaviour = verdict.as_dict(), f"error: {e}"
        if entry != verdict.as_dict():
            disagree.append((q, "inspect", entry, verdict))
        if (verdict.verdict == "dangerous") != (behaviour == "refused"):
            disagree.append((q, "reader", behaviour, verdict))
    assert not disagree, disagree[:10]


# -- zip members are unambiguous ---------------------------------------------------------------


def _raw_zip(path: Path, entries: list[tuple[str, bytes]]) -> Path:
    import warnings

    with zipfile.ZipFile(path, "w") as zf, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, data in entries:
            zf.writestr(zipfile.ZipInfo(name), data)
    return path


def _good_pickle() -> bytes:
    return b"\x80\x02}" + _s("w") + _tensor(_storage_pid()) + b"s."


@pytest.mark.parametrize(
    "variant",
    [
        "data.pkl-twice",
        "storage-twice",
        "two-archives",
        "renamed-local-header",
        "overlapping-members",
        "member-marked-directory",
    ],
)
def test_ambiguous_zips_are_refused(tmp_path, variant):
    good, zeros, ones = _good_pickle(), bytes(16), struct.pack("<4f", 1, 1, 1, 1)
    entries = [("archive/data.pkl", good), ("archive/data/0", zeros)]
    if variant == "data.pkl-twice":
        entries.append(("archive/data.pkl", b"\x80\x02}" + _s("w") + _tensor(_storage_pid()) + b"s."))
    elif variant == "storage-twice":
        entries.append(("archive/data/0", ones))
    elif variant == "two-archives":
        entries += [("other/data.pkl", good), ("other/data/0", ones)]
    path = _raw_zip(tmp_path / "z.pt", entries)
    if variant == "member-marked-directory":  # torch hands back uninitialised memory for such a record
        data = bytearray(path.read_bytes())
        cd = data.rindex(b"PK\x01\x02")
        data[cd + 38 : cd + 42] = struct.pack("<I", 0x10)
        path.write_bytes(bytes(data))
    if variant == "renamed-local-header":
        data = bytearray(path.read_bytes())
        i = data.index(b"archive/data/0")  # the first (local header) spelling
        data[i : i + 14] = b"archive/data/1"
        path.write_bytes(bytes(data))
    elif variant == "overlapping-members":
        # A central directory entry pointing at the bytes of another member.
        data = bytearray(path.read_bytes())
        cd = data.rindex(b"PK\x01\x02")  # the last central entry: archive/data/0
        first_local = 0
        data[cd + 42 : cd + 46] = struct.pack("<I", first_local)
        path.write_bytes(bytes(data))
    with pytest.raises(
        CheckpointError, match=r"twice|data\.pkl records|another name|overlap|damaged|directory"
    ):
        torchsmith.read_state_dict(path)


# -- amplification is bounded -------------------------------------------------------------------


@pytest.mark.parametrize(
    "shape,stride",
    [
        ((1 << 28,), (0,)),
        ((1 << 14, 1 << 14), (0, 0)),
        ((4, 1 << 26), (1, 0)),
        ((2, 1 << 14, 1 << 14), (1, 0, 0)),
    ],
)
def test_stride0_views_stay_views_and_their_size_is_charged(tmp_path, shape, stride):
    path = tmp_path / "s.pt"
    base = torch.arange(4.0)
    torch.save({"w": base.as_strided(shape, stride)}, path)
    theirs = torch.load(path, weights_only=True)["w"]
    ours = torchsmith.read_state_dict(path)["w"]
    assert ours.stride() == theirs.stride() == stride and ours.shape == theirs.shape
    assert ours.untyped_storage().nbytes() == theirs.untyped_storage().nbytes() <= 16
    ref = select_tensors(open_raw(path))[0]["w"]
    assert materialised_nbytes(ref) == 4 * torch.Size(shape).numel() >= 1 << 30
    with pytest.raises(BudgetExceeded, match="bytes allocated"):
        torchsmith.read_state_dict(path, map_location="meta")  # a move materialises: charged first


def _chain(call: bytes, times: int) -> bytes:
    return b"\x80\x02}(" + _s("w") + _tensor(_storage_pid()) + _s("x") + b"](" + call * times + b"eu."


@pytest.mark.parametrize(
    "call",
    [
        _g("builtins", "bytearray") + b"J\x00\x00\x00\x01\x85R",  # 16 MiB each
        _g("builtins", "bytes") + b"J\x00\x00\x00\x01\x85R",
        _g("builtins", "list") + _g("builtins", "range") + b"J\x00\x00\x08\x00\x85R\x85R",
        _g("builtins", "set") + _g("builtins", "range") + b"J\x00\x00\x08\x00\x85R\x85R",
        _g("builtins", "tuple") + _g("builtins", "range") + b"J\x00\x00\x08\x00\x85R\x85R",
    ],
    ids=["bytearray", "bytes", "list-range", "set-range", "tuple-range"],
)
def test_chained_allocating_calls_share_one_budget(tmp_path, monkeypatch, call):
    monkeypatch.setenv("TORCHSMITH_READ_MAX_BYTES", str(20 << 20))
    path = _zip(tmp_path / "c.pt", _chain(call, 30))
    with pytest.raises(BudgetExceeded, match="bytes allocated"):
        torchsmith.read_state_dict(path)
    monkeypatch.delenv("TORCHSMITH_READ_MAX_BYTES")
    assert torchsmith.read_state_dict(_zip(tmp_path / "one.pt", _chain(call, 1)))["w"].shape == (4,)


@pytest.mark.parametrize(
    "limit,env", [("pickle operations", "TORCHSMITH_READ_MAX_OPS"), ("nesting depth", None)]
)
def test_operations_and_nesting_are_bounded(tmp_path, monkeypatch, limit, env):
    if env:
        monkeypatch.setenv(env, "5000")
        pkl = b"\x80\x02]" + b"(" + b"N" * 20000 + b"e."
    else:
        pkl = b"\x80\x02" + b"(" * 20000 + b"N" + b"t" * 20000 + b"."
    path = tmp_path / "o.pkl"
    path.write_bytes(pkl)
    with pytest.raises(BudgetExceeded, match=limit):
        torchsmith.read_state_dict(path)


def test_trust_pickle_is_the_only_way_past_a_dangerous_global(tmp_path):
    # os.getcwd is harmless to run here, and dangerous by class (process): refused unless trusted.
    from _sec_corpus import Reduce

    torch.save({"w": torch.ones(2), "x": Reduce(os.getcwd)}, tmp_path / "t.pt")
    with pytest.raises(DangerousPickle, match=r"posix\.getcwd \(process\)"):
        torchsmith.read_state_dict(tmp_path / "t.pt")
    assert torch.equal(torchsmith.read_state_dict(tmp_path / "t.pt", trust_pickle=True)["w"], torch.ones(2))
    info = inspect_checkpoint(tmp_path / "t.pt", trust_pickle=True)
    assert info["safety"]["verdict"] == "dangerous" and info["tensors"] == 1


def test_a_dcp_metadata_fifo_is_refused_without_blocking(tmp_path):
    from torchsmith.checkpoint.dcp import read_dcp_metadata

    os.mkfifo(tmp_path / ".metadata")
    (tmp_path / "__0_0.distcp").write_bytes(b"")
    with deadline(10), pytest.raises(CheckpointError, match=r"regular file|no \.metadata file"):
        read_dcp_metadata(tmp_path)


_IDENT = st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True)


@settings(max_examples=300, deadline=None)
@given(entry=st.sampled_from(sorted(q for q, c in DANGEROUS.items() if c)), tail=st.lists(_IDENT, max_size=3))
def test_every_name_below_a_dangerous_entry_is_dangerous_with_its_class(entry, tail):
    name = ".".join([entry, *tail]) if "." in entry or tail else f"{entry}.run"
    parts = name.split(".")
    # The most specific table entry that is a prefix of the name decides (an inert exception wins).
    owner = next(
        (".".join(parts[:i]) for i in range(len(parts), 0, -1) if ".".join(parts[:i]) in DANGEROUS), None
    )
    v = classify(name)
    if DANGEROUS[owner]:
        assert v.verdict == "dangerous" and v.danger == DANGEROUS[owner], (name, v)
    else:
        assert v.verdict != "dangerous" or parts[-1] in DANGEROUS_VERBS


@settings(max_examples=200, deadline=None)
@given(
    mod=st.lists(_IDENT, min_size=1, max_size=3),
    dunder=st.sampled_from(
        [
            "__globals__",
            "__class__",
            "__subclasses__",
            "__init__",
            "__builtins__",
            "__reduce_ex__",
            "__call__",
        ]
    ),
)
def test_any_attribute_walk_through_a_dunder_is_code_execution(mod, dunder):
    v = classify(".".join([*mod, "x", dunder, "y"]))
    assert v.verdict == "dangerous" and v.danger == "code execution"


@settings(max_examples=200, deadline=None)
@given(mod=st.lists(_IDENT.filter(lambda s: s not in DANGEROUS), min_size=2, max_size=3), name=_IDENT)
def test_other_names_are_inert_unknowns_unless_their_verb_loads_or_runs(mod, name):
    q = ".".join([*mod, name])
    v = classify(q)
    if any(".".join(mod[:i]) in DANGEROUS for i in range(1, len(mod) + 1)):
        return
    assert v.verdict == ("dangerous" if name in DANGEROUS_VERBS else "unknown"), (q, v)
