"""strength < 1 (img2img) and the backend options, on a tiny random Kandinsky 2.2.

Every θ=0 cell with ``strength`` s is diffusers' ``KandinskyV22Img2ImgPipeline`` rendering the
source photo at strength s with the same seed; options a backend does not take are refused
by name before any compute.
"""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch
from helpers import gen as _gen
from helpers import random_image

from vslerp.pipelines.testing import TINY_DIM

STEPS, SIZE = 4, 64
RENDER = {"num_inference_steps": STEPS, "height": SIZE, "width": SIZE, "output_type": "np"}


def _photo(seed: int) -> PIL.Image.Image:
    return random_image(seed, SIZE)


def _img2img(pipe, image, embeds, strength, seed):
    from diffusers import KandinskyV22Img2ImgPipeline

    ref = KandinskyV22Img2ImgPipeline(unet=pipe.unet, scheduler=pipe.scheduler, movq=pipe.movq)
    ref.set_progress_bar_config(disable=True)
    return ref(image_embeds=embeds, negative_image_embeds=pipe.zero_image_embedding(), image=image,
               strength=strength, generator=_gen(seed), **RENDER).images  # (1, H, W, 3)


@pytest.mark.parametrize("strength", [0.5, 0.75])
def test_theta_zero_at_strength_equals_diffusers_img2img(pipe, strength):
    source, target = _photo(1), _photo(2)
    source_embeds = pipe.encode_image(source)  # (1, D)
    ref = _img2img(pipe, source, source_embeds, strength, seed=5)
    out = pipe(source, target, thetas=[0.0, 1.0], alphas=[0.0, 1.0], strength=strength, generator=_gen(5),
               **RENDER)
    for k in range(2):  # the θ=0 row (both α give the source)
        np.testing.assert_allclose(out.images[k], ref[0], atol=2e-4)
    assert np.abs(out.images[2] - ref[0]).max() > 1e-3  # θ=1 moved the content
    full = pipe(source, target, thetas=[0.0], alphas=[0.0], generator=_gen(5), **RENDER)
    assert np.abs(full.images[0] - ref[0]).max() > 1e-3  # strength 1: a variation, not the photo


def test_strength_keeps_the_photo_closer_than_noise(pipe):
    """Lower strength stays nearer the photo (pixel distance), as img2img does."""
    source = _photo(3)
    target = torch.randn(TINY_DIM, generator=_gen(9))
    photo = np.asarray(source, dtype=np.float32) / 255.0
    dist = []
    for strength in (0.25, 1.0):
        out = pipe(source, target, thetas=[0.0], alphas=[0.0], strength=strength, generator=_gen(1), **RENDER)
        dist.append(float(np.abs(out.images[0] - photo).mean()))
    assert dist[0] < dist[1]


def test_strength_batching_changes_no_pixel(pipe):
    source, target = _photo(4), _photo(5)
    kw = dict(thetas=[0.0, 0.5, 1.0], alphas=[0.0, 1.0], strength=0.6, **RENDER)
    one = pipe(source, target, generator=_gen(2), max_batch_size=1, **kw).images
    many = pipe(source, target, generator=_gen(2), max_batch_size=4, **kw).images
    np.testing.assert_allclose(one, many, atol=2e-4)


def test_image_argument_starts_an_embedding_source_from_that_photo(pipe):
    photo = _photo(6)
    source = pipe.encode_image(photo)[0]
    target = torch.randn(TINY_DIM, generator=_gen(8))
    by_image = pipe(photo, target, thetas=[0.0, 0.5], strength=0.5, generator=_gen(3), **RENDER).images
    by_embedding = pipe(source, target, thetas=[0.0, 0.5], strength=0.5, image=photo, generator=_gen(3),
                        **RENDER).images
    np.testing.assert_allclose(by_image, by_embedding, atol=2e-4)


def test_render_batch_at_strength_equals_single_calls(pipe):
    photos = [_photo(10), _photo(11)]
    embeds = [pipe.encode_image(p)[0] for p in photos]
    target = torch.randn(TINY_DIM, generator=_gen(4))
    requests = [{"source": e, "target": target, "thetas": [0.0, 0.5], "alphas": [0.0], "generator": _gen(20 + k),
                 "image": p} for k, (e, p) in enumerate(zip(embeds, photos, strict=True))]
    batched = pipe.render_batch(requests, strength=0.5, num_inference_steps=STEPS, height=SIZE, width=SIZE,
                                output_type="np")
    for k in range(len(requests)):
        alone = pipe(photos[k], target, thetas=[0.0, 0.5], strength=0.5, generator=_gen(20 + k), **RENDER)
        np.testing.assert_allclose(batched[k].images, alone.images, atol=2e-4)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"strength": 0.0}, "strength must be a number in (0, 1]"),
    ({"strength": 1.5}, "strength must be a number in (0, 1]"),
    ({"strength": "0.5"}, "strength must be a number in (0, 1]"),
    ({"strength": 0.1}, "leaves no denoising step"),
    ({"prompt": "a cat"}, "a text prompt= is not supported by the kandinsky2.2 backend"),
    ({"negative_prompt": "blurry"}, "negative_prompt= is not supported by the kandinsky2.2 backend"),
    ({"noise_level": 100}, "noise_level is not supported by the kandinsky2.2 backend"),
    ({"noise_level": -1}, "noise_level must be an int >= 0"),
    ({"ip_adapter_scale": 0.5}, "ip_adapter_scale is not supported by the kandinsky2.2 backend"),
    ({"image": "photo.png"}, "give it with strength < 1"),
])
def test_bad_backend_options_are_refused_before_any_compute(pipe, monkeypatch, kwargs, message):
    def no_render(*args, **kw):
        raise AssertionError("rendered")

    monkeypatch.setattr(pipe, "_render_chunk", no_render)
    with pytest.raises(ValueError) as err:
        pipe(_photo(1), _photo(2), thetas=[0.0], **RENDER, **kwargs)
    assert message in str(err.value)


def test_strength_needs_a_photo(pipe):
    source, target = torch.randn(TINY_DIM, generator=_gen(1)), torch.randn(TINY_DIM, generator=_gen(2))
    with pytest.raises(ValueError, match="strength < 1 starts from a photo"):
        pipe(source, target, thetas=[0.0], strength=0.5, **RENDER)
    with pytest.raises(ValueError, match="latents cannot be given with strength < 1"):
        pipe(_photo(1), target, thetas=[0.0], strength=0.5, latents=torch.zeros(1, 4, 8, 8), **RENDER)
