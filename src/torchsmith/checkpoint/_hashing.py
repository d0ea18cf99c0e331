"""Per-tensor checksums of the files torchsmith writes: which algorithm, how it is recorded, how checked.

A checksum stored *inside* the file it checks guards against corruption (bit flips, a truncated or
mixed-up copy), not against an attacker, who would rewrite the checksum too. So files written by
:func:`torchsmith.save` record a fast non-cryptographic 128-bit hash, **xxh3-128** (the ``xxhash``
package: about 6 GB/s on one core here, against about 1 GB/s for SHA-256 with SHA extensions and
1.4 GB/s for zlib's CRC-32, whose 32 bits are also too few for files of many tensors), together
with the algorithm's name::

    torchsmith.checksum_algorithm = "xxh3-128"
    torchsmith.checksums          = {"fc.weight": "<32 hex digits>", ...}

Files written before (and files written where ``xxhash`` is missing) hold the older form,
``torchsmith.sha256 = {name: <64 hex digits>}``, which every torchsmith version verifies. SHA-256
stays wherever a hash comes from elsewhere (hub downloads and caches): that is :mod:`torchsmith.hub`.

The recorded name is data from the file: an unknown name is refused (:class:`CheckpointError`,
exit 2) rather than skipped, and a file that claims no algorithm (``""``, ``"none"``) is damaged,
never "verified".

>>> hexdigest(b"abc", "sha256")[:16]
'ba7816bf8f01cfea'
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from torchsmith.errors import CheckpointError, TorchsmithError, close_matches

__all__ = [
    "ALGORITHMS",
    "ALGORITHM_KEY",
    "LEGACY_KEY",
    "TABLE_KEY",
    "Recorded",
    "check_tensors",
    "checksum_metadata",
    "damaged_message",
    "hasher",
    "hexdigest",
    "recorded_checksums",
    "writing_algorithm",
]

ALGORITHM_KEY = "torchsmith.checksum_algorithm"
TABLE_KEY = "torchsmith.checksums"
LEGACY_KEY = "torchsmith.sha256"  # the form of files written before xxh3-128: always SHA-256
# name -> length of its hex digest
ALGORITHMS: dict[str, int] = {"xxh3-128": 32, "sha256": 64}
PREFERRED = "xxh3-128"
_HEX = frozenset("0123456789abcdef")
# Threads that hash while a model is built (xxhash and hashlib release the GIL on large buffers).
HASH_THREADS = min(4, os.cpu_count() or 1)
_INLINE_BYTES = 8 << 20  # less than this is hashed in the calling thread (a pool costs more)


class _MissingXxhash(TorchsmithError):
    """xxhash is not installed but a file's xxh3-128 checksums must be checked (exit 1: the setup)."""


def _xxhash() -> Any:
    try:
        import xxhash
    except ImportError:
        return None
    return xxhash


_warned_fallback = False


def writing_algorithm() -> str:
    """The algorithm ``save`` records: ``xxh3-128``, or ``sha256`` where ``xxhash`` is not installed.

    Why a fallback rather than an error: ``xxhash`` only makes checksums faster; a file with
    SHA-256 checksums is just as well protected and readable by every torchsmith version, so a
    broken install should slow a save down (with one warning), not fail it.
    """
    global _warned_fallback
    if _xxhash() is not None:
        return PREFERRED
    if not _warned_fallback:
        _warned_fallback = True
        warnings.warn(
            "torchsmith.save: the xxhash package is missing (pip install 'xxhash>=3'); recording SHA-256 "
            "checksums instead of xxh3-128 (slower to write and to verify, equally safe)",
            stacklevel=3,
        )
    return "sha256"


