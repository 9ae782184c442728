"""Tiny random FLUX.1 and XLabs IP-Adapter folders, from configs (for tests and the docs check).

- ``make_tiny_flux`` → the layout of ``black-forest-labs/FLUX.1-dev`` (``FluxPipeline``):
  transformer, vae (factor 8: sizes are multiples of 16), text_encoder + tokenizer (CLIP),
  text_encoder_2 + tokenizer_2 (T5, its tokenizer built offline with ``tokenizers``), scheduler;
- ``make_tiny_flux_ip_adapter`` → the layout of ``XLabs-AI/flux-ip-adapter``: one
  ``ip_adapter.safetensors`` at the root (``ip_adapter_proj_model.*`` and
  ``double_blocks.N.processor.ip_adapter_double_stream_{k,v}_proj.*``, the keys diffusers'
  ``FluxIPAdapterMixin.load_ip_adapter`` reads), and beside it a ``CLIPVisionModelWithProjection``
  folder standing for ``openai/clip-vit-large-patch14`` (``TINY_DIM``-d).
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

__all__ = ["FLUX_ADAPTER_WEIGHT", "flux_ip_adapter_tensors", "make_tiny_flux", "make_tiny_flux_ip_adapter",
           "make_tiny_t5_tokenizer"]

FLUX_ADAPTER_WEIGHT = "ip_adapter.safetensors"  # XLabs' file name
_T5_DIM = 32  # T5 width = the transformer's joint_attention_dim


def make_tiny_t5_tokenizer(directory: str | Path):
    """A character-level T5 tokenizer (Unigram over printable ASCII, ``<pad>`` 0, ``</s>`` 1, ``<unk>`` 2),
    built with the ``tokenizers`` library (no download) and saved as ``T5TokenizerFast``."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import T5TokenizerFast

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -1.0)]
    vocab += [(chr(c), -2.0) for c in range(33, 127)] + [("▁" + chr(c), -1.5) for c in range(33, 127)]
    tok = Tokenizer(models.Unigram(vocab, unk_id=2))
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    t5 = T5TokenizerFast(tokenizer_object=tok, eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
                         extra_ids=0, model_max_length=512)
    t5.save_pretrained(directory)
    return T5TokenizerFast.from_pretrained(directory)


def make_tiny_flux(root: str | Path, seed: int = 0) -> Path:
    """A tiny random FLUX.1-dev folder ``root``/flux (guidance-distilled transformer, 1 + 1 blocks); renders 32 px."""
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        FluxPipeline,
        FluxTransformer2DModel,
    )
    from transformers import T5Config, T5EncoderModel

    root = Path(root)
    out = root / "flux"
    torch.manual_seed(seed)
    tokenizer = make_tiny_clip_tokenizer(root / "_flux_tokenizer")
    tokenizer_2 = make_tiny_t5_tokenizer(root / "_flux_tokenizer_2")
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                                         attention_head_dim=16, num_attention_heads=2, joint_attention_dim=_T5_DIM,
                                         pooled_projection_dim=32, axes_dims_rope=[4, 4, 8], guidance_embeds=True)
    vae = AutoencoderKL(sample_size=32, in_channels=3, out_channels=3, block_out_channels=(4, 4, 4, 4),
                        down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
                        layers_per_block=1, latent_channels=4, norm_num_groups=1, use_quant_conv=False,
                        use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035)
    t5 = T5EncoderModel(T5Config(vocab_size=len(tokenizer_2), d_model=_T5_DIM, d_kv=8, d_ff=37, num_layers=2,
                                 num_heads=4, relative_attention_num_buckets=8, decoder_start_token_id=0,
                                 pad_token_id=0, eos_token_id=1)).eval()
    FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae,
                 text_encoder=tiny_clip_text_encoder(tokenizer, projection=False), tokenizer=tokenizer,
                 text_encoder_2=t5, tokenizer_2=tokenizer_2, transformer=transformer).save_pretrained(out)
    return out


def flux_ip_adapter_tensors(config, image_dim: int, rand) -> dict[str, torch.Tensor]:
    """A random XLabs IP-Adapter for a ``FluxTransformer2DModel`` of ``config``: its image projection
    (``image_dim`` → 4 tokens of ``joint_attention_dim``) and one (k, v) pair per double-stream
    block, keyed as XLabs' ``ip_adapter.safetensors``; ``rand(*shape, scale=)``: the random tensors."""
    cross = int(config["joint_attention_dim"])
    hidden = int(config["num_attention_heads"]) * int(config["attention_head_dim"])
    ones = rand(cross, scale=0) + 1
    tensors = {"ip_adapter_proj_model.proj.weight": rand(4 * cross, image_dim, scale=0.05),
               "ip_adapter_proj_model.proj.bias": rand(4 * cross, scale=0),
               "ip_adapter_proj_model.norm.weight": ones, "ip_adapter_proj_model.norm.bias": ones - 1}
    for block in range(int(config["num_layers"])):
        for kind in ("k", "v"):
            key = f"double_blocks.{block}.processor.ip_adapter_double_stream_{kind}_proj"
            tensors[f"{key}.weight"] = rand(hidden, cross, scale=0.1)
            tensors[f"{key}.bias"] = rand(hidden, scale=0.01)
    return tensors


def make_tiny_flux_ip_adapter(root: str | Path, base_dir: str | Path, seed: int = 0) -> tuple[Path, Path]:
    """A tiny random XLabs IP-Adapter for the FLUX transformer in ``base_dir``: returns
    ``(root/flux_ip_adapter, root/flux_image_encoder)`` — the adapter folder (``ip_adapter.safetensors``
    at its root) and its ``CLIPVisionModelWithProjection`` encoder folder (with its processor)."""
    from diffusers import FluxTransformer2DModel
    from safetensors.torch import save_file

    config = FluxTransformer2DModel.load_config(Path(base_dir), subfolder="transformer")
    torch.manual_seed(seed)
    encoder = Path(root) / "flux_image_encoder"
    tiny_clip_vision_encoder().save_pretrained(encoder)
    tiny_clip_image_processor().save_pretrained(encoder)
    tensors = flux_ip_adapter_tensors(config, TINY_DIM, lambda *shape, scale: torch.randn(*shape) * scale)
    adapter = Path(root) / "flux_ip_adapter"
    adapter.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(adapter / FLUX_ADAPTER_WEIGHT))
    return adapter, encoder
