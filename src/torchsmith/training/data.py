"""Datasets for recipes: the bundled digits, an image folder, and the seed's image dir + CSV + list.

Every dataset yields ``(image, label)`` with ``image`` a float tensor ``(C, H, W)`` in ``[0, 1]``
(resized to ``data.image_size`` when given) and ``label`` an ``int``; the recipe's transforms
(``torchvision.transforms.v2`` names) run after that.

* ``digits``: scikit-learn's bundled 8×8 handwritten digits (1,797 images, 10 classes), nothing to
  download.
* ``image_folder``: one sub-folder per class (``root/cat/1.png``), like torchvision's ``ImageFolder``.
* ``csv``: seed 004's ``MyDataset``: an image folder, a CSV of labels (``image_column`` names the
  image, ``label_column`` holds the label) and a text file listing the images of the split.

Images that cannot be read and images with no label in the CSV are found when the dataset is built,
before training: an :class:`InputError` names the file (and the list file's line), or, with
``data.on_bad_sample: skip``, they are left out and counted in ``dataset.skipped``.

Random transforms draw from a generator seeded by ``(seed, epoch, index)``, so augmentation is the
same whatever the number of workers or processes, and a resumed run sees the same images.
"""

from __future__ import annotations

import csv as _csv
import inspect
import os
from pathlib import Path
from typing import Any

from torchsmith.errors import InputError, RecipeError, close_matches

