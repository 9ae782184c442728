"""`vslerp grid` and the editor on a tiny random Stable unCLIP: --prompt, --negative-prompt and
--noise-level reach the pipeline (the pixels are its own at the same seed), the sidecar records
them, --from renders them again, and the editor shows the controls this backend takes."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from helpers import mean_statistics, source_and_target
from PIL import Image

from vslerp.ui.cli import main
from vslerp.ui.images import read_png_metadata

SIZE = 64
OPTIONS = {"prompt": "a photo", "negative_prompt": "blurry", "noise_level": 10}


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """(folder, the tiny Stable unCLIP folder, its statistics file) with a source and a target image."""
    from vslerp.pipelines.testing_sd import make_tiny_stable_unclip

    root = tmp_path_factory.mktemp("cli_stable_unclip")
    source_and_target(root, SIZE)
    return root, make_tiny_stable_unclip(root), mean_statistics(root / "stats.safetensors")


@pytest.fixture(scope="module")
def pipe(work, make_pipe):
    _, model, stats = work
    return make_pipe(model, stats=stats, device="cpu")


def _cells(root, name):
    return [np.asarray(Image.open(root / name / f"r{r:02d}_c{c:02d}.png").convert("RGB"))
            for r in range(2) for c in range(2)]


def test_grid_with_a_text_prompt_renders_the_pipelines_cells_and_records_them(work, pipe, capsys):
    root, model, stats = work
    argv = ["grid", root / "src.png", root / "tgt.png", "--thetas", "0,1", "--alphas", "0,1", "--model", model,
            "--stats", stats, "--steps", 2, "--size", SIZE, "--seed", 3, "--no-progress", "--prompt", "a photo",
            "--negative-prompt", "blurry", "--noise-level", 10]
    assert main([str(a) for a in [*argv, "--out", root / "su.png", "--cells-dir", root / "su"]]) == 0, \
        capsys.readouterr().err
    meta = read_png_metadata(root / "su.png")
    assert meta["pipeline"]["backend"] == "stable-unclip"
    assert {key: meta[key] for key in OPTIONS} == OPTIONS and meta["strength"] == 1.0
    grid = Image.open(root / "su.png")
    assert grid.size[0] > 2 * SIZE and grid.size[1] > 2 * SIZE  # labelled
    out = pipe(root / "src.png", root / "tgt.png", thetas=[0.0, 1.0], alphas=[0.0, 1.0], num_inference_steps=2,
               height=SIZE, width=SIZE, generator=torch.Generator().manual_seed(3), **OPTIONS)
    for cell, image in zip(_cells(root, "su"), out.images, strict=True):
        np.testing.assert_array_equal(cell, np.asarray(image.convert("RGB")))
    # another prompt is another image: the text reaches the UNet
    other = pipe(root / "src.png", root / "tgt.png", thetas=[0.0], alphas=[0.0], num_inference_steps=2,
                 height=SIZE, width=SIZE, generator=torch.Generator().manual_seed(3),
                 **{**OPTIONS, "prompt": "a drawing"})
    assert np.abs(np.asarray(other.images[0], dtype=np.int16) - _cells(root, "su")[0]).max() > 0
    # --from renders the same cells from the sidecar's options
    code = main([str(a) for a in ["grid", "--from", root / "su.json", "--out", root / "again.png", "--cells-dir",
                                  root / "again", "--no-progress"]])
    assert code == 0, capsys.readouterr().err
    for a, b in zip(_cells(root, "again"), _cells(root, "su"), strict=True):
        np.testing.assert_array_equal(a, b)
    # what Stable unCLIP does not take is refused before loading
    capsys.readouterr()
    assert main([str(a) for a in [*argv, "--strength", "0.5", "--out", root / "never.png"]]) == 2
    assert capsys.readouterr().err.strip() == \
        "vslerp grid: error: --strength below 1 (img2img) is not supported by the stable-unclip backend"
    prompt_target = [str(a) if a != root / "tgt.png" else "a watercolor painting" for a in argv]
    assert main([*prompt_target, "--out", str(root / "never.png")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "TARGET is a prompt, and the stable-unclip backend has no prior" in err[0]
    assert not (root / "never.png").exists()


def test_the_editor_renders_stable_unclip_with_its_text_prompt(work, pipe):
    pytest.importorskip("gradio")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from vslerp.ui.editor import Editor, build_page
    from vslerp.ui.editor.messages import EditorError

    root, _, _ = work
    editor = Editor(pipe)
    image, result = editor.edit(str(root / "src.png"), str(root / "tgt.png"), "", 0.0, 0.0, 3, 2, 10.0, SIZE,
                                text_prompt="a photo", negative_prompt="blurry", noise_level=10)
    assert {key: result["metadata"][key] for key in OPTIONS} == OPTIONS
    alone = pipe(root / "src.png", root / "tgt.png", thetas=[0.0], alphas=[0.0], num_inference_steps=2,
                 guidance_scale=10.0, height=SIZE, width=SIZE, generator=torch.Generator().manual_seed(3), **OPTIONS)
    np.testing.assert_array_equal(np.asarray(image.convert("RGB")), np.asarray(alone.images[0].convert("RGB")))
    with pytest.raises(EditorError, match="Strength below 1 is not supported by this model"):
        editor.edit(str(root / "src.png"), str(root / "tgt.png"), "", 0.0, 0.0, 3, 2, 10.0, SIZE, strength=0.5)
    demo = build_page(editor)
    shown = {block.elem_id: block.visible for block in demo.blocks.values()
             if str(getattr(block, "elem_id", "")).startswith("vslerp-")}
    assert shown["vslerp-text-prompt"] and shown["vslerp-negative-prompt"] and shown["vslerp-noise-level"]
    assert not shown["vslerp-strength"] and not shown["vslerp-ip-scale"]
    assert shown["vslerp-target"] and not shown["vslerp-prompt"]  # no prior: the target is an image
    kind = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "vslerp-target-kind")
    assert [value for _, value in kind.choices] == ["image"] and not kind.visible  # and never a prompt
    guidance = next(b for b in demo.blocks.values() if getattr(b, "label", None) == "Guidance")
    assert guidance.value == pipe.default_guidance_scale == 10.0  # the backend's default, not Kandinsky's
    choices = [value for _, value in next(b for b in demo.blocks.values()
                                          if getattr(b, "elem_id", None) == "vslerp-mean-source").choices]
    assert choices == ["startup", "statistics file"]  # no Kandinsky prior: no clip_mean to offer
    json.dumps(result["metadata"])  # the sidecar is JSON


def test_vslerp_ui_loads_stable_unclip_with_its_statistics(work, capsys, monkeypatch):
    """`vslerp ui --model <Stable unCLIP> --stats FILE` serves (Stable unCLIP has no mean of its own)."""
    gr = pytest.importorskip("gradio")
    import socket

    root, model, stats = work
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    seen = {}

    def block_thread(self):  # instead of waiting for Ctrl-C: look at the page that was built
        seen["ids"] = {b.elem_id: b.visible for b in self.blocks.values() if getattr(b, "elem_id", None)}

    monkeypatch.setattr(gr.Blocks, "block_thread", block_thread)
    assert main(["ui", "--model", str(model), "--stats", str(stats), "--device", "cpu", "--port", str(port)]) == 0, \
        capsys.readouterr().err
    assert f"serving on http://127.0.0.1:{port}" in capsys.readouterr().err
    assert seen["ids"]["vslerp-text-prompt"] and seen["ids"]["vslerp-noise-level"]
