"""Training checkpoints: everything needed to continue a run exactly where it stopped.

A checkpoint holds the model, optimizer, scheduler and grad-scaler states, the random-number states
(Python, NumPy, torch, CUDA) of *every* rank, the position in the epoch (optimizer step and batches
done, so a resume skips them by index without loading them), the running metric sums of the epoch,
the metrics history, the best score so far, and the recipe. With the data order and augmentation
seeded per epoch and per sample (see :mod:`torchsmith.training.data`) this makes a resumed CPU run
end with bit-identical weights to one that was never interrupted.

Files are written with :func:`torchsmith._io.atomic_path` (temp file, fsync, rename), so a run killed
at any moment leaves the previous checkpoint intact, and read with ``torch.load(weights_only=True)``:
every value here is a tensor or a plain Python type, so nothing is unpickled.

>>> state = {"epoch": 1, "model": {"w": torch.zeros(2)}}            # doctest: +SKIP
>>> save_checkpoint("runs/x/last.pt", state)                        # doctest: +SKIP
>>> load_checkpoint("runs/x/last.pt")["epoch"]                      # doctest: +SKIP
1
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

from torchsmith._io import atomic_path
from torchsmith.errors import CheckpointError

__all__ = ["FORMAT", "capture_rng", "load_checkpoint", "restore_rng", "save_checkpoint"]

FORMAT = "torchsmith.training/1"


def capture_rng(device: Any = None) -> dict:
    """The current RNG states as tensors and plain types (safe for ``weights_only`` loading)."""
    import numpy as np
    import torch

    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": {"version": version, "state": torch.tensor(internal, dtype=torch.int64), "gauss": gauss},
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "torch": torch.get_rng_state(),
        "cuda": None,
    }
    if device is not None and getattr(device, "type", str(device)).startswith("cuda"):
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng(state: dict, device: Any = None) -> None:
    """Put back the RNG states that :func:`capture_rng` recorded."""
    import numpy as np
    import torch

    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
    n = state["numpy"]
    np.random.set_state(
        (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"])
    )
    torch.set_rng_state(state["torch"].cpu())
    if state.get("cuda") is not None and device is not None and str(device).startswith("cuda"):
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)


def save_checkpoint(path: str | os.PathLike, state: dict) -> Path:
    """Write ``state`` atomically to ``path`` (the old file survives any crash during the write)."""
    import torch

    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save({"format": FORMAT, **state}, tmp)
    return path


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict:
    """Read a training checkpoint safely (``weights_only=True``) onto ``map_location``."""
    import pickle

    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path}: file not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as e:
        lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()] or [type(e).__name__]
        first = next((ln for ln in lines if "Unpickler error" in ln), lines[0])
        raise CheckpointError(
            f"checkpoint {path}: cannot be read as a training checkpoint: {first}"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(
            f"checkpoint {path}: not a torchsmith training checkpoint (format "
            f"{state.get('format') if isinstance(state, dict) else type(state).__name__!r}, "
            f"expected {FORMAT!r})"
        )
    return state