__all__ = [
    "IMAGE_EXTENSIONS",
    "RecipeDataset",
    "ResumableSampler",
    "build_datasets",
    "build_transforms",
    "check_labels",
    "check_transforms",
    "load_images",
    "recipe_transforms",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")

# Pillow's own default decompression-bomb limit (Image.MAX_IMAGE_PIXELS, ~89.5 megapixels; Pillow
# only warns below twice that). Checked from the header, before a pixel is decoded; change it with
# TORCHSMITH_MAX_IMAGE_PIXELS or set_max_image_pixels().
MAX_IMAGE_PIXELS = 89_478_485
# A label or list file larger than this is refused before it is read.
MAX_TEXT_FILE_BYTES = 256 << 20


def max_image_pixels() -> int:
    """The pixel-count limit images are checked against (``TORCHSMITH_MAX_IMAGE_PIXELS`` overrides)."""
    value = os.environ.get("TORCHSMITH_MAX_IMAGE_PIXELS")
    if value is None or value == "":
        return MAX_IMAGE_PIXELS
    try:
        n = int(value)
    except ValueError:
        raise InputError(
            f"environment variable TORCHSMITH_MAX_IMAGE_PIXELS={value!r}: expected a whole number of pixels"
        ) from None
    if n < 1:
        raise InputError(f"environment variable TORCHSMITH_MAX_IMAGE_PIXELS={value!r}: must be at least 1")
    return n


def regular_file(path: str | os.PathLike, what: str, *, max_bytes: int | None = None) -> int:
    """Refuse anything but a regular file (a device, FIFO, socket or folder is never opened) and,
    with ``max_bytes``, a larger one; returns its size. ``what`` names it in the message."""
    import stat

    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise InputError(f"{what} {path}: file not found") from None
    except OSError as e:
        raise InputError(f"{what} {path}: cannot be read ({e.strerror})") from None
    if not stat.S_ISREG(st.st_mode):
        kind = "a folder" if stat.S_ISDIR(st.st_mode) else "not a regular file (a device, FIFO or socket)"
        raise InputError(f"{what} {path}: is {kind}; expected a regular file")
    if max_bytes is not None and st.st_size > max_bytes:
        raise InputError(f"{what} {path}: {st.st_size:,} bytes, more than the {max_bytes:,} allowed")
    return st.st_size


# --------------------------------------------------------------------------- transforms
def _parse_transform(item: Any, where: str) -> tuple[str, dict]:
    if isinstance(item, str):
        return item, {}
    if isinstance(item, dict) and "name" in item:
        args = {k: v for k, v in item.items() if k != "name"}
        return item["name"], args
    if isinstance(item, dict) and len(item) == 1:
        ((name, args),) = item.items()
        if args is None:
            args = {}
        if not isinstance(args, dict):
            raise RecipeError(
                f"recipe field {where!r}: arguments of {name!r} must be a mapping, got {args!r}"
            )
        return name, args
    raise RecipeError(
        f"recipe field {where!r}: expected a transform name, {{name: NAME, ARG: VALUE}} or "
        f"{{NAME: {{ARG: VALUE}}}}, got {item!r}"
    )


def _transform_classes() -> dict[str, type]:
    import torchvision.transforms.v2 as T

    return {
        n: c
        for n in dir(T)
        if isinstance(c := getattr(T, n), type) and issubclass(c, T.Transform) and n != "Transform"
    }


# torchvision's batch transforms: they need a batch and its labels, which a dataset item is not.
_BATCH_TRANSFORMS = ("MixUp", "CutMix")


def check_transforms(items: list, field: str) -> list[tuple[str, dict]]:
    """Check transform names and argument names; return ``[(name, args), ...]``."""
    if not items:
        return []
    classes = _transform_classes()
    out = []
    for i, item in enumerate(items):
        where = f"{field}[{i}]"
        name, args = _parse_transform(item, where)
        if name in _BATCH_TRANSFORMS:
            raise RecipeError(
                f"recipe field {where!r}: {name} mixes two samples and their labels, so it is a batch "
                "transform, not one for a single image; use train.mixup: {mixup_alpha: 0.8, "
                "cutmix_alpha: 1.0} (soft targets, timm's semantics)"
            )
        if name not in classes:
            raise RecipeError(
                f"recipe field {where!r}: unknown transform {name!r}{close_matches(str(name), classes)}; "
                "use a torchvision.transforms.v2 class name such as RandomAffine, Normalize, Resize"
            )
        params = inspect.signature(classes[name]).parameters
        if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            for key in args:
                if key not in params:
                    raise RecipeError(
                        f"recipe field '{where}.{key}': transform {name} has no argument {key!r}"
                        f"{close_matches(str(key), params)}; its arguments: {', '.join(params)}"
                    )
        out.append((name, args))
    return out


def build_transforms(items: list, field: str = "data.train_transforms") -> Any:
    """A ``torchvision.transforms.v2.Compose`` from recipe items, or None when the list is empty."""
    parsed = check_transforms(items, field)
    if not parsed:
        return None
    import torchvision.transforms.v2 as T

    classes = _transform_classes()
    built = []
    for i, (name, args) in enumerate(parsed):
        try:
            built.append(classes[name](**args))
        except (TypeError, ValueError) as e:
            raise RecipeError(f"recipe field '{field}[{i}]': {name}({args}) failed: {e}") from None
    return T.Compose(built)


# Transforms that decide the image size themselves: with one of them the weights' resize/crop are not added.
_SIZE_SETTERS = frozenset(
    {"Resize", "RandomResize", "RandomResizedCrop", "CenterCrop", "RandomCrop", "FiveCrop", "TenCrop",
     "RandomShortestSize", "ScaleJitter", "RandomIoUCrop", "RandomZoomOut"}
)  # fmt: skip
_SPLITS = ("train_transforms", "val_transforms")


def _weights_items(pre: dict[str, Any], channels: int) -> tuple[list[dict], dict | None, list[str]]:
    """The weights' preprocessing as recipe items: ``(resize and crop, normalize, notes)``."""
    size: list[dict] = []
    if pre.get("resize"):
        args: dict[str, Any] = {"size": list(pre["resize"]), "antialias": True}
        if pre.get("interpolation"):
            args["interpolation"] = pre["interpolation"]
        size.append({"Resize": args})
    if pre.get("crop"):
        size.append({"CenterCrop": {"size": list(pre["crop"])}})
    notes: list[str] = []
    normalize = None
    mean, std = list(pre.get("mean") or []), list(pre.get("std") or [])
    if mean and std:
        if len(mean) != channels and channels == 1:
            # a 1-channel stem made by set_in_channels sums the RGB kernel: gray stands for R = G = B
            mean, std = [sum(mean) / len(mean)], [sum(std) / len(std)]
            notes.append("mean/std averaged over the weights' channels for 1-channel images")
        elif len(mean) == 1 and channels > 1:
            mean, std = mean * channels, std * channels
        normalize = {"Normalize": {"mean": mean, "std": std}}
    return size, normalize, notes


def _item_text(item: dict) -> str:
    ((name, args),) = item.items()
    return f"{name}({', '.join(f'{k}={v}' for k, v in args.items() if k != 'antialias')})"


def recipe_transforms(recipe: dict) -> dict[str, Any]:
    """The transforms each split runs: the recipe's own, completed by the pretrained weights' preprocessing.

    With ``model.weights`` that state their preprocessing (torchvision's ``weights.transforms()``,
    timm's ``pretrained_cfg``), each split's list gets what it leaves out: the weights' ``Resize`` and
    ``CenterCrop`` first unless ``data.image_size`` or a size-setting transform of the recipe's decides
    the size, and their ``Normalize`` last unless the recipe's list has a ``Normalize``. So an empty
    list becomes the weights' evaluation preprocessing, and a training list of augmentations runs
    between the weights' resize and normalization. Recipe-given transforms are kept as given.

    Returns ``{"train_transforms": [...], "val_transforms": [...], "source": NAME or None,
    "notes": [lines for the run's set-up]}``. Training, evaluation and ``predict`` all call this,
    so a checkpoint's predictions are prepared as its run's validation data was.
    """
    d = recipe["data"]
    out: dict[str, Any] = {k: list(d[k] or []) for k in _SPLITS} | {"source": None, "notes": []}
    m = recipe["model"]
    if m.get("spec") is not None or m.get("weights") in (None, False) or not m.get("name"):
        return out
    from torchsmith.hub import weights_preprocessing

    try:
        found = weights_preprocessing(str(m["name"]), m["weights"])
    except InputError as e:
        raise RecipeError(f"recipe field 'model.weights': {e}") from None
    if found is None:
        return out
    source, pre = found
    size, normalize, notes = _weights_items(pre, d["channels"])
    for key in _SPLITS:
        given = out[key]
        names = {_parse_transform(item, f"data.{key}")[0] for item in given}
        before = size if d["image_size"] is None and not names & _SIZE_SETTERS else []
        after = [normalize] if normalize is not None and "Normalize" not in names else []
        if not before and not after:
            continue
        out[key] = [*before, *given, *after]
        text = [_item_text(i) for i in before] + ([f"the recipe's {len(given)}"] if given else [])
        text += [_item_text(i) for i in after]
        notes.append(f"data.{key}: {', '.join(text)}")
    if d["image_size"] is not None and size:
        notes.append(f"the weights' resize/crop not used: data.image_size {d['image_size']} sets the size")
    out["source"] = source
    out["notes"] = [f"data: preprocessing from the weights {source}"] + [f"data:   {n}" for n in notes]
    return out


# --------------------------------------------------------------------------- datasets
class RecipeDataset:
    """A map-style dataset over samples that yield ``(C, H, W)`` float images and integer labels.

    ``classes`` names the labels; ``skipped`` lists ``(file, reason)`` left out under
    ``on_bad_sample: skip``. ``set_epoch`` makes random transforms reproducible per epoch.
    """

    def __init__(
        self,
        loader: Any,
        items: list,
        labels: list[int],
        classes: list[str],
        transform: Any = None,
        *,
        seed: int = 0,
        skipped: list | None = None,
    ):
        self._load = loader
        self.items = items
        self.labels = labels
        self.classes = classes
        self.transform = transform
        self.seed = seed
        self.epoch = 0
        self.skipped = skipped or []

    def __len__(self) -> int:
        return len(self.items)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image = self._load(self.items[index])
        if self.transform is not None:
            import torch

            # A private RNG stream per (seed, epoch, index): same augmentation with any worker count,
            # any number of processes, and after a resume. fork_rng leaves the global stream alone;
            # only the CPU generator is seeded (torch.manual_seed would also queue CUDA/XPU seeding,
            # ~2 ms a call).
            with torch.random.fork_rng(devices=[]):
                torch.default_generator.manual_seed((self.seed * 1_000_003 + self.epoch) * 10_000_019 + index)
                image = self.transform(image)
        return image, self.labels[index]

    def subset(self, indices: list[int], transform: Any) -> RecipeDataset:
        return RecipeDataset(
            self._load,
            [self.items[i] for i in indices],
            [self.labels[i] for i in indices],
            self.classes,
            transform,
            seed=self.seed,
            skipped=self.skipped,
        )


class _TensorLoader:
    """Items are indices into a preprocessed tensor (the digits)."""

    def __init__(self, images: Any):
        self.images = images

    def __call__(self, i: int) -> Any:
        return self.images[i]


class _FileLoader:
    """Items are image paths: open, convert, scale to [0, 1], resize."""

    def __init__(self, channels: int, size: Any):
        self.mode = "L" if channels == 1 else "RGB"
        self.size = size

    def __call__(self, path: str) -> Any:
        import torch
        from torchvision.transforms.v2 import functional as F

        im = read_image(path, self.mode)
        x = F.to_dtype(F.to_image(im), torch.float32, scale=True)
        if self.size is not None:
            x = F.resize(x, list(self.size), antialias=True)
        return x


def read_image(path: str | os.PathLike, mode: str) -> Any:
    """Open an image file as a PIL image in ``mode`` ("L" or "RGB"), safely.

    Only a regular file is opened; its pixel count, read from the header, is checked against
    :func:`max_image_pixels` before anything is decoded (a 140 kB PNG can hold 12000x12000 pixels);
    every decode failure is an :class:`InputError` naming the file. Modes are converted by scaling:
    16- and 32-bit integer images (``I;16``, ``I``) map their range onto 0..255 (``/257`` for
    16-bit), float images (``F``) their 0..1 range, never clipped at 255.
    """
    regular_file(path, "image")
    limit = max_image_pixels()
    try:
        with _open_unchecked(path) as im:
            w, h = im.size
            if w * h > limit:
                raise InputError(
                    f"image {path}: {w}x{h} = {w * h:,} pixels, more than the limit of {limit:,} "
                    "(a decompression bomb, or set TORCHSMITH_MAX_IMAGE_PIXELS higher); not decoded"
                )
            return _convert_scaled(im, mode)
    except InputError:
        raise
    except Exception as e:  # Pillow raises many kinds for damaged or hostile files
        raise InputError(f"image {path}: cannot be decoded as an image ({type(e).__name__})") from None


def _convert_scaled(im: Any, mode: str) -> Any:
    """``im`` in ``mode``, with high bit-depth modes scaled to 8 bits rather than clipped."""
    import numpy as np
    from PIL import Image

    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        a = np.asarray(im)
        if im.mode == "F":
            a8 = np.clip(np.nan_to_num(a.astype(np.float64)) * 255.0 + 0.5, 0, 255)
        elif im.mode == "I":
            # 32-bit integer images from 16-bit files (PNG mode I) hold 0..65535: scale by /257.
            top = 65535 if a.size == 0 or a.max() <= 65535 else int(a.max())
            a8 = np.clip(a.astype(np.float64), 0, top) * (255.0 / top) + 0.5
        else:
            a8 = a.astype(np.float64) / 257.0 + 0.5
        im = Image.fromarray(a8.astype(np.uint8), mode="L")
    return im.convert(mode)


def _size(size: Any) -> tuple[int, int] | None:
    if size is None:
        return None
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def _digits(d: dict, seed: int) -> RecipeDataset:
    import numpy as np
    import torch
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.from_numpy(np.asarray(bunch.images, dtype=np.float32) / 16.0).unsqueeze(1)
    size = _size(d["image_size"])
    if size is not None and size != (8, 8):
        images = torch.nn.functional.interpolate(images, size=size, mode="bilinear", align_corners=False)
    if d["channels"] == 3:
        images = images.expand(-1, 3, -1, -1)
    images = images.contiguous()
    labels = [int(t) for t in bunch.target]
    return RecipeDataset(
        _TensorLoader(images), list(range(len(labels))), labels, [str(i) for i in range(10)], seed=seed
    )


def _open_unchecked(path: str | os.PathLike) -> Any:
    """``Image.open`` (header only) without Pillow's own bomb check: its limit, warning or error
    would come before ours, and the caller checks the size against :func:`max_image_pixels`."""
    import warnings

    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            return Image.open(path)
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def _verify(path: str) -> str | None:
    limit = max_image_pixels()
    try:
        with _open_unchecked(path) as im:
            w, h = im.size
            if w * h > limit:
                return f"{w}x{h} pixels, more than the limit of {limit:,} (TORCHSMITH_MAX_IMAGE_PIXELS)"
            im.verify()
    except Exception as e:  # PIL raises many kinds for damaged files
        return f"cannot be read ({type(e).__name__}: {e})"
    return None


def _image_folder(root: str, d: dict, seed: int, classes: list[str] | None = None) -> RecipeDataset:
    rootp = Path(root)
    if not rootp.is_dir():
        raise InputError(f"data folder {root}: not a directory")
    found = sorted(p.name for p in rootp.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not found:
        raise InputError(f"data folder {root}: no class sub-folders (expected root/<class>/<image>)")
    if classes is None:
        classes = found
    else:
        extra = [c for c in found if c not in classes]
        if extra:
            raise InputError(f"data folder {root}: classes {extra} are not in the training classes {classes}")
    items, labels, skipped = [], [], []
    for ci, cname in enumerate(classes):
        cdir = rootp / cname
        if not cdir.is_dir():
            continue
        for f in sorted(cdir.iterdir()):
            if f.suffix.lower() not in IMAGE_EXTENSIONS or not f.is_file():
                continue
            problem = _verify(str(f))
            if problem:
                if d["on_bad_sample"] == "skip":
                    skipped.append((str(f), problem))
                    continue
                raise InputError(
                    f"image {f}: {problem}; fix or remove it, or set data.on_bad_sample: skip "
                    "to leave such files out"
                )
            items.append(str(f))
            labels.append(ci)
    if not items:
        raise InputError(
            f"data folder {root}: no readable images with extensions {', '.join(IMAGE_EXTENSIONS)}"
        )
    loader = _FileLoader(d["channels"], _size(d["image_size"]))
    return RecipeDataset(loader, items, labels, classes, seed=seed, skipped=skipped)


def _read_label_csv(path: str, image_col: str, label_col: str | int) -> tuple[dict[str, str], str]:
    regular_file(path, "label file", max_bytes=MAX_TEXT_FILE_BYTES)
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(_csv.reader(f))
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"label file {path}: cannot be read: {e}") from None
    if not rows:
        raise InputError(f"label file {path}: empty (expected a header row and one row per image)")
    header = [h.strip() for h in rows[0]]
    if image_col not in header:
        raise InputError(
            f"label file {path}: no column {image_col!r} (data.image_column)"
            f"{close_matches(image_col, header)}; "
            f"columns: {', '.join(header)}"
        )
    if isinstance(label_col, int):
        if not 0 <= label_col < len(header):
            raise InputError(
                f"label file {path}: data.label_column {label_col} is out of range (0..{len(header) - 1})"
            )
        li = label_col
    else:
        if label_col not in header:
            raise InputError(
                f"label file {path}: no column {label_col!r} (data.label_column)"
                f"{close_matches(label_col, header)}; columns: {', '.join(header)}"
            )
        li = header.index(label_col)
    ii = header.index(image_col)
    table = {}
    for lineno, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        if len(row) <= max(ii, li):
            raise InputError(
                f"label file {path} line {lineno}: expected {len(header)} columns, got {len(row)}"
            )
        table[row[ii].strip()] = row[li].strip()
    return table, header[li]


def _csv_split(root: str, list_file: str, table: dict[str, str], d: dict) -> tuple[list, list, list]:
    regular_file(list_file, "list file", max_bytes=MAX_TEXT_FILE_BYTES)
    try:
        lines = Path(list_file).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"list file {list_file}: cannot be read: {e}") from None
    items, raw, skipped = [], [], []
    skip = d["on_bad_sample"] == "skip"
    for lineno, line in enumerate(lines, start=1):
        name = line.strip()
        if not name:
            continue
        where = f"list file {list_file} line {lineno}"
        if name not in table:
            if skip:
                skipped.append((name, f"no label in {d['csv']}"))
                continue
            raise InputError(
                f"{where}: image {name!r} has no row in label file {d['csv']} "
                f"(column {d['image_column']!r}); "
                "set data.on_bad_sample: skip to leave such images out"
            )
        path = os.path.join(root, name)
        problem = "file not found" if not os.path.isfile(path) else _verify(path)
        if problem:
            if skip:
                skipped.append((path, problem))
                continue
            raise InputError(
                f"{where}: image {path}: {problem}; set data.on_bad_sample: skip to leave such images out"
            )
        items.append(path)
        raw.append(table[name])
    if not items:
        raise InputError(f"list file {list_file}: no usable images")
    return items, raw, skipped


