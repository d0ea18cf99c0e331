"""Classify images with an exported ONNX model, without importing torch.

What a deployment has is the ``.onnx`` file: ``torchsmith export`` put its input shape, preprocessing
and class names into the file's metadata, so this module needs only ONNX Runtime, NumPy and Pillow.
Images are prepared as the run prepared its validation data (channels, size, resize, center crop,
normalize), on float pixels: Pillow resizes each channel as a 32-bit float image with the same
antialiased kernels as torchvision's resize (equal to about 1e-5). A preprocessing step with no
torch-free form is refused by name, never skipped.

>>> from torchsmith.export.onnx_predict import predict_onnx
>>> predict_onnx("digits.onnx", ["seven.png"], top_k=3)        # doctest: +SKIP
[{'input': 'seven.png', 'class': '7', 'index': 7, 'probability': 0.98, 'top': [...]}]
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

from torchsmith.errors import InputError

__all__ = ["predict_onnx"]

_RUNS_WITHOUT_TORCH = ("Resize", "CenterCrop", "Normalize", "ToImage", "ToDtype", "ToTensor")


def predict_onnx(
    model: str | os.PathLike, inputs: Sequence[str | os.PathLike], *, top_k: int = 1
) -> list[dict]:
    """Classify image files with an ONNX file written by ``torchsmith export``.

    Returns one dict per input, as :func:`torchsmith.predict` does: ``input``, ``class``, ``index``,
    ``probability`` and the ``top`` k choices; class names from the file's ``torchsmith.classes``.
    """
    import numpy as np

    session, meta = _open(model)
    (name, spec), *more = meta["inputs"].items() if meta.get("inputs") else ((None, None),)
    if name is None or more or len(spec.get("shape") or []) != 4:
        raise InputError(
            f"predict: {model} does not take one image batch (its recorded inputs: "
            f"{meta.get('inputs') or 'none'}); it was not exported by torchsmith from an image model"
        )
    _, channels, height, width = spec["shape"]
    files = [str(p) for p in inputs]
    if not files:
        raise InputError("predict: no inputs given")
    steps = _steps(meta.get("preprocessing") or {}, channels, (height, width), model)
    batch = np.stack([_prepare(f, channels, steps) for f in files]).astype(np.float32)
    if batch.shape[2:] != (height, width):
        raise InputError(
            f"predict: {model}: its preprocessing makes {batch.shape[2]}x{batch.shape[3]} images; the model "
            f"takes {height}x{width}"
        )
    if spec["shape"][0] != "batch" and spec["shape"][0] != len(files):
        raise InputError(f"predict: {model} was exported for batches of {spec['shape'][0]} images exactly")
    logits = session.run(None, {name: batch})[0].astype(np.float64)
    logits -= logits.max(axis=1, keepdims=True)
    probs = np.exp(logits)
    probs /= probs.sum(axis=1, keepdims=True)
    classes = meta.get("classes") or []
    k = max(1, min(top_k, probs.shape[1]))
    results = []
    for f, row in zip(files, probs):
        order = np.argsort(-row, kind="stable")[:k]
        top = [
            {
                "class": classes[j] if j < len(classes) else str(j),
                "index": int(j),
                "probability": round(float(row[j]), 6),
            }
            for j in order
        ]
        results.append(
            {"input": f, **{k_: top[0][k_] for k_ in ("class", "index", "probability")}, "top": top}
        )
    return results


def _open(model: str | os.PathLike) -> tuple[Any, dict]:
    try:
        import onnxruntime as ort
    except ImportError:
        raise InputError("predict --model needs onnxruntime: pip install 'torchsmith[export]'") from None
    from torchsmith.training.data import regular_file

    regular_file(str(model), "model")
    try:
        session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    except Exception as e:  # ONNX Runtime's own errors for a file that is not a model
        raise InputError(
            f"predict: {model} is not an ONNX model ONNX Runtime can run: {str(e)[:200]}"
        ) from None
    raw = session.get_modelmeta().custom_metadata_map
    meta = {}
    for key, value in raw.items():
        if key.startswith("torchsmith."):
            try:
                meta[key[len("torchsmith.") :]] = json.loads(value)
            except ValueError:
                raise InputError(f"predict: {model}: metadata {key!r} is not JSON") from None
    return session, meta


def _steps(pre: dict, channels: int, hw: tuple[int, int], model: Any) -> list[tuple[str, dict]]:
    """The preprocessing as (name, args) steps, checked to have a torch-free form."""
    from torchsmith.training.data import _parse_transform, _weights_items

    items: list = []
    if "transforms" in pre or "image_size" in pre:  # a training run's validation pipeline
        size = pre.get("image_size")
        if size is not None:
            items.append({"Resize": {"size": [size, size] if isinstance(size, int) else list(size)}})
        items += list(pre.get("transforms") or [])
    elif pre:  # pretrained weights' resize/crop/mean/std
        resize, normalize, _ = _weights_items(pre, channels)
        items += resize + ([normalize] if normalize else [])
    steps = []
    for item in items:
        name, args = _parse_transform(item, "preprocessing")
        if name not in _RUNS_WITHOUT_TORCH:
            raise InputError(
                f"predict: {model} records the preprocessing step {name!r}, which has no torch-free form "
                f"here (only {', '.join(_RUNS_WITHOUT_TORCH[:3])}); predict with the training checkpoint"
            )
        steps.append((name, args))
    if not any(name in ("Resize", "CenterCrop") for name, _ in steps):
        steps.insert(0, ("Resize", {"size": list(hw)}))  # what the model takes, as the run resized
    return steps


def _prepare(path: str, channels: int, steps: list[tuple[str, dict]]) -> Any:
    """One image as the run prepared it: read, scaled to [0, 1], then each step on float pixels."""
    import numpy as np

    from torchsmith.training.data import read_image

    pixels = np.asarray(read_image(path, "L" if channels == 1 else "RGB"), dtype=np.float32) / 255.0
    x = pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)  # CHW, as the run's tensors
    for name, args in steps:
        if name == "Resize":
            x = _resize(x, args.get("size"), args.get("interpolation"))
        elif name == "CenterCrop":
            x = _center_crop(x, args.get("size"))
        elif name == "Normalize":
            mean = np.asarray(args["mean"], dtype=np.float32).reshape(-1, 1, 1)
            std = np.asarray(args["std"], dtype=np.float32).reshape(-1, 1, 1)
            x = (x - mean) / std
    return x


def _resize(x: Any, size: Any, interpolation: Any) -> Any:
    """torchvision's Resize on float pixels (an int or [int] sets the shorter side, [h, w] both).

    Pillow resizes each channel as a 32-bit float image with the same antialiased kernels, which
    matches torchvision's ``antialias=True`` resize of a float tensor to about 1e-5.
    """
    import numpy as np
    from PIL import Image

    ih, iw = x.shape[1:]
    if isinstance(size, (list, tuple)) and len(size) == 2:
        h, w = int(size[0]), int(size[1])
    else:
        s = int(size[0] if isinstance(size, (list, tuple)) else size)
        h, w = (s, max(1, int(s * iw / ih))) if ih <= iw else (max(1, int(s * ih / iw)), s)
    kind = str(interpolation or "bilinear").lower().rsplit(".", 1)[-1]
    resample = {"nearest": Image.NEAREST, "bicubic": Image.BICUBIC}.get(kind, Image.BILINEAR)
    return np.stack(
        [np.asarray(Image.fromarray(ch, mode="F").resize((w, h), resample), dtype=np.float32) for ch in x]
    )


def _center_crop(x: Any, size: Any) -> Any:
    if isinstance(size, (list, tuple)):
        h, w = (int(size[0]), int(size[-1]))
    else:
        h = w = int(size)
    ih, iw = x.shape[1:]
    if h > ih or w > iw:
        raise InputError(f"predict: a {ih}x{iw} image cannot be center-cropped to {h}x{w}")
    top, left = round((ih - h) / 2.0), round((iw - w) / 2.0)
    return x[:, top : top + h, left : left + w]
