"""Training recipes: one YAML file describing a whole finetune, validated before anything runs.

A recipe names the model, the surgery, init rules and weights to apply, what to freeze, the data,
loss, optimizer, scheduler and the loop settings. :func:`load_recipe` fills defaults and checks every
field (unknown keys, wrong types, missing files, unknown loss/optimizer/scheduler names) so that a
typo fails in a second with a message naming the field, not after an hour of training.

>>> r = load_recipe({"model": {"name": "mlp"}, "train": {"epochs": 2}}, overrides=["optimizer.lr=0.01"])
>>> r["train"]["epochs"], r["optimizer"]["lr"], r["data"]["kind"]
(2, 0.01, 'digits')
>>> load_recipe({"model": {"name": "mlp"}, "train": {"epocs": 2}})
Traceback (most recent call last):
...
torchsmith.errors.RecipeError: recipe field 'train.epocs': unknown key (did you mean 'epochs'?); ...

``--set key=value`` overrides use dotted keys; the value is read as YAML (``3``, ``0.1``, ``true``,
``[1, 5]``, ``null``).
"""

from __future__ import annotations

import copy
import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from torchsmith.errors import RecipeError, close_matches

__all__ = ["SCHEMA", "Field", "Recipe", "apply_overrides", "default_recipe_path", "load_recipe"]


@dataclass(frozen=True)
class Field:
    """One recipe field: accepted types, default, allowed values, and whether it is a file path."""

    types: tuple[type, ...]
    default: Any = None
    choices: tuple[Any, ...] | None = None
    path: bool = False  # a file or folder that must exist (relative to the recipe's folder)
    minimum: float | None = None
    doc: str = ""
    sub: dict | None = None  # an optional section: a mapping checked against this schema, true, or off


def _f(types: type | tuple[type, ...], default: Any = None, **kw: Any) -> Field:
    return Field(types if isinstance(types, tuple) else (types,), default, **kw)


_SCI = re.compile(r"[-+]?\d+(\.\d*)?[eE][-+]?\d+")
_NUM = (int, float)
_OPT_STR = (str, type(None))
_OPT_INT = (int, type(None))
_OPT_NUM = (int, float, type(None))

# Optional sections: absent, null or false = off; true = on with these defaults; a mapping = on.
_EMA = {
    "decay": _f(float, 0.999, doc="weight of the old average per update, in (0, 1)"),
    "every_n_steps": _f(int, 1, minimum=1, doc="optimizer steps between updates"),
    "eval": _f(bool, True, doc="validate, pick best.pt and save the final model on the EMA weights"),
}
_EARLY_STOPPING = {
    "metric": _f(str, "val_loss", doc="a key of the epoch record: val_loss, val_acc, train_loss, ..."),
    "mode": _f(str, "auto", choices=("auto", "min", "max"), doc="auto: min for *loss, max otherwise"),
    "patience": _f(int, 3, minimum=1, doc="epochs without improvement before stopping"),
    "min_delta": _f(_NUM, 0.0, minimum=0.0, doc="smallest change that counts as an improvement"),
}
_MIXUP = {
    "mixup_alpha": _f(_NUM, 1.0, minimum=0.0, doc="Beta(a, a) for MixUp's weight; 0: no MixUp"),
    "cutmix_alpha": _f(_NUM, 0.0, minimum=0.0, doc="Beta(a, a) for CutMix's box area; 0: no CutMix"),
    "prob": _f(_NUM, 1.0, doc="probability that a batch is mixed at all"),
    "switch_prob": _f(_NUM, 0.5, doc="with both alphas: probability of CutMix rather than MixUp"),
    "label_smoothing": _f(_NUM, 0.1, doc="folded into the mixed soft targets (timm's default 0.1)"),
}
_PROFILE = {
    "steps": _f(list, [2, 4], doc="[a, b]: profile optimizer steps a to b (1-based, inclusive)"),
}

