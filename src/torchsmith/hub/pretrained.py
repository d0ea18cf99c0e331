"""Fetch pretrained weights, read them with torchsmith's own reader, and build models with them.

This is the one explicit path by which weights enter a model from a hub: ``create_model(NAME,
weights=...)`` / ``pretrained=True``. Building a model from a spec, a recipe's kwargs or a
checkpoint's metadata never comes here. The file is hash-checked before it is read, and it is read
by :func:`torchsmith.read_state_dict` (the restricted reader: no ``weights_only=False``, no pickle
code runs), never by ``torch.hub.load_state_dict_from_url`` or timm's loader.

>>> import torchsmith
>>> m = torchsmith.create_model("torchvision:resnet18", weights="DEFAULT")   # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from torchsmith.errors import CheckpointError, InputError, TransferError
from torchsmith.hub._fetch import (
    OfflineError,
    check_hash,
    check_reachable,
    download,
    hash_prefix_from_name,
    is_offline,
    sha256_of,
    weights_off_active,
)
from torchsmith.hub.sources import WeightsSource, resolve_weights

__all__ = [
    "create_pretrained",
    "fetch_weights",
    "finish_pretrained",
    "rebuild_structure",
    "verify_cache",
    "weights_categories",
    "weights_preprocessing",
]

_HF_FILES = ("model.safetensors", "pytorch_model.bin")


# -- fetching ------------------------------------------------------------------------------------


def _check_hf_blob(path: str) -> None:
    """HF cache files are links to ``blobs/<etag>``: an LFS etag is the SHA-256 of the file."""
    blob = os.path.basename(os.path.realpath(path))
    if re.fullmatch(r"[0-9a-f]{64}", blob):
        check_hash(path, blob, what="its Hugging Face cache entry")


def hf_cache_dir() -> str:
    """The Hugging Face Hub cache, read from the environment now: ``HF_HUB_CACHE``, ``HF_HOME``/hub."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.path.expanduser(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "huggingface"
    )
    return os.path.join(os.path.expanduser(home), "hub")


def _hf_fetch(repo: str, filenames: tuple[str, ...], revision: str | None, what: str) -> Path:
    try:
        import huggingface_hub as hf
    except ImportError:
        raise InputError(f"{what} lives on the Hugging Face Hub: pip install huggingface_hub") from None
    offline = is_offline()
    cache = hf_cache_dir()
    for filename in filenames:
        cached = hf.try_to_load_from_cache(repo, filename, cache_dir=cache, revision=revision)
        if isinstance(cached, str):
            _check_hf_blob(cached)
            return Path(cached)
    if offline:
        folder = "models--" + repo.replace("/", "--")
        raise OfflineError(
            f"offline and {what} is not in the Hugging Face cache: run `huggingface-cli download {repo} "
            f"{filenames[0]}` on a machine with a network and copy {os.path.join(cache, folder)} here"
        )
    check_reachable(os.environ.get("HF_ENDPOINT") or "https://huggingface.co", what)  # once, no retries
    last: Exception | None = None
    for filename in filenames:
        try:
            path = hf.hf_hub_download(repo, filename, revision=revision, cache_dir=cache)
        except Exception as e:  # EntryNotFound for the first candidate is normal: try the next
            last = e
            continue
        _check_hf_blob(path)
        return Path(path)
    raise CheckpointError(f"{what}: none of {list(filenames)} could be fetched from hf-hub:{repo} ({last})")


def fetch_weights(source: WeightsSource, *, progress: bool = True) -> Path:
    """Make sure ``source``'s file is on disk and verified; return its path. Downloads if needed."""
    if source.kind == "path":
        path = Path(os.path.expanduser(source.path or ""))
        if not path.is_file():
            raise InputError(f"weights file {path} does not exist")
        if source.sha256:
            check_hash(path, source.sha256, what=source.name)
        return path
    if source.kind == "url":
        return download(source.url or "", source.cache_path(), sha256=source.sha256, progress=progress)  # type: ignore[arg-type]
    if source.kind == "hf":
        files = (source.filename,) if source.filename else _HF_FILES
        return _hf_fetch(source.hf_repo or "", files, source.hf_revision, source.name)
    raise InputError(f"unknown weights source kind {source.kind!r}")


def verify_cache() -> list[dict[str, Any]]:
    """Re-hash every file in ``$TORCH_HOME/hub/checkpoints`` whose name carries a hash prefix.

    Returns one row per file: ``file``, ``ok`` (True/False, None when the name carries no hash),
    ``sha256``. Partial downloads (``*.part``) are listed with ``ok=None``.
    """
    from torchsmith.hub._fetch import torch_hub_dir

    rows = []
    folder = torch_hub_dir() / "checkpoints"
    for path in sorted(folder.glob("*")) if folder.is_dir() else []:
        if not path.is_file():
            continue
        digest = sha256_of(path)
        prefix = None if path.name.endswith(".part") else hash_prefix_from_name(path.name)
        rows.append(
            {"file": str(path), "sha256": digest, "ok": None if prefix is None else digest.startswith(prefix)}
        )
    return rows


