"""VSlerpPipeline on a tiny random Kandinsky 2.2, checked against diffusers' own pipelines."""

from __future__ import annotations

import json

import numpy as np
import PIL.Image
import pytest
import torch
from helpers import embedding, random_image
from helpers import gen as _gen

import vslerp
from vslerp.pipelines import STATISTICS_FILE, VSlerpPipeline, VSlerpPipelineOutput
from vslerp.pipelines.testing import TINY_DIM
from vslerp.stats import Statistics

STEPS, SIZE = 2, 64
RENDER = {"num_inference_steps": STEPS, "height": SIZE, "width": SIZE, "output_type": "np"}


@pytest.fixture(scope="module")
def diffusers_pipes(tiny_kandinsky):
    from diffusers import KandinskyV22Pipeline, KandinskyV22PriorPipeline

    prior_dir, decoder_dir = tiny_kandinsky
    prior = KandinskyV22PriorPipeline.from_pretrained(prior_dir)
    decoder = KandinskyV22Pipeline.from_pretrained(decoder_dir)
    for p in (prior, decoder):
        p.set_progress_bar_config(disable=True)
    return prior, decoder


def _image(seed: int) -> PIL.Image.Image:
    return random_image(seed, 40, 48)


def _diffusers_render(decoder, image_embeds, negative, seed, scheduler=None):
    old = decoder.scheduler
    decoder.scheduler = scheduler or old
    try:
        return decoder(image_embeds=image_embeds, negative_image_embeds=negative, generator=_gen(seed),
                       **RENDER).images  # (N, H, W, 3)
    finally:
        decoder.scheduler = old


def _emb(seed: int) -> torch.Tensor:
    return embedding(1000 + seed)  # (D,) raw


@pytest.mark.parametrize("scheduler_name", ["DDIMScheduler", "DDPMScheduler"])
def test_theta_zero_equals_diffusers_render_of_source(pipe, diffusers_pipes, scheduler_name):
    """θ=0 cells = KandinskyV22Pipeline(source image_embeds, zero-image negative), same seed."""
    import diffusers

    prior, decoder = diffusers_pipes
    scheduler = getattr(diffusers, scheduler_name).from_config(pipe.scheduler.config)
    old = pipe.scheduler
    pipe.scheduler = scheduler
    try:
        source, target = _image(1), _image(2)
        # The source embedding as diffusers' prior pipeline computes it (image_processor + encoder).
        pixels = prior.image_processor(source, return_tensors="pt").pixel_values
        source_embeds = prior.image_encoder(pixels)["image_embeds"]  # (1, D)
        negative = prior.get_zero_embed(1)  # (1, D): the all-zeros image
        ref = _diffusers_render(decoder, source_embeds, negative, seed=7,
                                scheduler=getattr(diffusers, scheduler_name).from_config(pipe.scheduler.config))
        out = pipe(source, target, thetas=[0.0, 0.5], alphas=[-1.0, 0.0, 2.0], generator=_gen(7), **RENDER)
    finally:
        pipe.scheduler = old
    assert out.images.shape == (6, SIZE, SIZE, 3)
    torch.testing.assert_close(out.embeddings[0], source_embeds.expand(3, -1), rtol=1e-5, atol=1e-5)
    for k in range(3):  # the θ=0 row
        np.testing.assert_allclose(out.images[k], ref[0], atol=2e-4)
    assert np.abs(out.images[3] - ref[0]).max() > 1e-3  # θ=0.5 differs