def _label_index(raw: list[str]) -> tuple[list[str], dict[str, int]]:
    try:
        ints = sorted({int(v) for v in raw})
    except ValueError:
        classes = sorted(set(raw))
        return classes, {c: i for i, c in enumerate(classes)}
    if ints and ints[0] >= 0:
        classes = [str(i) for i in range(ints[-1] + 1)]
        return classes, {str(v): int(v) for v in raw} | {c: int(c) for c in classes}
    classes = [str(i) for i in ints]
    return classes, {c: i for i, c in enumerate(classes)}


def _csv_datasets(d: dict, seed: int) -> tuple[RecipeDataset, RecipeDataset | None]:
    table, _ = _read_label_csv(d["csv"], d["image_column"], d["label_column"])
    root = d["root"]
    items, raw, skipped = _csv_split(root, d["list"], table, d)
    vitems, vraw, vskipped = ([], [], [])
    if d["val_list"]:
        vitems, vraw, vskipped = _csv_split(root, d["val_list"], table, d)
    classes, index = _label_index(raw + vraw)
    loader = _FileLoader(d["channels"], _size(d["image_size"]))
    train = RecipeDataset(loader, items, [index[v] for v in raw], classes, seed=seed, skipped=skipped)
    val = None
    if vitems:
        val = RecipeDataset(loader, vitems, [index[v] for v in vraw], classes, seed=seed, skipped=vskipped)
    return train, val


