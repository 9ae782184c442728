"""The GPU suite's SDXL + IP-Adapter and FLUX rows.

SDXL: ``VSlerpIPAdapterXLPipeline`` built from components (UNet 2.57 B, both text towers, VAE)
with a random non-plus IP-Adapter loaded by diffusers' own ``load_ip_adapter`` (the adapter file
written in ``h94/IP-Adapter``'s layout) and a ViT-bigG/14 image encoder (``ip-adapter_sdxl``'s),
against diffusers' ``StableDiffusionXLPipeline`` on the same components.

FLUX: ``VSlerpFluxPipeline`` on the 11.9 B transformer with a random XLabs IP-Adapter loaded by
diffusers' ``load_ip_adapter`` (``testing_flux.flux_ip_adapter_tensors``, 19 (k, v) pairs) and a
ViT-L/14 image encoder; its text encoders (CLIP-L text, a one-layer T5 of width 4096) and VAE are
small (their cost is not the transformer's), against diffusers' ``FluxPipeline`` on the same
components: seconds per image from the per-step time of two step counts, one cell and a 3×3 grid.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from gpu_models import build, on_device, write_ip_adapter

__all__ = ["FLUX_NAMES", "SDXL_NAMES", "build_flux", "build_sdxl", "flux_rows", "sdxl_rows"]

SDXL_NAMES = ["SDXL + IP-Adapter", "SDXL + IP-Adapter 3×3 grid vs 9 calls", "SDXL + IP-Adapter seconds per image",
              "SDXL + IP-Adapter peak memory", "SDXL + IP-Adapter peak memory, enable_model_cpu_offload()"]
FLUX_NAMES = ["FLUX + IP-Adapter", "FLUX + IP-Adapter one cell vs FluxPipeline", "FLUX + IP-Adapter 3×3 grid vs 9 calls",
              "FLUX peak memory", "FLUX peak memory, enable_model_cpu_offload()"]
WEIGHT = "ip-adapter_sdxl.safetensors"
VIT_L = {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24, "num_attention_heads": 16,
         "image_size": 224, "patch_size": 14, "projection_dim": 768}  # openai/clip-vit-large-patch14's vision tower


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


@dataclass
class Flux:
    pipe: object  # VSlerpFluxPipeline
    ref: object  # diffusers' FluxPipeline on the same components
    source: torch.Tensor  # (D,) raw, ViT-L/14 space
    target: torch.Tensor


def build_flux(cfgs: dict, device, dtype, root: Path, tiny: bool) -> Flux:
    """The FLUX pipeline pair (see the module doc); ``tiny``: the dry run's small image encoder."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline
    from safetensors.torch import save_file
    from transformers import (
        CLIPTextConfig,
        CLIPTextModel,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
        T5Config,
        T5EncoderModel,
    )

    from vslerp.pipelines import VSlerpFluxPipeline
    from vslerp.pipelines.testing import make_tiny_clip_tokenizer, tiny_clip_vision_config
    from vslerp.pipelines.testing_flux import (
        FLUX_ADAPTER_WEIGHT,
        flux_ip_adapter_tensors,
        make_tiny_t5_tokenizer,
    )
    from vslerp.stats.encode import clip_image_processor_class

    config = cfgs["flux/transformer"]
    transformer = build(config, device, dtype)
    tokenizer, tokenizer_2 = make_tiny_clip_tokenizer(root / "flux_tokenizer"), make_tiny_t5_tokenizer(root / "flux_t5")
    pooled, joint = int(config["pooled_projection_dim"]), int(config["joint_attention_dim"])
    with on_device(device, dtype):
        text_encoder = CLIPTextModel(CLIPTextConfig(
            hidden_size=pooled, intermediate_size=4 * pooled, num_hidden_layers=1, num_attention_heads=4,
            vocab_size=len(tokenizer), max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))
        text_encoder_2 = T5EncoderModel(T5Config(vocab_size=len(tokenizer_2), d_model=joint, d_kv=64, d_ff=1024,
                                                 num_layers=1, num_heads=8, pad_token_id=0, eos_token_id=1))
        vae = AutoencoderKL(block_out_channels=(32, 32, 32, 32), down_block_types=["DownEncoderBlock2D"] * 4,
                            up_block_types=["UpDecoderBlock2D"] * 4, layers_per_block=1,
                            latent_channels=int(config["in_channels"]) // 4, norm_num_groups=32,
                            use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.1159, scaling_factor=0.3611)
        vision = tiny_clip_vision_config() if tiny else CLIPVisionConfig(**VIT_L)
        image_encoder = CLIPVisionModelWithProjection(vision)
    parts = [m.to(device=device, dtype=dtype).eval().requires_grad_(False)
             for m in (text_encoder, text_encoder_2, vae, image_encoder)]
    pipe = VSlerpFluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True),
                              vae=parts[2], text_encoder=parts[0], tokenizer=tokenizer, text_encoder_2=parts[1],
                              tokenizer_2=tokenizer_2, transformer=transformer)
    side, dim = int(vision.image_size), int(vision.projection_dim)
    pipe.register_modules(image_encoder=parts[3], feature_extractor=clip_image_processor_class()(
        size=side, crop_size=side))  # as load_ip_adapter builds it
    gen = torch.Generator(device).manual_seed(0)
    tensors = flux_ip_adapter_tensors(config, dim, lambda *shape, scale: (
        torch.randn(*shape, generator=gen, device=device) * scale).to(dtype))
    (root / "flux_ip_adapter").mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous().cpu() for k, v in tensors.items()}, str(root / "flux_ip_adapter" / FLUX_ADAPTER_WEIGHT))
    del tensors
    pipe.load_ip_adapter(str(root / "flux_ip_adapter"), weight_name=FLUX_ADAPTER_WEIGHT)  # the encoder is built
    cpu = _gen()
    pipe.set_statistics(torch.randn(dim, generator=cpu) * 0.3)
    pipe.set_progress_bar_config(disable=True)
    ref = FluxPipeline(**pipe.components)
    ref.set_progress_bar_config(disable=True)
    source, target = torch.randn(2, dim, generator=cpu) * 0.6
    return Flux(pipe, ref, source, target)


