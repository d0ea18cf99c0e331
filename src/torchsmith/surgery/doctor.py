"""Find the mistakes that plain PyTorch lets pass silently (seed traps 1, 3, 7 and 11).

* trap 1: ``model.state_dict = loaded`` assigned a dict and loaded nothing;
* trap 3: attributes that disagree with the weights (``fc.out_features = 20`` on a 1000×2048 weight);
* trap 7: layers with parameters the output does not depend on: never called (an ``fc1`` defined and
  forgotten), or called with the result dropped (found by tracing which parameters reach the output);
* trap 11: a classifier that ends in softmax, to be trained with ``CrossEntropyLoss`` (softmax twice).

Trap 7 and 11 come from one sample forward pass on the meta device (no compute, real weights
untouched), in training mode so that training-only branches count as used.

>>> import torch.nn as nn
>>> from torchsmith.surgery import doctor
>>> net = nn.Sequential(nn.Linear(4, 3), nn.Softmax(dim=1))
>>> [f.trap for f in doctor(net)]
[11]
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch.nn as nn

from torchsmith.errors import SurgeryError
from torchsmith.surgery._dryrun import dry_run

__all__ = ["Finding", "doctor"]


@dataclass(frozen=True)
class Finding:
    """One problem found: the seed trap number, where, and what to do."""

    trap: int
    path: str
    message: str

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        return f"trap {self.trap} at {self.path or '(model)'}: {self.message}"


def _trap1(model: nn.Module) -> list[Finding]:
    out = []
    for path, m in model.named_modules():
        shadow = vars(m).get("state_dict")
        if shadow is not None:
            out.append(
                Finding(
                    1,
                    path,
                    (
                        f"state_dict was replaced by a {type(shadow).__name__} (an assignment such as "
                        "'model.state_dict = loaded'); nothing was loaded. Use model.load_state_dict(loaded) "
                        "and 'del model.state_dict'"
                    ),
                )
            )
    return out


def _check(path: str, m: nn.Module, attr: str, found: Any, expected: Any, what: str) -> Finding | None:
    if found == expected:
        return None
    return Finding(
        3,
        path,
        (
            f"{type(m).__name__}.{attr} is {found!r} but {what} says {expected!r}: changing the attribute "
            "does not change the layer; replace the layer instead (torchsmith.surgery.set_num_classes / "
            "replace_module)"
        ),
    )


def _trap3(model: nn.Module) -> list[Finding]:
    out: list[Finding | None] = []
    for path, m in model.named_modules():
        w = getattr(m, "weight", None)
        shape = tuple(w.shape) if hasattr(w, "shape") and not _is_lazy(w) else None
        if isinstance(m, nn.Linear) and shape and len(shape) == 2:
            out.append(_check(path, m, "out_features", m.out_features, shape[0], f"its weight {list(shape)}"))
            out.append(_check(path, m, "in_features", m.in_features, shape[1], f"its weight {list(shape)}"))
        elif isinstance(m, nn.modules.conv._ConvNd) and shape:
            transposed = isinstance(m, nn.modules.conv._ConvTransposeNd)
            out_c, in_c = (shape[1] * m.groups, shape[0]) if transposed else (shape[0], shape[1] * m.groups)
            out.append(_check(path, m, "out_channels", m.out_channels, out_c, f"its weight {list(shape)}"))
            out.append(_check(path, m, "in_channels", m.in_channels, in_c, f"its weight {list(shape)}"))
            out.append(
                _check(path, m, "kernel_size", tuple(m.kernel_size), shape[2:], f"its weight {list(shape)}")
            )
        elif isinstance(m, nn.modules.batchnorm._NormBase):
            ref = m.weight if m.weight is not None else m.running_mean
            if ref is not None and not _is_lazy(ref):
                out.append(
                    _check(
                        path,
                        m,
                        "num_features",
                        m.num_features,
                        ref.shape[0],
                        f"its {'weight' if m.weight is not None else 'running_mean'}",
                    )
                )
        elif isinstance(m, nn.Embedding) and shape:
            out.append(
                _check(path, m, "num_embeddings", m.num_embeddings, shape[0], f"its weight {list(shape)}")
            )
            out.append(
                _check(path, m, "embedding_dim", m.embedding_dim, shape[1], f"its weight {list(shape)}")
            )
        elif isinstance(m, nn.GroupNorm) and m.weight is not None:
            out.append(_check(path, m, "num_channels", m.num_channels, m.weight.shape[0], "its weight"))
        elif isinstance(m, nn.LayerNorm) and m.weight is not None:
            out.append(
                _check(
                    path,
                    m,
                    "normalized_shape",
                    tuple(m.normalized_shape),
                    tuple(m.weight.shape),
                    "its weight",
                )
            )
    return [f for f in out if f is not None]


def _is_lazy(t: Any) -> bool:
    return isinstance(t, nn.parameter.UninitializedTensorMixin)


def _tensor_output(out: Any) -> bool:
    from torchsmith.surgery._dryrun import _tensors

    return bool(_tensors(out))


def _trap7_11(model: nn.Module, input_shape, example_inputs) -> list[Finding]:
    # Training-mode batch norm needs 2 samples in a guessed input.
    out = []
    try:
        run = dry_run(model, input_shape, example_inputs, train=True, min_batch=2)
    except SurgeryError as train_error:
        # Detectors need targets in training mode: the eval-mode pass shows the same parameters
        # (training-only branches such as aux heads are then not seen, and a warning says so).
        try:
            run = dry_run(model, input_shape, example_inputs, train=False, min_batch=2)
        except SurgeryError:
            raise train_error from None
        warnings.warn(
            f"doctor: the training-mode sample pass of {type(model).__name__} failed (a detector needs "
            "targets?), so traps 7 and 11 were checked in eval mode: layers used only in training are "
            "not judged",
            stacklevel=3,
        )
    modules = dict(model.named_modules())

    # Without a tensor in the output there is nothing to trace back from: judge by use alone.
    reach = run.output_params if _tensor_output(run.output) else run.used_params

    def params_of(path: str) -> list[str]:
        return [f"{path}.{n}" if path else n for n, _ in modules[path].named_parameters()]

    def ineffective(path: str) -> bool:  # has parameters, and the output depends on none of them
        names = params_of(path)
        return bool(names) and not any(n in reach for n in names)

    # Report the outermost such modules only: their children are ineffective too.
    for path in (p for p in modules if p and ineffective(p)):
        parent = path.rpartition(".")[0]
        if parent and ineffective(parent):
            continue
        m = modules[path]
        n = sum(p.numel() for p in m.parameters())
        if not run.calls.get(path):
            how = "is never called in a forward pass"
        elif not any(name in run.used_params for name in params_of(path)):
            how = "is called but its parameters are never used in a forward pass"
        else:
            how = "is called, but its result never reaches the model's output (computed and dropped)"
        out.append(
            Finding(
                7,
                path,
                f"{type(m).__name__} with {n:,} parameters {how}, so it cannot affect the output "
                "(defined in __init__ and forgotten in forward, or its result not returned?)",
            )
        )
    modules_by_path = modules
    if run.output_func in ("softmax", "Softmax"):
        last = next(
            (p for p in reversed(run.order) if p and isinstance(modules_by_path.get(p), nn.Softmax)), ""
        )
        out.append(
            Finding(
                11,
                last,
                "the model's output comes from softmax; CrossEntropyLoss applies log-softmax itself, so "
                "training with it applies softmax twice. Return logits (remove the Softmax) or use NLLLoss "
                "on log-probabilities (LogSoftmax)",
            )
        )
    return out


def doctor(
    model: nn.Module,
    input_shape: Sequence[int] | None = None,
    example_inputs: Any = None,
    *,
    forward: bool = True,
) -> list[Finding]:
    """Check ``model`` for seed traps 1, 3, 7 and 11; an empty list means nothing was found.

    ``input_shape``/``example_inputs`` give the sample input (guessed from the model when omitted);
    ``forward=False`` skips the checks that need a forward pass (traps 7 and 11).
    """
    if not isinstance(model, nn.Module):
        raise SurgeryError(f"doctor: expected an nn.Module, got {type(model).__name__}")
    from torchsmith._modules import unwrap_model

    model = unwrap_model(model)
    findings = _trap1(model) + _trap3(model)
    if forward:
        findings += _trap7_11(model, tuple(input_shape) if input_shape else None, example_inputs)
    return findings
