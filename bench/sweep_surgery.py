"""Sweep: every surgery operation on models of torchvision, timm and transformers, judged by an oracle.

Run:  .venv/bin/python bench/sweep_surgery.py [--libs torchvision,timm,transformers] [--sample N]
          [--seed 0] [--out bench/results/sweep_surgery.jsonl] [--part I/N] [--ops set_num_classes_7,...]
          [--models a,b --redo]   (judge those models' --ops again, replacing their rows)

Each (model, op) gets one verdict, appended to a jsonl file as soon as it is known, so a sweep can be
stopped and resumed (rows already in the file are skipped) or run in parts (``--part 2/4``):

* PASS: equal to the oracle (the library's own ``num_classes=`` / ``in_chans=`` / ``num_labels=``,
  timm's ``features_only`` feature_info and ``param_groups_layer_decay``, torchvision's
  ``create_feature_extractor`` shapes), or, where the library has no oracle, the changed model runs;
* REFUSED: a clear ``SurgeryError``/``InputError``, and the model bit-identical and still running;
* WRONG: different from the oracle; DAMAGED: refused but the model changed or no longer runs;
* SKIP: the library itself cannot do it (its own ``num_classes=0``/``in_chans=`` raise) or the model
  cannot be built or run on the sample input at all.

Models: every torchvision model (classification, detection, segmentation, video, optical flow), the
smallest architecture of each timm module plus a seeded sample of other timm models, and tiny
transformers configs. Random weights only: nothing is downloaded.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import copy
import json
import math
import random
import re
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from torchsmith._io import atomic_write

OPS = (
    "set_num_classes_7",
    "set_num_classes_0",
    "set_in_channels_1",
    "set_in_channels_4",
    "feature_info",
    "freeze",
    "param_groups",
    "doctor",
)
_SIZE_WORDS = ["atto", "femto", "pico", "nano", "xxs", "xs", "tiny", "small", "s", "mini", "b0", "base"]


class Oracle(Exception):
    """The oracle itself failed: the library cannot do what is asked (a SKIP, not our failure)."""


# --- models --------------------------------------------------------------------------------------------


class Case:
    """One model: how to build it (optionally with a class count / input channels) and run it."""

    def __init__(
        self,
        lib: str,
        name: str,
        build: Callable[..., nn.Module],
        sample: Callable[[int], Any],
        kind: str = "classification",
    ) -> None:
        self.lib, self.name, self.build, self.sample, self.kind = lib, name, build, sample, kind

    def run(self, model: nn.Module, channels: int = 3) -> Any:
        """Forward the model on its small sample input (eval mode, no grad)."""
        with torch.no_grad():
            x = self.sample(channels)
            return model.eval()(*x) if isinstance(x, tuple) else model.eval()(**x)


def torchvision_cases() -> list[Case]:
    import torchvision

    tv = torchvision.models
    cases = []
    kinds = [
        ("classification", tv, lambda c: (torch.rand(1, c, 64, 64),)),
        ("detection", tv.detection, lambda c: ([torch.rand(c, 64, 64)],)),
        ("segmentation", tv.segmentation, lambda c: (torch.rand(1, c, 64, 64),)),
        ("video", tv.video, lambda c: (torch.rand(1, c, 8, 64, 64),)),
        ("optical_flow", tv.optical_flow, lambda c: (torch.rand(1, c, 128, 128), torch.rand(1, c, 128, 128))),
    ]
    for kind, module, sample in kinds:
        for name in tv.list_models(module=module):
            if kind == "classification" and name in ("inception_v3",):
                sample_ = lambda c: (torch.rand(1, c, 96, 96),)  # noqa: E731
            elif name.startswith(("vit_", "swin3d", "mvit", "s3d", "maxvit")) or "swin" in name:
                size = (224, 224)
                sample_ = (
                    (lambda c, size=size: (torch.rand(1, c, 16, *size),))
                    if kind == "video"
                    else (lambda c, size=size: (torch.rand(1, c, *size),))
                )
            else:
                sample_ = sample

            def build(name=name, **kw):
                kw.setdefault("weights", None)
                if "weights_backbone" in _params(tv.get_model_builder(name)):
                    kw.setdefault("weights_backbone", None)
                return tv.get_model(name, **kw)

            cases.append(Case("torchvision", name, build, sample_, kind))
    return cases


def _params(fn: Callable) -> set[str]:
    import inspect

    with contextlib.suppress(TypeError, ValueError):
        return set(inspect.signature(fn).parameters)
    return set()


def _size_rank(name: str) -> tuple:
    parts = re.split(r"[_\.]", name)
    rank = min((_SIZE_WORDS.index(p) for p in parts if p in _SIZE_WORDS), default=len(_SIZE_WORDS))
    return (rank, len(name), name)


def _meta_params(name: str) -> float:
    """Parameter count of a timm model built on the meta device (inf when it cannot be built)."""
    import timm

    try:
        with warnings.catch_warnings(), torch.device("meta"):
            warnings.simplefilter("ignore")
            return sum(p.numel() for p in timm.create_model(name, pretrained=False).parameters())
    except Exception:
        return math.inf


def timm_cases(sample: int, seed: int, measure: int = 1, max_params: float = 0) -> list[Case]:
    """The smallest model of each timm module (``measure`` > 1: the smallest by parameter count of
    the first ``measure`` by name), then ``sample`` others chosen with ``seed``."""
    import timm

    chosen: list[str] = []
    for module in sorted(timm.list_modules()):
        names = sorted(timm.list_models(module=module), key=_size_rank)
        if not names:
            continue
        if measure > 1:
            chosen.append(min(names[:measure], key=_meta_params))
        elif max_params:  # the first by name that fits the budget (measured lazily)
            chosen.append(next((n for n in names[:8] if _meta_params(n) <= max_params), names[0]))
        else:
            chosen.append(names[0])
    others = sorted(set(timm.list_models()) - set(chosen))
    chosen += random.Random(seed).sample(others, min(sample, len(others)))
    cases = []
    for name in chosen:

        def build(name=name, **kw):
            return timm.create_model(name, pretrained=False, **kw)

        def sample_(c, name=name):
            cfg = timm.models.get_pretrained_cfg(name)
            size = tuple(cfg.input_size[1:]) if cfg is not None and cfg.input_size else (224, 224)
            return (torch.rand(1, c, *size),)

        cases.append(Case("timm", name, build, sample_))
    return cases


def transformers_cases() -> list[Case]:
    import transformers as tf

    small = {"num_hidden_layers": 2, "num_attention_heads": 2, "hidden_size": 32, "intermediate_size": 64}
    image = {"image_size": 32, "patch_size": 8}
    specs = {
        "vit": ("ViTConfig", "ViTForImageClassification", {**small, **image}),
        "deit": ("DeiTConfig", "DeiTForImageClassificationWithTeacher", {**small, **image}),
        "swin": (
            "SwinConfig",
            "SwinForImageClassification",
            {
                "image_size": 32,
                "patch_size": 4,
                "embed_dim": 16,
                "depths": [1, 1],
                "num_heads": [1, 2],
                "window_size": 4,
            },
        ),
        "convnext": (
            "ConvNextConfig",
            "ConvNextForImageClassification",
            {"hidden_sizes": [8, 16], "depths": [1, 1], "num_stages": 2},
        ),
        "resnet": (
            "ResNetConfig",
            "ResNetForImageClassification",
            {"hidden_sizes": [8, 16], "depths": [1, 1], "embedding_size": 8},
        ),
        "bert": ("BertConfig", "BertForSequenceClassification", {**small, "vocab_size": 100}),
        "gpt2": (
            "GPT2Config",
            "GPT2ForSequenceClassification",
            {
                "n_layer": 1,
                "n_head": 2,
                "n_embd": 32,
                "vocab_size": 100,
                "n_positions": 32,
                "pad_token_id": 0,
            },
        ),
        "clip_vision": ("CLIPVisionConfig", "CLIPForImageClassification", {**small, **image}),
    }
    cases = []
    for name, (cfg_name, cls_name, kw) in specs.items():
        if not hasattr(tf, cls_name):
            continue

        def build(cfg_name=cfg_name, cls_name=cls_name, kw=kw, num_classes=None, in_chans=None):
            cfg = getattr(tf, cfg_name)(**kw)
            if in_chans is not None:
                cfg.num_channels = in_chans
            if cls_name == "CLIPForImageClassification":
                cfg = tf.CLIPConfig(
                    vision_config=cfg.to_dict(),
                    text_config={
                        "hidden_size": 32,
                        "num_hidden_layers": 1,
                        "num_attention_heads": 2,
                        "intermediate_size": 64,
                        "vocab_size": 100,
                    },
                )
            if num_classes is not None:
                cfg.num_labels = num_classes
            if in_chans is not None:
                cfg.num_channels = in_chans
            return getattr(tf, cls_name)(cfg)

        def sample_(c, name=name):
            if name in ("bert", "gpt2"):
                return (torch.ones(1, 8, dtype=torch.long),)
            return (torch.rand(1, c, 32, 32),)

        cases.append(Case("transformers", name, build, sample_))
    return cases


# --- verdicts --------------------------------------------------------------------------------------------


def fingerprint(model: nn.Module) -> dict:
    """Every tensor's identity, device and bytes, and every module's identity, mode and hooks."""
    tensors = {
        n: (id(t), t.device.type, t.detach().cpu().clone())
        for n, t in [
            *model.named_parameters(remove_duplicate=False),
            *model.named_buffers(remove_duplicate=False),
        ]
    }
    mods = {
        p: (id(m), m.training, tuple(m._forward_hooks), tuple(m._forward_pre_hooks))
        for p, m in model.named_modules(remove_duplicate=False)
    }
    return {"tensors": tensors, "modules": mods}


def same(a: dict, b: dict) -> bool:
    """True when two fingerprints show the same objects, devices and bytes."""
    if a["modules"] != b["modules"] or a["tensors"].keys() != b["tensors"].keys():
        return False
    return all(
        x[:2] == y[:2] and x[2].shape == y[2].shape and torch.equal(x[2], y[2])
        for x, y in ((a["tensors"][k], b["tensors"][k]) for k in a["tensors"])
    )


def shapes(model: nn.Module) -> dict[str, tuple]:
    """State dict keys and shapes."""
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def shape_diff(a: dict, b: dict) -> str:
    bad = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
    return (
        ""
        if not bad
        else f"{len(bad)} keys differ: " + ", ".join(f"{k} {a.get(k)} vs {b.get(k)}" for k in bad[:4])
    )


def oracle_build(case: Case, **kw: Any) -> nn.Module:
    """The library's own model with ``kw``, built on the meta device (keys and shapes cost nothing),
    or on the CPU when its constructor cannot run on meta (torchvision RegNet reads a tensor value)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with torch.device("meta"):
                return case.build(**kw)
        except Exception:
            pass
        try:
            return case.build(**kw)
        except Exception as e:
            raise Oracle(f"{case.lib} cannot build it with {kw}: {type(e).__name__}: {e}") from None


