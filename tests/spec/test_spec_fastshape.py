"""spec/fastshape.py: each shape formula agrees with torch's meta kernels and never accepts what they refuse.

Random layer arguments and input shapes (valid and invalid, seeded) are run both ways: when torch
raises, the formula must answer None (so torch's own error is what the user sees); when torch gives a
tensor, the formula gives None or a tensor of the same shape and dtype.
"""

# ruff: noqa: B023  (the case generators' lambdas are called before the next iteration)
from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from torchsmith.spec.fastshape import module_output, op_output
from torchsmith.spec.graph import OPS

ROOT = Path(__file__).resolve().parents[2]


def meta(*shape, dtype=torch.float32):
    return torch.empty(shape, dtype=dtype, device="meta")


def _agree(fast, run):
    try:
        real = run()
    except Exception:
        assert fast is None, "the formula accepted what torch refuses"
        return "refused"
    if fast is None:
        return "fallback"
    assert tuple(fast.shape) == tuple(real.shape) and fast.dtype == real.dtype, (fast.shape, real.shape)
    return "same"


def _check_module(make, x):
    try:
        with torch.device("meta"):
            m = make()
    except Exception:
        return None
    m.eval()
    return _agree(module_output(m, [x]), lambda: m(x))


def _shape(rng, n, lo=1, hi=9):
    return [rng.randint(lo, hi) for _ in range(n)]


def _layer_cases(rng):
    """(factory, input) pairs: about half are inputs the layer refuses."""
    for _ in range(120):
        n = rng.choice([1, 2, 3])
        conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[n]
        convt = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}[n]
        c, o, k, s, p, d = rng.randint(1, 4), rng.randint(1, 4), rng.randint(1, 4), rng.randint(1, 3), 0, 1
        p, d = rng.randint(0, 2), rng.randint(1, 2)
        g = rng.choice([1, 1, 2])
        ci = c * g if rng.random() < 0.8 else c * g + 1
        padding = rng.choice([p, p, "same", "valid"])
        x = meta(
            rng.randint(1, 3),
            ci,
            *_shape(rng, n, 1, 7),
            dtype=rng.choice([torch.float32] * 5 + [torch.float64]),
        )
        stride = 1 if padding == "same" else s
        yield (lambda: conv(c * g, o * g, k, stride=stride, padding=padding, dilation=d, groups=g)), x
        op = rng.randint(0, 2)
        yield (
            (lambda: convt(c * g, o * g, k, stride=s, padding=p, output_padding=op, dilation=d, groups=g)),
            x,
        )
        pool = rng.choice(
            [
                lambda: {1: nn.MaxPool1d, 2: nn.MaxPool2d, 3: nn.MaxPool3d}[n](
                    k, stride=rng.choice([None, s]), padding=p, dilation=d, ceil_mode=rng.random() < 0.5
                ),
                lambda: {1: nn.AvgPool1d, 2: nn.AvgPool2d, 3: nn.AvgPool3d}[n](
                    k, stride=rng.choice([None, s]), padding=p, ceil_mode=rng.random() < 0.5
                ),
            ]
        )
        yield pool, x
        size = tuple(rng.choice([None, rng.randint(1, 5)]) for _ in range(n))
        yield (
            (lambda: {1: nn.AdaptiveAvgPool1d, 2: nn.AdaptiveAvgPool2d, 3: nn.AdaptiveAvgPool3d}[n](size)),
            x,
        )
        yield (
            (lambda: {1: nn.AdaptiveMaxPool1d, 2: nn.AdaptiveMaxPool2d, 3: nn.AdaptiveMaxPool3d}[n](size)),
            x,
        )
        bn = rng.choice([nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d])
        yield (lambda: bn(ci if rng.random() < 0.7 else ci + 1)), meta(*_shape(rng, rng.randint(1, 5), 1, 4))
        y = meta(*_shape(rng, rng.randint(1, 4), 1, 6))
        yield (lambda: nn.Linear(y.shape[-1] if rng.random() < 0.7 else 3, 5)), y
        yield (
            (lambda: nn.LayerNorm(list(y.shape[-rng.randint(1, y.dim()) :]) if rng.random() < 0.7 else [3])),
            y,
        )
        yield (lambda: nn.GroupNorm(rng.choice([1, 2]), y.shape[1] if y.dim() > 1 else 2)), y
        yield (lambda: nn.Softmax(dim=rng.randint(-4, 3))), y
        yield (lambda: nn.Flatten(rng.randint(-3, 2), rng.randint(-2, 3))), y
        yield rng.choice([nn.ReLU, nn.GELU, nn.SiLU, nn.Hardswish, nn.Identity, nn.Dropout, nn.LeakyReLU]), y
    yield (lambda: nn.GELU(approximate="bad")), meta(2, 3)
    yield (lambda: nn.Linear(4, 2)), meta(2, 4, dtype=torch.int64)
    yield (
        (lambda: nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten())),
        meta(2, 3, 8, 8),
    )
    yield (lambda: nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(5))), meta(2, 3, 8, 8)