def test_alpha_zero_equals_render_of_true_slerp(pipe, diffusers_pipes):
    _, decoder = diffusers_pipes
    source, target = _emb(1), _emb(2)
    out = pipe(source, target, thetas=[0.3, 0.8], alphas=[0.0, 1.5], generator=_gen(3), **RENDER)
    slerped = vslerp.slerp(source[None], target[None], torch.tensor([0.3, 0.8]))  # (2, D)
    torch.testing.assert_close(out.embeddings[:, 0], slerped, rtol=1e-5, atol=1e-5)
    ref = _diffusers_render(decoder, slerped, pipe.zero_image_embedding().expand(2, -1), seed=3)
    # diffusers draws batch-2 noise; ours shares one image's noise, so compare cell by cell.
    for row in range(2):
        one = _diffusers_render(decoder, slerped[row : row + 1], pipe.zero_image_embedding(), seed=3)
        np.testing.assert_allclose(out.images[row * 2], one[0], atol=2e-4)
    assert ref.shape[0] == 2
    expected = vslerp.vslerp(source, target, 0.3, 1.5, pipe.image_mean)
    torch.testing.assert_close(out.embeddings[0, 1], expected, rtol=1e-5, atol=1e-5)


def test_batching_gives_the_same_images_as_one_cell_at_a_time(pipe):
    source, target = _emb(3), _emb(4)
    calls = []
    kw = dict(thetas=[0.25, 0.5, 0.75], alphas=[0.0, 1.0], **RENDER)  # six distinct cells
    batched = pipe(source, target, generator=_gen(5), max_batch_size=4,
                   callback_on_step_end=lambda p, i, t, kw_: calls.append(i) or {}, **kw)
    single = pipe(source, target, generator=_gen(5), max_batch_size=1, **kw)
    assert len(calls) == 2 * STEPS  # 6 cells in chunks of 4 → 2 chunks, decoded per chunk
    np.testing.assert_allclose(batched.images, single.images, atol=2e-4)
    assert np.abs(batched.images[0] - batched.images[-1]).max() > 1e-3


def test_equal_cells_are_rendered_once_and_mapped_back(pipe):
    """θ=0 and θ=1 rows hold one embedding each (Eq. 12): 9 cells, 5 distinct renders, and every
    cell's image is the single render of its own embedding."""
    source, target = _emb(5), _emb(6)
    batches = []

    def count(p, i, t, kwargs):
        batches.append(kwargs["latents"].shape[0])
        return {}

    out = pipe(source, target, thetas=[0.0, 0.5, 1.0], alphas=[-1.0, 0.0, 1.0], generator=_gen(2),
               max_batch_size=25, callback_on_step_end=count, **RENDER)
    assert batches == [5] * STEPS  # 1 + 3 + 1 distinct cells
    flat = out.embeddings.reshape(9, -1)
    for k in range(9):
        one = pipe(flat[k], flat[k], thetas=[0.0], alphas=[0.0], generator=_gen(2), **RENDER)
        np.testing.assert_allclose(out.images[k], one.images[0], atol=2e-4)
    assert np.abs(out.images[3] - out.images[5]).max() > 1e-3  # θ=0.5, α=−1 vs α=1 differ
    pils = pipe(source, target, thetas=[0.0], alphas=[0.0, 2.0], generator=_gen(2), **{**RENDER, "output_type": "pil"})
    assert pils.images[0] is not pils.images[1]  # a repeated cell is its own image object
    assert np.array_equal(np.asarray(pils.images[0]), np.asarray(pils.images[1]))
    pts = pipe(source, target, thetas=[1.0, 0.5], alphas=[0.0, 2.0], generator=_gen(2), **{**RENDER, "output_type": "pt"})
    assert pts.images.shape == (4, 3, SIZE, SIZE)
    torch.testing.assert_close(pts.images[0], pts.images[1])
    assert (pts.images[2] - pts.images[3]).abs().max() > 1e-3


def _pointwise_decode(z: torch.Tensor) -> torch.Tensor:
    """A decoder with no spatial context: tiles decode exactly as the whole does."""
    return (z[:, :3] * 2 + 1).repeat_interleave(4, dim=-1).repeat_interleave(4, dim=-2)