# The recipe schema: nested dicts are sections, Field leaves are values.
SCHEMA: dict[str, Any] = {
    "name": _f(str, "run", doc="run name; output goes to runs/<name> unless --out is given"),
    "seed": _f(int, 0, doc="seeds Python, NumPy and torch; the model is built under this seed"),
    "model": {
        "name": _f(_OPT_STR, None, doc="zoo name, 'torchvision:NAME' or 'timm:NAME'"),
        "kwargs": _f(dict, {}, doc="keyword arguments for the model factory"),
        "weights": _f(
            (str, bool, dict, type(None)),
            None,
            doc="pretrained weights: a torchvision name (DEFAULT, IMAGENET1K_V2), true for timm tags, "
            "'hf-hub:ORG/NAME', or {url|path, sha256}; fetched and verified by torchsmith.hub",
        ),
        "spec": _f((str, dict, type(None)), None, doc="a model spec (file path or mapping)"),
    },
    "surgery": _f(list, [], doc="surgery operations, applied in order (torchsmith.surgery)"),
    "init": _f((list, dict, type(None)), None, doc="init rules (torchsmith.transfer.init_weights)"),
    "weights": {
        "source": _f(_OPT_STR, None, path=True, doc="a checkpoint to transfer weights from"),
        "args": _f(dict, {}, doc="extra arguments for torchsmith.transfer.load_weights"),
    },
    "freeze": _f((list, str, dict, type(None)), None, doc="patterns to freeze, or {patterns, before, ...}"),
    "unfreeze": _f((list, str, dict, type(None)), None, doc="patterns to unfreeze after freezing"),
    "param_groups": _f((list, dict, type(None)), None, doc="rules [{params: PATTERN, lr: ...}] or keywords"),
    "data": {
        "kind": _f(str, "digits", choices=("digits", "image_folder", "csv")),
        "root": _f(_OPT_STR, None, path=True, doc="image folder (image_folder, csv)"),
        "val_root": _f(_OPT_STR, None, path=True, doc="separate validation image folder"),
        "csv": _f(_OPT_STR, None, path=True, doc="CSV of labels (kind: csv)"),
        "list": _f(_OPT_STR, None, path=True, doc="text file of training image names (kind: csv)"),
        "val_list": _f(_OPT_STR, None, path=True, doc="text file of validation image names"),
        "image_column": _f(str, "Image_index", doc="CSV column holding the image name"),
        "label_column": _f((str, int), 0, doc="CSV column holding the label (name or index)"),
        "val_fraction": _f(float, 0.2, minimum=0.0, doc="held-out fraction when no val set given"),
        "image_size": _f((int, list, type(None)), None, doc="resize every image to this size"),
        "channels": _f(int, 3, choices=(1, 3)),
        "train_transforms": _f(list, [], doc="torchvision.transforms.v2 names, applied in order"),
        "val_transforms": _f(list, [], doc="transforms for validation and prediction"),
        "batch_size": _f(int, 64, minimum=1),
        "eval_batch_size": _f(_OPT_INT, None),
        "num_workers": _f(int, 0, minimum=0),
        "drop_last": _f(bool, False),
        "on_bad_sample": _f(str, "error", choices=("error", "skip")),
        "limit": _f(_OPT_INT, None, doc="use only the first N samples (quick tests)"),
    },
    "loss": {
        "name": _f(str, "CrossEntropyLoss"),
        "args": _f(dict, {}),
        "adapter": _f(str, "classification", choices=("classification", "none")),
    },
    "optimizer": {
        "name": _f(str, "AdamW"),
        "lr": _f(_NUM, 1e-3, minimum=0.0),
        "args": _f(dict, {}),
    },
    "scheduler": {
        "name": _f(_OPT_STR, None),
        "args": _f(dict, {}),
        "interval": _f(str, "epoch", choices=("epoch", "step")),
        "warmup_epochs": _f(_OPT_NUM, None, minimum=0, doc="a warmup this many epochs long in front"),
        "warmup_steps": _f(_OPT_INT, None, minimum=0, doc="a warmup this many optimizer steps long"),
        "warmup_lr": _f(_NUM, 0.0, minimum=0.0, doc="the LR the warmup starts from (timm's warmup_lr_init)"),
        "warmup_mode": _f(str, "linear", choices=("linear", "constant")),
        "min_lr": _f(_OPT_NUM, None, minimum=0.0, doc="the cosine's floor (eta_min; plateau's min_lr)"),
    },
    "train": {
        "epochs": _f(int, 1, minimum=1),
        "max_steps": _f(_OPT_INT, None, doc="stop after this many optimizer steps"),
        "grad_accum": _f(int, 1, minimum=1),
        "clip_grad_norm": _f(_OPT_NUM, None),
        "precision": _f(str, "fp32", choices=("fp32", "bf16", "fp16")),
        "channels_last": _f(bool, False),
        "compile": _f(bool, False),
        "device": _f(str, "auto", doc="auto, cpu, cuda or cuda:N"),
        "log_every": _f(int, 50, minimum=1, doc="optimizer steps between progress updates"),
        "checkpoint_every_steps": _f(_OPT_INT, None),
        "top_k": _f(list, [1, 5]),
        "progress": _f(bool, True, doc="a progress bar while training, when stderr is a terminal"),
        "plot": _f(bool, True, doc="write curves.png at the end"),
        "best_metric": _f(str, "val_acc", choices=("val_acc", "val_loss")),
        "threads": _f(_OPT_INT, None, doc="torch.set_num_threads on the CPU"),
        "ema": _f((dict, bool, type(None)), None, sub=_EMA, doc="an EMA of the weights (training.ema)"),
        "early_stopping": _f(
            (dict, bool, type(None)), None, sub=_EARLY_STOPPING, doc="stop when a metric stops improving"
        ),
        "val_every_steps": _f(_OPT_INT, None, minimum=1, doc="also validate every N optimizer steps"),
        "max_time": _f(
            (int, float, str, type(None)), None, doc="stop after this much training: seconds or 'HH:MM:SS'"
        ),
        "profile": _f((dict, type(None)), None, sub=_PROFILE, doc="a torch.profiler trace of some steps"),
        "deterministic": _f(
            bool,
            False,
            doc="bit-identical reruns: torch.use_deterministic_algorithms, cuDNN flags, "
            "CUBLAS_WORKSPACE_CONFIG, seeded workers (training.determinism)",
        ),
        "mixup": _f(
            (dict, bool, type(None)),
            None,
            sub=_MIXUP,
            doc="MixUp/CutMix batches with soft targets (timm semantics; training.mixup)",
        ),
    },
    "logging": _f((list, str), ["jsonl"], doc="metrics files: any of jsonl, csv, tensorboard"),
    "checkpoint": {
        "every_n_steps": _f(_OPT_INT, None, minimum=1, doc="also checkpoint every N optimizer steps"),
        "keep_last": _f(_OPT_INT, None, minimum=1, doc="keep the N latest checkpoints in checkpoints/"),
        "keep_best": _f(_OPT_INT, None, minimum=1, doc="keep the K best checkpoints by metric"),
        "metric": _f(_OPT_STR, None, doc="keep_best's metric (default: train.best_metric)"),
        "async": _f(bool, False, doc="write checkpoints in a background thread from a CPU snapshot"),
        "format": _f(str, "auto", choices=("auto", "pt", "dcp"), doc="dcp: sharded (auto for FSDP)"),
    },
    "distributed": {
        "strategy": _f(str, "ddp", choices=("ddp", "fsdp")),
        "timeout": _f(_NUM, 600, minimum=1, doc="seconds to join the group / wait in a collective"),
        "backend": _f(_OPT_STR, None, choices=(None, "gloo", "nccl")),
        "find_unused_parameters": _f(bool, False),
        "check_unused_parameters": _f(bool, True),
    },
}


