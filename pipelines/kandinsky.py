"""The Kandinsky 2.2 backend: :class:`VSlerpPipeline` (the default, and the loading entry point).

Components as diffusers' ``KandinskyV22PriorPipeline`` + ``KandinskyV22Pipeline``: the prior's
CLIP ViT-bigG/14 encoders (1280-d) and PriorTransformer, the decoder's UNet and MoVQ. Each
batch of cells is denoised by diffusers' own ``KandinskyV22Pipeline`` from ``image_embeds``
(``output_type="latent"``), every cell from the one-image latents a single render with the
call's generator draws and with one copy of that generator per cell; the MoVQ decode is
this module's (sliced and/or tiled on request, :mod:`vslerp.pipelines.tiling`).
The grid, statistics, checks and the call itself: :class:`~vslerp.pipelines.base.VSlerpBasePipeline`.
"""

from __future__ import annotations

import torch
from diffusers.utils.torch_utils import randn_tensor

from vslerp.stats import Statistics
from vslerp.stats.models import KANDINSKY, backend_record, size_rule_of

from .base import RenderSettings, VSlerpBasePipeline, clone_generator
from .serial import serialised
from .tiling import tiled_decode

__all__ = ["VSlerpPipeline"]


def _latent_size(height: int, width: int, scale_factor: int) -> tuple[int, int]:
    """Latent size of KandinskyV22Pipeline (``downscale_height_and_width``)."""
    from diffusers.pipelines.kandinsky2_2.pipeline_kandinsky2_2 import downscale_height_and_width

    return downscale_height_and_width(height, width, scale_factor)


