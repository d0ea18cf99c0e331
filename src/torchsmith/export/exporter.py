"""Export a model for deployment (ONNX or a ``torch.export`` ``.pt2`` archive), proven equal to PyTorch.

An export that runs is not yet an export that is right: tolerances drift, a batch size gets baked in,
preprocessing and class names are lost. So ``export`` writes the file under a temporary name, runs the
*written file* (ONNX Runtime for ONNX, the reloaded program for ``.pt2``) on random inputs at two or
more batch sizes, compares every output with the PyTorch model, and only then gives it its name. A
difference above tolerance, or a model that cannot be exported, is refused and no file is left behind.

What a deployment needs travels inside the file: input and output names and shapes, preprocessing,
class names and provenance, as ONNX ``metadata_props`` (``torchsmith.*`` keys, JSON values) or as the
``torchsmith.json`` extra file of the ``.pt2`` archive.

>>> import torchsmith
>>> model = torchsmith.build_model({"input_shape": [1, 8], "chain": [{"type": "Linear", "out_features": 3}]})
>>> report = torchsmith.export(model, "tiny.onnx", dynamic_batch=True)   # doctest: +SKIP
>>> report.ok, report.batch_sizes                                        # doctest: +SKIP
(True, [1, 3])
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from torchsmith.errors import InputError, TorchsmithError

__all__ = ["FORMATS", "ExportError", "ExportReport", "OutputCheck", "export"]

FORMATS = {".onnx": "onnx", ".pt2": "pt2"}
_MAX_BATCH = 4096
_ONNX_LIMIT = 2 << 30  # protobuf's limit for one file; larger models need external data (not written here)


class ExportError(InputError):
    """The model cannot be exported, or the exported file does not compute what the model computes."""


@dataclass(frozen=True)
class OutputCheck:
    """One output at one batch size: the exported file's values against PyTorch's."""

    batch: int
    name: str
    shape: list[int]
    max_abs: float
    max_rel: float
    ok: bool


@dataclass(frozen=True)
class ExportReport:
    """What was written and the proof that it computes what the model computes."""

    path: str
    format: str
    inputs: dict[str, dict]  # name -> {"shape": [...] with "batch" where dynamic, "dtype": ...}
    outputs: list[str]
    dynamic_batch: bool
    batch_sizes: list[int]
    atol: float
    rtol: float
    checks: list[OutputCheck] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}

    def summary(self) -> str:
        worst = max(self.checks, key=lambda c: c.max_abs)
        batch = "dynamic" if self.dynamic_batch else "fixed"
        lines = [
            f"exported {self.format} to {self.path} (batch {batch})",
            f"proven equal at batch sizes {self.batch_sizes}: largest difference {worst.max_abs:.3g} abs, "
            f"{worst.max_rel:.3g} rel (output {worst.name}); tolerance atol={self.atol:g} rtol={self.rtol:g}",
        ]
        if self.metadata.get("classes"):
            lines.append(f"class names: {len(self.metadata['classes'])} recorded")
        if self.metadata.get("preprocessing"):
            lines.append("preprocessing recorded")
        return "\n".join(lines)


def export(
    source: Any,
    path: str | os.PathLike,
    *,
    format: str | None = None,
    input_shape: Any = None,
    dynamic_batch: bool = False,
    opset: int | None = None,
    atol: float = 1e-4,
    rtol: float = 1e-3,
    overwrite: bool = False,
    seed: int = 0,
) -> ExportReport:
    """Export ``source`` to ``path`` and prove the written file equal to the PyTorch model.

    ``source`` is an ``nn.Module``, a file written by ``torchsmith.save``, a training checkpoint, a
    spec file or a model name. ``format`` is ``"onnx"`` or ``"pt2"`` (default: from the suffix).
    ``input_shape`` (batch first; a dict per input name for several inputs) overrides what the
    source records. With ``dynamic_batch`` the batch dimension stays symbolic and the file is checked
    at batch sizes 1 and 3 besides the given one; otherwise it is checked at the fixed shape with two
    random draws. An output whose largest difference exceeds ``atol + rtol * max|reference|`` makes
    the export fail with :class:`ExportError` and nothing is left at ``path``.
    """
    import torch

    from torchsmith._io import atomic_path
    from torchsmith.export.sources import resolve_source

    path = Path(path)
    fmt = _format(path, format)
    if path.exists() and not overwrite:
        raise InputError(f"export: {path} exists; pass overwrite=True (--overwrite) to replace it")
    src = resolve_source(source, input_shape)
    names = src.input_names
    batch = _batch_of(src.inputs)
    if dynamic_batch and batch == 1:
        batch = 2  # torch.export specialises a dimension of size 1: trace at 2, check at 1 too
    gen = torch.Generator().manual_seed(seed)
    example = tuple(_sample(src.inputs[n], batch, gen) for n in names)
    with torch.no_grad():
        reference = _flat_outputs(src.model(*example))
    out_names = [n for n, _ in reference]
    sizes = sorted({1, 3, batch}) if dynamic_batch else [batch, batch]
    metadata = {
        "inputs": {n: {"shape": _shape_text(src.inputs[n][0], dynamic_batch), "dtype": src.inputs[n][1]}
                   for n in names},
        "outputs": out_names,
        "preprocessing": src.preprocessing,
        "classes": src.classes,
        "provenance": src.provenance,
        "origin": src.origin,
        "torch": torch.__version__,
    }  # fmt: skip
    with atomic_path(path) as tmp:
        if fmt == "onnx":
            _export_onnx(src.model, example, names, out_names, dynamic_batch, opset, tmp, metadata)
            run = _onnx_runner(tmp, names)
        else:
            _export_pt2(src.model, example, names, dynamic_batch, tmp, metadata)
            run = _pt2_runner(tmp)
        checks = _prove(src, run, sizes, gen, atol, rtol)
        bad = [c for c in checks if not c.ok]
        if bad:
            raise ExportError(_mismatch_message(path, bad, atol, rtol))
    return ExportReport(
        str(path), fmt, metadata["inputs"], out_names, dynamic_batch, sorted(set(sizes)), atol, rtol,
        checks, metadata,
    )  # fmt: skip


def _format(path: Path, format: str | None) -> str:
    if format is not None:
        if format not in FORMATS.values():
            raise InputError(f"export: unknown format {format!r}; expected one of: onnx, pt2")
        return format
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise InputError(
            f"export: {path}: cannot tell the format from the suffix; use .onnx or .pt2 or format="
        )
    return fmt


def _batch_of(inputs: dict) -> int:
    batches = {shape[0] for shape, _ in inputs.values()}
    if len(batches) != 1:
        raise InputError(f"export: the inputs have different batch sizes {sorted(batches)}; expected one")
    (batch,) = batches
    if not 1 <= batch <= _MAX_BATCH:
        raise InputError(f"export: batch size {batch}; expected 1 to {_MAX_BATCH}")
    return batch


def _sample(spec: tuple, batch: int, gen: Any) -> Any:
    import torch

    shape, dtype = (batch, *spec[0][1:]), spec[1]
    if dtype in ("int64", "int32"):  # token ids: small ones exist in every vocabulary
        return torch.randint(0, 2, shape, generator=gen, dtype=getattr(torch, dtype))
    if dtype == "bool":
        return torch.rand(shape, generator=gen) > 0.5
    return torch.randn(shape, generator=gen, dtype=getattr(torch, dtype))


def _flat_outputs(out: Any, prefix: str = "output") -> list[tuple[str, Any]]:
    """A model's outputs as (name, tensor) pairs in the order exporters flatten them."""
    import torch

    if isinstance(out, torch.Tensor):
        return [(prefix, out)]
    if isinstance(out, dict):
        pairs: list = []
        for k, v in out.items():
            pairs += _flat_outputs(v, str(k) if prefix == "output" else f"{prefix}.{k}")
        return pairs
    if isinstance(out, (list, tuple)):
        pairs = []
        for i, v in enumerate(out):
            pairs += _flat_outputs(v, f"{prefix}_{i}" if prefix == "output" else f"{prefix}.{i}")
        return pairs
    raise ExportError(
        f"export: the model returns a {type(out).__name__}; expected tensors (or lists/dicts of them)"
    )


