"""Tiny random models built from configs, for tests and `--tiny-random`: the shared CLIP parts,
Kandinsky 2.2 and unCLIP/Karlo (``testing_sd``: Stable unCLIP, SD/SDXL, IP-Adapter;
``testing_clip``: CLIP folders to pair with them).

No weights are downloaded: every component is built from a small config with a seeded
random init and written with ``save_pretrained`` in the layout of the real hub repos, so the
real ``from_pretrained`` code paths load them. Images rendered with them are noise.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import torch

__all__ = ["CLIP_IMAGE_MEAN", "CLIP_IMAGE_STD", "TINY_DIM", "TINY_IMAGE_SIZE", "make_tiny_clip_tokenizer",
           "make_tiny_kandinsky", "make_tiny_karlo", "make_tiny_unclip", "tiny_clip_image_processor",
           "tiny_clip_text_config", "tiny_clip_text_encoder", "tiny_clip_vision_config",
           "tiny_clip_vision_encoder", "tiny_prior"]

TINY_DIM = 32  # embedding dim of the tiny CLIP encoders (1280 for the real ViT-bigG/14)
TINY_IMAGE_SIZE = 32  # CLIP input size of the tiny vision encoder (224 for the real one)
CLIP_IMAGE_MEAN = [0.48145466, 0.4578275, 0.40821073]  # OpenAI CLIP's pixel normalisation
CLIP_IMAGE_STD = [0.26862954, 0.26130258, 0.27577711]


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


def tiny_clip_text_config(tokenizer, projection_dim: int = TINY_DIM, hidden_act: str = "quick_gelu"):
    """The ``CLIPTextConfig`` of every tiny text tower (width 32, 2 layers) for ``tokenizer``."""
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, hidden_size=32, projection_dim=projection_dim,
        intermediate_size=37, layer_norm_eps=1e-05, num_attention_heads=4, num_hidden_layers=2,
        vocab_size=len(tokenizer), max_position_embeddings=tokenizer.model_max_length, hidden_act=hidden_act)


def tiny_clip_text_encoder(tokenizer, projection: bool = True, hidden_act: str = "quick_gelu"):
    """A random ``CLIPTextModelWithProjection`` (``projection=False``: ``CLIPTextModel``), in eval mode."""
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    cls = CLIPTextModelWithProjection if projection else CLIPTextModel
    return cls(tiny_clip_text_config(tokenizer, hidden_act=hidden_act)).eval()


def tiny_clip_vision_config(dim: int = TINY_DIM):
    """The ``CLIPVisionConfig`` of every tiny image encoder: ``dim``-d, 32 px input, patches of 8."""
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(hidden_size=dim, projection_dim=dim, num_hidden_layers=2, num_attention_heads=4,
                            image_size=TINY_IMAGE_SIZE, intermediate_size=37, patch_size=8, num_channels=3)


def tiny_clip_vision_encoder(dim: int = TINY_DIM):
    """A random ``CLIPVisionModelWithProjection`` (projected ``image_embeds``), in eval mode."""
    from transformers import CLIPVisionModelWithProjection

    return CLIPVisionModelWithProjection(tiny_clip_vision_config(dim)).eval()


def tiny_clip_image_processor(size: int = TINY_IMAGE_SIZE):
    """A CLIP image processor as the real ones (bicubic, centre crop, CLIP normalisation), needing no torchvision."""
    from vslerp.stats.encode import clip_image_processor_class

    return clip_image_processor_class()(crop_size=size, size=size, do_center_crop=True, do_normalize=True, do_resize=True,
                              image_mean=CLIP_IMAGE_MEAN, image_std=CLIP_IMAGE_STD, resample=3)


def tiny_prior(random_std: bool = False):
    """A random ``PriorTransformer`` with a random, non-zero ``clip_mean`` (a usable zero-data mean);
    ``clip_std`` ones, or (``random_std``) random in [0.5, 1.5)."""
    from diffusers import PriorTransformer

    prior = PriorTransformer(num_attention_heads=2, attention_head_dim=12, embedding_dim=TINY_DIM, num_layers=1)
    with torch.no_grad():
        prior.clip_std.copy_(torch.rand_like(prior.clip_std) + 0.5 if random_std else torch.ones_like(prior.clip_std))
        prior.clip_mean.copy_(torch.randn_like(prior.clip_mean) * 0.5 + 0.25)
    return prior


def _prior_scheduler(clip_sample_range: float):
    from diffusers import UnCLIPScheduler

    return UnCLIPScheduler(variance_type="fixed_small_log", prediction_type="sample", num_train_timesteps=1000,
                           clip_sample=True, clip_sample_range=clip_sample_range)


@contextlib.contextmanager
def _quiet_build():
    """No "Writing model shards" bars nor "requires torchvision" warning while tiny models are built."""
    from transformers.utils import logging

    from vslerp.stats.encode import quiet_torchvision_fallback

    shown = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        with quiet_torchvision_fallback():
            yield
    finally:
        if shown:
            logging.enable_progress_bar()


@_quiet_build()
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
        UNet2DConditionModel,
        VQModel,
    )

    root = Path(root)
    prior_dir, decoder_dir = root / "prior", root / "decoder"
    torch.manual_seed(seed)
    tokenizer = make_tiny_clip_tokenizer(root / "_tokenizer")
    text_encoder, image_encoder = tiny_clip_text_encoder(tokenizer), tiny_clip_vision_encoder()
    KandinskyV22PriorPipeline(
        prior=tiny_prior(), image_encoder=image_encoder, text_encoder=text_encoder, tokenizer=tokenizer,
        scheduler=_prior_scheduler(10.0), image_processor=tiny_clip_image_processor(),
    ).save_pretrained(prior_dir)
    unet = UNet2DConditionModel(
        in_channels=4, out_channels=8, addition_embed_type="image",
        down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
        up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
        mid_block_type="UNetMidBlock2DSimpleCrossAttn", block_out_channels=(32, 64), layers_per_block=1,
        encoder_hid_dim=TINY_DIM, encoder_hid_dim_type="image_proj", cross_attention_dim=64, attention_head_dim=4,
        resnet_time_scale_shift="scale_shift", class_embed_type=None)
    movq = VQModel(
        block_out_channels=[32, 64], down_block_types=["DownEncoderBlock2D", "AttnDownEncoderBlock2D"],
        in_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=8, norm_type="spatial",
        num_vq_embeddings=12, out_channels=3, up_block_types=["AttnUpDecoderBlock2D", "UpDecoderBlock2D"],
        vq_embed_dim=4)
    scheduler = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=0.00085, beta_end=0.012,
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon",
                              thresholding=False)
    KandinskyV22Pipeline(unet=unet, scheduler=scheduler, movq=movq).save_pretrained(decoder_dir)
    return prior_dir, decoder_dir


@_quiet_build()
def make_tiny_karlo(root: str | Path, seed: int = 0, prior: bool = True) -> tuple[Path, Path]:
    """Tiny random Karlo text-to-image and image-variation repos under ``root``: ``(karlo, unclip)``.

    ``root``/unclip has the layout of ``kakaobrain/karlo-v1-alpha-image-variations`` (decoder,
    text_proj, super_res_first/last, schedulers, CLIP encoders; diffusers'
    ``UnCLIPImageVariationPipeline``; configs as diffusers' own fast tests): the decoder renders
    32 px, super-resolution 64 px. ``root``/karlo has the layout of ``kakaobrain/karlo-v1-alpha``
    (``UnCLIPPipeline``: ``prior/`` with a random, non-zero ``clip_mean``, ``prior_scheduler/``, and
    the same decoder, text encoder and tokenizer, as diffusers'
    ``convert_unclip_txt2img_to_image_variation.py``); ``prior=False`` writes only ``unclip``.
    """
    from diffusers import UnCLIPImageVariationPipeline, UnCLIPPipeline

    root = Path(root)
    parts = _unclip_parts(root, seed)
    UnCLIPImageVariationPipeline(**parts).save_pretrained(root / "unclip")
    if prior:
        torch.manual_seed(seed + 1)
        txt2img = {k: v for k, v in parts.items() if k not in ("feature_extractor", "image_encoder")}
        UnCLIPPipeline(prior=tiny_prior(random_std=True), prior_scheduler=_prior_scheduler(5.0),
                       **txt2img).save_pretrained(root / "karlo")
    return root / "karlo", root / "unclip"


def make_tiny_unclip(root: str | Path, seed: int = 0) -> Path:
    """The tiny unCLIP/Karlo image-variation folder ``root``/unclip alone (:func:`make_tiny_karlo`'s)."""
    return make_tiny_karlo(root, seed, prior=False)[1]


def _unclip_parts(root: Path, seed: int) -> dict:
    """The components of a tiny image-variation pipeline (``UnCLIPImageVariationPipeline``'s)."""
    from diffusers import UnCLIPScheduler, UNet2DConditionModel, UNet2DModel
    from diffusers.pipelines.deprecated.unclip.text_proj import UnCLIPTextProjModel

    torch.manual_seed(seed)
    tokenizer = make_tiny_clip_tokenizer(root / "_unclip_tokenizer")
    text_encoder, image_encoder = tiny_clip_text_encoder(tokenizer), tiny_clip_vision_encoder()
    block0 = 32
    text_proj = UnCLIPTextProjModel(clip_embeddings_dim=TINY_DIM, time_embed_dim=block0 * 4,
                                    cross_attention_dim=TINY_DIM, clip_extra_context_tokens=2)
    decoder = UNet2DConditionModel(
        sample_size=32, in_channels=3, out_channels=6,
        down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
        up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
        mid_block_type="UNetMidBlock2DSimpleCrossAttn", block_out_channels=(block0, block0 * 2),
        layers_per_block=1, cross_attention_dim=TINY_DIM, attention_head_dim=4,
        resnet_time_scale_shift="scale_shift", class_embed_type="identity")

    def super_res():
        return UNet2DModel(sample_size=64, layers_per_block=1, block_out_channels=(block0, block0 * 2),
                           down_block_types=("ResnetDownsampleBlock2D", "ResnetDownsampleBlock2D"),
                           up_block_types=("ResnetUpsampleBlock2D", "ResnetUpsampleBlock2D"),
                           in_channels=6, out_channels=3)

    return dict(
        decoder=decoder, text_encoder=text_encoder, tokenizer=tokenizer, text_proj=text_proj,
        feature_extractor=tiny_clip_image_processor(), image_encoder=image_encoder,
        super_res_first=super_res(), super_res_last=super_res(),
        decoder_scheduler=UnCLIPScheduler(variance_type="learned_range", prediction_type="epsilon",
                                          num_train_timesteps=1000),
        super_res_scheduler=UnCLIPScheduler(variance_type="fixed_small_log", prediction_type="epsilon",
                                            num_train_timesteps=1000),
    )