def _split(n: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    import torch

    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=g).tolist()
    n_val = round(n * fraction)
    return sorted(perm[n_val:]), sorted(perm[:n_val])


def _data_source(d: dict, split: str) -> str:
    if d["kind"] == "csv":
        return f"label file {d['csv']}"
    if d["kind"] == "image_folder":
        root = d["val_root"] if split == "validation" and d["val_root"] else d["root"]
        return f"data folder {root}"
    return f"data.kind {d['kind']}"


def check_labels(dataset: RecipeDataset, num_outputs: int, d: dict, split: str = "training") -> None:
    """Raise :class:`RecipeError` when a label of ``dataset`` has no output among the model's ``num_outputs``.

    Called when the run is set up, so a 4th class folder or a CSV label 7 for a 3-output model is a
    clear input error naming the class and a sample, not an IndexError at the first step.

    >>> ds = RecipeDataset(None, ["a.png", "b.png"], [0, 3], ["cat", "dog", "eel", "fox"])
    >>> try:
    ...     check_labels(ds, 3, {"kind": "csv", "csv": "labels.csv"})
    ... except RecipeError as e:
    ...     print(str(e)[:64])
    label file labels.csv: class 'fox' (label index 3) of 1 training
    """
    bad = [i for i, label in enumerate(dataset.labels) if not 0 <= label < num_outputs]
    if not bad:
        return
    label = max(dataset.labels[i] for i in bad)
    first = next(i for i in bad if dataset.labels[i] == label)
    name = dataset.classes[label] if 0 <= label < len(dataset.classes) else str(label)
    need = max(len(dataset.classes), label + 1)
    item = dataset.items[first]
    sample = repr(str(item)) if d["kind"] != "digits" else f"#{item}"
    raise RecipeError(
        f"{_data_source(d, split)}: class {name!r} (label index {label}) of "
        f"{sum(dataset.labels[i] == label for i in bad)} {split} sample(s), e.g. {sample}, has no output "
        f"in the model, which has {num_outputs} outputs (label indices 0..{num_outputs - 1}) for the "
        f"data's {need} classes; set the model's number of classes to {need} (e.g. "
        f"model.kwargs.num_classes: {need}) or remove those samples"
    )


