"""`vslerp stats compute`, `vslerp grid` and `vslerp conformity` on a tiny random FLUX.1 folder with a
tiny XLabs IP-Adapter (``--ip-adapter DIR:ip_adapter.safetensors``, no subfolder) and its image
encoder in another folder (``--ip-adapter-image-encoder``): the statistics are that encoder's, the
grid's cells are the pipeline's own, the sidecar says flux and --from renders it again."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from helpers import cli, save_random_image, source_and_target
from PIL import Image

import vslerp.stats as vs
from vslerp.ui.images import read_png_metadata

SIZE = 32


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """(folder, FLUX base, adapter folder, encoder folder, statistics of that encoder from `stats compute`)."""
    from vslerp.pipelines.testing_flux import make_tiny_flux, make_tiny_flux_ip_adapter
    from vslerp.ui.cli import main

    root = tmp_path_factory.mktemp("cli_flux")
    source_and_target(root, SIZE)
    (root / "images").mkdir()
    for k in range(5):
        save_random_image(root / "images" / f"{k}.png", k, 40)
    base = make_tiny_flux(root)
    adapter, encoder = make_tiny_flux_ip_adapter(root, base)
    stats = root / "flux_stats.safetensors"
    argv = ["stats", "compute", "--images", root / "images", "--model", base, "--ip-adapter",
            f"{adapter}:ip_adapter.safetensors", "--ip-adapter-image-encoder", encoder, "--out", stats,
            "--device", "cpu", "--no-progress", "--num-workers", "0"]
    assert main([str(a) for a in argv]) == 0
    return root, base, adapter, encoder, stats


def _model(work):
    _, base, adapter, encoder, stats = work
    return ["--model", base, "--ip-adapter", f"{adapter}:ip_adapter.safetensors", "--ip-adapter-image-encoder",
            encoder, "--stats", stats]


def test_stats_compute_reads_the_adapters_image_encoder(work):
    from transformers import CLIPVisionModelWithProjection

    _, _, adapter, encoder, stats = work
    loaded = vs.load(stats)
    assert loaded.image.count == 5 and loaded.metadata["ip_adapter"] == f"{adapter}:ip_adapter.safetensors"
    assert loaded.metadata["encoder_fingerprint"] == vs.encoder_fingerprint(
        CLIPVisionModelWithProjection.from_pretrained(encoder))


def test_grid_on_flux_renders_the_pipelines_cells_and_records_them(work, capsys):
    from vslerp.pipelines import VSlerpPipeline

    root, base, adapter, encoder, stats = work
    argv = ["grid", root / "src.png", root / "tgt.png", "--thetas", "0,1", "--alphas", "0,1", *_model(work),
            "--steps", 2, "--size", SIZE, "--seed", 3, "--no-progress", "--device", "cpu", "--prompt", "a photo",
            "--negative-prompt", "blurry", "--true-cfg-scale", 2, "--ip-adapter-scale", 0.7]
    code, _, err = cli(capsys, *argv, "--out", root / "flux.png", "--cells-dir", root / "cells")
    assert code == 0, err
    meta = read_png_metadata(root / "flux.png")
    assert meta["pipeline"]["backend"] == "flux" and meta["guidance"] == 3.5 and meta["true_cfg_scale"] == 2.0
    assert meta["ip_adapter"] == {"source": str(adapter.resolve()), "subfolder": "",
                                  "weight_name": "ip_adapter.safetensors"}
    assert meta["ip_adapter_image_encoder"] == str(encoder.resolve())
    pipe = VSlerpPipeline.from_pretrained(base, ip_adapter=adapter, ip_adapter_weight_name="ip_adapter.safetensors",
                                          ip_adapter_image_encoder=encoder, stats=stats, device="cpu")
    pipe.set_progress_bar_config(disable=True)
    out = pipe(root / "src.png", root / "tgt.png", thetas=[0.0, 1.0], alphas=[0.0, 1.0], num_inference_steps=2,
               height=SIZE, width=SIZE, generator=torch.Generator().manual_seed(3), prompt="a photo",
               negative_prompt="blurry", true_cfg_scale=2.0, ip_adapter_scale=0.7)
    cells = sorted((root / "cells").glob("r*_c*.png"))
    assert len(cells) == 4
    for cell, image in zip(cells, out.images, strict=True):
        np.testing.assert_array_equal(np.asarray(Image.open(cell).convert("RGB")), np.asarray(image.convert("RGB")))
    code, _, err = cli(capsys, "grid", "--from", root / "flux.json", "--out", root / "again.png", "--cells-dir",
                       root / "again", "--no-progress", "--device", "cpu")
    assert code == 0, err
    for a, b in zip(sorted((root / "again").glob("r*_c*.png")), cells, strict=True):
        np.testing.assert_array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b)))


@pytest.mark.parametrize(("extra", "message"), [
    (["--ip-adapter", "XLabs-AI/flux-ip-adapter"], "argument --ip-adapter: must be REPO_OR_DIR:[SUBFOLDER/]WEIGHT"),
    (["--ip-adapter", "adapter:ip_adapter.txt"], "(the weight file must end in .safetensors or .bin)"),
    (["--noise-level", "3"], "--noise-level is not supported by the flux backend"),
    (["--size", "40"], "--size"),
])
def test_bad_flux_options_are_one_line_before_loading(work, capsys, monkeypatch, extra, message):
    from vslerp.pipelines import VSlerpPipeline

    def never(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(VSlerpPipeline, "from_pretrained", never)
    root = work[0]
    code, _, err = cli(capsys, "grid", root / "src.png", root / "tgt.png", *_model(work), *extra, "--steps", 2,
                       "--out", root / "never.png")
    assert code == 2 and len(err.strip().splitlines()) == 1 and message in err, err
    assert not (root / "never.png").exists()
    code, _, err = cli(capsys, "grid", root / "src.png", root / "tgt.png", "--model", work[1], "--out",
                       root / "never.png")
    assert code == 2 and "XLabs-AI/flux-ip-adapter:ip_adapter.safetensors" in err  # FLUX needs its adapter


def test_conformity_through_the_flux_encoder(work, tmp_path, capsys):
    root, _, adapter, encoder, stats = work
    out = tmp_path / "scores.csv"
    code, _, err = cli(capsys, "conformity", "--stats", stats, "--images", root / "images", "--model", work[1],
                       "--ip-adapter", f"{adapter}:ip_adapter.safetensors", "--ip-adapter-image-encoder", encoder,
                       "--out", out, "--device", "cpu", "--no-progress", "--num-workers", "0")
    assert code == 0, err
    rows = list(csv.DictReader(line for line in out.read_text().splitlines() if not line.startswith("#")))
    assert len(rows) == 5


def test_vslerp_ui_loads_flux_and_names_the_backend(work, capsys, monkeypatch):
    gr = pytest.importorskip("gradio")
    from helpers import free_port

    from vslerp.ui.cli import main

    seen = {}

    def block_thread(self):  # instead of waiting for Ctrl-C: look at the page that was built
        seen["ids"] = {b.elem_id: b.visible for b in self.blocks.values() if getattr(b, "elem_id", None)}
        seen["text"] = " ".join(str(getattr(b, "value", "")) for b in self.blocks.values())

    monkeypatch.setattr(gr.Blocks, "block_thread", block_thread)
    assert main([str(a) for a in ["ui", *_model(work), "--device", "cpu", "--port", free_port()]]) == 0, \
        capsys.readouterr().err
    assert "backend: flux" in seen["text"]
    assert seen["ids"]["vslerp-text-prompt"] and seen["ids"]["vslerp-ip-scale"] and not seen["ids"]["vslerp-noise-level"]
    assert seen["ids"]["vslerp-true-cfg"]  # FLUX's true CFG has its control


def test_batch_on_flux_takes_true_cfg_scale_per_job(work, capsys):
    import json

    root = work[0]
    jobs = root / "jobs.jsonl"
    jobs.write_text(json.dumps({"source": "src.png", "target": "tgt.png", "thetas": [0, 1], "alphas": [0],
                                "name": "cfg", "negative_prompt": "blurry", "true_cfg_scale": 2.5}) + "\n")
    code, _, err = cli(capsys, "batch", jobs, "--out-dir", root / "batch", *_model(work), "--steps", 2, "--size", SIZE,
                       "--device", "cpu", "--no-progress")
    assert code == 0, err
    meta = json.loads((root / "batch" / "cfg.json").read_text())
    assert meta["pipeline"]["backend"] == "flux" and meta["true_cfg_scale"] == 2.5
    assert meta["ip_adapter_image_encoder"] == str(work[3].resolve())