def flux_rows(suite, plan, f: Flux) -> None:
    """Seconds per image at ``plan.flux_steps`` from the per-step time (two step counts: t(b) − t(a)
    over b − a steps) through vslerp; one cell vs FluxPipeline and a 3×3 grid vs 9 calls at the
    smaller step count; peak memory, with and without diffusers' model offload."""
    few, more = plan.flux_measure
    size = plan.flux_size
    render = {"height": size, "width": size, "output_type": "np"}

    def cell(steps):
        return f.pipe(f.source, f.target, thetas=[0.0], alphas=[0.0], num_inference_steps=steps, generator=_gen(),
                      **render)

    def reference(e, steps=few):  # diffusers encodes its default negative (a black image) itself
        return f.ref(prompt="", ip_adapter_image_embeds=[e[None, None]], num_inference_steps=steps,
                     generator=_gen(), **render)

    t_few, t_more = suite.alternating(lambda: cell(few), lambda: cell(more))
    per_step = (t_more - t_few) / (more - few)
    if per_step <= 0:  # noise larger than a step (tiny models): the whole call's average instead
        per_step = t_more / more
    image = t_few + (plan.flux_steps - few) * per_step
    note = (f"VSlerpFluxPipeline, {size}², guidance 3.5 (distilled: one transformer call per step), XLabs "
            f"IP-Adapter (random) loaded, small text encoders and VAE, decoded to images")
    suite.add(FLUX_NAMES[0], image, "s per image", None, floor_s=suite.floor("flux", plan.flux_steps),
              seconds=image, per_step_s=per_step,
              note=note + f"; {plan.flux_steps} steps from the per-step time of {few} vs {more} steps")
    t_ref, t_one = suite.paired(lambda: reference(f.source), lambda: cell(few))
    suite.add(FLUX_NAMES[1], t_one / t_ref, "×", "<= 1.05", note=note + f"; {few} steps; one cell vs FluxPipeline",
              vslerp_s=t_one, diffusers_s=t_ref)

    def grid():
        return f.pipe(f.source, f.target, thetas=[0.0, 0.5, 1.0], alphas=[-1.0, 0.0, 1.0], max_batch_size=9,
                      num_inference_steps=few, generator=_gen(), **render)

    cells = grid().embeddings.reshape(9, -1)  # (9, D); also the warm-up
    distinct = int(torch.unique(cells, dim=0).shape[0])
    t_9 = suite.timed(lambda: [reference(row) for row in cells])
    t_grid = suite.timed(grid)
    suite.add(FLUX_NAMES[2], t_grid / t_9, "×", "<= 0.7",
              note=note + f"; {few} steps; max_batch_size=9, {distinct} distinct cells", grid_s=t_grid, calls_9_s=t_9)
    with suite.peak() as mem:
        cell(few)
    suite.add(FLUX_NAMES[3], mem["peak_gib"], "GiB", None, note=note + "; one cell, every component on the device",
              memory=mem["memory"])
    if suite.device.type != "cuda":
        suite.skip(FLUX_NAMES[4], "enable_model_cpu_offload() needs an accelerator (CUDA)", "GiB")
        return
    f.pipe.enable_model_cpu_offload(device=suite.device)
    cell(1)  # warm-up: the hooks placed
    with suite.peak() as mem:
        seconds = suite.timed(lambda: cell(few))
    suite.add(FLUX_NAMES[4], mem["peak_gib"], "GiB", None, note=note + f"; one cell, {few} steps", seconds=seconds,
              memory=mem["memory"])
