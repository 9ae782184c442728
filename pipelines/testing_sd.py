"""Tiny random Stable unCLIP, Stable Diffusion 1.5 / SDXL and IP-Adapter folders, from configs.

For tests (and issue 12's backends): every component is built from a small config with a
seeded random init (the configs of diffusers' own fast tests) and saved in the layout of the
real hub repos, so the real loading paths read them:

- ``make_tiny_stable_unclip`` → the layout of ``stabilityai/stable-diffusion-2-1-unclip``
  (``StableUnCLIPImg2ImgPipeline.from_pretrained``);
- ``make_tiny_sd`` / ``make_tiny_sdxl`` → a Stable Diffusion 1.5 / SDXL base folder;
- ``make_tiny_ip_adapter`` → the layout of ``h94/IP-Adapter`` for one base:
  ``SUBFOLDER/image_encoder/`` (a CLIP vision tower with projection) and
  ``SUBFOLDER/WEIGHT.safetensors`` (``image_proj.*`` and ``ip_adapter.N.to_{k,v}_ip.weight``,
  the keys diffusers' ``load_ip_adapter`` reads).

Image embeddings are ``TINY_DIM``-d; images rendered with these models are noise.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .testing import (
    TINY_DIM,
    make_tiny_clip_tokenizer,
    tiny_clip_image_processor,
    tiny_clip_text_encoder,
    tiny_clip_vision_encoder,
)

__all__ = ["ip_adapter_layers", "make_tiny_ip_adapter", "make_tiny_sd", "make_tiny_sdxl", "make_tiny_stable_unclip"]


def _vae(blocks=(32, 64), sample_size: int = 64):
    from diffusers import AutoencoderKL

    return AutoencoderKL(block_out_channels=list(blocks), in_channels=3, out_channels=3,
                         down_block_types=["DownEncoderBlock2D"] * len(blocks),
                         up_block_types=["UpDecoderBlock2D"] * len(blocks), latent_channels=4,
                         sample_size=sample_size)


def make_tiny_stable_unclip(root: str | Path, seed: int = 0, clip_stats: bool = False) -> Path:
    """A tiny random Stable unCLIP 2.1 (img2img) folder under ``root``/stable_unclip.

    Components as ``stabilityai/stable-diffusion-2-1-unclip``: feature_extractor, image_encoder
    (``TINY_DIM``-d projected ``image_embeds``), image_normalizer, image_noising_scheduler,
    tokenizer, text_encoder, unet (``class_embed_type="projection"`` over the noised image
    embedding and its noise-level embedding), scheduler (v-prediction DDIM), vae. Renders 64 px.
    The image normaliser is the identity (mean 0, std 1), as the ViT-H model's; ``clip_stats``:
    a random non-zero mean and positive std instead, as ``-small``'s (Karlo's ViT-L/14 statistics).
    """
    from diffusers import (
        DDIMScheduler,
        DDPMScheduler,
        StableUnCLIPImg2ImgPipeline,
        UNet2DConditionModel,
    )
    from diffusers.pipelines.stable_diffusion.stable_unclip_image_normalizer import (
        StableUnCLIPImageNormalizer,
    )

    root = Path(root)
    out_dir = root / "stable_unclip"
    torch.manual_seed(seed)
    tokenizer = make_tiny_clip_tokenizer(root / "_stable_unclip_tokenizer")
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), block_out_channels=(32, 64), attention_head_dim=(2, 4),
        class_embed_type="projection", projection_class_embeddings_input_dim=TINY_DIM * 2,
        cross_attention_dim=32, layers_per_block=1, upcast_attention=True, use_linear_projection=True)
    normalizer = StableUnCLIPImageNormalizer(embedding_dim=TINY_DIM)
    if clip_stats:  # its own generator: the other weights are those of the identity variant
        gen = torch.Generator().manual_seed(seed + 100)
        with torch.no_grad():
            normalizer.mean.copy_(torch.randn(1, TINY_DIM, generator=gen) * 0.5 + 0.25)
            normalizer.std.copy_(torch.rand(1, TINY_DIM, generator=gen) + 0.5)
    StableUnCLIPImg2ImgPipeline(
        feature_extractor=tiny_clip_image_processor(), image_encoder=tiny_clip_vision_encoder(),
        image_normalizer=normalizer,
        image_noising_scheduler=DDPMScheduler(beta_schedule="squaredcos_cap_v2"),
        tokenizer=tokenizer, text_encoder=tiny_clip_text_encoder(tokenizer, False, "gelu"), unet=unet,
        scheduler=DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                prediction_type="v_prediction", set_alpha_to_one=False, steps_offset=1),
        vae=_vae(),
    ).save_pretrained(out_dir)
    return out_dir


def make_tiny_sd(root: str | Path, seed: int = 0, xl: bool = False) -> Path:
    """A tiny random Stable Diffusion 1.5 folder under ``root``/sd15 (no safety checker), 64 px;
    ``xl``: an SDXL base under ``root``/sdxl (two text encoders, text_time embedding)."""
    from diffusers import (
        DDIMScheduler,
        EulerDiscreteScheduler,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )

    root = Path(root)
    out_dir = root / ("sdxl" if xl else "sd15")
    torch.manual_seed(seed)
    tokenizers = [make_tiny_clip_tokenizer(root / name)
                  for name in (("_sdxl_tokenizer", "_sdxl_tokenizer_2") if xl else ("_sd15_tokenizer",))]
    xl_unet = dict(use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=8,
                   transformer_layers_per_block=(1, 2), projection_class_embeddings_input_dim=6 * 8 + 32)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), cross_attention_dim=64 if xl else 32, **(xl_unet if xl else {}))
    vae, text_encoder = _vae(), tiny_clip_text_encoder(tokenizers[0], False, "gelu")
    if not xl:
        StableDiffusionPipeline(
            vae=vae, text_encoder=text_encoder, tokenizer=tokenizers[0], unet=unet,
            scheduler=DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                    clip_sample=False, set_alpha_to_one=False, steps_offset=1),
            safety_checker=None, feature_extractor=None, image_encoder=None, requires_safety_checker=False,
        ).save_pretrained(out_dir)
        return out_dir
    StableDiffusionXLPipeline(
        vae=vae, text_encoder=text_encoder, text_encoder_2=tiny_clip_text_encoder(tokenizers[1], True, "gelu"),
        tokenizer=tokenizers[0], tokenizer_2=tokenizers[1], unet=unet,
        scheduler=EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, steps_offset=1,
                                         beta_schedule="scaled_linear", timestep_spacing="leading"),
        image_encoder=None, feature_extractor=None, force_zeros_for_empty_prompt=True,
    ).save_pretrained(out_dir)
    return out_dir


def make_tiny_sdxl(root: str | Path, seed: int = 0) -> Path:
    """A tiny random SDXL base folder under ``root``/sdxl (:func:`make_tiny_sd` with ``xl``)."""
    return make_tiny_sd(root, seed, xl=True)


def ip_adapter_layers(unet, blocks) -> list[tuple[int, int]]:
    """(key id, hidden size) of each cross-attention processor an IP-Adapter file holds a
    (to_k_ip, to_v_ip) pair for: ids 1, 3, 5, … in the order of the UNet's attn_processors (as
    diffusers' _convert_ip_adapter_attn_to_diffusers numbers them); ``blocks``: its block widths."""
    layers = []
    for name in unet.attn_processors:
        if name.endswith("attn1.processor"):
            continue
        if name.startswith("mid_block"):
            hidden = blocks[-1]
        elif name.startswith("up_blocks"):
            hidden = list(reversed(blocks))[int(name[len("up_blocks.")])]
        else:
            hidden = blocks[int(name[len("down_blocks.")])]
        layers.append((2 * len(layers) + 1, hidden))
    return layers