def _shape_text(shape: tuple, dynamic: bool) -> list:
    return ["batch" if dynamic else shape[0], *shape[1:]]


def _dynamic_shapes(model: Any, names: list[str], dynamic: bool) -> Any:
    """Batch (dim 0) symbolic for every input, shaped as torch.export binds ``forward``'s signature
    (``forward(self, *xs)`` takes one tuple for all of them)."""
    if not dynamic:
        return None
    import inspect

    import torch

    batch = torch.export.Dim("batch", min=1, max=_MAX_BATCH)
    per_input = [{0: batch} for _ in names]
    params = list(inspect.signature(model.forward).parameters.values())
    if params and params[0].kind is inspect.Parameter.VAR_POSITIONAL:
        return (tuple(per_input),)
    return tuple(per_input)


@contextlib.contextmanager
def _quiet() -> Any:
    """The exporters print progress and warnings of their own; the report says what matters."""
    logging.disable(logging.ERROR)  # torch logs graphs and guards at WARNING while exporting
    try:
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(io.StringIO()),
            contextlib.redirect_stderr(io.StringIO()),
        ):
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(logging.NOTSET)


def _refusal(e: BaseException, fmt: str) -> ExportError:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    first = lines[0] if lines else ""
    msg = f"export: the model cannot be exported to {fmt}: {type(e).__name__}: {first[:300]}"
    at = [i for i, ln in enumerate(lines) if ln.startswith("File ")]
    if at:  # the user's line that the exporter stopped at, and its code
        msg += "\n  at " + " ".join(lines[at[-1] : at[-1] + 2])[:300]
    msg += (
        "\n  (data-dependent control flow or an op the exporter does not support; make the branch "
        "depend on shapes only, or export a model without it)"
    )
    return ExportError(msg)


