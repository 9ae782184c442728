"""The Stable unCLIP backend on a tiny random StableUnCLIPImg2ImgPipeline, against diffusers' own.

Every cell is diffusers' ``StableUnCLIPImg2ImgPipeline(image_embeds=cell, generator=seed)``:
θ=0 cells render the source embedding, α=0 cells its SLERP towards the target, with the
prompt, negative prompt and noise level handed through.
"""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch
from helpers import embedding
from helpers import gen as _gen
from helpers import random_image as _photo

import vslerp
from vslerp.pipelines import STATISTICS_FILE, VSlerpPipeline
from vslerp.pipelines.loading import backend_of
from vslerp.pipelines.stable_unclip import VSlerpStableUnCLIPPipeline
from vslerp.pipelines.testing import TINY_DIM

SIZE = 32
RENDER = {"num_inference_steps": 2, "height": SIZE, "width": SIZE, "output_type": "np"}
ATOL = 1e-4  # batch-size-dependent CPU kernels


def _emb(seed: int) -> torch.Tensor:
    return embedding(3000 + seed)  # (D,) raw


@pytest.fixture(scope="module")
def folder(tiny_stable_unclip):
    return tiny_stable_unclip


@pytest.fixture(scope="module")
def pipe(folder, make_pipe):
    return make_pipe(folder, stats=vslerp.stats.Statistics.from_mean(_emb(0)), device=None)


@pytest.fixture(scope="module")
def reference(folder):
    """diffusers' own pipeline, loaded from the same folder: one image per call."""
    from diffusers import StableUnCLIPImg2ImgPipeline

    ref = StableUnCLIPImg2ImgPipeline.from_pretrained(folder)
    ref.set_progress_bar_config(disable=True)

    def render(image_embeds, generator, **kwargs):  # image_embeds (1, D)
        return ref(image_embeds=image_embeds, generator=generator, **{**RENDER, **kwargs}).images  # (1, H, W, 3)

    return render


def test_auto_backend_describe_and_encoders(pipe, folder):
    assert isinstance(pipe, VSlerpStableUnCLIPPipeline) and backend_of(folder) == "stable-unclip"
    info = pipe.describe()
    assert info["backend"] == "stable-unclip" and info["dim"] == TINY_DIM and info["prior"] is None
    assert pipe.default_guidance_scale == 10.0 and pipe.size_rule() == (8, None)
    assert pipe.default_size == pipe.unet.config.sample_size * 2  # the tiny VAE's factor
    assert pipe.encode_image(_photo(1)).shape == (1, TINY_DIM)
    with pytest.raises(ValueError, match="no projected CLIP text encoder"):
        pipe.encode_text("a cat")


def test_theta_zero_and_alpha_zero_equal_diffusers_renders(pipe, reference):
    source, target = _photo(1), _emb(2)
    generator = _gen(5)
    out = pipe(source, target, thetas=[0.0, 0.6], alphas=[0.0, 1.5], generator=generator, **RENDER)
    assert out.images.shape == (4, SIZE, SIZE, 3)
    pixels = pipe.feature_extractor(images=source, return_tensors="pt").pixel_values
    source_embeds = pipe.image_encoder(pixels).image_embeds  # (1, D), as diffusers' _encode_image
    torch.testing.assert_close(out.embeddings[0, 0], source_embeds[0])
    ref_generator = _gen(5)
    ref = reference(source_embeds, ref_generator)
    for k in (0, 1):  # θ=0 row: both α give the source
        np.testing.assert_allclose(out.images[k], ref[0], atol=ATOL)
    assert torch.equal(generator.get_state(), ref_generator.get_state())  # left as diffusers leaves it
    slerped = vslerp.slerp(source_embeds[0], target, 0.6)  # (D,)
    torch.testing.assert_close(out.embeddings[1, 0], slerped)
    np.testing.assert_allclose(out.images[2], reference(slerped[None], _gen(5))[0], atol=ATOL)
    assert np.abs(out.images[0] - out.images[3]).max() > 100 * ATOL  # the cells differ


def test_prompt_negative_prompt_and_noise_level_reach_diffusers(pipe, reference):
    source, target = _emb(3), _emb(4)
    options = {"prompt": "a cat", "negative_prompt": "a dog", "noise_level": 300}
    out = pipe(source, target, thetas=[0.0, 1.0], alphas=[0.0], generator=_gen(7), **options, **RENDER)
    np.testing.assert_allclose(out.images[0], reference(source[None], _gen(7), **options)[0], atol=ATOL)
    np.testing.assert_allclose(out.images[1], reference(target[None], _gen(7), **options)[0], atol=ATOL)
    plain = pipe(source, target, thetas=[0.0], alphas=[0.0], generator=_gen(7), **RENDER)
    assert np.abs(plain.images[0] - out.images[0]).max() > 100 * ATOL  # the options changed the render


def test_batch_size_changes_no_pixel_and_render_batch_equals_calls(pipe):
    source, target = _emb(5), _emb(6)
    kw = dict(thetas=[0.0, 0.5, 1.0], alphas=[0.0, 2.0], prompt="a cat", noise_level=50, **RENDER)
    one = pipe(source, target, generator=_gen(1), max_batch_size=1, **kw).images
    many = pipe(source, target, generator=_gen(1), max_batch_size=4, **kw).images
    np.testing.assert_allclose(one, many, atol=ATOL)
    requests = [{"source": source, "target": target, "thetas": [0.0, 0.5], "alphas": [0.0], "generator": _gen(k)}
                for k in (11, 12)]
    batched = pipe.render_batch(requests, num_inference_steps=2, height=SIZE, width=SIZE, output_type="np",
                                prompt="a cat")
    for k, seed in enumerate((11, 12)):
        alone = pipe(source, target, thetas=[0.0, 0.5], generator=_gen(seed), prompt="a cat", **RENDER)
        np.testing.assert_allclose(batched[k].images, alone.images, atol=ATOL)