def default_recipe_path() -> Path:
    """The packaged default recipe: finetuning on scikit-learn's bundled handwritten digits."""
    return Path(str(resources.files("torchsmith.training") / "recipes" / "default.yaml"))


class Recipe(dict):
    """A validated recipe: a plain nested dict plus where it came from.

    ``base_dir`` is the folder relative paths were resolved against; ``source`` the file (or None).
    """

    def __init__(
        self,
        data: Mapping,
        *,
        source: str | None = None,
        base_dir: Path | None = None,
        lines: Any = None,
        overridden: tuple[str, ...] = (),
    ):
        super().__init__(data)
        self.source = source
        self.base_dir = base_dir or Path.cwd()
        self.lines = lines  # the file's line of each key (a spec.loader.Source), for FILE:LINE errors
        self.overridden = overridden  # dotted keys set by --set (not in the file)

    def to_dict(self) -> dict:
        return json.loads(json.dumps(self))

    def to_yaml(self) -> str:
        import yaml

        # libyaml's emitter when PyYAML has it: the same text (safe types only) in a quarter of the
        # time, which matters because the first checkpoint of every run writes recipe.yaml.
        dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
        return yaml.dump(self.to_dict(), Dumper=dumper, sort_keys=False)


def _type_name(types: tuple[type, ...]) -> str:
    names = {
        int: "an integer",
        float: "a number",
        str: "a string",
        bool: "true/false",
        list: "a list",
        dict: "a mapping",
        type(None): "null",
    }
    return " or ".join(dict.fromkeys(names.get(t, t.__name__) for t in types))


