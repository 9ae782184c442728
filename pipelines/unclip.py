"""The unCLIP / Karlo backend: :class:`VSlerpUnCLIPPipeline` (the paper's own generator).

``kakaobrain/karlo-v1-alpha-image-variations``: CLIP ViT-L/14 image embeddings (768-d) →
decoder (64 px, conditioned through ``text_proj`` on the embedding and the empty prompt) →
two super-resolution UNets (256 px). diffusers keeps it under ``pipelines/deprecated/unclip``.
Each batch of cells is rendered by diffusers' own ``UnCLIPImageVariationPipeline`` from
``image_embeddings``, with one copy of the call's generator per cell — so every cell draws the
noise a single render with that generator draws (decoder and super-resolution alike).
Karlo's text-to-image repo (``kakaobrain/karlo-v1-alpha``) adds its ``prior`` (a
``PriorTransformer``) and ``prior_scheduler``: the prior's ``clip_mean`` is the default image
mean (zero data), and prompts become image embeddings through it as in diffusers' ``UnCLIPPipeline``
(the image-variations repo's text encoder and tokenizer are that repo's, copied by diffusers'
``convert_unclip_txt2img_to_image_variation.py``).
The grid, statistics, checks and the call itself: :class:`~vslerp.pipelines.base.VSlerpBasePipeline`.
"""

from __future__ import annotations

import numpy as np
import torch

from vslerp.stats import ClipEncoders, Statistics
from vslerp.stats.models import UNCLIP, backend_record, size_rule_of

from .base import RenderSettings, VSlerpBasePipeline, clone_generator
from .inputs import image_path_or_prompt
from .loading import DEFAULT_KARLO_PRIOR, load_karlo_prior, load_unclip_components

__all__ = ["DEFAULT_KARLO_PRIOR", "VSlerpUnCLIPPipeline", "load_karlo_prior", "load_unclip_components"]

_PRIOR_PARTS = ("prior", "prior_scheduler")  # Karlo's, not UnCLIPImageVariationPipeline's


class VSlerpUnCLIPPipeline(VSlerpBasePipeline):
    """vSLERP on unCLIP/Karlo image variations (components as ``UnCLIPImageVariationPipeline``).

    The interface of :class:`~vslerp.pipelines.VSlerpPipeline`, with these differences: the
    prior (``prior``, ``prior_scheduler``: Karlo's, ``from_pretrained(prior=...)``, default
    ``kakaobrain/karlo-v1-alpha``) is optional: with it, prompt targets go through it and its
    ``clip_mean`` is the image mean when no ``stats`` are given; without it (the default prior
    not available, ``stats`` given) targets are images or embeddings only; the output size is
    fixed by the models (256 px for Karlo); ``num_inference_steps`` are the decoder's,
    ``super_res_num_inference_steps`` the super-resolution's (7 by default); guidance defaults
    to 8.0 (diffusers' default); ``latents``, ``negative_image_embeds``,
    ``callback_on_step_end`` and ``output_type="latent"`` are refused (diffusers' pipeline
    takes none of them).
    """

    backend = UNCLIP
    default_guidance_scale = backend_record(UNCLIP).guidance  # UnCLIPImageVariationPipeline's
    model_cpu_offload_seq = "text_encoder->image_encoder->text_proj->decoder->super_res_first->super_res_last"
    _exclude_from_cpu_offload = ["prior"]  # as diffusers' UnCLIPPipeline
    _optional_components = list(_PRIOR_PARTS)
    _callback_tensor_inputs: list[str] = []
    _min_steps = 2  # UnCLIPScheduler divides by steps - 1

    def __init__(self, decoder, text_encoder, tokenizer, text_proj, feature_extractor, image_encoder,
                 super_res_first, super_res_last, decoder_scheduler, super_res_scheduler, prior=None,
                 prior_scheduler=None):
        super().__init__()
        self.register_modules(decoder=decoder, text_encoder=text_encoder, tokenizer=tokenizer, text_proj=text_proj,
                              feature_extractor=feature_extractor, image_encoder=image_encoder,
                              super_res_first=super_res_first, super_res_last=super_res_last,
                              decoder_scheduler=decoder_scheduler, super_res_scheduler=super_res_scheduler,
                              prior=prior, prior_scheduler=prior_scheduler)

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

    def _default_statistics(self) -> Statistics:
        """Karlo's prior ``clip_mean`` (its training mean of ViT-L/14 image embeddings)."""
        if self.prior is None:
            raise ValueError(f"the unCLIP backend needs stats= (a statistics file, Statistics or a (D,) mean tensor): "
                             f"it was loaded without Karlo's prior ({DEFAULT_KARLO_PRIOR}), whose clip_mean is the "
                             "default image mean")
        return Statistics.from_prior(self.prior, model_id=self.model_ids.get("prior"))

    def clip_encoders(self) -> ClipEncoders:
        """The image-variations repo's encoders, named by it (the prior repo holds no image encoder)."""
        return ClipEncoders(self.image_encoder, self._clip_processor(), self.text_encoder, self.tokenizer,
                            model_id=self.model_ids.get("decoder"))

    def _stats_model_args(self) -> str | None:
        return self.model_ids.get("decoder")  # `vslerp stats compute --model` takes the image-variations repo

    def _default_negative(self):
        return None  # unCLIP's unconditional branch is text_proj's learned embedding

    def size_rule(self) -> tuple[int, int | None]:
        """unCLIP/Karlo renders the super-resolution UNet's size only (256 px for Karlo)."""
        return size_rule_of(backend_record(self.backend), self.super_res_first.config)

    @torch.no_grad()
    def prompt_to_image_embedding(self, prompts, generator=None, num_inference_steps: int = 25,
                                  guidance_scale: float = 4.0) -> torch.Tensor:
        """Prompts → raw image embeddings (N, D) float32 through Karlo's prior, as the prior stage of
        diffusers' ``UnCLIPPipeline`` (``prior_num_inference_steps``, ``prior_guidance_scale``).

        Run by diffusers' ``KandinskyV22PriorPipeline`` on Karlo's components: its prior loop is
        ``UnCLIPPipeline``'s (the same prompt encoding, initial noise, classifier-free guidance
        and ``UnCLIPScheduler.step(..., prev_timestep=...)``, then ``post_process_latents``), so
        the embeddings are those ``UnCLIPPipeline`` hands its decoder for the same generator
        (tests/test_zero_data_mean.py checks it). With ``guidance_scale`` ≤ 1 there is no
        guidance (``UnCLIPPipeline`` would still guide when its decoder guidance is above 1).
        """
        if self.prior is None:
            raise ValueError(f"this unCLIP pipeline was loaded without Karlo's prior ({DEFAULT_KARLO_PRIOR}): a "
                             "prompt cannot become an image embedding; give an image or a (D,) embedding, or load "
                             "it with prior=")
        return self._prior_image_embeds(prompts, self.feature_extractor, generator, num_inference_steps, guidance_scale)

    def _check_backend(self, settings: RenderSettings, target) -> list[str]:
        if self.prior is None and isinstance(target, str) and image_path_or_prompt(target).kind == "prompt":
            raise ValueError(f"target image not found: {target} (this unCLIP pipeline was loaded without Karlo's "
                             f"prior, {DEFAULT_KARLO_PRIOR}: it takes no prompts)")
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

        parts = {name: part for name, part in self.components.items() if name not in _PRIOR_PARTS}
        pipe = UnCLIPImageVariationPipeline(**parts)
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