def check_op(case: Case, op: str, model: nn.Module) -> tuple[str, str]:
    """Run ``op`` on ``model`` and judge it (verdict, detail)."""
    from torchsmith.errors import InputError, SurgeryError, TorchsmithError

    before = fingerprint(model)
    try:
        detail = OP_CHECKS[op](case, model)
        return ("PASS", detail or "")
    except Oracle as e:
        return ("SKIP", str(e))
    except Wrong as e:
        return ("WRONG", str(e))
    except (SurgeryError, InputError, TorchsmithError) as e:
        if not same(before, fingerprint(model)):
            return ("DAMAGED", f"refused ({e}) but the model changed")
        try:
            case.run(model)
        except Exception as run_error:
            return ("DAMAGED", f"refused ({e}) and the model no longer runs: {run_error}")
        return ("REFUSED", str(e)[:400])
    except Exception as e:
        return ("WRONG", f"raw {type(e).__name__}: {e}"[:400] + " | " + traceback.format_exc(limit=-2)[-300:])


class Wrong(Exception):
    """Our result differs from the oracle."""


def _num_classes(n: int) -> Callable[[Case, nn.Module], str]:
    def check(case: Case, model: nn.Module) -> str:
        from torchsmith.surgery import set_num_classes

        if case.lib == "torchvision" and n == 0:
            set_num_classes(model, 0)  # no oracle: torchvision has no class-free form; the model must run
            case.run(model)
            return "runs without its classifier"
        oracle = oracle_build(case, num_classes=n)
        set_num_classes(model, n)
        diff = shape_diff(shapes(model), shapes(oracle))
        if diff:
            raise Wrong(diff)
        got = _shape_tree(case.run(model))
        if case.kind == "classification" and n and f", {n})" not in str(got) and f"({n}," not in str(got):
            raise Wrong(f"output shapes {got} show no {n} classes")
        return ""

    return check


