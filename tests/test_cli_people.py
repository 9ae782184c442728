"""The CLI for people (issue 25): `--tiny-random` on the render commands with the bundled examples,
a quiet start-up, one readable progress bar, the CPU estimate, the grid's legend."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from helpers import cli
from PIL import Image

from vslerp.ui import render as render_module
from vslerp.ui.images import GRID_GAP, grid_caption, make_grid, read_png_metadata
from vslerp.ui.render import CpuEstimate

VSLERP = str(Path(sys.executable).with_name("vslerp"))  # the installed console script
NOISE = ("Writing model shards", "torchvision", "share=True", "Warning", "deprecated")


@pytest.fixture(scope="module")
def readme_grid(tmp_path_factory):
    """The README's first shell example, verbatim but for --tiny-random, as a user runs it."""
    root = tmp_path_factory.mktemp("readme_grid")
    proc = subprocess.run([VSLERP, "grid", "example:cat", "a watercolor painting of a cat", "--tiny-random",
                           "--thetas", "0:1:3", "--alphas", "0", "--out", "grid.png"], cwd=root,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return root, proc


def test_tiny_random_grid_runs_quietly_and_is_labelled(readme_grid):
    root, proc = readme_grid
    assert sorted(p.name for p in root.iterdir()) == ["grid.json", "grid.png"]  # no lock file left
    meta = read_png_metadata(root / "grid.png")
    assert meta["tiny_random"] is True and meta["model"] is None and meta["prior"] is None
    assert (meta["steps"], meta["size"], meta["prior_steps"]) == (2, 64, 2)
    assert Path(meta["source"]["path"]).name == "cat.png" and meta["target"]["kind"] == "prompt"
    for noise in NOISE:
        assert noise not in proc.stderr, proc.stderr
    # one bar: the render's, counting steps with a rate (the prior's own bar is hidden)
    assert proc.stderr.count("  0%|") == 1, proc.stderr
    assert "denoising" in proc.stderr and ("step/s" in proc.stderr or "s/step" in proc.stderr)
    assert "on CPU: about" not in proc.stderr  # a short run: no estimate


def test_tiny_random_sidecar_renders_again_with_the_same_pixels(readme_grid, capsys, tmp_path):
    root, _ = readme_grid
    code, _, err = cli(capsys, "grid", "--from", root / "grid.json", "--out", tmp_path / "again.png",
                       "--no-progress")
    assert code == 0, err
    again = read_png_metadata(tmp_path / "again.png")
    assert again["tiny_random"] is True
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "again.png")),
                                  np.asarray(Image.open(root / "grid.png")))


@pytest.mark.parametrize("extra, named", [(["--model", "m/"], "--model"), (["--prior", "p/"], "--prior"),
                                          (["--ip-adapter", "h94/IP-Adapter:models/a.safetensors"],
                                           "--ip-adapter")])
@pytest.mark.parametrize("command", ["grid", "animate", "batch"])
def test_tiny_random_refuses_a_model_in_one_line(capsys, no_models, tmp_path, command, extra, named):
    args = {"grid": ["example:cat", "example:flower", "--out", tmp_path / "g.png"],
            "animate": ["example:cat", "example:flower", "--out", tmp_path / "a.gif"],
            "batch": [tmp_path / "jobs.jsonl", "--out-dir", tmp_path / "out"]}[command]
    code, out, err = cli(capsys, command, *args, "--tiny-random", *extra)
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1, err
    assert f"--tiny-random builds its own tiny Kandinsky 2.2 (images are noise): drop {named}" in err


def test_an_unknown_example_names_the_bundled_ones(capsys, no_models, tmp_path):
    code, _, err = cli(capsys, "grid", "example:dog", "example:cat", "--out", tmp_path / "g.png")
    assert code == 2
    assert "SOURCE: no bundled example 'dog': the examples are example:cat, example:mountains, " \
           "example:flower" in err


def test_tiny_random_batch_resumes_and_is_not_taken_for_the_default_model(capsys, tmp_path):
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(json.dumps({"source": "example:cat", "target": "example:mountains", "thetas": [0, 1],
                                "alphas": [0], "seed": 1, "name": "a"}) + "\n", encoding="utf-8")
    code, out, err = cli(capsys, "batch", jobs, "--out-dir", tmp_path / "out", "--tiny-random", "--no-progress")
    assert code == 0, err
    meta = read_png_metadata(tmp_path / "out" / "a.png")
    assert meta["tiny_random"] is True and meta["job"]["params"]["model"] == "tiny-random"
    code, out, err = cli(capsys, "batch", jobs, "--out-dir", tmp_path / "out", "--tiny-random", "--no-progress")
    assert code == 0 and "already rendered" in out, err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.json", "a.png"]  # no .vslerp.lock


# -- the CPU estimate ------------------------------------------------------------------------
def _clock(*times):
    values = iter(times)
    return lambda: next(values)


def _pipe(device="cpu", steps=50):
    return SimpleNamespace(execution_device=lambda: SimpleNamespace(type=device), num_timesteps=steps)


def _step(estimate, pipe):
    return estimate(pipe, 0, 999, {"latents": None})


def test_cpu_estimate_extrapolates_the_first_step_once(capsys):
    seen = []
    estimate = CpuEstimate(25, 8, 512, lambda *a: seen.append(a[1]) or {}, clock=_clock(0.0, 54.0))
    for step in range(3):  # later steps: no clock read, no second line
        estimate(_pipe(), step, 999, {"latents": None})
    err = capsys.readouterr().err
    # 4 batches of up to 8 cells × 50 steps × 54 s
    assert err.strip() == ("vslerp: 25 cells × 50 steps at 512 px on CPU: about 3.0 h (from the first step); "
                           "use --size/--steps or a GPU")
    assert seen == [0, 1, 2]  # the command's own callback still runs


