"""Identify the architecture a bare state_dict came from: its keys and shapes, against known models.

A structure port is proven by running both models on one input; a state_dict cannot run. So before
a port from a state_dict, :func:`identify_source` looks for the architecture that wrote it:

1. **the key names** are hashed (wrapper prefixes removed) and looked up in an index of known
   architectures (``fingerprints.json`` beside this module: torchsmith's zoo, torchvision's models
   and timm's families, built by ``python -m torchsmith.transfer.fingerprint``); the key names of a
   library model do not depend on its number of classes;
2. **transformers models** whose configuration follows from the shapes (GPT-2, ViT) are inferred
   directly (:func:`_hf_candidates`);
3. every candidate is **built** (meta device) and kept only when every key and every shape agree
   (the classifier's size is read from the state_dict and passed as ``num_classes``).

A stale index (other library versions) can only miss a candidate -- a miss means a refusal, never a
wrong port: what is found is built, compared key by key and shape by shape, and the port that
follows is checked numerically.

>>> import torchvision
>>> sd = torchvision.models.resnet18(num_classes=7).state_dict()
>>> [c.describe() for c in identify_source(sd).matches if c.name.startswith("torchvision:")]
['torchvision:resnet18(num_classes=7)']
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from torchsmith.errors import InputError

__all__ = ["Candidate", "Identification", "build_index", "build_source_model", "identify_source", "name_hash"]

INDEX_PATH = Path(__file__).with_name("fingerprints.json")
_WRAPPERS = ("module.", "_orig_mod.")

#: timm families indexed (by model-name glob): the ones ports are asked for, and their relatives
TIMM_FAMILIES = (
    "resnet*", "resnext*", "wide_resnet*", "seresnet*", "efficientnet*", "tf_efficientnet*",
    "mnasnet*", "semnasnet*", "spnasnet*", "mobilenetv2*", "mobilenetv3*", "tf_mobilenetv3*",
    "convnext_*", "vit_tiny*", "vit_small*", "vit_base*", "deit_*", "swin_*", "regnet*", "vgg*",
    "densenet*", "inception*", "maxvit_tiny*", "maxvit_nano*", "mixnet*", "tf_mixnet*",
)  # fmt: skip


@dataclass
class Candidate:
    """An architecture that fits the state_dict: ``name`` (for ``create_model``) and its ``kwargs``."""

    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.kwargs.items())
        return f"{self.name}({args})" if args else self.name

    def build(self) -> Any:
        """The model with random weights on the CPU."""
        from torchsmith.zoo import create_model

        return create_model(self.name, **self.kwargs)


@dataclass
class Identification:
    """What :func:`identify_source` found: exact ``matches`` and, when none, the ``closest`` names."""

    matches: list[Candidate] = field(default_factory=list)
    closest: list[str] = field(default_factory=list)
    looked_at: int = 0


def _strip(keys: Iterable[str]) -> list[str]:
    out = []
    for k in keys:
        while k.startswith(_WRAPPERS):
            k = k.split(".", 1)[1]
        out.append(k)
    return out


def name_hash(keys: Iterable[str]) -> str:
    """A short hash of the sorted key names (wrapper prefixes removed)."""
    text = "\n".join(sorted(_strip(keys)))
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def _meta_state(name: str, kwargs: Mapping[str, Any] | None = None) -> dict[str, tuple[int, ...]] | None:
    """``{key: shape}`` of ``name`` built on the meta device, or ``None`` when it cannot be built so."""
    import contextlib
    import io
    import warnings

    import torch

    from torchsmith.zoo import create_model

    try:
        with (
            torch.device("meta"),
            warnings.catch_warnings(),
            contextlib.redirect_stdout(io.StringIO()),
        ):
            warnings.simplefilter("ignore")
            model = create_model(name, **dict(kwargs or {}))
        return {k: tuple(v.shape) for k, v in model.state_dict().items()}
    except Exception:
        try:  # some builders copy data at init (torchvision's RegNet): build for real
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
                warnings.simplefilter("ignore")
                model = create_model(name, **dict(kwargs or {}))
            return {k: tuple(v.shape) for k, v in model.state_dict().items()}
        except Exception:
            return None


def _index_names() -> list[str]:
    import fnmatch

    import timm
    import torchvision

    from torchsmith.zoo import list_models

    names = [n for n in list_models() if ":" not in n]
    # torchvision's RegNets compute their widths with tensors (no meta build) and are built for
    # real: the largest (8 GF and up, up to 644 M parameters) are left out
    names += [
        f"torchvision:{n}"
        for n in torchvision.models.list_models(module=torchvision.models)
        if not re.search(r"_(8|16|32|128)gf$", n)
    ]
    names += [
        f"timm:{n}" for n in timm.list_models() if any(fnmatch.fnmatchcase(n, p) for p in TIMM_FAMILIES)
    ]
    return names


def build_index(
    names: Iterable[str] | None = None, path: Path = INDEX_PATH, *, progress: bool = False
) -> dict[str, Any]:
    """Build the key-name index of ``names`` (default: the zoo, torchvision, timm's families) at ``path``."""
    import timm
    import torch
    import torchvision

    from torchsmith._io import atomic_write

    by_hash: dict[str, list[str]] = {}
    summary: dict[str, list] = {}
    failed = []
    todo = list(names) if names is not None else _index_names()
    for i, name in enumerate(todo):
        if progress:
            print(f"[{i + 1}/{len(todo)}] {name}", flush=True)
        state = _meta_state(name)
        if state is None:
            failed.append(name)
            continue
        by_hash.setdefault(name_hash(state), []).append(name)
        summary[name] = [len(state), " ".join(sorted(_top(state)))]
    index = {
        "versions": {
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "timm": timm.__version__,
        },
        "not_built": failed,
        "names": by_hash,
        "summary": summary,
    }
    with atomic_write(path, "w") as f:
        f.write(json.dumps(index, indent=0, sort_keys=True))
    return index


def _top(keys: Iterable[str]) -> set[str]:
    """The top-level module names of ``keys`` (wrapper prefixes removed)."""
    return {k.split(".", 1)[0] for k in _strip(keys)}


@lru_cache(maxsize=1)
def _load_index() -> dict[str, Any]:
    try:
        return json.loads(INDEX_PATH.read_text())
    except (OSError, ValueError):  # no index: only the shape-inferred candidates
        return {}


def _index() -> dict[str, list[str]]:
    return _load_index().get("names", {})


# ----------------------------------------------------------------------------------------------------
# transformers configs from shapes


def _layers(keys: Iterable[str], pattern: str) -> int:
    found = {int(m.group(1)) for k in keys if (m := re.match(pattern, k))}
    return max(found) + 1 if found else 0


def _hf_candidates(shapes: Mapping[str, tuple[int, ...]]) -> list[Candidate]:
    """transformers models whose config the shapes give (GPT-2, ViT), as ``hf:`` candidates."""
    out: list[Candidate] = []
    keys = list(shapes)
    for pre in ("transformer.", ""):
        wte, wpe = shapes.get(pre + "wte.weight"), shapes.get(pre + "wpe.weight")
        if wte and wpe and pre + "h.0.attn.c_attn.weight" in shapes:
            n_layer = _layers(keys, re.escape(pre) + r"h\.(\d+)\.")
            fields = {"vocab_size": wte[0], "n_positions": wpe[0], "n_embd": wte[1], "n_layer": n_layer}
            inner = shapes.get(pre + "h.0.mlp.c_fc.weight")
            if inner and inner[1] != 4 * wte[1]:
                fields["n_inner"] = inner[1]
            task = "/causal-lm" if pre else ""
            # the head count is not in the shapes: every divisor of the width computes the same
            # shapes, so each is a candidate and the numerical check tells them apart
            for heads in (12, 16, 8, 4, 20, 25, 2, 1, 3, 6):
                if wte[1] % heads == 0:
                    out.append(Candidate(f"hf:gpt2{task}", {**fields, "n_head": heads}))
    for pre, task in (("vit.", "/image-classification"), ("", "")):
        patch = shapes.get(pre + "embeddings.patch_embeddings.projection.weight")
        pos = shapes.get(pre + "embeddings.position_embeddings")
        if not patch or not pos:
            continue
        width, channels, p = patch[0], patch[1], patch[2]
        grid = round((pos[1] - 1) ** 0.5)
        fields = {
            "hidden_size": width,
            "num_channels": channels,
            "patch_size": p,
            "image_size": grid * p,
            "num_hidden_layers": _layers(keys, re.escape(pre) + r"encoder\.layer\.(\d+)\."),
            "intermediate_size": shapes.get(pre + "encoder.layer.0.intermediate.dense.weight", (4 * width,))[
                0
            ],
        }
        if task:
            fields["num_labels"] = shapes.get("classifier.weight", (1000,))[0]
        for eps in (1e-12, 1e-6):  # transformers' default and timm's
            for heads in (12, 3, 6, 16, 8, 4):
                if width % heads == 0 and width // heads >= 16:
                    out.append(
                        Candidate(
                            f"hf:vit{task}", {**fields, "num_attention_heads": heads, "layer_norm_eps": eps}
                        )
                    )
    return out


# ----------------------------------------------------------------------------------------------------
# identification


def _head_classes(shapes: Mapping[str, tuple[int, ...]], want: Mapping[str, tuple[int, ...]]) -> int | None:
    """The number of classes ``want`` has where ``shapes`` differs from it only in the classifier."""
    differ = [k for k in want if k in shapes and shapes[k] != want[k]]
    if not differ:
        return None
    sizes = {want[k][0] for k in differ}
    paths = {k.rpartition(".")[0] for k in differ}
    same_rest = all(shapes[k][1:] == want[k][1:] for k in differ)
    return sizes.pop() if len(sizes) == 1 and len(paths) == 1 and same_rest else None


def identify_source(state_dict: Mapping[str, Any], *, limit: int = 24) -> Identification:
    """Architectures whose state_dict has exactly ``state_dict``'s keys and shapes.

    Candidates come from the key-name index and from transformers configs inferred from shapes; at
    most ``limit`` are built. Several matches are possible (timm's ``efficientnet_b0`` and
    ``tf_efficientnet_b0`` store the same tensors and compute different functions): the caller
    decides between them (see :func:`torchsmith.transfer.load.load_weights`).
    """
    shapes = dict(zip(_strip(state_dict), (tuple(v.shape) for v in state_dict.values())))
    result = Identification()
    names = list(_index().get(name_hash(shapes), []))
    candidates = [Candidate(n) for n in names] + _hf_candidates(shapes)
    for cand in candidates[:limit]:
        result.looked_at += 1
        if cand.name.startswith("hf:"):
            # an inferred config is one build (the head count varies the function, not the shapes)
            got = _meta_state(cand.name, cand.kwargs)
            if got is not None and got == shapes:
                result.matches.append(cand)
            continue
        got = _meta_state(cand.name)
        if got is None or set(got) != set(shapes):
            continue
        if got != shapes:
            classes = _head_classes(got, shapes)
            if classes is None:
                continue
            cand = Candidate(cand.name, {"num_classes": classes})
            got = _meta_state(cand.name, cand.kwargs)
            if got != shapes:
                continue
        result.matches.append(cand)
    if not result.matches:
        result.closest = _closest(shapes)
    return result


def _closest(shapes: Mapping[str, tuple[int, ...]], n: int = 3) -> list[str]:
    """Indexed names most like ``shapes``: the same top-level module names, then the nearest key count."""
    top = _top(shapes)
    scored = []
    for name, (n_keys, names) in _load_index().get("summary", {}).items():
        other = set(names.split())
        overlap = len(top & other) / max(len(top | other), 1)
        if overlap > 0:
            scored.append((-overlap, abs(n_keys - len(shapes)), name))
    scored.sort()
    return [f"{name} ({-o:.0%} of top-level modules alike, {d} keys apart)" for o, d, name in scored[:n]]


if __name__ == "__main__":  # pragma: no cover - the index is rebuilt by hand when libraries change
    import sys

    built = build_index(progress=True)
    print(
        f"{sum(map(len, built['names'].values()))} architectures indexed, {len(built['not_built'])} not built"
    )
    sys.exit(0)


def build_source_model(name: Any, kwargs: dict[str, Any] | None = None) -> Any:
    """An ``nn.Module`` as is, a spec file (.yaml/.yml/.json), or a zoo/torchvision:/timm:/hf: name."""
    import torch.nn as nn

    if isinstance(name, nn.Module):
        return name
    if not isinstance(name, (str, Path)):
        raise InputError(
            f"source_model: expected a model name, a spec file or an nn.Module, got {type(name).__name__}"
        )
    path = Path(name)
    if path.suffix.lower() in (".yaml", ".yml", ".json"):
        if not path.is_file():
            raise InputError(f"source_model: spec file {str(name)!r} not found")
        from torchsmith.spec import build_model

        return build_model(path, params=kwargs) if kwargs else build_model(path)
    from torchsmith.zoo import create_model

    return create_model(str(name), **(kwargs or {}))