def _check_value(field: Field, value: Any, where: str) -> Any:
    types = field.types
    if isinstance(value, str) and float in types and str not in types and _SCI.fullmatch(value.strip()):
        value = float(value)  # PyYAML reads '1e-3' (no dot) as a string; a number was clearly meant
    ok = isinstance(value, types)
    if isinstance(value, bool) and bool not in types:
        ok = False  # YAML 'true' is not an integer
    if not ok and isinstance(value, int) and not isinstance(value, bool) and float in types:
        value, ok = float(value), True
    if not ok:
        raise RecipeError(
            f"recipe field {where!r}: expected {_type_name(types)}, got {value!r} ({type(value).__name__})"
        )
    if field.choices is not None and value not in field.choices:
        hint = close_matches(str(value), [str(c) for c in field.choices if c is not None])
        raise RecipeError(
            f"recipe field {where!r}: {value!r} is not a valid choice{hint}; valid choices: "
            + ", ".join("null" if c is None else str(c) for c in field.choices)
        )
    if field.minimum is not None and isinstance(value, _NUM) and value < field.minimum:
        raise RecipeError(f"recipe field {where!r}: must be >= {field.minimum}, got {value!r}")
    if field.sub is not None and value is not None:
        if value is False:
            return None
        return _validate(field.sub, {} if value is True else value, where)
    return value


def _validate(schema: dict, data: Any, prefix: str) -> dict:
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise RecipeError(
            f"recipe field {prefix or '(top level)'!r}: expected a mapping of "
            f"{', '.join(schema)}, got {type(data).__name__}"
        )
    out: dict[str, Any] = {}
    for key in data:
        if key not in schema:
            where = f"{prefix}.{key}" if prefix else str(key)
            raise RecipeError(
                f"recipe field {where!r}: unknown key{close_matches(str(key), schema)}; "
                f"valid keys{' in ' + repr(prefix) if prefix else ''}: {', '.join(schema)}"
            )
    for key, spec in schema.items():
        where = f"{prefix}.{key}" if prefix else key
        if isinstance(spec, dict):
            out[key] = _validate(spec, data.get(key), where)
        elif key in data:
            out[key] = _check_value(spec, data[key], where)
        else:
            out[key] = copy.deepcopy(spec.default)
    return out


