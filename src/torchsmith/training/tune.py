"""Tuning before training: the LR range test (``tune_lr``) and the batch-size finder (``tune_batch_size``).

Both run on the recipe's own model, data, loss, optimizer and precision (the Trainer's set-up, in
this process, on one device) and write nothing to any run folder.

**LR range test** (Leslie Smith's test, Lightning's ``lr_find``): ``steps`` optimizer steps with the
LR growing exponentially from ``min_lr`` to ``max_lr``; the loss is smoothed (exponential moving
average with bias correction; ``smoothing`` defaults to ``max(0.5, 1 - 8 / steps)``, 0.92 for 100
steps, so the average lags about an eighth of the sweep whatever its length; Lightning's fixed
0.98 lags 50 steps) and the test stops early when the smoothed loss
passes ``diverge`` times its best, or is not finite. The suggestion is the LR where the smoothed
loss falls fastest against ``log(lr)`` (the steepest negative slope), skipping the first tenth of
the points and the last one, as Lightning does. Afterwards the model (parameters, buffers,
gradients, train/eval modes), the optimizer and the random-number streams are exactly as before.
With several parameter groups their LR ratios are kept; ``train.grad_accum`` is not applied (each
batch is one step). The plot is written only where ``plot`` says.

**Batch-size finder**: the largest ``data.batch_size`` for which one training step (forward,
backward, optimizer step, at the recipe's precision) fits: the batch is doubled from ``start``
until a step does not fit, then the boundary is bisected. What "fits" means:

* on a GPU: no ``torch.cuda.OutOfMemoryError``, and with ``max_memory`` the step's peak of
  ``torch.cuda.max_memory_allocated`` (all tensors on the device, the model included) within it;
* on the CPU (where running out of memory kills the process, so a budget is required): the
  resident memory the step added at its peak (Linux ``VmHWM``, reset through
  ``/proc/self/clear_refs`` just before the step, freed heap returned with ``malloc_trim``
  first; glibc's mmap threshold is set to 64 KiB meanwhile, so freed tensors leave at once:
  activations, gradients, a first step's optimizer state, oneDNN's buffers, as the kernel counts
  them) plus the bytes of what the step holds that is already
  resident (the batch, the optimizer state of earlier trials), within ``max_memory``. The model's
  own parameters are not counted. It is measured, so it is some MB noisy.

The batch never exceeds the training set (a bigger one cannot be formed); ``max_batch`` caps it too.

>>> parse_size("2GiB"), parse_size("512MB"), parse_size(1024)
(2147483648, 512000000, 1024)
>>> suggest_lr([1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0], [2.3, 2.2, 1.8, 1.2, 1.1, 9.0], skip_begin=0)
0.01
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torchsmith._io import atomic_path
from torchsmith.errors import InputError

__all__ = [
    "BatchSizeResult",
    "LRFinderResult",
    "find_largest",
    "lr_range_test",
    "parse_size",
    "suggest_lr",
    "tune_batch_size",
    "tune_lr",
]

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}


def parse_size(text: str | int | float, what: str = "--max-memory") -> int:
    """Bytes from ``"2GiB"``, ``"1.5G"``, ``"512MB"`` or a number; :class:`InputError` naming ``what``."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        if text <= 0:
            raise InputError(f"{what}: expected a positive size, got {text!r}")
        return int(text)
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
    unit = m.group(2).lower() if m else ""
    if m is None or unit not in _UNITS or float(m.group(1)) <= 0:
        raise InputError(f"{what}: expected a size such as 2GiB, 1.5GB or 512MiB, got {text!r}")
    return int(float(m.group(1)) * _UNITS[unit])


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} GiB"  # pragma: no cover


# ---------------------------------------------------------------------------------- LR range test
@dataclass
class LRFinderResult:
    """What the LR range test saw: the LR of each step, its loss (raw and smoothed), the suggestion.

    ``suggestion`` is None when too few steps were taken to judge a slope (``reason`` says why);
    ``stopped`` names why the test ended before ``steps`` (divergence), else None.
    """

    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    suggestion: float | None
    steps: int
    min_lr: float
    max_lr: float
    stopped: str | None = None
    reason: str | None = None
    plot_file: Path | None = None
    seconds: float = 0.0
    recipe: str | None = None

    def to_dict(self) -> dict:
        """A JSON-ready dict (what ``tune lr --json`` prints)."""
        out = dict(self.__dict__)
        out["plot_file"] = str(self.plot_file) if self.plot_file else None
        return out


