"""`vslerp grid / animate / batch` end to end on the tiny random Kandinsky.

Most runs call ``vslerp.ui.cli.main([...])`` in-process (a subprocess costs seconds of
imports); real processes where the process matters: the console script (progress on stderr,
one summary line on stdout), ``python -m``, and a render killed with SIGKILL. Error paths
that must not load models run with ``VSlerpPipeline.from_pretrained`` replaced by a tripwire.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import cli
from PIL import Image

from vslerp.pipelines import VSlerpPipeline
from vslerp.ui.images import GRID_GAP, make_grid, read_png_metadata, save_png

VSLERP = str(Path(sys.executable).with_name("vslerp"))  # the installed console script
SIZE = 64
THETAS, ALPHAS = [0.0, 1.0], [-2.0, 0.0, 2.0]


def vslerp(*args, cwd=None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([VSLERP, *map(str, args)], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=300)


def _lines(text):
    return [line for line in text.splitlines() if line.strip()]


def _sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def work(tmp_path_factory, tiny_kandinsky):
    """Folder with a source image (random pixels are enough for the random encoder), a target
    image, and the model options."""
    root = tmp_path_factory.mktemp("cli_grid")
    rng = np.random.default_rng(0)
    for name in ("src.png", "tgt.png"):
        Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)).save(root / name)
    prior, decoder = tiny_kandinsky
    model = ["--model", decoder, "--prior", prior, "--steps", 2, "--size", SIZE, "--seed", 3]
    return root, model


@pytest.fixture(scope="module")
def grid(work):
    """One render through the console script, progress bars on."""
    root, model = work
    proc = vslerp("grid", root / "src.png", root / "tgt.png", "--thetas", "0,1", "--alphas",
                  "-2:2:3", "--out", root / "grid.png", "--cells-dir", root / "cells", *model)
    assert proc.returncode == 0, proc.stderr
    return root / "grid.png", proc


def test_grid_size_cells_metadata_and_progress(grid, work):
    root, _ = work
    grid, proc = grid
    # stdout: the one summary line; stderr: the pipeline's progress bar, warnings as one line
    assert len(_lines(proc.stdout)) == 1 and "wrote" in proc.stdout
    assert "denoising" in proc.stderr and "100%" in proc.stderr
    assert "UserWarning" not in proc.stderr
    assert all(line.startswith("vslerp: warning: ") for line in _lines(proc.stderr)
               if "warn" in line.lower())
    image = Image.open(grid)
    w, h = image.size
    cells = sorted((root / "cells").glob("*.png"))
    assert len(cells) == len(THETAS) * len(ALPHAS)
    assert all(Image.open(c).size == (SIZE, SIZE) for c in cells)
    assert read_png_metadata(cells[0])["grid"] == str(grid.resolve())
    # label margins left and above, GRID_GAP px between the cells, the caption strip below
    unlabelled = make_grid([Image.open(c) for c in cells], THETAS, ALPHAS)
    left, top = unlabelled.width - len(ALPHAS) * SIZE, unlabelled.height - len(THETAS) * SIZE
    assert 0 < left < SIZE and 0 < top < SIZE
    assert w == unlabelled.width + (len(ALPHAS) - 1) * GRID_GAP
    assert h > unlabelled.height + (len(THETAS) - 1) * GRID_GAP  # the caption
    # the last cell ends at the right edge, above the caption
    last = np.asarray(Image.open(root / "cells" / "r01_c02.png").convert("RGB"))
    y = top + SIZE + GRID_GAP
    np.testing.assert_array_equal(np.asarray(image.convert("RGB"))[y:y + SIZE, w - SIZE:], last)
    meta = read_png_metadata(grid)
    assert meta == json.loads(grid.with_suffix(".json").read_text(encoding="utf-8"))
    assert meta["thetas"] == THETAS and meta["alphas"] == ALPHAS
    assert (meta["seed"], meta["steps"], meta["size"], meta["prior_steps"]) == (3, 2, SIZE, 25)
    assert meta["source"]["kind"] == "image" and len(meta["source"]["sha256"]) == 64
    assert meta["stats"]["fingerprint"] and meta["vslerp_version"]
    assert meta["model"].endswith("decoder") and meta["prior"].endswith("prior")


def test_animate_gif_and_mp4_of_one_stem(work, capsys):
    import imageio.v3 as iio

    root, model = work
    for suffix, extra, frames, expected in ((".gif", ["--pingpong"], 4, 6), (".mp4", [], 3, 3)):
        out = root / f"path{suffix}"  # one stem: each gets its own sidecar
        code, stdout, err = cli(capsys, "animate", root / "src.png", root / "tgt.png", "--alpha",
                                "-1", "--frames", frames, "--out", out, "--no-progress", *extra,
                                *model)
        assert code == 0, err
        assert sum(1 for _ in iio.imiter(out)) == expected
        meta = json.loads(Path(f"{out}.json").read_text(encoding="utf-8"))
        assert meta["alphas"] == [-1.0] and len(meta["thetas"]) == frames
    assert not (root / "path.json").exists()


def _write_jobs(path, *jobs):
    path.write_text("\n".join(json.dumps(job) for job in jobs) + "\n", encoding="utf-8")


class _Bar:
    """Stands in for tqdm: records the updates of each bar by its description."""

    updates: dict = {}

    def __init__(self, iterable=None, desc="", **kwargs):
        self.iterable, self.desc = iterable, desc.split(" ")[0]
        _Bar.updates.setdefault(self.desc, [])

    def __iter__(self):
        yield from self.iterable

    def update(self, n=1):
        _Bar.updates[self.desc].append(n)

    def close(self):
        pass


def test_batch_progress_resume_and_changed_jobs(work, capsys, monkeypatch):
    import tqdm.auto

    root, model = work
    jobs, out = root / "jobs.jsonl", root / "batch"
    job_a = {"source": "src.png", "target": "tgt.png", "thetas": "0:1:2", "alphas": [0, 1],
             "seed": 1, "name": "a"}
    job_2 = {"source": "src.png", "target": "a red cat", "thetas": [0.5], "alphas": "-1,1",
             "seed": 2}
    _write_jobs(jobs, job_a, job_2)
    batch = ["batch", jobs, "--out-dir", out, "--no-labels", "--batch-size", 1, *model]

    # first run: the cells bar advances per denoised batch of cells (here 1 cell); a's θ=0 and
    # θ=1 rows are one cell each, rendered once, counted when the job is done
    _Bar.updates = {}
    monkeypatch.setattr(tqdm.auto, "tqdm", _Bar)
    code, stdout, err = cli(capsys, *batch)
    assert code == 0, err
    assert _Bar.updates["cells"] == [1, 1, 2, 1, 1]
    names = sorted(p.name for p in out.iterdir())  # no lock file left
    assert names == ["a.json", "a.png", "job0002.json", "job0002.png"]
    # --no-labels: exactly the tiling of the cells (a: 2 θ × 2 α; job0002: 1 θ × 2 α)
    assert Image.open(out / "a.png").size == (2 * SIZE, 2 * SIZE)
    assert Image.open(out / "job0002.png").size == (2 * SIZE, SIZE)
    meta = read_png_metadata(out / "job0002.png")
    assert meta["target"] == {"kind": "prompt", "prompt": "a red cat"}
    assert meta["job"]["line"] == 2 and len(meta["job"]["fingerprint"]) == 64
    before = {n: (out / n).stat().st_mtime_ns for n in names}

    batch.append("--no-progress")
    code, stdout, _ = cli(capsys, *batch)
    assert code == 0 and "already rendered" in stdout
    assert {n: (out / n).stat().st_mtime_ns for n in names} == before

    # a job edited in place: refused, naming its line, name and what changed
    _write_jobs(jobs, job_a, {**job_2, "seed": 5, "alphas": [0]})
    code, _, err = cli(capsys, *batch)
    assert code == 2 and len(_lines(err)) == 1
    assert f"{jobs}:2 (job0002)" in err and "(alphas, seed changed)" in err
    assert {n: (out / n).stat().st_mtime_ns for n in names} == before
    # a line inserted before it: job0002 now names another job
    _write_jobs(jobs, job_a, {"source": "tgt.png", "target": "src.png", "thetas": [1],
                              "alphas": [0]}, job_2)
    code, _, err = cli(capsys, *batch)
    assert code == 2 and f"{jobs}:2 (job0002)" in err and "source, target" in err
    # --overwrite renders the changed job again, the unchanged one is still skipped; the
    # removed job's stale sidecar (a.png deleted) is replaced
    _write_jobs(jobs, job_a, {**job_2, "seed": 5})
    (out / "a.png").unlink()
    code, stdout, err = cli(capsys, *batch, "--overwrite")
    assert code == 0, err
    assert "rendered 2 jobs" in stdout
    assert read_png_metadata(out / "job0002.png")["seed"] == 5
    assert read_png_metadata(out / "a.png")["job"]["fingerprint"] == json.loads(
        (out / "a.json").read_text(encoding="utf-8"))["job"]["fingerprint"]


def test_from_renders_the_same_pixels(work, grid, capsys, monkeypatch):
    root, _ = work
    again = root / "again.png"
    monkeypatch.chdir(root.parent)  # from the PNG's own text chunk, in another directory
    code, _, err = cli(capsys, "grid", "--from", grid[0], "--out", again, "--no-progress")
    assert code == 0, err
    np.testing.assert_array_equal(np.asarray(Image.open(again)), np.asarray(Image.open(grid[0])))


def test_from_finds_a_relative_stats_file_beside_the_sidecar(work, grid, tmp_path, capsys, monkeypatch):
    """A sidecar's relative stats path (the editor records an upload's name) is looked for
    beside the sidecar, as its images are."""
    from vslerp.stats import Statistics

    root, _ = work
    meta = json.loads(grid[0].with_suffix(".json").read_text())
    prior = VSlerpPipeline.from_pretrained(meta["model"], prior=meta["prior"], device=None)
    Statistics.from_mean(prior.image_mean * 1.5).save(tmp_path / "mean.safetensors")
    meta["stats"] = {"path": "mean.safetensors", "fingerprint": None, "mean_source": "tensor"}
    meta["thetas"], meta["alphas"] = [0.5], [1.0]
    (tmp_path / "side.json").write_text(json.dumps(meta))
    monkeypatch.chdir(root)  # not the sidecar's folder
    code, _, err = cli(capsys, "grid", "--from", tmp_path / "side.json", "--out", tmp_path / "x.png",
                       "--no-progress")
    assert code == 0, err
    again = json.loads((tmp_path / "x.json").read_text())
    assert again["stats"]["path"] == str((tmp_path / "mean.safetensors").resolve())


def test_from_editor_metadata(work, grid, capsys, monkeypatch):
    """An editor download records uploads by file name (or, older ones, without a path)."""
    root, _ = work
    folder = root / "downloads"
    meta = read_png_metadata(grid[0])
    meta.update(command="ui", source={"kind": "image", "path": "cat.png",
                                      "sha256": _sha256(root / "src.png")},
                target={"kind": "image", "name": "dog.png", "sha256": _sha256(root / "tgt.png"),
                        "pixels_sha256": "0" * 64})
    both = save_png(Image.open(grid[0]), folder / "both.png", meta, sidecar=False)
    code, _, err = cli(capsys, "grid", "--from", both, "--out", root / "e.png")
    assert code == 2 and len(_lines(err)) == 1
    assert "both.png's source was an upload (cat.png, sha256 " in err
    assert "target was an upload (dog.png, sha256 " in err and "give SOURCE and TARGET" in err
    code, _, err = cli(capsys, "grid", "--from", both, root / "tgt.png", root / "tgt.png",
                       "--out", root / "e.png")
    assert code == 2 and "is not the one both.png was rendered with" in err

    meta.update(target={"kind": "prompt", "prompt": "a red cat"}, prior_steps=3)
    prompt = save_png(Image.open(grid[0]), folder / "prompt.png", meta, sidecar=False)
    steps = []
    real = VSlerpPipeline.prompt_to_image_embedding

    def spy(self, prompts, generator=None, num_inference_steps=25, **kwargs):
        steps.append(num_inference_steps)
        return real(self, prompts, generator=generator, num_inference_steps=num_inference_steps,
                    **kwargs)

    monkeypatch.setattr(VSlerpPipeline, "prompt_to_image_embedding", spy)
    out = root / "from_editor.png"
    code, _, err = cli(capsys, "grid", "--from", prompt, root / "src.png", "--out", out,
                       "--batch-size", 1, "--no-progress")
    assert code == 0, err
    assert steps == [3]  # the editor's prior steps
    again = read_png_metadata(out)
    assert (again["prior_steps"], again["batch_size"]) == (3, 1)  # explicit --batch-size wins
    assert again["source"]["sha256"] == meta["source"]["sha256"]


_KILL_BEFORE = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    import vslerp.ui.images as outputs

    real = outputs.atomic_write

    def atomic_write(path, write):  # SIGKILL just before the grid PNG would be written
        if Path(path).name == os.environ["VSLERP_TEST_KILL_BEFORE"]:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(path, write)

    outputs.atomic_write = atomic_write
    from vslerp.ui.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def test_killed_grid_leaves_no_blocker(work, grid, tmp_path, capsys):
    root, model = work
    script = tmp_path / "kill_before.py"
    script.write_text(_KILL_BEFORE, encoding="utf-8")
    out, cells = tmp_path / "k.png", tmp_path / "cells"
    args = ["grid", root / "src.png", root / "tgt.png", "--thetas", "0,1", "--alphas", "0,1",
            "--out", out, "--cells-dir", cells, "--no-progress", *model]
    proc = subprocess.run([sys.executable, script, *map(str, args)], capture_output=True,
                          text=True, timeout=300,
                          env={**os.environ, "VSLERP_TEST_KILL_BEFORE": "k.png"})
    assert proc.returncode == -9, proc.stderr
    assert not out.exists() and not out.with_suffix(".json").exists()  # the sidecar comes last
    assert len(list(cells.glob("*.png"))) == 4  # written before the grid
    assert (tmp_path / ".k.png.lock").exists() and (cells / ".vslerp.lock").exists()  # its locks, left
    code, _, err = cli(capsys, *args)  # no --overwrite needed: those files were stale
    assert code == 0, err
    assert read_png_metadata(out) == json.loads(out.with_suffix(".json").read_text("utf-8"))
    assert sorted(p.name for p in tmp_path.iterdir()) == [  # the killed run's lock file reclaimed and removed
        "cells", "k.json", "k.png", "kill_before.py"]
    assert sorted(p.name for p in cells.iterdir()) == [f"r0{r}_c0{c}.png" for r in (0, 1) for c in (0, 1)]


def _error_cases(root, model, stats_other, grid):
    src, tgt = root / "src.png", root / "tgt.png"
    broken = root / "broken.png"
    broken.write_bytes(b"not a png")
    empty = root / "empty_dir"
    empty.mkdir(exist_ok=True)
    prior, decoder = model[3], model[1]
    jobs = {}
    for name, job in (("ok", {}), ("float_seed", {"seed": 1.7}), ("bool_seed", {"seed": True}),
                      ("nan_alpha", {"alphas": [0, float("nan")]})):
        jobs[name] = root / f"{name}.jsonl"
        _write_jobs(jobs[name], {"source": "src.png", "target": "tgt.png", "thetas": [0]},
                    {"source": "src.png", "target": "tgt.png", "thetas": [0], **job})
    e = ["--out", root / "e.png"]
    return {
        # cheap: caught before any model is loaded
        "missing source": (["grid", root / "nope.png", tgt, *e], "nope.png"),
        "missing target image": (["grid", src, "missing.jpg", *e], "missing.jpg"),
        "unreadable": (["grid", broken, tgt, *e], "broken.png"),
        "bad range": (["grid", src, tgt, "--alphas", "-2:2", *e], "start:stop:count"),
        "bad list": (["grid", src, tgt, "--thetas", "0,x", *e], "thetas"),
        "theta outside": (["grid", src, tgt, "--thetas", "0,1.5", *e], "outside [0, 1]"),
        "output exists": (["grid", src, tgt, "--out", grid[0]], "exists"),
        "output in a file": (["grid", src, tgt, "--out", src / "x.png"], "not a folder"),
        "output unwritable": (["grid", src, tgt, "--out", "/proc/x.png"], "not writable"),
        "cells of another grid": (["grid", src, tgt, "--thetas", "0,1", "--alphas", "0", *e,
                                   "--cells-dir", root / "cells"], "belongs to the grid"),
        "animate suffix": (["animate", src, tgt, "--out", root / "e.webm"], ".gif or .mp4"),
        "missing jobs": (["batch", root / "nojobs.jsonl", "--out-dir", root / "eb"],
                         "nojobs.jsonl"),
        "missing sidecar": (["grid", "--from", root / "nope.json", *e], "nope.json"),
        "device absent": (["grid", src, tgt, *e, "--device", "cuda:99"], "'cuda:99'"),
        "device unknown": (["animate", src, tgt, "--out", root / "e.gif", "--device", "foo"],
                           "'foo' is not a device name"),
        "device in batch": (["batch", jobs["ok"], "--out-dir", root / "eb", "--device",
                             "cuda:99"], "'cuda:99'"),
        "model is a prior": (["grid", src, tgt, *e, "--model", prior],
                             "holds a Kandinsky 2.2 prior"),
        "model folder empty": (["grid", src, tgt, *e, "--model", empty], "no model_index.json"),
        "model folder missing": (["grid", src, tgt, *e, "--model", root / "no" / "such"],
                                 "no such folder"),
        "prior is a decoder": (["grid", src, tgt, *e, "--prior", decoder],
                               "holds a Kandinsky 2.2 decoder"),
        "float seed": (["batch", jobs["float_seed"], "--out-dir", root / "eb"],
                       "float_seed.jsonl:2: seed must be an integer, got 1.7"),
        "bool seed": (["batch", jobs["bool_seed"], "--out-dir", root / "eb"],
                      "bool_seed.jsonl:2: seed must be an integer, got true"),
        "non-finite alpha": (["batch", jobs["nan_alpha"], "--out-dir", root / "eb"],
                             "nan_alpha.jsonl:2: alphas must be finite"),
        "unknown option": (["grid", src, tgt, *e, "--bogus"], "unrecognized arguments: --bogus"),
        "dtype": (["grid", src, tgt, *e, "--dtype", "fp64"], "fp16, bf16, fp32"),
        # about loading
        "unknown model offline": (["grid", src, tgt, *e, "--prior", "no-such-org/no-such-prior",
                                   "--steps", "2", "--size", "64"], "HF_HUB_OFFLINE"),
        "stats of another model": (["grid", src, tgt, *e, "--stats", stats_other, *model],
                                   str(stats_other.name)),
    }


@pytest.fixture(scope="module")
def stats_other(work):
    import torch

    from vslerp.stats import Statistics

    root, _ = work
    path = root / "other.safetensors"
    Statistics.from_mean(torch.ones(48), model_id="another/model").save(path)  # D=48, not 32
    return path


LOADING = ["unknown model offline", "stats of another model"]
CASES = ["missing source", "missing target image", "unreadable", "bad range", "bad list",
         "theta outside", "output exists", "output in a file", "output unwritable",
         "cells of another grid", "animate suffix", "missing jobs", "missing sidecar",
         "device absent", "device unknown", "device in batch", "model is a prior",
         "model folder empty", "model folder missing", "prior is a decoder", "float seed",
         "bool seed", "non-finite alpha", "unknown option", "dtype", *LOADING]


@pytest.mark.parametrize("case", CASES)
def test_errors_one_line_exit_2_no_output(work, grid, stats_other, case, capsys, request):
    root, model = work
    if case == "output unwritable" and not Path("/proc/self").is_dir():
        pytest.skip("needs Linux /proc")
    if case not in LOADING:
        request.getfixturevalue("no_models")
    args, needle = _error_cases(root, model, stats_other, grid)[case]
    code, _, err = cli(capsys, *args)
    assert code == 2, err
    lines = _lines(err)
    assert len(lines) == 1, err
    assert lines[0].startswith(f"vslerp {args[0]}: error: "), lines[0]
    assert needle in lines[0] and "Traceback" not in err
    assert ".x-" not in lines[0]  # never a temporary file's name
    assert not (root / "e.png").exists() and not (root / "e.json").exists()
    assert not (root / "eb").exists()


def test_verbose_shows_traceback(work, capsys):
    root, _ = work
    code, _, err = cli(capsys, "--verbose", "grid", root / "src.png", root / "tgt.png",
                       "--alphas", "1:2", "--out", root / "e.png")
    assert code == 2 and "Traceback" in err


def test_warnings_are_one_line(monkeypatch, capsys):
    import warnings

    import vslerp.ui.cmd_info

    def run(args):
        warnings.warn("two\n  lines", UserWarning, stacklevel=1)
        return 0

    monkeypatch.setattr(vslerp.ui.cmd_info, "run", run)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        before = warnings.showwarning
        code, _, err = cli(capsys, "info")
        assert warnings.showwarning is before  # restored
    assert code == 0 and err == "vslerp: warning: two lines\n"


@pytest.mark.parametrize("module", ["vslerp.ui.cli", "vslerp.ui"])
def test_python_m_keeps_one_line_errors(work, module):
    root, _ = work
    proc = subprocess.run([sys.executable, "-m", module, "grid", root / "nope.png",
                           root / "tgt.png", "--out", root / "e.png"], capture_output=True,
                          text=True, timeout=120, cwd=root)
    assert proc.returncode == 2, proc.stderr
    assert _lines(proc.stderr) == [f"vslerp grid: error: SOURCE image not found: "
                                   f"{root / 'nope.png'}"]


def test_grid_on_unclip_uses_the_models_size_and_guidance(tmp_path, work, capsys):
    """Without --size/--guidance the model's own are used: unCLIP/Karlo renders one size only."""
    from vslerp.pipelines.testing import TINY_DIM, make_tiny_unclip
    from vslerp.stats import Statistics

    root, _ = work
    unclip = make_tiny_unclip(tmp_path / "unclip")
    Statistics.from_mean(torch.randn(TINY_DIM, generator=torch.Generator().manual_seed(0))).save(
        tmp_path / "mean.safetensors")
    code, out, err = cli(capsys, "grid", root / "src.png", root / "tgt.png", "--thetas", "0,1",
                         "--alphas", "0", "--model", unclip, "--stats", tmp_path / "mean.safetensors",
                         "--steps", 2, "--no-labels", "--no-progress", "--out", tmp_path / "g.png")
    assert code == 0, err
    meta = json.loads((tmp_path / "g.json").read_text())
    side = meta["pipeline"]["backend"] == "unclip" and meta["size"]
    assert side and side != 512 and meta["guidance"] == 8.0
    assert Image.open(tmp_path / "g.png").size == (side, 2 * side)


