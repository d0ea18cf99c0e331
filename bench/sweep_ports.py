"""Port sweep: every pair, both directions, from the model and from its state_dict -> PASS / REFUSED / WRONG.

A port is WRONG when ``load_weights(match="structure")`` returns (the port was accepted) and the
ported model's outputs differ from the source's on a *fresh* random input (another seed and batch
than the port's own check) by more than 1e-4 relative. REFUSED is a raised ``TorchsmithError``
(its first words are kept); PASS is an accepted port whose outputs agree. WRONG must be 0.

Pairs are the named ones (issue 24: transformers ResNet/ConvNeXt/Swin/ViT <-> timm/torchvision,
ResNeXt, Wide ResNet, MNASNet, EfficientNet(V2) with and without TF padding, GPT-2 <-> a
nanoGPT-style model) plus pairs found automatically: a torchvision model and the timm model of the
same name whose tensors have the same shapes (the multiset of shapes is the fingerprint).

    .venv/bin/python bench/sweep_ports.py                 # everything, a Markdown table on stdout
    .venv/bin/python bench/sweep_ports.py --only resnet   # pairs whose name contains 'resnet'
    .venv/bin/python bench/sweep_ports.py --no-auto       # the named pairs only
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

TOLERANCE = 1e-4


# ----------------------------------------------------------------------------------------------------
# a nanoGPT-style model (Karpathy's layout: fused c_attn as nn.Linear, tied lm_head)


class _Block(nn.Module):
    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln_1 = nn.LayerNorm(d)
        self.attn = nn.Module()
        self.attn.c_attn = nn.Linear(d, 3 * d)
        self.attn.c_proj = nn.Linear(d, d)
        self.ln_2 = nn.LayerNorm(d)
        self.mlp = nn.Module()
        self.mlp.c_fc = nn.Linear(d, 4 * d)
        self.mlp.c_proj = nn.Linear(4 * d, d)
        self.gelu = nn.GELU(approximate="tanh")  # GPT-2's gelu_new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.attn.c_attn(self.ln_1(x)).split(d, dim=2)
        q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, d)
        x = x + self.attn.c_proj(y)
        return x + self.mlp.c_proj(self.gelu(self.mlp.c_fc(self.ln_2(x))))


class NanoGPT(nn.Module):
    """GPT-2 as nanoGPT writes it (``transformer.wte/wpe/h/ln_f``, ``lm_head`` tied to ``wte``)."""

    def __init__(self, vocab: int = 96, ctx: int = 32, d: int = 64, layers: int = 2, heads: int = 4) -> None:
        super().__init__()
        self.transformer = nn.ModuleDict(
            {
                "wte": nn.Embedding(vocab, d),
                "wpe": nn.Embedding(ctx, d),
                "h": nn.ModuleList(_Block(d, heads) for _ in range(layers)),
                "ln_f": nn.LayerNorm(d),
            }
        )
        self.lm_head = nn.Linear(d, vocab, bias=False)
        self.lm_head.weight = self.transformer.wte.weight

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(idx.shape[1], device=idx.device)
        x = self.transformer.wte(idx) + self.transformer.wpe(pos)
        for block in self.transformer.h:
            x = block(x)
        return self.lm_head(self.transformer.ln_f(x))


# ----------------------------------------------------------------------------------------------------
# the pairs


@dataclass
class Pair:
    name: str
    a: Callable[[], nn.Module]
    b: Callable[[], nn.Module]
    make_input: Callable[[int], Any]  # seed -> input


def _image(shape: tuple[int, ...]) -> Callable[[int], torch.Tensor]:
    return lambda seed: torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def _tokens(seed: int) -> torch.Tensor:
    return torch.randint(0, 96, (2, 16), generator=torch.Generator().manual_seed(seed))


def _tv(name: str, **kw: Any) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import torchvision

        return torchvision.models.get_model(name, **kw)

    return build


def _timm(name: str, **kw: Any) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import timm

        return timm.create_model(name, **kw)

    return build


def _hf(model_type: str, task: str, **fields: Any) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        from torchsmith.zoo.hf_models import create_hf_model

        return create_hf_model(f"{model_type}/{task}", fields)

    return build


def named_pairs() -> list[Pair]:
    """The pairs issue 24 names (small configurations where a library allows, so a sweep stays minutes)."""
    img64, img224 = _image((2, 3, 64, 64)), _image((1, 3, 224, 224))
    hf_resnet = {"embedding_size": 64, "hidden_sizes": [64, 128, 256, 512], "depths": [2, 2, 2, 2]}
    hf_resnet |= {"layer_type": "basic", "num_labels": 10}
    hf_convnext = {"hidden_sizes": [40, 80, 160, 320], "depths": [2, 2, 6, 2], "num_labels": 10}
    hf_swin = {"embed_dim": 24, "depths": [2, 2], "num_heads": [3, 6], "image_size": 112, "num_labels": 10}
    hf_swin |= {"window_size": 7}
    hf_vit = {"hidden_size": 192, "num_hidden_layers": 4, "num_attention_heads": 3, "intermediate_size": 768}
    hf_vit |= {"layer_norm_eps": 1e-6, "num_labels": 10}
    tv, tm = _tv, _timm
    swin = {"embed_dim": 24, "depths": (2, 2), "num_heads": (3, 6), "img_size": 112, "num_classes": 10}
    gpt2 = {"vocab_size": 96, "n_positions": 32, "n_embd": 64, "n_layer": 2, "n_head": 4}
    return [
        Pair("resnet18 hf/tv", _hf("resnet", "image-classification", **hf_resnet),
             tv("resnet18", num_classes=10), img64),
        Pair("resnet18 hf/timm", _hf("resnet", "image-classification", **hf_resnet),
             tm("resnet18", num_classes=10), img64),
        Pair("convnext_atto hf/timm", _hf("convnext", "image-classification", **hf_convnext),
             tm("convnext_atto", num_classes=10), img64),
        Pair("swin hf/timm", _hf("swin", "image-classification", **hf_swin),
             tm("swin_tiny_patch4_window7_224", **swin), _image((1, 3, 112, 112))),
        Pair("vit_tiny hf/timm", _hf("vit", "image-classification", **hf_vit),
             tm("vit_tiny_patch16_224", depth=4, num_classes=10), img224),
        Pair("resnext50_32x4d tv/timm", tv("resnext50_32x4d", num_classes=10),
             tm("resnext50_32x4d", num_classes=10), img64),
        Pair("wide_resnet50_2 tv/timm", tv("wide_resnet50_2", num_classes=10),
             tm("wide_resnet50_2", num_classes=10), img64),
        Pair("mnasnet1_0 tv/timm", tv("mnasnet1_0", num_classes=10),
             tm("mnasnet_100", num_classes=10), img64),
        Pair("efficientnet_b0 tv/timm", tv("efficientnet_b0", num_classes=10),
             tm("efficientnet_b0", num_classes=10), img64),
        Pair("efficientnet_b0 tv/timm-tf", tv("efficientnet_b0", num_classes=10),
             tm("tf_efficientnet_b0", num_classes=10), img64),
        Pair("efficientnet_v2_s tv/timm-tf", tv("efficientnet_v2_s", num_classes=10),
             tm("tf_efficientnetv2_s", num_classes=10), img64),
        Pair("gpt2 hf/nanogpt", _hf("gpt2", "causal-lm", **gpt2), lambda: NanoGPT(), _tokens),
    ]  # fmt: skip


def auto_pairs(max_params: float = 30e6) -> list[Pair]:
    """torchvision and timm models of one name whose tensors have the same shapes (the fingerprint),
    up to ``max_params`` parameters (a sweep of the largest would take hours on a CPU)."""
    import timm
    import torchvision

    from torchsmith.transfer.fingerprint import _meta_state

    shared = sorted(set(torchvision.models.list_models(module=torchvision.models)) & set(timm.list_models()))
    out = []
    for name in shared:
        a, b = _meta_state(f"torchvision:{name}"), _meta_state(f"timm:{name}")
        if a is None or b is None:
            continue
        size = sum(math.prod(shape) for shape in a.values())
        if sorted(a.values()) == sorted(b.values()) and size <= max_params:
            shape = (1, 3, 299, 299) if "inception" in name else (2, 3, 64, 64)
            out.append(Pair(f"{name} tv/timm (auto)", _tv(name), _timm(name), _image(shape)))
    return out


# ----------------------------------------------------------------------------------------------------
# one port


def randomise(model: nn.Module, seed: int) -> None:
    """Random weights and batch-norm statistics, so a norm's eps or a swapped tensor shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict(keep_vars=True).items():
            if not t.dtype.is_floating_point:
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) * 0.05 + 0.01)  # small: eps matters
            else:
                fan = t[0].numel() if t.dim() > 1 else 1
                t.copy_(torch.randn(t.shape, generator=g) / math.sqrt(fan) * (1.0 if t.dim() > 1 else 0.3))


