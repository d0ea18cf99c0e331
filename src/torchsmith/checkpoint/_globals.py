"""The one table of pickle globals: what the reader builds, what it refuses, and what ``inspect`` says.

Every global a pickle names gets exactly one :class:`GlobalVerdict` from :func:`classify`, and both
the reader (:mod:`~torchsmith.checkpoint.pickle_reader`) and ``inspect``'s safety verdict use that
answer, so the two cannot disagree:

* ``known-safe``: on the allowlist (:data:`ALLOWED`); the reader builds a value with a
  :class:`~torchsmith.checkpoint._values.Builder` that checks its arguments.
* ``dangerous``: it can run code, load another file or pickle (``torch.load``,
  ``torch.serialization.*``, storages from bytes or files, ``pickle.loads``...), touch files, the
  network or the process. Its danger class is named (:data:`DANGER_CLASSES`) and any file naming it
  is refused whole with a :class:`~torchsmith.errors.CheckpointError`; nothing of it is run.
* ``unknown``: any other class or function (a model's own classes, Lightning hyperparameters): an
  inert :class:`~torchsmith.checkpoint._values.StandIn` that records its arguments; never imported,
  never called. ``torch.load(weights_only=False)`` would run it.

A dotted name is judged by every prefix (``builtins.eval.__call__`` is ``builtins.eval``), and any
attribute walk through a dunder (``x.__globals__``, ``x.__class__``) is code execution.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torchsmith.checkpoint import _numpy_values
from torchsmith.checkpoint._refs import ITEMSIZE, STORAGE_DTYPES
from torchsmith.checkpoint._values import Builder, DTypeRef, StorageTypeRef

__all__ = ["ALLOWED", "DANGEROUS", "DANGER_CLASSES", "GlobalVerdict", "classify", "resolve"]

CODE, NESTED, FILE, NETWORK, PROCESS = "code execution", "nested load", "file", "network", "process"
DANGER_CLASSES = (CODE, NESTED, FILE, NETWORK, PROCESS)

# Exact names or module prefixes (a prefix covers everything below it: "os" covers "os.path.join").
# Most specific entry wins; the danger class says what running it could do.
_CODE_NAMES = """
    builtins.eval builtins.exec builtins.compile builtins.__import__ builtins.breakpoint
    builtins.__build_class__ builtins.globals builtins.locals builtins.vars builtins.setattr
    builtins.delattr builtins.help builtins.input builtins.memoryview builtins.type builtins.map
    builtins.filter builtins.apply builtins.execfile builtins.__loader__ builtins.__spec__
    code codeop runpy importlib types ctypes _ctypes cProfile profile _lsprof timeit pdb bdb trace
    pydoc operator _operator functools.reduce inspect dis ast numpy.f2py numpy.testing
    numpy.distutils distutils setuptools pip zipimport pkgutil idlelib tkinter turtle logging.config
    site sitecustomize venv ensurepip unittest doctest torch.fx torch.jit torch._dynamo
    torch._inductor torch.utils.cpp_extension torch.package torch._C._jit torch.testing
    torch.library torch._ops torch.ops torch.utils.data.datapipes torch.compile torch._export
    torch.export torch._higher_order_ops
"""
_NESTED_NAMES = """
    pickle _pickle cPickle copy_reg marshal shelve dill cloudpickle joblib torch.load
    torch.serialization torch.hub torch.storage torch.from_file torch.frombuffer
    torch.UntypedStorage.from_buffer torch.UntypedStorage.from_file torch.TypedStorage
    torch.utils.model_zoo numpy.load numpy.loads numpy.fromfile numpy.memmap numpy.lib.format
    numpy.lib.npyio numpy.loadtxt numpy.genfromtxt numpy.core.multiarray.fromfile
    numpy._core.multiarray.fromfile pandas.read_pickle pandas.io safetensors huggingface_hub
    torchvision.datasets torchvision.io PIL.Image.open
"""
_FILE_NAMES = """
    builtins.open io _io codecs.open shutil tempfile glob fileinput linecache dbm sqlite3 zipfile
    tarfile gzip bz2 lzma mmap pathlib.Path.open pathlib.Path.read_bytes pathlib.Path.read_text
    pathlib.Path.write_bytes pathlib.Path.write_text pathlib.Path.unlink pathlib.Path.rmdir filecmp
    mailbox logging.FileHandler logging.handlers csv configparser plistlib netrc torch.save
    numpy.save numpy.savez numpy.savetxt numpy.tofile
"""
_NETWORK_NAMES = """
    socket _socket ssl urllib http ftplib smtplib poplib imaplib nntplib telnetlib socketserver
    xmlrpc webbrowser requests httpx urllib3 aiohttp torch.distributed.rpc
    torch.distributed.rendezvous torch.distributed.elastic torch.distributed.run
    torch.distributed.launch torch.distributed.launcher asyncio
