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
  improves) and every ``checkpoint.every_n_steps`` optimizer steps, all atomic; a resume restarts at
  the recorded batch of the recorded epoch without loading the batches before it.
* Validation at each epoch's end and every ``train.val_every_steps`` steps, on ``eval_model`` (the
  EMA weights under ``train.ema``) when a callback set one.
* Callbacks (:mod:`torchsmith.training.callbacks`) are called at fixed points; a hook no callback
  has costs nothing. The built-in features (EMA, early stopping, retention, logs, ``max_time``,
  the profiler) are callbacks; checkpoints in and out are :mod:`torchsmith.training.run_state`.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from torchsmith.errors import TorchsmithError
from torchsmith.training import checkpointing as ckpt_
from torchsmith.training.callbacks import Callback, Dispatcher, builtin_callbacks
from torchsmith.training.evaluation import (
    _autocast,
    _is_classification,
    _new_acc,
    _reduce,
    _summarise,
    _Sums,
    _to_device,
    _topk_list,
    evaluate_model,
)
from torchsmith.training.plots import _curves_figure, plot_curves  # noqa: F401  (re-exported)
from torchsmith.training.run_state import RunState
from torchsmith.training.setup import RunSetup

__all__ = ["Trainer", "evaluate_model", "plot_curves"]

_LR_POINTS = 2000  # at most twice this many [step, lr] points are kept for the LR panel