def hasher(algorithm: str, where: str = "checkpoint") -> Any:
    """A new incremental hash object (``update``, ``hexdigest``) for ``algorithm``.

    >>> h = hasher("sha256"); h.update(b"abc"); h.hexdigest()[:8]
    'ba7816bf'
    """
    if algorithm == "sha256":
        import hashlib

        return hashlib.sha256()
    if algorithm == "xxh3-128":
        xxhash = _xxhash()
        if xxhash is None:
            raise _MissingXxhash(
                f"{where}: its checksums are xxh3-128, which needs the xxhash package to check: "
                "pip install 'xxhash>=3' (a dependency of torchsmith; the install is incomplete)"
            )
        return xxhash.xxh3_128()
    raise CheckpointError(
        f"{where}: unknown checksum algorithm {algorithm!r}; expected one of {sorted(ALGORITHMS)}"
    )


def hexdigest(data: Any, algorithm: str, where: str = "checkpoint") -> str:
    """The hex digest of the bytes of ``data`` (any buffer) with ``algorithm``."""
    if algorithm == "xxh3-128" and _xxhash() is not None:
        return _xxhash().xxh3_128_hexdigest(data)
    h = hasher(algorithm, where)
    h.update(data)
    return h.hexdigest()


def checksum_metadata(algorithm: str, table: dict[str, str]) -> dict[str, str]:
    """The metadata entries that record ``table`` (name -> hex digest) made with ``algorithm``.

    SHA-256 is written in the older form (``torchsmith.sha256``), which older torchsmith versions
    verify too; other algorithms are written with their name.
    """
    text = json.dumps(table, sort_keys=True)
    if algorithm == "sha256":
        return {LEGACY_KEY: text}
    return {ALGORITHM_KEY: algorithm, TABLE_KEY: text}


@dataclass
class Recorded:
    """One checksum table of a file: its algorithm and name -> digest, or ``problem`` when damaged."""

    algorithm: str
    table: dict[str, str]
    problem: str | None = None


def _parse_table(text: Any, algorithm: str) -> Recorded:
    try:
        table = json.loads(text) if isinstance(text, str) else None
    except (ValueError, RecursionError):
        table = None
    if not isinstance(table, dict):
        return Recorded(algorithm, {}, f"not a JSON object of name -> {algorithm}")
    size = ALGORITHMS[algorithm]
    for name, value in table.items():
        if not (isinstance(value, str) and len(value) == size and set(value) <= _HEX):
            return Recorded(algorithm, {}, f"the entry for {str(name)[:80]!r} is not a {algorithm} digest")
    return Recorded(algorithm, table)


def recorded_checksums(metadata: dict[str, Any], where: Any = "checkpoint") -> list[Recorded]:
    """The checksum tables ``metadata`` records (none, the older SHA-256 one, a named one, or both).

    Raises :class:`~torchsmith.errors.CheckpointError` when the recorded algorithm is unknown,
    empty or ``none``, or when a table and its algorithm's name do not come together: a file is
    never passed as verified because its metadata says nothing can be checked.
    """
    found: list[Recorded] = []
    if LEGACY_KEY in metadata:
        found.append(_parse_table(metadata[LEGACY_KEY], "sha256"))
    if ALGORITHM_KEY not in metadata and TABLE_KEY not in metadata:
        return found
    name = metadata.get(ALGORITHM_KEY)
    if TABLE_KEY not in metadata:
        raise CheckpointError(
            f"{where}: damaged metadata: {ALGORITHM_KEY} is {str(name)[:40]!r} but there is no "
            f"{TABLE_KEY} table"
        )
    if not isinstance(name, str) or name.strip().lower() in ("", "none", "null", "off", "false"):
        shown = "absent" if name is None else repr(str(name)[:40])
        raise CheckpointError(
            f"{where}: damaged metadata: {TABLE_KEY} is recorded but {ALGORITHM_KEY} is {shown}; a file "
            f"must name its checksum algorithm (one of {', '.join(sorted(ALGORITHMS))}) to be verified"
        )
    if name not in ALGORITHMS:
        raise CheckpointError(
            f"{where}: {ALGORITHM_KEY} is {name[:40]!r}, a checksum algorithm this torchsmith does not know "
            f"(known: {', '.join(sorted(ALGORITHMS))}){close_matches(name, ALGORITHMS)}; written by a newer "
            "torchsmith? upgrade it, or re-save the file"
        )
    found.append(_parse_table(metadata[TABLE_KEY], name))
    return found