def test_save_pretrained_round_trip_renders_the_same_pixels(pipe, tmp_path):
    source, target = _emb(7), _emb(8)
    kw = dict(thetas=[0.0, 0.5], alphas=[0.0, 1.0], generator=_gen(2), **RENDER)
    before = pipe(source, target, **kw).images
    pipe.save_pretrained(tmp_path / "saved")
    assert (tmp_path / "saved" / STATISTICS_FILE).is_file()
    assert backend_of(tmp_path / "saved") == "stable-unclip"  # model_index: VSlerpStableUnCLIPPipeline
    loaded = VSlerpPipeline.from_pretrained(tmp_path / "saved", device=None)  # stats from the folder
    loaded.set_progress_bar_config(disable=True)
    assert isinstance(loaded, VSlerpStableUnCLIPPipeline)
    torch.testing.assert_close(loaded.image_mean, pipe.image_mean)
    np.testing.assert_allclose(loaded(source, target, **{**kw, "generator": _gen(2)}).images, before, atol=1e-6)


def test_latents_callback_and_output_types(pipe, reference):
    source, target = _emb(9), _emb(10)
    latents = torch.randn(1, 4, SIZE // 2, SIZE // 2, generator=_gen(4))  # the tiny VAE's factor is 2
    steps = []
    out = pipe(source, target, thetas=[0.0, 1.0], alphas=[0.0], generator=_gen(3), latents=latents,
               callback_on_step_end=lambda p, i, t, tensors: steps.append((p, i, tuple(tensors["latents"].shape))),
               **RENDER)
    np.testing.assert_allclose(out.images[0], reference(source[None], _gen(3), latents=latents)[0], atol=ATOL)
    assert steps == [(pipe, i, (2, 4, SIZE // 2, SIZE // 2)) for i in range(2)]

    def render(output_type):
        return pipe(source, target, thetas=[0.5], alphas=[0.0], generator=_gen(3), num_inference_steps=2,
                    height=SIZE, width=SIZE, output_type=output_type).images

    assert render("latent").shape == (1, 4, SIZE // 2, SIZE // 2)
    pt_image = render("pt")  # (1, 3, H, W) in [−1, 1]
    assert pt_image.shape == (1, 3, SIZE, SIZE) and pt_image.min() >= -1
    np.testing.assert_allclose(pt_image.permute(0, 2, 3, 1).numpy() * 0.5 + 0.5, render("np"), atol=1e-6)
    assert isinstance(render("pil")[0], PIL.Image.Image)
    zeroed = pipe(source, target, thetas=[0.5], alphas=[0.0], num_inference_steps=2, height=SIZE, width=SIZE,
                  output_type="latent", callback_on_step_end=lambda p, i, t, tensors: {"latents": tensors["latents"] * 0})
    assert not zeroed.images.any()  # the callback's latents replaced the step's


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"strength": 0.5}, "strength < 1 (img2img) is not supported by the stable-unclip backend"),
    ({"ip_adapter_scale": 0.5}, "ip_adapter_scale is not supported by the stable-unclip backend"),
    ({"target": "a red bicycle"}, "takes no prompt as target"),
    ({"noise_level": 1000}, "noise_level must be < 1000"),
    ({"negative_image_embeds": torch.zeros(TINY_DIM)}, "negative_image_embeds is not supported"),
    ({"latents": torch.zeros(1, 4, 8, 8)}, "latents must have shape (1, 4, 16, 16)"),
    ({"height": 36}, "height 36 is not a multiple of 8"),
])
def test_bad_input_is_refused_before_any_compute(pipe, monkeypatch, kwargs, message):
    def no_render(*args, **kw):
        raise AssertionError("rendered")

    monkeypatch.setattr(pipe, "_render_chunk", no_render)
    call = {"source": _photo(1), "target": _emb(1), "thetas": [0.0], **RENDER, **kwargs}
    with pytest.raises(ValueError) as err:
        pipe(call.pop("source"), call.pop("target"), **call)
    assert message in str(err.value)


def test_loading_needs_matching_statistics_and_no_prior(pipe, folder):
    with pytest.raises(ValueError, match="needs stats=.*vslerp stats compute"):
        VSlerpPipeline.from_pretrained(folder, device=None)
    with pytest.raises(ValueError, match="dim"):
        VSlerpStableUnCLIPPipeline.from_pretrained(folder, stats=torch.randn(TINY_DIM + 3), device=None)
    other = vslerp.stats.Statistics.from_mean(_emb(1))
    other.metadata["encoder_fingerprint"] = "0" * 64  # computed with another image encoder
    with pytest.raises(ValueError, match="computed with image encoder"):
        pipe.set_statistics(other)
    with pytest.raises(ValueError, match="takes no prior"):
        VSlerpPipeline.from_pretrained(folder, prior=folder, stats=_emb(0), device=None)
    with pytest.raises(ValueError, match="has no prior"):
        pipe.prompt_to_image_embedding(["a cat"])