"""
_PROCESS_NAMES = """
    os posix nt posixpath ntpath subprocess _posixsubprocess pty sys signal _signal multiprocessing
    _multiprocessing threading _thread gc resource atexit faulthandler builtins.exit builtins.quit
    builtins.copyright builtins.credits builtins.license torch.multiprocessing torch.cuda._utils
    torch._C._cuda torch.backends sched concurrent selectors select fcntl termios tty pwd grp
    platform sysconfig _winapi winreg msvcrt
"""
# Exact names or module prefixes (a prefix covers everything below it: "os" covers "os.path.join");
# the most specific entry wins; the danger class says what running it could do.
DANGEROUS: dict[str, str] = {
    **dict.fromkeys(_CODE_NAMES.split(), CODE),
    **dict.fromkeys(_NESTED_NAMES.split(), NESTED),
    **dict.fromkeys(_FILE_NAMES.split(), FILE),
    **dict.fromkeys(_NETWORK_NAMES.split(), NETWORK),
    **dict.fromkeys(_PROCESS_NAMES.split(), PROCESS),
    # Inert despite their module: plain records that real checkpoints hold (read as stand-ins).
    **dict.fromkeys(["types.SimpleNamespace", "os.PathLike", "sys.float_info"], ""),
}

# A last name component that loads, fetches or runs, in any module (``mylib.io.load``,
# ``X.from_pretrained``): the table cannot list every library, so the verb decides.
_VERBS = {
    NESTED: """load loads load_file from_file from_buffer from_pretrained load_state_dict load_checkpoint
        read_pickle unpickle load_url load_state_dict_from_url hf_hub_download snapshot_download""",
    NETWORK: "urlopen urlretrieve download download_url",
    PROCESS: "system popen spawn spawnv execv execve fork kill check_output check_call getoutput",
    CODE: "eval exec execfile compile __import__ import_module",
    FILE: "remove unlink rmtree rmdir truncate write_bytes write_text read_bytes read_text",
}
DANGEROUS_VERBS: dict[str, str] = {verb: kind for kind, verbs in _VERBS.items() for verb in verbs.split()}


@dataclass(frozen=True)
class GlobalVerdict:
    """What the table says about one global: ``verdict`` and, when dangerous, its danger class."""

    name: str
    verdict: str  # "known-safe" | "unknown" | "dangerous"
    danger: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The JSON form ``inspect`` prints: ``{"name", "class"}`` plus ``"danger"`` when dangerous."""
        d: dict[str, Any] = {"name": self.name, "class": self.verdict}
        if self.danger:
            d["danger"] = self.danger
        return d


