"""`vslerp grid` and the editor on a tiny random SD 1.5 base with a tiny IP-Adapter:
``--ip-adapter DIR:models/ip-adapter_sd15.safetensors`` loads it, --prompt, --ip-adapter-scale and
--strength reach the pipeline (the pixels are its own at the same seed), the sidecar records
them, --from renders them again, and `vslerp ui` / the editor load it with its controls."""

from __future__ import annotations

import os
import socket

import numpy as np
import pytest
import torch
from helpers import mean_statistics, source_and_target
from PIL import Image

from vslerp.ui.cli import main
from vslerp.ui.images import read_png_metadata

SIZE = 64
WEIGHT = "models/ip-adapter_sd15.safetensors"
OPTIONS = {"prompt": "a photo", "negative_prompt": "blurry", "ip_adapter_scale": 0.7, "strength": 0.5}


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """(folder, the tiny SD 1.5 base, the adapter's folder, a statistics file of its encoder)."""
    from vslerp.pipelines.testing_sd import make_tiny_ip_adapter, make_tiny_sd

    root = tmp_path_factory.mktemp("cli_ip_adapter")
    source_and_target(root, SIZE)
    base = make_tiny_sd(root)
    return root, base, make_tiny_ip_adapter(root, base), mean_statistics(root / "stats.safetensors")


@pytest.fixture(scope="module")
def pipe(work, make_pipe):
    _, base, adapter, stats = work
    return make_pipe(base, stats=stats, device="cpu", ip_adapter=str(adapter), ip_adapter_subfolder="models",
                     ip_adapter_weight_name="ip-adapter_sd15.safetensors")


def _cells(root, name):
    return [np.asarray(Image.open(root / name / f"r{r:02d}_c{c:02d}.png").convert("RGB"))
            for r in range(2) for c in range(1)]


def test_grid_through_an_ip_adapter_renders_the_pipelines_cells_and_records_them(work, pipe, capsys):
    root, base, adapter, stats = work
    argv = ["grid", root / "src.png", root / "tgt.png", "--thetas", "0,1", "--alphas", "0", "--model", base,
            "--ip-adapter", f"{adapter}:{WEIGHT}", "--stats", stats, "--steps", 2, "--size", SIZE, "--seed", 3,
            "--no-progress", "--prompt", "a photo", "--negative-prompt", "blurry", "--ip-adapter-scale", 0.7,
            "--strength", 0.5]
    assert main([str(a) for a in [*argv, "--out", root / "ip.png", "--cells-dir", root / "ip"]]) == 0, \
        capsys.readouterr().err
    meta = read_png_metadata(root / "ip.png")
    assert meta["pipeline"]["backend"] == "ip-adapter-sd"
    assert {key: meta[key] for key in OPTIONS} == OPTIONS and meta["noise_level"] == 0
    assert meta["ip_adapter"] == {"source": str(adapter.resolve()), "subfolder": "models",
                                  "weight_name": "ip-adapter_sd15.safetensors"}
    grid = Image.open(root / "ip.png")
    assert grid.size[0] > SIZE and grid.size[1] > 2 * SIZE  # labelled
    out = pipe(root / "src.png", root / "tgt.png", thetas=[0.0, 1.0], alphas=[0.0], num_inference_steps=2,
               height=SIZE, width=SIZE, generator=torch.Generator().manual_seed(3), **OPTIONS)
    for cell, image in zip(_cells(root, "ip"), out.images, strict=True):
        np.testing.assert_array_equal(cell, np.asarray(image.convert("RGB")))
    code = main([str(a) for a in ["grid", "--from", root / "ip.json", "--out", root / "again.png", "--cells-dir",
                                  root / "again", "--no-progress"]])
    assert code == 0, capsys.readouterr().err
    for a, b in zip(_cells(root, "again"), _cells(root, "ip"), strict=True):
        np.testing.assert_array_equal(a, b)
    capsys.readouterr()
    assert main([str(a) for a in [*argv, "--noise-level", "5", "--out", root / "never.png"]]) == 2
    assert capsys.readouterr().err.strip() == \
        "vslerp grid: error: --noise-level is not supported by the ip-adapter-sd backend"


