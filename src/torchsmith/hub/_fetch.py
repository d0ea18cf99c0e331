"""Download one file into a cache, verified: a ``.part`` file, resumed when it can be, renamed only
when its SHA-256 matches; never a half file under the real name.

torchvision's and timm's release files carry the first hex digits of their SHA-256 in the name
(``resnet50-11ad3fa6.pth``); a full hash, when known, is checked in full.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path

from torchsmith._io import fsync_dir
from torchsmith.errors import CheckpointError, InputError

__all__ = [
    "OfflineError",
    "check_hash",
    "check_reachable",
    "download",
    "hash_prefix_from_name",
    "is_offline",
    "sha256_of",
    "torch_hub_dir",
    "weights_off",
    "weights_off_active",
]

_CHUNK = 1 << 20
_HASH_IN_NAME = re.compile(r"-([a-f0-9]{6,64})\.")  # torch.hub's convention: name-<sha256 prefix>.ext


class OfflineError(InputError):
    """Weights are not in the cache and the network may not be used (offline mode)."""


# host:port -> why it could not be reached ("" when it could): probed once per process, so an
# offline machine gets one fast, clear error instead of a library's retries and warnings per file.
_REACHABLE: dict[tuple[str, int], str] = {}


def check_reachable(url: str, what: str, *, timeout: float = 5.0) -> None:
    """Raise :class:`OfflineError` when ``url``'s host (or the proxy for it) cannot be reached.

    One name lookup and TCP connection per host and process, remembered: the first weights call on
    a machine without a network fails in seconds, naming ``what`` is missing and how to go offline
    on purpose (``TORCHSMITH_OFFLINE=1`` with the file in the cache).
    """
    import socket
    import urllib.parse
    import urllib.request

    parts = urllib.parse.urlsplit(url)
    scheme = (parts.scheme or "https").lower()
    proxy = urllib.request.getproxies().get(scheme)
    if proxy and not urllib.request.proxy_bypass(parts.hostname or ""):
        parts = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    key = (host, port)
    if key not in _REACHABLE:
        try:
            with socket.create_connection(key, timeout=timeout):
                _REACHABLE[key] = ""
        except OSError as e:
            _REACHABLE[key] = str(e) or type(e).__name__
    why = _REACHABLE[key]
    if why:
        raise OfflineError(
            f"no network: {host}:{port} cannot be reached ({why}), and {what} is not cached; on a "
            "machine with a network run `torchsmith weights fetch` and copy the cache here, and set "
            "TORCHSMITH_OFFLINE=1 to work from the cache without trying the network"
        )


def torch_hub_dir() -> Path:
    """``$TORCH_HOME/hub`` (default ``$XDG_CACHE_HOME/torch/hub`` or ``~/.cache/torch/hub``), as torch.hub."""
    home = os.environ.get("TORCH_HOME")
    if not home:
        home = os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "torch")
    return Path(home).expanduser() / "hub"


# Set while a model is rebuilt for tensors that come from elsewhere (a checkpoint): see weights_off.
_WEIGHTS_OFF: contextvars.ContextVar[bool] = contextvars.ContextVar("torchsmith_weights_off", default=False)


def weights_off_active() -> bool:
    """True inside :func:`weights_off`."""
    return _WEIGHTS_OFF.get()


@contextlib.contextmanager
def weights_off() -> Iterator[None]:
    """Builds inside this block make the pretrained model's structure but fetch and read no weights.

    For rebuilding a model whose tensors come from a checkpoint: ``torchvision`` builds what it builds
    for the named weights (frozen BatchNorm, fixed arguments) with loading switched off, ``timm``
    builds the tagged model without its file, and nothing downloads (the process counts as offline,
    so an ``hf-hub:`` config that decides the architecture comes from the cache or is refused).
    """
    token = _WEIGHTS_OFF.set(True)
    try:
        yield
    finally:
        _WEIGHTS_OFF.reset(token)


def is_offline() -> bool:
    """True when ``TORCHSMITH_OFFLINE`` or ``HF_HUB_OFFLINE`` is set to a true value (or inside
    :func:`weights_off`, where nothing may download)."""
    if _WEIGHTS_OFF.get():
        return True
    for var in ("TORCHSMITH_OFFLINE", "HF_HUB_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on"):
            return True
    return False


def hash_prefix_from_name(filename: str) -> str | None:
    """The SHA-256 prefix in a torch.hub-style file name (``resnet50-11ad3fa6.pth`` -> ``11ad3fa6``)."""
    m = _HASH_IN_NAME.search(filename)
    return m.group(1) if m else None


def sha256_of(path: str | os.PathLike) -> str:
    """The hex SHA-256 of a file, read in 1 MiB pieces."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def check_hash(path: str | os.PathLike, expected: str | None, *, what: str = "") -> str:
    """Hash ``path`` and compare with ``expected`` (a full hex digest or a prefix); return the digest.

    A mismatch raises :class:`CheckpointError` naming the file, the expected and the actual hash.
    """
    actual = sha256_of(path)
    if expected and not actual.startswith(expected.lower()):
        raise CheckpointError(
            f"{path}: SHA-256 mismatch{' for ' + what if what else ''}: expected "
            f"{expected.lower()}{'...' if len(expected) < 64 else ''}, got {actual}; the file is damaged or "
            "not the one asked for (delete it and fetch again)"
        )
    return actual