def damaged_message(path: Any, bad: list[str], algorithms: Iterable[str] = ("sha256",)) -> str:
    """The one-line message for a file whose tensors ``bad`` fail their recorded checksums."""
    shown = ", ".join(repr(b) for b in bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
    what = " / ".join(sorted(set(algorithms))) or "checksum"
    return (
        f"{path}: damaged: {len(bad)} tensor(s) no longer match the {what} recorded when it was saved: "
        f"{shown} (bit flips or an incomplete copy; re-copy or re-save the file)"
    )


# One piece of work: (names, algorithm, expected digest, bytes) or, for a tensor not stored as one
# byte range, (names, algorithm, expected, callable returning its C-order bytes).
_Job = tuple[list[str], str, str, Any]


def _run_jobs(jobs: list[_Job], nbytes: list[int], where: str, threads: int | None) -> list[str]:
    """Names whose digest differs; the work split by bytes over ``threads`` threads (one list each)."""

    def work(batch: list[_Job]) -> list[str]:
        bad: list[str] = []
        for names, algorithm, want, data in batch:
            if hexdigest(data() if callable(data) else data, algorithm, where) != want:
                bad.extend(names)
        return bad

    n = min(threads or HASH_THREADS, len(jobs))
    if n <= 1 or sum(nbytes) < _INLINE_BYTES:
        return work(jobs)
    batches: list[list[_Job]] = [[] for _ in range(n)]
    load = [0] * n
    for i in sorted(range(len(jobs)), key=lambda i: -nbytes[i]):  # largest first, to the lightest batch
        k = load.index(min(load))
        batches[k].append(jobs[i])
        load[k] += nbytes[i]
    with ThreadPoolExecutor(max_workers=n, thread_name_prefix="torchsmith-verify") as pool:
        return [name for bad in pool.map(work, batches) for name in bad]


def check_tensors(
    refs: dict[str, Any],
    metadata: dict[str, Any],
    buffer_of: Callable[[Any], Any],
    tensor_bytes: Callable[[Any], Any],
    *,
    where: Any = "checkpoint",
    threads: int | None = None,
) -> tuple[list[str], list[str]]:
    """Check every tensor of ``refs`` against the checksums ``metadata`` records.

    Returns ``(algorithms checked, names that fail)``, both empty for a file that records none; a
    damaged table is one failing entry that says so. ``buffer_of(storage_ref)`` gives the bytes
    of a storage's file (a memory map); ``tensor_bytes(ref)`` the C-order bytes of a tensor not
    stored as one range. Each distinct byte range is hashed once, in ``threads`` threads.
    """
    tables = recorded_checksums(metadata, where)
    algorithms = [t.algorithm for t in tables]
    bad = [f"(the checksum table itself is damaged: {t.problem})" for t in tables if t.problem is not None]
    jobs: list[_Job] = []
    nbytes: list[int] = []
    index: dict[tuple, int] = {}
    for t in tables:
        for name, want in t.table.items():
            ref = refs.get(name)
            if ref is None:
                continue
            # A tied copy written under its own name (torchsmith.tied) is read as its target, but
            # its own bytes are still in the file: they are the ones checked.
            ref = ref.extra.get("own_bytes", ref) if isinstance(ref.extra, dict) else ref
            rng = ref.byte_range()
            if rng is None or ref.storage is None:
                jobs.append(([name], t.algorithm, want, lambda r=ref: tensor_bytes(r)))
                nbytes.append(ref.nbytes)
                continue
            key = (ref.storage.file, rng, t.algorithm, want)
            if key in index:  # tied names stored once: their bytes are hashed once
                jobs[index[key]][0].append(name)
                continue
            index[key] = len(jobs)
            jobs.append(([name], t.algorithm, want, memoryview(buffer_of(ref.storage))[rng[0] : rng[1]]))
            nbytes.append(rng[1] - rng[0])
    if jobs and "xxh3-128" in algorithms and _xxhash() is None:
        hasher("xxh3-128", str(where))  # raises, saying what to install
    bad += _run_jobs(jobs, nbytes, str(where), threads)
    return algorithms, sorted(bad)
