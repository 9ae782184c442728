"""The Stable unCLIP 2.1 backend: :class:`VSlerpStableUnCLIPPipeline`.

``stabilityai/stable-diffusion-2-1-unclip`` (CLIP ViT-H/14 image embeddings, 1024-d) and
``stabilityai/stable-diffusion-2-1-unclip-small`` (ViT-L/14, 768-d), 768 px: a Stable Diffusion
2.1 UNet conditioned on the prompt (cross-attention) and on a noised CLIP image embedding
(``class_labels``). Each batch of cells is rendered by diffusers' own
``StableUnCLIPImg2ImgPipeline`` from ``image_embeds`` (B, D), with ``prompt`` repeated per cell
and one copy of the call's generator per cell: every cell draws what a single render with that
generator draws (the embedding's noise, then the initial latents), so a θ=0 cell equals
diffusers' render of the source embedding at the same seed.

The default image mean is the ``image_normalizer``'s ``mean`` (:func:`image_normalizer_statistics`):
diffusers' conversion (``convert_from_ckpt.stable_unclip_image_noising_components``) fills it,
with ``std``, from the original config's ``clip_stats_path`` — Karlo's ``ViT-L-14_stats.th``
(``clip_mean``, ``clip_std`` of raw CLIP ViT-L/14 image embeddings) in the ``-l`` (``-small``)
config — and leaves the identity (mean 0, std 1) where the config names none, as the ViT-H
(``-h``) config does: that is no mean, and ``stats=`` stays required.
The grid, statistics, checks and the call itself: :class:`~vslerp.pipelines.base.VSlerpBasePipeline`.
"""

from __future__ import annotations

import torch
from diffusers.utils.torch_utils import randn_tensor

from vslerp.stats import ModalityStats, Statistics
from vslerp.stats.models import STABLE_UNCLIP, backend_record, size_rule_of

from .base import RenderSettings, VSlerpBasePipeline, clone_generator
from .inputs import image_path_or_prompt

__all__ = ["DEFAULT_STABLE_UNCLIP", "VSlerpStableUnCLIPPipeline", "image_normalizer_statistics"]

DEFAULT_STABLE_UNCLIP = "stabilityai/stable-diffusion-2-1-unclip"  # ViT-H/14; "-small": ViT-L/14
_NEEDS_STATS = ("the stable-unclip backend needs stats= (a statistics file, Statistics or a (D,) mean tensor): "
                "{model}'s image_normalizer is the identity (mean 0, std 1: no image mean, as Stable unCLIP-H's); "
                "compute one with `vslerp stats compute --model {model}` (the image encoder's own space)")


def image_normalizer_statistics(normalizer, model_id: str | None = None) -> Statistics | None:
    """The image mean a ``StableUnCLIPImageNormalizer`` holds (its ``mean``, ``std``: (1, D)), as
    :class:`Statistics` with ``source="image_normalizer_mean"``; None for the identity (mean all
    zeros and std all ones: diffusers' initial values, kept where the original config had no
    ``clip_stats_path``)."""
    mean = normalizer.mean.detach().to("cpu", torch.float64).reshape(-1)  # (D,)
    std = normalizer.std.detach().to("cpu", torch.float64).reshape(-1)  # (D,)
    if not bool(mean.any()) and bool((std == 1).all()):
        return None
    return Statistics(ModalityStats.from_mean(mean, std), None,
                      {"source": "image_normalizer_mean", "model_id": model_id})


