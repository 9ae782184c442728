"""`vslerp grid / animate / batch` end to end, as subprocesses, on the tiny random Kandinsky.

Renders are shared (module-scoped fixtures) to keep CI time down; error paths are checked
before any model is loaded, except the two that are about loading (unknown id, wrong stats).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from vslerp.ui.outputs import read_png_metadata

VSLERP = str(Path(sys.executable).with_name("vslerp"))  # the installed console script
SIZE = 64
THETAS, ALPHAS = [0.0, 1.0], [-2.0, 0.0, 2.0]


def vslerp(*args, cwd=None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([VSLERP, *map(str, args)], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=300)


def _stderr_lines(proc):
    return [line for line in proc.stderr.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def work(tmp_path_factory, tiny_kandinsky):
    """Folder with a source image (a θ=0 rendering would do; random pixels are enough for the
    random encoder), a target image, and the model options."""
    root = tmp_path_factory.mktemp("cli_grid")
    rng = np.random.default_rng(0)
    for name in ("src.png", "tgt.png"):
        Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)).save(root / name)
    prior, decoder = tiny_kandinsky
    model = ["--model", decoder, "--prior", prior, "--steps", 2, "--size", SIZE, "--seed", 3]
    return root, model


@pytest.fixture(scope="module")
def grid(work):
    root, model = work
    proc = vslerp("grid", root / "src.png", root / "tgt.png", "--thetas", "0,1", "--alphas",
                  "-2:2:3", "--out", root / "grid.png", "--cells-dir", root / "cells", *model)
    assert proc.returncode == 0, proc.stderr
    return root / "grid.png"


def test_grid_size_cells_and_metadata(grid, work):
    root, _ = work
    image = Image.open(grid)
    w, h = image.size
    assert w > len(ALPHAS) * SIZE and h > len(THETAS) * SIZE  # label margins
    assert w - len(ALPHAS) * SIZE < SIZE and h - len(THETAS) * SIZE < SIZE
    cells = sorted((root / "cells").glob("*.png"))
    assert len(cells) == len(THETAS) * len(ALPHAS)
    assert all(Image.open(c).size == (SIZE, SIZE) for c in cells)
    # the bottom-right corner of the grid is the last cell
    last = np.asarray(Image.open(root / "cells" / "r01_c02.png").convert("RGB"))
    np.testing.assert_array_equal(np.asarray(image.convert("RGB"))[h - SIZE:, w - SIZE:], last)
    meta = read_png_metadata(grid)
    assert meta == json.loads(grid.with_suffix(".json").read_text(encoding="utf-8"))
    assert meta["thetas"] == THETAS and meta["alphas"] == ALPHAS
    assert (meta["seed"], meta["steps"], meta["size"]) == (3, 2, SIZE)
    assert meta["source"]["kind"] == "image" and len(meta["source"]["sha256"]) == 64
    assert meta["stats"]["fingerprint"] and meta["vslerp_version"]
    assert meta["model"].endswith("decoder") and meta["prior"].endswith("prior")


@pytest.mark.parametrize("suffix, pingpong, frames", [(".gif", True, 4), (".mp4", False, 3)])
def test_animate_frame_counts(work, suffix, pingpong, frames):
    import imageio.v3 as iio

    root, model = work
    out = root / f"path_{suffix[1:]}{suffix}"
    proc = vslerp("animate", root / "src.png", root / "tgt.png", "--alpha", "-1", "--frames",
                  frames, "--out", out, *(["--pingpong"] if pingpong else []), *model)
    assert proc.returncode == 0, proc.stderr
    expected = 2 * frames - 2 if pingpong else frames
    assert sum(1 for _ in iio.imiter(out)) == expected
    meta = json.loads(out.with_suffix(".json").read_text(encoding="utf-8"))
    assert meta["alphas"] == [-1.0] and len(meta["thetas"]) == frames


def test_batch_resume(work):
    root, model = work
    jobs = root / "jobs.jsonl"
    jobs.write_text("\n".join([
        json.dumps({"source": "src.png", "target": "tgt.png", "thetas": "0:1:2", "alphas": [0],
                    "seed": 1, "name": "a"}),
        json.dumps({"source": "src.png", "target": "a red cat", "thetas": [0.5],
                    "alphas": "-1,1", "seed": 2}),
    ]) + "\n", encoding="utf-8")
    out = root / "batch"
    first = vslerp("batch", jobs, "--out-dir", out, "--no-progress", "--no-labels", *model)
    assert first.returncode == 0, first.stderr
    names = sorted(p.name for p in out.iterdir())
    assert names == ["a.json", "a.png", "job0002.json", "job0002.png"]
    # --no-labels: exactly the tiling of the cells (a: 2 θ × 1 α; job0002: 1 θ × 2 α)
    assert Image.open(out / "a.png").size == (SIZE, 2 * SIZE)
    assert Image.open(out / "job0002.png").size == (2 * SIZE, SIZE)
    assert read_png_metadata(out / "job0002.png")["target"] == {"kind": "prompt",
                                                                "prompt": "a red cat"}
    before = {n: (out / n).stat().st_mtime_ns for n in names}
    again = vslerp("batch", jobs, "--out-dir", out, "--no-progress", "--no-labels", *model)
    assert again.returncode == 0 and "already rendered" in again.stdout
    assert {n: (out / n).stat().st_mtime_ns for n in names} == before
    (out / "a.png").unlink()
    resumed = vslerp("batch", jobs, "--out-dir", out, "--no-progress", "--no-labels", *model)
    assert resumed.returncode == 0, resumed.stderr
    assert "rendered 1 jobs" in resumed.stdout and "skipped 1" in resumed.stdout
    assert (out / "a.png").is_file()
    assert (out / "job0002.png").stat().st_mtime_ns == before["job0002.png"]


def test_from_renders_the_same_pixels(work, grid):
    root, _ = work
    again = root / "again.png"
    # from the PNG's own text chunk, in another working directory
    proc = vslerp("grid", "--from", grid, "--out", again, cwd=root.parent)
    assert proc.returncode == 0, proc.stderr
    np.testing.assert_array_equal(np.asarray(Image.open(again)), np.asarray(Image.open(grid)))


def _error_cases(root, model, stats_other):
    src, tgt = root / "src.png", root / "tgt.png"
    broken = root / "broken.png"
    broken.write_bytes(b"not a png")
    return {
        "missing source": (["grid", root / "nope.png", tgt, "--out", root / "e.png"], "nope.png"),
        "missing target image": (["grid", src, "missing.jpg", "--out", root / "e.png"],
                                 "missing.jpg"),
        "unreadable": (["grid", broken, tgt, "--out", root / "e.png"], "broken.png"),
        "bad range": (["grid", src, tgt, "--alphas", "-2:2", "--out", root / "e.png"],
                      "start:stop:count"),
        "bad list": (["grid", src, tgt, "--thetas", "0,x", "--out", root / "e.png"], "thetas"),
        "theta outside": (["grid", src, tgt, "--thetas", "0,1.5", "--out", root / "e.png"],
                          "outside [0, 1]"),
        "output exists": (["grid", src, tgt, "--out", src], "exists"),
        "animate suffix": (["animate", src, tgt, "--out", root / "e.webm"], ".gif or .mp4"),
        "missing jobs": (["batch", root / "nojobs.jsonl", "--out-dir", root / "eb"],
                         "nojobs.jsonl"),
        "missing sidecar": (["grid", "--from", root / "nope.json", "--out", root / "e.png"],
                            "nope.json"),
        "unknown model offline": (["grid", src, tgt, "--out", root / "e.png", "--prior",
                                   "no-such-org/no-such-prior", "--steps", "2", "--size", "64"],
                                  "HF_HUB_OFFLINE"),
        "stats of another model": (["grid", src, tgt, "--out", root / "e.png", "--stats",
                                    stats_other, *model], str(stats_other.name)),
    }


@pytest.fixture(scope="module")
def stats_other(work):
    import torch
    from vslerp.stats import Statistics

    root, _ = work
    path = root / "other.safetensors"
    Statistics.from_mean(torch.ones(48), model_id="another/model").save(path)  # D=48, not 32
    return path


CASES = ["missing source", "missing target image", "unreadable", "bad range", "bad list",
         "theta outside", "output exists", "animate suffix", "missing jobs", "missing sidecar",
         "unknown model offline", "stats of another model"]


@pytest.mark.parametrize("case", CASES)
def test_errors_one_line_exit_2_no_output(work, stats_other, case):
    root, model = work
    args, needle = _error_cases(root, model, stats_other)[case]
    proc = vslerp(*args)
    assert proc.returncode == 2, proc.stderr
    lines = _stderr_lines(proc)
    assert len(lines) == 1, proc.stderr
    assert needle in lines[0] and "Traceback" not in proc.stderr
    assert not (root / "e.png").exists() and not (root / "e.json").exists()
    assert not (root / "eb").exists()


def test_verbose_shows_traceback(work):
    root, _ = work
    proc = vslerp("--verbose", "grid", root / "src.png", root / "tgt.png", "--alphas", "1:2",
                  "--out", root / "e.png")
    assert proc.returncode == 2 and "Traceback" in proc.stderr