def _allowed() -> dict[str, Any]:
    from torchsmith.checkpoint import _tensor_builders as tb

    table: dict[str, Any] = {
        "collections.OrderedDict": Builder("collections.OrderedDict", tb.ordered_dict, allocates=True),
        "collections.defaultdict": Builder("collections.defaultdict", tb.default_dict, allocates=True),
        "collections.Counter": Builder("collections.Counter", tb.counter, allocates=True),
        "builtins.dict": Builder("builtins.dict", tb.plain_dict, allocates=True),
        "builtins.list": Builder("builtins.list", tb.sized(list), allocates=True),
        "builtins.tuple": Builder("builtins.tuple", tb.sized(tuple), allocates=True),
        "builtins.set": Builder("builtins.set", tb.sized(set), allocates=True),
        "builtins.frozenset": Builder("builtins.frozenset", tb.sized(frozenset), allocates=True),
        "builtins.int": Builder("builtins.int", tb.plain_int),
        "builtins.float": Builder("builtins.float", tb.plain_float),
        "builtins.complex": Builder("builtins.complex", tb.plain_complex),
        "builtins.bool": Builder("builtins.bool", tb.plain_bool),
        "builtins.str": Builder("builtins.str", tb.sized(str), allocates=True),
        "builtins.bytes": Builder("builtins.bytes", tb.sized(bytes), allocates=True),
        "builtins.bytearray": Builder("builtins.bytearray", tb.sized(bytearray), allocates=True),
        "builtins.slice": Builder("builtins.slice", tb.plain_slice),
        "builtins.range": Builder("builtins.range", tb.plain_range),
        # A pickled bound method (trap 2) is kept as an inert (object, name) record, never looked up.
        "builtins.getattr": Builder("builtins.getattr", tb.bound_method),
        "copyreg._reconstructor": Builder("copyreg._reconstructor", tb.reconstructor),
        "copyreg.__newobj__": Builder("copyreg.__newobj__", tb.newobj),
        "_codecs.encode": Builder("_codecs.encode", tb.codecs_encode),
        "torch._utils._rebuild_tensor": Builder("torch._utils._rebuild_tensor", tb.rebuild_tensor),
        "torch._utils._rebuild_tensor_v2": Builder("torch._utils._rebuild_tensor_v2", tb.rebuild_tensor_v2),
        "torch._utils._rebuild_tensor_v3": Builder("torch._utils._rebuild_tensor_v3", tb.rebuild_tensor_v3),
        "torch._utils._rebuild_parameter": Builder("torch._utils._rebuild_parameter", tb.rebuild_parameter),
        "torch._utils._rebuild_parameter_with_state": Builder(
            "torch._utils._rebuild_parameter_with_state", tb.rebuild_parameter
        ),
        "torch._tensor._rebuild_from_type_v2": Builder(
            "torch._tensor._rebuild_from_type_v2", tb.rebuild_from_type_v2
        ),
        "torch._utils._rebuild_sparse_tensor": Builder(
            "torch._utils._rebuild_sparse_tensor", tb.refused_builder("sparse")
        ),
        "torch._utils._rebuild_sparse_csr": Builder(
            "torch._utils._rebuild_sparse_csr", tb.refused_builder("sparse CSR")
        ),
        "torch._utils._rebuild_qtensor": Builder(
            "torch._utils._rebuild_qtensor", tb.refused_builder("quantized")
        ),
        "torch._utils._rebuild_nested_tensor": Builder(
            "torch._utils._rebuild_nested_tensor", tb.refused_builder("nested")
        ),
        "torch._utils._rebuild_meta_tensor_no_storage": Builder(
            "torch._utils._rebuild_meta_tensor_no_storage", tb.refused_builder("meta")
        ),
        "torch._utils._rebuild_wrapper_subclass": Builder(
            "torch._utils._rebuild_wrapper_subclass", tb.refused_builder("wrapper subclass")
        ),
        "torch.serialization._get_layout": Builder("torch.serialization._get_layout", tb.get_layout),
        "torch.Size": Builder("torch.Size", tb.sized(tuple), allocates=True),
        "torch.device": Builder("torch.device", tb.device),
    }
    for name in ITEMSIZE:
        table[f"torch.{name}"] = DTypeRef(name)
    for name, dtype in STORAGE_DTYPES.items():
        # UntypedStorage counts bytes; the tensor's dtype comes from _rebuild_tensor_v3's argument.
        table[f"torch.{name}"] = StorageTypeRef(dtype, name)
        table[f"torch.storage.{name}"] = StorageTypeRef(dtype, name)
    for const in (
        "per_tensor_affine",
        "per_tensor_symmetric",
        "per_channel_affine",
        "per_channel_symmetric",
        "per_channel_affine_float_qparams",
        "strided",
        "sparse_coo",
        "sparse_csr",
        "sparse_csc",
        "sparse_bsr",
        "sparse_bsc",
        "Tensor",
        "nn.parameter.Parameter",
    ):
        table[f"torch.{const}"] = tb.TorchConst(f"torch.{const}")  # fmt: skip
    for qualname, fn in _numpy_values.CONSTRUCTORS.items():
        table[qualname] = Builder(qualname, fn, allocates=True) if callable(fn) else fn
    return table


# Filled on first use (the builders module imports nothing heavy, but keep import of the table cheap).
ALLOWED: dict[str, Any] = {}


def _table() -> dict[str, Any]:
    if not ALLOWED:
        ALLOWED.update(_allowed())
    return ALLOWED


def _danger(qualname: str) -> str | None:
    parts = qualname.split(".")
    for part in parts[1:]:
        if part.startswith("__") and part.endswith("__") and part not in ("__newobj__", "__builtin__"):
            return CODE  # an attribute walk through internals: x.__globals__, x.__class__.__base__
    for i in range(len(parts), 0, -1):
        found = DANGEROUS.get(".".join(parts[:i]))
        if found is not None:
            return found or None  # "" marks an inert exception inside a dangerous module
    return DANGEROUS_VERBS.get(parts[-1])


def classify(qualname: str) -> GlobalVerdict:
    """The table's verdict on global ``qualname`` (``module.name``, as the pickle names it)."""
    if qualname in _table():
        return GlobalVerdict(qualname, "known-safe")
    danger = _danger(qualname)
    if danger is not None:
        return GlobalVerdict(qualname, "dangerous", danger)
    return GlobalVerdict(qualname, "unknown")


def resolve(qualname: str) -> Any | None:
    """The value the reader uses for an allowlisted global (a Builder, dtype...), else None."""
    return _table().get(qualname)


def is_known_safe(qualname: str) -> bool:
    """Whether ``qualname`` is on the allowlist (the reader builds a value for it)."""
    return classify(qualname).verdict == "known-safe"


def is_dangerous(qualname: str) -> bool:
    """Whether the table classes ``qualname`` as dangerous (the file is refused)."""
    return classify(qualname).verdict == "dangerous"
