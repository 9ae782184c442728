"""The unCLIP / Karlo backend: :class:`VSlerpUnCLIPPipeline` (the paper's own generator).

``kakaobrain/karlo-v1-alpha-image-variations``: CLIP ViT-L/14 image embeddings (768-d) →
decoder (64 px, conditioned through ``text_proj`` on the embedding and the empty prompt) →
two super-resolution UNets (256 px). diffusers keeps it under ``pipelines/deprecated/unclip``.
Each batch of cells is rendered by diffusers' own ``UnCLIPImageVariationPipeline`` from
``image_embeddings``, with one copy of the call's generator per cell — so every cell draws the
noise a single render with that generator draws (decoder and super-resolution alike).
The grid, statistics, checks and the call itself: :class:`~vslerp.pipelines.base.VSlerpBasePipeline`.
"""

from __future__ import annotations

import numpy as np
import torch

from .base import RenderSettings, VSlerpBasePipeline, clone_generator
from .inputs import image_path_or_prompt
from .loading import load_unclip_components

__all__ = ["VSlerpUnCLIPPipeline", "load_unclip_components"]


class VSlerpUnCLIPPipeline(VSlerpBasePipeline):
    """vSLERP on unCLIP/Karlo image variations (components as ``UnCLIPImageVariationPipeline``).

    The interface of :class:`~vslerp.pipelines.VSlerpPipeline`, with these differences: targets
    are images or embeddings (Karlo image variations has no prior, so no prompts); the image
    mean must come from ``stats`` (there is no ``clip_mean``); the output size is fixed by the
    models (256 px for Karlo); ``num_inference_steps`` are the decoder's,
    ``super_res_num_inference_steps`` the super-resolution's (7 by default); guidance defaults
    to 8.0 (diffusers' default); ``latents``, ``negative_image_embeds``,
    ``callback_on_step_end`` and ``output_type="latent"`` are refused (diffusers' pipeline
    takes none of them).
    """

    backend = "unclip"
    default_guidance_scale = 8.0  # UnCLIPImageVariationPipeline's
    model_cpu_offload_seq = "text_encoder->image_encoder->text_proj->decoder->super_res_first->super_res_last"
    _callback_tensor_inputs: list[str] = []
    _min_steps = 2  # UnCLIPScheduler divides by steps - 1

    def __init__(self, decoder, text_encoder, tokenizer, text_proj, feature_extractor, image_encoder,
                 super_res_first, super_res_last, decoder_scheduler, super_res_scheduler):
        super().__init__()
        self.register_modules(decoder=decoder, text_encoder=text_encoder, tokenizer=tokenizer, text_proj=text_proj,
                              feature_extractor=feature_extractor, image_encoder=image_encoder,
                              super_res_first=super_res_first, super_res_last=super_res_last,
                              decoder_scheduler=decoder_scheduler, super_res_scheduler=super_res_scheduler)

    @property
    def default_size(self) -> int:
        return int(self.super_res_first.config.sample_size)

    # -- backend interface -----------------------------------------------------------------------
    def _clip_processor(self):
        return self.feature_extractor

    def _denoiser(self):
        return self.decoder

    def _main_scheduler(self):
        return self.decoder_scheduler

    def _default_statistics(self):
        raise ValueError("the unCLIP backend needs statistics (no prior clip_mean)")

    def _default_negative(self):
        return None  # unCLIP's unconditional branch is text_proj's learned embedding

    def size_rule(self) -> tuple[int, int | None]:
        """unCLIP/Karlo renders the super-resolution UNet's size only (256 px for Karlo)."""
        return 1, self.default_size

    def prompt_to_image_embedding(self, prompts, generator=None, num_inference_steps: int = 25,
                                  guidance_scale: float = 4.0) -> torch.Tensor:
        raise ValueError("the unCLIP image-variations backend has no prior: a prompt cannot become an image "
                         "embedding; give an image or a (D,) embedding as target")

    def _check_backend(self, settings: RenderSettings, target) -> list[str]:
        if isinstance(target, str) and image_path_or_prompt(target).kind == "prompt":
            raise ValueError(f"target image not found: {target} (the unCLIP backend takes no prompts)")
        if settings.latents is not None or settings.callback_on_step_end is not None:
            raise ValueError("latents and callback_on_step_end are not supported by the unCLIP backend")
        if settings.output_type == "latent":
            raise ValueError("output_type='latent' is not supported by the unCLIP backend")
        if settings.negative is not None:
            raise ValueError("negative_image_embeds is not supported by the unCLIP backend")
        return []  # no callbacks: callback_on_step_end_tensor_inputs is moot

    def _progress_steps(self, settings: RenderSettings) -> None:
        return None  # diffusers' pipeline shows its decoder and super-resolution bars

    # -- rendering -------------------------------------------------------------------------------
    def _variation_pipeline(self):
        """diffusers' ``UnCLIPImageVariationPipeline`` on this pipeline's components."""
        from diffusers import UnCLIPImageVariationPipeline

        pipe = UnCLIPImageVariationPipeline(**self.components)
        pipe.set_progress_bar_config(**self._bar_config)
        return pipe

    def _render_chunk(self, chunk, noise, device, settings: RenderSettings, tick, init=None):
        generators = [clone_generator(gen) for gen in noise]  # one copy per cell
        images = self._variation_pipeline()(
            image_embeddings=chunk.to(device=device, dtype=self.decoder.dtype),
            decoder_num_inference_steps=settings.num_inference_steps,
            super_res_num_inference_steps=settings.super_res_num_inference_steps,
            generator=generators, decoder_guidance_scale=settings.guidance_scale,
            output_type="pil" if settings.output_type == "pil" else "np").images
        if settings.output_type == "pt":
            images = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2) * 2 - 1  # (B, 3, H, W)
        return images