class VSlerpStableUnCLIPPipeline(VSlerpBasePipeline):
    """vSLERP on Stable unCLIP 2.1 (components as diffusers' ``StableUnCLIPImg2ImgPipeline``).

    Components: feature_extractor (CLIPImageProcessor), image_encoder
    (CLIPVisionModelWithProjection: the cells' space), image_normalizer
    (StableUnCLIPImageNormalizer), image_noising_scheduler, tokenizer, text_encoder
    (CLIPTextModel, no projection: it conditions the UNet only), unet, scheduler, vae.

    The interface of :class:`~vslerp.pipelines.VSlerpPipeline`, with these differences: targets
    are images or embeddings (there is no prior: a prompt cannot become an image embedding, and
    ``encode_text`` is refused); ``prompt`` / ``negative_prompt`` condition the UNet of every
    cell instead (default the empty prompt, as diffusers); ``noise_level`` (0 ..
    ``image_noising_scheduler.config.num_train_timesteps`` − 1, default 0) is the noise diffusers
    adds to each cell's embedding; without ``stats`` the image mean is the ``image_normalizer``'s
    (``-small``: Karlo's ViT-L/14 mean), refused where that is the identity (the ViT-H model);
    guidance defaults to 10 and the size to the UNet's (768 px), any multiple of 8;
    ``negative_image_embeds`` is refused (diffusers guides against the all-zeros embedding);
    ``latents`` (1, C, H/8, W/8) start every cell (diffusers does not scale given latents by
    ``init_noise_sigma``). ``strength < 1`` is refused: diffusers' Stable unCLIP "img2img" only
    encodes the image to CLIP, there is no latent img2img for it. ``callback_on_step_end``
    runs through diffusers' older ``callback`` (every step, with ``latents`` only); a returned
    ``{"latents": x}`` replaces the step's latents in place.
    """

    backend = STABLE_UNCLIP
    default_guidance_scale = backend_record(STABLE_UNCLIP).guidance  # StableUnCLIPImg2ImgPipeline's
    model_cpu_offload_seq = "text_encoder->image_encoder->unet->vae"  # StableUnCLIPImg2ImgPipeline's
    _exclude_from_cpu_offload = ["image_normalizer"]
    _callback_tensor_inputs = ["latents"]  # what diffusers' old-style callback hands over
    _min_steps = 1
    _backend_options = backend_record(STABLE_UNCLIP).options  # no "strength": see the class doc

    def __init__(self, feature_extractor, image_encoder, image_normalizer, image_noising_scheduler, tokenizer,
                 text_encoder, unet, scheduler, vae):
        super().__init__()
        self.register_modules(feature_extractor=feature_extractor, image_encoder=image_encoder,
                              image_normalizer=image_normalizer, image_noising_scheduler=image_noising_scheduler,
                              tokenizer=tokenizer, text_encoder=text_encoder, unet=unet, scheduler=scheduler,
                              vae=vae)
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def default_size(self) -> int:
        """px: the UNet's sample size × the VAE's factor (768 for Stable unCLIP 2.1), as diffusers."""
        return int(self.unet.config.sample_size) * self.vae_scale_factor

    @classmethod
    def _load_backend(cls, source, prior, stats, dtype, **kwargs):
        """A folder saved by :meth:`save_pretrained`, else diffusers'
        ``StableUnCLIPImg2ImgPipeline.from_pretrained(source)``; without ``stats`` (and no saved
        statistics file) the image normaliser is read first, and an identity one is refused
        before the rest of the model loads."""
        from vslerp.stats.hub import load_failure, local_folder

        from .loading import read_model_index, saved_stats

        if prior is not None:
            raise ValueError("the stable-unclip backend takes no prior: Stable unCLIP renders CLIP image "
                             "embeddings directly")
        source = str(source or DEFAULT_STABLE_UNCLIP)
        folder = local_folder(source)
        stats = saved_stats(folder, stats)
        if stats is None:
            cls._check_normalizer(str(folder or source), source)
        index = read_model_index(folder) if folder is not None else None
        if index is not None and index.get("_class_name") in (*backend_record(cls.backend).class_names[1:], cls.__name__):
            pipe = cls._load_saved(folder, dtype, **kwargs)
        else:
            from diffusers import StableUnCLIPImg2ImgPipeline

            try:
                loaded = StableUnCLIPImg2ImgPipeline.from_pretrained(str(folder or source), dtype=dtype, **kwargs)
            except (OSError, ValueError) as err:
                raise load_failure(source, "--model", "the Stable unCLIP model", err) from None
            pipe = cls(**loaded.components)
        pipe.model_ids = {"decoder": source, "prior": None}
        pipe.set_statistics(stats)
        return pipe

    @classmethod
    def _check_normalizer(cls, location: str, source: str) -> None:
        """Only the (tiny) image normaliser of ``location``: an identity one is :data:`_NEEDS_STATS`."""
        from diffusers.pipelines.stable_diffusion.stable_unclip_image_normalizer import (
            StableUnCLIPImageNormalizer,
        )

        from vslerp.stats.hub import load_failure

        try:
            normalizer = StableUnCLIPImageNormalizer.from_pretrained(location, subfolder="image_normalizer")
        except (OSError, ValueError) as err:
            raise load_failure(source, "--model", "the image_normalizer of Stable unCLIP model", err) from None
        if image_normalizer_statistics(normalizer) is None:
            raise ValueError(_NEEDS_STATS.format(model=source))

    # -- backend interface -----------------------------------------------------------------------
    def _clip_processor(self):
        return self.feature_extractor

    def _denoiser(self):
        return self.unet

    def _main_scheduler(self):
        return self.scheduler

    def _default_statistics(self) -> Statistics:
        """The ``image_normalizer``'s mean (:func:`image_normalizer_statistics`); the identity is refused."""
        model = self.model_ids.get("decoder") or DEFAULT_STABLE_UNCLIP
        stats = image_normalizer_statistics(self.image_normalizer, model_id=model)
        if stats is None:
            raise ValueError(_NEEDS_STATS.format(model=model))
        return stats

    def _default_negative(self):
        return None  # diffusers' StableUnCLIPImg2ImgPipeline guides against zeros

    def size_rule(self) -> tuple[int, int | None]:
        """Multiples of 8 px (diffusers' check) and of the VAE's factor; no fixed size."""
        return size_rule_of(backend_record(self.backend), self.vae.config)

    def clip_encoders(self):
        """The image side only: Stable unCLIP's text encoder has no projection into the image space."""
        from vslerp.stats import ClipEncoders

        return ClipEncoders(self.image_encoder, self._clip_processor(),
                            model_id=self.model_ids.get("decoder"))

    def encode_text(self, prompts) -> torch.Tensor:
        raise ValueError("the stable-unclip backend has no projected CLIP text encoder (its text_encoder is a "
                         "CLIPTextModel that conditions the UNet): there are no text embeddings in its image space")

    def prompt_to_image_embedding(self, prompts, generator=None, num_inference_steps: int = 25,
                                  guidance_scale: float = 4.0) -> torch.Tensor:
        raise ValueError("the stable-unclip backend has no prior: a prompt cannot become an image embedding; "
                         "give an image or a (D,) embedding as target (a text prompt= conditions the UNet)")

    def _latent_shape(self, settings: RenderSettings) -> tuple[int, int, int, int]:
        """One image's latents (1, C, H/f, W/f), as ``StableUnCLIPImg2ImgPipeline.prepare_latents``."""
        return (1, int(self.unet.config.in_channels), settings.height // self.vae_scale_factor,
                settings.width // self.vae_scale_factor)

    def _check_backend(self, settings: RenderSettings, target) -> list[str]:
        if isinstance(target, str) and image_path_or_prompt(target).kind == "prompt":
            raise ValueError(f"target image not found: {target} (the stable-unclip backend takes no prompt as "
                             "target; a text prompt= conditions the UNet instead)")
        limit = int(self.image_noising_scheduler.config.num_train_timesteps)
        if isinstance(settings.noise_level, int) and settings.noise_level >= limit:
            raise ValueError(f"noise_level must be < {limit} (the image noising scheduler's num_train_timesteps), "
                             f"got {settings.noise_level}")
        if settings.negative is not None:
            raise ValueError("negative_image_embeds is not supported by the stable-unclip backend (diffusers' "
                             "StableUnCLIPImg2ImgPipeline guides against the all-zeros embedding)")
        latents = settings.latents
        sized = isinstance(settings.height, int) and isinstance(settings.width, int)  # else the request says
        if isinstance(latents, torch.Tensor) and sized:
            if latents.ndim == 3:
                settings.latents = latents = latents[None]
            shape = self._latent_shape(settings)
            if tuple(latents.shape) != shape:
                raise ValueError(f"latents must have shape {shape} (one image), got {tuple(latents.shape)}")
        return settings.callback_tensor_inputs

    # -- rendering -------------------------------------------------------------------------------
    def _unclip_pipeline(self):
        """diffusers' ``StableUnCLIPImg2ImgPipeline`` on this pipeline's components (built per
        call: a component may have been replaced), its progress bar off (the call's shows)."""
        from diffusers import StableUnCLIPImg2ImgPipeline

        pipe = StableUnCLIPImg2ImgPipeline(**self.components)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def _render_chunk(self, chunk, noise, device, settings: RenderSettings, tick, init=None):
        batch = chunk.shape[0]
        diffusers_pipe = self._unclip_pipeline()
        wants_latents = "latents" in settings.callback_tensor_inputs

        def on_step(step, timestep, latents):  # diffusers' old-style callback, every step
            self._num_timesteps = len(diffusers_pipe.scheduler.timesteps)
            out = settings.step_callback(self, step, timestep, {"latents": latents} if wants_latents else {})
            if out.get("latents") is not None:
                latents.copy_(out["latents"])  # the loop's own tensor: the next step starts from it
            tick()

        start = None
        if settings.latents is not None:  # every cell from the caller's latents (diffusers draws none)
            start = settings.latents.to(device=device, dtype=self.text_encoder.dtype).repeat(batch, 1, 1, 1)
        negative = [settings.negative_prompt] * batch if settings.negative_prompt is not None else None
        images = diffusers_pipe(
            image_embeds=chunk.to(device=device, dtype=self.unet.dtype),  # (B, D) raw
            prompt=[settings.prompt or ""] * batch, negative_prompt=negative, noise_level=settings.noise_level,
            height=settings.height, width=settings.width, num_inference_steps=settings.num_inference_steps,
            guidance_scale=settings.guidance_scale, generator=[clone_generator(gen) for gen in noise],
            latents=start, callback=on_step, callback_steps=1,
            output_type=settings.output_type).images
        if settings.output_type == "pt":
            images = images * 2 - 1  # (B, 3, H, W) in [−1, 1], as the other backends' "pt"
        return images

    def _advance_generator(self, generator: torch.Generator, settings: RenderSettings) -> None:
        """As after StableUnCLIPImg2ImgPipeline: the generator drew one embedding's noise (1, D)
        and, without ``latents``, one image's initial latents (stochastic steps' noise aside)."""
        device = generator.device
        randn_tensor((1, self._dim()), generator=generator, device=device, dtype=self.unet.dtype)
        if settings.latents is None:
            randn_tensor(self._latent_shape(settings), generator=generator, device=device,
                         dtype=self.text_encoder.dtype)
