"""The backend options on the CLI: --strength, --prompt, --negative-prompt, --noise-level,
--ip-adapter, --ip-adapter-scale (grid, animate, batch job keys, ui) on the tiny random Kandinsky.

Bad values and options a backend does not take are one stderr line, exit 2, before any model
loads (``VSlerpPipeline.from_pretrained`` replaced by a tripwire); ``--strength 0.5`` renders
what the pipeline renders at that strength, records it in the sidecar, and ``--from`` reads it
back (a sidecar older than these options still loads, at strength 1).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import cli
from PIL import Image

from vslerp.pipelines import VSlerpPipeline
from vslerp.stats.models import parse_ip_adapter
from vslerp.ui.cli import main
from vslerp.ui.images import read_png_metadata

SIZE = 64


@pytest.fixture(scope="module")
def work(tmp_path_factory, tiny_kandinsky):
    """A source and a target image, the tiny Kandinsky's options, and a folder that holds a
    Stable Diffusion 1.5 base's model_index.json (all the pre-load checks read)."""
    root = tmp_path_factory.mktemp("cli_backends")
    rng = np.random.default_rng(0)
    for name in ("src.png", "tgt.png"):
        Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)).save(root / name)
    sd = root / "sd15"
    sd.mkdir()
    (sd / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    saved = root / "saved_ip"
    saved.mkdir()
    (saved / "model_index.json").write_text(json.dumps({"_class_name": "VSlerpIPAdapterPipeline"}))
    for name, job in _BAD_JOBS.items():
        (root / f"jobs_{name}.jsonl").write_text(json.dumps({"source": "src.png", "target": "tgt.png", **job}) + "\n")
    prior, decoder = tiny_kandinsky
    model = ["--model", decoder, "--prior", prior, "--steps", 2, "--size", SIZE, "--seed", 3, "--no-progress"]
    return root, model, sd


def _grid(capsys, root, model, name, *extra):
    code, out, err = cli(capsys, "grid", root / "src.png", root / "tgt.png", "--thetas", "0,1", "--alphas", "0,1",
                         "--out", root / f"{name}.png", "--cells-dir", root / name, *model, *extra)
    assert code == 0, err
    return root / f"{name}.png"


@pytest.fixture(scope="module")
def grids(work):
    """The same grid at --strength 0.5 and at the default strength 1 (capsys is per test: none here)."""
    root, model, _ = work
    out = {}
    for name, extra in (("half", ["--strength", "0.5"]), ("full", [])):
        code = main([str(a) for a in ("grid", root / "src.png", root / "tgt.png", "--thetas", "0,1", "--alphas",
                                      "0,1", "--out", root / f"{name}.png", "--cells-dir", root / name, *model,
                                      *extra)])
        assert code == 0
        out[name] = root / f"{name}.png"
    return out


def _cell(root, name, r=0, c=0):
    return np.asarray(Image.open(root / name / f"r{r:02d}_c{c:02d}.png").convert("RGB"), dtype=np.int16)


# -- --ip-adapter's text (vslerp.stats.models, tested in tests/test_stats_encoders.py too) -----
@pytest.mark.parametrize(("text", "parsed"), [
    ("h94/IP-Adapter:models/ip-adapter_sd15.safetensors", ("h94/IP-Adapter", "models", "ip-adapter_sd15.safetensors")),
    ("h94/IP-Adapter:sdxl_models/ip-adapter_sdxl_vit-h.bin", ("h94/IP-Adapter", "sdxl_models",
                                                              "ip-adapter_sdxl_vit-h.bin")),
    ("/data/adapters/tiny:models/ip.safetensors", ("/data/adapters/tiny", "models", "ip.safetensors")),
    ("./tiny:a/b/ip.bin", ("./tiny", "a/b", "ip.bin")),
    ("XLabs-AI/flux-ip-adapter:ip_adapter.safetensors", ("XLabs-AI/flux-ip-adapter", "", "ip_adapter.safetensors")),
])
def test_ip_adapter_text_names_repo_subfolder_and_weight(text, parsed, capsys):
    from vslerp.ui.cli import build_parser

    assert parse_ip_adapter(text) == parsed
    args = build_parser().parse_args(["grid", "a.png", "b.png", "--out", "g.png", "--ip-adapter", text])
    assert args.ip_adapter == parsed


# -- every bad value: one stderr line, exit 2, no model loaded ----------------------------------------
_BAD_JOBS = {"strength": {"strength": 2}, "strength_text": {"strength": "half"}, "prompt": {"prompt": 5},
             "level": {"noise_level": -3}, "unknown": {"strenght": 0.5}, "kandinsky_prompt": {"prompt": "a cat"}}


def _bad_cases(root, model, sd):
    grid = ["grid", root / "src.png", root / "tgt.png", "--out", root / "never.png"]
    jobs = {name: ["batch", root / f"jobs_{name}.jsonl", "--out-dir", root / "never", *model] for name in _BAD_JOBS}
    return {
        "strength 0": ([*grid, *model, "--strength", "0"], "argument --strength: must be in (0, 1]"),
        "strength above 1": ([*grid, *model, "--strength", "1.5"], "argument --strength: must be in (0, 1]"),
        "strength nan": ([*grid, *model, "--strength", "nan"], "argument --strength: must be in (0, 1]"),
        "strength text": ([*grid, *model, "--strength", "half"], "argument --strength: must be a number"),
        "strength leaves no step": ([*grid, *model, "--strength", "0.2"],
                                    "--strength 0.2 with --steps 2 leaves no denoising step"),
        "noise level negative": ([*grid, *model, "--noise-level", "-1"], "argument --noise-level: must be ≥ 0"),
        "noise level fraction": ([*grid, *model, "--noise-level", "1.5"], "argument --noise-level: must be an integer"),
        "scale negative": ([*grid, *model, "--ip-adapter-scale", "-1"], "argument --ip-adapter-scale: must be"),
        "scale inf": ([*grid, *model, "--ip-adapter-scale", "inf"], "argument --ip-adapter-scale: must be"),
        "adapter no colon": ([*grid, *model, "--ip-adapter", "h94/IP-Adapter"], "argument --ip-adapter: must be REPO_OR_DIR:[SUBFOLDER/]WEIGHT.safetensors, got 'h94/IP-Adapter' (no ':'"),
        "adapter no weight": ([*grid, *model, "--ip-adapter", "h94/IP-Adapter:models/"],
                              "(the weight file must end in .safetensors or .bin)"),
        "adapter no repo": ([*grid, *model, "--ip-adapter", ":models/ip.safetensors"],
                            "(no repo or folder before ':')"),
        "adapter weight kind": ([*grid, *model, "--ip-adapter", "h94/IP-Adapter:models/ip.txt"],
                                "(the weight file must end in .safetensors or .bin)"),
        "adapter outside": ([*grid, *model, "--ip-adapter", "h94/IP-Adapter:models/../ip.bin"],
                            "(the subfolder must be a plain relative path)"),
        "adapter on kandinsky": ([*grid, *model, "--ip-adapter", "h94/IP-Adapter:models/ip.safetensors"],
                                 "--ip-adapter needs a Stable Diffusion 1.5 / SDXL / FLUX.1 --model"),
        "adapter on the default model": ([*grid, "--ip-adapter", "h94/IP-Adapter:models/ip.safetensors"],
                                         "--ip-adapter needs a Stable Diffusion 1.5 / SDXL / FLUX.1 --model"),
        "sd without adapter": ([*grid, "--model", sd], "is a Stable Diffusion base (ip-adapter-sd): it renders"),
        "adapter on a saved adapter folder": ([*grid, "--model", sd.parent / "saved_ip", "--ip-adapter",
                                               "h94/IP-Adapter:models/ip.bin"], "is a folder saved with its IP-Adapter"),
        "prompt on kandinsky": ([*grid, *model, "--prompt", "a cat"],
                                "--prompt (text conditioning) is not supported by the kandinsky2.2 backend (a prompt "
                                "as TARGET goes through its prior)"),
        "negative on kandinsky": ([*grid, *model, "--negative-prompt", "blurry"],
                                  "--negative-prompt is not supported by the kandinsky2.2 backend"),
        "noise level on kandinsky": ([*grid, *model, "--noise-level", "100"],
                                     "--noise-level is not supported by the kandinsky2.2 backend"),
        "scale on kandinsky": ([*grid, *model, "--ip-adapter-scale", "0.5"],
                               "--ip-adapter-scale is not supported by the kandinsky2.2 backend"),
        "animate strength": (["animate", root / "src.png", root / "tgt.png", "--out", root / "never.gif", *model,
                              "--strength", "-0.5"], "argument --strength: must be in (0, 1]"),
        "animate prompt": (["animate", root / "src.png", root / "tgt.png", "--out", root / "never.gif", *model,
                            "--prompt", "a cat"], "--prompt (text conditioning) is not supported"),
        "job strength": (jobs["strength"], "jobs_strength.jsonl:1: strength 2 is not a number in (0, 1]"),
        "job strength text": (jobs["strength_text"], "jobs_strength_text.jsonl:1: strength 'half' is not a number"),
        "job prompt": (jobs["prompt"], "jobs_prompt.jsonl:1: prompt 5 is not text"),
        "job noise level": (jobs["level"], "jobs_level.jsonl:1: noise_level -3 is not an integer ≥ 0"),
        "job unknown key": (jobs["unknown"], "jobs_unknown.jsonl:1: unknown keys ['strenght']"),
        "job prompt on kandinsky": (jobs["kandinsky_prompt"], "is not supported by the kandinsky2.2 backend"),
        "ui adapter on kandinsky": (["ui", "--model", model[1], "--ip-adapter", "h94/IP-Adapter:models/ip.bin"],
                                    "--ip-adapter needs a Stable Diffusion 1.5 / SDXL / FLUX.1 --model"),
        "ui sd without adapter": (["ui", "--model", sd], "is a Stable Diffusion base (ip-adapter-sd)"),
        "ui adapter malformed": (["ui", "--ip-adapter", "nothing"], "argument --ip-adapter: must be"),
    }


_CASES = tuple(_bad_cases(Path("."), ["--model", "m"], Path(".")))


@pytest.mark.parametrize("case", _CASES)
def test_bad_backend_options_are_one_line_exit_2_before_loading(work, case, capsys, no_models):
    root, model, sd = work
    argv, expected = _bad_cases(root, model, sd)[case]
    code, out, err = cli(capsys, *argv)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, err
    assert expected in lines[0], lines[0]
    assert not (root / "never.png").exists() and not (root / "never").exists()


def test_help_tells_the_text_prompt_from_a_prompt_target(capsys):
    code, out, _ = cli(capsys, "grid", "--help")
    assert code == 0
    text = " ".join(out.split())
    for flag in ("--strength S", "--prompt TEXT", "--negative-prompt TEXT", "--noise-level N",
                 "--ip-adapter REPO_OR_DIR:[SUBFOLDER/]WEIGHT", "--ip-adapter-scale X",
                 "--ip-adapter-image-encoder REPO_OR_DIR", "--true-cfg-scale X"):
        assert flag in text
    assert "--prompt is text conditioning of the UNet (Stable unCLIP, IP-Adapter), not the TARGET" in text


# -- --strength renders, is recorded, and --from reads it back -------------------------------------
def test_strength_renders_the_pipelines_img2img_and_records_it(work, grids):
    root, _, _ = work
    meta = read_png_metadata(grids["half"])
    assert meta == json.loads(grids["half"].with_suffix(".json").read_text(encoding="utf-8"))
    assert meta["strength"] == 0.5 and read_png_metadata(grids["full"])["strength"] == 1.0
    assert (meta["prompt"], meta["negative_prompt"], meta["noise_level"], meta["ip_adapter"],
            meta["ip_adapter_scale"]) == (None, None, 0, None, None)
    image = Image.open(grids["half"])
    assert image.size[0] > 2 * SIZE and image.size[1] > 2 * SIZE  # labelled: margins besides the 2×2 cells
    assert np.abs(_cell(root, "half") - _cell(root, "full")).mean() > 5  # θ=0 from the photo, not from noise
    # the pixels are the pipeline's own at that strength, from the SOURCE photo, at the same seed
    pipe = VSlerpPipeline.from_pretrained(meta["model"], prior=meta["prior"], device="cpu")
    pipe.set_progress_bar_config(disable=True)
    out = pipe(root / "src.png", root / "tgt.png", thetas=[0.0, 1.0], alphas=[0.0, 1.0], num_inference_steps=2,
               height=SIZE, width=SIZE, generator=torch.Generator().manual_seed(3), strength=0.5)
    for i, (r, c) in enumerate(((0, 0), (0, 1), (1, 0), (1, 1))):
        np.testing.assert_array_equal(_cell(root, "half", r, c), np.asarray(out.images[i], dtype=np.int16))


def test_from_reads_the_strength_back_and_an_option_overrides_it(work, grids, capsys):
    root, _, _ = work
    again = root / "again.png"
    code, _, err = cli(capsys, "grid", "--from", grids["half"], "--out", again, "--cells-dir", root / "again",
                       "--no-progress")
    assert code == 0, err
    assert read_png_metadata(again)["strength"] == 0.5
    np.testing.assert_array_equal(_cell(root, "again"), _cell(root, "half"))
    code, _, err = cli(capsys, "grid", "--from", grids["half"], "--strength", "1", "--out", root / "full_again.png",
                       "--cells-dir", root / "full_again", "--no-progress")
    assert code == 0, err
    np.testing.assert_array_equal(_cell(root, "full_again"), _cell(root, "full"))


def test_an_old_sidecar_without_the_backend_options_still_loads(work, grids, capsys):
    root, _, _ = work
    meta = json.loads(grids["full"].with_suffix(".json").read_text(encoding="utf-8"))
    for key in ("strength", "prompt", "negative_prompt", "noise_level", "ip_adapter", "ip_adapter_scale"):
        del meta[key]
    old = root / "old.json"
    old.write_text(json.dumps(meta), encoding="utf-8")
    code, _, err = cli(capsys, "grid", "--from", old, "--out", root / "from_old.png", "--cells-dir",
                       root / "from_old", "--no-progress")
    assert code == 0, err
    assert read_png_metadata(root / "from_old.png")["strength"] == 1.0
    np.testing.assert_array_equal(_cell(root, "from_old"), _cell(root, "full"))
    meta["strength"] = 7
    old.write_text(json.dumps(meta), encoding="utf-8")
    code, _, err = cli(capsys, "grid", "--from", old, "--out", root / "never.png")
    assert code == 2 and f"--from {old}: strength 7 is not a number in (0, 1]" in err


def test_batch_job_strength_is_rendered_recorded_and_fingerprinted(work, grids, capsys):
    """A job's "strength" renders as `grid --strength` does; a job at the defaults keeps the
    fingerprint it had before the backend options existed (a batch of then resumes)."""
    from vslerp.ui.cmd_batch import _params
    from vslerp.ui.render import RenderSpec

    root, model, _ = work
    jobs = root / "jobs.jsonl"
    jobs.write_text(json.dumps({"source": "src.png", "target": "tgt.png", "thetas": [0, 1], "alphas": [0, 1],
                                "seed": 3, "strength": 0.5, "name": "half"}) + "\n", encoding="utf-8")
    code, _, err = cli(capsys, "batch", jobs, "--out-dir", root / "batch", *model)
    assert code == 0, err
    meta = read_png_metadata(root / "batch" / "half.png")
    assert meta["strength"] == 0.5 and meta["job"]["params"]["strength"] == 0.5
    np.testing.assert_array_equal(np.asarray(Image.open(root / "batch" / "half.png")),
                                  np.asarray(Image.open(grids["half"])))
    image = {"kind": "image", "path": "a.png", "sha256": "0" * 64}
    plain = _params(RenderSpec(source=image, target=image), None)
    assert not {"strength", "prompt", "negative_prompt", "noise_level", "ip_adapter", "ip_adapter_scale"} & set(plain)
