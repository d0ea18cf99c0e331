"""The checkpoint side of the :class:`~torchsmith.training.loop.Trainer`: what a run's checkpoint
holds, how it is written (inline or by the async writer; one file, or DCP shards) and read back.

A checkpoint is everything a resume needs to continue bit for bit: model, optimizer, scheduler,
grad scaler, every rank's RNG states and running metric sums, the position (epoch, batch, step),
the history (epochs and mid-epoch validations), the best score, the callbacks' states, class
names and the recipe. Files written with it: ``last.pt``, ``best.pt`` (a second name for the same
bytes), ``recipe.yaml`` (with the first checkpoint), ``metrics.jsonl``/``metrics.csv`` (rewritten
whole from the checkpoint's history), then whatever the callbacks asked for (``info.after_write``),
then one fsync of the folder.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path
from typing import Any

from torchsmith._io import atomic_write
from torchsmith.errors import CheckpointError
from torchsmith.training import checkpointing as ckpt_
from torchsmith.training import distributed as dist_
from torchsmith.training.checkpointing import capture_rng, load_checkpoint, restore_rng
from torchsmith.training.hooks import CheckpointInfo

__all__ = ["RunState"]


class RunState:
    """Mixin of :class:`~torchsmith.training.loop.Trainer`: checkpoints out and in."""

    def _finish_interrupted_writes(self) -> None:
        """Complete the renames of a checkpoint write a kill interrupted, remove unfinished temp files.

        See :func:`~torchsmith.training.checkpointing.finish_interrupted_writes`: ``best.pt``,
        ``recipe.yaml`` and the metrics files whose temp files were finished get their names.
        """
        from torchsmith._io import stale_tmp_files

        for line in ckpt_.finish_interrupted_writes(self.out_dir):
            self.log(line)
        # Single-file atomic writes (the metrics rewrite after a resume, the final model, the plot):
        # a temp file of one of those is never known to be whole.
        names = ("last.pt", "best.pt", "metrics.jsonl", "metrics.csv", "recipe.yaml", "curves.png")
        for name in (*names, "model.safetensors"):
            for tmp in stale_tmp_files(self.out_dir / name):
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()
                self.log(f"removed {tmp}, left by an interrupted write")

    def _remove_earlier_run(self) -> None:
        """``overwrite``: delete what an earlier run left in the folder (its files only)."""
        from torchsmith.training.run_folder import run_outputs

        gone = run_outputs(self.out_dir)
        for p in gone:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()
        if gone:
            names = ", ".join(p.name for p in gone)
            self.log(f"overwrite: removed the earlier run's {names} from {self.out_dir}")

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
            "val_steps": json.dumps(self.val_steps),
            "lr_trace": json.dumps(self.lr_trace),
            "lr_stride": self.lr_stride,
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
        """Write ``last.pt`` (and ``best.pt``, the metrics files); every rank calls this.

        The state is taken here, at the step boundary, and shown to the callbacks
        (``on_checkpoint``); the files are written by :attr:`writer`, in this thread or
        (``checkpoint.async``) in its background thread from a CPU snapshot.
        """
        self.writer.wait()  # never two writes at once; a failed write raises here
        dcp = self.ckpt_format == "dcp"
        state = self._state(epoch_done=epoch_done, with_model=not dcp)
        info = CheckpointInfo(
            state=state,
            out_dir=self.out_dir,
            step=self.step,
            epoch=state["epoch"],
            epoch_done=epoch_done,
            best=best,
        )
        self.callbacks("on_checkpoint", self, info)
        state["callbacks"] = self.callbacks.states()  # after on_checkpoint: states include this one
        if dcp:
            return self._save_dcp(info)
        if self.ctx.is_main:  # file writing only; no collective in here
            if self.writer.asynchronous:
                pin = self.ctx.device.type == "cuda"
                state = ckpt_.freeze(state, pin=pin, cache=self._pinned if pin else None)
            files = self._log_files()
            self.writer.submit(lambda: self._write_files(state, best, files, info._after))
        if not self.writer.asynchronous:
            dist_.barrier(self.ctx)

    def _log_files(self) -> dict[str, str]:
        """The metrics files (``logging``) as they are at this checkpoint: rewritten whole each time."""
        from torchsmith.training.loggers import csv_text, jsonl_text, metric_rows

        kinds = self.recipe["logging"]
        rows = metric_rows(self.history, self.val_steps)
        files = {}
        if "jsonl" in kinds:
            files["metrics.jsonl"] = jsonl_text(rows)
        if "csv" in kinds:
            files["metrics.csv"] = csv_text(rows)
        return files

    def _write_log_files(self) -> None:
        """Rewrite the metrics files from the history now held (after a resume)."""
        for name, text in self._log_files().items():
            with atomic_write(self.out_dir / name, "w") as f:
                f.write(text)

    def _write_files(
        self, state: dict | memoryview, best: bool, files: dict[str, str], after: list, cleanup: bool = False
    ) -> None:
        # All in one ckpt_.write_files: each file atomic, their fsyncs side by side and one fsync of
        # the folder after the last rename (two waits for the disk, was one per file plus one).
        # last.pt is renamed first, so a crash between renames leaves the metrics files behind it,
        # never ahead (a resume rewrites them from last.pt's history).
        out: dict[str, ckpt_.FileContent] = {
            "last.pt": state if isinstance(state, memoryview) else lambda tmp: ckpt_._torch_save(state, tmp)
        }
        if not self._recipe_written:
            # The run folder becomes this run's with its first checkpoint, not before: a run
            # refused or failed before that leaves the old run's recipe next to its checkpoints.
            out["recipe.yaml"] = (
                self.recipe.to_yaml() if hasattr(self.recipe, "to_yaml") else json.dumps(self.recipe)
            )
        out.update(files)
        # best.pt: a second name for last.pt's bytes; every write here replaces files by rename,
        # never in place, so the next last.pt cannot change best.pt.
        ckpt_.write_files(self.out_dir, out, links={"best.pt": "last.pt"} if best else None)
        self._recipe_written = True
        for fn in after:  # the callbacks' work on the files (checkpoint retention)
            fn(self.out_dir)
        if cleanup:
            self._remove_old_dcp(state["dcp"])

    def _save_dcp(self, info: CheckpointInfo) -> None:
        """Each rank writes its shard with torch.distributed.checkpoint; then rank 0 writes last.pt."""
        folder = ckpt_.dcp_folder(self.out_dir, self.step)
        model_sd, opt_sd = ckpt_.dcp_state_dicts(self.raw_model, self.optimizer)
        state = info.state
        state["dcp"] = str(folder.relative_to(self.out_dir))
        if self.writer.asynchronous:
            pin = self.ctx.device.type == "cuda"
            cache = self._pinned if pin else None
            model_sd, opt_sd, state = ckpt_.snapshot((model_sd, opt_sd, state), pin=pin, _cache=cache)
            if self.ctx.enabled and self._ckpt_group is None:
                import torch.distributed as dist

                self._ckpt_group = dist.new_group(backend="gloo")  # every rank, same path
        files = self._log_files()
        main, group, best = self.ctx.is_main, self._ckpt_group, info.best

        def write() -> None:
            ckpt_.save_dcp(folder, model_sd, opt_sd, process_group=group)
            if main:  # after every rank's shard and the metadata are on disk
                self._write_files(state, best, files, info._after, cleanup=True)

        self.writer.submit(write)
        if not self.writer.asynchronous:
            dist_.barrier(self.ctx)

    def _remove_old_dcp(self, keep: str) -> None:
        """Delete DCP folders that neither last.pt, best.pt nor a kept checkpoint names (rank 0, after
        last.pt is in place)."""
        names = {keep}
        kept = [self.out_dir / "best.pt"]
        if (self.out_dir / "checkpoints").is_dir():
            kept += sorted((self.out_dir / "checkpoints").glob("*.pt"))
        for path in kept:
            if path.is_file():
                with contextlib.suppress(CheckpointError):
                    names.add(str(load_checkpoint(path).get("dcp")))
        root = self.out_dir / "dcp"
        for d in root.iterdir() if root.is_dir() else ():
            if str(d.relative_to(self.out_dir)) not in names:
                shutil.rmtree(d, ignore_errors=True)

    def close(self) -> None:
        """Wait for the checkpoint write in flight (call before reading the files or exiting)."""
        self.writer.close()  # and end its thread; a later save starts another

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
            ckpt_.restore_dcp(ckpt_.dcp_path(path, state), self.raw_model, self.optimizer)
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
        self.val_steps = json.loads(state.get("val_steps", "[]"))
        self.lr_trace = json.loads(state.get("lr_trace", "[]"))
        self.lr_stride = int(state.get("lr_stride", 1))
        self.callbacks.load_states(state.get("callbacks"))
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


def _diff(a: Any, b: Any, prefix: str = "") -> set[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out: set[str] = set()
        for k in set(a) | set(b):
            out |= _diff(a.get(k), b.get(k), f"{prefix}.{k}" if prefix else k)
        return out
    return set() if a == b else {prefix}