class Trainer(RunSetup, RunState):
    """Runs one recipe: holds the model, data, optimizer, the loop's position and its callbacks.

    Built by :func:`torchsmith.training.train`; usable directly for custom drivers::

        t = Trainer(recipe, out_dir, ctx, log=print, callbacks=[MyCallback()])
        t.setup(resume=False)
        t.fit()

    ``callbacks`` run after the recipe's built-in ones
    (:func:`~torchsmith.training.callbacks.builtin_callbacks`).
    """

    def __init__(
        self,
        recipe: dict,
        out_dir: Path,
        ctx: Any,
        log: Callable[[str], None] | None = None,
        callbacks: Iterable[Callback] = (),
    ):
        self.recipe = recipe
        self.out_dir = Path(out_dir)
        self.ctx = ctx
        self.log = log or (lambda s: None)
        self.epoch = 0  # epoch in progress (0-based)
        self.step = 0  # optimizer steps done
        self.batches_done = 0  # micro-batches done in the current epoch
        self.history: list[dict] = []  # one record per epoch
        self.val_steps: list[dict] = []  # one record per train.val_every_steps validation
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.resumed_from: dict | None = None
        self._acc_state: Any = None
        self._count = 0  # samples seen this epoch by this rank
        self._ks: list[int] | None = None
        self.stopped_early = False  # train.max_steps reached
        self.should_stop = False  # a callback asked to stop (trainer.stop)
        self.stop_reason: str | None = None
        self.at_epoch_end = False
        self.eval_model: Any = None  # what validation runs on; None: the trained model
        # The LR each optimizer step used, [step, lr] every lr_stride-th step (thinned to at most
        # _LR_POINTS points as the run grows): the LR panel of curves.png, warmups included.
        self.lr_trace: list[list] = []
        self.lr_stride = 1
        user = list(callbacks)
        for cb in user:
            if not isinstance(cb, Callback):
                from torchsmith.errors import InputError

                raise InputError(
                    f"callbacks: {cb!r} is not a torchsmith.Callback; subclass it and override the hooks"
                )
        self.callbacks = Dispatcher([*builtin_callbacks(recipe), *user])
        c = recipe["checkpoint"]
        fsdp = recipe["distributed"]["strategy"] == "fsdp"
        self.ckpt_format = "dcp" if c["format"] == "dcp" or (c["format"] == "auto" and fsdp) else "pt"
        self.writer = ckpt_.CheckpointWriter(asynchronous=bool(c["async"]))
        self._pinned: dict = {}  # reused host buffers of async snapshots on a GPU
        self._ckpt_group: Any = None  # a process group of its own for DCP's background writes
        self._recipe_written = False

    def stop(self, reason: str) -> None:
        """End the run cleanly at the next step or epoch boundary (with a checkpoint there)."""
        self.should_stop = True
        self.stop_reason = self.stop_reason or reason

    # ------------------------------------------------------------------ the loop
    def fit(self) -> None:
        """Train to the end of the recipe (or until a stop), every checkpoint on disk when it returns."""
        t = self.recipe["train"]
        self._start = time.perf_counter()
        try:
            self.callbacks("on_train_start", self)
            while self.epoch < t["epochs"] and not (self.stopped_early or self.should_stop):
                train_metrics = self._train_epoch()
                if self.should_stop and self.batches_done < self.batches_per_epoch:
                    # Stopped inside the epoch (max_time, a callback): a checkpoint to resume from.
                    self.save(epoch_done=False)
                    break
                self._end_epoch(train_metrics)
            self.close()  # the last write is on disk before anyone reads the files
            if self.stop_reason and self.ctx.is_main:
                self.log(f"stopped: {self.stop_reason}")
            self.callbacks("on_train_end", self)
        except RuntimeError as e:
            from torchsmith.training.determinism import translate_error

            found = translate_error(e, f"in epoch {self.epoch + 1}, after optimizer step {self.step}")
            if found is e:
                raise
            raise found from None  # train.deterministic: the op named, and the ways out
        finally:
            self._teardown_callbacks()

    def _teardown_callbacks(self) -> None:
        for fn in self.callbacks.hooks["teardown"]:
            try:
                fn(self)
            except Exception as e:  # a failing teardown must not hide the run's own error
                self.log(f"warning: callback teardown failed: {type(e).__name__}: {e}")

    def _end_epoch(self, train_metrics: dict) -> None:
        """Validate, record, step an epoch scheduler, call the epoch hooks, checkpoint, move on."""
        t = self.recipe["train"]
        self.at_epoch_end = True
        val_metrics = self._validate()
        record = {
            "epoch": self.epoch + 1,
            "step": self.step,
            **train_metrics,
            **val_metrics,
            "lr": self.optimizer.param_groups[0]["lr"],
            "time": round(time.perf_counter() - self._start, 3),
        }
        self._check_finite(record)
        if self.scheduler is not None and self.recipe["scheduler"]["interval"] == "epoch":
            self._scheduler_step(record)
        record["lr"] = self.optimizer.param_groups[0]["lr"]
        self.history.append(record)
        improved = self._is_best(record)
        if self.ctx.is_main:
            self.log(_format_record(record, t["epochs"]))
        if val_metrics:
            self.callbacks(
                "on_validation_end", self, {"epoch": self.epoch + 1, "step": self.step, **val_metrics}
            )
        self.callbacks("on_epoch_end", self, record)
        self.save(epoch_done=True, best=improved)
        self.at_epoch_end = False
        self.epoch += 1
        self.batches_done = 0
        self._acc_state = None
        self._count = 0

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

    def _record_lr(self, lr: Any) -> None:
        """Note the LR of this step; past ``2 * _LR_POINTS`` points keep every other one."""
        self.lr_trace.append([self.step, float(lr)])
        if len(self.lr_trace) >= 2 * _LR_POINTS:
            self.lr_stride *= 2
            self.lr_trace = [p for p in self.lr_trace if p[0] % self.lr_stride == 0]

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

        if self.eval_model is not None:
            model = self.eval_model
        else:
            # The plain module: DDP's forward would broadcast buffers, a collective, and the ranks'
            # shares of the validation set differ in batch count.
            model = self.raw_model if self.recipe["distributed"]["strategy"] != "fsdp" else self.model
        t = self.recipe["train"]
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

    def _validate_mid_epoch(self) -> None:
        """``train.val_every_steps``: validate now, record it, hand it to the callbacks, train on."""
        metrics = self._validate()
        self.model.train()
        if not metrics:
            return
        record = {"kind": "val_step", "epoch": self.epoch + 1, "step": self.step, **metrics}
        self.val_steps.append(record)
        if self.ctx.is_main:
            parts = [f"step {self.step}"] + [
                f"{k} {v:.4f}" if "loss" in k else f"{k} {100 * v:.2f}%"
                for k, v in metrics.items()
                if k in ("val_loss", "val_acc")
            ]
            self.log("  ".join(parts))
        self.callbacks("on_validation_end", self, {"epoch": self.epoch + 1, "step": self.step, **metrics})

    def _lbfgs_step(self, x: Any, y: Any) -> tuple[Any, Any]:
        """LBFGS re-evaluates the loss several times per step: it gets a closure."""
        holder: dict = {}
        closure = _lbfgs_closure(
            self.model, self.criterion, x, y, self.ctx.device, self.recipe["train"]["precision"], holder
        )
        self.optimizer.step(closure)
        return holder["out"], holder["loss"]

    def _progress_bar(self) -> Any:
        t = self.recipe["train"]
        if not (self.ctx.is_main and t["progress"] and sys.stderr.isatty()):
            return None  # logs and pipes get the epoch lines only
        from tqdm.auto import tqdm

        return tqdm(
            total=self.batches_per_epoch,
            initial=self.batches_done,
            desc=f"epoch {self.epoch + 1}/{t['epochs']}",
            leave=False,
            dynamic_ncols=True,
        )

    def _forward_backward(self) -> Callable[[Any, Any, int], tuple[Any, Any]]:
        """One micro-batch: forward under autocast, float32 loss, backward (scaled under fp16)."""
        import torch

        model, crit, mixer = self.model, self.criterion, self.mixer
        amp = _autocast(self.ctx.device, self.recipe["train"]["precision"])
        scaler = self.scaler if self.scaler.is_enabled() else None
        f32 = torch.float32
        if mixer is not None:
            from torchsmith.training.mixup import soft_target_cross_entropy

        def forward_backward(x: Any, y: Any, group_size: int, lam: float | None = None) -> tuple[Any, Any]:
            with amp:
                out = model(x)
            if isinstance(out, torch.Tensor) and out.dtype is not f32:  # .float() on f32 is still a call
                out = out.float()
            if lam is None:
                loss = crit(out, y)
            else:  # train.mixup: soft targets for the output's classes, the hard y kept for accuracy
                loss = soft_target_cross_entropy(out, mixer.targets(y, out.shape[1], lam))
            scaled = loss / group_size if group_size > 1 else loss
            if scaler is None:
                scaled.backward()
            else:
                scaler.scale(scaled).backward()
            return out, loss

        return forward_backward

    def _optimizer_step(self, params: list, clip: float | None) -> None:
        import torch

        opt = self.optimizer
        scaler = self.scaler if self.scaler.is_enabled() else None
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

    def _train_epoch(self) -> dict:
        r, t, ctx = self.recipe, self.recipe["train"], self.ctx
        device, accum = ctx.device, t["grad_accum"]
        model, crit = self.model, self.criterion
        self.train_ds.set_epoch(self.epoch)
        self.sampler.set_epoch(self.epoch, start=self.batches_done * self.per_rank_bs)
        model.train()
        total = self.batches_per_epoch
        step_every = r["checkpoint"]["every_n_steps"] or t["checkpoint_every_steps"]
        val_every = t["val_every_steps"] if self.val_loader is not None else None
        max_steps = t["max_steps"]
        clip = t["clip_grad_norm"]
        channels_last = t["channels_last"]
        sched_per_step = self.scheduler is not None and r["scheduler"]["interval"] == "step"
        # A warmup counted in steps in front of a per-epoch plateau (training.schedulers).
        step_update = None if sched_per_step else getattr(self.scheduler, "step_update", None)
        group0 = self.optimizer.param_groups[0]
        step_hooks = self.callbacks.has("on_step_end")
        # Set up once per epoch, not per step: the batches come from the loader on the CPU, so on a
        # CPU run without channels_last there is nothing to move; one autocast context (a null one
        # in fp32) entered every step; the GradScaler only when it is on (fp16), otherwise plain
        # backward() and opt.step(), which is what a disabled scaler calls.
        move = device.type != "cpu" or channels_last
        forward_backward = self._forward_backward()
        mixer = self.mixer
        no_sync = getattr(model, "no_sync", None) if ctx.enabled else None
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        ks = self._ks
        sums = None if self._acc_state is None else _Sums(self._acc_state, ks)
        count = self._count
        bar = self._progress_bar()
        log_every = t["log_every"]

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
            lam = None
            if mixer is not None:
                x, lam = mixer(x, epoch=self.epoch, index=b)
            if self.is_lbfgs:
                out, loss = self._lbfgs_step(x, y)
            elif no_sync is not None and not last_in_group:
                with no_sync():  # DDP: no gradient all-reduce until the group's last micro-batch
                    out, loss = forward_backward(x, y, group_size, lam)
            else:
                out, loss = forward_backward(x, y, group_size, lam)
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
            if not last_in_group:
                continue
            if not self.is_lbfgs:  # LBFGS stepped in its closure
                self._optimizer_step(params, clip)
            self.step += 1
            if self.step % self.lr_stride == 0:
                self._record_lr(group0["lr"])
            if sched_per_step:
                self.scheduler.step()
            elif step_update is not None:
                step_update()
            if bar is not None and self.step % log_every == 0:
                # One host sync per log interval, for the progress bar only.
                bar.set_postfix(loss=f"{sums.flush()[0].item() / max(count, 1):.4f}", refresh=False)
            if step_hooks:
                self.callbacks("on_step_end", self, loss.detach())
            if max_steps is not None and self.step >= max_steps:
                self.stopped_early = True
                break
            if val_every and self.step % val_every == 0 and b < total:
                self._validate_mid_epoch()
            if self.should_stop:
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