def build_datasets(recipe: dict) -> tuple[RecipeDataset, RecipeDataset | None]:
    """The training and validation datasets a recipe describes (validation None when there is none).

    Without a separate validation set, ``data.val_fraction`` of the samples are held out by a split
    seeded with the recipe's seed: the same split on every run and every process.
    """
    d, seed = recipe["data"], recipe["seed"]
    items = recipe_transforms(recipe)  # the recipe's, completed by the pretrained weights' preprocessing
    train_tf = build_transforms(items["train_transforms"], "data.train_transforms")
    val_tf = build_transforms(items["val_transforms"], "data.val_transforms")
    val = None
    if d["kind"] == "digits":
        full = _digits(d, seed)
    elif d["kind"] == "image_folder":
        full = _image_folder(d["root"], d, seed)
        if d["val_root"]:
            val = _image_folder(d["val_root"], d, seed, classes=full.classes)
    else:
        full, val = _csv_datasets(d, seed)
    if d["limit"] is not None:
        full = full.subset(list(range(min(d["limit"], len(full)))), None)
    if val is not None:
        return full.subset(list(range(len(full))), train_tf), val.subset(list(range(len(val))), val_tf)
    if d["val_fraction"] == 0:
        return full.subset(list(range(len(full))), train_tf), None
    tr, va = _split(len(full), d["val_fraction"], seed)
    return full.subset(tr, train_tf), full.subset(va, val_tf)