def suggest_lr(
    lrs: list[float], smoothed: list[float], *, skip_begin: int | None = None, skip_end: int = 1
) -> float | None:
    """The LR of the steepest descent of ``smoothed`` against ``log10(lr)``; None with < 3 points left.

    ``skip_begin`` (default: a tenth of the points) and ``skip_end`` points are left out at the
    ends, where the moving average is still warming up and where the loss diverged.
    """
    import numpy as np

    n = len(lrs)
    begin = max(1, n // 10) if skip_begin is None else skip_begin
    seg = np.asarray(smoothed[begin : n - skip_end], dtype=np.float64)
    if len(seg) < 3 or not np.all(np.isfinite(seg)):
        return None
    x = np.log10(np.asarray(lrs[begin : n - skip_end], dtype=np.float64))
    slope = np.gradient(seg, x)
    return float(lrs[begin + int(np.argmin(slope))])


@contextlib.contextmanager
def _restored(model: Any, optimizer: Any, device: Any = None) -> Any:
    """Put back the model's tensors, gradients and modes, the optimizer and the RNG streams on exit."""
    import torch

    from torchsmith.training.checkpointing import capture_rng, restore_rng

    state = {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()}
    grads = {n: (None if p.grad is None else p.grad.detach().clone()) for n, p in model.named_parameters()}
    modes = {n: m.training for n, m in model.named_modules()}
    opt_state = copy.deepcopy(optimizer.state_dict())
    rng = capture_rng(device)
    try:
        yield
    finally:
        with torch.no_grad():
            for k, v in model.state_dict(keep_vars=True).items():
                v.copy_(state[k])
        for n, p in model.named_parameters():
            p.grad = grads[n]
        for n, m in model.named_modules():
            m.training = modes[n]
        optimizer.load_state_dict(opt_state)
        restore_rng(rng, device)


def lr_range_test(
    model: Any,
    optimizer: Any,
    step: Callable[[int], Any],
    *,
    min_lr: float = 1e-7,
    max_lr: float = 10.0,
    steps: int = 100,
    smoothing: float | None = None,
    diverge: float = 4.0,
    device: Any = None,
) -> LRFinderResult:
    """Run the LR range test with ``step(i)`` doing one optimizer step and returning its loss.

    Before step ``i`` each parameter group's LR is set to ``min_lr * (max_lr/min_lr)**(i/(steps-1))``
    times the group's share of the first group's LR (ratios between groups kept; a group's
    ``initial_lr``, where a scheduler set one, is its LR). Model, optimizer
    and RNG state are restored afterwards, whatever happens.

    >>> import torch
    >>> m = torch.nn.Linear(2, 1); opt = torch.optim.SGD(m.parameters(), lr=0.1)
    >>> x, y = torch.randn(16, 2), torch.randn(16, 1)
    >>> def step(i):
    ...     opt.zero_grad(); loss = torch.nn.functional.mse_loss(m(x), y); loss.backward(); opt.step()
    ...     return loss
    >>> before = {k: v.clone() for k, v in m.state_dict().items()}
    >>> r = lr_range_test(m, opt, step, min_lr=1e-4, max_lr=10, steps=30)
    >>> all(torch.equal(before[k], v) for k, v in m.state_dict().items()), opt.param_groups[0]["lr"]
    (True, 0.1)
    """
    if not (0 < min_lr < max_lr):
        raise InputError(f"--min-lr/--max-lr: expected 0 < min_lr < max_lr, got {min_lr} and {max_lr}")
    if steps < 2:
        raise InputError(f"--steps: expected at least 2 steps, got {steps}")
    if smoothing is None:
        smoothing = max(0.5, 1 - 8 / steps)
    if not 0 <= smoothing < 1:
        raise InputError(f"smoothing: expected a number in [0, 1), got {smoothing}")
    # A recipe's scheduler has already set its first LR (a warmup from 0, OneCycle's start): the
    # groups' ratios come from the LRs they were given (``initial_lr``, which schedulers keep).
    bases = [g.get("initial_lr", g["lr"]) for g in optimizer.param_groups]
    ref = bases[0] or 1.0
    shares = [b / ref for b in bases]
    lrs: list[float] = []
    losses: list[float] = []
    smoothed: list[float] = []
    avg, best, stopped = 0.0, math.inf, None
    with _restored(model, optimizer, device):
        for i in range(steps):
            lr = min_lr * (max_lr / min_lr) ** (i / (steps - 1))
            for g, share in zip(optimizer.param_groups, shares, strict=True):
                g["lr"] = lr * share
            out = step(i)
            loss = float(out.detach() if hasattr(out, "detach") else out)
            avg = smoothing * avg + (1 - smoothing) * loss
            value = avg / (1 - smoothing ** (i + 1))
            lrs.append(lr)
            losses.append(loss)
            smoothed.append(value)
            if not math.isfinite(value) or (i > 0 and value > diverge * best):
                stopped = (
                    f"the smoothed loss {value:.4g} passed {diverge:g} x its best {best:.4g} at lr {lr:.3g}"
                    if math.isfinite(value)
                    else f"the loss is not finite at lr {lr:.3g}"
                )
                break
            best = min(best, value)
    suggestion = suggest_lr(lrs, smoothed)
    reason = None
    if suggestion is None:
        reason = f"only {len(lrs)} usable steps; widen the range or give more --steps"
    return LRFinderResult(
        lrs=lrs,
        losses=losses,
        smoothed=smoothed,
        suggestion=suggestion,
        steps=len(lrs),
        min_lr=min_lr,
        max_lr=max_lr,
        stopped=stopped,
        reason=reason,
    )


def plot_lr_finder(result: LRFinderResult, path: str | os.PathLike, title: str | None = None) -> Path:
    """Write the LR range test's plot (loss against LR, log axis, the suggestion marked) atomically."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(result.lrs, result.losses, color="0.75", linewidth=1, label="loss")
    ax.plot(result.lrs, result.smoothed, label="smoothed loss")
    if result.suggestion is not None:
        i = result.lrs.index(result.suggestion)
        ax.plot([result.suggestion], [result.smoothed[i]], "o", color="red", markersize=8)
        ax.axvline(
            result.suggestion,
            color="red",
            linestyle="--",
            linewidth=1,
            label=f"suggested lr {result.suggestion:.3g}",
        )
    finite = [v for v in result.smoothed if math.isfinite(v)]
    if finite:
        lo, hi = min(finite), max(finite)
        ax.set_ylim(lo - 0.1 * (hi - lo + 1e-12), min(hi, 4 * max(lo, 1e-12)) + 0.1 * (hi - lo + 1e-12))
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    ax.grid(True, alpha=0.3)
    ax.legend()
    ax.set_title(title or "LR range test")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return path


class _Setup:
    """The recipe's model, data, loss and optimizer as the Trainer sets them up, in a temp folder."""

    def __init__(self, recipe: Any, overrides: Iterable[str], log: Callable[[str], None] | None) -> None:
        from torchsmith.training.recipe import load_recipe

        self.recipe = load_recipe(recipe, overrides)
        self.log = log or (lambda s: None)

    @contextlib.contextmanager
    def trainer(self) -> Any:
        import torch

        from torchsmith.training import distributed as dist_
        from torchsmith.training.determinism import deterministic_mode
        from torchsmith.training.loop import Trainer

        r = self.recipe
        if dist_._env_int("WORLD_SIZE", 1) > 1:
            raise InputError("tune: run it as one process, not under torchrun")
        threads = torch.get_num_threads()
        with deterministic_mode(r["train"]["deterministic"]):
            device = dist_._pick_device(r["train"]["device"], 0)
            ctx = dist_.DistContext(rank=0, world_size=1, local_rank=0, device=device)
            try:
                with tempfile.TemporaryDirectory(prefix="torchsmith-tune-") as tmp:
                    t = Trainer(r, Path(tmp), ctx, log=self.log)
                    t._seed()
                    t._setup_data()
                    t._setup_model(weights=True)
                    t._setup_loaders()
                    t._setup_optimization()
                    yield t
            finally:
                torch.set_num_threads(threads)


def _batches(t: Any) -> Iterable[tuple[int, int, Any, Any]]:
    """(epoch, index, x, y) from the training loader, epoch after epoch, on the device."""
    from torchsmith.training.evaluation import _to_device

    dev, cl = t.ctx.device, t.recipe["train"]["channels_last"]
    epoch = 0
    while True:
        t.train_ds.set_epoch(epoch)
        t.sampler.set_epoch(epoch)
        for b, (x, y) in enumerate(t.train_loader):
            yield epoch, b, _to_device(x, dev, cl), _to_device(y, dev, False)
        epoch += 1


def _train_step(t: Any) -> Callable[[int, Any, Any, Any, Any], Any]:
    """One optimizer step as the loop takes it (autocast, mixup, clipping, scaler, LBFGS)."""
    forward_backward = t._forward_backward()
    params = [p for g in t.optimizer.param_groups for p in g["params"]]
    clip = t.recipe["train"]["clip_grad_norm"]

    def step(epoch: int, index: int, x: Any, y: Any) -> Any:
        t.model.train()
        lam = None
        if t.mixer is not None:
            x, lam = t.mixer(x, epoch=epoch, index=index)
        if t.is_lbfgs:
            _, loss = t._lbfgs_step(x, y)
            return loss.detach()
        _, loss = forward_backward(x, y, 1, lam)
        t._optimizer_step(params, clip)
        return loss.detach()

    return step


def tune_lr(
    recipe: str | os.PathLike | dict | None = None,
    *,
    overrides: Iterable[str] = (),
    min_lr: float = 1e-7,
    max_lr: float = 10.0,
    steps: int | None = None,
    smoothing: float | None = None,
    diverge: float = 4.0,
    plot: str | os.PathLike | None = None,
    log: Callable[[str], None] | None = None,
) -> LRFinderResult:
    """The LR range test on a recipe's model and data: a suggested ``optimizer.lr`` and the curve.

    Builds what ``torchsmith train`` would (pretrained weights included), runs at most ``steps``
    optimizer steps (default: half an epoch's, at least 10 and at most 100, so the test costs at
    most about half an epoch; 100, Lightning's count, from 200 batches an epoch) with the LR
    growing exponentially from ``min_lr`` to ``max_lr``, and returns an
    :class:`LRFinderResult`; the plot goes to ``plot`` when given (nothing else is written, no run
    folder is made or touched).

    >>> r = torchsmith.tune_lr("recipe.yaml", steps=50, plot="lr.png")   # doctest: +SKIP
    >>> r.suggestion                                                     # doctest: +SKIP
    0.0031...
    """
    start = time.perf_counter()
    setup = _Setup(recipe, overrides, log)
    with setup.trainer() as t:
        one_step = _train_step(t)
        batches = _batches(t)
        if steps is None:
            steps = min(100, max(10, len(t.train_loader) // 2))

        say = setup.log
        every = max(1, steps // 10)
        tick = time.perf_counter()

        def step(i: int) -> Any:
            epoch, index, x, y = next(batches)
            loss = one_step(epoch, index, x, y)
            if (i + 1) % every == 0 or i + 1 == steps:
                lr = t.optimizer.param_groups[0]["lr"]
                spent = time.perf_counter() - tick
                say(f"lr range test: step {i + 1}/{steps}  lr {lr:.3g}  loss {float(loss):.4f}  {spent:.1f}s")
            return loss

        try:
            result = lr_range_test(
                t.raw_model,
                t.optimizer,
                step,
                min_lr=min_lr,
                max_lr=max_lr,
                steps=steps,
                smoothing=smoothing,
                diverge=diverge,
                device=t.ctx.device,
            )
        finally:
            batches.close()  # the loader's workers, if any, end here
    result.recipe = setup.recipe.source or "(mapping)"
    if plot is not None:
        result.plot_file = plot_lr_finder(result, plot, title=f"LR range test: {setup.recipe['name']}")
    result.seconds = round(time.perf_counter() - start, 3)
    return result


# ---------------------------------------------------------------------------------- batch size
@dataclass
class BatchSizeResult:
    """The largest batch that fits (0: not even ``1``), every trial, and what was measured."""

    batch_size: int
    device: str
    measure: str
    max_memory: int | None
    limit: int
    limited_by: str
    trials: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    recipe: str | None = None

    def to_dict(self) -> dict:
        """A JSON-ready dict (what ``tune batch-size --json`` prints)."""
        return dict(self.__dict__)


def find_largest(fits: Callable[[int], bool], start: int, limit: int) -> int:
    """The largest ``n <= limit`` with ``fits(n)``: double from ``start``, then bisect the boundary.

    Assumes that what fits at ``n`` fits below it; returns 0 when not even 1 fits.

    >>> find_largest(lambda n: n <= 37, 4, 1000), find_largest(lambda n: n <= 37, 64, 1000)
    (37, 37)
    >>> find_largest(lambda n: True, 4, 100), find_largest(lambda n: False, 4, 100)
    (100, 0)
    """
    n = max(1, min(start, limit))
    if fits(n):
        lo = n
        while True:
            if lo >= limit:
                return lo
            nxt = min(lo * 2, limit)
            if not fits(nxt):
                hi = nxt
                break
            lo = nxt
    else:
        lo, hi = 0, n
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid
    return lo


def _rss() -> tuple[int, int]:
    """(VmRSS, VmHWM) of this process in bytes (Linux)."""
    text = Path("/proc/self/status").read_text()
    rss = re.search(r"VmRSS:\s+(\d+)\s+kB", text)
    hwm = re.search(r"VmHWM:\s+(\d+)\s+kB", text)
    if rss is None or hwm is None:  # pragma: no cover - not Linux
        raise InputError("tune batch-size: --max-memory on the CPU needs Linux's /proc/self/status")
    return int(rss.group(1)) * 1024, int(hwm.group(1)) * 1024


_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter


class _CpuMeter:
    """A step's peak resident memory on the CPU (Linux; see the module docstring)."""

    measure = (
        "peak resident memory (VmHWM) the step added, plus the batch and the optimizer state it "
        "holds (bytes of their tensors)"
    )

    def __init__(self) -> None:
        import ctypes
        import ctypes.util

        if not Path("/proc/self/clear_refs").exists():
            raise InputError(
                "tune batch-size: the CPU memory budget is measured with Linux's /proc/self/clear_refs, "
                "which this system lacks; run it on Linux or on a GPU"
            )
        name = ctypes.util.find_library("c")
        self._libc = ctypes.CDLL(name) if name else None
        self._start = 0
        self._held = 0
        # Every allocation of 64 KiB or more gets its own mapping, returned to the system when
        # freed: the resident peak then follows the live tensors. With glibc's default, memory
        # freed inside a step stays resident and fragments, and the measure crept up by tens of
        # MB from one trial to the next (same batch size: 99 MiB steady, 137-205 MiB by default).
        self._mallopt(_M_MMAP_THRESHOLD, 64 * 1024)

    def _mallopt(self, param: int, value: int) -> None:
        if self._libc is not None and hasattr(self._libc, "mallopt"):
            self._libc.mallopt(param, value)

    def close(self) -> None:
        """glibc's initial mmap threshold (128 KiB) back for the rest of the process."""
        self._mallopt(_M_MMAP_THRESHOLD, 128 * 1024)

    def _trim(self) -> None:
        # No gc.collect(): tensors go with their last reference, and a full collection of a
        # process with torch imported costs seconds per trial.
        if self._libc is not None and hasattr(self._libc, "malloc_trim"):
            self._libc.malloc_trim(0)

    def start(self, held: int = 0) -> None:
        """Before the step: ``held`` bytes of tensors it will hold that are already resident."""
        self._trim()
        # Measured from here, not from the first trial: what earlier trials left resident (oneDNN
        # keeps primitives and scratchpads per input shape) is not this batch size's cost.
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current resident size
        self._start, self._held = _rss()[0], held

    def peak(self) -> int:
        return _rss()[1] - self._start + self._held


class _CudaMeter:
    measure = "torch.cuda.max_memory_allocated during the step (all tensors on the device)"

    def __init__(self, device: Any) -> None:
        self.device = device

    def start(self, held: int = 0) -> None:
        import torch

        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)

    def peak(self) -> int:
        import torch

        torch.cuda.synchronize(self.device)
        return int(torch.cuda.max_memory_allocated(self.device))

    def close(self) -> None:
        pass


def _nbytes(*values: Any) -> int:
    """Bytes of the tensors in ``values`` (nested in dicts, lists and tuples)."""
    import torch

    total = 0
    stack = list(values)
    while stack:
        v = stack.pop()
        if isinstance(v, torch.Tensor):
            total += v.numel() * v.element_size()
        elif isinstance(v, dict):
            stack.extend(v.values())
        elif isinstance(v, (list, tuple)):
            stack.extend(v)
    return total


def _batch(ds: Any, n: int) -> tuple[Any, Any]:
    from torch.utils.data import default_collate

    return default_collate([ds[i % len(ds)] for i in range(n)])


def tune_batch_size(
    recipe: str | os.PathLike | dict | None = None,
    *,
    overrides: Iterable[str] = (),
    max_memory: str | int | None = None,
    start: int | None = None,
    max_batch: int | None = None,
    log: Callable[[str], None] | None = None,
) -> BatchSizeResult:
    """The largest ``data.batch_size`` whose training step fits the device (or ``max_memory``).

    Doubles from ``start`` (default: the recipe's batch size) and bisects the boundary; each trial
    is one real training step on the recipe's model (see the module docstring for what is measured
    on a GPU and on the CPU). On the CPU ``max_memory`` (``"2GiB"``) is required. Nothing is written.

    >>> torchsmith.tune_batch_size("recipe.yaml", max_memory="2GiB").batch_size   # doctest: +SKIP
    256
    """
    import gc

    import torch

    from torchsmith.training.evaluation import _to_device

    t0 = time.perf_counter()
    budget = parse_size(max_memory) if max_memory is not None else None
    for what, value in (("--max-batch", max_batch), ("--start", start)):
        if value is not None and value < 1:
            raise InputError(f"{what}: expected a positive integer, got {value}")
    setup = _Setup(recipe, overrides, log)
    say = setup.log
    with setup.trainer() as t:
        dev = t.ctx.device
        if dev.type == "cuda":
            meter: Any = _CudaMeter(dev)
        elif budget is None:
            raise InputError(
                "tune batch-size: on the CPU give --max-memory (e.g. 2GiB): running out of memory there "
                "kills the process instead of raising an error the search could catch"
            )
        else:
            meter = _CpuMeter()
        limit = len(t.train_ds)
        limited_by = f"the training set ({limit} samples)"
        if max_batch is not None and max_batch < limit:
            limit, limited_by = max_batch, f"--max-batch {max_batch}"
        first = start or t.recipe["data"]["batch_size"]
        one_step = _train_step(t)
        cl = t.recipe["train"]["channels_last"]
        trials: list[dict] = []

        def fits(n: int) -> bool:
            x, y = _batch(t.train_ds, n)
            x, y = _to_device(x, dev, cl), _to_device(y, dev, False)
            oom = None
            meter.start(_nbytes(x, y, t.optimizer.state))
            try:
                one_step(0, 0, x, y)
            except torch.cuda.OutOfMemoryError as e:
                oom = str(e).splitlines()[0][:200]
            peak = None if oom else meter.peak()
            del x, y
            t.optimizer.zero_grad(set_to_none=True)
            if oom is not None:
                gc.collect()
                torch.cuda.empty_cache()
            ok = oom is None and (budget is None or peak <= budget)
            trials.append({"batch_size": n, "fits": ok, "peak_bytes": peak, "out_of_memory": oom is not None})
            say(
                f"batch {n}: "
                + ("out of memory" if oom else f"peak {_human(peak)}")
                + (f" of {_human(budget)}" if budget and not oom else "")
                + (" - fits" if ok else " - too big")
            )
            return ok

        try:
            best = find_largest(fits, first, limit)
        finally:
            meter.close()
    if best == limit and any(tr["batch_size"] == limit and tr["fits"] for tr in trials):
        reason = limited_by
    else:
        reason = "out of memory" if budget is None else f"the budget of {_human(budget)}"
    return BatchSizeResult(
        batch_size=best,
        device=str(dev),
        measure=meter.measure,
        max_memory=budget,
        limit=limit,
        limited_by=reason,
        trials=trials,
        seconds=round(time.perf_counter() - t0, 3),
        recipe=setup.recipe.source or "(mapping)",
    )