class VSlerpPipeline(VSlerpBasePipeline):
    """Vertical SLERP between two CLIP image embeddings, rendered by the Kandinsky 2.2 decoder.

    Components (typed, registered with ``register_modules``, as in diffusers'
    ``KandinskyV22PriorPipeline`` + ``KandinskyV22Pipeline``): prior (PriorTransformer),
    image_encoder (CLIPVisionModelWithProjection), text_encoder (CLIPTextModelWithProjection),
    tokenizer (CLIPTokenizer), image_processor (CLIPImageProcessor), prior_scheduler
    (UnCLIPScheduler), unet (UNet2DConditionModel), scheduler (DDPM/DDIM), movq (VQModel).
    Without statistics the image mean m is the prior's ``clip_mean`` (zero data).
    ``VSlerpPipeline.from_pretrained`` loads any backend (an unCLIP/Karlo model gives a
    :class:`~vslerp.pipelines.VSlerpUnCLIPPipeline`).
    """

    backend = KANDINSKY
    default_guidance_scale = backend_record(KANDINSKY).guidance  # KandinskyV22Pipeline's
    default_size = backend_record(KANDINSKY).size  # px, KandinskyV22Pipeline's
    model_cpu_offload_seq = "text_encoder->image_encoder->prior->unet->movq"
    _callback_tensor_inputs = ["latents", "image_embeds", "negative_image_embeds"]  # KandinskyV22Pipeline's
    _min_steps = 1
    _backend_options = backend_record(KANDINSKY).options  # strength: img2img through KandinskyV22Img2ImgPipeline

    def __init__(self, prior, image_encoder, text_encoder, tokenizer, image_processor,
                 prior_scheduler, unet, scheduler, movq):
        super().__init__()
        self.register_modules(prior=prior, image_encoder=image_encoder, text_encoder=text_encoder,
                              tokenizer=tokenizer, image_processor=image_processor,
                              prior_scheduler=prior_scheduler, unet=unet, scheduler=scheduler,
                              movq=movq)
        self.movq_scale_factor = 2 ** (len(self.movq.config.block_out_channels) - 1)
        self._zero_embed: torch.Tensor | None = None
        self._movq_slicing = False
        self._movq_tiling: tuple[int, float] | None = None  # (tile latent px, overlap) when enabled

    # -- backend interface -----------------------------------------------------------------------
    def _clip_processor(self):
        return self.image_processor

    def _denoiser(self):
        return self.unet

    def _main_scheduler(self):
        return self.scheduler

    def _default_statistics(self) -> Statistics:
        return Statistics.from_prior(self.prior, model_id=self.model_ids.get("prior"))

    def _default_negative(self) -> torch.Tensor:
        """The all-zeros image's embedding (D,), as the prior pipeline's negative."""
        return self.zero_image_embedding()[0]

    def size_rule(self) -> tuple[int, int | None]:
        """Multiples of the movq's factor squared (``downscale_height_and_width`` rounds up to it)."""
        return size_rule_of(backend_record(self.backend), self.movq.config)

    def _check_backend(self, settings: RenderSettings, target) -> list[str]:
        latents = settings.latents
        if latents is not None and settings.strength < 1.0:
            raise ValueError("latents cannot be given with strength < 1: img2img starts from the photo's latents")
        sized = isinstance(settings.height, int) and isinstance(settings.width, int)  # else the request says
        if isinstance(latents, torch.Tensor) and sized:
            if latents.ndim == 3:
                settings.latents = latents = latents[None]
            shape = (1, self.unet.config.in_channels,
                     *_latent_size(settings.height, settings.width, self.movq_scale_factor))
            if tuple(latents.shape) != shape:
                raise ValueError(f"latents must have shape {shape} (one image), got {tuple(latents.shape)}")
        return settings.callback_tensor_inputs

    @torch.no_grad()
    def zero_image_embedding(self) -> torch.Tensor:
        """Raw embedding (1, D) of the all-zeros image, as ``KandinskyV22PriorPipeline.get_zero_embed``."""
        if self._zero_embed is None:
            size = self.image_encoder.config.image_size
            self._zero_embed = self.clip_encoders().encode_pixels(torch.zeros(1, 3, size, size)).cpu()
        return self._zero_embed

    @serialised
    @torch.no_grad()
    def prompt_to_image_embedding(self, prompts, generator=None, num_inference_steps: int = 25,
                                  guidance_scale: float = 4.0) -> torch.Tensor:
        """Prompts → raw image embeddings (N, D) float32 through the prior (``KandinskyV22PriorPipeline``)."""
        return self._prior_image_embeds(prompts, self.image_processor, generator, num_inference_steps, guidance_scale)

    # -- rendering -------------------------------------------------------------------------------
    def _initial_latents(self, generator: torch.Generator, device, settings: RenderSettings):
        """One image's initial latents (1, C, h, w), as ``KandinskyV22Pipeline.prepare_latents``
        draws them from a copy of ``generator`` (or the call's ``latents``), and that copy after
        the draw: its stochastic steps continue from there."""
        step_from = clone_generator(generator)
        if settings.latents is not None:
            return settings.latents.to(device=device, dtype=self.unet.dtype), step_from
        shape = (1, self.unet.config.in_channels,
                 *_latent_size(settings.height, settings.width, self.movq_scale_factor))
        return randn_tensor(shape, generator=step_from, device=device, dtype=self.unet.dtype), step_from

    def _decoder_pipeline(self, img2img: bool = False):
        """diffusers' ``KandinskyV22Pipeline`` (``KandinskyV22Img2ImgPipeline`` for img2img) on
        this pipeline's unet, scheduler and movq (built per call: a component may have been
        replaced), its own progress bar off (the call's shows)."""
        from diffusers import KandinskyV22Img2ImgPipeline, KandinskyV22Pipeline

        kind = KandinskyV22Img2ImgPipeline if img2img else KandinskyV22Pipeline
        decoder = kind(unet=self.unet, scheduler=self.scheduler, movq=self.movq)
        decoder.set_progress_bar_config(disable=True)
        return decoder

    def _render_chunk(self, chunk, noise, device, settings: RenderSettings, tick, init=None):
        batch = chunk.shape[0]
        if init is not None:  # img2img: diffusers draws each cell's noise from its generator copy
            start = {"image": list(init), "strength": settings.strength,
                     "generator": [clone_generator(gen) for gen in noise]}
            return self._denoise(chunk, device, settings, tick, start)
        drawn: dict[int, tuple] = {}  # generator → (its one-image latents, its copy after drawing them)
        for gen in noise:
            if id(gen) not in drawn:
                drawn[id(gen)] = self._initial_latents(gen, device, settings)
        if len(drawn) == 1:  # one grid: every cell starts from the same noise
            latents = next(iter(drawn.values()))[0].expand(batch, -1, -1, -1)  # (B, C, h, w)
        else:  # independent requests: each cell from its own request's noise
            latents = torch.cat([drawn[id(gen)][0] for gen in noise])  # (B, C, h, w)
        generators = [clone_generator(drawn[id(gen)][1]) for gen in noise]  # one copy per cell
        return self._denoise(chunk, device, settings, tick, {"latents": latents, "generator": generators})

    def _denoise(self, chunk, device, settings: RenderSettings, tick, start: dict):
        """diffusers' decoder pipeline on a batch of cells from ``start`` (its latents and
        generators, or img2img's image, strength and generators); images as ``output_type`` asks."""
        batch, dtype = chunk.shape[0], self.unet.dtype
        negative = settings.negative[None].expand(batch, -1)  # (B, D)

        def on_step_end(decoder, step, timestep, tensors):
            self._num_timesteps = decoder.num_timesteps
            out = settings.step_callback(self, step, timestep, tensors)
            tick()
            return out

        latents = self._decoder_pipeline(img2img="image" in start)(
            image_embeds=chunk.to(device=device, dtype=dtype),
            negative_image_embeds=negative.to(device=device, dtype=dtype),
            height=settings.height, width=settings.width, num_inference_steps=settings.num_inference_steps,
            guidance_scale=settings.guidance_scale, **start, output_type="latent",
            callback_on_step_end=on_step_end, callback_on_step_end_tensor_inputs=settings.callback_tensor_inputs,
        ).images  # (B, C, h, w)
        if settings.output_type == "latent":
            return latents
        image = self._decode_latents(latents)  # (B, 3, H, W) in [−1, 1]
        if settings.output_type == "pt":
            return image
        image = (image * 0.5 + 0.5).clamp(0, 1).cpu().permute(0, 2, 3, 1).float().numpy()  # (B, H, W, 3)
        return self.numpy_to_pil(image) if settings.output_type == "pil" else image

    def _advance_generator(self, generator: torch.Generator, settings: RenderSettings) -> None:
        """As after KandinskyV22Pipeline: the generator has drawn one image's initial latents."""
        if settings.latents is None:  # the same draw, on the generator's own device
            _, after = self._initial_latents(generator, generator.device, settings)
            generator.set_state(after.get_state())

    # -- decode options ---------------------------------------------------------------------------
    def enable_movq_slicing(self) -> None:
        """Decode the cells' latents one image at a time (lower peak memory for large sizes)."""
        self._movq_slicing = True

    def disable_movq_slicing(self) -> None:
        self._movq_slicing = False

    def enable_movq_tiling(self, tile_size: int = 64, overlap: float = 0.25) -> None:
        """Decode with the movq in overlapping tiles of ``tile_size`` latent pixels (64 → 512 px),
        blended over ``overlap`` of a tile: the decoder's peak memory is one tile's at any size.

        diffusers' VQModel has no tiled decode; this is ``AutoencoderKL.tiled_decode``'s scheme
        (:func:`vslerp.pipelines.tiling.tiled_decode`). Images no larger than one tile are
        decoded exactly as without tiling; larger ones differ slightly near the seams.
        """
        if not isinstance(tile_size, int) or isinstance(tile_size, bool) or tile_size < 2:
            raise ValueError(f"tile_size must be an int >= 2 (latent pixels), got {tile_size!r}")
        if not isinstance(overlap, (int, float)) or not 0.0 <= overlap < 1.0:
            raise ValueError(f"overlap must be in [0, 1), got {overlap!r}")
        self._movq_tiling = (tile_size, float(overlap))

    def disable_movq_tiling(self) -> None:
        self._movq_tiling = None

    def _decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """movq decode (B, C, h, w) → (B, 3, H, W) in [−1, 1], sliced and/or tiled as enabled."""
        def plain(z):
            return self.movq.decode(z, force_not_quantize=True)["sample"]

        def decode(z):
            if self._movq_tiling is None:
                return plain(z)
            tile, overlap = self._movq_tiling
            return tiled_decode(plain, z, self.movq_scale_factor, tile=tile, overlap=overlap)

        if self._movq_slicing:
            return torch.cat([decode(lat[None]) for lat in latents])
        return decode(latents)