def load_images(paths: list[str], recipe: dict) -> Any:
    """Load image files as one batch, the way the recipe's validation data is prepared."""

    d = recipe["data"]
    size = _size(d["image_size"])
    if d["kind"] == "digits" and size is None:
        size = (8, 8)
    tf = build_transforms(recipe_transforms(recipe)["val_transforms"], "data.val_transforms")
    return stack_images(paths, _FileLoader(d["channels"], size), tf)


def stack_images(paths: list[str], loader: Any, tf: Any) -> Any:
    """The files at ``paths`` read by ``loader``, transformed by ``tf`` (or not), as one batch."""
    import torch

    images = []
    for p in paths:
        regular_file(p, "input")
        x = loader(p)
        images.append(tf(x) if tf is not None else x)
    return torch.stack(images)


# --------------------------------------------------------------------------- sampling
class ResumableSampler:
    """Shuffled (or ordered) indices for one rank, reproducible per epoch, resumable mid-epoch.

    The permutation for an epoch comes from a generator seeded with ``seed + epoch``; it is padded
    to a multiple of ``world_size`` (like ``DistributedSampler``) and rank ``r`` takes positions
    ``r, r + world, ...``, so with the global batch ``B`` split ``B / world`` per rank the ranks
    together see exactly the batches a single process sees. ``start`` skips the first samples of this
    rank's share (a resume by index: nothing is loaded for the skipped batches).
    """

    def __init__(
        self, n: int, *, shuffle: bool, seed: int = 0, rank: int = 0, world_size: int = 1, pad: bool = True
    ):
        self.n = n
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.pad = pad
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch = epoch
        self.start = start

    def _indices(self) -> list[int]:
        import torch

        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        if self.pad and self.world_size > 1 and len(order) % self.world_size:
            extra = self.world_size - len(order) % self.world_size
            order += (order * (extra // max(len(order), 1) + 1))[:extra]
        return order[self.rank :: self.world_size]

    def __len__(self) -> int:
        if self.pad and self.world_size > 1:
            total = -(-self.n // self.world_size)
        else:
            total = len(range(self.rank, self.n, self.world_size))
        return max(total - self.start, 0)

    def __iter__(self):
        return iter(self._indices()[self.start :])
