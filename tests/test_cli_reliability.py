"""`vslerp grid / animate / batch` against what users really give (issue 17).

An output never replaces an input; one run at a time owns an output; limits and bad values
are one line before any model loads; model loading that cannot work says why in one line.
Error paths run in-process with model loading replaced by a tripwire (``no_models``); a few
real runs (tiny models, 2 steps, 64 px) where the process or the render matters.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest
import test_cli_grid
import torch
from PIL import Image
from test_cli_grid import SIZE, VSLERP, _lines, cli

from vslerp.stats import output_lock

work = test_cli_grid.work  # the fixtures: tiny models, a source and a target image


def _sha(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _one_line_error(code, err, command):
    assert code == 2, err
    lines = _lines(err)
    assert len(lines) == 1 and lines[0].startswith(f"vslerp {command}: error: "), err
    assert "Traceback" not in err
    return lines[0]


# -- 1. an output never replaces an input ---------------------------------------------------
def _replacing_cases(root, tmp):
    src, tgt = root / "src.png", root / "tgt.png"
    link = tmp / "link.png"
    link.symlink_to(src)
    cells = tmp / "cells"
    cells.mkdir()
    cell_src = cells / "r00_c00.png"
    cell_src.write_bytes(src.read_bytes())
    gif = tmp / "src.gif"
    Image.open(src).save(gif)
    side = tmp / "side.json"
    side.write_text(json.dumps({"source": {"kind": "image", "path": str(src), "sha256": _sha(src)},
                                "target": {"kind": "prompt", "prompt": "a red cat"},
                                "thetas": [0], "alphas": [0], "seed": 0, "steps": 2}))
    stats = tmp / "st.json"
    stats.write_text("{}")
    jobs = tmp / "jobs.jsonl"
    jobs.write_text(json.dumps({"source": str(src), "target": "a cat", "name": "src"}) + "\n")
    jobs_named = tmp / "jobs.json"  # a job named "jobs": its sidecar would be the jobs file
    jobs_named.write_text(json.dumps({"source": str(src), "target": "a cat", "name": "jobs"}))
    o = ["--overwrite"]
    return {
        "grid over SOURCE": (["grid", src, tgt, "--out", src, *o], src, "--out"),
        "grid over TARGET via symlink": (["grid", tgt, src, "--out", link, *o], src, "TARGET"),
        "cell over SOURCE": (["grid", cell_src, tgt, "--thetas", "0", "--alphas", "0", "--out",
                              tmp / "g.png", "--cells-dir", cells, *o], cell_src, "r00_c00.png"),
        "sidecar over --from": (["grid", "--from", side, "--out", tmp / "side.png", *o], side,
                                "--from"),
        "sidecar over --stats": (["grid", src, tgt, "--stats", stats, "--out", tmp / "st.png",
                                  *o], stats, "--stats"),
        "animation over SOURCE": (["animate", gif, tgt, "--out", gif, *o], gif, "SOURCE"),
        "batch grid over a job's source": (["batch", jobs, "--out-dir", root, *o], src,
                                           "source of line 1"),
        "batch sidecar over the jobs file": (["batch", jobs_named, "--out-dir", tmp, *o],
                                             jobs_named, "jobs file"),
    }


CASES = ["grid over SOURCE", "grid over TARGET via symlink", "cell over SOURCE",
         "sidecar over --from", "sidecar over --stats", "animation over SOURCE",
         "batch grid over a job's source", "batch sidecar over the jobs file"]


@pytest.mark.parametrize("case", CASES)
def test_an_output_never_replaces_an_input(work, tmp_path, capsys, no_models, case):
    root, _ = work
    args, victim, needle = _replacing_cases(root, tmp_path)[case]
    before = _sha(victim)
    line = _one_line_error(*cli(capsys, *args)[::2], args[0])
    assert "never replaces an input" in line and needle in line, line
    assert _sha(victim) == before


# -- 2. one run at a time owns an output ----------------------------------------------------
def test_a_second_run_on_the_same_output_fails_at_once(work, tmp_path, capsys, no_models):
    root, _ = work
    out, cells = tmp_path / "g.png", tmp_path / "cells"
    grid = ["grid", root / "src.png", root / "tgt.png", "--out", out]
    with output_lock(out):
        line = _one_line_error(*cli(capsys, *grid)[::2], "grid")
    assert "is being written by another vslerp run" in line and str(out) in line
    with output_lock(folders=(cells,)):  # the cells of another run's grid
        line = _one_line_error(*cli(capsys, *grid, "--cells-dir", cells)[::2], "grid")
    assert str(cells) in line
    with output_lock(tmp_path / "a.gif"):
        line = _one_line_error(*cli(capsys, "animate", root / "src.png", "a cat", "--out",
                                    tmp_path / "a.gif")[::2], "animate")
    assert "a.gif is being written" in line
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(json.dumps({"source": str(root / "src.png"), "target": "a cat"}) + "\n")
    with output_lock(folders=(tmp_path / "batch",)):
        line = _one_line_error(*cli(capsys, "batch", jobs, "--out-dir", tmp_path / "batch")[::2],
                               "batch")
    assert "batch is being written" in line
    assert not out.exists() and not (tmp_path / "batch" / "job0001.png").exists()


# -- 5-8, 10: limits and values, before any model loads -------------------------------------
def _value_cases(root, tmp):
    src, tgt = root / "src.png", root / "tgt.png"
    folder = tmp / "folder"
    folder.mkdir()
    e = ["--out", tmp / "e.png"]
    a = ["--out", tmp / "e.gif"]
    return {
        "size too large": (["grid", src, tgt, *e, "--size", 100000], "--max-size"),
        "size not a multiple": (["grid", src, tgt, *e, "--size", 520],
                                "520 is not a multiple of 64"),
        "grid too large": (["grid", src, tgt, *e, "--thetas", "0:1:1000", "--alphas",
                            "0:1:1000"], "1000000 cells"),
        "alpha too large": (["grid", src, tgt, *e, "--alphas", "0,1e308"],
                            "alpha 1e+308 is too large"),
        "theta too large": (["grid", src, tgt, *e, "--thetas", "1e308",
                             "--allow-extrapolation"], "theta 1e+308 is too large"),
        "animate alpha too large": (["animate", src, tgt, *a, "--alpha", "1e308"], "too large"),
        "one frame": (["animate", src, tgt, *a, "--frames", 1], "at least 2"),
        "too many frames": (["animate", src, tgt, *a, "--frames", 100000], "--max-frames"),
        "gif fps": (["animate", src, tgt, *a, "--fps", 100], "1/100 s"),
        "zero fps": (["animate", src, tgt, *a, "--fps", 0], "> 0"),
        "target is a folder": (["grid", src, folder, *e], "is a directory"),
        "source is a folder": (["animate", folder, tgt, *a], "is a directory"),
        "stats is a folder": (["grid", src, tgt, *e, "--stats", folder], "is a directory"),
        "from is a folder": (["grid", "--from", folder, *e], "is a directory"),
        "jobs is a folder": (["batch", folder, "--out-dir", tmp / "eb"], "is a directory"),
        "job size too large": (["batch", _jobs(tmp, "a", size=8192), "--out-dir", tmp / "eb"],
                               "jobs_a.jsonl:1: size 8192 px is larger than the limit 4096"),
        "job prompt not text": (["batch", _jobs(tmp, "b", target="a \ud800 cat"), "--out-dir",
                                 tmp / "eb"], "unpaired surrogate U+D800"),
        "empty thetas": (["grid", src, tgt, *e, "--thetas", ""], "empty"),
        "seed 2**70": (["grid", src, tgt, *e, "--seed", 2**70], "2**63"),
        "zero steps": (["grid", src, tgt, *e, "--steps", 0], "≥ 1"),
        "one prior step": (["grid", src, "a cat", *e, "--prior-steps", 1], "≥ 2"),
        "negative size": (["grid", src, tgt, *e, "--size=-64"], "≥ 1"),
        "guidance too large": (["grid", src, tgt, *e, "--guidance", "1e300"], "too large"),
        "nul in source": (["grid", "src\x00.png", tgt, *e], "SOURCE image not found"),
        "long source": (["grid", "x" * 300 + ".png", tgt, *e], "SOURCE image not found"),
    }


def _jobs(tmp, name, **job):
    path = tmp / f"jobs_{name}.jsonl"
    path.write_text(json.dumps({"source": "src.png", "target": "tgt.png", **job}) + "\n")
    if not (tmp / "src.png").exists():
        for name in ("src.png", "tgt.png"):
            Image.new("RGB", (8, 8)).save(tmp / name)
    return path


VALUE_CASES = ["size too large", "size not a multiple", "grid too large", "alpha too large",
               "theta too large", "animate alpha too large", "one frame", "too many frames",
               "gif fps", "zero fps", "target is a folder", "source is a folder",
               "stats is a folder", "from is a folder", "jobs is a folder", "job size too large",
               "job prompt not text", "empty thetas", "seed 2**70", "zero steps", "one prior step",
               "negative size", "guidance too large", "nul in source", "long source"]


@pytest.mark.parametrize("case", VALUE_CASES)
def test_bad_values_are_one_line_before_models_load(work, tmp_path, capsys, no_models, case):
    root, _ = work
    args, needle = _value_cases(root, tmp_path)[case]
    line = _one_line_error(*cli(capsys, *args)[::2], args[0])
    assert needle in line, line
    assert len(line) < 300
    assert not list(tmp_path.glob("e.*")) and not (tmp_path / "eb").exists()


def test_limits_are_lifted_by_their_options(work, tmp_path, capsys, no_models):
    """Past the limit with the option that lifts it, the run goes on to load the models."""
    root, _ = work
    src, tgt = root / "src.png", root / "tgt.png"
    for args in (["grid", src, tgt, "--out", tmp_path / "e.png", "--size", 8192, "--max-size",
                  8192],
                 ["grid", src, tgt, "--out", tmp_path / "e.png", "--thetas", "0:1:40",
                  "--alphas", "0:1:30", "--max-cells", 1200],
                 ["animate", src, tgt, "--out", tmp_path / "e.gif", "--frames", 2500,
                  "--max-frames", 3000]):
        with pytest.raises(AssertionError, match="a model was loaded"):
            cli(capsys, *args)


def test_out_of_memory_is_one_line_naming_size_and_batch(work, tmp_path, capsys, monkeypatch):
    root, model = work

    from diffusers import UNet2DConditionModel

    def forward(self, *args, **kwargs):  # the denoiser runs out of memory, whichever loop calls it
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(UNet2DConditionModel, "forward", forward)
    code, _, err = cli(capsys, "grid", root / "src.png", root / "tgt.png", "--thetas", "0.5",
                       "--alphas", "0,1", "--out", tmp_path / "g.png", "--no-progress", *model,
                       "--device", "cpu")
    line = _one_line_error(code, err, "grid")
    assert f"2 cell(s) of {SIZE}×{SIZE} px" in line and "--batch-size 1" in line, line
    assert not (tmp_path / "g.png").exists()


# -- 3. a killed run's temporary files are removed by the next run --------------------------
def test_next_run_removes_a_killed_runs_temporaries(work, tmp_path, capsys):
    from vslerp.stats.outputs import TEMP_MARK

    root, model = work
    out, cells = tmp_path / "k.png", tmp_path / "cells"
    cells.mkdir()
    stale = [tmp_path / f".k.png{TEMP_MARK}deadbeef.png", tmp_path / f".k.json{TEMP_MARK}0badf00d.json",
             cells / f".r00_c00.png{TEMP_MARK}feedface.png"]
    for path in stale:
        path.write_bytes(b"half")
    code, _, err = cli(capsys, "grid", root / "src.png", root / "tgt.png", "--thetas", "0",
                       "--alphas", "0", "--out", out, "--cells-dir", cells, "--no-progress",
                       *model)
    assert code == 0, err
    assert not any(path.exists() for path in stale)
    assert sorted(p.name for p in cells.iterdir() if not p.name.endswith(".lock")) == ["r00_c00.png"]


# -- 4, 11: a long prompt renders (truncated, said once); no third-party warning ------------
def test_long_prompt_renders_with_one_warning_and_no_torchvision_warning(work, tmp_path):
    root, model = work
    prompt = "a watercolor painting of a red cat sitting on a windowsill, " * 8  # ~480 bytes
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "VSLERP_LOG": "1"}  # loaders' logs shown too
    proc = subprocess.run([VSLERP, "grid", root / "src.png", prompt, "--thetas", "0,1",
                           "--alphas", "0", "--out", tmp_path / "p.png", "--no-progress",
                           "--prior-steps", "2", *map(str, model)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "torchvision" not in proc.stderr
    truncated = [line for line in _lines(proc.stderr) if "tokens long" in line]
    assert len(truncated) == 1 and truncated[0].startswith("vslerp: warning: the target prompt")
    meta = json.loads((tmp_path / "p.json").read_text())
    assert meta["target"] == {"kind": "prompt", "prompt": prompt}


# -- 9. models neither cached nor downloadable ----------------------------------------------
@pytest.mark.parametrize("command", ["grid", "stats"])
def test_unavailable_default_model_is_one_short_line(work, tmp_path, command):
    root, _ = work
    home = tmp_path / "hf_home"
    home.mkdir()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(home)}
    env.pop("HF_HUB_CACHE", None)
    args = (["grid", root / "src.png", root / "tgt.png", "--out", tmp_path / "g.png"]
            if command == "grid" else
            ["stats", "compute", "--images", root, "--prior",
             "kandinsky-community/kandinsky-2-2-prior", "--out", tmp_path / "s.safetensors",
             "--device", "cpu"])
    proc = subprocess.run([VSLERP, *map(str, args)], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = _lines(proc.stderr)
    errors = [line for line in lines if "error:" in line]
    assert len(errors) == 1 and len(errors[0]) < 200, proc.stderr
    assert "'kandinsky-community/kandinsky-2-2-prior'" in errors[0]
    assert "not in the local cache" in errors[0] and "--tiny-random" in errors[0]
    assert "stacktrace" not in proc.stderr and "Traceback" not in proc.stderr