def make_tiny_ip_adapter(root: str | Path, base_dir: str | Path, subfolder: str = "models",
                         weight_name: str = "ip-adapter_sd15.safetensors", seed: int = 0,
                         plus: bool = False) -> Path:
    """A tiny random IP-Adapter for the UNet in ``base_dir``, in ``h94/IP-Adapter``'s layout.

    Writes ``root``/ip_adapter/``subfolder``/image_encoder/ and ``.../weight_name`` and returns
    ``root``/ip_adapter (give it to ``load_ip_adapter(dir, subfolder=..., weight_name=...)``).
    The image projection maps the encoder's ``TINY_DIM``-d projected ``image_embeds`` to 4
    tokens of the UNet's cross-attention width. ``plus=True`` writes a "plus"-style projection
    (a ``latents`` resampler over hidden states) instead, for tests that must refuse it.
    """
    from diffusers import UNet2DConditionModel
    from safetensors.torch import save_file

    out = Path(root) / "ip_adapter"
    folder = out / subfolder
    folder.mkdir(parents=True, exist_ok=True)
    unet_config = UNet2DConditionModel.load_config(Path(base_dir), subfolder="unet")
    cross = int(unet_config["cross_attention_dim"])
    blocks = list(unet_config["block_out_channels"])
    torch.manual_seed(seed)
    tiny_clip_vision_encoder().save_pretrained(folder / "image_encoder")
    tensors = {}
    if plus:
        tensors["image_proj.latents"] = torch.randn(1, 4, cross) * 0.02
        tensors["image_proj.proj_in.weight"] = torch.randn(cross, TINY_DIM) * 0.02
    else:
        tensors["image_proj.proj.weight"] = torch.randn(4 * cross, TINY_DIM) * 0.02
        tensors["image_proj.proj.bias"] = torch.zeros(4 * cross)
        tensors["image_proj.norm.weight"] = torch.ones(cross)
        tensors["image_proj.norm.bias"] = torch.zeros(cross)
    # One (to_k_ip, to_v_ip) pair per cross-attention processor, numbered 1, 3, 5, … in the
    # order of the UNet's attn_processors (as diffusers' _convert_ip_adapter_attn_to_diffusers).
    unet = UNet2DConditionModel.from_config(unet_config)
    for key_id, hidden in ip_adapter_layers(unet, blocks):
        for kind in ("to_k_ip", "to_v_ip"):
            tensors[f"ip_adapter.{key_id}.{kind}.weight"] = torch.randn(hidden, cross) * 0.05
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / weight_name))
    return out
