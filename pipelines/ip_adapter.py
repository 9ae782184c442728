"""The IP-Adapter backends: :class:`VSlerpIPAdapterPipeline` (SD 1.5 / 2.x) and
:class:`VSlerpIPAdapterXLPipeline` (SDXL) on :class:`IPAdapterBackend` (FLUX's too, :mod:`.flux`).

vSLERP edits the adapter's CLIP encoder's projected ``image_embeds`` (so "plus" and FaceID
adapters are refused); each batch of cells goes to diffusers' pipeline as
``ip_adapter_image_embeds`` (one row per cell: :class:`_EmbedsPerCell`; SD's negative is the
zero vector, as diffusers gives non-plus adapters) with one generator copy per cell, so a θ=0
cell is diffusers' own render of the source. ``save_pretrained`` writes the adapter's weights
with the hub file's keys under ``ip_adapter/`` (:mod:`.ip_adapter_files`)."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import torch

from vslerp.stats import ClipEncoders, Statistics
from vslerp.stats.encode import quiet_torchvision_fallback
from vslerp.stats.hub import load_failure, local_folder
from vslerp.stats.models import (
    IP_ADAPTER_SD,
    IP_ADAPTER_SDXL,
    backend_record,
    ip_adapter_encoder,
    size_rule_of,
)

from .base import RenderSettings, VSlerpBasePipeline, clone_generator
from .inputs import image_path_or_prompt
from .ip_adapter_files import (
    ADAPTER_WHY,
    SAVED_FOLDER,
    SAVED_JSON,
    SAVED_WEIGHT,
    adapter_state_dict,
    check_adapter_file,
    split_adapter_id,
    without_adapter,
)

with quiet_torchvision_fallback():  # diffusers' IP-Adapter loader imports CLIP/Siglip processors by name
    from diffusers.loaders import IPAdapterMixin

__all__ = ["IPAdapterBackend", "VSlerpIPAdapterPipeline", "VSlerpIPAdapterXLPipeline"]


class _EmbedsPerCell:
    """diffusers' pipeline with ``ip_adapter_image_embeds`` taken one row per image.

    diffusers' ``prepare_ip_adapter_image_embeds`` repeats the embeds for every prompt (one
    reference for all); this returns B cells' ``[cat([negatives, cells])]`` (2B, 1, D) as given
    (for B = 1 exactly diffusers' own result) and leaves the denoising loop diffusers'.
    """

    def prepare_ip_adapter_image_embeds(self, ip_adapter_image, ip_adapter_image_embeds, device, *args):
        return [embeds.to(device=device) for embeds in ip_adapter_image_embeds]


@functools.cache
def _per_cell(pipeline_class):
    """``pipeline_class`` (a diffusers SD / SDXL / FLUX pipeline) with :class:`_EmbedsPerCell`'s method."""
    return type(f"{pipeline_class.__name__}PerCell", (_EmbedsPerCell, pipeline_class), {})


class IPAdapterBackend(IPAdapterMixin, VSlerpBasePipeline):
    """What the SD, SDXL and FLUX IP-Adapter backends share (every method but the components)."""

    _base_name = ""  # the diffusers pipeline of the base, in messages
    _min_steps = 1
    _example_base = _example_subfolder = _example_weight = ""
    _example_adapter = "h94/IP-Adapter"

    def _init_common(self):
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.model_ids = {"decoder": None, "prior": None, "ip_adapter": None}

    @property
    def default_size(self) -> int:
        """diffusers' default: the UNet's sample size × the VAE's factor."""
        return int(self.unet.config.sample_size) * self.vae_scale_factor

    # -- loading and saving ------------------------------------------------------------------------
    @classmethod
    def _diffusers_class(cls, img2img: bool = False):
        raise NotImplementedError

    def _load_adapter(self, source: str, subfolder: str, weight: str) -> None:
        """diffusers' ``load_ip_adapter`` (the image encoder is registered already)."""
        self.load_ip_adapter(source, subfolder=subfolder, weight_name=weight, image_encoder_folder=None)

    def _register_encoder(self, source: str, subfolder: str, dtype, **kwargs) -> None:
        """The adapter's ``CLIPVisionModelWithProjection`` from ``source`` / ``subfolder``, as ``image_encoder``;
        float16 for a bfloat16 pipeline (diffusers' FLUX default, and the statistics' fingerprint)."""
        from transformers import CLIPVisionModelWithProjection

        dtype = torch.float16 if dtype == torch.bfloat16 else dtype
        try:
            encoder = CLIPVisionModelWithProjection.from_pretrained(source, subfolder=subfolder or "", dtype=dtype,
                                                                    **kwargs)
        except (OSError, ValueError) as err:
            raise load_failure(source, "--ip-adapter-image-encoder", "the IP-Adapter's image encoder", err) from None
        self.register_modules(image_encoder=encoder.eval())

    @classmethod
    def _load_backend(cls, source, prior, stats, dtype, ip_adapter=None, ip_adapter_subfolder=None,
                      ip_adapter_weight_name=None, ip_adapter_image_encoder=None, **kwargs):
        """Load a saved folder, or the base ``source`` with the adapter (see :mod:`.loading`).
        ip_adapter_image_encoder: its image encoder (a repo id or folder); default
        :func:`vslerp.stats.models.ip_adapter_encoder` (the rule statistics are computed by)."""
        if prior is not None:
            raise ValueError(f"the {cls.backend} backend takes no prior")
        if source is None:
            raise ValueError(f"the {cls.backend} backend needs a base model (e.g. {cls._example_base})")
        source = str(source)
        folder = local_folder(source)
        saved = folder is not None and (folder / SAVED_FOLDER / SAVED_JSON).is_file()
        if saved:
            if ip_adapter is not None or ip_adapter_image_encoder is not None:
                raise ValueError(f"{source} was saved with its IP-Adapter; give no ip_adapter")
            from .loading import saved_stats

            stats = saved_stats(folder, stats)
        elif ip_adapter is None:
            raise ValueError(f"the {cls.backend} backend renders through an IP-Adapter: give ip_adapter= "
                             f"(e.g. ip_adapter='{cls._example_adapter}', ip_adapter_subfolder='{cls._example_subfolder}', "
                             f"ip_adapter_weight_name='{cls._example_weight}')")
        if stats is None:
            raise ValueError(f"the {cls.backend} backend needs stats= (a statistics file of the adapter's image "
                             "encoder, from `vslerp stats compute`, a Statistics or a (D,) mean tensor): there "
                             "is no prior clip_mean to fall back on")
        if saved:
            pipe = cls._load_saved(folder, dtype, **kwargs)
            info = json.loads((folder / SAVED_FOLDER / SAVED_JSON).read_text(encoding="utf-8"))
            pipe._load_adapter(str(folder), SAVED_FOLDER, SAVED_WEIGHT)
            pipe.model_ids = {"decoder": info.get("decoder") or source, "prior": None,
                              "ip_adapter": info.get("ip_adapter")}
        else:
            ip_adapter, subfolder, weight = split_adapter_id(str(ip_adapter), ip_adapter_subfolder,
                                                             ip_adapter_weight_name)
            subfolder = cls._example_subfolder if subfolder is None else subfolder
            weight = weight or cls._example_weight
            adapter_id = f"{ip_adapter}:{subfolder}/{weight}" if subfolder else f"{ip_adapter}:{weight}"
            check_adapter_file(str(ip_adapter), subfolder, weight, adapter_id, **kwargs)  # plus / FaceID: refused
            try:
                base = cls._diffusers_class().from_pretrained(source, dtype=dtype, **kwargs)
            except (OSError, ValueError) as err:
                raise load_failure(source, "--model", f"the {cls._base_name} base", err) from None
            pipe = cls(**base.components)
            pipe._register_encoder(*ip_adapter_encoder(cls.backend, str(ip_adapter), subfolder, weight,
                                                       ip_adapter_image_encoder), dtype, **kwargs)
            pipe._load_adapter(str(ip_adapter), subfolder, weight)
            pipe.model_ids = {"decoder": source, "prior": None, "ip_adapter": adapter_id}
        pipe._check_projection(pipe.model_ids["ip_adapter"])
        pipe.set_statistics(stats)
        return pipe

    def _check_projection(self, name) -> None:
        """One adapter whose image projection is diffusers' ``ImageProjection`` (after loading)."""
        from diffusers.models.embeddings import ImageProjection

        hid = getattr(self._denoiser(), "encoder_hid_proj", None)
        layers = list(getattr(hid, "image_projection_layers", []) or [])
        if len(layers) != 1 or not isinstance(layers[0], ImageProjection):
            kinds = [type(layer).__name__ for layer in layers] or ["none"]
            raise ValueError(f"{name}: the denoiser's image projection is {', '.join(kinds)}, not one ImageProjection: "
                             f"{ADAPTER_WHY}")

    def save_pretrained(self, save_directory, *args, **kwargs):
        """The components without the adapter (diffusers' layout), the statistics, and the
        adapter as ``ip_adapter/ip-adapter.safetensors`` + ``ip_adapter/vslerp_ip_adapter.json``."""
        from safetensors.torch import save_file

        state = adapter_state_dict(self._denoiser())
        with without_adapter(self._denoiser()):
            super().save_pretrained(save_directory, *args, **kwargs)
        out = Path(save_directory) / SAVED_FOLDER
        out.mkdir(parents=True, exist_ok=True)
        save_file(state, str(out / SAVED_WEIGHT))
        info = {"ip_adapter": self.model_ids.get("ip_adapter"), "decoder": self.model_ids.get("decoder")}
        (out / SAVED_JSON).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")

    def describe(self, statistics=None) -> dict:
        return {**super().describe(statistics), "ip_adapter": self.model_ids.get("ip_adapter")}

    # -- backend interface -----------------------------------------------------------------------
    def _clip_processor(self):
        return self.feature_extractor

    def _denoiser(self):
        return self.unet

    def _main_scheduler(self):
        return self.scheduler

    def clip_encoders(self) -> ClipEncoders:
        """The adapter's image encoder and processor (the base's text encoder is not CLIP-projected)."""
        return ClipEncoders(self.image_encoder, self.feature_extractor,
                            model_id=self.model_ids.get("ip_adapter") or self.model_ids.get("decoder"))

    def encode_text(self, prompts) -> torch.Tensor:
        raise ValueError(f"the {self.backend} backend has no CLIP text encoder in the image encoder's space "
                         "(the base's text encoder is unprojected): text embeddings are not available")

    def _default_statistics(self) -> Statistics:
        raise ValueError(f"the {self.backend} backend needs statistics of the adapter's image encoder "
                         "(`vslerp stats compute`): there is no prior clip_mean")

    def _default_negative(self) -> torch.Tensor:
        """The zero vector (D,): diffusers' ``encode_image`` negative for non-plus adapters."""
        return torch.zeros(self._dim())

    def size_rule(self) -> tuple[int, int | None]:
        return size_rule_of(backend_record(self.backend), self.vae.config)  # diffusers': divisible by 8

    def prompt_to_image_embedding(self, prompts, generator=None, num_inference_steps: int = 25,
                                  guidance_scale: float = 4.0) -> torch.Tensor:
        raise ValueError(f"the {self.backend} backend has no prior: a prompt cannot become an image embedding; "
                         "give an image or a (D,) embedding as target (prompt= conditions the UNet on text)")

    def _check_backend(self, settings: RenderSettings, target) -> list[str]:
        if isinstance(target, str) and image_path_or_prompt(target).kind == "prompt":
            raise ValueError(f"target image not found: {target} (the {self.backend} backend takes no prompt as "
                             "target; give prompt= for text conditioning)")
        latents = settings.latents
        if latents is not None and settings.strength < 1.0:
            raise ValueError("latents cannot be given with strength < 1: img2img starts from the photo's latents")
        sized = isinstance(settings.height, int) and isinstance(settings.width, int)  # else the request says
        if isinstance(latents, torch.Tensor) and sized:
            shape = self._latents_shape(settings.height, settings.width)
            if tuple(latents.shape) != shape:
                raise ValueError(f"latents must have shape {shape} (one image), got {tuple(latents.shape)}")
        return settings.callback_tensor_inputs

    def _latents_shape(self, height: int, width: int) -> tuple[int, ...]:
        """The initial latents of one image, as diffusers' pipeline takes ``latents=`` (and draws them)."""
        return (1, int(self._denoiser().config.in_channels), height // self.vae_scale_factor,
                width // self.vae_scale_factor)

    _noise_shape = _latents_shape  # what its generator draws for them (FLUX: before packing)

    # -- rendering -------------------------------------------------------------------------------
    def _embeds_kwargs(self, embeds: torch.Tensor, settings: RenderSettings) -> dict:
        """diffusers' IP-Adapter arguments for cells ``embeds`` (B, 1, D): with guidance, the
        negatives first in one tensor (2B, 1, D), as SD's ``prepare_ip_adapter_image_embeds``."""
        if settings.guidance_scale > 1:
            negative = settings.negative.to(embeds)[None, None].expand(embeds.shape[0], -1, -1)
            embeds = torch.cat([negative, embeds])
        return {"ip_adapter_image_embeds": [embeds]}

    def _init_kwargs(self, init: list, settings: RenderSettings) -> dict:
        """img2img's arguments: the photos at the call's size (diffusers' own resize)."""
        from diffusers.image_processor import VaeImageProcessor

        resize = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor).resize
        return {"image": [photo if photo.size == (settings.width, settings.height)
                          else resize(photo, settings.height, settings.width) for photo in init]}

    def _diffusers_pipeline(self, img2img: bool):
        """diffusers' own pipeline for the base on this pipeline's components (its bar off),
        taking one IP-Adapter embedding per cell (:class:`_EmbedsPerCell`)."""
        pipe = _per_cell(self._diffusers_class(img2img))(**self.components, **self._pipeline_config())
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def _render(self, cells, noise, settings: RenderSettings, init=None):
        """The base's render, with ``ip_adapter_scale`` set for this call and put back after."""
        if settings.ip_adapter_scale is None:
            return super()._render(cells, noise, settings, init)
        procs = {n: p for n, p in self._denoiser().attn_processors.items() if hasattr(p, "to_k_ip")}
        before = {n: list(p.scale) for n, p in procs.items()}
        self.set_ip_adapter_scale(float(settings.ip_adapter_scale))
        try:
            return super()._render(cells, noise, settings, init)
        finally:
            for name, proc in procs.items():
                proc.scale = before[name]

    def _render_chunk(self, chunk, noise, device, settings: RenderSettings, tick, init=None):
        batch, dtype = chunk.shape[0], self._denoiser().dtype

        def on_step_end(pipe, step, timestep, tensors):
            self._num_timesteps = pipe.num_timesteps
            out = settings.step_callback(self, step, timestep, tensors)
            tick()
            return out

        kwargs = {"prompt": [settings.prompt or ""] * batch,
                  **self._embeds_kwargs(chunk.to(device=device, dtype=dtype)[:, None], settings),  # (B, 1, D)
                  "num_inference_steps": settings.num_inference_steps, "guidance_scale": settings.guidance_scale,
                  "generator": [clone_generator(gen) for gen in noise],  # one copy per cell
                  "output_type": "np" if settings.output_type == "pt" else settings.output_type,
                  "callback_on_step_end": on_step_end,
                  "callback_on_step_end_tensor_inputs": settings.callback_tensor_inputs}
        if settings.negative_prompt is not None:
            kwargs["negative_prompt"] = [settings.negative_prompt] * batch
        if init is not None:
            kwargs.update(strength=settings.strength, **self._init_kwargs(init, settings))
        else:
            kwargs.update(height=settings.height, width=settings.width)
            if settings.latents is not None:
                latents = settings.latents.to(device=device, dtype=dtype)
                kwargs["latents"] = latents.expand(batch, *latents.shape[1:])
        images = self._diffusers_pipeline(init is not None)(**kwargs).images
        if settings.output_type == "pt":  # the project's convention: (B, 3, H, W) in [−1, 1]
            images = torch.from_numpy(images).permute(0, 3, 1, 2) * 2 - 1
        return images

    def _advance_generator(self, generator: torch.Generator, settings: RenderSettings) -> None:
        """As after diffusers' pipeline (stochastic steps' noise aside): text-to-image drew one
        image's initial latents (unless ``latents`` were given); img2img drew the VAE posterior's
        sample of the photo, then the noise added to it — each one image's latents' worth."""
        from diffusers.utils.torch_utils import randn_tensor

        shape = self._noise_shape(settings.height, settings.width)
        draws = 2 if settings.strength < 1.0 else (0 if settings.latents is not None else 1)
        for _ in range(draws):
            randn_tensor(shape, generator=generator, device=generator.device, dtype=self._denoiser().dtype)


class VSlerpIPAdapterPipeline(IPAdapterBackend):
    """vSLERP through an IP-Adapter on Stable Diffusion 1.5 / 2.x (``StableDiffusionPipeline``).

    Components as diffusers' ``StableDiffusionPipeline`` with the adapter loaded: vae,
    text_encoder, tokenizer, unet (with the adapter's processors), scheduler, safety_checker
    (as the base has it), feature_extractor, image_encoder (the adapter's). Guidance 7.5 and
    the base's size by default (512 px for SD 1.5); statistics are needed (no prior).
    """

    backend = IP_ADAPTER_SD
    _backend_options = backend_record(IP_ADAPTER_SD).options
    _base_name = "Stable Diffusion"
    _example_base, _example_subfolder, _example_weight = (
        "stable-diffusion-v1-5/stable-diffusion-v1-5", "models", "ip-adapter_sd15.safetensors")
    default_guidance_scale = backend_record(IP_ADAPTER_SD).guidance  # StableDiffusionPipeline's
    model_cpu_offload_seq = "text_encoder->image_encoder->unet->vae"
    _optional_components = ["safety_checker", "feature_extractor", "image_encoder"]
    _exclude_from_cpu_offload = ["safety_checker"]
    _callback_tensor_inputs = ["latents", "prompt_embeds", "negative_prompt_embeds"]  # diffusers' (both)

    def __init__(self, vae, text_encoder, tokenizer, unet, scheduler, safety_checker=None, feature_extractor=None,
                 image_encoder=None, requires_safety_checker: bool = False):
        super().__init__()
        self.register_modules(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
                              safety_checker=safety_checker, feature_extractor=feature_extractor,
                              image_encoder=image_encoder)
        self.register_to_config(requires_safety_checker=requires_safety_checker)
        self._init_common()

    @classmethod
    def _diffusers_class(cls, img2img: bool = False):
        from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionPipeline

        return StableDiffusionImg2ImgPipeline if img2img else StableDiffusionPipeline

    def _pipeline_config(self) -> dict:
        return {"requires_safety_checker": False}  # the safety checker runs when the base has one


class VSlerpIPAdapterXLPipeline(IPAdapterBackend):
    """vSLERP through an IP-Adapter on SDXL (``StableDiffusionXLPipeline``).

    Components as diffusers' ``StableDiffusionXLPipeline`` with the adapter loaded: vae,
    text_encoder, text_encoder_2, tokenizer, tokenizer_2, unet, scheduler, image_encoder (the
    adapter's), feature_extractor. Guidance 5.0 and the base's size by default (1024 px).
    """

    backend = IP_ADAPTER_SDXL
    _backend_options = backend_record(IP_ADAPTER_SDXL).options
    _base_name = "SDXL"
    _example_base, _example_subfolder, _example_weight = (
        "stabilityai/stable-diffusion-xl-base-1.0", "sdxl_models", "ip-adapter_sdxl.safetensors")
    default_guidance_scale = backend_record(IP_ADAPTER_SDXL).guidance  # StableDiffusionXLPipeline's
    model_cpu_offload_seq = "text_encoder->text_encoder_2->image_encoder->unet->vae"
    _optional_components = ["tokenizer", "tokenizer_2", "text_encoder", "text_encoder_2", "image_encoder",
                            "feature_extractor"]
    _callback_tensor_inputs = ["latents", "prompt_embeds", "add_text_embeds", "add_time_ids"]  # diffusers' (both)

    def __init__(self, vae, text_encoder, text_encoder_2, tokenizer, tokenizer_2, unet, scheduler,
                 image_encoder=None, feature_extractor=None, force_zeros_for_empty_prompt: bool = True,
                 add_watermarker: bool | None = None):
        super().__init__()
        self.register_modules(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer,
                              tokenizer_2=tokenizer_2, unet=unet, scheduler=scheduler, image_encoder=image_encoder,
                              feature_extractor=feature_extractor)
        self.register_to_config(force_zeros_for_empty_prompt=force_zeros_for_empty_prompt)
        self._add_watermarker = add_watermarker
        self._init_common()

    @classmethod
    def _diffusers_class(cls, img2img: bool = False):
        from diffusers import StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline

        return StableDiffusionXLImg2ImgPipeline if img2img else StableDiffusionXLPipeline

    def _pipeline_config(self) -> dict:
        return {"force_zeros_for_empty_prompt": self.config.force_zeros_for_empty_prompt,
                "add_watermarker": self._add_watermarker}
