"""Names users know -> one :class:`WeightsSource`: where the file lives, its expected hash, its metadata.

* torchvision: ``("torchvision:resnet50", "IMAGENET1K_V2")``, ``"DEFAULT"``, the enum
  ``ResNet50_Weights.IMAGENET1K_V2`` or its string, and the seeds' ``pretrained=True`` (= ``DEFAULT``).
* timm: ``("timm:resnet50.a1_in1k", True)``: the model's ``pretrained_cfg`` names its Hugging Face
  Hub repository (or a release URL); ``hf-hub:org/name`` names a Hub repository directly.
* anything else: ``{"url": ..., "sha256": ...}`` or ``{"path": ..., "sha256": ...}``.

Resolving reads only the libraries' own tables: nothing is downloaded and nothing is built.

>>> src = resolve_weights("torchvision:resnet50", "IMAGENET1K_V2")
>>> src.filename, src.sha256
('resnet50-11ad3fa6.pth', '11ad3fa6')
>>> src.meta["categories"][:2]
['tench', 'goldfish']
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from torchsmith.errors import InputError, close_matches
from torchsmith.hub._fetch import hash_prefix_from_name, torch_hub_dir

__all__ = ["WeightsSource", "list_weights", "resolve_weights"]


@dataclass
class WeightsSource:
    """Where one set of pretrained weights comes from and what it says about itself.

    ``kind``: ``"url"`` (a file in ``$TORCH_HOME/hub/checkpoints``), ``"hf"`` (a file of a Hugging
    Face Hub repository, in the HF cache) or ``"path"`` (a local file). ``sha256`` is a full digest
    or a prefix. ``meta`` holds ``categories``, ``transforms`` (resize, crop, mean, std,
    interpolation), ``license``, ``source_url`` and ``num_classes`` where the library knows them.
    """

    name: str
    kind: str
    url: str | None = None
    filename: str = ""
    sha256: str | None = None
    path: str | None = None
    hf_repo: str | None = None
    hf_revision: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    # library-specific: the torchvision enum member, the timm pretrained_cfg
    handle: Any = field(default=None, repr=False, compare=False)

    def cache_path(self) -> Path | None:
        """Where the file lives once fetched (``None`` for HF files: their cache decides)."""
        if self.kind == "path":
            return Path(self.path)  # type: ignore[arg-type]
        if self.kind == "url":
            return torch_hub_dir() / "checkpoints" / self.filename
        return None

    def describe(self) -> dict[str, Any]:
        """A JSON-able summary (for provenance, ``inspect`` and ``weights list --json``)."""
        out = {"name": self.name, "kind": self.kind, "file": self.filename}
        for key in ("url", "sha256", "hf_repo", "path"):
            if getattr(self, key):
                out[key] = getattr(self, key)
        for key in ("license", "source_url", "num_classes", "transforms"):
            if self.meta.get(key) is not None:
                out[key] = self.meta[key]
        return out


def _truthy_pretrained(value: Any) -> bool:
    return value is True or (isinstance(value, str) and value.strip().lower() in ("true", "yes", "1"))


# -- torchvision ---------------------------------------------------------------------------------


def _torchvision_meta(enum: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "source_url": enum.url,
        "license": "not stated by torchvision (see its model docs)",
    }
    meta["recipe"] = enum.meta.get("recipe")
    cats = enum.meta.get("categories")
    if cats:
        meta["categories"] = list(cats)
        meta["num_classes"] = len(cats)
    transforms = getattr(enum.transforms, "keywords", {}) or {}
    try:
        t = enum.transforms()
        info = {
            "resize": list(getattr(t, "resize_size", []) or []) or None,
            "crop": list(getattr(t, "crop_size", []) or []) or None,
            "mean": list(getattr(t, "mean", []) or []) or None,
            "std": list(getattr(t, "std", []) or []) or None,
            "interpolation": str(getattr(t, "interpolation", "")).split(".")[-1].lower() or None,
        }
        meta["transforms"] = {k: v for k, v in info.items() if v is not None}
    except Exception:  # a preset that needs arguments (video, optical flow): keep its keywords
        meta["transforms"] = {k: v for k, v in transforms.items() if isinstance(v, (int, float, str, list))}
    return meta


def torchvision_enum(model: str, weights: Any) -> Any:
    """The torchvision ``WeightsEnum`` member for ``model`` and ``weights`` (a name, enum or ``True``)."""
    import torchvision.models as tvm

    try:
        enum_cls = tvm.get_model_weights(model)
    except (KeyError, ValueError):
        raise InputError(f"torchvision model {model!r} has no pretrained weights") from None
    if _truthy_pretrained(weights):
        weights = "DEFAULT"
    if isinstance(weights, enum_cls):
        return weights
    if not isinstance(weights, str):
        raise InputError(
            f"weights for torchvision:{model} must be a name such as 'DEFAULT' or one of "
            f"{[m.name for m in enum_cls]}, got {weights!r}"
        )
    name = weights.split(".")[-1] if weights.startswith(enum_cls.__name__ + ".") else weights
    if "." in name:
        raise InputError(
            f"weights {weights!r} do not belong to torchvision:{model} (its enum is {enum_cls.__name__})"
        )
    members = {m.name: m for m in enum_cls}
    if name == "DEFAULT":
        return enum_cls.DEFAULT
    if name not in members:
        raise InputError(
            f"torchvision:{model} has no weights {weights!r}{close_matches(name, members)}; "
            f"valid: DEFAULT, {', '.join(members)}"
        )
    return members[name]


def _resolve_torchvision(model: str, weights: Any) -> WeightsSource:
    enum = torchvision_enum(model, weights)
    filename = os.path.basename(urlparse(enum.url).path)
    return WeightsSource(
        name=f"torchvision:{model}:{enum.name}", kind="url", url=enum.url, filename=filename,
        sha256=hash_prefix_from_name(filename), meta=_torchvision_meta(enum), handle=enum,
    )  # fmt: skip


# -- timm and the Hugging Face Hub ---------------------------------------------------------------


def _timm_resize(crop: list[int], crop_pct: float, mode: str) -> list[int]:
    """timm's eval resize (``transforms_imagenet_eval``): each edge ``floor(crop / crop_pct)``; one
    number (the shorter edge, aspect kept) for a square crop in ``center`` mode, both edges otherwise
    (exact for ``squash``; for a non-square ``center`` crop timm keeps the aspect ratio, this squashes)."""
    scale = [math.floor(c / crop_pct) for c in crop]
    return scale[:1] if mode == "center" and scale[0] == scale[1] else scale


def _timm_meta(cfg: dict[str, Any]) -> dict[str, Any]:
    size = cfg.get("input_size") or (3, 224, 224)
    crop = [int(size[-2]), int(size[-1])]
    crop_pct = cfg.get("crop_pct") or 0.875
    mode = cfg.get("crop_mode") or "center"
    meta: dict[str, Any] = {
        "license": cfg.get("license"),
        "source_url": cfg.get("origin_url") or cfg.get("url"),
        "num_classes": cfg.get("num_classes"),
        "transforms": {
            "resize": _timm_resize(crop, crop_pct, mode),
            "crop": crop[:1] if crop[0] == crop[1] else crop,
            "mean": list(cfg.get("mean") or (0.485, 0.456, 0.406)),
            "std": list(cfg.get("std") or (0.229, 0.224, 0.225)),
            "interpolation": cfg.get("interpolation") or "bicubic",
        },
        "classifier": cfg.get("classifier"),
        "first_conv": cfg.get("first_conv"),
    }
    if cfg.get("label_names"):
        meta["categories"] = list(cfg["label_names"])
    elif cfg.get("num_classes") == 1000 and "in1k" in str(cfg.get("tag") or "") + str(
        cfg.get("hf_hub_id") or ""
    ):
        meta["categories"] = _imagenet_names()
    return meta


def _imagenet_names() -> list[str] | None:
    try:
        import torchvision.models as tvm

        return list(tvm.ResNet18_Weights.IMAGENET1K_V1.meta["categories"])
    except Exception:
        return None


def _resolve_timm(model: str) -> WeightsSource:
    import timm
    from timm.models import get_pretrained_cfg

    if not timm.is_model(model):
        raise InputError(f"unknown timm model {model!r}{close_matches(model, timm.list_models())}")
    cfg_obj = get_pretrained_cfg(model)
    if cfg_obj is None:
        raise InputError(
            f"timm:{model} names no pretrained weights; name a tagged model (see timm.list_pretrained"
            f"('{model.split('.')[0]}*'), e.g. {model.split('.')[0]}.a1_in1k)"
        )
    cfg = cfg_obj.to_dict()
    if cfg.get("custom_load"):
        raise InputError(
            f"timm:{model}'s weights need timm's own custom loader (a .npz file); torchsmith reads only "
            "checkpoint formats it can check. Pick another tag of this model"
        )
    meta = _timm_meta(cfg)
    hf_id = cfg.get("hf_hub_id")
    if hf_id:
        return WeightsSource(
            name=f"timm:{model}", kind="hf", hf_repo=hf_id, filename=cfg.get("hf_hub_filename") or "",
            meta=meta, handle=cfg,
        )  # fmt: skip
    url = cfg.get("url")
    if not url:
        raise InputError(f"timm:{model}'s pretrained config names neither a Hub repository nor a URL")
    filename = os.path.basename(urlparse(url).path)
    return WeightsSource(
        name=f"timm:{model}", kind="url", url=url, filename=filename, sha256=hash_prefix_from_name(filename),
        meta=meta, handle=cfg,
    )  # fmt: skip


def _resolve_hf_hub(repo: str) -> WeightsSource:
    if repo.count("/") != 1 or not all(repo.split("/")):
        raise InputError(f"a Hub name is 'hf-hub:ORG/NAME', got 'hf-hub:{repo}'")
    repo, _, revision = repo.partition("@")
    return WeightsSource(name=f"hf-hub:{repo}", kind="hf", hf_repo=repo, hf_revision=revision or None)


# -- explicit files ------------------------------------------------------------------------------


def _resolve_explicit(spec: dict[str, Any]) -> WeightsSource:
    unknown = set(spec) - {"url", "path", "sha256"}
    if unknown:
        raise InputError(f"weights {{...}} takes url or path, and sha256; unknown field(s) {sorted(unknown)}")
    sha = spec.get("sha256")
    if sha is not None and (
        not isinstance(sha, str) or len(sha) < 8 or any(c not in "0123456789abcdef" for c in sha.lower())
    ):
        raise InputError(f"weights sha256 must be a hex SHA-256 (at least 8 digits), got {sha!r}")
    if "url" in spec:
        url = spec["url"]
        if not isinstance(url, str) or urlparse(url).scheme not in ("http", "https"):
            raise InputError(f"weights url must be an http(s) URL, got {url!r}")
        if not sha:
            raise InputError(
                f"weights {{url: {url}}} needs its sha256: a download is only used when it is verified"
            )
        filename = os.path.basename(urlparse(url).path) or "weights"
        return WeightsSource(name=url, kind="url", url=url, filename=filename, sha256=sha.lower())
    if "path" in spec:
        path = os.fspath(spec["path"])
        return WeightsSource(name=path, kind="path", path=path, filename=os.path.basename(path),
                             sha256=sha.lower() if sha else None)  # fmt: skip
    raise InputError("weights {...} needs a url (with sha256) or a path")


def resolve_weights(model: str | None, weights: Any) -> WeightsSource:
    """Resolve ``weights`` for the model called ``model`` to a :class:`WeightsSource`; downloads nothing.

    ``model`` is a torchsmith model name (``torchvision:NAME``, ``timm:NAME``); ``weights`` is a
    torchvision weights name or enum, ``True`` (the default weights), ``"hf-hub:ORG/NAME"``, or a
    dict ``{url|path, sha256}``. Unknown names raise :class:`InputError` with the valid choices.
    """
    if isinstance(weights, os.PathLike):
        weights = {"path": os.fspath(weights)}
    if isinstance(weights, dict):
        return _resolve_explicit(weights)
    if isinstance(weights, str) and weights.startswith("hf-hub:"):
        return _resolve_hf_hub(weights[len("hf-hub:") :])
    if weights is None or weights is False:
        raise InputError("no weights asked for")
    model = model or ""
    if model.startswith("torchvision:"):
        return _resolve_torchvision(model.split(":", 1)[1], weights)
    if model.startswith("timm:"):
        name = model.split(":", 1)[1]
        if name.startswith("hf-hub:"):
            return _resolve_hf_hub(name[len("hf-hub:") :])
        if not _truthy_pretrained(weights):
            raise InputError(
                f"timm:{name} takes pretrained=True (the tag in its name picks the weights), got {weights!r}"
            )
        return _resolve_timm(name)
    raise InputError(
        f"pretrained weights by name exist for 'torchvision:' and 'timm:' models, not {model!r}; "
        "give {url: ..., sha256: ...} or {path: ...} instead"
    )


def _weights_match(pattern: str, prefix: str, model: str, full: str) -> bool:
    from torchsmith._names import name_matches

    # The pattern may name the model the way `zoo` does (resnet50, 'resnet*'), with or without its
    # prefix, or the weights' full name (torchvision:resnet50:IMAGENET1K_V2, timm:resnet50.a1_in1k).
    candidates = (model, f"{prefix}{model}", full, full[len(prefix) :])
    return any(name_matches(c, pattern) for c in candidates)


def list_weights(pattern: str | None = None) -> list[dict[str, Any]]:
    """Every torchvision weights name (and timm's pretrained tags for a pattern), with cache state.

    ``pattern`` is an ``fnmatch`` glob, case ignored, matched the way ``zoo`` matches names: against
    the model name (``resnet50``, ``'resnet*'``, ``torchvision:resnet50``, ``timm:resnet50``) or the
    weights' full name (``torchvision:resnet50:IMAGENET1K_V2``, ``timm:resnet50.a1_in1k``). timm's tags
    are listed for a pattern that is not ``torchvision:``-only. Rows come in natural order.
    """
    import torchvision.models as tvm

    from torchsmith._names import natural_key

    rows: list[dict[str, Any]] = []
    for model in sorted(tvm.list_models(), key=natural_key):
        try:
            enum_cls = tvm.get_model_weights(model)
        except (KeyError, ValueError):
            continue
        for member in enum_cls:
            name = f"torchvision:{model}:{member.name}"
            if pattern and not _weights_match(pattern, "torchvision:", model, name):
                continue
            src = _resolve_torchvision(model, member)
            path = src.cache_path()
            cached = bool(path and path.exists())
            rows.append(
                {"name": name, "default": member == enum_cls.DEFAULT, "cached": cached, "file": src.filename}
            )
    if pattern and not pattern.casefold().startswith("torchvision:"):
        try:
            import timm
        except ImportError:  # pragma: no cover - timm is optional
            return rows
        for tagged in sorted(timm.list_pretrained(), key=natural_key):
            if _weights_match(pattern, "timm:", tagged.split(".")[0], f"timm:{tagged}"):
                rows.append({"name": f"timm:{tagged}", "default": False, "cached": None, "file": "(HF Hub)"})
    return rows


def no_weights_message(pattern: str | None) -> str:
    """What to say when :func:`list_weights` found nothing: what the names look like, and near names."""
    from torchsmith.errors import close_matches

    hint = ""
    if pattern and not any(ch in pattern for ch in "*?["):
        import torchvision.models as tvm

        bare = pattern.split(":")[-1] if pattern.startswith(("torchvision:", "timm:")) else pattern
        hint = close_matches(bare.split(".")[0], tvm.list_models())
    return (
        f"no pretrained weights match {pattern!r}{hint}; a pattern matches a model name the way "
        "'torchsmith zoo' does ('resnet50', 'resnet*', 'torchvision:vit_*', 'timm:convnext_tiny') or "
        "a weights name ('torchvision:resnet50:IMAGENET1K_V2', 'timm:resnet50.a1_in1k')"
    )