def _resolve_paths(schema: dict, data: dict, base: Path, prefix: str) -> None:
    if not prefix:
        spec = data["model"]["spec"]
        # model.spec may be a file (relative to the recipe) or inline YAML text
        if isinstance(spec, str) and "\n" not in spec and (base / os.path.expanduser(spec)).is_file():
            data["model"]["spec"] = str(base / os.path.expanduser(spec))
    for key, spec in schema.items():
        where = f"{prefix}.{key}" if prefix else key
        if isinstance(spec, dict):
            _resolve_paths(spec, data[key], base, where)
        elif spec.path and data[key] is not None:
            p = Path(os.path.expanduser(data[key]))
            if not p.is_absolute():
                p = base / p
            if not p.exists():
                raise RecipeError(f"recipe field {where!r}: file not found: {p}")
            data[key] = str(p)


def apply_overrides(data: dict, overrides: Iterable[str]) -> dict:
    """Apply ``key.sub=value`` overrides (values read as YAML) to a raw recipe mapping, in place.

    >>> apply_overrides({}, ["train.epochs=3", "data.kind=csv"])
    {'train': {'epochs': 3}, 'data': {'kind': 'csv'}}
    """
    import yaml

    for item in overrides:
        if "=" not in item:
            raise RecipeError(f"override {item!r}: expected KEY=VALUE with a dotted key, like train.epochs=3")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        if not all(parts):
            raise RecipeError(f"override {item!r}: empty part in dotted key {key!r}")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        if isinstance(value, str) and _SCI.fullmatch(value.strip()):
            value = float(value)  # '1e-3': YAML 1.1 wants a dot, people do not write one
        node = data
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise RecipeError(
                    f"override {item!r}: {'.'.join(parts[: i + 1])!r} is a value, not a section"
                )
            node = child
        node[parts[-1]] = value
    return data


def _read_file(path: Path) -> tuple[dict, Any]:
    """The recipe file's mapping and its :class:`~torchsmith.spec.loader.Source` (line of each key).

    Read by the spec reader (:func:`torchsmith.spec.loader.read_yaml`): a regular file of bounded
    size; nesting, value count and number lengths checked while parsing; no tags, no duplicate keys.
    """
    from torchsmith.errors import SpecError
    from torchsmith.spec.loader import read_yaml

    if not path.exists():
        raise RecipeError(f"recipe file not found: {path}")
    try:
        data, source = read_yaml(path, what="recipe")
    except SpecError as e:
        raise RecipeError(str(e)) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RecipeError(
            f"{path}:1: recipe file: expected a mapping at the top level, got {type(data).__name__}"
        )
    return data, source


_FIELD = re.compile(r"recipe field '([^']+)'")


def _field_path(name: str) -> tuple:
    """``surgery[0].num_classes`` -> ``("surgery", 0, "num_classes")``."""
    out: list = []
    for part in name.split("."):
        m = re.fullmatch(r"([^\[]*)((?:\[\d+\])*)", part)
        if m is None:
            out.append(part)
            continue
        if m.group(1):
            out.append(m.group(1))
        out += [int(i) for i in re.findall(r"\[(\d+)\]", m.group(2))]
    return tuple(out)


def locate(error: Exception, recipe: Any) -> Exception:
    """``error`` with ``FILE:LINE:`` in front when it names a recipe field the file holds.

    Spec errors carry their place this way; a recipe error names ``recipe field 'a.b'``, and the
    recipe's :class:`~torchsmith.spec.loader.Source` knows the line of ``a.b`` (or of its nearest
    section). A field set by ``--set`` is not in the file and keeps its message as it is.
    """
    source = getattr(recipe, "lines", None)
    message = str(error)
    m = _FIELD.search(message)
    if source is None or source.name is None or m is None or message.startswith(source.name):
        return error
    name = m.group(1)
    if any(name == k or name.startswith(k + ".") for k in getattr(recipe, "overridden", ())):
        return error
    path = _field_path(name)
    line = source.line(path)
    if line is None:
        return error
    try:
        new = type(error)(f"{source.name}:{line}: {message}")
    except Exception:  # pragma: no cover - an exception class with another signature
        return error
    return new