def _out(model: nn.Module, x: Any) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        y = model(x)
    y = getattr(y, "logits", y)
    return (y[0] if isinstance(y, (tuple, list)) else y).double()


def port_once(pair: Pair, direction: str, mode: str, seed: int = 0) -> dict[str, Any]:
    """Port one way (``"a->b"``/``"b->a"``) from the model or its state_dict; classify the result."""
    from torchsmith.errors import TorchsmithError
    from torchsmith.transfer import load_weights

    torch.manual_seed(seed)
    a, b = pair.a(), pair.b()
    source, target = (a, b) if direction == "a->b" else (b, a)
    randomise(source, seed + 1)
    randomise(target, seed + 2)
    src_arg = source if mode == "model" else source.state_dict()
    t0 = time.perf_counter()
    row = {"pair": pair.name, "direction": direction, "from": mode}
    try:
        load_weights(target, src_arg, match="structure", example_input=pair.make_input(seed + 3))
    except TorchsmithError as e:
        first = str(e).split(". ")[0].replace("|", "/")
        return {**row, "result": "REFUSED", "why": first[:160], "s": time.perf_counter() - t0}
    seconds = time.perf_counter() - t0
    x = pair.make_input(seed + 101)  # another input than the port's own check
    want, got = _out(source, x), _out(target, x)
    scale = want.abs().max().item() or 1.0
    rel = (got - want).abs().max().item() / scale if got.shape == want.shape else math.inf
    result = "PASS" if rel <= TOLERANCE else "WRONG"
    return {**row, "result": result, "why": f"max rel diff {rel:.1e}", "s": seconds}


