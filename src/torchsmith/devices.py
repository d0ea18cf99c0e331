"""Which GPUs a process sees: ``CUDA_VISIBLE_DEVICES`` made loud (seed trap 6).

CUDA reads ``CUDA_VISIBLE_DEVICES`` once, when it initialises. Setting it later, or under a misspelt
name (``CUDA_VISABLE_DEVICES``, ``CUDA_VISIBLE_DEVICE``), or with a value CUDA cannot parse
(``"[0,1]"``, ``"0;1"``), does nothing at all, and training quietly runs on the wrong GPUs.
:func:`check_device_env` names each of those mistakes; :func:`set_visible_devices` sets the variable
or refuses when it can no longer take effect. ``torchsmith train`` checks the environment before it
builds anything.

>>> import torchsmith
>>> torchsmith.check_device_env({"CUDA_VISABLE_DEVICES": "1"})                    # doctest: +ELLIPSIS
["environment variable CUDA_VISABLE_DEVICES is not read by CUDA (did you mean 'CUDA_VISIBLE_DEVICES'?)..."]
>>> torchsmith.set_visible_devices([0, 1])        # before anything touches CUDA  # doctest: +SKIP
"""

from __future__ import annotations

import difflib
import os
import re
import sys
from collections.abc import Mapping, Sequence

from torchsmith.errors import InputError

__all__ = ["VISIBLE", "check_device_env", "set_visible_devices"]

VISIBLE = "CUDA_VISIBLE_DEVICES"

# Real variables whose names are close to CUDA_VISIBLE_DEVICES: never reported as misspellings.
_KNOWN = {
    VISIBLE,
    "CUDA_DEVICE_ORDER",
    "CUDA_DEVICE_MAX_CONNECTIONS",
    "NVIDIA_VISIBLE_DEVICES",
    "HIP_VISIBLE_DEVICES",
    "ROCR_VISIBLE_DEVICES",
    "GPU_DEVICE_ORDINAL",
    "CUDA_MPS_PIPE_DIRECTORY",
}
# One entry: a device index, a GPU-/MIG- UUID. CUDA stops at the first entry it cannot parse.
_ENTRY = re.compile(r"^(\d+|GPU-[0-9A-Za-z-]+|MIG-[0-9A-Za-z/-]+)$")


def _cuda_initialized() -> bool:
    torch = sys.modules.get("torch")  # only if the program already imported torch
    return bool(torch is not None and torch.cuda.is_initialized())


def check_device_env(environ: Mapping[str, str] | None = None) -> list[str]:
    """Problems with the environment's GPU selection, one plain sentence each ([] when fine).

    Reports names close to ``CUDA_VISIBLE_DEVICES`` that CUDA does not read, values CUDA cannot parse,
    and, when CUDA is already initialised in this process, a ``CUDA_VISIBLE_DEVICES`` that disagrees
    with the number of devices CUDA saw (the variable was set too late).
    """
    env = os.environ if environ is None else environ
    problems = []
    for name in sorted(env):
        upper = name.upper()
        if upper in _KNOWN and name == upper:
            continue
        if name != upper and upper == VISIBLE:
            problems.append(f"environment variable {name} is not read by CUDA: the name is case-sensitive; "
                            f"use {VISIBLE}")  # fmt: skip
        elif difflib.SequenceMatcher(None, upper, VISIBLE).ratio() >= 0.85 and upper not in _KNOWN:
            problems.append(
                f"environment variable {name} is not read by CUDA (did you mean {VISIBLE!r}?); "
                f"rename it, or unset it"
            )
    value = env.get(VISIBLE)
    if value is not None and value.strip():
        entries = [e.strip() for e in value.split(",")]
        bad = [e for e in entries if not _ENTRY.match(e)]
        if bad:
            problems.append(
                f"environment variable {VISIBLE}={value!r}: CUDA cannot parse {bad[0]!r} and ignores it "
                f"and everything after it; expected comma-separated device indices or GPU-/MIG- UUIDs, "
                f"such as '0,1'"
            )
        elif environ is None and _cuda_initialized():
            import torch

            seen = torch.cuda.device_count()
            if seen != len(entries):
                problems.append(
                    f"environment variable {VISIBLE}={value!r} names {len(entries)} device(s) but CUDA, "
                    f"already initialised in this process, sees {seen}: it was set after CUDA started "
                    f"and had no effect; set it before the first CUDA call (or in the shell)"
                )
    return problems


def set_visible_devices(devices: Sequence[int | str] | str) -> None:
    """Set ``CUDA_VISIBLE_DEVICES`` for this process, or refuse when it can no longer take effect.

    ``devices`` is a list of indices/UUIDs or a string such as ``"0,1"``; ``[]`` hides every GPU.
    Raises :class:`~torchsmith.errors.InputError` when CUDA is already initialised here (the seeds'
    ``os.environ["CUDA_VISIBLE_DEVICES"] = "1"`` after ``model.cuda()`` silently changes nothing)
    or when the value would not parse.
    """
    value = devices if isinstance(devices, str) else ",".join(str(d) for d in devices)
    value = value.replace(" ", "")
    problems = check_device_env({VISIBLE: value})
    if problems:
        raise InputError(problems[0])
    if _cuda_initialized():
        raise InputError(
            f"set_visible_devices({value!r}): CUDA is already initialised in this process, so "
            f"{VISIBLE} would have no effect; call it before the first CUDA call, or set it in the shell "
            f"({VISIBLE}={value} torchsmith train ...)"
        )
    os.environ[VISIBLE] = value