def load_recipe(
    recipe: str | os.PathLike | Mapping | None = None,
    overrides: Iterable[str] = (),
    *,
    base_dir: str | os.PathLike | None = None,
) -> Recipe:
    """Read, override, validate and complete a recipe; raise :class:`RecipeError` naming the bad field.

    ``recipe`` is a YAML file path, a mapping, a :class:`Recipe`, or None for the packaged default.
    A mapping is taken as written (defaults fill what it leaves out); relative paths in it resolve
    against ``base_dir`` (default: the current folder), those in a file against the file's folder.
    """
    source = None
    lines: Any = None
    overridden: tuple[str, ...] = ()
    if isinstance(recipe, Recipe):
        base = Path(base_dir) if base_dir else recipe.base_dir
        source, lines, overridden = recipe.source, recipe.lines, recipe.overridden
        data = copy.deepcopy(dict(recipe))
    elif recipe is None or isinstance(recipe, (str, os.PathLike)):
        path = Path(recipe) if recipe is not None else default_recipe_path()
        data, lines = _read_file(path)
        source = str(path)
        base = Path(base_dir) if base_dir else path.resolve().parent
    elif isinstance(recipe, Mapping):
        data = copy.deepcopy(dict(recipe))
        base = Path(base_dir) if base_dir else Path.cwd()
    else:
        raise RecipeError(f"recipe: expected a file path or a mapping, got {type(recipe).__name__}")
    overrides = list(overrides)
    overridden += tuple(item.split("=", 1)[0].strip() for item in overrides)
    where = Recipe({}, source=source, lines=lines, overridden=overridden)
    try:
        apply_overrides(data, overrides)
        checked = _validate(SCHEMA, data, "")
        _resolve_paths(SCHEMA, checked, base, "")
        _check_semantics(checked)
    except RecipeError as e:
        raise locate(e, where) from None
    return Recipe(checked, source=source, base_dir=base, lines=lines, overridden=overridden)


def _check_semantics(r: dict) -> None:
    """Cross-field checks and name checks that need no data and no model."""
    from torchsmith.training import losses, optimizers

    m = r["model"]
    if (m["name"] is None) == (m["spec"] is None):
        raise RecipeError(
            "recipe field 'model': give exactly one of 'model.name' (zoo, 'torchvision:NAME', "
            "'timm:NAME') or 'model.spec'"
            + (f"; got both {m['name']!r} and a spec" if m["name"] else "; got neither")
        )
    d = r["data"]
    if d["kind"] in ("image_folder", "csv") and d["root"] is None:
        raise RecipeError(
            f"recipe field 'data.root': required for data.kind {d['kind']!r} (the image folder)"
        )
    if d["kind"] == "csv":
        for key in ("csv", "list"):
            if d[key] is None:
                raise RecipeError(f"recipe field 'data.{key}': required for data.kind 'csv'")
    if not 0.0 <= d["val_fraction"] < 1.0:
        raise RecipeError(f"recipe field 'data.val_fraction': must be in [0, 1), got {d['val_fraction']}")
    size = d["image_size"]
    if isinstance(size, list) and (len(size) != 2 or not all(isinstance(s, int) and s > 0 for s in size)):
        raise RecipeError(f"recipe field 'data.image_size': expected an integer or [H, W], got {size!r}")
    for key in ("train_transforms", "val_transforms"):
        from torchsmith.training.data import check_transforms

        check_transforms(d[key], f"data.{key}")
    for k in r["train"]["top_k"]:
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise RecipeError(f"recipe field 'train.top_k': expected positive integers, got {k!r}")
    # Names as people type them (adamw, sgd): the recipe holds the class's own name from here on.
    r["loss"]["name"] = losses.loss_name(r["loss"]["name"])
    r["optimizer"]["name"] = optimizers.optimizer_name(r["optimizer"]["name"])
    if r["scheduler"]["name"]:
        r["scheduler"]["name"] = optimizers.scheduler_name(r["scheduler"]["name"])
    losses.check_loss(r["loss"]["name"], r["loss"]["args"])
    optimizers.check_optimizer(r["optimizer"]["name"], r["optimizer"]["args"])
    if r["scheduler"]["name"] is not None:
        optimizers.check_scheduler(r["scheduler"]["name"], r["scheduler"]["args"])
    from torchsmith.training.schedulers import check_schedule

    check_schedule(r["scheduler"])
    t = r["train"]
    if t["precision"] == "fp16" and r["optimizer"]["name"] == "LBFGS":
        raise RecipeError(
            "recipe field 'train.precision': fp16 (GradScaler) cannot drive LBFGS; use bf16 or fp32"
        )
    if r["optimizer"]["name"] == "LBFGS" and t["grad_accum"] != 1:
        raise RecipeError("recipe field 'train.grad_accum': LBFGS re-evaluates the loss itself; use 1")
    _check_loop_features(r)
    from torchsmith.training.mixup import check_mixup

    check_mixup(r)
    dev = t["device"]
    if not (dev in ("auto", "cpu", "cuda") or (dev.startswith("cuda:") and dev[5:].isdigit())):
        raise RecipeError(f"recipe field 'train.device': expected auto, cpu, cuda or cuda:N, got {dev!r}")


