"""Metrics of a pass over data: loss, accuracy and top-k summed on the device, and evaluation.

Shared by the training loop (its running sums, checkpointed mid-epoch) and by ``evaluate``: the
same code sums a validation pass and a training epoch, so the numbers mean the same thing.
"""

from __future__ import annotations

import contextlib
from typing import Any

from torchsmith.training import distributed as dist_

__all__ = ["evaluate_model"]


def _autocast(device: Any, precision: str) -> Any:
    import torch

    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def _to_device(x: Any, device: Any, channels_last: bool) -> Any:
    import torch

    if isinstance(x, torch.Tensor):
        x = x.to(device, non_blocking=True)
        if channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x
    if isinstance(x, (list, tuple)):
        return type(x)(_to_device(v, device, channels_last) for v in x)
    return x


def _topk_list(top_k: list[int], num_outputs: int) -> list[int]:
    ks = sorted({k for k in top_k if k <= num_outputs} | {1})
    return ks


def _new_acc(ks: list[int], device: Any) -> Any:
    import torch

    return torch.zeros(1 + (ks[-1] if ks else 0), device=device, dtype=torch.float64)


_FLUSH_EVERY = 64  # batches whose metrics wait to be summed together (fewer when their scores are big)


class _Sums:
    """One pass's metric sums on the device: ``acc`` = [loss_sum, hits at rank 1, ..., rank max(k)].

    Each op costs a few microseconds of dispatch, most of the loop's fixed cost per step on a tiny
    model, so :meth:`add` only keeps the batch's loss, scores and labels, and :meth:`flush` sums up
    to ``_FLUSH_EVERY`` kept batches at once: one topk (argmax for top-1), compare and sum for the
    hits, integer counts that are exact in any grouping; the loss sum ``+= loss * n`` in batch order,
    so the float64 sum is bit for bit what a per-batch ``add_`` gives, wherever a flush or a
    checkpoint falls. That fold reads the losses on the host, which costs nothing on the CPU; on
    other devices it would be a host sync, so there each loss is added on the device straight away.
    Call :meth:`flush` before reading ``acc``.
    """

    def __init__(self, acc: Any, ks: list[int]):
        import torch

        self.acc, self.ks = acc, ks
        self._loss_sum, self._hit_sums = acc[0], acc[1:]
        self._on_host = acc.device.type == "cpu"
        self._float32 = torch.float32
        self._losses: list = []  # (loss, batch size), waiting (CPU only)
        self._scores: list = []
        self._labels: list = []
        self._waiting = 0
        self._flush_at = _FLUSH_EVERY

    def add(self, loss: Any, scores: Any, y: Any) -> int:
        """Keep one batch; returns its size, which the caller counts on the host."""
        n = y.shape[0]
        if self._on_host and loss.dtype != self._float32:
            # A float64 loss times n is not exact, so only add_ rounds it the same way: from here
            # on (after the batches before it, to keep the order) each loss goes on the device.
            self.flush()
            self._on_host = False
        if self._on_host:
            self._losses.append((loss.detach(), n))
        else:
            self._loss_sum.add_(loss.detach(), alpha=n)
        if self.ks and scores is not None:
            if not self._scores:  # at most about a million scores (4 MB) wait
                self._flush_at = max(1, min(_FLUSH_EVERY, (1 << 20) // max(scores.numel(), 1)))
            self._scores.append(scores.detach())
            self._labels.append(y)
        self._waiting += 1
        if self._waiting >= self._flush_at:
            self.flush()
        return n

    def flush(self) -> Any:
        """Sum the kept batches into ``acc`` and return it."""
        import torch

        if self._losses:
            total = self._loss_sum.item()
            values = torch.stack([loss for loss, _ in self._losses]).tolist()
            for value, (_, n) in zip(values, self._losses):
                total += value * n  # float32 loss times n is exact in float64: one rounding, as add_
            self._loss_sum.fill_(total)
            self._losses.clear()
        if self._scores:
            s, y = torch.cat(self._scores), torch.cat(self._labels)
            k = self.ks[-1]
            top = s.topk(k, dim=1).indices if k > 1 else s.argmax(1, keepdim=True)
            self._hit_sums.add_((top == y.unsqueeze(1)).sum(0))  # labels found at each rank position
            self._scores.clear()
            self._labels.clear()
        self._waiting = 0
        return self.acc


def _summarise(acc_list: list[float], count: float, ks: list[int], prefix: str) -> dict:
    out = {f"{prefix}_loss": acc_list[0] / count if count else float("nan")}
    for k in ks:
        key = f"{prefix}_acc" if k == 1 else f"{prefix}_top{k}"
        out[key] = sum(acc_list[1 : 1 + k]) / count if count else float("nan")
    out[f"{prefix}_samples"] = int(count)
    return out


def _reduce(acc: Any, count: int, ctx: Any) -> tuple[list[float], float]:
    """Sum the sums and the count over ranks (every rank calls this) and bring them to the host."""
    import torch

    both = torch.cat((acc, acc.new_tensor([float(count)])))
    if ctx is not None and ctx.enabled:
        dist_.all_reduce_sum(both, ctx)
    values = both.tolist()
    return values[:-1], values[-1]


def _is_classification(out: Any, y: Any) -> bool:
    import torch

    return (
        isinstance(out, torch.Tensor)
        and isinstance(y, torch.Tensor)
        and out.dim() == 2
        and y.dim() == 1
        and not y.is_floating_point()
    )


def evaluate_model(
    model: Any,
    loader: Any,
    criterion: Any,
    *,
    device: Any,
    precision: str = "fp32",
    top_k: list[int] = (1, 5),
    channels_last: bool = False,
    ctx: Any = None,
) -> dict:
    """Loss, accuracy and top-k of ``model`` over ``loader`` (summed over ranks when ``ctx`` is given)."""
    import torch

    model.eval()
    sums = None
    ks: list[int] = []
    count = 0
    with torch.no_grad():
        for x, y in loader:
            x = _to_device(x, device, channels_last)
            y = _to_device(y, device, False)
            with _autocast(device, precision):
                out = model(x)
            out = out.float() if isinstance(out, torch.Tensor) else out
            loss = criterion(out, y)
            scores = criterion.scores(out) if _is_classification(out, y) else None
            if sums is None:
                ks = _topk_list(list(top_k), scores.shape[1]) if scores is not None else []
                sums = _Sums(_new_acc(ks, device), ks)
            count += sums.add(loss, scores, y)
    acc = sums.flush() if sums is not None else _new_acc(ks, device)
    # Every rank gets here on the same path (no rank-0 branch around a collective).
    values, total = _reduce(acc, count, ctx)
    return _summarise(values, total, ks, "val")
