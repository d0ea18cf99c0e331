"""``train``, ``evaluate`` and ``predict``: the library calls behind the CLI commands.

>>> import torchsmith
>>> result = torchsmith.train(None, overrides=["train.epochs=1"])      # doctest: +SKIP
>>> result.val_acc, result.reloaded_acc                               # doctest: +SKIP
(0.96..., 0.96...)
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torchsmith.errors import CheckpointError, InputError, RecipeError
from torchsmith.training.recipe import Recipe, load_recipe, locate

__all__ = ["TrainResult", "check_recipe", "evaluate", "predict", "train"]


@dataclass
class TrainResult:
    """What a run produced. ``val_acc`` is the final held-out accuracy; ``reloaded_acc`` the same
    weights' accuracy after a round trip through the checkpoint on disk (they must match). ``model``
    is the trained, unwrapped model (under FSDP an unsharded copy on rank 0, None on other ranks;
    the EMA weights under ``train.ema.eval``). ``stop_reason`` says why a run ended before its last
    epoch (early stopping, max_time, a callback); ``logs`` maps each ``logging`` kind to its file or
    folder."""

    out_dir: Path
    history: list[dict]
    val_acc: float | None
    reloaded_acc: float | None
    best: float | None
    best_epoch: int | None
    steps: int
    seconds: float
    checkpoint: Path
    best_checkpoint: Path | None
    metrics_file: Path
    plot_file: Path | None
    model_file: Path | None
    resumed_from: dict | None = None
    world_size: int = 1
    stop_reason: str | None = None
    logs: dict = field(default_factory=dict)
    model: Any = field(default=None, repr=False)

    def to_dict(self) -> dict:
        out = {k: v for k, v in self.__dict__.items() if k != "model"}
        return json.loads(json.dumps(out, default=str))


def _stderr(line: str) -> None:
    try:
        from tqdm.auto import tqdm

        tqdm.write(line, file=sys.stderr)
    except ImportError:  # pragma: no cover
        print(line, file=sys.stderr)


def train(
    recipe: str | os.PathLike | dict | Recipe | None = None,
    *,
    out: str | os.PathLike | None = None,
    resume: bool | str = False,
    overrides: Iterable[str] = (),
    log: Callable[[str], None] | None = _stderr,
    callbacks: Iterable[Any] = (),
    overwrite: bool = False,
) -> TrainResult:
    """Run a training recipe from start (or from its last checkpoint with ``resume=True``) to the end.

    ``recipe`` is a YAML path, a mapping, or None for the packaged default (digits finetune).
    Output goes to ``out``: ``last.pt``, ``best.pt``, ``metrics.jsonl``, ``curves.png``,
    ``recipe.yaml`` and the final model. A run never replaces another: without ``out`` each run gets
    a new folder (``runs/<recipe name>``, then ``runs/<recipe name>-2``, ...; a resume continues the
    newest), and an ``out`` that already holds files is refused (``InputError``) unless ``resume``
    continues it or ``overwrite=True`` replaces it (the earlier run's files are removed when the
    new run is set up, before its first step). The recipe is validated completely before anything
    is built, so a typo costs a second, not a run.

    Under ``torchrun`` every process calls this and they train together; rank 0 writes the files.
    ``resume="auto"`` resumes when ``out/last.pt`` exists and starts afresh otherwise (what a
    command line restarted by ``torchrun --max-restarts`` wants); after an elastic restart
    (``TORCHELASTIC_RESTART_COUNT > 0``) it resumes by itself.

    ``callbacks``: :class:`torchsmith.Callback` objects whose hooks the loop calls (after the
    recipe's built-in ones: EMA, early stopping, retention, TensorBoard, max_time, profiler).
    """
    from torchsmith.training.determinism import deterministic_mode

    r = load_recipe(recipe, overrides)
    # train.deterministic: set before the process group (NCCL) or anything else starts CUDA.
    with deterministic_mode(r["train"]["deterministic"]):
        return _train(r, out, resume, log, callbacks, overwrite)


def _train(
    r: Recipe,
    out: str | os.PathLike | None,
    resume: bool | str,
    log: Callable[[str], None] | None,
    callbacks: Iterable[Any],
    overwrite: bool,
) -> TrainResult:
    import torch

    from torchsmith.training import distributed as dist_
    from torchsmith.training.loop import Trainer, plot_curves

    ctx = dist_.setup(r)
    try:
        # Rank 0 chooses and every rank takes its choice: a slow rank could otherwise see the
        # folder rank 0 just made and pick the next number.
        choice: Any = None
        if ctx.is_main:
            try:
                choice = _choose_out(r["name"], out, resume, overwrite)
            except InputError as e:
                choice = e  # every rank raises it, none waits for a choice that never comes
        choice = dist_.gather_objects(choice, ctx)[0]
        if isinstance(choice, InputError):
            raise choice
        out_dir, resume = choice
    except BaseException:
        dist_.teardown(ctx)
        raise
    log = log or (lambda s: None)
    if ctx.enabled and ctx.local_rank == 0 and not ctx.is_main:
        # Multi-node: torchrun's c10d rendezvous orders nodes itself (not by --node_rank), so the
        # node a user watches may not hold rank 0. Say where the progress lines are.
        log(
            f"this node's first worker is global rank {ctx.rank} of {ctx.world_size} (node "
            f"{os.environ.get('GROUP_RANK', '?')}); rank 0, on another node, prints progress and results"
        )
    threads = torch.get_num_threads()
    trainer = None
    try:
        if resume and dist_.elastic_restart() and ctx.is_main:
            log("elastic restart: resuming from the last complete checkpoint")
        start = time.perf_counter()
        trainer = Trainer(r, out_dir, ctx, log=log, callbacks=callbacks)
        trainer.setup(resume=resume, overwrite=overwrite)
        if ctx.is_main and dist_.elastic_restart() and not trainer.resumed_from:
            log("elastic restart: no complete checkpoint yet, starting from the beginning")
        trainer.fit()  # writes recipe.yaml with the run's first checkpoint
        seconds = time.perf_counter() - start
        if trainer.ctx.enabled and r["distributed"]["strategy"] == "fsdp":
            model_sd, _ = trainer._model_state()  # collective: every rank
        else:
            model_sd = None
        model = trainer.eval_model if trainer.eval_model is not None else trainer.raw_model
        if model_sd is not None:  # FSDP: a whole, unsharded copy (rank 0 holds the gathered state)
            from torchsmith.training.build import build_model

            model = build_model(r) if ctx.is_main else None
            if model is not None:
                model.load_state_dict(model_sd)
        plot = model_file = reloaded = None
        if ctx.is_main:  # files and a local re-evaluation only; no collective in here
            if r["train"]["plot"]:
                plot = plot_curves(
                    trainer.history,
                    out_dir / "curves.png",
                    title=r["name"],
                    best_epoch=trainer.best_epoch,
                    lr_steps=trainer.lr_trace,
                    steps_per_epoch=trainer.steps_per_epoch,
                )
            model_file, reloaded = _save_and_reload(trainer, out_dir, model, log)
        dist_.barrier(ctx)
        last = trainer.history[-1] if trainer.history else {}
        val_acc = last.get("val_acc")
        if ctx.is_main and val_acc is not None:
            log(
                f"final held-out accuracy {100 * val_acc:.2f}%; reloaded from disk {100 * reloaded:.2f}%"
                if reloaded is not None
                else f"final held-out accuracy {100 * val_acc:.2f}%"
            )
        return TrainResult(
            out_dir=out_dir,
            history=trainer.history,
            val_acc=val_acc,
            reloaded_acc=reloaded,
            best=trainer.best,
            best_epoch=trainer.best_epoch,
            steps=trainer.step,
            seconds=round(seconds, 3),
            checkpoint=out_dir / "last.pt",
            best_checkpoint=(out_dir / "best.pt") if (out_dir / "best.pt").exists() else None,
            metrics_file=(out_dir / "metrics.jsonl") if "jsonl" in r["logging"] else None,
            plot_file=plot,
            model_file=model_file,
            resumed_from=trainer.resumed_from,
            world_size=ctx.world_size,
            stop_reason=trainer.stop_reason,
            logs=_log_paths(r, out_dir),
            model=model,
        )
    except Exception as e:
        if ctx.enabled:
            dist_.raise_clean(e)  # a peer lost or a collective timed out: one line, what to do
        if isinstance(e, RecipeError):  # found while building: FILE:LINE of the field, like spec errors
            located = locate(e, r)
            if located is not e:
                raise located from None
        raise
    finally:
        if trainer is not None:
            with contextlib.suppress(Exception):  # a pending checkpoint write finishes first
                trainer.close()
        torch.set_num_threads(threads)  # train.threads is for this run only
        if ctx.enabled:
            # Free the DDP/FSDP wrappers and their communication state while the process group still
            # exists; freed later, at interpreter exit, gloo's teardown can abort the process.
            trainer = None
            gc.collect()
        dist_.teardown(ctx)


def check_recipe(
    recipe: str | os.PathLike | dict | Recipe | None = None,
    *,
    overrides: Iterable[str] = (),
    log: Callable[[str], None] | None = _stderr,
) -> dict:
    """Validate a recipe, its data and its model without training (``torchsmith train --check``).

    Everything a run does before its first step, in one process: the recipe (fields, names, paths),
    the datasets (every image opened and checked, labels against the model's outputs), the model
    built (``auto`` sizes resolved; pretrained weights give their structure but are neither fetched
    nor read), one sample through it, the loss, optimizer and scheduler. Nothing is written.
    Returns a summary; a problem raises the error the run would have met (``InputError``: exit 2).
    """
    import tempfile

    import torch

    from torchsmith.training import distributed as dist_
    from torchsmith.training.loop import Trainer

    r = load_recipe(recipe, overrides)
    ctx = dist_.DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    threads = torch.get_num_threads()
    try:
        with tempfile.TemporaryDirectory(prefix="torchsmith-check-") as tmp:
            t = Trainer(r, Path(tmp), ctx, log=log)
            t._seed()
            t._setup_data()
            t._setup_model(weights=False)
            t._setup_loaders()
            t._setup_optimization()
            summary = {
                "recipe": r.source or "(mapping)",
                "name": r["name"],
                "train_samples": len(t.train_ds),
                "val_samples": len(t.val_ds) if t.val_ds is not None else 0,
                "classes": len(t.train_ds.classes),
                "parameters": sum(p.numel() for p in t.raw_model.parameters()),
                "steps_per_epoch": t.steps_per_epoch,
                "optimizer": r["optimizer"]["name"],
                "loss": r["loss"]["name"],
                "scheduler": r["scheduler"]["name"],
            }
    except RecipeError as e:
        located = locate(e, r)
        if located is not e:
            raise located from None
        raise
    finally:
        torch.set_num_threads(threads)
    return summary


def _choose_out(
    name: str, out: str | os.PathLike | None, resume: bool | str, overwrite: bool
) -> tuple[Path, bool | str]:
    """The run folder and the resume decision (``auto`` and elastic restarts settled here)."""
    from torchsmith.training import distributed as dist_
    from torchsmith.training.run_folder import (
        BEFORE_FIRST_CHECKPOINT,
        check_out_folder,
        latest_run_folder,
        new_run_folder,
    )

    restarted = dist_.elastic_restart()
    if out is None:
        base = Path("runs") / name
        latest = latest_run_folder(base)
        if resume is True or (isinstance(resume, str) and resume != "auto"):
            out_dir = latest or base  # resume: the newest run of this recipe
        elif (resume == "auto" or restarted) and latest is not None and (latest / "last.pt").is_file():
            out_dir = latest
        elif overwrite:
            out_dir = base
        else:
            out_dir = new_run_folder(base)
    else:
        out_dir = Path(out)
    allow: tuple[str, ...] = ()
    if resume == "auto" or (not resume and restarted):
        # torchrun --max-restarts: the restarted command continues when there is a checkpoint.
        resume = (out_dir / "last.pt").is_file()
        if not resume and restarted:
            return out_dir, False  # the first attempt died before its first checkpoint: start again
        allow = BEFORE_FIRST_CHECKPOINT  # a kill before the first checkpoint left only these
    check_out_folder(out_dir, resume=bool(resume), overwrite=overwrite, allow=allow)
    return out_dir, resume


def _log_paths(recipe: dict, out_dir: Path) -> dict:
    names = {"jsonl": "metrics.jsonl", "csv": "metrics.csv", "tensorboard": "tensorboard"}
    return {k: out_dir / names[k] for k in recipe["logging"]}


def _save_and_reload(
    trainer: Any, out_dir: Path, raw: Any, log: Callable
) -> tuple[Path | None, float | None]:
    """Save the final model (``raw``: unwrapped, unsharded), read it back from disk into a fresh model
    and evaluate it again."""
    import torch

    model_file = None
    try:
        from torchsmith import load_model, save  # helper B's safe save/load

        model_file = out_dir / "model.safetensors"
        save(raw, model_file)
        reloaded = load_model(model_file)
        source = str(model_file)
    except CheckpointError:
        # The file records no architecture torchsmith can rebuild (a model the recipe made by some
        # other route): rebuild it from the recipe and reload the atomic training checkpoint instead.
        reloaded = _model_from_checkpoint(out_dir / "last.pt", trainer.recipe, torch.device("cpu"))[0]
        source = str(out_dir / "last.pt")
    if trainer.val_loader is None:
        return model_file, None
    from torch.utils.data import DataLoader

    from torchsmith.training.loop import evaluate_model

    t = trainer.recipe["train"]
    loader = DataLoader(trainer.val_ds, batch_size=trainer.val_loader.batch_size, shuffle=False)
    reloaded = reloaded.to(trainer.ctx.device)
    metrics = evaluate_model(
        reloaded,
        loader,
        trainer.criterion,
        device=trainer.ctx.device,
        precision=t["precision"],
        top_k=t["top_k"],
        channels_last=t["channels_last"],
        ctx=None,
    )
    log(f"reloaded {source}: held-out accuracy {100 * metrics.get('val_acc', float('nan')):.2f}%")
    return model_file, metrics.get("val_acc")


def _model_from_checkpoint(
    path: str | os.PathLike,
    recipe: dict | None,
    device: Any,
    log: Callable[[str], None] | None = None,
    data: str | os.PathLike | None = None,
) -> tuple[Any, dict, Recipe]:
    from torchsmith.training.build import build_model
    from torchsmith.training.checkpointing import checkpoint_model_state, load_checkpoint

    state = load_checkpoint(path, map_location=device)
    state["model"] = checkpoint_model_state(path, state)  # in last.pt, or in its DCP folder
    if recipe is None:
        recipe = _stored_recipe(path, state, data)
        _check_stored_paths(recipe, path, ("model.spec",), log)
    else:
        if not isinstance(recipe, Recipe):
            recipe = load_recipe(recipe)
        _fill_auto_sizes(recipe, _raw_stored_recipe(path, state))
    # The checkpoint holds every tensor: the recipe's pretrained weights are neither fetched nor read.
    model = build_model(recipe, weights=False).to(device)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise CheckpointError(f"checkpoint {path}: does not fit the recipe's model: {first}") from None
    model.eval()
    return model, state, recipe


def _raw_stored_recipe(path: str | os.PathLike, state: dict) -> dict:
    try:
        raw = json.loads(state["recipe"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(
            f"checkpoint {path}: its stored recipe cannot be read ({type(e).__name__})"
        ) from None
    if not isinstance(raw, dict) or not isinstance(raw.get("model"), dict):
        raise CheckpointError(f"checkpoint {path}: its stored recipe is not a mapping with a model section")
    return raw


def _stored_recipe(path: str | os.PathLike, state: dict, data: str | os.PathLike | None = None) -> Recipe:
    """The recipe a checkpoint carries, validated like any recipe (a refusal names the checkpoint).

    ``data`` (``--data FOLDER``) replaces the data paths it names before anything looks at them.
    """
    raw = _raw_stored_recipe(path, state)
    if data is not None and isinstance(raw.get("data"), dict):
        if raw["data"].get("kind", "digits") == "digits" and raw["data"].get("image_size") is None:
            raw["data"]["image_size"] = 8  # what the model saw: the 8x8 digits
        raw["data"] = {
            **{k: v for k, v in raw["data"].items() if k not in ("csv", "list", "val_list", "val_root")},
            "kind": "image_folder",
            "root": str(data),
        }
    try:
        return load_recipe(raw)
    except InputError as e:  # names a field and a path, never a file's content
        raise CheckpointError(
            f"checkpoint {path}: its stored recipe is not usable here: {e}; pass a RECIPE (or --data)"
        ) from None
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(
            f"checkpoint {path}: its stored recipe cannot be read ({type(e).__name__})"
        ) from None


# The recipe fields that name files and folders, with what each must be.
_PATH_FIELDS = {
    "data.root": "folder",
    "data.val_root": "folder",
    "data.csv": "file",
    "data.list": "file",
    "data.val_list": "file",
    "model.spec": "file",
}


def _stored_paths(recipe: dict, fields: Iterable[str]) -> list[tuple[str, str]]:
    out = []
    for name in fields:
        section, key = name.split(".")
        value = (recipe.get(section) or {}).get(key)
        if name == "model.spec" and isinstance(value, str) and "\n" in value:
            continue  # inline spec text, not a path
        if isinstance(value, str):
            out.append((name, value))
    return out


def _check_stored_paths(
    recipe: dict, checkpoint: str | os.PathLike, fields: Iterable[str], log: Callable[[str], None] | None
) -> None:
    """A checkpoint's stored recipe is data: before anything it names is read, say which files and
    folders those are, and refuse anything but a regular file (bounded in size) or a folder.

    A downloaded checkpoint can name any path: a device or FIFO would be read until killed, and
    another user's file must not end up quoted in an error message.
    """
    import stat

    from torchsmith.training.data import MAX_TEXT_FILE_BYTES

    named = _stored_paths(recipe, fields)
    if not named:
        return
    if log is not None:
        log(
            f"checkpoint {checkpoint}: its stored recipe names "
            + ", ".join(f"{f}={p}" for f, p in named)
            + " (pass --data or a RECIPE to use other data)"
        )
    for name, p in named:
        want, where = _PATH_FIELDS[name], f"checkpoint {checkpoint}: its stored recipe's {name} {p}"
        try:
            st = os.stat(p)
        except OSError as e:
            raise InputError(
                f"{where}: {e.strerror or 'cannot be read'}; pass --data (or a RECIPE) to say where "
                "the data is"
            ) from None
        ok = stat.S_ISDIR(st.st_mode) if want == "folder" else stat.S_ISREG(st.st_mode)
        if not ok:
            raise InputError(
                f"{where} is not a {want} (a device, FIFO or socket is never read); pass --data "
                "(or a RECIPE) to say where the data is"
            )
        if want == "file" and st.st_size > MAX_TEXT_FILE_BYTES:
            raise InputError(
                f"{where} has {st.st_size:,} bytes, more than the {MAX_TEXT_FILE_BYTES:,} allowed"
            )


def _fill_auto_sizes(recipe: dict, stored: dict) -> None:
    """``auto`` sizes of a recipe given with a checkpoint: the numbers the run resolved, which its
    stored recipe holds (the checkpoint's tensors have those sizes), not the data's again."""
    kwargs, old = recipe["model"]["kwargs"], stored["model"].get("kwargs") or {}
    for key in ("num_classes", "in_channels", "in_features"):
        if kwargs.get(key) == "auto" and isinstance(old.get(key), int):
            kwargs[key] = old[key]
    old_ops = stored.get("surgery") or []
    for i, op in enumerate(recipe.get("surgery") or []):
        was = old_ops[i] if i < len(old_ops) and isinstance(old_ops[i], dict) else {}
        if (
            isinstance(op, dict)
            and op.get("num_classes") == "auto"
            and isinstance(was.get("num_classes"), int)
        ):
            op["num_classes"] = was["num_classes"]


def _data_override(recipe: dict, folder: str | os.PathLike, classes: list[str]) -> Any:
    """``--data FOLDER``: every image under FOLDER's class sub-folders, prepared like the recipe's
    validation data, labelled by the checkpoint's class names."""
    from torchsmith.training.data import _image_folder, build_transforms, recipe_transforms

    d = recipe["data"]
    ds = _image_folder(str(folder), d, recipe["seed"], classes=classes or None)
    tf = build_transforms(recipe_transforms(recipe)["val_transforms"], "data.val_transforms")
    return ds.subset(list(range(len(ds))), tf)


def evaluate(
    recipe: str | os.PathLike | dict | Recipe | None,
    checkpoint: str | os.PathLike,
    *,
    overrides: Iterable[str] = (),
    data: str | os.PathLike | None = None,
    log: Callable[[str], None] | None = _stderr,
) -> dict:
    """Evaluate ``checkpoint`` on the recipe's validation data; returns loss, accuracy, top-k, samples.

    ``recipe`` None uses the recipe stored in the checkpoint. That recipe is data from the file:
    the files and folders it names are listed (``log``) before they are read, and only a regular
    file (of bounded size) or a folder is read; a refusal never quotes their content. ``data``
    (a folder with one sub-folder per class) evaluates on its images instead.
    """
    import torch
    from torch.utils.data import DataLoader

    from torchsmith.training.data import build_datasets
    from torchsmith.training.loop import evaluate_model
    from torchsmith.training.losses import build_loss

    r = load_recipe(recipe, overrides) if recipe is not None else None
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, state, r = _model_from_checkpoint(checkpoint, r, device, log, data=data)
    if recipe is None and overrides:
        r = load_recipe(r, overrides)
    if data is not None:
        val = _data_override(r, data, list(state.get("classes") or []))
    elif recipe is None:
        _check_stored_paths(r, checkpoint, [f for f in _PATH_FIELDS if f != "model.spec"], log)
        try:
            _, val = build_datasets(r)
        except InputError:
            # The messages would quote the files (CSV headers, list lines, image names) that a
            # checkpoint from elsewhere chose: say which fields, not what the files hold.
            fields = ", ".join(f for f, _ in _stored_paths(r, _PATH_FIELDS)) or "data.kind"
            raise InputError(
                f"checkpoint {checkpoint}: the data its stored recipe names ({fields}) cannot be used "
                "as its validation data (the details would quote those files); pass --data FOLDER or "
                "a RECIPE"
            ) from None
    else:
        _, val = build_datasets(r)
    if val is None or not len(val):
        raise InputError("recipe field 'data.val_fraction': the recipe has no validation data to evaluate on")
    loader = DataLoader(
        val, batch_size=r["data"]["eval_batch_size"] or r["data"]["batch_size"], shuffle=False
    )
    crit = build_loss(r["loss"]["name"], r["loss"]["args"], r["loss"]["adapter"]).to(device)
    t = r["train"]
    metrics = evaluate_model(
        model,
        loader,
        crit,
        device=device,
        precision=t["precision"],
        top_k=t["top_k"],
        channels_last=t["channels_last"],
    )
    metrics["checkpoint"] = str(checkpoint)
    metrics["epoch"] = state["epoch"]
    metrics["step"] = state["step"]
    return metrics


def predict(
    checkpoint: str | os.PathLike,
    inputs: Sequence[str | os.PathLike] | Any,
    *,
    top_k: int = 1,
    log: Callable[[str], None] | None = _stderr,
) -> list[dict]:
    """Classify image files (or a batch tensor) with a training checkpoint or a saved model.

    A training checkpoint prepares images like its recipe's validation data (channels, size, the
    transforms, completed by the pretrained weights' preprocessing when the recipe used weights). A
    model file written by ``torchsmith.save`` from a pretrained model uses the preprocessing its
    weights record (resize, crop, mean/std). Returns one dict per input: ``class`` (its name),
    ``index``, ``probability`` and the ``top`` k choices.

    Class names: the run's own (the image folder's classes, the CSV's labels) for the classes it
    trained; the weights' categories (ImageNet's names) where the model still has the pretrained
    head; otherwise the index. A new head never shows the weights' old names.
    """
    import torch

    from torchsmith.hub import weights_categories
    from torchsmith.training.data import load_images

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    saved = _is_saved_model(checkpoint)
    crit = r = None
    classes: list[str] = []
    if saved:
        model = _load_saved_model(checkpoint, device)
    else:
        from torchsmith.training.losses import build_loss

        model, state, r = _model_from_checkpoint(checkpoint, None, device, log)
        classes = list(state.get("classes") or [])
        crit = build_loss(r["loss"]["name"], r["loss"]["args"], r["loss"]["adapter"])
    names = None
    if isinstance(inputs, torch.Tensor):
        batch = inputs
    else:
        names = [str(p) for p in inputs]
        if not names:
            raise InputError("predict: no inputs given")
        batch = _saved_model_images(model, checkpoint, names) if saved else load_images(names, r)
    with torch.no_grad():
        out = model(batch.to(device))
        probs = torch.softmax((out if crit is None else crit.scores(out)).float(), dim=1).cpu()
    categories = weights_categories(model, probs.shape[1]) or []

    def label(j: int) -> str:
        if j < len(classes):  # what the run trained this output for
            return classes[j]
        return categories[j] if j < len(categories) else str(j)

    k = max(1, min(top_k, probs.shape[1]))
    top = probs.topk(k, dim=1)
    results = []
    for i in range(probs.shape[0]):
        idx = top.indices[i].tolist()
        p = top.values[i].tolist()
        row = {
            "class": label(idx[0]),
            "index": idx[0],
            "probability": round(p[0], 6),
            "top": [{"class": label(j), "index": j, "probability": round(q, 6)} for j, q in zip(idx, p)],
        }
        if names is not None:
            row = {"input": names[i], **row}
        results.append(row)
    return results


def _is_saved_model(path: str | os.PathLike) -> bool:
    """A file written by ``torchsmith.save`` (it records how to rebuild its model), not a training
    checkpoint (whose own reader reports anything else)."""
    from torchsmith.checkpoint.formats import open_raw

    try:
        meta = open_raw(path).metadata
    except Exception:  # not readable as a model file: the training checkpoint reader says why
        return False
    return "torchsmith.arch" in meta or "torchsmith.spec" in meta


def _load_saved_model(path: str | os.PathLike, device: Any) -> Any:
    from torchsmith.checkpoint import load_model

    return load_model(path, map_location=device).eval()


def _saved_model_images(model: Any, path: str | os.PathLike, files: list[str]) -> Any:
    """Images prepared with the preprocessing the model's pretrained weights record."""

    from torchsmith._provenance import get_provenance
    from torchsmith.training.data import _FileLoader, _weights_items, build_transforms, stack_images

    pre = (get_provenance(model).get("weights") or {}).get("transforms") or {}
    if not (pre.get("mean") or pre.get("resize")):
        raise InputError(
            f"predict: {path} is a saved model whose weights record no preprocessing (resize, crop, "
            "mean/std), so how to prepare an image is unknown; predict with the training checkpoint "
            "(last.pt, best.pt) of its run, whose recipe says it"
        )
    channels = _input_channels(model)
    size, normalize, _ = _weights_items(pre, channels)
    tf = build_transforms(size + ([normalize] if normalize else []), "the weights' transforms")
    return stack_images(files, _FileLoader(channels, None), tf)


def _input_channels(model: Any) -> int:
    """The channels the model's first convolution takes (1 after set_in_channels(model, 1)), else 3."""
    import torch.nn as nn

    for m in model.modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            return int(m.in_channels)
    return 3
