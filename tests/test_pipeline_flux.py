"""The FLUX.1 backend on tiny random models, against diffusers' own ``FluxPipeline`` /
``FluxImg2ImgPipeline`` with the XLabs IP-Adapter loaded by diffusers' ``load_ip_adapter``
(pipelines/testing_flux.py builds the models)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import embedding, random_image
from helpers import gen as _gen

import vslerp
from vslerp.pipelines import STATISTICS_FILE, VSlerpFluxPipeline, VSlerpPipeline
from vslerp.pipelines.testing import TINY_DIM
from vslerp.pipelines.testing_flux import (
    FLUX_ADAPTER_WEIGHT,
    make_tiny_flux,
    make_tiny_flux_ip_adapter,
)

SIZE = 32
RENDER = {"num_inference_steps": 2, "height": SIZE, "width": SIZE, "output_type": "np"}
ATOL = 1e-4  # batch-size-dependent CPU kernels


def _emb(seed: int) -> torch.Tensor:
    return embedding(4000 + seed) * 3  # (D,) raw


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """(base folder, adapter folder, image encoder folder), built once."""
    root = tmp_path_factory.mktemp("tiny_flux")
    base = make_tiny_flux(root)
    return (base, *make_tiny_flux_ip_adapter(root, base))


@pytest.fixture(scope="module")
def pipe(models, make_pipe):
    base, adapter, encoder = models
    return make_pipe(base, ip_adapter=adapter, ip_adapter_weight_name=FLUX_ADAPTER_WEIGHT,
                     ip_adapter_image_encoder=encoder, stats=_emb(0), device=None)


@pytest.fixture(scope="module")
def ref(models):
    """diffusers' own FluxPipeline with the adapter (and its encoder) loaded by diffusers."""
    from diffusers import FluxPipeline

    base, adapter, encoder = models
    out = FluxPipeline.from_pretrained(base)
    out.load_ip_adapter(str(adapter), weight_name=FLUX_ADAPTER_WEIGHT,
                        image_encoder_pretrained_model_name_or_path=str(encoder), image_encoder_dtype=torch.float32)
    out.set_progress_bar_config(disable=True)
    return out


def _embeds(e: torch.Tensor) -> list[torch.Tensor]:
    return [e.reshape(1, 1, -1)]  # diffusers' ip_adapter_image_embeds for one image: [(1, 1, D)]


def test_backend_describe_and_defaults(pipe, models):
    from vslerp.pipelines.loading import backend_of

    assert type(pipe) is VSlerpFluxPipeline and backend_of(models[0]) == "flux"
    info = pipe.describe()
    assert info["backend"] == "flux" and info["dim"] == TINY_DIM
    assert info["ip_adapter"] == f"{models[1]}:{FLUX_ADAPTER_WEIGHT}"
    assert pipe.default_guidance_scale == 3.5 and pipe.default_size == 1024 and pipe.size_rule() == (16, None)


def test_theta_zero_and_alpha_zero_equal_flux_pipeline(pipe, ref):
    source, target = random_image(1, SIZE), _emb(2)
    generator, ref_generator = _gen(5), _gen(5)
    out = pipe(source, target, thetas=[0.0, 0.6], alphas=[0.0, 1.5], generator=generator, **RENDER)
    assert out.images.shape == (4, SIZE, SIZE, 3)
    expected = ref(prompt="", ip_adapter_image=source, generator=ref_generator, **RENDER).images  # diffusers encodes
    assert torch.equal(generator.get_state(), ref_generator.get_state())  # left as diffusers leaves it
    for k in (0, 1):  # the θ=0 row
        np.testing.assert_allclose(out.images[k], expected[0], atol=ATOL)
    slerped = vslerp.slerp(out.embeddings[0, 0], target, 0.6)  # (D,)
    torch.testing.assert_close(out.embeddings[1, 0], slerped)
    moved = ref(prompt="", ip_adapter_image_embeds=_embeds(slerped), generator=_gen(5), **RENDER).images
    np.testing.assert_allclose(out.images[2], moved[0], atol=ATOL)
    assert np.abs(out.images[0] - out.images[2]).max() > 100 * ATOL  # the embedding moved the pixels