@pytest.mark.parametrize("device, first, said", [("cpu", 0.2, False), ("cuda", 54.0, False), ("cpu", 2.0, True)])
def test_cpu_estimate_only_for_long_runs_on_a_cpu(capsys, device, first, said):
    _step(CpuEstimate(4, 8, 64, clock=_clock(0.0, first)), _pipe(device, steps=30))
    err = capsys.readouterr().err
    assert ("about 1 min" in err) == said, err  # 2 s × 30 steps × 1 batch = 60 s


def test_the_grid_command_says_the_estimate_before_a_long_cpu_run(capsys, tiny_kandinsky, tmp_path, monkeypatch):
    prior, decoder = tiny_kandinsky
    monkeypatch.setattr(render_module, "CpuEstimate", functools.partial(CpuEstimate, clock=_clock(0.0, 40.0)))
    code, _, err = cli(capsys, "grid", "example:cat", "example:flower", "--thetas", "0:1:3", "--alphas", "0,1",
                       "--model", decoder, "--prior", prior, "--steps", 2, "--size", 64, "--batch-size", 2,
                       "--device", "cpu", "--out", tmp_path / "g.png")
    assert code == 0, err
    lines = [line for line in err.splitlines() if "on CPU: about" in line]
    assert lines == ["vslerp: 6 cells × 2 steps at 64 px on CPU: about 4 min (from the first step); "
                     "use --size/--steps or a GPU"], err


# -- the grid's legend ---------------------------------------------------------------------------
def _cells(n, size=40):
    rng = np.random.default_rng(n)
    return [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(n)]


META = {"source": {"kind": "image", "path": "/x/cat.png"}, "target": {"kind": "prompt", "prompt": "a  red\ncar"},
        "seed": 7, "steps": 30, "size": 40, "guidance": 4.0, "strength": 0.6,
        "model": "kandinsky-community/kandinsky-2-2-decoder"}


def test_grid_caption_names_source_target_seed_steps_and_model():
    assert grid_caption(META) == ["source cat.png → target \u201ca red car\u201d",
                                  "seed 7 · 30 steps · 40 px · guidance 4 · strength 0.6 · model kandinsky-2-2-decoder"]
    assert grid_caption({**META, "tiny_random": True, "strength": 1.0})[1].endswith(
        "guidance 4 · model tiny random Kandinsky 2.2 (noise)")


@pytest.mark.parametrize("rows, cols", [(5, 5), (1, 1)])
def test_labelled_grid_has_gaps_and_a_caption_strip(rows, cols):
    cells = _cells(rows * cols)
    thetas, alphas = list(np.linspace(0, 1, rows)), list(np.linspace(-2, 2, cols))
    plain = make_grid(cells, thetas, alphas)
    legend = make_grid(cells, thetas, alphas, gap=GRID_GAP, caption=grid_caption(META))
    assert legend.width == plain.width + (cols - 1) * GRID_GAP
    strip = legend.height - plain.height - (rows - 1) * GRID_GAP
    assert strip > 10
    arr = np.asarray(legend.convert("L"))
    assert (arr[-strip:] < 128).any(), "no caption drawn"
    left, top = plain.width - cols * 40, plain.height - rows * 40
    for c in range(cols):  # every cell where the gaps put it
        for r in range(rows):
            y, x = top + r * (40 + GRID_GAP), left + c * (40 + GRID_GAP)
            np.testing.assert_array_equal(np.asarray(legend)[y:y + 40, x:x + 40], np.asarray(cells[r * cols + c]))
    if cols > 1:
        assert (arr[top:top + 40, left + 40:left + 40 + GRID_GAP] == 255).all()  # the white gap


def test_no_labels_is_the_bare_tiling_without_gap_or_caption():
    cells = _cells(6)
    bare = make_grid(cells, [0, 1], [-1, 0, 1], labels=False, gap=GRID_GAP, caption=grid_caption(META))
    assert bare.size == (3 * 40, 2 * 40)
    np.testing.assert_array_equal(np.asarray(bare)[40:80, 80:120], np.asarray(cells[5]))


# -- one run, many processes ---------------------------------------------------------------------
def test_under_accelerate_the_main_process_owns_the_output_for_all_of_them(tmp_path, monkeypatch):
    """`accelerate launch ... vslerp batch` (and stats compute): the main process takes the lock,
    the others learn its outcome (a run's own second process is not refused; another run is, in
    every process)."""
    import accelerate.utils

    from vslerp.stats import OutputBusy, output_lock
    from vslerp.ui.runtime import main_process_owns

    sent = {}

    def broadcast(values, from_process=0):  # what rank 0 sends reaches every process
        sent.setdefault("value", values[0])
        return [sent["value"]]

    monkeypatch.setattr(accelerate.utils, "broadcast_object_list", broadcast)
    main, other = (SimpleNamespace(is_main_process=rank == 0, num_processes=2) for rank in (0, 1))
    out = tmp_path / "grids"

    def lock():
        return output_lock(folders=(out,))

    with main_process_owns(main, lock), main_process_owns(other, lock):  # one run, two processes
        assert (out / ".vslerp.lock").exists()
        sent.clear()  # another run starts on the same --out-dir
        for state in (main, other):
            with pytest.raises(OutputBusy, match="being written by another vslerp run"):
                with main_process_owns(state, lock):
                    pass
    assert list(out.iterdir()) == []