def _progress(total: int | None, initial: int, name: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(
        total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024, desc=name,
        disable=not enabled, file=sys.stderr, leave=False,
    )  # fmt: skip


def download(
    url: str,
    dest: str | os.PathLike,
    *,
    sha256: str | None = None,
    progress: bool = True,
    timeout: float = 60.0,
) -> Path:
    """Fetch ``url`` to ``dest`` unless a verified copy is already there; return ``dest``.

    The bytes go to ``dest + ".part"``; an interrupted download is resumed from there (an HTTP
    ``Range`` request) or restarted when the server does not resume. ``dest`` appears only once the
    whole file is there and its hash matches ``sha256`` (a full digest or a prefix); on a mismatch the
    ``.part`` file is deleted. In offline mode (:func:`is_offline`) nothing is fetched: a missing file
    raises :class:`OfflineError` saying where to place it.
    """
    dest = Path(dest)
    if dest.exists():
        check_hash(dest, sha256, what=url)
        return dest
    if is_offline():
        raise OfflineError(
            f"offline (TORCHSMITH_OFFLINE/HF_HUB_OFFLINE is set) and {dest.name} is not cached: download "
            f"{url} and place it at {dest}" + (f" (its SHA-256 starts with {sha256[:16]})" if sha256 else "")
        )
    if not url.lower().startswith(("http://", "https://")):
        raise InputError(f"weights URL must be http:// or https://, got {url!r}")
    check_reachable(url, dest.name)
    import http.client
    import urllib.error
    import urllib.request

    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "torchsmith"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # the scheme was checked above
            if have and response.status != 206:  # the server sent the whole file: start again
                have = 0
            length = response.headers.get("Content-Length")
            total = (int(length) + have) if length and length.isdigit() else None
            with (
                open(part, "ab" if have else "wb") as out,
                _progress(total, have, dest.name, progress) as bar,
            ):
                while chunk := response.read(_CHUNK):
                    out.write(chunk)
                    bar.update(len(chunk))
                out.flush()
                os.fsync(out.fileno())
            if total is not None and part.stat().st_size != total:
                raise CheckpointError(
                    f"{url}: the download stopped at {part.stat().st_size} of {total} bytes; "
                    f"run the same call again to resume ({part} keeps what arrived)"
                )
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # asked to resume past the end: the part is whole or stale
            pass
        else:
            raise CheckpointError(f"{url}: download failed: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        raise CheckpointError(
            f"{url}: download failed ({reason}); {part.name} keeps "
            f"{part.stat().st_size if part.exists() else 0} bytes and the next call resumes from there; "
            f"or set TORCHSMITH_OFFLINE=1 and place the file at {dest}"
        ) from None
    try:
        check_hash(part, sha256, what=url)
    except CheckpointError:
        part.unlink(missing_ok=True)
        raise
    os.replace(part, dest)
    fsync_dir(dest.parent)
    return dest
