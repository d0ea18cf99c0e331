"""The set-up side of the :class:`~torchsmith.training.loop.Trainer`: seed, data, model, loaders,
loss/optimizer/scheduler, then resume or start (a mixin, as :mod:`~torchsmith.training.run_state` is
for checkpoints), so the loop module holds the loop.
"""

from __future__ import annotations

from pathlib import Path

from torchsmith.errors import CheckpointError, RecipeError
from torchsmith.training import distributed as dist_
from torchsmith.training.evaluation import _autocast, _is_classification, _to_device

__all__ = ["RunSetup"]


class RunSetup:
    """Mixin of :class:`~torchsmith.training.loop.Trainer`: everything before the first step."""

    def setup(self, resume: bool | str = False, overwrite: bool = False) -> None:
        """Seed, build data, model, loaders, optimizer; then resume from ``resume`` (a path or True).

        ``overwrite``: a fresh start removes the files an earlier run left in ``out_dir`` (only
        after everything above was built, so a recipe that fails to set up removes nothing).
        """
        self._seed()
        self._setup_data()
        self._setup_model(weights=not resume)
        self._setup_loaders()
        self._setup_optimization()
        self._resume_or_start(resume, overwrite)

    def _seed(self) -> None:
        import random

        import numpy as np
        import torch

        t = self.recipe["train"]
        if t["threads"]:
            torch.set_num_threads(t["threads"])
        if t["precision"] == "fp16" and self.ctx.device.type != "cuda":
            raise RecipeError("recipe field 'train.precision': fp16 needs a CUDA device; use bf16 on the CPU")
        seed = self.recipe["seed"]
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)

    def _setup_data(self) -> None:
        from torchsmith.training.data import build_datasets

        r, ctx = self.recipe, self.ctx
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

    def _setup_model(self, weights: bool = True) -> None:
        """Build the recipe's model; a resume (``weights=False``) reads no pretrained file: the
        checkpoint replaces every tensor (see :func:`torchsmith.hub.weights_off`)."""
        import torch

        from torchsmith.training.build import build_model, resolve_data_fields

        log = self.log if self.ctx.is_main else None
        resolve_data_fields(self.recipe, self.train_ds, log=log)  # num_classes/in_features: auto
        self.raw_model = build_model(self.recipe, log=log, weights=weights).to(self.ctx.device)
        if self.recipe["train"]["channels_last"]:
            self.raw_model = self.raw_model.to(memory_format=torch.channels_last)
        self._check_labels()

    def _setup_loaders(self) -> None:
        import torch
        from torch.utils.data import DataLoader

        from torchsmith.training.data import ResumableSampler
        from torchsmith.training.determinism import worker_init

        r, ctx, seed = self.recipe, self.ctx, self.recipe["seed"]
        init_fn = worker_init(r)  # train.deterministic: workers seeded from (seed, epoch, worker)
        self.sampler = ResumableSampler(
            len(self.train_ds), shuffle=True, seed=seed, rank=ctx.rank, world_size=ctx.world_size
        )
        nw = r["data"]["num_workers"]
        pin = ctx.device.type == "cuda"
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
            worker_init_fn=init_fn,
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
                worker_init_fn=init_fn,
            )
        self.batches_per_epoch = len(self.train_loader)
        if self.batches_per_epoch == 0:
            raise RecipeError(
                f"recipe field 'data.batch_size': {r['data']['batch_size']} is larger than the "
                f"{len(self.train_ds)} training samples with drop_last; lower it"
            )
        self.steps_per_epoch = -(-self.batches_per_epoch // r["train"]["grad_accum"])

    def _setup_optimization(self) -> None:
        import torch

        from torchsmith.training.build import build_param_groups
        from torchsmith.training.losses import build_loss
        from torchsmith.training.optimizers import build_optimizer
        from torchsmith.training.schedulers import build_schedule

        r, ctx, t = self.recipe, self.ctx, self.recipe["train"]
        device = ctx.device
        self.criterion = build_loss(r["loss"]["name"], r["loss"]["args"], r["loss"]["adapter"]).to(device)
        if (
            ctx.enabled
            and r["distributed"]["check_unused_parameters"]
            and not r["distributed"]["find_unused_parameters"]
        ):
            self._check_unused()
        if ctx.enabled and ctx.rank > 0:
            torch.manual_seed(r["seed"] + ctx.rank)  # dropout masks differ per rank
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
        # A warmup in front of any scheduler (training.schedulers); None without name and warmup.
        self.scheduler = build_schedule(
            r["scheduler"],
            self.optimizer,
            epochs=t["epochs"],
            steps_per_epoch=self.steps_per_epoch,
            optimizer_lr=r["optimizer"]["lr"],
        )
        self.mixer = None
        if t.get("mixup"):
            from torchsmith.training.mixup import BatchMixer

            self.mixer = BatchMixer(**t["mixup"], seed=r["seed"], rank=ctx.rank)
        self.scaler = torch.amp.GradScaler(device.type, enabled=t["precision"] == "fp16")
        if t["compile"]:
            self.model = torch.compile(self.model)

    def _resume_or_start(self, resume: bool | str, overwrite: bool = False) -> None:
        ckpt = self.out_dir / "last.pt"
        if resume:
            path = Path(resume) if isinstance(resume, (str, Path)) else ckpt
            if not path.is_file():
                raise CheckpointError(
                    f"cannot resume: no checkpoint {path} (start without --resume, "
                    "or pass the run's --out folder)"
                )
            if self.ctx.is_main:
                self._finish_interrupted_writes()
            self._load(path)
            if self.ctx.is_main:
                # A kill between last.pt's rename and theirs leaves them a checkpoint behind, and a
                # resume of a finished run writes no checkpoint that would catch them up.
                self._write_log_files()
        elif overwrite and self.ctx.is_main:
            self._remove_earlier_run()
        dist_.barrier(self.ctx)

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
            except (RuntimeError, ValueError, IndexError, TypeError) as e:
                from torchsmith.training.determinism import translate_error

                if (found := translate_error(e, "in the model's forward")) is not e:
                    raise found from None  # train.deterministic met an op without a deterministic form
                # The data and the model disagree (channels, image size, in_features): say so now, as
                # a recipe error, not as a matrix-shape traceback at the first step.
                first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
                d = self.recipe["data"]
                raise RecipeError(
                    f"recipe field 'model': a training sample of shape {tuple(x.shape)} (data.channels "
                    f"{d['channels']}, data.image_size {d['image_size']}) does not go through the model: "
                    f"{type(e).__name__}: {first}; make the model's input sizes match the data (e.g. "
                    "model.kwargs.in_features: auto, in_channels: auto) or change data.channels/image_size"
                ) from None
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
