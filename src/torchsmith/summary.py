"""A layer table for any model: names, types, output shapes, parameters, trainable or not, totals.

torchinfo walks the model and runs the forward pass; torchsmith fixes the two things it gets wrong:

* **shared / tied parameters are counted once.** torchinfo 1.8 adds every layer's parameters, so a
  weight tied between an embedding and an output layer is counted twice (up to 2.37× too many on
  real models). Here each parameter tensor is attributed to the first row that uses it; later rows
  list it under ``shared`` instead, so the rows add up to :attr:`ModelSummary.total_params`.
* **structured outputs** (dicts and tuples, e.g. an FPN's ``OrderedDict``) get every shape, not
  only the last one.

>>> import torch.nn as nn
>>> tied = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
>>> tied[1].weight = tied[0].weight
>>> s = summarize(tied, (2, 4))
>>> s.total_params            # 16 weights (once) + 4 + 4 biases
24
>>> s.rows[2].params, s.rows[2].shared    # row "1": its weight is counted under "0.weight"
(4, ['0.weight'])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from torchsmith.errors import InputError

__all__ = [
    "ModelSummary",
    "SummaryRow",
    "parameter_count",
    "sample_input_shape",
    "summarize",
    "summarize_model",
]


@dataclass
class SummaryRow:
    """One module in the table. ``params`` counts the tensors attributed to this row (never twice)."""

    name: str  # dotted path in the model ("" for the model itself)
    type: str
    depth: int
    output_shape: Any = None  # [1, 64, 56, 56]; {"0": [...], ...}; [[...], [...]]; None if not run
    params: int = 0
    trainable_params: int = 0
    shared: list[str] = field(default_factory=list)  # used here, counted earlier (under these names)
    recursive: bool = False  # a second call of a module already listed

    @property
    def trainable(self) -> bool | str | None:
        """True / False / ``"partial"``; None when the row holds no parameters of its own."""
        if self.params == 0:
            return None
        if self.trainable_params == self.params:
            return True
        return False if self.trainable_params == 0 else "partial"


@dataclass
class ModelSummary:
    """The result of :func:`summarize`: rows plus totals that count every parameter tensor once."""

    model: str
    input_shape: Any
    rows: list[SummaryRow]
    total_params: int
    trainable_params: int
    param_bytes: int
    buffer_bytes: int
    mult_adds: int | None
    tied: dict[str, str]  # alias parameter name -> the name it is counted under

    @property
    def non_trainable_params(self) -> int:
        return self.total_params - self.trainable_params

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (what ``torchsmith summary --json`` prints)."""
        rows = []
        for row in self.rows:
            d = asdict(row)
            d["trainable"] = row.trainable
            rows.append(d)
        return {
            "model": self.model,
            "input_shape": self.input_shape,
            "rows": rows,
            "total_params": self.total_params,
            "trainable_params": self.trainable_params,
            "non_trainable_params": self.non_trainable_params,
            "param_bytes": self.param_bytes,
            "buffer_bytes": self.buffer_bytes,
            "mult_adds": self.mult_adds,
            "tied": self.tied,
        }

    def __str__(self) -> str:
        headers = ["Layer", "Type", "Output shape", "Params", "Trainable"]
        body = []
        for row in self.rows:
            label = "  " * row.depth + (row.name.rsplit(".", 1)[-1] if row.name else self.model)
            params = f"{row.params:,}" if row.params else ("(shared)" if row.shared else "--")
            if row.recursive:
                params = "(recursive)"
            trainable = {True: "yes", False: "no", "partial": "partial", None: ""}[row.trainable]
            body.append([label, row.type, _short_shape(row.output_shape), params, trainable])
        widths = [max(len(str(r[i])) for r in [headers, *body]) for i in range(len(headers))]
        right = {3}

        def line(cells: Sequence[str]) -> str:
            parts = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))]
            return "  ".join(parts).rstrip()

        rule = "=" * len(line(headers))
        out = [rule, line(headers), rule, *(line(r) for r in body), rule]
        out.append(f"Total params: {self.total_params:,}")
        out.append(f"Trainable params: {self.trainable_params:,}")
        out.append(f"Non-trainable params: {self.non_trainable_params:,}")
        mib = 2**20
        out.append(
            f"Parameter size: {self.param_bytes / mib:.2f} MiB (buffers {self.buffer_bytes / mib:.2f} MiB)"
        )
        if self.mult_adds is not None:
            out.append(f"Mult-adds: {self.mult_adds / 1e9:.3f} G")
        if self.tied:
            pairs = ", ".join(f"{a} = {b}" for a, b in self.tied.items())
            out.append(f"Shared parameters (counted once): {pairs}")
        out.append(rule)
        return "\n".join(out)