def _check_loop_features(r: dict) -> None:
    """EMA, early stopping, validation/checkpoint intervals, max_time, profile, logging, retention."""
    t, c = r["train"], r["checkpoint"]
    if t["ema"] is not None:
        if not 0.0 < t["ema"]["decay"] < 1.0:
            raise RecipeError(f"recipe field 'train.ema.decay': must be in (0, 1), got {t['ema']['decay']}")
        if r["distributed"]["strategy"] == "fsdp":
            raise RecipeError(
                "recipe field 'train.ema': not available with distributed.strategy: fsdp (the EMA copy "
                "would be a whole model on every rank); use ddp, or drop train.ema"
            )
    for where, metric in (
        ("train.early_stopping.metric", (t["early_stopping"] or {}).get("metric")),
        ("checkpoint.metric", c["metric"]),
    ):
        if metric is not None and not metric.startswith(("train_", "val_")):
            raise RecipeError(
                f"recipe field {where!r}: expected a metric name such as val_loss, val_acc, val_top5 or "
                f"train_loss, got {metric!r}"
            )
    d = r["data"]
    has_val = d["val_fraction"] > 0 or d["val_root"] is not None or d["val_list"] is not None
    if t["val_every_steps"] is not None and not has_val:
        raise RecipeError(
            "recipe field 'train.val_every_steps': the recipe has no validation data (set "
            "data.val_fraction, data.val_root or data.val_list)"
        )
    if t["max_time"] is not None:
        from torchsmith.training.stopping import parse_duration

        parse_duration(t["max_time"], "train.max_time")
    if t["profile"] is not None:
        steps = t["profile"]["steps"]
        if not (
            len(steps) == 2
            and all(isinstance(s, int) and not isinstance(s, bool) for s in steps)
            and 1 <= steps[0] <= steps[1]
        ):
            raise RecipeError(
                f"recipe field 'train.profile.steps': expected [a, b] with 1 <= a <= b (optimizer steps), "
                f"got {steps!r}"
            )
    old, new = t["checkpoint_every_steps"], c["every_n_steps"]
    if old is not None and new is not None and old != new:
        raise RecipeError(
            f"recipe field 'checkpoint.every_n_steps': {new} disagrees with train.checkpoint_every_steps "
            f"({old}), its older name; set one of them"
        )
    from torchsmith.training.loggers import LOGGERS

    kinds = [r["logging"]] if isinstance(r["logging"], str) else r["logging"]
    for i, kind in enumerate(kinds):
        if kind not in LOGGERS:
            raise RecipeError(
                f"recipe field 'logging[{i}]': {kind!r} is not a logger{close_matches(str(kind), LOGGERS)}; "
                f"valid: {', '.join(LOGGERS)}"
            )
    if len(set(kinds)) != len(kinds):
        raise RecipeError(f"recipe field 'logging': {kinds} names a logger twice")
    r["logging"] = list(kinds)
