"""The GPU suite's SDXL + IP-Adapter and FLUX rows.

SDXL: ``VSlerpIPAdapterXLPipeline`` built from components (UNet 2.57 B, both text towers, VAE)
with a random non-plus IP-Adapter loaded by diffusers' own ``load_ip_adapter`` (the adapter file
written in ``h94/IP-Adapter``'s layout) and a ViT-bigG/14 image encoder (``ip-adapter_sdxl``'s),
against diffusers' ``StableDiffusionXLPipeline`` on the same components.

FLUX: the project has no FLUX backend yet, so only diffusers' ``FluxPipeline`` runs: the 11.9 B
transformer's steps from random prompt embeddings of the real shapes (no text encoders, no VAE,
no IP-Adapter loaded), per step from two step counts, against its floor.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from gpu_models import build, write_ip_adapter

__all__ = ["FLUX_NAMES", "SDXL_NAMES", "build_sdxl", "flux_rows", "sdxl_rows"]

SDXL_NAMES = ["SDXL + IP-Adapter", "SDXL + IP-Adapter 3×3 grid vs 9 calls", "SDXL + IP-Adapter seconds per image",
              "SDXL + IP-Adapter peak memory", "SDXL + IP-Adapter peak memory, enable_model_cpu_offload()"]
FLUX_NAMES = ["FLUX + IP-Adapter", "FLUX + IP-Adapter one cell vs FluxPipeline", "FLUX + IP-Adapter 3×3 grid vs 9 calls",
              "FLUX peak memory", "FLUX peak memory, enable_model_cpu_offload()"]
NO_FLUX = "vslerp FLUX backend not yet built"
WEIGHT = "ip-adapter_sdxl.safetensors"


@dataclass
class SDXL:
    pipe: object  # VSlerpIPAdapterXLPipeline
    ref: object  # diffusers' StableDiffusionXLPipeline on the same components
    source: torch.Tensor  # (D,) raw, the adapter's image-encoder space
    target: torch.Tensor


def _gen():
    return torch.Generator().manual_seed(0)


def build_sdxl(cfgs: dict, device, dtype, root: Path) -> SDXL:
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    from vslerp.pipelines import VSlerpIPAdapterXLPipeline
    from vslerp.pipelines.testing import make_tiny_clip_tokenizer
    from vslerp.stats.encode import clip_image_processor_class

    tokenizers = [make_tiny_clip_tokenizer(root / f"sdxl_tokenizer_{i}") for i in (1, 2)]
    unet = build(cfgs["sdxl/unet"], device, dtype)
    pipe = VSlerpIPAdapterXLPipeline(
        vae=build(cfgs["sdxl/vae"], device, dtype),
        text_encoder=build(cfgs["sdxl/text_encoder"], device, dtype, tokenizers[0]),
        text_encoder_2=build(cfgs["sdxl/text_encoder_2"], device, dtype, tokenizers[1]),
        tokenizer=tokenizers[0], tokenizer_2=tokenizers[1], unet=unet,
        scheduler=EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, steps_offset=1,
                                         beta_schedule="scaled_linear", timestep_spacing="leading"))
    image_encoder = build(cfgs["kandinsky/image_encoder"], device, dtype)  # ViT-bigG/14, as ip-adapter_sdxl's
    dim, side = image_encoder.config.projection_dim, image_encoder.config.image_size
    write_ip_adapter(unet, dim, root / "ip_adapter" / "sdxl_models", WEIGHT, dtype)
    pipe.load_ip_adapter(str(root / "ip_adapter"), subfolder="sdxl_models", weight_name=WEIGHT,
                         image_encoder_folder=None)  # the encoder is already built on the device
    processor = clip_image_processor_class()(crop_size=side, size=side, do_center_crop=True, do_normalize=True,
                                             do_resize=True, resample=3)
    pipe.register_modules(image_encoder=image_encoder, feature_extractor=processor)
    gen = _gen()
    pipe.set_statistics(torch.randn(dim, generator=gen) * 0.3)
    pipe.set_progress_bar_config(disable=True)
    ref = StableDiffusionXLPipeline(**pipe.components, add_watermarker=False)
    ref.set_progress_bar_config(disable=True)
    source, target = torch.randn(2, dim, generator=gen) * 0.6
    return SDXL(pipe, ref, source, target)


def sdxl_rows(suite, plan, s: SDXL) -> None:
    steps, size = plan.sdxl_steps, plan.sdxl_size
    render = {"num_inference_steps": steps, "height": size, "width": size, "output_type": "np"}

    def cell(pipe=None):
        return (pipe or s.pipe)(s.source, s.target, thetas=[0.0], alphas=[0.0], generator=_gen(), **render)

    def reference(e):
        embeds = torch.stack([torch.zeros_like(e), e])[:, None]  # (2, 1, D): negative = zeros
        return s.ref(prompt="", ip_adapter_image_embeds=[embeds], generator=_gen(), **render)

    note = f"{size}², {steps} steps, guidance 5, IP-Adapter (random, non-plus), decoded to images"
    t_ref, t_one = suite.paired(lambda: reference(s.source), cell)
    floor = suite.floor("sdxl-unet", steps)
    suite.add(SDXL_NAMES[0], t_one / t_ref, "×", "<= 1.02", floor_s=floor, seconds=t_one,
              note=note + "; one cell vs StableDiffusionXLPipeline", vslerp_s=t_one, diffusers_s=t_ref)

    def grid():
        return s.pipe(s.source, s.target, thetas=[0.0, 0.5, 1.0], alphas=[-1.0, 0.0, 1.0], max_batch_size=9,
                      generator=_gen(), **render)

    cells = grid().embeddings.reshape(9, -1)  # (9, D); also the warm-up
    distinct = int(torch.unique(cells, dim=0).shape[0])
    t_9 = suite.timed(lambda: [reference(row) for row in cells])
    t_grid = suite.timed(grid)
    suite.add(SDXL_NAMES[1], t_grid / t_9, "×", "<= 0.7", note=note + f"; max_batch_size=9, {distinct} distinct cells",
              grid_s=t_grid, calls_9_s=t_9)
    suite.add(SDXL_NAMES[2], t_grid / distinct, "s", None, floor_s=floor, seconds=t_grid / distinct,
              note=note + f"; the grid's seconds / {distinct} rendered cells")
    with suite.peak() as mem:
        cell()
    suite.add(SDXL_NAMES[3], mem["peak_gib"], "GiB", None, note=note + "; one cell, every component on the device",
              memory=mem["memory"])
    if suite.device.type != "cuda":
        suite.skip(SDXL_NAMES[4], "enable_model_cpu_offload() needs an accelerator (CUDA)", "GiB")
        return
    s.pipe.enable_model_cpu_offload(device=suite.device)
    cell()  # warm-up: the hooks placed
    with suite.peak() as mem:
        seconds = suite.timed(cell)
    suite.add(SDXL_NAMES[4], mem["peak_gib"], "GiB", None, note=note + "; one cell", seconds=seconds,
              memory=mem["memory"])


def flux_rows(suite, plan, cfgs: dict, device, dtype) -> None:
    """diffusers' FluxPipeline: seconds per image at ``plan.flux_steps`` from the per-step time
    (two step counts: t(b) − t(a) over b − a steps), vs the transformer's floor; peak memory."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

    built: list = []
    seconds = suite.timed(lambda: built.append(build(cfgs["flux/transformer"], device, dtype)))
    transformer = built[0]
    suite.add("build FLUX transformer", seconds, "s", None, note=(
        f"{sum(p.numel() for p in transformer.parameters()) / 1e9:.3f} B parameters, constructed on the device, random"))
    pipe = FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True),
                        vae=None, text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None,
                        transformer=transformer)
    pipe.set_progress_bar_config(disable=True)
    gen = _gen()
    embeds = torch.randn(1, 512, transformer.config.joint_attention_dim, generator=gen).to(device, dtype)
    pooled = torch.randn(1, transformer.config.pooled_projection_dim, generator=gen).to(device, dtype)
    size = plan.flux_size

    def call(steps):
        return pipe(prompt_embeds=embeds, pooled_prompt_embeds=pooled, height=size, width=size,
                    num_inference_steps=steps, guidance_scale=3.5, generator=_gen(), output_type="latent")

    few, more = plan.flux_measure
    t_few, t_more = suite.alternating(lambda: call(few), lambda: call(more))
    per_step = (t_more - t_few) / (more - few)
    if per_step <= 0:  # noise larger than a step (tiny models): the whole call's average instead
        per_step = t_more / more
    image = t_few + (plan.flux_steps - few) * per_step
    note = (f"diffusers FluxPipeline, {size}², guidance 3.5 (distilled: one call per step), random prompt embeddings "
            f"(512 T5 tokens + pooled); {plan.flux_steps} steps from the per-step time of {few} vs {more} steps; "
            f"no VAE decode, IP-Adapter not loaded; {NO_FLUX}")
    suite.add(FLUX_NAMES[0], image, "s per image (diffusers)", None,
              floor_s=suite.floor("flux", plan.flux_steps), seconds=image, note=note, per_step_s=per_step,
              vslerp=NO_FLUX)
    for name in FLUX_NAMES[1:3]:
        suite.skip(name, NO_FLUX, "×")
    with suite.peak() as mem:
        call(few)
    suite.add(FLUX_NAMES[3], mem["peak_gib"], "GiB", None, note=f"{few} steps, the transformer on the device "
              "(no text encoders or VAE built)", memory=mem["memory"])
    if suite.device.type != "cuda":
        suite.skip(FLUX_NAMES[4], "enable_model_cpu_offload() needs an accelerator (CUDA)", "GiB")
        return
    pipe.enable_model_cpu_offload(device=suite.device)
    call(1)
    with suite.peak() as mem:
        seconds = suite.timed(lambda: call(few))
    suite.add(FLUX_NAMES[4], mem["peak_gib"], "GiB", None, note=f"{few} steps", seconds=seconds, memory=mem["memory"])
