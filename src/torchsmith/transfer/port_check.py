"""The numerical check after a structure port: the two models must compute the same function.

A structure match pairs tensors by position and shape; shapes can agree while the meaning differs
(two branches swapped, a transposed weight of a square layer). So after a port both models run on
the same random input, in eval mode without gradients, and the port is refused when their outputs
differ, whatever the matcher believed. When the classifier was not ported (another number of
classes) the inputs of the two classifiers are compared instead.

>>> import torch, torch.nn as nn
>>> a, b = nn.Linear(3, 2), nn.Linear(3, 2)
>>> b.load_state_dict(a.state_dict())
<All keys matched successfully>
>>> compare_outputs(b, a, [torch.randn(4, 3)]).max_rel_diff
0.0
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from torchsmith.errors import TransferError

__all__ = ["TOLERANCE", "PortCheck", "check_port", "compare_outputs"]

#: Largest accepted ``max|target - source| / max|source|``: float32 rounding of a reordered sum is
#: ~1e-7 relative; a wrong pairing is off by the size of the values.
TOLERANCE = 1e-4


@dataclass
class PortCheck:
    """What was compared (``what``), on which input shape, and the largest relative difference."""

    what: str
    input_shape: tuple
    max_rel_diff: float
    scale: float = 1.0  # max |source value|: 0 means the comparison proved nothing

    def describe(self) -> str:
        return (
            f"numerical check: {self.what} on a random input {tuple(self.input_shape)} agree "
            f"(max relative difference {self.max_rel_diff:.1e})"
        )


def _primary(out: Any) -> Any:
    """The tensor a model's output stands for: itself, ``logits``, or the first tensor inside."""
    import torch

    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, dict):
        if isinstance(out.get("logits"), torch.Tensor):
            return out["logits"]
        out = list(out.values())
    if isinstance(out, (list, tuple)):
        for item in out:
            t = _primary(item)
            if t is not None:
                return t
    return None


def _call(model: Any, x: Any) -> Any:
    if isinstance(x, dict):
        return model(**x)
    if isinstance(x, (tuple, list)):
        return model(*x)
    return model(x)


def _run(model: Any, x: Any, tap: str | None, values: dict[str, Any] | None = None) -> Any:
    """Run ``model`` on ``x`` (eval, no grad, flags restored); with ``tap``, return that module's input.

    ``values`` (model key -> tensor) stand in for the model's own tensors during this run only
    (``torch.func.functional_call``): the ported model is run without being written to.
    """
    import torch

    caught: list[Any] = []
    handle = None
    if tap is not None:
        module = model.get_submodule(tap)
        handle = module.register_forward_pre_hook(
            lambda _m, args: caught.append(args[0]) if not caught else None
        )
    flags = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.no_grad():
            if values is None:
                out = _call(model, x)
            else:
                args = () if isinstance(x, dict) else tuple(x) if isinstance(x, (tuple, list)) else (x,)
                kwargs = x if isinstance(x, dict) else {}
                out = torch.func.functional_call(model, values, args, kwargs)
    finally:
        if handle is not None:
            handle.remove()
        for m, flag in flags.items():
            m.training = flag
    return caught[0] if tap is not None and caught else _primary(out)