def _exported_program(model: Any, example: tuple, names: list[str], dynamic: bool) -> Any:
    import torch

    try:
        with _quiet():
            return torch.export.export(model, example, dynamic_shapes=_dynamic_shapes(model, names, dynamic))
    except Exception as e:  # torch.export raises many kinds (UserError, Unsupported, guard errors)
        raise _refusal(e, "torch.export") from None


def _export_pt2(model: Any, example: tuple, names: list[str], dynamic: bool, tmp: Path, meta: dict) -> None:
    import torch

    program = _exported_program(model, example, names, dynamic)
    buffer = io.BytesIO()  # torch.export.save wants a .pt2 name; the temporary file has none
    with _quiet():
        torch.export.save(program, buffer, extra_files={"torchsmith.json": json.dumps(meta, sort_keys=True)})
    tmp.write_bytes(buffer.getvalue())


def _require_onnx() -> None:
    missing = []
    for module in ("onnx", "onnxscript", "onnxruntime"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise TorchsmithError(f"export to ONNX needs {', '.join(missing)}: pip install 'torchsmith[export]'")


def _export_onnx(
    model: Any, example: tuple, names: list[str], out_names: list[str], dynamic: bool,
    opset: int | None, tmp: Path, meta: dict,
) -> None:  # fmt: skip
    _require_onnx()
    import onnx
    import torch

    params = sum(p.numel() * p.element_size() for p in model.parameters())
    if params > _ONNX_LIMIT:
        raise ExportError(
            f"export: the model's weights take {params / 2**30:.1f} GiB; one ONNX file holds at most 2 GiB "
            "(export to .pt2 instead)"
        )
    exported = _exported_program(model, example, names, dynamic)  # refusals name the user's line
    try:
        with _quiet():
            program = torch.onnx.export(
                exported, example, dynamo=True, input_names=names, output_names=out_names,
                opset_version=opset,
            )  # fmt: skip
    except Exception as e:  # an op with no ONNX translation
        raise _refusal(e, "ONNX") from None
    proto = program.model_proto
    if dynamic:
        _name_batch_dim(proto)
    onnx.helper.set_model_props(
        proto, {f"torchsmith.{k}": json.dumps(v, sort_keys=True) for k, v in meta.items()}
    )
    onnx.save(proto, str(tmp))


def _name_batch_dim(proto: Any) -> None:
    """Call the symbolic batch dimension ``batch`` (the exporter names it after an internal symbol)."""
    graph = proto.graph
    symbols = {i.type.tensor_type.shape.dim[0].dim_param for i in graph.input if i.type.tensor_type.shape.dim}
    symbols.discard("")
    for info in [*graph.input, *graph.output, *graph.value_info]:
        for dim in info.type.tensor_type.shape.dim:
            if dim.dim_param in symbols:
                dim.dim_param = "batch"


def _onnx_runner(tmp: Path, names: list[str]) -> Any:
    import onnxruntime as ort

    session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])

    def run(inputs: tuple) -> list:
        return session.run(None, {n: x.numpy() for n, x in zip(names, inputs)})

    return run