def test_true_cfg_negative_is_diffusers_black_image(pipe, ref):
    source = _emb(3)
    text = {"prompt": "a cat", "negative_prompt": "blurry", "true_cfg_scale": 3.0, "guidance_scale": 2.0}
    out = pipe(source, _emb(4), thetas=[0.0], alphas=[0.0], generator=_gen(2), ip_adapter_scale=0.5, **text,
               **RENDER)
    ref.set_ip_adapter_scale(0.5)
    try:  # no negative embedding given: diffusers encodes a black image
        expected = ref(ip_adapter_image_embeds=_embeds(source), generator=_gen(2), **text, **RENDER).images
    finally:
        ref.set_ip_adapter_scale(1.0)
    np.testing.assert_allclose(out.images[0], expected[0], atol=ATOL)
    black = ref.encode_image(np.zeros((SIZE, SIZE, 3), dtype=np.uint8), "cpu", 1)[0]
    torch.testing.assert_close(pipe._negative(None), black)
    assert {tuple(p.scale) for p in pipe.transformer.attn_processors.values() if hasattr(p, "to_k_ip")} == {(1.0,)}
    zeros = pipe(source, _emb(4), thetas=[0.0], alphas=[0.0], generator=_gen(2), ip_adapter_scale=0.5,
                 negative_image_embeds=_emb(15), **text, **RENDER)
    assert np.abs(zeros.images[0] - out.images[0]).max() > 100 * ATOL  # the negative embedding is used


def test_batches_and_render_batch_change_no_pixel(pipe):
    kw = dict(thetas=[0.0, 0.5, 1.0], alphas=[0.0, 1.0], **RENDER)
    batched = pipe(_emb(5), _emb(6), generator=_gen(1), max_batch_size=6, **kw)
    single = pipe(_emb(5), _emb(6), generator=_gen(1), max_batch_size=1, **kw)
    np.testing.assert_allclose(batched.images, single.images, atol=ATOL)
    (again,) = pipe.render_batch([{"source": _emb(5), "target": _emb(6), "thetas": [0.0, 0.5, 1.0],
                                   "alphas": [0.0, 1.0], "generator": _gen(1)}], max_batch_size=4, **RENDER)
    np.testing.assert_allclose(again.images, batched.images, atol=ATOL)


def test_strength_equals_flux_img2img(pipe, ref):
    from diffusers import FluxImg2ImgPipeline

    img2img = FluxImg2ImgPipeline(**ref.components)
    img2img.set_progress_bar_config(disable=True)
    source = random_image(7, SIZE)
    steps = {"num_inference_steps": 4, "output_type": "np", "height": SIZE, "width": SIZE}
    generator, ref_generator = _gen(3), _gen(3)
    out = pipe(source, _emb(8), thetas=[0.0, 1.0], alphas=[0.0], strength=0.5, generator=generator, **steps)
    expected = img2img(prompt="", image=source, ip_adapter_image=source, strength=0.5, guidance_scale=3.5,
                       generator=ref_generator, **steps).images
    assert torch.equal(generator.get_state(), ref_generator.get_state())
    np.testing.assert_allclose(out.images[0], expected[0], atol=ATOL)
    assert np.abs(out.images[1] - expected[0]).max() > 100 * ATOL


