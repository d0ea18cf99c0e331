"""``train.deterministic: true``: bit-identical reruns, and a clear error where torch cannot give them.

What it turns on, for the run only (the previous settings come back when it ends):

* ``torch.use_deterministic_algorithms(True)`` (not ``warn_only``): an operation without a
  deterministic implementation raises instead of silently differing between runs;
* cuDNN ``deterministic = True`` and ``benchmark = False`` (benchmarking picks kernels by timing);
* ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` where CUDA exists, which cuBLAS needs for reproducible
  matrix products on CUDA >= 10.2. cuBLAS reads it when CUDA starts, so it is set before the run
  touches CUDA; a process that already started CUDA without it is refused, saying what to set;
* DataLoader workers seeded from ``(seed, epoch, worker)`` (Python ``random``, NumPy and torch),
  so code in a dataset that draws from them gives the same values with the same worker count,
  after a resume too (augmentation already draws from a per-sample stream, see
  :mod:`torchsmith.training.data`).

A nondeterministic operation then fails with :class:`NondeterministicOpError` (a
:class:`~torchsmith.errors.RecipeError`, CLI exit 2) that names the operation torch named and the
ways out.

>>> with deterministic_mode(True):
...     import torch
...     torch.are_deterministic_algorithms_enabled()
True
>>> torch.are_deterministic_algorithms_enabled()
False
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from typing import Any

from torchsmith.errors import RecipeError

__all__ = [
    "CUBLAS_WORKSPACE_CONFIG",
    "NondeterministicOpError",
    "SeedWorker",
    "deterministic_mode",
    "nondeterministic_op",
    "translate_error",
    "worker_init",
]

CUBLAS_WORKSPACE_CONFIG = ":4096:8"
_CUBLAS_OK = (":4096:8", ":16:8")  # the two values NVIDIA documents as deterministic
_OP = re.compile(r"^\s*(.+?) does not have a deterministic implementation", re.S)
_CUBLAS = "CUBLAS_WORKSPACE_CONFIG"


class NondeterministicOpError(RecipeError):
    """``train.deterministic: true`` met an operation torch has no deterministic version of.

    ``op`` is the operation's name as torch gave it (e.g. ``max_unpooling2d_forward_out``).
    """

    def __init__(self, message: str, op: str | None = None) -> None:
        super().__init__(message)
        self.op = op


def nondeterministic_op(error: BaseException) -> str | None:
    """The operation a torch determinism error names, ``"cuBLAS"`` for the workspace error, else None."""
    if not isinstance(error, RuntimeError):
        return None
    text = str(error)
    m = _OP.match(text)
    if m is not None:
        return m.group(1).strip().splitlines()[-1].strip()
    if _CUBLAS in text and "Deterministic behavior was enabled" in text:
        return "cuBLAS"
    return None


def translate_error(error: BaseException, where: str = "") -> BaseException:
    """``error`` as a :class:`NondeterministicOpError` when it is torch's determinism alert, else itself.

    ``where`` (e.g. ``"at optimizer step 12"``) says when it happened.
    """
    op = nondeterministic_op(error)
    if op is None:
        return error
    at = f" {where}" if where else ""
    if op == "cuBLAS":
        message = (
            f"recipe field 'train.deterministic': cuBLAS ran{at} without a deterministic workspace: "
            f"set the environment variable {_CUBLAS}={CUBLAS_WORKSPACE_CONFIG} before the process "
            "starts CUDA (torchsmith sets it when it starts CUDA itself), or set train.deterministic: false"
        )
    else:
        message = (
            f"recipe field 'train.deterministic': the operation {op!r} ran{at} and torch has no "
            "deterministic implementation of it on this device; replace the layer that uses it (or "
            "run it on another device), or set train.deterministic: false to accept run-to-run "
            "differences"
        )
    return NondeterministicOpError(message, op)


def _cublas_env() -> None:
    """Set ``CUBLAS_WORKSPACE_CONFIG`` where CUDA exists; refuse when CUDA started without it."""
    import torch

    value = os.environ.get(_CUBLAS)
    if value in _CUBLAS_OK or not torch.cuda.is_available():
        return
    if torch.cuda.is_initialized():
        raise RecipeError(
            f"recipe field 'train.deterministic': CUDA was started in this process before "
            f"{_CUBLAS} was set ({'unset' if value is None else repr(value)}), and cuBLAS reads it only "
            f"then; start the process with {_CUBLAS}={CUBLAS_WORKSPACE_CONFIG} in its environment"
        )
    os.environ[_CUBLAS] = CUBLAS_WORKSPACE_CONFIG


@contextlib.contextmanager
def deterministic_mode(enabled: bool = True) -> Iterator[None]:
    """Deterministic algorithms, cuDNN flags and the cuBLAS workspace for the ``with`` body.

    ``enabled=False`` changes nothing. On exit the previous algorithm and cuDNN settings come back
    (the environment variable stays: cuBLAS has read it).
    """
    if not enabled:
        yield
        return
    import torch

    _cublas_env()
    cudnn = torch.backends.cudnn
    before = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        cudnn.deterministic,
        cudnn.benchmark,
    )
    torch.use_deterministic_algorithms(True, warn_only=False)
    cudnn.deterministic, cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        cudnn.deterministic, cudnn.benchmark = before[2], before[3]


class SeedWorker:
    """A DataLoader ``worker_init_fn``: seeds ``random``, NumPy and torch from (seed, epoch, worker).

    Picklable (spawned workers get it too). The epoch is the dataset's ``epoch`` attribute (set by
    the loop before each epoch's iterator starts its workers); without one, 0.
    """

    def __init__(self, seed: int) -> None:
        self.seed = int(seed)

    def __call__(self, worker_id: int) -> None:
        import random

        import numpy as np
        import torch

        info = torch.utils.data.get_worker_info()
        epoch = int(getattr(info.dataset, "epoch", 0) or 0) if info is not None else 0
        value = ((self.seed * 1_000_003 + epoch) * 1_009 + worker_id) % (2**32)
        random.seed(value)
        np.random.seed(value)
        torch.manual_seed(value)

    def __repr__(self) -> str:
        return f"SeedWorker(seed={self.seed})"


def worker_init(recipe: dict) -> Any:
    """The ``worker_init_fn`` for a recipe's loaders: :class:`SeedWorker` when deterministic, else None."""
    if not recipe["train"].get("deterministic"):
        return None
    return SeedWorker(recipe["seed"])