def test_layer_formulas_agree_with_torch():
    seen = {"same": 0, "refused": 0, "fallback": 0}
    for make, x in _layer_cases(random.Random(0)):
        result = _check_module(make, x)
        if result:
            seen[result] += 1
    assert seen["same"] > 300 and seen["refused"] > 100, seen  # both sides were exercised


def test_blocks_that_keep_sequential_forward_are_known():
    from torchsmith.blocks import ConvNormAct

    with torch.device("meta"):
        block = ConvNormAct(3, 8, 3, stride=2).eval()
    out = module_output(block, [meta(2, 3, 16, 16)])
    assert out is not None and out.shape == block(meta(2, 3, 16, 16)).shape


def test_subclasses_with_their_own_forward_are_not_guessed():
    class Doubled(nn.Linear):
        def forward(self, x):
            return torch.cat([super().forward(x)] * 2, 1)

    with torch.device("meta"):
        assert module_output(Doubled(4, 2), [meta(1, 4)]) is None


def _op_cases(rng):
    for _ in range(300):
        a = _shape(rng, rng.randint(1, 4), 1, 4)
        b = list(a)
        if rng.random() < 0.5:
            b[rng.randrange(len(b))] = rng.choice([1, 2, 3])
        if rng.random() < 0.3:
            b = b[rng.randint(0, len(b) - 1) :]
        da = torch.float32
        db = rng.choice([torch.float32] * 6 + [torch.float64])
        xa, xb = meta(*a, dtype=da), meta(*b, dtype=db)
        yield rng.choice(["add", "multiply", "subtract"]), [xa, xb], {}
        yield rng.choice(["concat", "cat"]), [xa, xb], {"dim": rng.randint(-4, 3)}
        yield rng.choice(["abs", "relu", "sigmoid"]), [xa], {}
        yield "softmax", [xa], {"dim": rng.randint(-4, 3)}
        dim = rng.choice([None, rng.randint(-4, 3), [rng.randint(-3, 2), rng.randint(-3, 2)]])
        yield "mean", [xa], {"dim": dim, "keepdim": rng.random() < 0.5}
        yield "matmul", [xa, meta(*_shape(rng, rng.randint(1, 4), 1, 4), dtype=db)], {}


def test_op_formulas_agree_with_torch():
    seen = {"same": 0, "refused": 0, "fallback": 0}
    for op, xs, kw in _op_cases(random.Random(1)):
        seen[_agree(op_output(op, xs, kw), lambda: OPS[op].fn(xs, **kw))] += 1
    assert seen["same"] > 800 and seen["refused"] > 200, seen


@pytest.mark.timeout(120)
def test_building_an_mlp_spec_imports_neither_dynamo_nor_sympy():
    """The reason for the formulas: the CLI's build of s1_mlp.yaml must not pay ~1 s of torch imports."""
    code = (
        "import sys\nfrom torchsmith.cli.main import main\n"
        f"assert main(['build', {str(ROOT / 'examples/specs/s1_mlp.yaml')!r}]) == 0\n"
        "print(sorted(m for m in ('torch._dynamo', 'sympy', 'torchvision', 'timm') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=110
    )
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout
