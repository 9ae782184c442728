"""vslerp.ui.options.parse_values and vslerp.ui.images: labelled grids, PNG metadata, animations (no models)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vslerp.ui.images import (
    _fmt,
    make_grid,
    read_png_metadata,
    save_animation,
    save_png,
    sidecar_path,
)
from vslerp.ui.options import parse_values


def _cells(n, size=(40, 32), seed=0):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
            for _ in range(n)]


@pytest.mark.parametrize("text, expected", [
    ("0,0.5,1", [0.0, 0.5, 1.0]),
    (" -2 , 2 ", [-2.0, 2.0]),
    ("-2:2:5", list(np.linspace(-2, 2, 5))),
    ("0:1:11", list(np.linspace(0, 1, 11))),
    ("0.3:0.3:1", [0.3]),
])
def test_parse_values(text, expected):
    assert parse_values(text, "alphas") == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("text", ["", "0,,1", "a,b", "0:1", "0:1:0", "0:1:x", "0:1:2:3", "nan",
                                  "0:inf:3"])
def test_parse_values_errors_name_the_option(text):
    with pytest.raises(ValueError, match="thetas"):
        parse_values(text, "thetas")


def test_grid_without_labels_is_exact_tiling():
    cells = _cells(6)
    grid = make_grid(cells, [0, 1], [-1, 0, 1], labels=False)
    assert grid.size == (3 * 40, 2 * 32)
    arr = np.asarray(grid)
    # row-major: cell (r=1, c=2) is image 5
    np.testing.assert_array_equal(arr[32:64, 80:120], np.asarray(cells[5]))


def test_grid_labels_add_margins_and_ink():
    cells = _cells(6)
    grid = make_grid(cells, [0, 0.5], [-2, 0, 2])
    w, h = grid.size
    left, top = w - 3 * 40, h - 2 * 32
    assert left > 0 and top > 0
    arr = np.asarray(grid)
    np.testing.assert_array_equal(arr[top:top + 32, left:left + 40], np.asarray(cells[0]))
    assert (arr[:top, left:] < 128).any(), "no column labels drawn"
    assert (arr[top:, :left] < 128).any(), "no row labels drawn"


@pytest.mark.parametrize("value, text", [(-4 / 3, "-1.33"), (2 / 3, "0.667"), (-0.0, "0"),
                                         (2, "2"), (0.25, "0.25"), (1234.5, "1.23e3")])
def test_label_values_are_compact(value, text):
    assert _fmt(value) == text


@pytest.mark.parametrize("size, thetas", [(16, "0:1:5"), (64, "0:1:5"), (512, "0,1")])
def test_labels_stay_within_their_cells(size, thetas):
    """7 columns of α = -2 … 2: no label crosses into its neighbour's column (or row)."""
    thetas, alphas = parse_values(thetas, "thetas"), parse_values("-2:2:7", "alphas")
    cells = [Image.new("RGB", (size, size), "gray")] * (len(thetas) * len(alphas))
    grid = np.asarray(make_grid(cells, thetas, alphas).convert("L"))
    top, left = grid.shape[0] - len(thetas) * size, grid.shape[1] - len(alphas) * size
    assert top > 0 and left > 0
    for c in range(len(alphas)):
        span = grid[:top, left + c * size:left + (c + 1) * size]
        assert (span < 128).any(), f"no label above column {c}"
        if c:
            assert (grid[:top, left + c * size] > 250).all(), f"labels {c - 1}, {c} touch"
    for r in range(1, len(thetas)):
        assert (grid[top + r * size, :left] > 250).all(), f"labels of rows {r - 1}, {r} touch"


def test_grid_rejects_wrong_count():
    with pytest.raises(ValueError, match="5 images"):
        make_grid(_cells(5), [0, 1], [0, 1, 2])