def _shape_tree(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return tuple(x.shape) if x.dim() and x.shape[0] else "empty"
    if isinstance(x, dict) or hasattr(x, "keys"):
        return {k: _shape_tree(x[k]) for k in x if x[k] is not None and k != "loss"}
    if isinstance(x, list | tuple):
        return [_shape_tree(v) for v in x]
    return type(x).__name__


def _in_channels(c: int) -> Callable[[Case, nn.Module], str]:
    def check(case: Case, model: nn.Module) -> str:
        from torchsmith.surgery import set_in_channels

        if case.lib in ("timm", "transformers"):
            oracle = oracle_build(case, in_chans=c)
            set_in_channels(model, c)
            diff = shape_diff(shapes(model), shapes(oracle))
            if diff:
                raise Wrong(diff)
        else:
            set_in_channels(model, c)
        case.run(model, c)
        return ""

    return check


def _feature_info(case: Case, model: nn.Module) -> str:
    from torchsmith.surgery import feature_info

    info = feature_info(model)
    if case.lib == "timm":
        try:
            oracle = oracle_build(case, features_only=True).feature_info.get_dicts()
        except Exception as e:
            raise Oracle(f"timm features_only fails: {e}") from None
        want = [(d["module"], d["num_chs"], d["reduction"]) for d in oracle]
        got = [(f["path"], f["channels"], f["stride"]) for f in info]
        got = [g for g in got if g[0] in {w[0] for w in want}] if len(got) > len(want) else got
        if got != want:
            raise Wrong(f"{got} vs timm {want}")
        return ""
    for f in info:
        shape = f["shape"]
        if shape and f["channels"] not in (shape[1], shape[-1]):
            raise Wrong(f"{f['path']}: channels {f['channels']} not in shape {shape}")
    if case.lib == "torchvision" and case.kind != "detection":
        checked = _against_feature_extractor(case, model, info)
        return f"{len(info)} stages" + (", equal to create_feature_extractor" if checked else "")
    return f"{len(info)} stages"


def _against_feature_extractor(case: Case, model: nn.Module, info: list[dict]) -> bool:
    """torchvision's oracle: ``create_feature_extractor`` on the same layers gives each level's real
    tensor; its channels (at our layout's dimension) must be ours, and its stride, measured as 64
    divided by how much each spatial size grows when the input grows by 64 pixels (exact through
    padded and unpadded convolutions alike), must be ours. False when FX cannot trace the model."""
    from torchvision.models.feature_extraction import create_feature_extractor

    x = case.sample(3)
    bigger = tuple(torch.rand(*t.shape[:-2], t.shape[-2] + 64, t.shape[-1] + 64) for t in x)
    try:
        fx = create_feature_extractor(copy.deepcopy(model).eval(), {f["path"]: f["path"] for f in info})
        with torch.no_grad():
            got = fx(*x)
    except Exception:
        return False
    try:
        with torch.no_grad():
            got2 = fx(*bigger)
    except Exception:
        got2 = None  # a fixed input size (ViT): channels only

    def level(out: dict, f: dict) -> torch.Tensor:
        t = out[f["path"]]
        return t[f["index"]] if f.get("index") is not None else t

    for f in info:
        t = level(got, f)
        last = f["layout"] == "channels_last"
        if f["channels"] != t.shape[-1 if last else 1]:
            raise Wrong(
                f"{f['path']}: channels {f['channels']}, the feature extractor gives {tuple(t.shape)}"
            )
        if got2 is None or t.dim() < 4:
            continue
        t2 = level(got2, f)
        dims = (-3, -2) if last else (-2, -1)  # the two sizes the bigger input grows: H, W
        grown = {t2.shape[d] - t.shape[d] for d in dims}
        stride = 64 / grown.pop() if len(grown) == 1 and 0 not in grown else None
        if stride != f["stride"]:
            raise Wrong(f"{f['path']}: stride {f['stride']}, the feature extractor's sizes give {stride}")
    return True


def _freeze(case: Case, model: nn.Module) -> str:
    from torchsmith.surgery import find_head, freeze

    try:
        head = find_head(model)
    except Exception:
        head = None
    freeze(model, exclude=head)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    if head and not all(n.startswith(head + ".") for n in trainable):
        raise Wrong(f"trainable outside the head: {trainable[:3]}")
    return f"{len(trainable)} trainable"


def _param_groups(case: Case, model: nn.Module) -> str:
    from torchsmith.surgery import param_groups

    groups = param_groups(model, 1e-3, weight_decay=0.05, layer_decay=0.75)
    n_ours = sum(len(g["params"]) for g in groups)
    n_all = len([p for p in model.parameters() if p.requires_grad])
    if n_ours != n_all:
        raise Wrong(f"{n_ours} parameters in groups, model has {n_all}")
    if case.lib == "timm":
        import timm.optim

        try:
            ref = timm.optim.create_optimizer_v2(model, "sgd", lr=1e-3, weight_decay=0.05, layer_decay=0.75)
        except Exception as e:
            raise Oracle(f"timm layer decay fails: {e}") from None
        lr_of = {id(p): g["lr"] * g.get("lr_scale", 1.0) for g in ref.param_groups for p in g["params"]}
        ours = {id(p): g["lr"] for g in groups for p in g["params"]}
        bad = [k for k in lr_of if not math.isclose(lr_of[k], ours.get(k, -1), rel_tol=1e-6)]
        if bad:
            raise Wrong(f"{len(bad)} parameters with another lr than timm's layer decay")
    return f"{len(groups)} groups"


def _doctor(case: Case, model: nn.Module) -> str:
    from torchsmith.surgery import doctor

    sample = case.sample(3)
    found = doctor(model, example_inputs=sample if isinstance(sample, tuple) else None)
    return f"{len(found)} findings"


OP_CHECKS: dict[str, Callable[[Case, nn.Module], str]] = {
    "set_num_classes_7": _num_classes(7),
    "set_num_classes_0": _num_classes(0),
    "set_in_channels_1": _in_channels(1),
    "set_in_channels_4": _in_channels(4),
    "feature_info": _feature_info,
    "freeze": _freeze,
    "param_groups": _param_groups,
    "doctor": _doctor,
}


# --- the sweep ---------------------------------------------------------------------------------------------


def sweep_case(
    case: Case, ops: list[str], done: set, write: Callable[[dict], None], max_params: float = 0
) -> None:
    """Every op not yet done on a fresh copy of the model; one jsonl row each."""
    todo = [op for op in ops if (case.lib, case.name, op) not in done]
    if not todo:
        return
    if max_params:
        try:
            with warnings.catch_warnings(), torch.device("meta"):
                warnings.simplefilter("ignore")
                size = sum(p.numel() for p in case.build().parameters())
        except Exception:
            size = 0  # judged when built for real below
        if size > max_params:
            for op in todo:
                write(
                    {
                        "lib": case.lib,
                        "model": case.name,
                        "kind": case.kind,
                        "op": op,
                        "verdict": "SKIP",
                        "detail": f"{size / 1e6:.0f}M parameters, over --max-params",
                    }
                )
            return
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.manual_seed(0)
            base = case.build()
            case.run(base)
    except Exception as e:
        for op in todo:
            write(
                {
                    "lib": case.lib,
                    "model": case.name,
                    "kind": case.kind,
                    "op": op,
                    "verdict": "SKIP",
                    "detail": f"the model itself does not build/run: {type(e).__name__}: {e}"[:300],
                }
            )
        return
    for op in todo:
        t = time.perf_counter()
        model = copy.deepcopy(base)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            verdict, detail = check_op(case, op, model)
        write(
            {
                "lib": case.lib,
                "model": case.name,
                "kind": case.kind,
                "op": op,
                "verdict": verdict,
                "detail": detail[:500],
                "seconds": round(time.perf_counter() - t, 2),
            }
        )


def table(rows: list[dict]) -> str:
    """Markdown table: verdict counts per library (torchvision: per kind) and op."""
    counts: dict[tuple[str, str], collections.Counter] = collections.defaultdict(collections.Counter)
    for r in rows:
        lib = f"{r['lib']} {r['kind']}" if r["lib"] == "torchvision" else r["lib"]
        counts[(lib, r["op"])][r["verdict"]] += 1
    verdicts = ["PASS", "REFUSED", "WRONG", "DAMAGED", "SKIP"]
    lines = ["| library | op | " + " | ".join(verdicts) + " |", "|---|---|" + "---|" * len(verdicts)]
    for (lib, op), c in sorted(counts.items(), key=lambda kv: (kv[0][0], OPS.index(kv[0][1]))):
        lines.append(f"| {lib} | {op} | " + " | ".join(str(c[v]) for v in verdicts) + " |")
    return "\n".join(lines)


def cases_for(libs: list[str], sample: int, seed: int, measure: int = 1, max_params: float = 0) -> list[Case]:
    """The models of the chosen libraries (see the module docstring)."""
    out: list[Case] = []
    if "torchvision" in libs:
        out += torchvision_cases()
    if "timm" in libs:
        out += timm_cases(sample, seed, measure, max_params)
    if "transformers" in libs:
        out += transformers_cases()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--libs", default="torchvision,timm,transformers")
    ap.add_argument("--sample", type=int, default=20, help="extra timm models, seeded")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--limit", type=int, default=0, help="at most this many models (seeded choice)")
    ap.add_argument("--part", default="1/1", help="I/N: the I-th of N interleaved parts")
    ap.add_argument("--ops", default=",".join(OPS))
    ap.add_argument("--out", default="bench/results/sweep_surgery.jsonl")
    ap.add_argument("--table-only", action="store_true")
    ap.add_argument("--kinds", default="", help="torchvision kinds only: classification,detection,...")
    ap.add_argument("--max-params", type=float, default=0, help="SKIP models with more parameters (0: none)")
    ap.add_argument("--models", default="", help="only these models (comma list), e.g. to redo rows")
    ap.add_argument("--redo", action="store_true", help="drop the chosen models' rows for --ops first")
    ap.add_argument(
        "--measure", type=int, default=6, help="timm: smallest by parameters of the first N names"
    )
    args = ap.parse_args(argv)
    out = Path(args.out)
    rows = [json.loads(line) for line in out.read_text().splitlines() if line.strip()] if out.exists() else []
    if not args.table_only:
        ops = [o for o in args.ops.split(",") if o]
        unknown = [o for o in ops if o not in OP_CHECKS]
        if unknown:
            ap.error(f"unknown ops {unknown}; known: {', '.join(OPS)}")
        cases = cases_for(args.libs.split(","), args.sample, args.seed, args.measure, args.max_params)
        if args.kinds:
            cases = [c for c in cases if c.kind in args.kinds.split(",")]
        if args.limit:
            cases = random.Random(args.seed).sample(cases, min(args.limit, len(cases)))
        if args.models:
            cases = [c for c in cases if c.name in args.models.split(",")]
        if args.redo:
            chosen = {(c.lib, c.name) for c in cases}
            rows = [r for r in rows if (r["lib"], r["model"]) not in chosen or r["op"] not in ops]
            with atomic_write(out, "w") as f:
                f.write("".join(json.dumps(r) + "\n" for r in rows))
        i, n = (int(v) for v in args.part.split("/"))
        cases = cases[i - 1 :: n]
        done = {(r["lib"], r["model"], r["op"]) for r in rows}
        out.parent.mkdir(parents=True, exist_ok=True)
        torch.set_num_threads(1)
        with out.open("a") as f:

            def write(row: dict) -> None:
                rows.append(row)
                f.write(json.dumps(row) + "\n")
                f.flush()

            try:
                from tqdm import tqdm
            except ImportError:  # a plain counter instead of a bar
                tqdm = None
            it = tqdm(cases, unit="model") if tqdm else cases
            for k, case in enumerate(it):
                if tqdm is None:
                    print(f"[{k + 1}/{len(cases)}] {case.lib}:{case.name}", file=sys.stderr)
                else:
                    it.set_postfix_str(f"{case.lib}:{case.name}")
                sweep_case(case, ops, done, write, args.max_params)
    print(table(rows))
    bad = [r for r in rows if r["verdict"] in ("WRONG", "DAMAGED")]
    for r in bad:
        print(f"{r['verdict']} {r['lib']}:{r['model']} {r['op']}: {r['detail'][:200]}")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
