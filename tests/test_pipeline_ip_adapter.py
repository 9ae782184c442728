"""The IP-Adapter backends (SD 1.5 and SDXL) on tiny random models, against diffusers' own
pipelines with ``load_ip_adapter``: every θ=0 cell is diffusers' render of the source image
through the adapter at the same seed (pipelines/testing_sd.py builds the models)."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch
from helpers import embedding, random_image
from helpers import gen as _gen

import vslerp
from vslerp.pipelines import STATISTICS_FILE, VSlerpPipeline
from vslerp.pipelines.ip_adapter import VSlerpIPAdapterPipeline, VSlerpIPAdapterXLPipeline
from vslerp.pipelines.testing import TINY_DIM
from vslerp.pipelines.testing_sd import make_tiny_ip_adapter, make_tiny_sd, make_tiny_sdxl

SIZE = 64
RENDER = {"num_inference_steps": 2, "height": SIZE, "width": SIZE, "output_type": "np"}
ATOL = 1e-4  # batch-size-dependent CPU kernels
KINDS = {  # base → (folder maker, adapter subfolder, weight, our class, backend)
    "sd15": (make_tiny_sd, "models", "ip-adapter_sd15.safetensors", VSlerpIPAdapterPipeline, "ip-adapter-sd"),
    "sdxl": (make_tiny_sdxl, "sdxl_models", "ip-adapter_sdxl.safetensors", VSlerpIPAdapterXLPipeline,
             "ip-adapter-sdxl"),
}


def _emb(seed: int) -> torch.Tensor:
    return embedding(3000 + seed)  # (D,) raw


def _photo(seed: int) -> PIL.Image.Image:
    return random_image(seed, SIZE)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """base → (base folder, adapter folder), built once."""
    out = {}
    for kind, (make, sub, weight, _, _) in KINDS.items():
        root = tmp_path_factory.mktemp(f"tiny_{kind}")
        base = make(root)
        out[kind] = (base, make_tiny_ip_adapter(root, base, sub, weight))
    return out


@pytest.fixture(scope="module")
def pipes(models, make_pipe):
    out = {}
    for kind, (base, adapter) in models.items():
        _, sub, weight, _, _ = KINDS[kind]
        out[kind] = make_pipe(base, ip_adapter=adapter, ip_adapter_subfolder=sub, ip_adapter_weight_name=weight,
                              stats=_emb(0), device=None)
    return out


@pytest.fixture(scope="module")
def refs(models):
    """diffusers' own text-to-image pipeline of each base, with the adapter loaded by diffusers."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    out = {}
    for kind, (base, adapter) in models.items():
        _, sub, weight, _, _ = KINDS[kind]
        ref = (StableDiffusionPipeline if kind == "sd15" else StableDiffusionXLPipeline).from_pretrained(base)
        ref.load_ip_adapter(str(adapter), subfolder=sub, weight_name=weight)
        ref.set_progress_bar_config(disable=True)
        out[kind] = ref
    return out


def _embeds(e: torch.Tensor) -> list[torch.Tensor]:
    """(D,) → diffusers' ip_adapter_image_embeds with guidance: [(2, 1, D)], zeros negative."""
    e = e.reshape(1, 1, -1)
    return [torch.cat([torch.zeros_like(e), e])]


@pytest.mark.parametrize("kind", list(KINDS))
def test_auto_backend_and_describe(pipes, models, kind):
    from vslerp.pipelines.loading import backend_of

    pipe, (_, sub, weight, cls, backend) = pipes[kind], KINDS[kind]
    assert type(pipe) is cls and backend_of(models[kind][0]) == backend
    info = pipe.describe()
    assert info["backend"] == backend and info["dim"] == TINY_DIM
    assert info["ip_adapter"] == f"{models[kind][1]}:{sub}/{weight}"
    assert pipe.default_guidance_scale == (7.5 if kind == "sd15" else 5.0)