# -- the render layer and the parser: structure the rest relies on -----------------------------
UI = Path(__file__).resolve().parents[1] / "ui"


def _calls(path):
    """(what, line) of each pipeline load, call, batch render or statistics change in ``path``."""
    import ast

    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Name) and func.id == "pipe":
            found.append(("pipe(...)", node.lineno))
        elif isinstance(func, ast.Attribute) and func.attr in ("render_batch", "set_statistics"):
            found.append((func.attr, node.lineno))
        elif isinstance(func, ast.Attribute) and func.attr == "from_pretrained" and \
                isinstance(func.value, ast.Name) and func.value.id == "VSlerpPipeline":
            found.append(("VSlerpPipeline.from_pretrained", node.lineno))
    return found


def test_only_the_render_layer_loads_and_calls_the_pipeline():
    """grid, animate, batch and the editor render through vslerp.ui.render; none changes the
    pipeline's statistics (each render passes its own)."""
    elsewhere = {str(p.relative_to(UI)): _calls(p) for p in UI.rglob("*.py") if p.name != "render.py"}
    assert {name: calls for name, calls in elsewhere.items() if calls} == {}
    kinds = {what for what, _ in _calls(UI / "render.py")}
    assert kinds == {"pipe(...)", "render_batch", "VSlerpPipeline.from_pretrained"}