def _shape_of(value: Any) -> Any:
    import torch

    if isinstance(value, torch.Tensor):
        return list(value.shape)
    if isinstance(value, Mapping):
        return {str(k): _shape_of(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_shape_of(v) for v in value]
    return None if value is None else type(value).__name__


def _short_shape(shape: Any, limit: int = 48) -> str:
    if shape is None:
        return "--"
    if isinstance(shape, dict):
        text = " ".join(f"{k}:{_short_shape(v)}" for k, v in shape.items())
    else:
        text = str(shape).replace(" ", "") if isinstance(shape, list) else str(shape)
        text = text.replace(",", ", ") if len(text) < 24 else text
    return text if len(text) <= limit else text[: limit - 1] + "…"


def summarize(
    model: Any,
    input_shape: Sequence[int] | None = None,
    *,
    input_data: Any = None,
    depth: int = 3,
    input_size: Any = None,
) -> ModelSummary:
    """Summarise ``model``: one row per module down to ``depth``, output shapes, parameter totals.

    Give ``input_shape`` (batch first, e.g. ``(1, 3, 224, 224)``; a float tensor of that shape is fed)
    or ``input_data`` (a tensor, a tuple of positional inputs or a dict of keyword inputs) to run a
    forward pass and get output shapes; with neither, only the structure and parameters are listed.
    ``input_size`` is torchinfo's name for the same thing: one shape, or a list of shapes for a
    model with several inputs (each fed a random float tensor).
    Shared (tied) parameters are counted once. A failing forward pass raises :class:`InputError`
    naming the input shape and the model's complaint.

    >>> import torch.nn as nn
    >>> print(summarize(nn.Sequential(nn.Linear(3, 2)), (1, 3)).total_params)
    8
    """
    import torch
    import torch.nn as nn
    import torchinfo

    if not isinstance(model, nn.Module):
        raise InputError(f"summarize expects a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(depth, int) or depth < 0:
        raise InputError(f"depth must be a non-negative integer, got {depth!r}")
    if input_size is not None:
        if input_shape is not None or input_data is not None:
            raise InputError("give one of input_size, input_shape or input_data, not two")
        shapes = _input_sizes(input_size)
        if len(shapes) == 1:
            input_shape = shapes[0]
        else:
            input_data = tuple(torch.randn(shape, device=_first_device(model)) for shape in shapes)
    if input_shape is not None and input_data is not None:
        raise InputError("give input_shape or input_data, not both")
    if input_shape is not None:
        input_shape = [int(d) for d in input_shape]
        if not input_shape or any(d <= 0 for d in input_shape):
            raise InputError(f"input_shape must be positive integers, got {input_shape}")

    names = {id(m): n for n, m in model.named_modules()}
    first = next(iter(model.parameters()), None)
    device = first.device if first is not None else torch.device("cpu")
    if device.type == "meta" and (input_shape is not None or input_data is not None):
        raise InputError("a model on the meta device holds no data; summarise it without an input")

    # Our own hooks record every call's full output (dicts and tuples included), in call order.
    outputs: dict[int, list[Any]] = {}

    def hook(module: nn.Module, _inputs: Any, output: Any) -> None:
        outputs.setdefault(id(module), []).append(_shape_of(output))

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    kwargs: dict[str, Any] = {"verbose": 0, "depth": max(depth, 1), "device": device}
    if input_shape is not None:
        kwargs["input_size"] = tuple(input_shape)
        kwargs["dtypes"] = [first.dtype if first is not None and first.is_floating_point() else torch.float32]
    elif input_data is not None:
        kwargs["input_data"] = input_data
    try:
        stats = torchinfo.summary(model, **kwargs)
    except Exception as e:  # the model's forward failed on this input
        cause = e.__cause__ or e.__context__ or e
        message = " ".join(str(cause).split())[:400]
        if not isinstance(cause, InputError):  # torchsmith's own messages need no class name
            message = f"{type(cause).__name__}: {message}"
        shown = input_shape if input_shape is not None else _shape_of(input_data)
        what = f"{type(model).__name__} cannot run on an input of shape {shown}"
        raise InputError(f"{what}: {message}") from None
    finally:
        for h in handles:
            h.remove()

    infos = [li for li in stats.summary_list if li.depth <= depth]
    shown_modules = {id(li.module) for li in infos}
    seen: set[int] = set()
    pnames = {id(p): n for n, p in model.named_parameters()}
    calls: dict[int, int] = {}
    rows: list[SummaryRow] = []
    for li in infos:
        module = li.module
        call = calls.get(id(module), 0)
        calls[id(module)] = call + 1
        recorded = outputs.get(id(module), [])
        if call > 0 and not recorded:
            continue  # torchinfo repeats containers (ModuleList) each time a child is used
        row = SummaryRow(
            name=names.get(id(module), li.var_name),
            type=type(module).__name__,
            depth=li.depth,
            output_shape=recorded[call] if call < len(recorded) else None,
            recursive=call > 0,
        )
        if not row.recursive:
            for p in _attributed(module, shown_modules):
                if id(p) in seen:
                    row.shared.append(pnames.get(id(p), "?"))
                    continue
                seen.add(id(p))
                row.params += p.numel()
                row.trainable_params += p.numel() if p.requires_grad else 0
        rows.append(row)

    unique = list(model.parameters())  # parameters() yields each tensor once, however often it is tied
    tied = {}
    canonical = {id(p): n for n, p in model.named_parameters()}
    for n, p in model.named_parameters(remove_duplicate=False):
        if canonical[id(p)] != n:
            tied[n] = canonical[id(p)]
    mult_adds = int(stats.total_mult_adds) if (input_shape is not None or input_data is not None) else None
    return ModelSummary(
        model=type(model).__name__,
        input_shape=list(input_shape) if input_shape is not None else _shape_of(input_data),
        rows=rows,
        total_params=sum(p.numel() for p in unique),
        trainable_params=sum(p.numel() for p in unique if p.requires_grad),
        param_bytes=sum(p.numel() * p.element_size() for p in unique),
        buffer_bytes=sum(b.numel() * b.element_size() for b in model.buffers()),
        mult_adds=mult_adds,
        tied=tied,
    )


def _input_sizes(input_size: Any) -> list[list[int]]:
    """torchinfo's ``input_size``: ``(1, 3, 8, 8)`` or ``[(1, 3, 8, 8), (1, 4)]`` -> a list of shapes."""
    if isinstance(input_size, (list, tuple)) and input_size:
        if all(isinstance(d, (list, tuple)) for d in input_size):
            shapes = [list(s) for s in input_size]
        else:
            shapes = [list(input_size)]
        if all(
            s and all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in s) for s in shapes
        ):
            return shapes
    raise InputError(
        f"input_size must be a shape like (1, 3, 224, 224) or a list of such shapes, got {input_size!r}"
    )


def _first_device(model: Any) -> Any:
    import torch

    first = next(iter(model.parameters()), None)
    return first.device if first is not None else torch.device("cpu")


def _attributed(module: Any, shown: set[int]) -> list[Any]:
    """The module's own parameters plus those of descendants that have no row of their own."""
    params = list(module.parameters(recurse=False))
    for child in module.children():
        if id(child) not in shown:
            params += _attributed(child, shown)
    return params


def sample_input_shape(name: str) -> tuple[int, ...]:
    """A sample input shape (batch 1) for a model name: the zoo's registered one, timm's
    ``pretrained_cfg['input_size']``, or ``(1, 3, 224, 224)`` for torchvision models."""
    if name.startswith("timm:"):
        from torchsmith.zoo import create_model

        with _meta_device():
            cfg = getattr(create_model(name), "pretrained_cfg", None) or {}
        return (1, *cfg.get("input_size", (3, 224, 224)))
    if name.startswith("torchvision:"):
        return (1, 3, 224, 224)
    from torchsmith.zoo import get_entry

    return tuple(get_entry(name).input_shape)


def parameter_count(model: Any, **kwargs: Any) -> int:
    """Parameters of a model or of a model name (built on the meta device: no memory, no init time).

    Tied parameters count once. ``kwargs`` go to :func:`torchsmith.create_model` for a name.

    >>> parameter_count("resnet50")
    25557032
    """
    if isinstance(model, str):
        from torchsmith.zoo import create_model

        with _meta_device():
            model = create_model(model, **kwargs)
    return sum(p.numel() for p in model.parameters())


def summarize_model(
    name: str,
    input_shape: Sequence[int] | None = None,
    *,
    depth: int = 3,
    forward: bool = True,
    model_kwargs: Mapping[str, Any] | None = None,
) -> ModelSummary:
    """Build ``name`` (zoo, ``torchvision:`` or ``timm:``) and :func:`summarize` it.

    ``input_shape`` defaults to the model's sample input (:func:`sample_input_shape`); an input
    whose rank differs from the sample's, or on which the model fails, raises :class:`InputError`
    naming the sample shape. ``forward=False`` lists structure and parameters without running.
    ``model_kwargs`` go to :func:`torchsmith.create_model` (e.g. ``{"num_classes": 10}``).
    """
    from torchsmith.zoo import create_model

    sample = sample_input_shape(name)
    if input_shape is not None and len(input_shape) != len(sample):
        raise InputError(
            f"input shape {_csv(input_shape)} has {len(input_shape)} dimensions but {name!r} takes "
            f"{len(sample)}, like {_csv(sample)} (batch first)"
        )
    shape = None if not forward else tuple(input_shape or sample)
    model = create_model(name, **dict(model_kwargs or {}))
    try:
        return summarize(model, shape, depth=depth)
    except InputError as e:
        if shape is None:
            raise
        raise InputError(f"{e} (a valid input for {name!r} looks like {_csv(sample)})") from None


def _csv(shape: Sequence[int]) -> str:
    return ",".join(str(d) for d in shape)


def _meta_device():
    import torch

    return torch.device("meta")
