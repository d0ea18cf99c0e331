"""Build a recipe's model: create → surgery → init → transfer weights → freeze, with a log of each step.

Each step is done by the concern that owns it (``torchsmith.zoo``/``torchsmith.spec`` to build,
``torchsmith.surgery`` to reshape and freeze, ``torchsmith.transfer`` to initialise and load weights);
this module only reads the recipe and calls them in order, under the recipe's seed, so every process
and every resume builds the very same model.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from torchsmith.errors import RecipeError

__all__ = ["build_model", "build_param_groups", "resolve_data_fields"]


def _need(module: str, name: str, field: str) -> Callable[..., Any]:
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        raise RecipeError(
            f"recipe field {field!r}: needs {module}.{name}, which this torchsmith installation does "
            f"not provide; remove the field or install a torchsmith that has it"
        ) from None


def _report_lines(report: Any) -> list[str]:
    if report is None:
        return []
    for attr in ("summary", "format", "to_text"):
        fn = getattr(report, attr, None)
        if callable(fn):
            try:
                text = fn()
            except TypeError:
                continue
            if isinstance(text, str):
                return text.splitlines()
    return str(report).splitlines()


def _log_report(log: Callable[[str], None], kind: str, report: Any) -> None:
    for line in _report_lines(report):
        log(line if line.startswith(f"{kind}: ") else f"{kind}: {line}")


def _call(field: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call another concern's function; its input errors are reported against the recipe field."""
    from torchsmith.errors import InputError

    try:
        return fn(*args, **kwargs)
    except RecipeError:
        raise
    except InputError as e:
        raise RecipeError(f"recipe field {field!r}: {e}") from None
    except TypeError as e:
        raise RecipeError(f"recipe field {field!r}: {e}") from None


def build_model(recipe: dict, log: Callable[[str], None] | None = None, *, weights: bool = True) -> Any:
    """Build the model a recipe describes. ``log`` receives one line per step (and the reports).

    ``weights=False`` builds the same structure for tensors that come from elsewhere (a checkpoint):
    ``model.weights`` gives the pretrained structure without fetching or reading the file (see
    :func:`torchsmith.hub.weights_off`), and the ``weights:`` section's file is not read.
    """
    import contextlib

    import torch

    log = log or (lambda s: None)
    torch.manual_seed(recipe["seed"])
    m = recipe["model"]
    if m["spec"] is not None:
        build = _need("torchsmith.spec", "build_model", "model.spec")
        model = _call("model.spec", build, m["spec"])
        log(f"model: built from spec {m['spec'] if isinstance(m['spec'], str) else '(inline)'}")
    else:
        from torchsmith._sandbox import check_kwargs
        from torchsmith.zoo import create_model

        _call("model.kwargs", check_kwargs, m["kwargs"], "")
        kwargs = dict(m["kwargs"])
        if m.get("weights") not in (None, False):  # the one explicit way to pretrained weights
            w = m["weights"]
            if str(m["name"]).startswith("timm:") and not (isinstance(w, str) and w.startswith("hf-hub:")):
                kwargs["pretrained"] = w
            else:
                kwargs["weights"] = w
        off = contextlib.nullcontext()
        if not weights:
            from torchsmith.hub import weights_off

            off = weights_off()
        with off:
            model = _call(
                "model.weights" if m.get("weights") else "model.name", create_model, m["name"], **kwargs
            )
        log(
            f"model: {m['name']} {m['kwargs'] or ''}".rstrip()
            + (f" weights={m['weights']}" if m.get("weights") else "")
        )
        if m.get("weights") not in (None, False):  # say what the data took from the weights
            from torchsmith.training.data import recipe_transforms

            for line in recipe_transforms(recipe)["notes"]:
                log(line)
    if recipe["surgery"]:
        apply_surgery = _need("torchsmith.surgery", "apply_surgery", "surgery")
        _log_report(log, "surgery", _call("surgery", apply_surgery, model, recipe["surgery"]))
    if recipe["init"] is not None:
        init_weights = _need("torchsmith.transfer", "init_weights", "init")
        _log_report(log, "init", _call("init", init_weights, model, recipe["init"], where="init"))
    w = recipe["weights"]
    if w["source"] is not None and weights:
        load_weights = _need("torchsmith.transfer", "load_weights", "weights")
        _log_report(log, "weights", _call("weights", load_weights, model, w["source"], **w["args"]))
    if recipe["freeze"] is not None or recipe["unfreeze"] is not None:
        for key in ("freeze", "unfreeze"):
            if recipe[key] is None:
                continue
            fn = _need("torchsmith.surgery", key, key)
            spec = recipe[key]
            # a pattern, a list of patterns, or the function's keywords {patterns, before, exclude, ...}
            kwargs = dict(spec) if isinstance(spec, dict) else {"patterns": spec}
            _call(key, fn, model, **kwargs)
        n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
        n_all = sum(p.numel() for p in model.parameters())
        log(f"freeze: {n_train:,} of {n_all:,} parameters trainable")
    return model


