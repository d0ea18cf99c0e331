"""The build sandbox: building a model from data never downloads, unpickles or runs a program.

Specs, recipe ``model:`` sections and the architecture a checkpoint records are data, not the
caller's code, yet the constructors they name can do much more than allocate layers: torchvision's
detection models download backbone weights by default (``weights_backbone``) and load them with
``weights_only=False``, timm's ``checkpoint_path=`` makes ``torch.load`` read a path the data
chooses, and a planted file in the torch hub cache turns that into code execution. Two guards close
this, both used by every build from data (``build_model``/``validate_spec``, ``load_model``'s
rebuild, recipes, ``create_model``):

* :func:`check_kwargs` - keyword arguments pass an allowlist of value *types* (numbers, strings,
  bools, None, lists/tuples/dicts of them) and a denylist of *meanings*: ``weights*`` and
  ``pretrained*`` (unless None/False) and anything naming a file or address (``*checkpoint*``,
  ``*_path``, ``*url*``, ``*file*``, ``*_dir``) unless it is None, a bool or a number.
* :func:`sandbox` - while a model is being built, any download (``torch.hub``, ``urllib``, a socket
  connection, ``huggingface_hub``), ``torch.load``/``pickle.load``, or process start raises a
  :class:`~torchsmith.errors.SpecError` naming what was being built, even if the constructor
  catches the exception (it is raised again when the block ends).

The guard applies to what the spec, recipe or file asks for, never to the libraries' own import-time
work: importing torch starts a program of its own (a CUDA library probe runs ``ldconfig``), and a
fresh interpreter whose first model build imports torch or torchvision inside the sandbox was refused
for it. So :func:`sandbox` imports torch (and its ``hub``/``serialization``, so their functions are
guarded) before the guard starts, :func:`preload` imports the library a name needs (``torchvision:``,
``timm:``, ``hf:``) beforehand, and a refusal is dropped when it happens while an *installed* module
(the standard library, site-packages or torchsmith itself) is being imported for the first time
inside the block: that module body is code on this machine, not something the data chose. A module a
spec imports by path (``allow_imports``) from anywhere else is still guarded, and so is everything a
constructor does after its imports.

The explicit pretrained-weights path goes around this on purpose: it simply does not enter
:func:`sandbox`. ::

    with sandbox("spec model.yaml: backbone"):
        module = factory(**kwargs)
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import re
import sys
import sysconfig
import threading
from collections.abc import Mapping
from types import FrameType, TracebackType
from typing import Any

from torchsmith.errors import SpecError

__all__ = ["check_kwargs", "kwarg_problem", "preload", "sandbox", "sandboxed"]

_WEIGHTS = re.compile(r"^(weights|pretrained)", re.IGNORECASE)
_PLACES = re.compile(r"checkpoint|_path$|^path$|url|file|_dir$|^dir$|cache|repo|hub", re.IGNORECASE)
_MAX_DEPTH = 16

# (where, violations, frame that entered) of the innermost active sandbox in this thread/task.
_ACTIVE: contextvars.ContextVar[tuple[str, list[str], FrameType | None] | None] = contextvars.ContextVar(
    "torchsmith_sandbox", default=None
)
# The library each model namespace needs, imported before the guard starts (see preload).
_LIBRARIES = {"torchvision:": ("torchvision.models",), "timm:": ("timm",), "hf:": ("transformers",)}
_LOCK = threading.Lock()
_PATCHED: dict[tuple[Any, str], Any] = {}
_DEPTH = [0]
_HOOKED = [False]

# Audit events that mean "reaching the network, unpickling, or starting a program".
_EVENTS = {
    "socket.connect": "open a network connection",
    "socket.getaddrinfo": "look up a host name",
    "socket.gethostbyname": "look up a host name",
    "urllib.Request": "download a URL",
    "http.client.connect": "open an HTTP connection",
    "pickle.find_class": "unpickle a file",
    "os.system": "run a shell command",
    "subprocess.Popen": "start a program",
    "os.exec": "start a program",
    "os.posix_spawn": "start a program",
    "os.spawn": "start a program",
}


def _plain(value: Any, depth: int = 0) -> bool:
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if depth >= _MAX_DEPTH:
        return False
    if isinstance(value, (list, tuple)):
        return all(_plain(v, depth + 1) for v in value)
    if isinstance(value, Mapping):
        return all(isinstance(k, str) and _plain(v, depth + 1) for k, v in value.items())
    return False


def kwarg_problem(key: str, value: Any, *, types: bool = True) -> str | None:
    """Why keyword ``key=value`` may not come from data, or None when it may.

    ``types=False`` checks only the meaning (for the caller's own code, which may pass classes).
    """
    if not isinstance(key, str):
        return f"argument names must be strings, found {type(key).__name__}"
    if _WEIGHTS.match(key) and value not in (None, False):
        return (
            f"{key!r} would load pretrained weights as a side effect of building; torchsmith never "
            "downloads weights while building: build with random weights (leave it out, or null) and "
            "load a checkpoint explicitly with torchsmith.load_weights"
        )
    if _PLACES.search(key) and not (value is None or isinstance(value, (bool, int, float))):
        return (
            f"{key!r} names a file, folder or address for the constructor to read; a model built from "
            "data may not read files or the network (load weights with torchsmith.load_weights)"
        )
    if types and not _plain(value):
        return (
            f"{key!r} is a {type(value).__name__}; arguments from data must be numbers, strings, "
            "bools, null, or lists/dicts of them"
        )
    return None


def check_kwargs(kwargs: Mapping[str, Any], where: str, *, types: bool = True) -> None:
    """Raise :class:`SpecError` ``"{where}.{key}: why"`` for the first argument data may not pass."""
    for key, value in kwargs.items():
        why = kwarg_problem(key, value, types=types)
        if why is not None:
            raise SpecError(f"{where}.{key}: {why}" if where else why)


def _installed_roots() -> tuple[str, ...]:
    roots = {os.path.dirname(os.path.dirname(os.path.abspath(__file__)))}  # torchsmith's own folder
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        path = sysconfig.get_paths().get(key)
        if path:
            roots.add(os.path.abspath(path))
    for path in sys.path:  # site-packages folders of a venv or a --user install
        if path and os.path.basename(path) in ("site-packages", "dist-packages"):
            roots.add(os.path.abspath(path))
    return tuple(sorted(r.rstrip(os.sep) + os.sep for r in roots))


_ROOTS: list[tuple[str, ...]] = []


def _importing_installed_module(entered: FrameType | None) -> bool:
    """Whether the current event comes from an installed module's body running at its first import.

    Only frames above the one that entered the sandbox count (the caller's own ``<module>`` frame,
    a script's top level, is below it), and only modules whose file lies in the standard library,
    site-packages or torchsmith: a module a spec imports from the working folder is still guarded.
    """
    if not _ROOTS:
        _ROOTS.append(_installed_roots())
    roots = _ROOTS[0]
    frame = sys._getframe(2)
    while frame is not None and frame is not entered:
        code = frame.f_code
        if code.co_name == "<module>" and os.path.abspath(code.co_filename).startswith(roots):
            return True
        frame = frame.f_back
    return False


def _refuse(what: str) -> None:
    state = _ACTIVE.get()
    if state is None:
        return
    where, violations, entered = state
    if _importing_installed_module(entered):
        return
    msg = (
        f"{where}: building this model tried to {what}; a model built from a spec, recipe or "
        "checkpoint never downloads, unpickles or runs programs (build it with random weights and "
        "load weights explicitly with torchsmith.load_weights)"
    )
    violations.append(msg)
    raise SpecError(msg)


def _audit(event: str, args: tuple) -> None:
    what = _EVENTS.get(event)
    if what is not None and _ACTIVE.get() is not None:
        if (
            event == "socket.connect"
            and args
            and getattr(args[0], "family", None) == getattr(__import__("socket"), "AF_UNIX", -1)
        ):
            return
        _refuse(what)


def _guard(owner: Any, name: str, what: str) -> None:
    original = getattr(owner, name, None)
    if original is None or (owner, name) in _PATCHED:
        return

    def guarded(*args: Any, **kwargs: Any) -> Any:
        _refuse(what)
        return original(*args, **kwargs)

    guarded.__wrapped__ = original  # type: ignore[attr-defined]
    _PATCHED[(owner, name)] = original
    setattr(owner, name, guarded)


def preload(name: str | None = None) -> None:
    """Import torch, and the library model ``name`` needs, before a sandbox starts guarding.

    ``name`` is a model name such as ``"timm:resnet18"`` (a zoo name needs only torch); an unknown
    or missing library is left for the build to report.
    """
    # torch's import starts a program (never inside the guard); hub/serialization are imported here
    # so that _install finds and guards their functions.
    import torch.hub
    import torch.serialization  # noqa: F401

    for prefix, modules in _LIBRARIES.items():
        if isinstance(name, str) and name.startswith(prefix):
            for module in modules:
                with contextlib.suppress(ImportError):  # the build names a missing library itself
                    __import__(module)


def _install() -> None:
    if not _HOOKED[0]:
        sys.addaudithook(_audit)  # permanent, but inert outside a sandbox
        _HOOKED[0] = True
    import pickle

    _guard(pickle, "load", "unpickle a file (pickle.load)")
    _guard(pickle, "loads", "unpickle data (pickle.loads)")
    torch = sys.modules.get("torch")
    if torch is not None:
        import torch.hub
        import torch.serialization

        _guard(torch, "load", "read a file with torch.load")
        _guard(torch.serialization, "load", "read a file with torch.load")
        for name in ("load", "load_state_dict_from_url", "download_url_to_file", "list", "help"):
            _guard(torch.hub, name, f"download with torch.hub.{name}")
    hf = sys.modules.get("huggingface_hub")
    if hf is not None:
        for name in ("hf_hub_download", "snapshot_download"):
            _guard(hf, name, f"download with huggingface_hub.{name}")


def _uninstall() -> None:
    for (owner, name), original in _PATCHED.items():
        setattr(owner, name, original)
    _PATCHED.clear()


class sandbox:  # used as a function: ``with sandbox(where):``
    """Refuse downloads, unpickling and new processes while the block builds a model from data.

    ``where`` names what is being built (a spec path and field, a checkpoint's recorded model); it
    starts every error message. Sandboxes nest: the innermost ``where`` names the failure. A refusal
    the constructor swallowed is raised again when the block ends. torch is imported before the
    guard starts, and installed modules imported for the first time inside the block may do their
    import-time work (see the module docstring).
    """

    def __init__(self, where: str) -> None:
        self.where = where
        self._violations: list[str] = []
        self._token: contextvars.Token | None = None

    def __enter__(self) -> None:
        preload()
        with _LOCK:
            if _DEPTH[0] == 0:
                _install()
            _DEPTH[0] += 1
        # The frame of the ``with`` statement: frames below it (the caller's) never excuse an event.
        self._token = _ACTIVE.set((self.where, self._violations, sys._getframe(1)))

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._token is not None:
            _ACTIVE.reset(self._token)
        with _LOCK:
            _DEPTH[0] -= 1
            if _DEPTH[0] == 0:
                _uninstall()
        if self._violations:
            outer = _ACTIVE.get()
            if outer is not None:
                outer[1].extend(self._violations)
            raise SpecError(self._violations[0])


def sandboxed() -> bool:
    """Whether the calling code runs inside :func:`sandbox`."""
    return _ACTIVE.get() is not None