@pytest.mark.parametrize("argv", [["--help"], ["grid", "--help"], ["animate", "--help"],
                                  ["batch", "--help"]])
def test_the_parser_and_help_import_no_model_library(argv):
    """`import vslerp.ui.cli` and `vslerp [grid] --help` import no torch (nor diffusers,
    transformers, gradio): the commands import them when they run."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "vslerp.ui.cli", *argv],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "usage: vslerp" in proc.stdout
    imported = {line.rsplit("|", 1)[-1].strip().split(".")[0] for line in proc.stderr.splitlines()
                if line.startswith("import time:")}
    assert "argparse" in imported  # the import log is there to read
    assert not imported & {"torch", "diffusers", "transformers", "gradio"}, sorted(imported)


def test_importing_the_cli_and_building_its_parser_imports_no_torch():
    code = ("import sys, vslerp.ui.cli as cli; cli.build_parser(); "
            "print(sorted(m for m in ('torch', 'diffusers', 'transformers', 'gradio') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_negative_value_lists_need_no_equals():
    """`--alphas -2:2:5` is a value (vslerp.ui.options.allow_negative_values); a plain argparse
    parser would take it for an option."""
    import argparse

    from vslerp.ui.cli import build_parser
    from vslerp.ui.options import allow_negative_values

    args = build_parser().parse_args(["grid", "a.png", "b.png", "--thetas", "-0.5,0", "--alphas", "-2:2:5",
                                      "--out", "g.png"])
    assert (args.thetas, args.alphas) == ("-0.5,0", "-2:2:5")
    plain = argparse.ArgumentParser(exit_on_error=False)
    plain.add_argument("--alphas")
    with pytest.raises((argparse.ArgumentError, SystemExit)):
        plain.parse_args(["--alphas", "-2:2:5"])
    assert allow_negative_values(plain).parse_args(["--alphas", "-2:2:5"]).alphas == "-2:2:5"


def test_render_spec_defaults_are_the_clis_and_the_sidecars_fields(grid):
    """One schema: a grid's sidecar holds every RenderSpec field that a render records, with the
    model's size and guidance resolved; `--from` reads it back into the same spec."""
    from dataclasses import fields

    from vslerp.ui.cli import build_parser
    from vslerp.ui.render import RenderSpec
    from vslerp.ui.sidecar import spec_from_options

    meta = read_png_metadata(grid[0])
    recorded = {f.name for f in fields(RenderSpec)} - {"device"}  # the device is this machine's
    assert recorded <= set(meta)
    args = build_parser().parse_args(["grid", "--from", str(grid[0]), "--out", "x.png"])
    spec = spec_from_options(args, meta)
    assert (spec.seed, spec.steps, spec.size, spec.prior_steps, spec.batch_size) == (
        meta["seed"], meta["steps"], meta["size"], meta["prior_steps"], meta["batch_size"])
    assert spec.model == meta["model"] and spec.guidance == meta["guidance"]
    defaults = build_parser().parse_args(["grid", "a.png", "b.png", "--out", "g.png"])
    plain = spec_from_options(defaults)
    assert (plain.steps, plain.seed, plain.batch_size, plain.prior_steps, plain.size) == (
        RenderSpec.steps, RenderSpec.seed, RenderSpec.batch_size, RenderSpec.prior_steps, None)


