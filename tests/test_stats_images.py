"""vslerp.stats.open_image: the one answer to "is this a readable image" (datasets, the
pipeline's image paths, the editor's uploads), its reasons and its one-line messages."""

from __future__ import annotations

import io
import os
import pickle
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

import vslerp.stats as vs


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG claiming width × height 1-bit pixels with no pixel data: any decode fails, so a
    refusal naming the size proves the limit was checked on the header, before decoding."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def _noise(h: int, w: int, channels: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, channels), dtype=np.uint8)


@pytest.fixture
def files(tmp_path):
    Image.fromarray(_noise(20, 30)).save(tmp_path / "ok.png")
    buf = io.BytesIO()
    Image.fromarray(_noise(64, 64)).save(buf, format="JPEG")
    (tmp_path / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (tmp_path / "text.jpg").write_text("this is not an image")
    (tmp_path / "huge.png").write_bytes(_png_header_only(40_000, 40_000))  # > 2× PIL's limit
    (tmp_path / "big.png").write_bytes(_png_header_only(10_000, 10_000))  # > PIL's limit
    (tmp_path / "folder.png").mkdir()
    return tmp_path


@pytest.mark.parametrize(("name", "reason"), [
    ("missing.png", "missing"), ("folder.png", "a directory, not an image file"),
    ("text.jpg", "not an image"), ("truncated.jpg", "unreadable (truncated)"),
    ("huge.png", "decompression bomb (1600000000 pixels, limit "),
    ("big.png", "decompression bomb (10000×10000 = 100000000 pixels, limit "),
])
def test_refusals_give_a_short_reason_and_a_line_naming_the_path(files, name, reason):
    with pytest.raises(vs.UnreadableImage) as info:
        vs.open_image(files / name)
    err = info.value
    assert isinstance(err, ValueError)
    assert err.reason.startswith(reason) and err.path == files / name
    assert str(err) == f"image {files / name} cannot be read: {err.reason}"
    assert "\n" not in str(err)
    back = pickle.loads(pickle.dumps(err))  # DataLoader workers may send it across processes
    assert (back.reason, back.path, str(back)) == (err.reason, err.path, str(err))


def test_pixel_limit_is_checked_on_the_header_and_follows_pil_and_max_pixels(files, monkeypatch):
    with pytest.raises(vs.UnreadableImage, match=r"decompression bomb \(10×20 = 200 pixels, limit 199\)"):
        vs.open_image(io.BytesIO(_png_header_only(10, 20)), max_pixels=199)  # not decoded
    assert vs.open_image(files / "ok.png", max_pixels=600).size == (30, 20)  # 600 pixels: allowed
    with pytest.raises(vs.UnreadableImage, match="limit 599"):
        vs.open_image(files / "ok.png", max_pixels=599)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # read at each call
    with pytest.raises(vs.UnreadableImage, match="decompression bomb .*limit 100"):
        vs.open_image(files / "ok.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # PIL's "no limit"
    assert vs.open_image(files / "ok.png").size == (30, 20)
    for bad in (0, -5, True, 2.5, "100"):
        with pytest.raises(ValueError, match="max_pixels must be a positive int or None"):
            vs.open_image(files / "ok.png", max_pixels=bad)


def test_file_objects_and_pil_images(files):
    data = (files / "ok.png").read_bytes()
    assert vs.open_image(io.BytesIO(data)).mode == "RGB"
    with pytest.raises(vs.UnreadableImage) as info:
        vs.open_image(io.BytesIO(b"not an image"))
    assert info.value.path is None and str(info.value) == "not an image"  # no name to give
    with open(files / "text.jpg", "rb") as handle:  # a named file object is named
        with pytest.raises(vs.UnreadableImage, match=f"image {files / 'text.jpg'} cannot be read"):
            vs.open_image(handle)
    rgba = np.zeros((4, 6, 4), dtype=np.uint8)  # fully transparent black
    pil = Image.fromarray(rgba, "RGBA")
    got = vs.open_image(pil)
    assert got.mode == "RGB" and got.getpixel((0, 0)) == (255, 255, 255) and got is not pil
    assert pil.mode == "RGBA"  # the caller's image is left as it was
    with pytest.raises(vs.UnreadableImage, match=r"too large \(6×4 = 24 pixels, limit 23\)"):
        vs.open_image(pil, max_pixels=23)


def test_exif_orientation_applies_to_paths_and_to_pil_images_once(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    Image.fromarray(_noise(32, 48)).save(tmp_path / "rotated.jpg", exif=exif.tobytes())
    upright = vs.open_image(tmp_path / "rotated.jpg")
    assert upright.size == (32, 48)  # stored 48×32
    with Image.open(tmp_path / "rotated.jpg") as raw:  # a caller's own PIL.Image.open
        assert vs.open_image(raw).size == (32, 48)
    assert vs.open_image(upright).size == (32, 48)  # the tag is gone: not turned twice


def test_the_returned_image_does_not_hold_the_file(tmp_path):
    path = tmp_path / "gone.png"
    Image.fromarray(_noise(8, 8)).save(path)
    image = vs.open_image(path)
    os.remove(path)
    assert np.asarray(image).shape == (8, 8, 3)


def test_iter_images_records_the_short_reason(files):
    skipped = []
    got = list(vs.iter_images(files, skipped=skipped))
    assert [item.name for item, _ in got] == ["ok.png"]
    reasons = dict(skipped)
    assert reasons["text.jpg"] == "not an image" and reasons["truncated.jpg"] == "unreadable (truncated)"
    assert not any(str(files) in r for r in reasons.values())  # reasons, not paths, are stored
