"""Images as hostile input: a pixel limit checked before decoding, decode failures as InputError
naming the file, devices and FIFOs never opened, high bit-depth modes scaled (not clipped)."""

from __future__ import annotations

import io
import os
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from torchsmith.errors import InputError
from torchsmith.training.data import MAX_IMAGE_PIXELS, max_image_pixels, read_image, stack_images


def _png_header_only(path, width: int, height: int) -> None:
    """A tiny PNG whose header claims width x height (a decompression bomb's first bytes)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    body = zlib.compress(b"\0" * 64)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b""))


@pytest.mark.parametrize(
    ("width", "height"),
    [(12000, 12000), (MAX_IMAGE_PIXELS + 1, 1), (1, MAX_IMAGE_PIXELS + 1), (65535, 65535)],
)
def test_an_image_above_the_pixel_limit_is_refused_before_decoding(tmp_path, width, height):
    p = tmp_path / "bomb.png"
    _png_header_only(p, width, height)
    with pytest.raises(InputError, match=r"bomb\.png: .*pixels, more than the limit"):
        read_image(p, "RGB")


def test_the_limit_is_configurable(tmp_path, monkeypatch):
    p = tmp_path / "small.png"
    Image.new("L", (40, 30)).save(p)
    monkeypatch.setenv("TORCHSMITH_MAX_IMAGE_PIXELS", "1000")
    assert max_image_pixels() == 1000
    with pytest.raises(InputError, match="1,200 pixels"):
        read_image(p, "L")
    monkeypatch.setenv("TORCHSMITH_MAX_IMAGE_PIXELS", "1200")
    assert read_image(p, "L").size == (40, 30)
    monkeypatch.setenv("TORCHSMITH_MAX_IMAGE_PIXELS", "lots")
    with pytest.raises(InputError, match="TORCHSMITH_MAX_IMAGE_PIXELS"):
        read_image(p, "L")


def _damaged(kind: str, tmp_path):
    good = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 10, 10)).save(good, "PNG")
    data = good.getvalue()
    p = tmp_path / f"{kind}.png"
    if kind == "truncated":
        p.write_bytes(data[: len(data) // 2])
    elif kind == "garbage":
        p.write_bytes(os.urandom(300))
    elif kind == "empty":
        p.write_bytes(b"")
    elif kind == "bad-crc":
        p.write_bytes(data[:40] + bytes([data[40] ^ 0xFF]) + data[41:])
    elif kind == "text":
        p.write_text("not an image at all\n")
    return p


@pytest.mark.parametrize("kind", ["truncated", "garbage", "empty", "bad-crc", "text"])
def test_a_damaged_image_is_an_input_error_naming_the_file(tmp_path, kind):
    p = _damaged(kind, tmp_path)
    try:
        read_image(p, "RGB")
    except InputError as e:
        assert str(p) in str(e)
    # (a damaged file Pillow still decodes is fine too: no crash, no raw exception)


@pytest.mark.parametrize("special", ["fifo", "/dev/zero", "/dev/null", "folder"])
def test_devices_fifos_and_folders_are_never_opened(tmp_path, special):
    if special == "fifo":
        path = tmp_path / "pipe.png"
        os.mkfifo(path)  # opening it would block forever
    elif special == "folder":
        path = tmp_path / "dir.png"
        path.mkdir()
    else:
        path = special
    with pytest.raises(InputError, match="regular file"):
        read_image(path, "RGB")
    with pytest.raises(InputError, match="regular file"):
        stack_images([str(path)], lambda p: None, None)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("mode", ["I;16", "I", "F"])
def test_high_bit_depth_images_are_scaled_not_clipped(tmp_path, mode, seed):
    rng = np.random.default_rng(seed)
    if mode == "F":
        a = rng.random((9, 11), dtype=np.float32)
        a[0, 0], a[0, 1] = 1.0, 0.0
        want = np.clip(a * 255 + 0.5, 0, 255).astype(np.uint8)
        im = Image.fromarray(a, mode="F")
        path = tmp_path / "f.tiff"
    else:
        a = rng.integers(0, 65536, size=(9, 11)).astype(np.uint16)
        a[0, 0], a[0, 1] = 65535, 0
        want = (a / 257.0 + 0.5).astype(np.uint8)
        im = Image.fromarray(a) if mode == "I;16" else Image.fromarray(a.astype(np.int32), mode="I")
        path = tmp_path / ("x.png" if mode == "I;16" else "x.tiff")  # PNG has no 32-bit mode
    im.save(path)
    got = np.asarray(read_image(path, "L"))
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 1
    assert got[0, 0] == 255 and got[0, 1] == 0  # the whole range, scaled (clipping made most pixels 255)
    assert (got == 255).mean() < 0.1
    rgb = np.asarray(read_image(path, "RGB"))
    assert rgb.shape == (9, 11, 3) and np.array_equal(rgb[..., 0], got)


@pytest.mark.parametrize("mode", ["1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "I;16"])
def test_every_common_mode_reads_as_8_bit(tmp_path, mode):
    im = Image.new(mode, (5, 4))
    path = tmp_path / ("x.tiff" if mode == "CMYK" else "x.png")
    im.save(path)
    for want in ("L", "RGB"):
        out = read_image(path, want)
        assert out.mode == want and out.size == (5, 4)