@pytest.mark.parametrize("kind", list(KINDS))
def test_theta_zero_and_alpha_zero_equal_diffusers_renders(pipes, refs, kind):
    pipe, ref = pipes[kind], refs[kind]
    source, target = _photo(1), _emb(2)
    generator, ref_generator = _gen(5), _gen(5)
    out = pipe(source, target, thetas=[0.0, 0.6], alphas=[0.0, 1.5], generator=generator, **RENDER)
    assert out.images.shape == (4, SIZE, SIZE, 3)
    expected = ref(prompt="", ip_adapter_image=source, generator=ref_generator, **RENDER).images  # diffusers encodes
    assert torch.equal(generator.get_state(), ref_generator.get_state())  # left as diffusers leaves it
    for k in (0, 1):  # the θ=0 row
        np.testing.assert_allclose(out.images[k], expected[0], atol=ATOL)
    source_raw = out.embeddings[0, 0]
    slerped = vslerp.slerp(source_raw, target, 0.6)  # (D,)
    torch.testing.assert_close(out.embeddings[1, 0], slerped)
    moved = ref(prompt="", ip_adapter_image_embeds=_embeds(slerped), generator=_gen(5), **RENDER).images
    np.testing.assert_allclose(out.images[2], moved[0], atol=ATOL)
    assert np.abs(out.images[0] - out.images[2]).max() > 100 * ATOL  # the embedding moved the pixels


@pytest.mark.parametrize("kind", list(KINDS))
def test_max_batch_size_and_render_batch_change_no_pixel(pipes, kind):
    kw = dict(thetas=[0.0, 0.5, 1.0], alphas=[0.0, 1.0], **RENDER)
    batched = pipes[kind](_emb(3), _emb(4), generator=_gen(1), max_batch_size=6, **kw)
    single = pipes[kind](_emb(3), _emb(4), generator=_gen(1), max_batch_size=1, **kw)
    np.testing.assert_allclose(batched.images, single.images, atol=ATOL)
    assert np.abs(batched.images[0] - batched.images[-1]).max() > 100 * ATOL
    requests = [{"source": _emb(3), "target": _emb(4), "thetas": [0.0, 0.5, 1.0], "alphas": [0.0, 1.0],
                 "generator": _gen(1)}, {"source": _emb(5), "target": _emb(4), "thetas": [0.5], "alphas": [1.0],
                                         "generator": _gen(2)}]
    first, second = pipes[kind].render_batch(requests, max_batch_size=4, **RENDER)  # cells of both in one batch
    np.testing.assert_allclose(first.images, batched.images, atol=ATOL)
    alone = pipes[kind](_emb(5), _emb(4), thetas=[0.5], alphas=[1.0], generator=_gen(2), **RENDER)
    np.testing.assert_allclose(second.images, alone.images, atol=ATOL)


@pytest.mark.parametrize("kind", list(KINDS))
def test_prompt_negative_prompt_and_scale_equal_diffusers(pipes, refs, kind):
    pipe, ref = pipes[kind], refs[kind]
    source = _emb(5)
    text = {"prompt": "a cat", "negative_prompt": "blurry"}
    out = pipe(source, _emb(6), thetas=[0.0], alphas=[0.0], generator=_gen(2), ip_adapter_scale=0.5, **text,
               **RENDER)
    ref.set_ip_adapter_scale(0.5)
    try:
        expected = ref(ip_adapter_image_embeds=_embeds(source), generator=_gen(2), **text, **RENDER).images
    finally:
        ref.set_ip_adapter_scale(1.0)
    np.testing.assert_allclose(out.images[0], expected[0], atol=ATOL)
    scales = {tuple(p.scale) for p in pipe.unet.attn_processors.values() if hasattr(p, "to_k_ip")}
    assert scales == {(1.0,)}  # the call's scale is put back
    plain = pipe(source, _emb(6), thetas=[0.0], alphas=[0.0], generator=_gen(2), **RENDER)
    assert np.abs(plain.images[0] - out.images[0]).max() > 100 * ATOL


@pytest.mark.parametrize("kind", list(KINDS))
def test_strength_equals_diffusers_img2img(pipes, refs, kind):
    from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionXLImg2ImgPipeline

    pipe, ref = pipes[kind], refs[kind]
    img2img = (StableDiffusionImg2ImgPipeline if kind == "sd15" else StableDiffusionXLImg2ImgPipeline)(
        **ref.components)
    img2img.set_progress_bar_config(disable=True)
    source = _photo(7)
    steps = {"num_inference_steps": 4, "output_type": "np"}
    generator, ref_generator = _gen(3), _gen(3)
    out = pipe(source, _emb(8), thetas=[0.0, 1.0], alphas=[0.0], strength=0.5, generator=generator, height=SIZE,
               width=SIZE, **steps)
    expected = img2img(prompt="", image=source, ip_adapter_image=source, strength=0.5, generator=ref_generator,
                       **steps).images
    assert torch.equal(generator.get_state(), ref_generator.get_state())  # left as diffusers leaves it
    np.testing.assert_allclose(out.images[0], expected[0], atol=ATOL)
    assert np.abs(out.images[1] - expected[0]).max() > 100 * ATOL


