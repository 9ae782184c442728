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


def _rgb(image) -> np.ndarray:
    return np.asarray(image, dtype=np.uint8)


@pytest.mark.parametrize("kind", ["rgb", "rgba", "la", "gray", "gray16", "gray1", "bool"])
def test_a_numpy_array_is_normalised_as_its_file(tmp_path, kind):
    """The pixels of a file as an array give the RGB image the file gives (alpha on white, 16-bit
    /65535, gray → RGB): one normalisation for a path, a PIL image and an array."""
    rng = np.random.default_rng(3)
    arrays = {"rgb": rng.integers(0, 256, (9, 7, 3), dtype=np.uint8),
              "rgba": rng.integers(0, 256, (9, 7, 4), dtype=np.uint8),
              "la": rng.integers(0, 256, (9, 7, 2), dtype=np.uint8),
              "gray": rng.integers(0, 256, (9, 7), dtype=np.uint8),
              "gray16": rng.integers(0, 65536, (9, 7), dtype=np.uint16),
              "gray1": rng.integers(0, 256, (9, 7, 1), dtype=np.uint8),
              "bool": rng.integers(0, 2, (9, 7)).astype(bool)}
    array = arrays[kind]
    path = tmp_path / f"{kind}.png"
    Image.fromarray(array[..., 0] if kind == "gray1" else array).save(path)
    from_file = _rgb(vs.open_image(path))
    with Image.open(path) as opened:
        from_pil = _rgb(vs.open_image(opened))
    from_array = _rgb(vs.open_image(array))
    assert from_file.shape == (9, 7, 3)
    np.testing.assert_array_equal(from_pil, from_file)
    np.testing.assert_array_equal(from_array, from_file)


def test_float_and_wider_integer_arrays():
    pixels = np.random.default_rng(4).integers(0, 256, (5, 6, 3), dtype=np.uint8)
    want = _rgb(vs.open_image(pixels))
    for same in (pixels / 255.0, (pixels / 255.0).astype(np.float32), pixels.astype(np.int64)):
        np.testing.assert_array_equal(_rgb(vs.open_image(same)), want)


@pytest.mark.parametrize(("array", "match"), [
    (np.zeros((0, 4, 3), np.uint8), r"^empty \(4×0 pixels\)$"),
    (np.zeros((4, 4, 5), np.uint8), r"shape \(H, W\) or \(H, W, C\) with C = 1, 2, 3 or 4, got \(4, 4, 5\)"),
    (np.zeros((2, 4, 4, 3), np.uint8), r"got \(2, 4, 4, 3\)"),
    (np.full((4, 4), 1.5), r"float image array must hold values in \[0, 1\], got 1.5\.\.1.5"),
    (np.full((4, 4), np.nan), r"finite values in \[0, 1\], got NaN or Inf"),
    (np.full((4, 4), 300, np.int32), r"values in 0\.\.255, got 300\.\.300 \(int32\)"),
    (np.zeros((4, 4), np.complex64), r"integers, floats or bools, got complex64"),
])
def test_bad_arrays_are_refused_with_one_reason(array, match):
    with pytest.raises(vs.UnreadableImage, match=match):
        vs.open_image(array)


def test_an_empty_image_is_refused_not_divided_by():
    with pytest.raises(vs.UnreadableImage, match=r"^empty \(0×0 pixels\)$"):
        vs.open_image(Image.new("RGB", (0, 0)))
    with pytest.raises(vs.UnreadableImage, match=r"^empty \(5×0 pixels\)$"):
        vs.open_image(Image.new("RGBA", (5, 0)))


def test_the_pixel_limit_applies_to_arrays():
    with pytest.raises(vs.UnreadableImage, match=r"too large \(10×10 = 100 pixels, limit 99\)"):
        vs.open_image(np.zeros((10, 10, 3), np.uint8), max_pixels=99)
