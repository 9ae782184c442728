"""Tiny random Kandinsky 2.2 components, built from configs, for tests and `--tiny-random`.

No weights are downloaded: every component is built from a small config with a seeded
random init and written with ``save_pretrained`` in the layout of the real hub repos
(``kandinsky-community/kandinsky-2-2-prior`` and ``-decoder``), so the real
``from_pretrained`` code paths load them. Images rendered with them are noise.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

__all__ = ["TINY_DIM", "make_tiny_clip_tokenizer", "make_tiny_kandinsky", "make_tiny_karlo", "make_tiny_unclip"]

TINY_DIM = 32  # embedding dim of the tiny CLIP encoders (1280 for the real ViT-bigG/14)
TINY_IMAGE_SIZE = 32  # CLIP input size of the tiny vision encoder (224 for the real one)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte-to-printable-unicode table (the real tokenizer's alphabet)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))


def make_tiny_clip_tokenizer(directory: str | Path, model_max_length: int = 77):
    """Write and load a character-level CLIP BPE tokenizer (vocab 514, no merges)."""
    from transformers import CLIPTokenizer

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    alphabet = list(_bytes_to_unicode().values())
    vocab = {}
    for tok in alphabet + [a + "</w>" for a in alphabet] + ["<|startoftext|>", "<|endoftext|>"]:
        vocab.setdefault(tok, len(vocab))
    (directory / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (directory / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    # from_pretrained reads vocab.json + merges.txt in transformers 4.x and 5.x alike.
    tok = CLIPTokenizer.from_pretrained(directory, model_max_length=model_max_length)
    tok.save_pretrained(directory)
    return tok


def make_tiny_kandinsky(root: str | Path, seed: int = 0) -> tuple[Path, Path]:
    """Build a tiny random Kandinsky 2.2 prior and decoder under ``root``.

    Returns ``(prior_dir, decoder_dir)``, loadable with ``KandinskyV22PriorPipeline`` and
    ``KandinskyV22Pipeline.from_pretrained``. The prior's ``clip_mean`` is random (not zero)
    so the zero-data mean source is usable with it.
    """
    from diffusers import (
        DDIMScheduler,
        KandinskyV22Pipeline,
        KandinskyV22PriorPipeline,
        PriorTransformer,
        UnCLIPScheduler,
        UNet2DConditionModel,
        VQModel,
    )
    from transformers import (
        CLIPImageProcessor,
        CLIPTextConfig,
        CLIPTextModelWithProjection,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
    )

    root = Path(root)
    prior_dir, decoder_dir = root / "prior", root / "decoder"
    dim = TINY_DIM
    torch.manual_seed(seed)
    tokenizer = make_tiny_clip_tokenizer(root / "_tokenizer")
    text_encoder = CLIPTextModelWithProjection(
        CLIPTextConfig(
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            hidden_size=dim,
            projection_dim=dim,
            intermediate_size=37,
            layer_norm_eps=1e-05,
            num_attention_heads=4,
            num_hidden_layers=2,
            vocab_size=len(tokenizer),
            max_position_embeddings=tokenizer.model_max_length,
        )
    ).eval()
    image_encoder = CLIPVisionModelWithProjection(
        CLIPVisionConfig(
            hidden_size=dim,
            image_size=TINY_IMAGE_SIZE,
            projection_dim=dim,
            intermediate_size=37,
            num_attention_heads=4,
            num_channels=3,
            num_hidden_layers=2,
            patch_size=8,
        )
    ).eval()
    image_processor = CLIPImageProcessor(
        crop_size=TINY_IMAGE_SIZE,
        do_center_crop=True,
        do_normalize=True,
        do_resize=True,
        image_mean=[0.48145466, 0.4578275, 0.40821073],
        image_std=[0.26862954, 0.26130258, 0.27577711],
        resample=3,
        size=TINY_IMAGE_SIZE,
    )
    prior = PriorTransformer(
        num_attention_heads=2, attention_head_dim=12, embedding_dim=dim, num_layers=1
    )
    with torch.no_grad():
        prior.clip_std.copy_(torch.ones_like(prior.clip_std))
        prior.clip_mean.copy_(torch.randn_like(prior.clip_mean) * 0.5 + 0.25)
    prior_scheduler = UnCLIPScheduler(
        variance_type="fixed_small_log",
        prediction_type="sample",
        num_train_timesteps=1000,
        clip_sample=True,
        clip_sample_range=10.0,
    )
    KandinskyV22PriorPipeline(
        prior=prior,
        image_encoder=image_encoder,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=prior_scheduler,
        image_processor=image_processor,
    ).save_pretrained(prior_dir)

    unet = UNet2DConditionModel(
        in_channels=4,
        out_channels=8,
        addition_embed_type="image",
        down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
        up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
        mid_block_type="UNetMidBlock2DSimpleCrossAttn",
        block_out_channels=(32, 64),
        layers_per_block=1,
        encoder_hid_dim=dim,
        encoder_hid_dim_type="image_proj",
        cross_attention_dim=64,
        attention_head_dim=4,
        resnet_time_scale_shift="scale_shift",
        class_embed_type=None,
    )
    movq = VQModel(
        block_out_channels=[32, 64],
        down_block_types=["DownEncoderBlock2D", "AttnDownEncoderBlock2D"],
        in_channels=3,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=8,
        norm_type="spatial",
        num_vq_embeddings=12,
        out_channels=3,
        up_block_types=["AttnUpDecoderBlock2D", "UpDecoderBlock2D"],
        vq_embed_dim=4,
    )
    scheduler = DDIMScheduler(
        num_train_timesteps=1000,
        beta_schedule="linear",
        beta_start=0.00085,
        beta_end=0.012,
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="epsilon",
        thresholding=False,
    )
    KandinskyV22Pipeline(unet=unet, scheduler=scheduler, movq=movq).save_pretrained(decoder_dir)
    return prior_dir, decoder_dir


def make_tiny_unclip(root: str | Path, seed: int = 0) -> Path:
    """Build a tiny random unCLIP/Karlo image-variation pipeline under ``root``/unclip.

    The layout of ``kakaobrain/karlo-v1-alpha-image-variations`` (decoder, text_proj,
    super_res_first/last, schedulers, CLIP encoders), loadable with diffusers'
    ``UnCLIPImageVariationPipeline.from_pretrained``; configs as diffusers' own fast tests.
    Embedding dim ``TINY_DIM``; the decoder renders 32 px, super-resolution 64 px.
    """
    from diffusers import UnCLIPImageVariationPipeline

    out_dir = Path(root) / "unclip"
    UnCLIPImageVariationPipeline(**_tiny_unclip_parts(Path(root), seed)).save_pretrained(out_dir)
    return out_dir


def make_tiny_karlo(root: str | Path, seed: int = 0) -> tuple[Path, Path]:
    """Tiny random Karlo text-to-image and image-variation repos under ``root``: ``(karlo, unclip)``.

    ``root``/karlo has the layout of ``kakaobrain/karlo-v1-alpha`` (diffusers' ``UnCLIPPipeline``:
    ``prior/`` a ``PriorTransformer`` with a random, non-zero ``clip_mean``, ``prior_scheduler/``,
    and the decoder side); ``root``/unclip is :func:`make_tiny_unclip`'s, built from the same
    decoder, text encoder and tokenizer (as diffusers' ``convert_unclip_txt2img_to_image_variation.py``).
    """
    from diffusers import (
        PriorTransformer,
        UnCLIPImageVariationPipeline,
        UnCLIPPipeline,
        UnCLIPScheduler,
    )

    root = Path(root)
    parts = _tiny_unclip_parts(root, seed)
    UnCLIPImageVariationPipeline(**parts).save_pretrained(root / "unclip")
    torch.manual_seed(seed + 1)
    prior = PriorTransformer(num_attention_heads=2, attention_head_dim=12, embedding_dim=TINY_DIM, num_layers=1)
    with torch.no_grad():
        prior.clip_std.copy_(torch.rand_like(prior.clip_std) + 0.5)
        prior.clip_mean.copy_(torch.randn_like(prior.clip_mean) * 0.5 + 0.25)
    prior_scheduler = UnCLIPScheduler(variance_type="fixed_small_log", prediction_type="sample",
                                      num_train_timesteps=1000, clip_sample=True, clip_sample_range=5.0)
    txt2img = {k: v for k, v in parts.items() if k not in ("feature_extractor", "image_encoder")}
    UnCLIPPipeline(prior=prior, prior_scheduler=prior_scheduler, **txt2img).save_pretrained(root / "karlo")
    return root / "karlo", root / "unclip"


def _tiny_unclip_parts(root: Path, seed: int) -> dict:
    """The components of a tiny image-variation pipeline (``UnCLIPImageVariationPipeline``'s)."""
    from diffusers import UnCLIPScheduler, UNet2DConditionModel, UNet2DModel
    from diffusers.pipelines.deprecated.unclip.text_proj import UnCLIPTextProjModel
    from transformers import (
        CLIPImageProcessor,
        CLIPTextConfig,
        CLIPTextModelWithProjection,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
    )

    dim = TINY_DIM
    torch.manual_seed(seed)
    tokenizer = make_tiny_clip_tokenizer(root / "_unclip_tokenizer")
    text_encoder = CLIPTextModelWithProjection(CLIPTextConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, hidden_size=dim, projection_dim=dim, intermediate_size=37,
        layer_norm_eps=1e-05, num_attention_heads=4, num_hidden_layers=2, vocab_size=len(tokenizer),
        max_position_embeddings=tokenizer.model_max_length)).eval()
    image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=dim, projection_dim=dim, num_hidden_layers=2, num_attention_heads=4, image_size=TINY_IMAGE_SIZE,
        intermediate_size=37, patch_size=8, num_channels=3)).eval()
    feature_extractor = CLIPImageProcessor(
        crop_size=TINY_IMAGE_SIZE, do_center_crop=True, do_normalize=True, do_resize=True,
        image_mean=[0.48145466, 0.4578275, 0.40821073], image_std=[0.26862954, 0.26130258, 0.27577711],
        resample=3, size=TINY_IMAGE_SIZE)
    block0 = 32
    text_proj = UnCLIPTextProjModel(clip_embeddings_dim=dim, time_embed_dim=block0 * 4, cross_attention_dim=dim,
                                    clip_extra_context_tokens=2)
    decoder = UNet2DConditionModel(
        sample_size=32, in_channels=3, out_channels=6,
        down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
        up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
        mid_block_type="UNetMidBlock2DSimpleCrossAttn", block_out_channels=(block0, block0 * 2),
        layers_per_block=1, cross_attention_dim=dim, attention_head_dim=4,
        resnet_time_scale_shift="scale_shift", class_embed_type="identity")

    def super_res():
        return UNet2DModel(sample_size=64, layers_per_block=1, block_out_channels=(block0, block0 * 2),
                           down_block_types=("ResnetDownsampleBlock2D", "ResnetDownsampleBlock2D"),
                           up_block_types=("ResnetUpsampleBlock2D", "ResnetUpsampleBlock2D"),
                           in_channels=6, out_channels=3)

    return dict(
        decoder=decoder, text_encoder=text_encoder, tokenizer=tokenizer, text_proj=text_proj,
        feature_extractor=feature_extractor, image_encoder=image_encoder, super_res_first=super_res(),
        super_res_last=super_res(),
        decoder_scheduler=UnCLIPScheduler(variance_type="learned_range", prediction_type="epsilon",
                                          num_train_timesteps=1000),
        super_res_scheduler=UnCLIPScheduler(variance_type="fixed_small_log", prediction_type="epsilon",
                                            num_train_timesteps=1000),
    )
