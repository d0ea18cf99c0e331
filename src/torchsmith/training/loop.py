"""The training loop: train/eval modes, accumulation, clipping, mixed precision, metrics, checkpoints.

What it does each optimizer step, and why:

* ``model.train()`` for training and ``model.eval()`` + ``torch.no_grad()`` for validation (S19).
* Gradients cleared with ``zero_grad(set_to_none=True)`` after each step; with ``grad_accum: N`` the
  loss of each micro-batch is divided by the group's size and DDP skips its all-reduce
  (``no_sync``) on all but the group's last micro-batch.
* ``loss(output, target)`` in that order (seed 004's loop had them swapped, trap 12), computed in
  float32 even under autocast.
* Mixed precision: bf16 autocast on the CPU or GPU; fp16 autocast with a ``GradScaler`` on GPUs.
* Metrics (loss, accuracy, top-k) are summed **on the device**, up to 64 batches at a time; the host
  reads them once per epoch and once per ``log_every`` steps for the progress bar, never with a
  per-step ``.item()`` (on the CPU, where reading is no sync, the loss sum is folded on the host).
* Checkpoints at the end of each epoch (``last.pt``, and ``best.pt`` when the validation score
  improves) and every ``checkpoint_every_steps`` optimizer steps, all atomic; a resume restarts at
  the recorded batch of the recorded epoch without loading the batches before it.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torchsmith._io import atomic_path, atomic_write, fsync_dir
from torchsmith.errors import CheckpointError, RecipeError, TorchsmithError
from torchsmith.training import checkpointing as ckpt_
from torchsmith.training import distributed as dist_
from torchsmith.training.checkpointing import capture_rng, load_checkpoint, restore_rng, save_checkpoint

__all__ = ["Trainer", "evaluate_model", "plot_curves"]


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


def plot_curves(
    history: list[dict], path: str | Path, *, title: str | None = None, best_epoch: int | None = None
) -> Path | None:
    """Write a PNG of loss, accuracy and learning rate per epoch (matplotlib, Agg) atomically.

    Epoch ticks are integers; ``best_epoch`` (the epoch ``best.pt`` holds) gets a dashed line and a
    star on each curve; ``title`` (the run name) heads the figure.
    """
    if not history:
        return None
    import matplotlib.pyplot as plt

    fig = _curves_figure(history, title=title, best_epoch=best_epoch)
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return path


def _curves_figure(history: list[dict], *, title: str | None, best_epoch: int | None) -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    epochs = [h["epoch"] for h in history]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    panels = (("loss", "loss", axes[0]), ("acc", "accuracy", axes[1]))
    for key, label, ax in panels:
        for split in ("train", "val"):
            values = [h.get(f"{split}_{key}") for h in history]
            if any(v is not None for v in values):
                ys = [math.nan if v is None else v for v in values]
                (line,) = ax.plot(epochs, ys, marker="o", label=split)
                if best_epoch in epochs:
                    y = ys[epochs.index(best_epoch)]
                    ax.plot([best_epoch], [y], marker="*", markersize=14, color=line.get_color())
        ax.set_ylabel(label)
    lr = [h.get("lr") for h in history]
    if any(v is not None for v in lr):
        axes[2].plot(epochs, [math.nan if v is None else v for v in lr], marker="o", label="lr (epoch end)")
        if all(v is None or v > 0 for v in lr):
            axes[2].set_yscale("log")
    axes[2].set_ylabel("learning rate")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
        if best_epoch in epochs:
            ax.axvline(
                best_epoch, color="0.5", linestyle="--", linewidth=1, label=f"best (epoch {best_epoch})"
            )
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


class Trainer:
    """Runs one recipe: holds the model, data, optimizer and the loop's position.

    Built by :func:`torchsmith.training.train`; usable directly for custom drivers::

        t = Trainer(recipe, out_dir, ctx, log=print)
        t.setup(resume=False)
        t.fit()
    """

    def __init__(self, recipe: dict, out_dir: Path, ctx: Any, log: Callable[[str], None] | None = None):
        self.recipe = recipe
        self.out_dir = Path(out_dir)
        self.ctx = ctx
        self.log = log or (lambda s: None)
        self.epoch = 0  # epoch in progress (0-based)
        self.step = 0  # optimizer steps done
        self.batches_done = 0  # micro-batches done in the current epoch
        self.history: list[dict] = []
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.resumed_from: dict | None = None
        self._acc_state: Any = None
        self._count = 0  # samples seen this epoch by this rank
        self._ks: list[int] | None = None
        self.stopped_early = False
        c = recipe.get("checkpoint") or {}
        fmt = c.get("format", "auto")
        fsdp = recipe["distributed"]["strategy"] == "fsdp"
        self.ckpt_format = "dcp" if fmt == "dcp" or (fmt == "auto" and fsdp) else "pt"
        self.writer = ckpt_.CheckpointWriter(asynchronous=bool(c.get("async", False)))
        self._pinned: dict = {}  # reused host buffers of async snapshots on a GPU
        self._ckpt_group: Any = None  # a process group of its own for DCP's background writes
        self._recipe_written = False

    # ------------------------------------------------------------------ set-up
    def setup(self, resume: bool | str = False) -> None:
        import random

        import numpy as np
        import torch
        from torch.utils.data import DataLoader

        from torchsmith.training.build import build_model, build_param_groups
        from torchsmith.training.data import ResumableSampler, build_datasets
        from torchsmith.training.losses import build_loss
        from torchsmith.training.optimizers import build_optimizer, build_scheduler

        r, ctx, t = self.recipe, self.ctx, self.recipe["train"]
        device = ctx.device
        if t["threads"]:
            torch.set_num_threads(t["threads"])
        if t["precision"] == "fp16" and device.type != "cuda":
            raise RecipeError("recipe field 'train.precision': fp16 needs a CUDA device; use bf16 on the CPU")
        seed = r["seed"]
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)

        self.raw_model = build_model(r, log=self.log if ctx.is_main else None).to(device)
        if t["channels_last"]:
            self.raw_model = self.raw_model.to(memory_format=torch.channels_last)

        self.train_ds, self.val_ds = build_datasets(r)
        if ctx.is_main:
            skipped = len(self.train_ds.skipped) + (len(self.val_ds.skipped) if self.val_ds else 0)
            self.log(
                f"data: {r['data']['kind']}, {len(self.train_ds)} training / "
                f"{len(self.val_ds) if self.val_ds else 0} validation samples, "
                f"{len(self.train_ds.classes)} classes"
                + (f", {skipped} bad samples skipped" if skipped else "")
            )
        bs = r["data"]["batch_size"]
        if bs % ctx.world_size:
            raise RecipeError(
                f"recipe field 'data.batch_size': {bs} is the global batch and must divide evenly over "
                f"{ctx.world_size} processes"
            )
        self.per_rank_bs = bs // ctx.world_size
        self._check_labels()
        self.sampler = ResumableSampler(
            len(self.train_ds), shuffle=True, seed=seed, rank=ctx.rank, world_size=ctx.world_size
        )
        nw = r["data"]["num_workers"]
        pin = device.type == "cuda"
        # A private generator: creating the loader's iterator must not draw from the global RNG,
        # or a resumed run would be one draw out of step with the original.
        self.train_loader = DataLoader(
            self.train_ds,
            batch_size=self.per_rank_bs,
            sampler=self.sampler,
            num_workers=nw,
            drop_last=r["data"]["drop_last"],
            pin_memory=pin,
            generator=torch.Generator().manual_seed(seed),
        )
        self.val_loader = None
        if self.val_ds is not None and len(self.val_ds):
            ebs = r["data"]["eval_batch_size"] or self.per_rank_bs
            vs = ResumableSampler(
                len(self.val_ds), shuffle=False, rank=ctx.rank, world_size=ctx.world_size, pad=False
            )
            self.val_loader = DataLoader(
                self.val_ds,
                batch_size=ebs,
                sampler=vs,
                num_workers=nw,
                pin_memory=pin,
                generator=torch.Generator().manual_seed(seed),
            )
        self.batches_per_epoch = len(self.train_loader)
        if self.batches_per_epoch == 0:
            raise RecipeError(
                f"recipe field 'data.batch_size': {bs} is larger than the {len(self.train_ds)} training "
                "samples with drop_last; lower it"
            )
        accum = t["grad_accum"]
        self.steps_per_epoch = -(-self.batches_per_epoch // accum)

        self.criterion = build_loss(r["loss"]["name"], r["loss"]["args"], r["loss"]["adapter"]).to(device)
        if (
            ctx.enabled
            and r["distributed"]["check_unused_parameters"]
            and not r["distributed"]["find_unused_parameters"]
        ):
            self._check_unused()
        if ctx.enabled and ctx.rank > 0:
            torch.manual_seed(seed + ctx.rank)  # dropout masks differ per rank
        # Wrap before building the optimizer: FSDP replaces the parameters with sharded ones.
        self.model = dist_.wrap_model(self.raw_model, ctx, r)
        self.optimizer = build_optimizer(
            r["optimizer"]["name"],
            build_param_groups(self.raw_model, r),
            lr=r["optimizer"]["lr"],
            args=r["optimizer"]["args"],
            model=self.raw_model,
        )
        self.is_lbfgs = r["optimizer"]["name"] == "LBFGS"
        self.scheduler = None
        if r["scheduler"]["name"]:
            self.scheduler = build_scheduler(
                r["scheduler"]["name"],
                self.optimizer,
                r["scheduler"]["args"],
                interval=r["scheduler"]["interval"],
                epochs=t["epochs"],
                steps_per_epoch=self.steps_per_epoch,
            )
        self.scaler = torch.amp.GradScaler(device.type, enabled=t["precision"] == "fp16")

        if t["compile"]:
            self.model = torch.compile(self.model)

        ckpt = self.out_dir / "last.pt"
        if resume:
            path = Path(resume) if isinstance(resume, (str, Path)) else ckpt
            if not path.is_file():
                raise CheckpointError(
                    f"cannot resume: no checkpoint {path} (start without --resume, "
                    "or pass the run's --out folder)"
                )
            if ctx.is_main:
                self._remove_stale_tmp_files()
            self._load(path)
        elif ckpt.exists() and ctx.is_main:
            self.log(f"note: {ckpt} exists and will be replaced (use --resume to continue that run)")

    def _remove_stale_tmp_files(self) -> None:
        """Delete what a kill during an atomic write of this run's files left (torchsmith's own names)."""
        from torchsmith._io import stale_tmp_files

        names = ("last.pt", "best.pt", "metrics.jsonl", "recipe.yaml", "curves.png", "model.safetensors")
        for name in names:
            for tmp in stale_tmp_files(self.out_dir / name):
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()
                self.log(f"removed {tmp}, left by an interrupted write")

    def _check_labels(self) -> None:
        """Refuse labels the model has no output for, now rather than as an IndexError at step one."""
        import torch
        from torch.utils.data import default_collate

        from torchsmith.training.data import check_labels

        if not len(self.train_ds):
            return
        dev, t = self.ctx.device, self.recipe["train"]
        # One sample through the model in eval mode, on a forked RNG: nothing the run draws moves.
        with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []), torch.no_grad():
            x, y = default_collate([self.train_ds[0]])
            was_training = self.raw_model.training
            self.raw_model.eval()
            try:
                with _autocast(dev, t["precision"]):
                    out = self.raw_model(_to_device(x, dev, t["channels_last"]))
            finally:
                self.raw_model.train(was_training)
        if not _is_classification(out, y):
            return
        check_labels(self.train_ds, out.shape[1], self.recipe["data"], "training")
        if self.val_ds is not None:
            check_labels(self.val_ds, out.shape[1], self.recipe["data"], "validation")

    def _check_unused(self) -> None:
        """Name parameters that get no gradient, on every rank, before DDP would trip over them."""
        import torch

        first = [self.train_ds[i] for i in list(iter(self.sampler))[: self.per_rank_bs]]
        x, y = torch.utils.data.default_collate(first)
        dev, t = self.ctx.device, self.recipe["train"]

        def run_step() -> None:
            self.raw_model.train()
            xx = _to_device(x, dev, t["channels_last"])
            with _autocast(dev, t["precision"]):
                out = self.raw_model(xx)
            self.criterion(out.float(), _to_device(y, dev, False)).backward()

        names = dist_.unused_parameters(self.raw_model, run_step)
        every = dist_.gather_objects(names, self.ctx)  # all ranks, same path
        union = sorted({n for lst in every for n in lst})
        if union:
            raise RecipeError(
                f"recipe: {len(union)} trainable parameter(s) got no gradient at step one, which "
                f"DistributedDataParallel cannot handle: {', '.join(union[:12])}"
                + (" ..." if len(union) > 12 else "")
                + "; freeze them (recipe field 'freeze') or set distributed.find_unused_parameters: true"
            )

    # ------------------------------------------------------------------ checkpoints
    def _model_state(self) -> tuple[dict, dict]:
        if self.ctx.enabled and self.recipe["distributed"]["strategy"] == "fsdp":
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                get_model_state_dict,
                get_optimizer_state_dict,
            )

            opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
            return (
                get_model_state_dict(self.raw_model, options=opts),
                get_optimizer_state_dict(self.raw_model, self.optimizer, options=opts),
            )
        return self.raw_model.state_dict(), self.optimizer.state_dict()

    def _state(self, *, epoch_done: bool, with_model: bool = True) -> dict:
        """The checkpoint dict. Every rank must call this (it gathers per-rank RNG and sums)."""
        import torch

        # An epoch's sums belong to it: a resume at the next epoch starts from zero.
        acc = None if epoch_done or self._acc_state is None else self._acc_state.detach().cpu()
        count = 0 if epoch_done else self._count
        per_rank = {"rng": capture_rng(self.ctx.device), "acc": acc, "count": count}
        ranks = dist_.gather_objects(per_rank, self.ctx)
        model_sd, opt_sd = self._model_state() if with_model else (None, None)
        state = {
            "epoch": self.epoch + 1 if epoch_done else self.epoch,
            "batches_done": 0 if epoch_done else self.batches_done,
            "step": self.step,
            "world_size": self.ctx.world_size,
            "model": model_sd,
            "optimizer": opt_sd,
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self.scaler.state_dict(),
            "ranks": ranks,
            "ks": self._ks,
            "history": json.dumps(self.history),
            "best": self.best,
            "best_epoch": self.best_epoch,
            "classes": list(self.train_ds.classes),
            "recipe": json.dumps(self.recipe),
            "torch_version": str(torch.__version__),
        }
        if not with_model:
            del state["model"], state["optimizer"]
        return state

    def save(self, *, epoch_done: bool, best: bool = False) -> None:
        """Write ``last.pt`` (and ``best.pt``, ``metrics.jsonl``); every rank calls this.

        The state is taken here, at the step boundary; the files are written by :attr:`writer`, in
        this thread or (``checkpoint.async``) in its background thread from a CPU snapshot.
        """
        self.writer.wait()  # never two writes at once; a failed write raises here
        if self.ckpt_format == "dcp":
            return self._save_dcp(epoch_done=epoch_done, best=best)
        state = self._state(epoch_done=epoch_done)
        if self.ctx.is_main:  # file writing only; no collective in here
            if self.writer.asynchronous:
                pin = self.ctx.device.type == "cuda"
                state = ckpt_.snapshot(state, pin=pin, _cache=self._pinned if pin else None)
            metrics = "".join(json.dumps(h) + "\n" for h in self.history)
            self.writer.submit(lambda: self._write_files(state, best, metrics))
        if not self.writer.asynchronous:
            dist_.barrier(self.ctx)

    def _write_files(self, state: dict, best: bool, metrics: str, cleanup: bool = False) -> None:
        # Several renames, one fsync of the folder after the last (each file's bytes are fsynced first).
        last = save_checkpoint(self.out_dir / "last.pt", state, sync_folder=False)
        if not self._recipe_written:
            # The run folder becomes this run's with its first checkpoint, not before: a run
            # refused or failed before that leaves the old run's recipe next to its checkpoints.
            text = self.recipe.to_yaml() if hasattr(self.recipe, "to_yaml") else json.dumps(self.recipe)
            with atomic_write(self.out_dir / "recipe.yaml", "w", sync_folder=False) as f:
                f.write(text)
            self._recipe_written = True
        if best:
            with atomic_path(self.out_dir / "best.pt", sync_folder=False) as tmp:
                # A second name for the same bytes: every write here replaces files by rename,
                # never in place, so the next last.pt cannot change best.pt.
                try:
                    os.link(last, tmp)
                except OSError:  # a file system without hard links
                    shutil.copyfile(last, tmp)
        with atomic_write(self.out_dir / "metrics.jsonl", "w", sync_folder=False) as f:
            f.write(metrics)
        fsync_dir(self.out_dir)
        if cleanup:
            self._remove_old_dcp(state["dcp"])

    def _save_dcp(self, *, epoch_done: bool, best: bool) -> None:
        """Each rank writes its shard with torch.distributed.checkpoint; then rank 0 writes last.pt."""
        folder = ckpt_.dcp_folder(self.out_dir, self.step)
        model_sd, opt_sd = ckpt_.dcp_state_dicts(self.raw_model, self.optimizer)
        state = self._state(epoch_done=epoch_done, with_model=False)
        state["dcp"] = str(folder.relative_to(self.out_dir))
        if self.writer.asynchronous:
            pin = self.ctx.device.type == "cuda"
            cache = self._pinned if pin else None
            model_sd, opt_sd = ckpt_.snapshot((model_sd, opt_sd), pin=pin, _cache=cache)
            if self.ctx.enabled and self._ckpt_group is None:
                import torch.distributed as dist

                self._ckpt_group = dist.new_group(backend="gloo")  # every rank, same path
        metrics = "".join(json.dumps(h) + "\n" for h in self.history)
        main, group = self.ctx.is_main, self._ckpt_group

        def write() -> None:
            ckpt_.save_dcp(folder, model_sd, opt_sd, process_group=group)
            if main:  # after every rank's shard and the metadata are on disk
                self._write_files(state, best, metrics, cleanup=True)

        self.writer.submit(write)
        if not self.writer.asynchronous:
            dist_.barrier(self.ctx)

    def _remove_old_dcp(self, keep: str) -> None:
        """Delete DCP folders neither last.pt nor best.pt names (rank 0, after last.pt is in place)."""
        names = {keep}
        best = self.out_dir / "best.pt"
        if best.is_file():
            with contextlib.suppress(CheckpointError):
                names.add(str(load_checkpoint(best).get("dcp")))
        root = self.out_dir / "dcp"
        for d in root.iterdir() if root.is_dir() else ():
            if str(d.relative_to(self.out_dir)) not in names:
                shutil.rmtree(d, ignore_errors=True)

    def close(self) -> None:
        """Wait for the checkpoint write in flight (call before reading the files or exiting)."""
        self.writer.wait()

    def _load(self, path: Path) -> None:
        state = load_checkpoint(path, map_location=self.ctx.device)
        resharded = state["world_size"] != self.ctx.world_size
        if resharded and ("dcp" not in state or state["batches_done"]):
            raise CheckpointError(
                f"checkpoint {path}: written by {state['world_size']} process(es), resumed with "
                f"{self.ctx.world_size}; a different number needs a DCP checkpoint (checkpoint.format: "
                "dcp) taken at the end of an epoch"
                + (f", and this one is mid-epoch (batch {state['batches_done']})" if "dcp" in state else "")
            )
        if "dcp" in state:
            ckpt_.restore_dcp(path.parent / state["dcp"], self.raw_model, self.optimizer)
        elif self.ctx.enabled and self.recipe["distributed"]["strategy"] == "fsdp":
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                set_model_state_dict,
                set_optimizer_state_dict,
            )

            opts = StateDictOptions(full_state_dict=True)
            set_model_state_dict(self.raw_model, state["model"], options=opts)
            set_optimizer_state_dict(self.raw_model, self.optimizer, state["optimizer"], options=opts)
        else:
            self.raw_model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state["scheduler"] is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch = state["epoch"]
        self.step = state["step"]
        self.batches_done = state["batches_done"]
        self.history = json.loads(state["history"])
        self.best, self.best_epoch = state["best"], state["best_epoch"]
        self._ks = state["ks"]
        # Another world size (DCP) resumes at an epoch boundary: ranks that existed get their RNG back,
        # new ranks keep their per-rank seeding; the run is then not bit-identical to an unbroken one.
        ranks = state["ranks"]
        mine = ranks[self.ctx.rank] if self.ctx.rank < len(ranks) else {"rng": None, "acc": None, "count": 0}
        if mine["rng"] is not None:
            restore_rng(mine["rng"], self.ctx.device)
        self._acc_state = None if mine["acc"] is None else mine["acc"].to(self.ctx.device)
        self._count = mine["count"]
        old = json.loads(state["recipe"])
        changed = sorted(_diff(old, json.loads(json.dumps(self.recipe))))
        self.resumed_from = {
            "checkpoint": str(path),
            "epoch": self.epoch,
            "step": self.step,
            "batches_done": self.batches_done,
            "world_size": state["world_size"],
        }
        if self.ctx.is_main:
            moved = f" (resharded from {state['world_size']} to {self.ctx.world_size} processes)"
            self.log(
                f"resumed from {path}: epoch {self.epoch + 1}, batch {self.batches_done}, step {self.step}"
                + (moved if resharded else "")
                + (f" (recipe fields changed since: {', '.join(changed)})" if changed else "")
            )

    # ------------------------------------------------------------------ the loop
    def fit(self) -> None:
        t = self.recipe["train"]
        start = time.perf_counter()
        while self.epoch < t["epochs"] and not self.stopped_early:
            train_metrics = self._train_epoch()
            val_metrics = self._validate()
            record = {
                "epoch": self.epoch + 1,
                "step": self.step,
                **train_metrics,
                **val_metrics,
                "lr": self.optimizer.param_groups[0]["lr"],
                "time": round(time.perf_counter() - start, 3),
            }
            self._check_finite(record)
            if self.scheduler is not None and self.recipe["scheduler"]["interval"] == "epoch":
                self._scheduler_step(record)
            record["lr"] = self.optimizer.param_groups[0]["lr"]
            self.history.append(record)
            improved = self._is_best(record)
            if self.ctx.is_main:
                self.log(_format_record(record, t["epochs"]))
            self.save(epoch_done=True, best=improved)
            self.epoch += 1
            self.batches_done = 0
            self._acc_state = None
            self._count = 0
        self.close()  # the last write is on disk before anyone reads the files

    def _check_finite(self, record: dict) -> None:
        # Values are already reduced over ranks, so every rank raises together.
        loss = record.get("train_loss")
        if loss is not None and not math.isfinite(loss):
            raise TorchsmithError(
                f"training diverged: the loss of epoch {record['epoch']} is {loss} (try a lower "
                "optimizer.lr, train.clip_grad_norm, or fp32 precision)"
            )

    def _is_best(self, record: dict) -> bool:
        key = self.recipe["train"]["best_metric"]
        value = record.get(key)
        if value is None:
            key, value = "train_loss", record.get("train_loss")
        if value is None or not math.isfinite(value):
            return False
        better = self.best is None or (value < self.best if key.endswith("loss") else value > self.best)
        if better:
            self.best, self.best_epoch = value, record["epoch"]
        return better

    def _scheduler_step(self, record: dict) -> None:
        from torch.optim.lr_scheduler import ReduceLROnPlateau

        if isinstance(self.scheduler, ReduceLROnPlateau):
            self.scheduler.step(record.get("val_loss", record["train_loss"]))
        else:
            self.scheduler.step()

    def _validate(self) -> dict:
        if self.val_loader is None:
            return {}
        import torch

        model = self.raw_model if self.recipe["distributed"]["strategy"] != "fsdp" else self.model
        t = self.recipe["train"]
        # The plain module: DDP's forward would broadcast buffers, a collective, and the ranks' shares
        # of the validation set differ in batch count.
        with torch.no_grad():
            return evaluate_model(
                model,
                self.val_loader,
                self.criterion,
                device=self.ctx.device,
                precision=t["precision"],
                top_k=t["top_k"],
                channels_last=t["channels_last"],
                ctx=self.ctx,
            )

    def _lbfgs_step(self, x: Any, y: Any) -> tuple[Any, Any]:
        """LBFGS re-evaluates the loss several times per step: it gets a closure."""
        holder: dict = {}
        closure = _lbfgs_closure(
            self.model, self.criterion, x, y, self.ctx.device, self.recipe["train"]["precision"], holder
        )
        self.optimizer.step(closure)
        return holder["out"], holder["loss"]

    def _train_epoch(self) -> dict:
        import torch
        from tqdm.auto import tqdm

        r, t, ctx = self.recipe, self.recipe["train"], self.ctx
        device, accum = ctx.device, t["grad_accum"]
        model, opt, crit = self.model, self.optimizer, self.criterion
        self.train_ds.set_epoch(self.epoch)
        self.sampler.set_epoch(self.epoch, start=self.batches_done * self.per_rank_bs)
        model.train()
        total = self.batches_per_epoch
        step_every = t["checkpoint_every_steps"]
        max_steps = t["max_steps"]
        clip = t["clip_grad_norm"]
        channels_last = t["channels_last"]
        sched_per_step = self.scheduler is not None and r["scheduler"]["interval"] == "step"
        # Set up once per epoch, not per step: the batches come from the loader on the CPU, so on a
        # CPU run without channels_last there is nothing to move; one autocast context (a null one
        # in fp32) entered every step; the GradScaler only when it is on (fp16), otherwise plain
        # backward() and opt.step(), which is what a disabled scaler calls.
        move = device.type != "cpu" or channels_last
        amp = _autocast(device, t["precision"])
        scaler = self.scaler if self.scaler.is_enabled() else None
        no_sync = getattr(model, "no_sync", None) if ctx.enabled else None
        params = [p for g in opt.param_groups for p in g["params"]]
        ks = self._ks
        sums = None if self._acc_state is None else _Sums(self._acc_state, ks)
        count = self._count
        bar = None
        if ctx.is_main and t["progress"] and sys.stderr.isatty():  # logs and pipes get the epoch lines only
            bar = tqdm(
                total=total,
                initial=self.batches_done,
                desc=f"epoch {self.epoch + 1}/{t['epochs']}",
                leave=False,
                dynamic_ncols=True,
            )
        log_every = t["log_every"]

        def forward_backward(x: Any, y: Any, group_size: int) -> tuple[Any, Any]:
            with amp:
                out = model(x)
            out = out.float() if isinstance(out, torch.Tensor) else out
            loss = crit(out, y)
            scaled = loss / group_size if group_size > 1 else loss
            if scaler is None:
                scaled.backward()
            else:
                scaler.scale(scaled).backward()
            return out, loss

        b = self.batches_done
        for x, y in self.train_loader:
            if b >= total:  # pragma: no cover - defensive; the sampler length matches
                break
            if move:
                x = _to_device(x, device, channels_last)
                y = _to_device(y, device, False)
            group_start = (b // accum) * accum
            group_size = min(accum, total - group_start)
            last_in_group = b == group_start + group_size - 1
            if self.is_lbfgs:
                out, loss = self._lbfgs_step(x, y)
            elif no_sync is not None and not last_in_group:
                with no_sync():  # DDP: no gradient all-reduce until the group's last micro-batch
                    out, loss = forward_backward(x, y, group_size)
            else:
                out, loss = forward_backward(x, y, group_size)
            if sums is None:
                classify = _is_classification(out, y)
                scores = crit.scores(out) if classify else None
                if ks is None:
                    ks = _topk_list(t["top_k"], scores.shape[1]) if scores is not None else []
                sums = _Sums(_new_acc(ks, device), ks)
            else:
                scores = crit.scores(out) if ks else None
            count += sums.add(loss, scores, y)
            b += 1
            self.batches_done = b
            if bar is not None:
                bar.update(1)
            if last_in_group:
                if not self.is_lbfgs:  # LBFGS stepped in its closure
                    if clip is not None:
                        if scaler is not None:
                            scaler.unscale_(opt)
                        torch.nn.utils.clip_grad_norm_(params, clip)
                    if scaler is None:
                        opt.step()
                    else:
                        scaler.step(opt)  # skips the step when the fp16 gradients overflowed
                        scaler.update()
                    opt.zero_grad(set_to_none=True)
                self.step += 1
                if sched_per_step:
                    self.scheduler.step()
                if bar is not None and self.step % log_every == 0:
                    # One host sync per log interval, for the progress bar only.
                    bar.set_postfix(loss=f"{sums.flush()[0].item() / max(count, 1):.4f}", refresh=False)
                if max_steps is not None and self.step >= max_steps:
                    self.stopped_early = True
                    break
                if step_every and self.step % step_every == 0 and b < total:
                    self._acc_state, self._ks, self._count = sums.flush(), ks, count
                    self.save(epoch_done=False)
        if bar is not None:
            bar.close()
        acc = sums.flush() if sums is not None else None
        self._acc_state, self._ks, self._count = acc, ks, count
        if acc is None:
            acc, ks = _new_acc([], device), []
        values, total = _reduce(acc, count, ctx)  # every rank, same path
        return _summarise(values, total, ks or [], "train")


def _lbfgs_closure(model: Any, crit: Any, x: Any, y: Any, device: Any, precision: str, holder: dict) -> Any:
    def closure() -> Any:
        model.zero_grad(set_to_none=True)
        with _autocast(device, precision):
            o = model(x)
        o = o.float()
        lo = crit(o, y)
        lo.backward()
        holder.setdefault("out", o.detach())  # the first evaluation: the loss before the step
        holder.setdefault("loss", lo.detach())
        return lo

    return closure


def _format_record(rec: dict, epochs: int) -> str:
    parts = [f"epoch {rec['epoch']}/{epochs}", f"step {rec['step']}"]
    for key in ("train_loss", "train_acc", "val_loss", "val_acc", "val_top5"):
        if key in rec:
            v = rec[key]
            parts.append(f"{key} {v:.4f}" if "loss" in key else f"{key} {100 * v:.2f}%")
    parts.append(f"lr {rec['lr']:.3g}")
    parts.append(f"{rec['time']:.1f}s")
    return "  ".join(parts)


def _diff(a: Any, b: Any, prefix: str = "") -> set[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out: set[str] = set()
        for k in set(a) | set(b):
            out |= _diff(a.get(k), b.get(k), f"{prefix}.{k}" if prefix else k)
        return out
    return set() if a == b else {prefix}
