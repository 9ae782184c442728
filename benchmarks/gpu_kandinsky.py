"""The GPU suite's Kandinsky 2.2 rows: one cell vs diffusers, the Fig.-12 grid per batch size,
seconds per image vs the floor, 768², MoVQ decode whole vs tiled, SDPA vs ``torch.compile``.

Every render goes through the paths users run: ``VSlerpPipeline(...)`` built from components
(as ``from_pretrained`` builds it) and called as ``pipe(source, target, thetas, alphas, ...)``;
the reference is diffusers' ``KandinskyV22Pipeline`` on the same unet, scheduler and movq.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch
from gpu_models import build

__all__ = ["Kandinsky", "build_kandinsky", "reference_render", "compile_rows", "grid_rows", "movq_rows", "one_cell_rows"]

THETAS = [i / 4 for i in range(5)]  # Fig. 12: θ = 0 .. 1 × α = −2 .. 2, 17 distinct cells (Eq. 12)
ALPHAS = [a - 2.0 for a in range(5)]
GRID_NAMES = ["Fig.-12 grid", "seconds per image at the best batch"]


@dataclass
class Kandinsky:
    pipe: object  # VSlerpPipeline
    ref: object  # diffusers' KandinskyV22Pipeline on the same unet, scheduler, movq
    source: torch.Tensor  # (D,) raw
    target: torch.Tensor  # (D,) raw
    negative: torch.Tensor  # (1, D): the all-zeros image's embedding, the pipeline's negative
    best_batch: int | None = None


def build_kandinsky(cfgs: dict, device, dtype, root: Path) -> Kandinsky:
    """Every Kandinsky 2.2 component on ``device`` (random weights), as a VSlerpPipeline."""
    from diffusers import DDPMScheduler, KandinskyV22Pipeline, UnCLIPScheduler

    from vslerp.pipelines import VSlerpPipeline
    from vslerp.pipelines.testing import make_tiny_clip_tokenizer
    from vslerp.stats.encode import clip_image_processor_class

    tokenizer = make_tiny_clip_tokenizer(root / "tokenizer")  # no vocab file reaches the GPU machine
    image_encoder = build(cfgs["kandinsky/image_encoder"], device, dtype)
    side = image_encoder.config.image_size
    processor = clip_image_processor_class()(
        crop_size=side, size=side, do_center_crop=True, do_normalize=True, do_resize=True, resample=3,
        image_mean=[0.48145466, 0.4578275, 0.40821073], image_std=[0.26862954, 0.26130258, 0.27577711])
    pipe = VSlerpPipeline(
        prior=build(cfgs["kandinsky/prior"], device, dtype), image_encoder=image_encoder,
        text_encoder=build(cfgs["kandinsky/text_encoder"], device, dtype, tokenizer), tokenizer=tokenizer,
        image_processor=processor,
        prior_scheduler=UnCLIPScheduler(variance_type="fixed_small_log", prediction_type="sample",
                                        num_train_timesteps=1000, clip_sample=True, clip_sample_range=10.0),
        unet=build(cfgs["kandinsky/unet"], device, dtype), movq=build(cfgs["kandinsky/movq"], device, dtype),
        scheduler=DDPMScheduler(beta_schedule="linear", beta_start=0.00085, beta_end=0.012, clip_sample=False))
    pipe.set_progress_bar_config(disable=True)
    ref = KandinskyV22Pipeline(unet=pipe.unet, scheduler=pipe.scheduler, movq=pipe.movq)
    ref.set_progress_bar_config(disable=True)
    gen = torch.Generator().manual_seed(0)
    dim = image_encoder.config.projection_dim
    source, target = torch.randn(2, dim, generator=gen) * 0.6  # raw-embedding-like norms
    return Kandinsky(pipe, ref, source, target, pipe.zero_image_embedding())


def _gen():
    return torch.Generator().manual_seed(0)


def _cell(k: Kandinsky, steps: int, size: int, output_type: str = "np", pipe=None):
    """One θ = 0 cell through VSlerpPipeline (diffusers' render of the source embedding)."""
    return (pipe or k.pipe)(k.source, k.target, thetas=[0.0], alphas=[0.0], num_inference_steps=steps,
                            height=size, width=size, generator=_gen(), output_type=output_type)


def reference_render(k: Kandinsky, embedding, steps: int, size: int, output_type: str = "np"):
    return k.ref(image_embeds=embedding[None], negative_image_embeds=k.negative, num_inference_steps=steps,
                 height=size, width=size, generator=_gen(), output_type=output_type)


def one_cell_rows(suite, plan, k: Kandinsky) -> None:
    steps, size = plan.k_steps, plan.k_size
    t_ref, t_one = suite.paired(lambda: reference_render(k, k.source, steps, size), lambda: _cell(k, steps, size))
    suite.add("one cell vs KandinskyV22Pipeline", t_one / t_ref, "×", "<= 1.02",
              floor_s=suite.floor("k-unet", steps), seconds=t_one,
              note=f"{size}², {steps} steps, guidance 4, decoded to images; median of {suite.repeats}, alternating",
              vslerp_s=t_one, diffusers_s=t_ref)


def _grid(k: Kandinsky, steps: int, size: int, batch: int):
    return k.pipe(k.source, k.target, thetas=THETAS, alphas=ALPHAS, num_inference_steps=steps, height=size,
                  width=size, max_batch_size=batch, generator=_gen(), output_type="np")


def grid_names(plan) -> list[str]:
    return GRID_NAMES[:1] + [f"Fig.-12 grid, max_batch_size={b}" for b in plan.batches] + GRID_NAMES[1:]


def grid_rows(suite, plan, k: Kandinsky) -> None:
    """Fig.-12 grid at each max_batch_size vs 25 single calls; seconds per image at the best batch."""
    steps, size = plan.grid_steps, plan.k_size
    cells = _grid(k, 1, size, max(plan.batches)).embeddings.reshape(25, -1)  # warm-up at 1 step: (25, D)
    distinct = int(torch.unique(cells, dim=0).shape[0])
    t_25 = suite.timed(lambda: [reference_render(k, row, steps, size) for row in cells])
    per_batch = {}
    for batch in plan.batches:
        with suite.peak() as mem:
            seconds = suite.timed(lambda b=batch: _grid(k, steps, size, b))
        per_batch[batch] = seconds
        suite.add(f"Fig.-12 grid, max_batch_size={batch}", 25 / seconds, "images/s", None,
                  floor_s=suite.floor("k-unet", steps * distinct), seconds=seconds,
                  note=f"{size}², {steps} steps, 25 images ({distinct} distinct cells rendered); one timed call",
                  seconds_per_grid=seconds, **mem)
    k.best_batch = min(per_batch, key=per_batch.get)
    best = per_batch[k.best_batch]
    suite.add("Fig.-12 grid", best / t_25, "×", "<= 0.35", note=(
        f"best max_batch_size={k.best_batch}: {best:.3f} s vs 25 single KandinskyV22Pipeline calls {t_25:.3f} s "
        f"({size}², {steps} steps)"), grid_s=best, calls_25_s=t_25, best_batch=k.best_batch)
    per_image = best / distinct
    suite.add("seconds per image at the best batch", per_image, "s", "<= 0.16 s at 50 steps (<= 1.5x the floor)",
              floor_s=suite.floor("k-unet", steps), seconds=per_image,
              note=f"grid seconds / {distinct} rendered cells at max_batch_size={k.best_batch}, {steps} steps; "
                   f"at 50 steps about {per_image * 50 / steps:.3f} s (scaled linearly, decode included)",
              steps=steps)


def big_rows(suite, plan, k: Kandinsky) -> None:
    size, steps, batch = plan.k_big, plan.grid_steps, k.best_batch or max(plan.batches)
    _grid(k, 1, size, batch)  # warm-up at this size, 1 step
    with suite.peak() as mem:
        seconds = suite.timed(lambda: _grid(k, steps, size, batch))
    per_image = seconds / 17
    suite.add(f"{size}² at the best batch", per_image, "s per image", None,
              floor_s=suite.floor("k-unet-big", steps), seconds=per_image,
              note=f"{size}², Fig.-12 grid (17 cells) at max_batch_size={batch}, {steps} steps", **mem)


def movq_names(plan) -> list[str]:
    return [f"MoVQ decode {s}² {how}" for s in plan.movq_sizes for how in ("whole", "tiled")]


def movq_rows(suite, plan, k: Kandinsky) -> None:
    """The movq decode of one image, whole vs tiled (``tiling.tiled_decode``, as enable_movq_tiling)."""
    from vslerp.pipelines.tiling import tiled_decode

    movq, scale = k.pipe.movq, k.pipe.movq_scale_factor

    def plain(z):
        return movq.decode(z, force_not_quantize=True)["sample"]

    for size in plan.movq_sizes:
        latents = torch.randn(1, movq.config.latent_channels, size // scale, size // scale,
                              generator=_gen()).to(suite.device, movq.dtype)
        with torch.no_grad():
            for how, fn in (("whole", lambda z=latents: plain(z)),
                            ("tiled", lambda z=latents: tiled_decode(plain, z, scale, tile=plan.movq_tile))):
                fn()  # warm-up
                with suite.peak() as mem:
                    seconds = suite.timed(fn)
                suite.add(f"MoVQ decode {size}² {how}", seconds, "s", None, note=(
                    f"one image; tiled: {plan.movq_tile}-latent tiles, 25 % overlap"), **mem)


COMPILE_NAMES = ["UNet torch.compile vs SDPA", "UNet torch.compile time", "‖out − ref‖/‖ref‖ vs float32"]


def compile_rows(suite, plan, k: Kandinsky) -> None:
    """SDPA vs torch.compile of the UNet (after warm-up), the compile time, and both renders'
    distance to a float32 reference cell (latents). Compiles ``k.pipe``'s UNet in place: last."""
    from vslerp.pipelines import VSlerpPipeline

    steps, size = plan.compile_steps, plan.k_size
    unet32 = copy.deepcopy(k.pipe.unet).float()
    pipe32 = VSlerpPipeline(**{**k.pipe.components, "unet": unet32, "scheduler": copy.deepcopy(k.pipe.scheduler)})
    pipe32.set_progress_bar_config(disable=True)
    ref = _cell(k, steps, size, "latent", pipe32).images.float()
    del pipe32, unet32
    suite.free()

    def rel(out):
        return float((out.images.float() - ref).norm() / ref.norm())

    _cell(k, steps, size, "latent")  # warm-up
    t_sdpa = suite.timed(lambda: _cell(k, steps, size, "latent"))
    err_sdpa = rel(_cell(k, steps, size, "latent"))
    k.pipe.compile_unet(backend=plan.compile_backend)
    t_first = suite.timed(lambda: _cell(k, steps, size, "latent"))
    t_compiled = suite.timed(lambda: _cell(k, steps, size, "latent"))
    err_compiled = rel(_cell(k, steps, size, "latent"))
    note = f"one cell, {size}², {steps} steps, latents; torch.compile backend {plan.compile_backend!r}"
    suite.add("UNet torch.compile vs SDPA", t_compiled / t_sdpa, "×", "< 1",
              floor_s=suite.floor("k-unet", steps), seconds=t_compiled, note=note,
              sdpa_s=t_sdpa, compiled_s=t_compiled)
    suite.add("UNet torch.compile time", t_first - t_compiled, "s", None, note=note + "; first call minus a warm one",
              first_call_s=t_first)
    suite.add("‖out − ref‖/‖ref‖ vs float32", err_compiled, "", None, note=note + (
        f"; {str(k.pipe.unet.dtype).replace('torch.', '')} compiled vs a float32 UNet's cell (SDPA: {err_sdpa:.3g})"),
        sdpa=err_sdpa, compiled=err_compiled)