def _read(path: Path, what: str) -> dict[str, Any]:
    from torchsmith.checkpoint import read_state_dict

    try:
        return read_state_dict(path)  # keeps _metadata (module versions) for load_state_dict
    except CheckpointError as e:
        raise CheckpointError(f"pretrained weights {what}: {e}") from None


# -- torchvision ---------------------------------------------------------------------------------


def _read_source(source: WeightsSource, progress: bool) -> dict[str, Any]:
    return _read(fetch_weights(source, progress=progress), source.name)


def _create_torchvision(
    name: str, kwargs: dict[str, Any], progress: bool
) -> tuple[Any, dict, list[WeightsSource]]:
    from torchsmith.hub._torchvision import create_torchvision

    return create_torchvision(name, kwargs, progress, _read_source)


# -- timm ----------------------------------------------------------------------------------------


def _hf_config(repo: str, revision: str | None) -> dict[str, Any]:
    path = _hf_fetch(repo, ("config.json",), revision, f"hf-hub:{repo} config.json")
    try:
        cfg = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a JSON config: {e}") from None
    if not isinstance(cfg, dict) or not isinstance(cfg.get("architecture"), str):
        raise CheckpointError(f"{path}: a timm config.json names its 'architecture'; this one does not")
    return cfg


def _create_timm(name: str, kwargs: dict[str, Any], progress: bool) -> tuple[Any, dict, list[WeightsSource]]:
    import timm

    kwargs = dict(kwargs)
    kwargs.pop("pretrained", False)  # timm: the tag in the name picks the weights
    weights = kwargs.pop("weights", None)
    if weights is not None and not (isinstance(weights, str) and weights.startswith("hf-hub:")):
        raise InputError(f"timm:{name} takes pretrained=True, not weights={weights!r}")
    for key in ("pretrained_cfg_overlay", "checkpoint_path", "pretrained_cfg"):
        if key in kwargs:
            raise InputError(
                f"timm:{name}: {key}= is not accepted; torchsmith fetches and reads the weights itself"
            )
    if name.startswith("hf-hub:") or weights:
        source = resolve_weights(None, weights or name)
        cfg = _hf_config(source.hf_repo or "", source.hf_revision)
        arch = cfg["architecture"]
        pcfg = dict(cfg.get("pretrained_cfg") or {})
        source.meta = _timm_meta_from(pcfg, cfg)
        build_name = arch
    else:
        source = resolve_weights(f"timm:{name}", True)
        build_name = name
    if not timm.is_model(build_name):
        raise InputError(f"unknown timm model {build_name!r}")
    num_classes = kwargs.get("num_classes")
    model = timm.create_model(build_name, pretrained=False, **kwargs)
    if not weights_off_active():  # a rebuild for a checkpoint's tensors reads no file
        path = fetch_weights(source, progress=progress)
        state = _read(path, source.name)
        head = source.meta.get("classifier") or getattr(model, "pretrained_cfg", {}).get("classifier")
        _load_strict(
            model, state, source, head if num_classes not in (None, source.meta.get("num_classes")) else None
        )
    arch_kwargs = dict(kwargs)
    new_head = num_classes not in (None, source.meta.get("num_classes"))
    return (
        model,
        {
            "kwargs": arch_kwargs,
            "notes": [],
            "new_classes": None,
            "build_name": build_name,
            "new_head": new_head,
        },
        [source],
    )


def _timm_meta_from(pcfg: dict[str, Any], cfg: dict[str, Any]) -> dict[str, Any]:
    from torchsmith.hub.sources import _timm_meta

    merged = {"num_classes": cfg.get("num_classes"), "label_names": cfg.get("label_names"), **pcfg}
    return _timm_meta(merged)


def _load_strict(model: Any, state: dict[str, Any], source: WeightsSource, head: str | None) -> None:
    """load_weights, requiring every tensor outside the (replaced) head to come from the file."""
    from torchsmith.transfer import load_weights

    heads = [h.strip() for h in str(head).split(",")] if head else []
    exclude = [p for h in heads for p in (h, h + ".*")]
    report = load_weights(model, state, exclude=exclude, strict="target", adapt=False)
    if report.missing or report.skipped_shape:
        first = (report.missing + report.skipped_shape)[:3]
        raise TransferError(f"pretrained weights {source.name} do not fill the model: {first}")


# -- the entry point -----------------------------------------------------------------------------