@pytest.mark.parametrize(("tile", "overlap"), [(16, 0.25), (16, 0.0), (8, 0.5), (3, 0.9), (40, 0.25)])
def test_tiled_decode_stitches_tiles_exactly(tile, overlap):
    from vslerp.pipelines.tiling import tiled_decode

    latents = torch.randn(2, 4, 37, 50, generator=_gen(0))  # not a multiple of any tile
    out = tiled_decode(_pointwise_decode, latents, 4, tile=tile, overlap=overlap)
    torch.testing.assert_close(out, _pointwise_decode(latents), rtol=1e-5, atol=1e-5)


def test_movq_tiling_in_the_pipeline(pipe):
    from vslerp.pipelines.tiling import tiled_decode

    def movq(z):
        return pipe.movq.decode(z, force_not_quantize=True)["sample"]

    latents = torch.randn(1, 4, 48, 48, generator=_gen(1))
    with torch.no_grad():
        full = movq(latents)
        assert torch.equal(tiled_decode(movq, latents, pipe.movq_scale_factor, tile=48), full)  # one tile
        errors = [float((tiled_decode(movq, latents, pipe.movq_scale_factor, tile=t) - full).norm() / full.norm())
                  for t in (16, 32)]
    assert errors[1] < errors[0] < 0.3  # only near the seams: less with fewer seams
    source, target = _emb(7), _emb(8)
    # 96 px: 48×48 latents in 2×2 overlapping tiles of 32 (a seam in each direction)
    kw = dict(thetas=[0.5], alphas=[1.0, 2.0], **{**RENDER, "height": 96, "width": 96})
    plain = pipe(source, target, generator=_gen(4), **kw).images
    latents = pipe(source, target, generator=_gen(4), **{**kw, "output_type": "latent"}).images  # (2, 4, 48, 48)
    pipe.enable_movq_tiling(tile_size=32, overlap=0.25)
    try:
        tiled = pipe(source, target, generator=_gen(4), **kw).images
        pipe.enable_movq_slicing()
        sliced = pipe(source, target, generator=_gen(4), **kw).images
    finally:
        pipe.disable_movq_tiling()
        pipe.disable_movq_slicing()
    assert tiled.shape == plain.shape == (2, 96, 96, 3) and latents.shape[-1] == 48 > 32
    with torch.no_grad():
        expected = tiled_decode(movq, latents, pipe.movq_scale_factor, tile=32, overlap=0.25)
    expected = (expected * 0.5 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(tiled, expected, atol=1e-4)
    np.testing.assert_allclose(sliced, tiled, atol=1e-4)
    assert np.abs(tiled - plain).max() > 1e-3  # tiling was used
    for bad in ({"tile_size": 1}, {"tile_size": 2.5}, {"overlap": 1.0}, {"overlap": -0.1}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            pipe.enable_movq_tiling(**bad)


def test_compile_unet_keeps_the_images(tiny_kandinsky):
    """compile_unet passes its kwargs to torch.compile and the compiled UNet renders the same cells."""
    prior_dir, decoder_dir = tiny_kandinsky
    fresh = VSlerpPipeline.from_pretrained(decoder_dir, prior=prior_dir, device=None)
    fresh.set_progress_bar_config(disable=True)
    kw = dict(thetas=[0.5], alphas=[0.0, 1.0], **RENDER)
    eager = fresh(_emb(1), _emb(2), generator=_gen(3), **kw).images
    fresh.compile_unet(backend="aot_eager", dynamic=False)  # dynamo traces the UNet; no C++ build
    assert fresh.unet._compiled_call_impl is not None
    compiled = fresh(_emb(1), _emb(2), generator=_gen(3), **kw).images
    np.testing.assert_allclose(compiled, eager, atol=1e-4)


def test_shared_noise_and_explicit_latents(pipe):
    """Every cell starts from the one-image latents the generator draws; `latents` overrides."""
    source, target = _emb(3), _emb(4)
    seen = []

    def grab(p, i, t, kwargs):
        seen.append(kwargs["latents"].clone())
        return {}

    out_a = pipe(source, target, thetas=[0.0, 1.0], alphas=[0.0], generator=_gen(11), **RENDER)
    from diffusers.utils.torch_utils import randn_tensor

    lat = randn_tensor((1, 4, SIZE // 2, SIZE // 2), generator=_gen(11), dtype=torch.float32)
    out_b = pipe(source, target, thetas=[0.0, 1.0], alphas=[0.0], latents=lat, callback_on_step_end=grab,
                 generator=_gen(99), **RENDER)
    np.testing.assert_allclose(out_a.images, out_b.images, atol=1e-6)
    assert len(seen) == STEPS and seen[0].shape == (2, 4, SIZE // 2, SIZE // 2)


def test_prompt_target_goes_through_the_prior(pipe):
    source = torch.randn(TINY_DIM)
    out = pipe(source, "a red bicycle", thetas=[1.0], alphas=[0.0], generator=_gen(4), **RENDER)
    expected = pipe.prompt_to_image_embedding(["a red bicycle"], generator=_gen(4))  # (1, D)
    torch.testing.assert_close(out.embeddings[0, 0], expected[0])
    assert pipe.encode_text(["a red bicycle", "x"]).shape == (2, TINY_DIM)


def test_output_dataclass_conformity_and_describe(pipe):
    out = pipe(torch.randn(TINY_DIM), torch.randn(TINY_DIM), thetas=[0.0, 1.0], alphas=[0.0, 1.0, 2.0],
               generator=_gen(0), num_inference_steps=1, height=32, width=32)
    assert isinstance(out, VSlerpPipelineOutput)
    assert len(out.images) == 6 and isinstance(out.images[0], PIL.Image.Image)
    assert out.images[0].size == (32, 32)
    assert out.embeddings.shape == (2, 3, TINY_DIM) and out.thetas == [0.0, 1.0] and out.alphas == [0.0, 1.0, 2.0]
    expected = vslerp.cosine_to_mean(out.embeddings.reshape(6, -1), pipe.image_mean).reshape(2, 3)
    torch.testing.assert_close(out.conformity, expected)
    info = pipe.describe()
    json.dumps(info)
    assert info["dim"] == TINY_DIM and info["mean_source"] == "prior_clip_mean"
    assert info["conformity"] == "cosine_to_mean"
    torch.testing.assert_close(pipe.image_mean, pipe.prior.clip_mean.reshape(-1).float())


def test_dataset_statistics_give_exact_conformity(pipe):
    """With count and Σû, estimated_conformity is the exact Eq. 10 value for the members."""
    members = torch.randn(50, TINY_DIM) + 2.0
    acc = vslerp.MomentAccumulator(TINY_DIM)
    acc.update(members)
    old = pipe.statistics
    try:
        pipe.set_statistics(Statistics.from_accumulators(acc, None))
        torch.testing.assert_close(pipe.estimated_conformity(members), vslerp.conformity(members).float(),
                                   rtol=1e-4, atol=1e-5)
        assert pipe.describe()["conformity"] == "exact_identity"
    finally:
        pipe.set_statistics(old)


def test_save_pretrained_round_trip_keeps_statistics(pipe, tmp_path):
    mean = torch.randn(TINY_DIM)
    old = pipe.statistics
    try:
        pipe.set_statistics(mean)
        pipe.save_pretrained(tmp_path / "saved")
        kw = dict(thetas=[0.5], alphas=[1.0], generator=_gen(2), **RENDER)
        source, target = _emb(3), _emb(4)
        before = pipe(source, target, **kw)
    finally:
        pipe.set_statistics(old)
    assert (tmp_path / "saved" / STATISTICS_FILE).is_file()
    loaded = VSlerpPipeline.from_pretrained(tmp_path / "saved", device=None)  # no prior= needed
    loaded.set_progress_bar_config(disable=True)
    torch.testing.assert_close(loaded.image_mean, mean)
    assert loaded.describe()["mean_source"] == "tensor"
    after = loaded(source, target, **{**kw, "generator": _gen(2)})
    np.testing.assert_allclose(after.images, before.images, atol=1e-6)


def test_mean_as_tensor_and_as_stats_file(tiny_kandinsky, tmp_path):
    prior_dir, decoder_dir = tiny_kandinsky
    mean = torch.randn(TINY_DIM)
    path = Statistics.from_mean(mean).save(tmp_path / "m.safetensors")
    for stats in (mean, path, str(path)):
        p = VSlerpPipeline.from_pretrained(decoder_dir, prior=prior_dir, stats=stats, device=None)
        torch.testing.assert_close(p.image_mean, mean)


@pytest.fixture()
def unet_calls(pipe):
    calls = []
    handle = pipe.unet.register_forward_hook(lambda *a: calls.append(1))
    yield calls
    handle.remove()


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"thetas": []}, ValueError, "thetas is empty"),
        ({"alphas": [0.0, float("nan")]}, ValueError, "alphas must be finite"),
        ({"thetas": [0.0, 1.5]}, ValueError, "allow_extrapolation"),
        ({"target": 3}, TypeError, "target must be"),
        ({"target": "missing.png"}, ValueError, "target image not found"),
        ({"source": "a prompt is no source"}, ValueError, "source image not found"),
        ({"source": torch.randn(TINY_DIM + 1)}, ValueError, "source embedding must have shape"),
        ({"max_batch_size": 0}, ValueError, "max_batch_size"),
        ({"output_type": "jpeg"}, ValueError, "output_type"),
        ({"generator": [torch.Generator()]}, TypeError, "one torch.Generator"),
    ],
)
def test_bad_input_fails_before_denoising(pipe, unet_calls, kwargs, error, match):
    call = {"source": torch.randn(TINY_DIM), "target": torch.randn(TINY_DIM), "thetas": [0.0], "alphas": [0.0],
            **RENDER, **kwargs}
    with pytest.raises(error, match=match):
        pipe(**call)
    assert unet_calls == []


def test_unreadable_image_and_extrapolation(pipe, unet_calls, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    with pytest.raises(ValueError, match="cannot be read"):
        pipe(broken, torch.randn(TINY_DIM), thetas=[0.0], alphas=[0.0], **RENDER)
    assert unet_calls == []
    out = pipe(torch.randn(TINY_DIM), torch.randn(TINY_DIM), thetas=[1.5], alphas=[0.0], allow_extrapolation=True,
               output_type="latent", num_inference_steps=1, height=32, width=32)
    assert out.images.shape == (1, 4, 16, 16)  # tiny movq: 32 px → 16² latents


def test_statistics_of_another_space_are_rejected(pipe, tiny_kandinsky):
    prior_dir, decoder_dir = tiny_kandinsky
    with pytest.raises(ValueError, match="dim"):
        pipe.set_statistics(torch.randn(TINY_DIM * 2))
    other = Statistics.from_mean(torch.randn(TINY_DIM))
    other.metadata["encoder_fingerprint"] = "0" * 64
    with pytest.raises(ValueError, match="image encoder"):
        VSlerpPipeline.from_pretrained(decoder_dir, prior=prior_dir, stats=other, device=None)
    with pytest.raises(TypeError, match="stats must be"):
        pipe.set_statistics(3.0)


def test_statistics_per_call_leave_the_pipeline_unchanged(pipe):
    """pipe(..., statistics=m) renders what a pipeline set to m renders, and keeps its own m."""
    own = pipe.statistics
    other = _emb(40)  # (D,) another image mean
    kwargs = dict(thetas=[0.5], alphas=[2.0], generator=_gen(3), **RENDER)
    per_call = pipe(_emb(41), _emb(42), statistics=other, **kwargs)
    assert pipe.statistics is own
    assert not torch.equal(per_call.embeddings, pipe(_emb(41), _emb(42), **{**kwargs, "generator": _gen(3)}).embeddings)
    pipe.set_statistics(other)
    try:
        set_once = pipe(_emb(41), _emb(42), **{**kwargs, "generator": _gen(3)})
    finally:
        pipe.set_statistics(own)
    assert torch.equal(per_call.embeddings, set_once.embeddings)
    np.testing.assert_array_equal(per_call.images, set_once.images)
    assert torch.equal(per_call.conformity, set_once.conformity)
    assert torch.equal(pipe.estimated_conformity(per_call.embeddings[0], statistics=other),
                       set_once.conformity[0])
    with pytest.raises(ValueError, match="dim"):
        pipe(_emb(41), _emb(42), statistics=torch.ones(TINY_DIM + 1), **kwargs)
    requests = [{"source": _emb(41), "target": _emb(42), "thetas": [0.5], "alphas": [2.0], "generator": _gen(3),
                 "statistics": other},
                {"source": _emb(41), "target": _emb(42), "thetas": [0.5], "alphas": [2.0], "generator": _gen(3)}]
    batch = pipe.render_batch(requests, num_inference_steps=STEPS, height=SIZE, width=SIZE, output_type="np")
    assert torch.equal(batch[0].embeddings, set_once.embeddings)
    assert not torch.equal(batch[1].embeddings, set_once.embeddings)
    assert pipe.statistics is own


# -- the Kandinsky adapter over diffusers' own KandinskyV22Pipeline (issue 11) ----------------
def _requests(seeds):
    return [{"source": _emb(50 + k), "target": _emb(60 + k), "thetas": [0.0, 0.5], "alphas": [1.0],
             "generator": _gen(seed)} for k, seed in enumerate(seeds)]


def test_render_batch_gives_each_request_its_own_noise_under_ddpm(pipe):
    """A stochastic scheduler draws step noise per cell from its request's generator copy: a
    batch of requests with different seeds renders what each request renders alone."""
    import diffusers

    old = pipe.scheduler
    pipe.scheduler = diffusers.DDPMScheduler.from_config(old.config)
    try:
        batch = pipe.render_batch(_requests([3, 4]), num_inference_steps=STEPS, height=SIZE, width=SIZE,
                                  output_type="np", max_batch_size=3)  # 4 cells in batches of 3
        alone = [pipe(r["source"], r["target"], thetas=r["thetas"], alphas=r["alphas"], generator=_gen(seed),
                      **RENDER) for r, seed in zip(_requests([3, 4]), [3, 4], strict=True)]
    finally:
        pipe.scheduler = old
    for got, want in zip(batch, alone, strict=True):
        np.testing.assert_allclose(got.images, want.images, atol=2e-4)
        assert torch.equal(got.embeddings, want.embeddings)
    assert np.abs(batch[0].images[0] - batch[1].images[0]).max() > 1e-3  # other seed, other noise


def test_the_call_advances_its_generator_as_diffusers_does(pipe, diffusers_pipes):
    _, decoder = diffusers_pipes
    ours, theirs = _gen(21), _gen(21)
    pipe(_emb(1), _emb(2), thetas=[0.0, 0.5], alphas=[0.0], generator=ours, **RENDER)
    decoder(image_embeds=_emb(1)[None], negative_image_embeds=pipe.zero_image_embedding(), generator=theirs,
            **RENDER)
    assert torch.equal(ours.get_state(), theirs.get_state())
    assert not torch.equal(ours.get_state(), _gen(21).get_state())


def test_callback_gets_this_pipeline_and_one_progress_bar_counts_every_step(pipe):
    import io

    seen, bar = [], io.StringIO()

    def callback(p, step, timestep, tensors):
        seen.append((p, step, p.num_timesteps, sorted(tensors)))
        return {}

    pipe.set_progress_bar_config(disable=False, file=bar, ascii=True)
    try:
        pipe(_emb(3), _emb(4), thetas=[0.25, 0.5, 0.75], alphas=[0.0], generator=_gen(1), max_batch_size=2,
             callback_on_step_end=callback, callback_on_step_end_tensor_inputs=["latents", "image_embeds"],
             **RENDER)
    finally:
        pipe.set_progress_bar_config(disable=True)
    assert [(p is pipe, step, n, names) for p, step, n, names in seen] == \
        [(True, k % STEPS, STEPS, ["image_embeds", "latents"]) for k in range(2 * STEPS)]
    assert f"{2 * STEPS}/{2 * STEPS}" in bar.getvalue()  # 2 batches × STEPS on one bar


def test_model_cpu_offload_keeps_the_images(tiny_kandinsky):
    """diffusers' own enable_model_cpu_offload() on a pipeline already moved to its device: the
    hooks' device is where cells render, and images equal those without offload."""
    prior_dir, decoder_dir = tiny_kandinsky
    fresh = VSlerpPipeline.from_pretrained(decoder_dir, prior=prior_dir, device="cpu")  # moved on load
    fresh.set_progress_bar_config(disable=True)
    kw = dict(thetas=[0.0, 0.5], alphas=[0.0, 1.0], **RENDER)
    plain = fresh(_image(1), "a red bicycle", generator=_gen(6), **kw)
    plain_batch = fresh.render_batch(_requests([7]), num_inference_steps=STEPS, height=SIZE, width=SIZE,
                                     output_type="np")
    assert fresh.execution_device() == torch.device("cpu")
    fresh.enable_model_cpu_offload(device="cpu")  # on a GPU machine: enable_model_cpu_offload()
    offloaded_device = torch.device("cpu", 0)  # the hooks' execution device
    assert fresh.execution_device() == offloaded_device
    offloaded = fresh(_image(1), "a red bicycle", generator=_gen(6), **kw)
    assert fresh.execution_device() == offloaded_device  # the hooks are installed again after the call
    batch = fresh.render_batch(_requests([7]), num_inference_steps=STEPS, height=SIZE, width=SIZE,
                               output_type="np")
    np.testing.assert_allclose(offloaded.images, plain.images, atol=2e-4)
    torch.testing.assert_close(offloaded.embeddings, plain.embeddings)
    np.testing.assert_allclose(batch[0].images, plain_batch[0].images, atol=2e-4)
    assert fresh.describe()["device"] == str(offloaded_device)


def test_the_pipeline_encodes_with_the_stats_encoders(pipe, tiny_kandinsky):
    """One CLIP encoding: the pipeline's encode_image / encode_text are vslerp.stats' ClipEncoders."""
    from vslerp.stats import load_encoders

    encoders = load_encoders(tiny_kandinsky[0], device="cpu")
    images = [_image(3), _image(4)]
    assert torch.equal(pipe.encode_image(images), encoders.encode_images(images))
    assert torch.equal(pipe.encode_text(["a cat", "a dog"]), encoders.encode_texts(["a cat", "a dog"]))
    assert pipe.clip_encoders().image_encoder is pipe.image_encoder  # used in place, not copied


def test_backend_dispatch_reads_model_index(tiny_kandinsky, tmp_path):
    from vslerp.pipelines.loading import backend_of, read_model_index

    prior_dir, decoder_dir = tiny_kandinsky
    assert read_model_index(decoder_dir)["_class_name"] == "KandinskyV22Pipeline"
    assert backend_of(decoder_dir) == "kandinsky2.2"
    assert backend_of(prior_dir) is None  # a prior is no decoder of any backend
    assert read_model_index(tmp_path) is None and backend_of(tmp_path) is None  # no model_index.json
    assert backend_of("kakaobrain/karlo-v1-alpha-image-variations") == "unclip"  # not cached: by name
    (tmp_path / "model_index.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match="model_index.json"):
        read_model_index(tmp_path)
    with pytest.raises(ValueError, match="backend must be"):
        VSlerpPipeline.from_pretrained(decoder_dir, prior=prior_dir, backend="sdxl", device=None)
