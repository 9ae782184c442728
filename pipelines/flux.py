"""The FLUX.1 backend: :class:`VSlerpFluxPipeline`, an adapter over diffusers' own ``FluxPipeline``.

FLUX.1 (``black-forest-labs/FLUX.1-dev``) with the XLabs IP-Adapter (``XLabs-AI/flux-ip-adapter``,
``ip_adapter.safetensors`` at its root) loaded by diffusers' ``FluxIPAdapterMixin.load_ip_adapter``;
its image encoder, CLIP ViT-L/14 (``openai/clip-vit-large-patch14``, 768-d), is another repo. The
adapter's ``ImageProjection`` reads the encoder's projected ``image_embeds``, so vSLERP edits them
as for SD's IP-Adapter: everything but the components and the arguments below is
:class:`~vslerp.pipelines.ip_adapter.IPAdapterBackend`'s (loading, saving, the per-cell
embeddings, ``ip_adapter_scale``). Each batch of B cells goes to diffusers' ``FluxPipeline``
(``FluxImg2ImgPipeline`` for ``strength`` < 1) as ``ip_adapter_image_embeds=[(B, 1, D)]`` and
``negative_ip_adapter_image_embeds=[(B, 1, D)]``, the prompt (CLIP + T5; default empty), the
distilled ``guidance_scale`` (3.5) and ``true_cfg_scale`` with ``negative_prompt``. The negative
image embedding is diffusers' own default for FLUX: the embedding of a black image (diffusers
encodes ``np.zeros((width, height, 3))`` whenever the call has IP-Adapter embeddings and no
negative ones; it is used when ``true_cfg_scale`` > 1 and a negative prompt is given).
Sizes are multiples of 16 (the VAE's factor 8 × FLUX's 2×2 latent packing).
"""

from __future__ import annotations

import numpy as np
import torch

from vslerp.stats.encode import quiet_torchvision_fallback
from vslerp.stats.models import FLUX, backend_record

from .ip_adapter import IPAdapterBackend
from .request import RenderSettings

with quiet_torchvision_fallback():
    from diffusers.loaders import FluxIPAdapterMixin

__all__ = ["VSlerpFluxPipeline"]


class VSlerpFluxPipeline(FluxIPAdapterMixin, IPAdapterBackend):
    """vSLERP through the XLabs IP-Adapter on FLUX.1 (``FluxPipeline``).

    Components as diffusers' ``FluxPipeline`` with the adapter loaded: scheduler, vae, text_encoder,
    tokenizer (CLIP), text_encoder_2, tokenizer_2 (T5), transformer (with the adapter's processors),
    image_encoder (CLIP ViT-L/14), feature_extractor. Guidance 3.5 (distilled), 1024 px by default;
    statistics are needed (no prior).
    """

    backend = FLUX
    _backend_options = backend_record(FLUX).options
    _base_name = "FLUX.1"
    _example_base, _example_subfolder, _example_weight = ("black-forest-labs/FLUX.1-dev", "",
                                                          "ip_adapter.safetensors")
    _example_adapter = "XLabs-AI/flux-ip-adapter"
    default_guidance_scale = backend_record(FLUX).guidance  # FluxPipeline's distilled guidance
    default_size = backend_record(FLUX).size  # FluxPipeline's: 128 × the VAE's factor 8
    model_cpu_offload_seq = "text_encoder->text_encoder_2->image_encoder->transformer->vae"
    _optional_components = ["image_encoder", "feature_extractor"]
    _callback_tensor_inputs = ["latents", "prompt_embeds"]  # diffusers'

    def __init__(self, scheduler, vae, text_encoder, tokenizer, text_encoder_2, tokenizer_2, transformer,
                 image_encoder=None, feature_extractor=None):
        super().__init__()
        self.register_modules(scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                              text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2, transformer=transformer,
                              image_encoder=image_encoder, feature_extractor=feature_extractor)
        self._init_common()

    @classmethod
    def _diffusers_class(cls, img2img: bool = False):
        from diffusers import FluxImg2ImgPipeline, FluxPipeline

        return FluxImg2ImgPipeline if img2img else FluxPipeline

    def _pipeline_config(self) -> dict:
        return {}

    def _load_adapter(self, source: str, subfolder: str, weight: str) -> None:
        """diffusers' ``FluxIPAdapterMixin.load_ip_adapter`` (the image encoder is registered already)."""
        self.load_ip_adapter(source, weight_name=weight, subfolder=subfolder or "")

    def _denoiser(self):
        return self.transformer

    def _default_negative(self) -> torch.Tensor:
        """diffusers' FLUX default: the embedding of a black image (D,), encoded once per image encoder."""
        encoder = self.image_encoder
        key = (id(encoder), encoder.dtype)
        if getattr(self, "_black", (None, None))[0] != key:
            size = int(encoder.config.image_size)
            self._black = key, self.encode_image([np.zeros((size, size, 3), dtype=np.uint8)])[0]
        return self._black[1].clone()

    def _latents_shape(self, height: int, width: int) -> tuple[int, ...]:
        """FLUX's packed latents of one image: (1, (h/16)·(w/16), transformer in_channels)."""
        factor = 2 * self.vae_scale_factor
        return 1, (height // factor) * (width // factor), int(self.transformer.config.in_channels)

    def _noise_shape(self, height: int, width: int) -> tuple[int, ...]:
        """What ``prepare_latents`` draws before packing: (1, in_channels / 4, 2·h/16, 2·w/16)."""
        factor = 2 * self.vae_scale_factor
        return 1, int(self.transformer.config.in_channels) // 4, 2 * (height // factor), 2 * (width // factor)

    def _embeds_kwargs(self, embeds: torch.Tensor, settings: RenderSettings) -> dict:
        negative = settings.negative.to(embeds)[None, None].expand(embeds.shape[0], -1, -1)
        return {"ip_adapter_image_embeds": [embeds], "negative_ip_adapter_image_embeds": [negative],
                "true_cfg_scale": settings.true_cfg_scale}

    def _init_kwargs(self, init: list, settings: RenderSettings) -> dict:
        """img2img's arguments: the photos and the size (``FluxImg2ImgPipeline`` resizes them itself)."""
        return {"image": list(init), "height": settings.height, "width": settings.width}