def test_save_png_metadata_round_trip_and_overwrite(tmp_path):
    image = _cells(1)[0]
    meta = {"seed": 3, "thetas": [0.0, 0.5], "model": "θ-model"}
    path = save_png(image, tmp_path / "sub" / "g.png", meta)
    assert read_png_metadata(path) == meta
    assert json.loads(path.with_suffix(".json").read_text(encoding="utf-8")) == meta
    np.testing.assert_array_equal(np.asarray(Image.open(path)), np.asarray(image))
    with pytest.raises(FileExistsError, match="g.png"):
        save_png(image, path, {"seed": 4})
    assert read_png_metadata(path) == meta  # untouched
    save_png(image, path, {"seed": 4}, overwrite=True)
    assert read_png_metadata(path) == {"seed": 4}
    assert sorted(p.name for p in path.parent.iterdir()) == ["g.json", "g.png"]  # no temp files


def test_save_png_commit_point_is_the_png(tmp_path):
    """A sidecar without its PNG (a killed run) is stale: replaced without overwrite."""
    path = tmp_path / "g.png"
    path.with_suffix(".json").write_text('{"seed": 1}', encoding="utf-8")
    save_png(_cells(1)[0], path, {"seed": 2})
    assert json.loads(path.with_suffix(".json").read_text(encoding="utf-8")) == {"seed": 2}
    assert read_png_metadata(path) == {"seed": 2}


@pytest.mark.parametrize("fails", ["image", "sidecar"])
def test_a_failed_write_leaves_neither_image_nor_sidecar(tmp_path, monkeypatch, fails):
    """The image first, the sidecar last: a full disk on either leaves no sidecar describing an
    image that is not there (an old pair is kept when the image itself could not be written)."""
    import errno

    import vslerp.ui.images as outputs

    path = tmp_path / "g.png"
    save_png(_cells(1)[0], path, {"seed": 1})
    before = path.read_bytes()

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    if fails == "image":
        monkeypatch.setattr(Image.Image, "save", full)
    else:
        monkeypatch.setattr(outputs, "save_json", full)
    with pytest.raises(OSError, match="No space left on device"):
        save_png(_cells(1, seed=1)[0], path, {"seed": 2}, overwrite=True)
    left = sorted(p.name for p in tmp_path.iterdir())
    if fails == "image":  # nothing was replaced
        assert left == ["g.json", "g.png"] and path.read_bytes() == before
        assert json.loads(path.with_suffix(".json").read_text(encoding="utf-8")) == {"seed": 1}
    else:  # the new image is gone, and so is the old sidecar: it described the replaced image
        assert left == []


def test_sidecar_paths_never_collide():
    assert sidecar_path("a/grid.png").as_posix() == "a/grid.json"
    assert sidecar_path("a.gif").name == "a.gif.json" and sidecar_path("a.mp4").name == "a.mp4.json"


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux /proc")
def test_write_error_names_the_output_not_the_temporary_file():
    with pytest.raises(OSError) as err:
        save_png(_cells(1)[0], "/proc/x.png", {"seed": 1}, sidecar=False)
    assert "/proc/x.png" in str(err.value) and ".x-" not in str(err.value)


def test_read_png_metadata_without_chunk(tmp_path):
    path = tmp_path / "plain.png"
    _cells(1)[0].save(path)
    with pytest.raises(ValueError, match="vslerp"):
        read_png_metadata(path)


@pytest.mark.parametrize("suffix", [".gif", ".mp4"])
@pytest.mark.parametrize("pingpong", [False, True])
def test_animation_frame_counts(tmp_path, suffix, pingpong):
    import imageio.v3 as iio

    frames = _cells(5, size=(33, 31))  # odd sizes: MP4 pads to even
    path = save_animation(frames, tmp_path / f"a{suffix}", fps=5, pingpong=pingpong)
    count = sum(1 for _ in iio.imiter(path))
    assert count == (8 if pingpong else 5)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_animation_rejects_other_suffix(tmp_path):
    with pytest.raises(ValueError, match=".webm"):
        save_animation(_cells(2), tmp_path / "a.webm")
