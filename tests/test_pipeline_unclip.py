"""The unCLIP/Karlo backend on a tiny random image-variation pipeline, against diffusers' own."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch
from helpers import embedding
from helpers import gen as _gen

import vslerp
from vslerp.pipelines import STATISTICS_FILE, VSlerpPipeline
from vslerp.pipelines.testing import TINY_DIM
from vslerp.pipelines.unclip import VSlerpUnCLIPPipeline

RENDER = {"num_inference_steps": 2, "super_res_num_inference_steps": 2, "output_type": "np"}
ATOL = 5e-3  # batch-size-dependent CPU kernels; the tiny super-resolution amplifies them


def _emb(seed: int) -> torch.Tensor:
    return embedding(2000 + seed)  # (D,) raw


@pytest.fixture(scope="module")
def unclip_dir(tiny_unclip):
    return tiny_unclip


@pytest.fixture(scope="module")
def pipe(unclip_dir, make_pipe):
    return make_pipe(unclip_dir, stats=_emb(0), device=None)  # backend="auto"


def _reference(pipe, image_embeddings, seed):
    from diffusers import UnCLIPImageVariationPipeline

    parts = {k: v for k, v in pipe.components.items() if k not in ("prior", "prior_scheduler")}  # Karlo's prior
    ref = UnCLIPImageVariationPipeline(**parts)
    ref.set_progress_bar_config(disable=True)
    return ref(image_embeddings=image_embeddings, decoder_num_inference_steps=2, super_res_num_inference_steps=2,
               generator=_gen(seed), output_type="np").images  # (N, H, W, 3)


def test_auto_backend_and_describe(pipe):
    assert isinstance(pipe, VSlerpUnCLIPPipeline)
    info = pipe.describe()
    assert info["backend"] == "unclip" and info["dim"] == TINY_DIM and info["mean_source"] == "tensor"


def test_theta_zero_and_alpha_zero_equal_diffusers_renders(pipe):
    rng = np.random.default_rng(0)
    source = PIL.Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8))
    target = _emb(2)
    out = pipe(source, target, thetas=[0.0, 0.6], alphas=[0.0, 1.5], generator=_gen(5), **RENDER)
    assert out.images.shape == (4, 64, 64, 3) and out.embeddings.shape == (2, 2, TINY_DIM)
    pixels = pipe.feature_extractor(source, return_tensors="pt").pixel_values
    source_embeds = pipe.image_encoder(pixels).image_embeds  # (1, D), as diffusers' _encode_image
    torch.testing.assert_close(out.embeddings[0, 0], source_embeds[0].detach())
    ref = _reference(pipe, source_embeds.detach(), seed=5)
    for k in (0, 1):  # θ=0 row
        np.testing.assert_allclose(out.images[k], ref[0], atol=ATOL)
    slerped = vslerp.slerp(source_embeds[0].detach(), target, 0.6)  # (D,)
    torch.testing.assert_close(out.embeddings[1, 0], slerped)
    np.testing.assert_allclose(out.images[2], _reference(pipe, slerped[None], seed=5)[0], atol=ATOL)
    assert np.abs(out.images[0] - out.images[3]).max() > 10 * ATOL


def test_batching_and_round_trip(pipe, tmp_path):
    source, target = _emb(3), _emb(4)
    kw = dict(thetas=[0.0, 0.5, 1.0], alphas=[0.0, 2.0], **RENDER)
    batched = pipe(source, target, generator=_gen(1), max_batch_size=6, **kw)
    single = pipe(source, target, generator=_gen(1), max_batch_size=1, **kw)
    np.testing.assert_allclose(batched.images, single.images, atol=ATOL)
    pipe.save_pretrained(tmp_path / "saved")
    assert (tmp_path / "saved" / STATISTICS_FILE).is_file()
    loaded = VSlerpPipeline.from_pretrained(tmp_path / "saved", device=None)  # stats from the folder
    loaded.set_progress_bar_config(disable=True)
    assert isinstance(loaded, VSlerpUnCLIPPipeline)
    torch.testing.assert_close(loaded.image_mean, pipe.image_mean)
    again = loaded(source, target, generator=_gen(1), max_batch_size=6, **kw)
    np.testing.assert_allclose(again.images, batched.images, atol=1e-6)


def test_unclip_errors(pipe, unclip_dir):
    with pytest.raises(ValueError, match="no prompts"):
        pipe(_emb(1), "a red bicycle", thetas=[0.5], alphas=[0.0], **RENDER)
    with pytest.raises(ValueError, match="height 128: this model renders 64×64 px only"):
        pipe(_emb(1), _emb(2), thetas=[0.5], alphas=[0.0], height=128, width=128, **RENDER)
    with pytest.raises(ValueError, match="needs stats"):
        VSlerpPipeline.from_pretrained(unclip_dir, device=None)
    with pytest.raises(ValueError, match="dim"):
        VSlerpPipeline.from_pretrained(unclip_dir, stats=torch.randn(TINY_DIM + 3), device=None)
    with pytest.raises(ValueError, match="thetas is empty"):
        pipe(_emb(1), _emb(2), thetas=[], alphas=[0.0], **RENDER)


def test_dispatch_progress_bars_and_backend_interface(pipe, unclip_dir, tmp_path):
    """Dispatch by model_index.json; the unCLIP adapter hands its cells to diffusers'
    UnCLIPImageVariationPipeline, whose progress bars take this pipeline's options."""
    import io

    from vslerp.pipelines.loading import backend_of

    assert backend_of(unclip_dir) == "unclip"
    pipe.save_pretrained(tmp_path / "saved")
    assert backend_of(tmp_path / "saved") == "unclip"  # model_index says VSlerpUnCLIPPipeline
    with pytest.raises(ValueError, match="VSlerpUnCLIPPipeline loads the unclip backend"):
        VSlerpUnCLIPPipeline.from_pretrained(unclip_dir, stats=_emb(0), backend="kandinsky2.2", device=None)
    bar = io.StringIO()
    pipe.set_progress_bar_config(disable=False, file=bar, ascii=True)
    try:
        pipe(_emb(1), _emb(2), thetas=[0.5], alphas=[0.0], generator=_gen(1), **RENDER)
    finally:
        pipe.set_progress_bar_config(disable=True)
    assert "2/2" in bar.getvalue()  # the decoder's and the super-resolution's 2 steps
    for kwargs, match in (({"latents": torch.zeros(1, 3, 32, 32)}, "latents"),
                          ({"negative_image_embeds": _emb(3)}, "negative_image_embeds"),
                          ({"output_type": "latent"}, "latent")):
        with pytest.raises(ValueError, match=match):
            pipe(_emb(1), _emb(2), thetas=[0.5], alphas=[0.0], **{**RENDER, **kwargs})