def _pt2_runner(tmp: Path) -> Any:
    import torch

    with _quiet():  # the written bytes, read back: what a deployment will load
        program = torch.export.load(io.BytesIO(tmp.read_bytes())).module()

    def run(inputs: tuple) -> list:
        with torch.no_grad():
            return [t.numpy() for _, t in _flat_outputs(program(*inputs))]

    return run


def _prove(src: Any, run: Any, sizes: list[int], gen: Any, atol: float, rtol: float) -> list[OutputCheck]:
    """Run the written file and the model on the same random inputs; compare every output."""
    import numpy as np
    import torch

    checks = []
    for batch in sizes:
        inputs = tuple(_sample(src.inputs[n], batch, gen) for n in src.input_names)
        with torch.no_grad():
            expected = _flat_outputs(src.model(*inputs))
        try:
            got = run(inputs)
        except Exception as e:  # a batch size baked into the file fails here, not silently
            raise ExportError(
                f"export: the exported file does not run at batch size {batch}: {type(e).__name__}: "
                f"{str(e).strip().splitlines()[0][:300] if str(e).strip() else ''}"
            ) from None
        if len(got) != len(expected):
            raise ExportError(
                f"export: the exported file gives {len(got)} outputs; the model gives {len(expected)}"
            )
        for (name, ref), out in zip(expected, got):
            ref_np = ref.detach().float().numpy() if ref.is_floating_point() else ref.numpy()
            out_np = np.asarray(out)
            if ref_np.shape != out_np.shape:
                checks.append(OutputCheck(batch, name, list(out_np.shape), float("inf"), float("inf"), False))
                continue
            diff = np.abs(ref_np.astype(np.float64) - out_np.astype(np.float64))
            both_nan = np.isnan(ref_np.astype(np.float64)) & np.isnan(out_np.astype(np.float64))
            diff = np.where(both_nan, 0.0, diff)
            scale = float(np.nanmax(np.abs(ref_np))) if ref_np.size else 0.0
            max_abs = float(diff.max()) if diff.size else 0.0
            max_rel = max_abs / scale if scale > 0 else max_abs
            ok = bool(np.isfinite(max_abs)) and max_abs <= atol + rtol * scale
            checks.append(OutputCheck(batch, name, list(ref_np.shape), max_abs, max_rel, ok))
    return checks


def _mismatch_message(path: Path, bad: list[OutputCheck], atol: float, rtol: float) -> str:
    rows = "; ".join(
        f"output {c.name} at batch {c.batch}: max abs {c.max_abs:.3g}, rel {c.max_rel:.3g}"
        + ("" if c.max_abs != float("inf") else " (shape differs)")
        for c in bad[:4]
    )
    return (
        f"export: the exported file does not compute what the model computes ({rows}; tolerance "
        f"atol={atol:g} rtol={rtol:g}); nothing was written to {path}"
    )