@pytest.mark.parametrize("kind", list(KINDS))
def test_save_load_round_trip(pipes, kind, tmp_path):
    from safetensors import safe_open

    pipe = pipes[kind]
    kw = dict(thetas=[0.0, 1.0], alphas=[0.0], **RENDER)
    before = pipe(_emb(9), _emb(10), generator=_gen(4), **kw)
    pipe.save_pretrained(tmp_path / "saved")
    assert (tmp_path / "saved" / STATISTICS_FILE).is_file()
    (weights,) = (tmp_path / "saved" / "unet").glob("*.safetensors")
    with safe_open(str(weights), "pt") as f:  # the UNet is saved without the adapter
        assert not [k for k in f.keys() if "encoder_hid_proj" in k or "_ip" in k]
    loaded = VSlerpPipeline.from_pretrained(tmp_path / "saved", device=None)  # stats from the folder
    loaded.set_progress_bar_config(disable=True)
    assert type(loaded) is type(pipe) and loaded.describe()["ip_adapter"] == pipe.describe()["ip_adapter"]
    again = loaded(_emb(9), _emb(10), generator=_gen(4), **kw)
    np.testing.assert_allclose(again.images, before.images, atol=1e-6)
    after = pipe(_emb(9), _emb(10), generator=_gen(4), **kw)  # saving left the adapter in place
    np.testing.assert_allclose(after.images, before.images, atol=1e-6)


