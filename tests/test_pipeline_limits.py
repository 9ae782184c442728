"""VSlerpPipeline against what users really give: prompts of any content and length, sizes
the model cannot render, absurd values and runaway grids, out-of-memory (issue 17)."""

from __future__ import annotations

import warnings

import numpy as np
import PIL.Image
import pytest
import torch

from vslerp.pipelines import VSlerpPipeline
from vslerp.pipelines.inputs import check_prompt, image_path_or_prompt
from vslerp.pipelines.limits import RenderOutOfMemory, check_size, size_rule
from vslerp.pipelines.testing import TINY_DIM

RENDER = {"num_inference_steps": 1, "height": 32, "width": 32, "output_type": "latent"}


@pytest.fixture
def unet_calls(pipe):
    calls = []
    handle = pipe.unet.register_forward_hook(lambda *a: calls.append(1))
    yield calls
    handle.remove()


HOSTILE = ["a" * 300, "a red cat " * 100, "x/" * 3000, "a\x00b.png", "line\nbreak.png",
           "bad \ud800 surrogate", "\udcff.png", "~nosuchuser/x.png", "", "   ", "ü" * 200 + ".png",
           "/" + "d" * 255 + "/x.png", "con.png", "a.png\n"]


@pytest.mark.parametrize("text", HOSTILE)
def test_image_path_or_prompt_never_raises(text):
    found = image_path_or_prompt(text)
    assert found.kind in ("image", "directory", "missing", "prompt")


def test_image_path_or_prompt_decides(tmp_path):
    image = tmp_path / "cat.png"
    PIL.Image.new("RGB", (4, 4)).save(image)
    assert image_path_or_prompt(str(image)).kind == "image"
    assert image_path_or_prompt("cat.png", base=tmp_path).path == image
    assert image_path_or_prompt(str(tmp_path)).kind == "directory"
    assert image_path_or_prompt(str(tmp_path / "dog.jpg")).kind == "missing"
    assert image_path_or_prompt("a photo of a dog.jpg").kind == "prompt"  # spaces: a prompt
    assert image_path_or_prompt("x" * 300 + ".png").kind == "prompt"  # no file can be named so
    with pytest.raises(ValueError, match="unpaired surrogate U\\+D800"):
        check_prompt("target", "a \ud800 cat")


def test_long_prompt_is_truncated_with_one_warning(pipe, unet_calls):
    prompt = "a watercolor painting of a red cat on a windowsill " * 10  # > 255 bytes
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = pipe(torch.randn(TINY_DIM), prompt, thetas=[1.0], alphas=[0.0],
                   prior_num_inference_steps=2, **RENDER)
    said = [w for w in caught if "tokens long" in str(w.message)]
    assert len(said) == 1 and "first 77 tokens" in str(said[0].message)
    assert out.images.shape[0] == 1 and unet_calls


def test_prompt_with_nul_and_newlines_renders(pipe):
    out = pipe(torch.randn(TINY_DIM), "a red\x00 cat\non two lines", thetas=[1.0], alphas=[0.0],
               prior_num_inference_steps=2, **RENDER)
    assert bool(torch.isfinite(out.embeddings).all())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"height": 63, "width": 57}, "height 63 is not a multiple of 4"),
        ({"height": 64, "width": 66}, "width 66 is not a multiple of 4 .*: use 64 or 68"),
        ({"height": 8192, "width": 8192}, "8192 px is larger than the limit 4096 .*max_size="),
        ({"thetas": [0.0, 1.0] * 20, "alphas": list(range(30))}, "1200 cells .*max_cells="),
        ({"thetas": [1e308], "allow_extrapolation": True}, "theta 1e\\+308 is too large"),
        ({"alphas": [0.0, -1e308]}, "alpha -1e\\+308 is too large"),
        ({"guidance_scale": 1e300}, "guidance_scale 1e\\+300 is too large"),
        ({"target": "a \ud800 cat"}, "unpaired surrogate"),
        ({"target": "a cat", "prior_num_inference_steps": 1}, "prior_num_inference_steps must be"),
        ({"target": "x" * 300 + ".png"}, None),  # a long prompt, not OSError: runs
    ],
)
def test_sizes_limits_and_values_are_checked_before_denoising(pipe, unet_calls, kwargs, match):
    call = {"source": torch.randn(TINY_DIM), "target": torch.randn(TINY_DIM), "thetas": [0.5],
            "alphas": [0.0], **RENDER, "prior_num_inference_steps": 2, **kwargs}
    if match is None:
        pipe(**call)
        return
    with pytest.raises(ValueError, match=match):
        pipe(**call)
    assert unet_calls == []