def test_vslerp_ui_loads_the_adapter_and_the_editor_renders_through_it(work, pipe, capsys, monkeypatch):
    gr = pytest.importorskip("gradio")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from vslerp.ui.editor import Editor

    root, base, adapter, stats = work
    editor = Editor(pipe)
    image, result = editor.edit(str(root / "src.png"), str(root / "tgt.png"), "", 0.0, 0.0, 3, 2, 7.5, SIZE,
                                strength=0.5, text_prompt="a photo", negative_prompt="blurry", ip_adapter_scale=0.7)
    assert {key: result["metadata"][key] for key in OPTIONS} == OPTIONS
    alone = pipe(root / "src.png", root / "tgt.png", thetas=[0.0], alphas=[0.0], num_inference_steps=2,
                 guidance_scale=7.5, height=SIZE, width=SIZE, generator=torch.Generator().manual_seed(3), **OPTIONS)
    np.testing.assert_array_equal(np.asarray(image.convert("RGB")), np.asarray(alone.images[0].convert("RGB")))

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    seen = {}

    def block_thread(self):  # instead of waiting for Ctrl-C: look at the page that was built
        seen["ids"] = {b.elem_id: b.visible for b in self.blocks.values() if getattr(b, "elem_id", None)}

    monkeypatch.setattr(gr.Blocks, "block_thread", block_thread)
    assert main(["ui", "--model", str(base), "--ip-adapter", f"{adapter}:{WEIGHT}", "--stats", str(stats),
                 "--device", "cpu", "--port", str(port)]) == 0, capsys.readouterr().err
    shown = seen["ids"]
    assert shown["vslerp-strength"] and shown["vslerp-text-prompt"] and shown["vslerp-ip-scale"]
    assert not shown["vslerp-noise-level"]


def test_grid_through_an_sdxl_ip_adapter(work, capsys):
    """The SDXL base: its backend from model_index.json, the adapter from its sdxl_models folder,
    the grid's cells the pipeline's own (img2img at --strength 0.5 through the SDXL img2img)."""
    from vslerp.pipelines import VSlerpPipeline
    from vslerp.pipelines.testing_sd import make_tiny_ip_adapter, make_tiny_sdxl

    root, _, _, stats = work
    base = make_tiny_sdxl(root)
    adapter = make_tiny_ip_adapter(root / "xl", base, "sdxl_models", "ip-adapter_sdxl.safetensors")
    argv = ["grid", root / "src.png", root / "tgt.png", "--thetas", "0,1", "--alphas", "0", "--model", base,
            "--ip-adapter", f"{adapter}:sdxl_models/ip-adapter_sdxl.safetensors", "--stats", stats, "--steps", 2,
            "--size", SIZE, "--seed", 3, "--no-progress", "--prompt", "a photo", "--strength", 0.5,
            "--out", root / "xl.png", "--cells-dir", root / "xl"]
    assert main([str(a) for a in argv]) == 0, capsys.readouterr().err
    assert read_png_metadata(root / "xl.png")["pipeline"]["backend"] == "ip-adapter-sdxl"
    pipe = VSlerpPipeline.from_pretrained(base, stats=stats, device="cpu",
                                          ip_adapter=f"{adapter}:sdxl_models/ip-adapter_sdxl.safetensors")
    pipe.set_progress_bar_config(disable=True)
    out = pipe(root / "src.png", root / "tgt.png", thetas=[0.0, 1.0], alphas=[0.0], num_inference_steps=2,
               height=SIZE, width=SIZE, generator=torch.Generator().manual_seed(3), prompt="a photo", strength=0.5)
    for cell, image in zip(_cells(root, "xl"), out.images, strict=True):
        np.testing.assert_array_equal(cell, np.asarray(image.convert("RGB")))