def sweep(pairs: list[Pair], modes=("model", "state_dict"), directions=("a->b", "b->a")) -> list[dict]:
    rows = []
    for pair in pairs:
        for direction in directions:
            for mode in modes:
                try:
                    row = port_once(pair, direction, mode)
                except Exception as e:  # a pair that cannot even be built is reported, not fatal
                    row = {"pair": pair.name, "direction": direction, "from": mode, "result": "ERROR",
                           "why": f"{type(e).__name__}: {e}"[:160], "s": 0.0}  # fmt: skip
                print(
                    f"{row['result']:8} {row['pair']} {row['direction']} from {row['from']}", file=sys.stderr
                )
                rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| pair | direction | from | result | s | why |", "|---|---|---|---|---:|---|"]
    lines += [
        f"| {r['pair']} | {r['direction']} | {r['from']} | {r['result']} | {r['s']:.1f} | {r['why']} |"
        for r in rows
    ]
    counts = {k: sum(r["result"] == k for r in rows) for k in ("PASS", "REFUSED", "WRONG", "ERROR")}
    lines.append("")
    lines.append(", ".join(f"{k} {v}" for k, v in counts.items()))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", help="pairs whose name contains this")
    p.add_argument("--no-auto", action="store_true", help="named pairs only")
    p.add_argument("--auto-only", action="store_true", help="the pairs found by fingerprint only")
    p.add_argument("--max-params", type=float, default=30e6, help="largest auto pair (default 30e6)")
    args = p.parse_args(argv)
    pairs = ([] if args.auto_only else named_pairs()) + ([] if args.no_auto else auto_pairs(args.max_params))
    if args.only:
        pairs = [q for q in pairs if args.only in q.name]
    rows = sweep(pairs)
    print(table(rows))
    return 1 if any(r["result"] == "WRONG" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
