"""Small facts about modules that several concerns need: unwrapping wrappers, spotting trap 1."""

from __future__ import annotations

from typing import Any

from torchsmith.errors import InputError

__all__ = ["check_state_dict_intact", "unwrap_model", "wrapper_chain"]

# Attributes through which wrappers expose the model they wrap:
# DataParallel / DistributedDataParallel / FSDP(1) -> .module, torch.compile's OptimizedModule -> ._orig_mod
_WRAPPER_ATTRS = ("_orig_mod", "module")


def wrapper_chain(model: Any) -> list[str]:
    """Names of the wrappers around ``model``, outermost first: ``["OptimizedModule", "DataParallel"]``."""
    chain = []
    while True:
        inner = _inner(model)
        if inner is None:
            return chain
        chain.append(type(model).__name__)
        model = inner


def _inner(model: Any) -> Any:
    import torch.nn as nn

    name = type(model).__name__
    if name == "OptimizedModule" and isinstance(getattr(model, "_orig_mod", None), nn.Module):
        return model._orig_mod
    if name in ("DataParallel", "DistributedDataParallel", "FullyShardedDataParallel") and isinstance(
        getattr(model, "module", None), nn.Module
    ):
        return model.module
    return None


def unwrap_model(model: Any) -> Any:
    """The plain model inside DataParallel, DistributedDataParallel, FSDP(1) and ``torch.compile`` wrappers.

    >>> import torch.nn as nn
    >>> unwrap_model(nn.DataParallel(nn.Linear(2, 2))).__class__.__name__
    'Linear'
    """
    while (inner := _inner(model)) is not None:
        model = inner
    return model


def check_state_dict_intact(model: Any, what: str = "model") -> None:
    """Raise if ``model.state_dict`` was replaced by assignment (seed trap 1).

    ``model.state_dict = loaded_dict`` sets an attribute and loads nothing; afterwards the model
    still holds its old weights while ``model.state_dict`` looks like the new ones.
    """
    for m in (model, unwrap_model(model)):
        shadow = vars(m).get("state_dict")
        if shadow is not None:
            raise InputError(
                f"{what}.state_dict was replaced by a {type(shadow).__name__} (an assignment such as "
                f"'model.state_dict = loaded_dict'), which loads nothing: the weights are unchanged. "
                f"Use model.load_state_dict(loaded_dict) or torchsmith.load_weights(model, loaded_dict), "
                f"and remove the attribute with 'del model.state_dict'."
            )