def create_pretrained(
    name: str, kwargs: dict[str, Any], *, progress: bool = True
) -> tuple[Any, dict[str, Any]]:
    """Build ``torchvision:``/``timm:`` model ``name`` with the pretrained weights its kwargs ask for.

    Returns the model and the provenance record (``arch`` kwargs to rebuild the same architecture
    without weights, and ``weights``: where they came from, licence, categories, transforms).
    """
    library, _, model_name = name.partition(":")
    if library == "torchvision":
        model, info, sources = _create_torchvision(model_name, kwargs, progress)
    elif library == "timm":
        model, info, sources = _create_timm(model_name, kwargs, progress)
    else:
        raise InputError(
            f"pretrained weights by name exist for torchvision: and timm: models; for {name!r} load a file "
            "with torchsmith.load_weights(model, path)"
        )
    record = [s.describe() for s in sources]
    main = sources[0] if sources and not sources[0].meta.get("backbone") else None
    weights: dict[str, Any] = {"sources": record, "notes": info["notes"]}
    new_head = info.get("new_classes") is not None or info.get("new_head")  # the names were the old head's
    if main is not None and not new_head and main.meta.get("categories"):
        weights["categories"] = main.meta["categories"]
    if main is not None and main.meta.get("transforms"):
        weights["transforms"] = main.meta["transforms"]
    arch_name = (
        name
        if "build_name" not in info or not model_name.startswith("hf-hub:")
        else f"timm:{info['build_name']}"
    )
    arch: dict[str, Any] = {"name": arch_name, "kwargs": info["kwargs"]}
    if info.get("structure"):  # a rebuild builds what torchvision builds for these weights
        arch["weights_structure"] = info["structure"]
    return model, {"arch": arch, "weights": weights, "new_classes": info.get("new_classes")}


def finish_pretrained(model: Any, record: dict[str, Any]) -> None:
    """Record how ``model`` was made (``record`` from :func:`create_pretrained`), then give it the new
    head its ``num_classes=`` asked for, recorded as a surgery op after the weights (so a rebuild
    replays it). Kept here so that the zoo never imports the surgery concern."""
    from torchsmith._provenance import set_provenance

    set_provenance(model, arch=record["arch"], weights=record["weights"])
    if record.get("new_classes") is not None:
        from torchsmith.surgery import set_num_classes  # a new head, as timm's num_classes= does

        set_num_classes(model, record["new_classes"])


def rebuild_structure(arch: dict[str, Any]) -> Any:
    """Rebuild a recorded pretrained architecture (``arch`` with ``weights_structure``) without weights.

    torchvision builds some models differently when given weights (``FrozenBatchNorm2d`` and frozen
    layers in detection backbones, arguments fixed by the weights); the rebuild passes the same
    weights names to the same builder with fetching and loading switched off, so the saved tensors
    fit exactly. Nothing is downloaded or read.
    """
    from torchsmith._provenance import set_provenance
    from torchsmith._sandbox import check_kwargs
    from torchsmith.hub._torchvision import build_structure

    name, kwargs = arch.get("name"), arch.get("kwargs") or {}
    if not isinstance(name, str) or not name.startswith("torchvision:"):
        raise InputError(f"weights_structure is recorded only for torchvision: models, not {name!r}")
    check_kwargs(kwargs, f"model {name!r}: argument")
    model = build_structure(name.split(":", 1)[1], dict(kwargs), arch["weights_structure"])
    set_provenance(model, arch=arch)
    return model


# -- the weights' own metadata, for data and predictions ----------------------------------------


def weights_preprocessing(name: str, weights: Any) -> tuple[str, dict[str, Any]] | None:
    """The preprocessing the pretrained ``weights`` of model ``name`` were trained with, or None.

    Returns ``(source name, {"resize", "crop", "mean", "std", "interpolation"})`` from the same
    tables :func:`create_pretrained` records (torchvision's ``weights.transforms()``, timm's
    ``pretrained_cfg``); nothing is downloaded or read but an ``hf-hub:`` repository's config.json,
    which the build needs too. Explicit files (``{url|path}``) state no preprocessing: None.
    """
    if weights in (None, False) or isinstance(weights, (dict, os.PathLike)):
        return None
    source = resolve_weights(name, weights)
    if source.kind == "hf" and not source.meta:  # hf-hub: its config.json holds the pretrained_cfg
        cfg = _hf_config(source.hf_repo or "", source.hf_revision)
        source.meta = _timm_meta_from(dict(cfg.get("pretrained_cfg") or {}), cfg)
    transforms = source.meta.get("transforms") or {}
    return (source.name, dict(transforms)) if transforms.get("mean") or transforms.get("resize") else None


# Surgery after which the weights' head, and so its category names, are still the model's.
_HEAD_KEEPING_OPS = frozenset({"set_in_channels", "freeze", "unfreeze"})


def weights_categories(model: Any, num_outputs: int | None = None) -> list[str] | None:
    """The category names of the pretrained head ``model`` still has, or None.

    Names come from the ``torchsmith.weights`` record (kept by ``save``/``load_model`` and by a
    rebuild from a training checkpoint). They are dropped once the head may have changed: a build
    with another ``num_classes`` records none, and any recorded surgery other than
    ``set_in_channels``/``freeze``/``unfreeze`` (a new head, a replaced module) voids them; a model
    whose ``num_outputs`` differ from the number of names is not described by them either.
    """
    from torchsmith._provenance import get_provenance

    record = get_provenance(model)
    cats = (record.get("weights") or {}).get("categories")
    if not isinstance(cats, list) or not all(isinstance(c, str) for c in cats):
        return None
    if any(op.get("op") not in _HEAD_KEEPING_OPS for op in record.get("surgery") or []):
        return None
    if num_outputs is not None and num_outputs != len(cats):
        return None
    return list(cats)