def test_latents_and_callback(pipe, ref):
    seen = []

    def callback(p, step, timestep, tensors):
        seen.append((p is pipe, tuple(tensors["latents"].shape)))
        return {}

    latents = torch.randn(1, (SIZE // 16) ** 2, 16, generator=_gen(6))  # packed, as FluxPipeline takes them
    out = pipe(_emb(9), _emb(10), thetas=[0.0, 1.0], alphas=[0.0], latents=latents, generator=_gen(0),
               callback_on_step_end=callback, **RENDER)
    assert seen == [(True, (2, *latents.shape[1:]))] * 2
    expected = ref(prompt="", ip_adapter_image_embeds=_embeds(_emb(9)), latents=latents, generator=_gen(0),
                   **RENDER).images
    np.testing.assert_allclose(out.images[0], expected[0], atol=ATOL)
    with pytest.raises(ValueError, match=r"latents must have shape \(1, 4, 16\)"):
        pipe(_emb(9), _emb(10), thetas=[0.0], alphas=[0.0], latents=torch.zeros(1, 4, 8, 8), **RENDER)


def test_save_load_round_trip(pipe, tmp_path):
    from safetensors import safe_open

    kw = dict(thetas=[0.0, 1.0], alphas=[0.0], **RENDER)
    before = pipe(_emb(11), _emb(12), generator=_gen(4), **kw)
    pipe.save_pretrained(tmp_path / "saved")
    assert (tmp_path / "saved" / STATISTICS_FILE).is_file()
    (weights,) = (tmp_path / "saved" / "transformer").glob("*.safetensors")
    with safe_open(str(weights), "pt") as f:  # the transformer is saved without the adapter
        assert not [k for k in f.keys() if "encoder_hid_proj" in k or "_ip" in k]
    loaded = VSlerpPipeline.from_pretrained(tmp_path / "saved", device=None)
    loaded.set_progress_bar_config(disable=True)
    assert type(loaded) is VSlerpFluxPipeline and loaded.describe()["ip_adapter"] == pipe.describe()["ip_adapter"]
    np.testing.assert_allclose(loaded(_emb(11), _emb(12), generator=_gen(4), **kw).images, before.images, atol=1e-6)
    np.testing.assert_allclose(pipe(_emb(11), _emb(12), generator=_gen(4), **kw).images, before.images, atol=1e-6)


def test_model_cpu_offload_on_the_cpu(models, make_pipe):
    base, adapter, encoder = models
    offloaded = make_pipe(base, ip_adapter=f"{adapter}:{FLUX_ADAPTER_WEIGHT}", ip_adapter_image_encoder=encoder,
                          stats=_emb(0), device=None)
    kw = dict(thetas=[0.0, 1.0], alphas=[0.5], **RENDER)
    before = offloaded(_emb(13), _emb(14), generator=_gen(7), **kw)
    offloaded.enable_model_cpu_offload(device="cpu")
    assert hasattr(offloaded.transformer, "_hf_hook")
    after = offloaded(_emb(13), _emb(14), generator=_gen(7), **kw)
    np.testing.assert_allclose(after.images, before.images, atol=ATOL)


def test_errors_before_denoising(pipe, models):
    base, adapter, encoder = models
    with pytest.raises(ValueError, match="give ip_adapter=.*XLabs-AI/flux-ip-adapter"):
        VSlerpPipeline.from_pretrained(base, stats=_emb(0), device=None)
    with pytest.raises(ValueError, match="ip-adapter-image-encoder|image encoder"):
        VSlerpPipeline.from_pretrained(base, ip_adapter=f"{adapter}:{FLUX_ADAPTER_WEIGHT}",
                                       ip_adapter_image_encoder=base / "nothing_here", stats=_emb(0), device=None)

    def denoiser_never_runs(*args, **kwargs):
        raise AssertionError("denoising started")

    hook = pipe.transformer.register_forward_pre_hook(denoiser_never_runs)
    try:
        for kwargs, match in (({"noise_level": 3}, "noise_level is not supported by the flux backend"),
                              ({"height": 40}, "height"), ({"true_cfg_scale": -1.0}, "true_cfg_scale must be")):
            with pytest.raises(ValueError, match=match):
                pipe(_emb(1), _emb(2), thetas=[0.5], alphas=[0.0], **{**RENDER, **kwargs})
        with pytest.raises(ValueError, match="takes no prompt as target"):
            pipe(_emb(1), "a red bicycle", thetas=[0.5], alphas=[0.0], **RENDER)
    finally:
        hook.remove()


def test_bfloat16_keeps_the_encoder_in_float16_and_its_fingerprint(models):
    """diffusers' FLUX loader keeps the image encoder in float16; so does vslerp, and a float32
    statistics file's fingerprint still matches (bfloat16 weights would not)."""
    from transformers import CLIPVisionModelWithProjection

    from vslerp.stats import encoder_fingerprint

    base, adapter, encoder = models
    pipe = VSlerpPipeline.from_pretrained(base, ip_adapter=f"{adapter}:{FLUX_ADAPTER_WEIGHT}",
                                          ip_adapter_image_encoder=encoder, stats=_emb(0), dtype=torch.bfloat16,
                                          device=None)
    assert pipe.transformer.dtype == torch.bfloat16 and pipe.image_encoder.dtype == torch.float16
    assert encoder_fingerprint(pipe.image_encoder) == encoder_fingerprint(
        CLIPVisionModelWithProjection.from_pretrained(encoder))


def test_the_editor_renders_true_cfg_as_the_pipeline_does(pipe, tmp_path):
    """The editor's True CFG control reaches FLUX's render: its image is the pipeline's own with the
    same negative prompt and true_cfg_scale, and differs from the image without true CFG."""
    import PIL.Image

    from vslerp.pipelines.inputs import open_named_image
    from vslerp.ui.editor import Editor

    paths = []
    for k in (1, 2):
        random_image(k, 64).save(tmp_path / f"in{k}.png")
        paths.append(str(tmp_path / f"in{k}.png"))
    editor = Editor(pipe, tiny_random=True, prior_steps=2)
    text = {"text_prompt": "a cat", "negative_prompt": "blurry"}
    image, meta = editor.edit(paths[0], paths[1], "", 0.5, 1.0, 3, 2, 3.5, 64, true_cfg_scale=3.0, **text)
    plain, _ = editor.edit(paths[0], paths[1], "", 0.5, 1.0, 3, 2, 3.5, 64, **text)
    own = pipe(open_named_image("source", paths[0]), open_named_image("target", paths[1]), thetas=[0.5],
               alphas=[1.0], num_inference_steps=2, guidance_scale=3.5, height=64, width=64,
               generator=_gen(3), prompt="a cat", negative_prompt="blurry", true_cfg_scale=3.0).images[0]
    pixels = [np.asarray(im.convert("RGB"), dtype=np.int16) for im in (image, plain, own)]
    assert isinstance(image, PIL.Image.Image) and meta["metadata"]["true_cfg_scale"] == 3.0
    assert np.abs(pixels[0] - pixels[2]).max() <= 1  # PNG round trip of the same render
    assert np.abs(pixels[0] - pixels[1]).max() > 1  # true CFG changed the image