def test_limits_are_lifted_by_keywords(pipe):
    out = pipe(torch.randn(TINY_DIM), torch.randn(TINY_DIM), thetas=[0.0, 1.0], alphas=[0.0, 1.0],
               max_cells=4, **RENDER)
    assert out.images.shape[0] == 4
    with pytest.raises(ValueError, match="4 cells .* limit 3"):
        pipe(torch.randn(TINY_DIM), torch.randn(TINY_DIM), thetas=[0.0, 1.0], alphas=[0.0, 1.0],
             max_cells=3, **RENDER)
    with pytest.raises(ValueError, match="larger than the limit 16"):
        pipe(torch.randn(TINY_DIM), torch.randn(TINY_DIM), max_size=16, **RENDER)


@pytest.mark.parametrize("error", [torch.OutOfMemoryError("CUDA out of memory. Tried to allocate"),
                                   RuntimeError("MPS backend out of memory"), MemoryError()])
def test_out_of_memory_names_size_and_batch(pipe, monkeypatch, error):
    def render(*args, **kwargs):
        raise error

    monkeypatch.setattr(pipe, "_render", render)
    with pytest.raises(RenderOutOfMemory, match=r"3 cell\(s\) of 32×32 px .*max_batch_size=1"):
        pipe(torch.randn(TINY_DIM), torch.randn(TINY_DIM), thetas=[0.5], alphas=[0.0, 1.0, 2.0],
             max_batch_size=4, **RENDER)


def test_other_render_errors_pass_through(pipe, monkeypatch):
    def render(*args, **kwargs):
        raise RuntimeError("shape mismatch")

    monkeypatch.setattr(pipe, "_render", render)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        pipe(torch.randn(TINY_DIM), torch.randn(TINY_DIM), **RENDER)


def test_one_size_rule_for_pipeline_and_cli(pipe, tiny_kandinsky):
    _, decoder_dir = tiny_kandinsky
    assert size_rule(decoder_dir) == pipe.size_rule() == (4, None)
    assert size_rule("kandinsky-community/kandinsky-2-2-decoder") == (64, None)
    assert size_rule("kakaobrain/karlo-v1-alpha-image-variations") == (1, 256)
    assert size_rule("stabilityai/stable-diffusion-2-1-unclip") == (8, None)  # by its name, offline


def test_stable_diffusion_folders_have_the_pipelines_size_rule(tmp_path):
    """The CLI's check before loading agrees with the loaded Stable unCLIP / SD pipeline's."""
    from vslerp.pipelines.testing_sd import make_tiny_sd, make_tiny_stable_unclip

    folder = make_tiny_stable_unclip(tmp_path)
    pipe = VSlerpPipeline.from_pretrained(folder, stats=torch.randn(TINY_DIM), device=None)
    assert size_rule(folder) == pipe.size_rule() == (8, None)
    assert size_rule(make_tiny_sd(tmp_path)) == (8, None)


def test_sizes_are_checked_by_the_rule_of_their_model():
    with pytest.raises(ValueError, match="renders 256×256 px only"):
        check_size("size", 512, factor=1, fixed=256)


def test_unclip_size_is_checked_before_encoding(tmp_path, monkeypatch):
    from vslerp.pipelines.testing import make_tiny_unclip

    folder = make_tiny_unclip(tmp_path / "unclip")
    pipe = VSlerpPipeline.from_pretrained(folder, stats=torch.randn(TINY_DIM), device=None)
    assert size_rule(folder) == pipe.size_rule() == (1, pipe.default_size)

    def tripwire(*args, **kwargs):
        raise AssertionError("encoded before the size was checked")

    monkeypatch.setattr(pipe, "encode_image", tripwire)
    image = PIL.Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match=f"renders {pipe.default_size}×{pipe.default_size} px only"):
        pipe(image, image, height=32, width=32, num_inference_steps=1)