def test_callback_latents_and_output_types(pipes, refs):
    pipe, ref = pipes["sd15"], refs["sd15"]
    seen = []

    def callback(p, step, timestep, tensors):
        seen.append((p is pipe, tuple(tensors["latents"].shape)))
        return {}

    latents = torch.randn(1, 4, SIZE // pipe.vae_scale_factor, SIZE // pipe.vae_scale_factor, generator=_gen(6))
    out = pipe(_emb(11), _emb(12), thetas=[0.0, 1.0], alphas=[0.0], latents=latents, generator=_gen(0),
               callback_on_step_end=callback, **RENDER)
    assert seen == [(True, (2, 4, *latents.shape[2:]))] * 2  # 2 steps of a batch of 2 cells
    expected = ref(prompt="", ip_adapter_image_embeds=_embeds(_emb(11)), latents=latents, generator=_gen(0),
                   **RENDER).images
    np.testing.assert_allclose(out.images[0], expected[0], atol=ATOL)
    pt = pipe(_emb(11), _emb(12), thetas=[0.0], alphas=[0.0], latents=latents, generator=_gen(0),
              **{**RENDER, "output_type": "pt"}).images
    assert pt.shape == (1, 3, SIZE, SIZE) and pt.min() >= -1
    np.testing.assert_allclose(pt[0].permute(1, 2, 0).numpy(), out.images[0] * 2 - 1, atol=ATOL)


def test_errors_before_denoising(pipes, models, tmp_path):
    pipe = pipes["sd15"]
    base, _ = models["sd15"]
    plus = make_tiny_ip_adapter(tmp_path, base, "models", "ip-adapter-plus_sd15.safetensors", plus=True)
    with pytest.raises(ValueError, match="plus .*vSLERP edits the projected CLIP image embedding"):
        VSlerpPipeline.from_pretrained(base, ip_adapter=plus, ip_adapter_subfolder="models",
                                       ip_adapter_weight_name="ip-adapter-plus_sd15.safetensors", stats=_emb(0),
                                       device=None)
    with pytest.raises(ValueError, match="give ip_adapter="):
        VSlerpPipeline.from_pretrained(base, stats=_emb(0), device=None)
    with pytest.raises(ValueError, match="needs stats="):
        VSlerpPipeline.from_pretrained(base, ip_adapter=f"{models['sd15'][1]}:models/ip-adapter_sd15.safetensors",
                                       device=None)
    with pytest.raises(ValueError, match="dim") as err:
        VSlerpPipeline.from_pretrained(base, ip_adapter=models["sd15"][1], ip_adapter_subfolder="models",
                                       ip_adapter_weight_name="ip-adapter_sd15.safetensors",
                                       stats=torch.randn(TINY_DIM + 3), device=None)
    redo = f"vslerp stats compute --model {base} --ip-adapter {models['sd15'][1]}:models/ip-adapter_sd15.safetensors"
    assert redo in str(err.value)  # the command that computes matching statistics

    def denoiser_never_runs(*args, **kwargs):
        raise AssertionError("denoising started")

    hook = pipe.unet.register_forward_pre_hook(denoiser_never_runs)
    try:
        for kwargs, match in (({"strength": 1.5}, "strength must be a number in"),
                              ({"noise_level": 3}, "noise_level is not supported by the ip-adapter-sd backend"),
                              ({"latents": torch.zeros(1, 4, 5, 5)}, r"latents must have shape \(1, 4, 32, 32\)"),
                              ({"height": 60}, "height"),
                              ({"ip_adapter_scale": -1.0}, "ip_adapter_scale must be")):
            with pytest.raises(ValueError, match=match):
                pipe(_emb(1), _emb(2), thetas=[0.5], alphas=[0.0], **{**RENDER, **kwargs})
        with pytest.raises(ValueError, match="takes no prompt as target"):
            pipe(_emb(1), "a red bicycle", thetas=[0.5], alphas=[0.0], **RENDER)
        with pytest.raises(ValueError, match="no prior"):
            pipe.prompt_to_image_embedding(["a red bicycle"])
    finally:
        hook.remove()


def test_adapter_named_in_one_string(pipes, models):
    from vslerp.pipelines.ip_adapter_files import split_adapter_id

    assert split_adapter_id("h94/IP-Adapter:models/ip-adapter_sd15.safetensors") == (
        "h94/IP-Adapter", "models", "ip-adapter_sd15.safetensors")
    assert split_adapter_id("h94/IP-Adapter", "models", None) == ("h94/IP-Adapter", "models", None)
    with pytest.raises(ValueError, match="names its weight file already"):
        split_adapter_id("h94/IP-Adapter:models/ip-adapter_sd15.safetensors", "models")
    base, adapter = models["sd15"]
    pipe = VSlerpPipeline.from_pretrained(base, ip_adapter=f"{adapter}:models/ip-adapter_sd15.safetensors",
                                          stats=_emb(0), device=None)  # as describe() names it
    assert pipe.describe()["ip_adapter"] == pipes["sd15"].describe()["ip_adapter"]
    with pytest.raises(ValueError, match="no CLIP text encoder"):
        pipe.encode_text("a cat")


def test_sdxl_vit_h_adapter_reads_the_vit_h_encoder(models, tmp_path):
    """h94's sdxl_models/ip-adapter_sdxl_vit-h takes models/image_encoder (ViT-H), not sdxl_models'."""
    base, _ = models["sdxl"]
    weight = "ip-adapter_sdxl_vit-h.safetensors"
    adapter = make_tiny_ip_adapter(tmp_path, base, "sdxl_models", weight, seed=1)
    (adapter / "models").mkdir()
    (adapter / "sdxl_models" / "image_encoder").rename(adapter / "models" / "image_encoder")
    pipe = VSlerpPipeline.from_pretrained(base, ip_adapter=f"{adapter}:sdxl_models/{weight}", stats=_emb(0),
                                          device=None)
    assert type(pipe) is VSlerpIPAdapterXLPipeline and pipe._dim() == TINY_DIM


def test_image_encoder_given_by_repo_or_folder(pipes, models, tmp_path):
    """ip_adapter_image_encoder= (a folder elsewhere) is the encoder the adapter reads: the same
    pixels as the adapter's own SUBFOLDER/image_encoder, and a missing one names the option."""
    import shutil

    base, adapter = models["sd15"]
    encoder = tmp_path / "encoder"
    shutil.copytree(adapter / "models" / "image_encoder", encoder)
    pipe = VSlerpPipeline.from_pretrained(base, ip_adapter=f"{adapter}:models/ip-adapter_sd15.safetensors",
                                          ip_adapter_image_encoder=encoder, stats=_emb(0), device=None)
    pipe.set_progress_bar_config(disable=True)
    kw = dict(thetas=[0.0], alphas=[0.0], **RENDER)
    np.testing.assert_allclose(pipe(_photo(3), _emb(4), generator=_gen(1), **kw).images,
                               pipes["sd15"](_photo(3), _emb(4), generator=_gen(1), **kw).images, atol=ATOL)
    with pytest.raises(ValueError, match="cannot load the IP-Adapter.s image encoder"):
        VSlerpPipeline.from_pretrained(base, ip_adapter=f"{adapter}:models/ip-adapter_sd15.safetensors",
                                       ip_adapter_image_encoder=tmp_path / "missing", stats=_emb(0), device=None)