def compare_outputs(
    target: Any,
    source: Any,
    inputs: Sequence[Any],
    *,
    target_tap: str | None = None,
    source_tap: str | None = None,
    known: Any = None,
    target_values: dict[str, Any] | None = None,
) -> PortCheck:
    """Run both models on the first of ``inputs`` both accept and compare their outputs.

    With ``target_tap``/``source_tap`` (module paths) the inputs of those modules are compared
    instead (a classifier that was not ported). ``known``: the source's output on ``inputs[0]``
    when it has already run on it. ``target_values``: tensors the target runs with in place of its
    own (the port, not yet written into it). Raises :class:`~torchsmith.errors.TransferError`
    when the results differ by more than :data:`TOLERANCE` relative, or cannot be compared.
    """
    import torch

    last_error = ""
    for x in inputs:
        try:
            got = _run(target, x, target_tap, target_values)
            want = _primary(known) if known is not None else _run(source, x, source_tap)
        except Exception as e:  # the next candidate input may fit
            last_error = f"{type(e).__name__}: {e}"
            continue
        what = "outputs" if target_tap is None else f"inputs of {target_tap!r} and {source_tap!r}"
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else ()
        if not isinstance(got, torch.Tensor) or not isinstance(want, torch.Tensor):
            raise TransferError(f"port refused: cannot compare the two models' {what} (not tensors)")
        if got.shape != want.shape and [d for d in got.shape if d != 1] == [d for d in want.shape if d != 1]:
            got = got.reshape(want.shape)  # (n, c) vs (n, c, 1, 1): the same values
        if got.shape != want.shape:
            raise TransferError(
                f"port refused: after the port the two models' {what} have different shapes "
                f"{tuple(got.shape)} vs {tuple(want.shape)} on an input {shape}"
            )
        got, want = got.detach().double().cpu(), want.detach().double().cpu()
        scale = want.abs().max().item() if want.numel() else 0.0
        diff = (got - want).abs().max().item() if want.numel() else 0.0
        rel = diff / scale if scale > 0 else diff
        if not rel <= TOLERANCE:  # NaN counts as a difference
            raise TransferError(
                f"port refused: the ported model's {what} differ from the source's on the same random "
                f"input {shape} (max relative difference {rel:.3g} > {TOLERANCE:g}), so the tensors "
                "were paired wrongly although their shapes agree; nothing was loaded. "
                "Use match='name' with rename rules to say which tensor is which"
            )
        return PortCheck(what, shape, rel, scale)
    raise TransferError(
        "port refused: could not run both models on one input to check the port numerically"
        + (f" ({last_error})" if last_error else "")
        + "; pass example_input=..."
    )


def check_port(
    target: Any,
    source: Any,
    report: Any,
    example_input: Any = None,
    source_run: tuple = (None, None),
    idle: Sequence[str] = (),
    target_values: dict[str, Any] | None = None,
) -> PortCheck | str:
    """Check a structure port of ``target`` against ``source`` (see the module doc).

    ``source_run``: ``(input, output)`` of a source run already made (the dataflow trace), reused
    so the source does not run twice. ``idle``: model keys the eval forward never uses (they need
    not be ported for the comparison to mean something). ``target_values``: the ported tensors by
    model key, when the port is checked before it is written (the target then runs with them in
    place of its own, see :func:`compare_outputs`). Returns the :class:`PortCheck`, or a
    sentence saying why no comparison is meaningful (input channels adapted, tensors outside the
    classifier not ported). Raises :class:`~torchsmith.errors.TransferError` when the models disagree.
    """
    from torchsmith.transfer.structure import _example_inputs

    if any(str(e.get("how", "")).startswith("input channels") for e in report.adapted):
        return "not checked numerically: the input layer was adapted to other input channels"
    not_ported = [e["key"] for e in report.missing + report.skipped_shape + report.adapted]
    params = {name for name, _ in target.named_parameters()}
    idle = set(idle)  # an aux head that never runs in eval cannot change the outputs
    not_ported = [k for k in not_ported if k in params and k not in idle]
    target_tap = source_tap = None
    if not_ported:
        paths = {k.rpartition(".")[0] for k in not_ported}
        by_target = {m["target"]: m["source"] for m in report.mapping}
        head = report.mapping[-1]["target"] if report.mapping else None
        if paths != {head} or head not in by_target:
            return (
                f"not checked numerically: {len(not_ported)} model parameters were not ported "
                f"(first: {not_ported[0]!r})"
            )
        target_tap, source_tap = head, by_target[head]
    run_input, run_output = source_run
    if run_input is not None and target_tap is None:
        inputs, known = [run_input], run_output
    else:
        inputs, known = ([example_input] if example_input is not None else _example_inputs(target)), None
    result = compare_outputs(
        target,
        source,
        inputs,
        target_tap=target_tap,
        source_tap=source_tap,
        known=known,
        target_values=target_values,
    )
    if result.scale == 0 and report.mapping and target_tap is None:
        # All-zero outputs (a zero-initialised head) prove nothing: compare the head's inputs.
        last = report.mapping[-1]
        if "+" not in last["target"] + last["source"]:
            result = compare_outputs(
                target,
                source,
                inputs,
                target_tap=last["target"],
                source_tap=last["source"],
                target_values=target_values,
            )
    if result.scale == 0:
        return "not checked numerically: the source computes all zeros on a random input"
    return result