def test_path_frames_through_keyframes():
    from vslerp.ui.cmd_animate import path_frames

    assert path_frames(2, 3, False, "linear", (1.0, 1.0)) == [(0, 0.0, 1.0), (0, 0.5, 1.0), (0, 1.0, 1.0)]
    three = path_frames(3, 3, False, "linear", (0.0, 2.0))
    assert [(k, t) for k, t, _ in three] == [(0, 0.0), (0, 0.5), (1, 0.0), (1, 0.5), (1, 1.0)]
    assert [a for _, _, a in three] == [0.0, 0.5, 1.0, 1.5, 2.0]  # α ramped over the frames
    loop = path_frames(3, 3, True, "cosine", (0.0, 0.0))
    assert [k for k, _, _ in loop] == [0, 0, 1, 1, 2, 2]
    assert [t for _, t, _ in loop] == pytest.approx([0.0, 0.5] * 3)
    eased = [t for _, t, _ in path_frames(2, 5, False, "cosine", (0.0, 0.0))]
    assert eased[0] == 0.0 and eased[-1] == 1.0 and eased[2] == pytest.approx(0.5)
    assert eased[1] < 0.25 and eased[3] > 0.75  # slow near the keyframes


def test_keyframe_frames_are_the_keyframes_own_renders(work, tiny_kandinsky):
    from vslerp.ui.checks import image_ref
    from vslerp.ui.cmd_animate import path_frames
    from vslerp.ui.render import RenderSpec, load_pipeline, render, render_path

    root, _ = work
    prior, decoder = tiny_kandinsky
    keys = (image_ref("A", str(root / "src.png"), False), image_ref("B", str(root / "tgt.png"), True),
            image_ref("C", "a red bicycle", True))
    spec = RenderSpec(source=keys[0], target=keys[2], inputs=keys, thetas=(0.0,), alphas=(0.5,), seed=3, steps=2,
                      size=SIZE, model=decoder, prior=prior, device="cpu", batch_size=1)
    pipe = load_pipeline(spec, progress=False)
    frames = path_frames(3, 3, True, "linear", (0.5, 0.5))
    cells = render_path(pipe, spec, frames)
    assert len(cells) == 6
    raws = [pipe.embed_input(Path(k["path"]) if k["kind"] == "image" else k["prompt"], torch.Generator().manual_seed(3),
                             spec.prior_steps) for k in keys]
    for i, (k, theta, _) in enumerate(frames):
        if theta == 0.0:  # frames 0, 2, 4: keyframes A, B, C
            own = pipe(raws[k], raws[(k + 1) % 3], thetas=[0.0], alphas=[0.5], num_inference_steps=2, height=SIZE,
                       width=SIZE, generator=torch.Generator().manual_seed(3), max_batch_size=1)
            assert torch.equal(cells[i].embeddings[0, 0], raws[k])
            assert np.array_equal(np.asarray(cells[i].images[0]), np.asarray(own.images[0])), k
    # two keyframes, one α: the path is today's one-column grid, pixel for pixel
    two = replace(spec, inputs=keys[:2], target=keys[1], thetas=(0.0, 0.5, 1.0), batch_size=8)
    grid = render(pipe, two)
    path = render_path(pipe, two, path_frames(2, 3, False, "linear", (0.5, 0.5)))
    assert all(np.array_equal(np.asarray(a), np.asarray(b.images[0])) for a, b in zip(grid.images, path, strict=True))


def test_animate_keyframes_loop_and_alpha_ramp(work, capsys):
    import imageio.v3 as iio

    root, model = work
    out = root / "tour.gif"
    code, stdout, err = cli(capsys, "animate", root / "src.png", root / "tgt.png", "a red bicycle", "--loop",
                            "--ease", "cosine", "--alpha", "-1:1", "--frames", 3, "--out", out, "--no-progress", *model)
    assert code == 0, err
    assert sum(1 for _ in iio.imiter(out)) == 6 and "6 frames" in stdout
    meta = json.loads(Path(f"{out}.json").read_text(encoding="utf-8"))
    assert meta["segments"] == [0, 0, 1, 1, 2, 2] and meta["loop"] and meta["ease"] == "cosine"
    assert meta["alphas"] == pytest.approx([-1.0, -0.6, -0.2, 0.2, 0.6, 1.0]) and len(meta["conformity"]) == 6
    assert [ref["kind"] for ref in meta["inputs"]] == ["image", "image", "prompt"]
    code, _, err = cli(capsys, "animate", root / "src.png", root / "tgt.png", "--alpha", "0:1:2", "--out", out)
    assert code == 2 and "--alpha: must be A or A:B" in err