def build_param_groups(model: Any, recipe: dict) -> list:
    """The optimizer's parameters: every trainable one, or the recipe's ``param_groups``."""
    spec = recipe["param_groups"]
    if spec:
        param_groups = _need("torchsmith.surgery", "param_groups", "param_groups")
        # a list of rules [{params: PATTERN, lr: ...}], or the function's keywords {rules, layer_decay, ...}
        kwargs = dict(spec) if isinstance(spec, dict) else {"rules": spec}
        opt = recipe["optimizer"]
        kwargs.setdefault("weight_decay", opt["args"].get("weight_decay", 0.0))
        return list(_call("param_groups", param_groups, model, opt["lr"], **kwargs))
    return [p for p in model.parameters() if p.requires_grad]


# ---------------------------------------------------------------------------- from the data
_AUTO = "auto"


def resolve_data_fields(recipe: dict, dataset: Any, log: Callable[[str], None] | None = None) -> dict:
    """Replace ``auto`` values that the training data decides, in ``recipe`` itself; return them.

    * ``num_classes: auto`` (in ``model.kwargs`` or a surgery op): the dataset's number of classes.
    * ``in_channels: auto`` (``model.kwargs``): the channels of a sample.
    * ``in_features: auto`` (``model.kwargs``): what the model's first ``Linear`` receives, found by a
      dry run on the meta device (no memory, no weights, RNG untouched): the model is built with a
      placeholder width and one sample's shape goes through it until that layer.

    The recipe then holds the numbers (``recipe.yaml``, the checkpoint), so ``evaluate``,
    ``predict`` and a resume rebuild the same model without the data.
    """
    log = log or (lambda s: None)
    kwargs = recipe["model"]["kwargs"]
    found: dict[str, int] = {}
    n_classes = len(dataset.classes)
    if kwargs.get("num_classes") == _AUTO:
        kwargs["num_classes"] = found["model.kwargs.num_classes"] = n_classes
    for i, op in enumerate(recipe["surgery"] or []):
        if isinstance(op, dict) and op.get("num_classes") == _AUTO:
            op["num_classes"] = found[f"surgery[{i}].num_classes"] = n_classes
    if _AUTO in (kwargs.get("in_channels"), kwargs.get("in_features")):
        if not len(dataset):
            raise RecipeError(
                "recipe field 'model.kwargs': 'auto' sizes need training data, and there is none"
            )
        x = dataset[0][0]
        if kwargs.get("in_channels") == _AUTO:
            kwargs["in_channels"] = found["model.kwargs.in_channels"] = int(x.shape[0])
        if kwargs.get("in_features") == _AUTO:
            kwargs["in_features"] = found["model.kwargs.in_features"] = _infer_in_features(recipe, x)
    for where, value in found.items():
        log(f"model: {where} auto -> {value} (from the training data)")
    return found


class _Found(Exception):
    pass


_PLACEHOLDER = 999_983  # a width no real layer has: marks the layer in_features sets


def _infer_in_features(recipe: dict, sample: Any) -> int:
    import torch

    field = "model.kwargs.in_features"
    if recipe["model"]["name"] is None:
        raise RecipeError(f"recipe field {field!r}: 'auto' works for zoo models (model.name), not specs")
    from torchsmith.zoo import create_model

    kwargs = {k: v for k, v in recipe["model"]["kwargs"].items()}
    kwargs["in_features"] = _PLACEHOLDER
    if isinstance(kwargs.get("num_classes"), str):
        kwargs["num_classes"] = 2
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        model = _call(field, create_model, recipe["model"]["name"], **kwargs)
        seen: list[int] = []

        def grab(module: Any, args: tuple) -> None:
            seen.append(int(args[0].shape[-1]))
            raise _Found

        hooks = [
            m.register_forward_pre_hook(grab)
            for m in model.modules()
            if getattr(m, "in_features", None) == _PLACEHOLDER
        ]
        if not hooks:
            raise RecipeError(
                f"recipe field {field!r}: 'auto' needs a model whose in_features argument sets its first "
                f"Linear layer; {recipe['model']['name']} has none (set the number)"
            )
        try:
            model.eval()(sample.unsqueeze(0).to("meta"))
        except _Found:
            pass
        except Exception as e:
            raise RecipeError(
                f"recipe field {field!r}: 'auto' could not run a sample of shape {tuple(sample.shape)} "
                f"through {recipe['model']['name']} on the meta device ({type(e).__name__}: {e}); set it"
            ) from None
    if not seen:
        raise RecipeError(
            f"recipe field {field!r}: 'auto': the sample never reached the layer it sizes; set it"
        )
    return seen[0]
