"""VSlerpPipeline: vertical-SLERP image editing (paper Eq. 12) on Kandinsky 2.2, diffusers-style.

A grid of cells θ × α: each cell's image embedding is
``vslerp.vslerp(source, target, θ, α, m)`` (raw CLIP image space, m the image modality mean),
rendered by the Kandinsky 2.2 decoder exactly as ``KandinskyV22Pipeline`` renders an
``image_embeds`` — with the same initial noise for every cell (the noise a single render with
the same ``generator`` draws), cells batched ``max_batch_size`` at a time.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image
import torch
from diffusers import DiffusionPipeline
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

import vslerp
from vslerp._checks import check_magnitude
from vslerp._version import __version__
from vslerp.defaults import CONFORMITY_COSINE, CONFORMITY_EXACT
from vslerp.stats import (
    Statistics,
    UnreadableImage,
    check_compatible,
    default_device,
    encoder_fingerprint,
    note_input,
    open_image,
    parse_device,
)
from vslerp.stats import load as load_statistics
from vslerp.stats.encode import clip_image_processor_class
from vslerp.stats.hub import unavailable_model

from . import limits
from .inputs import check_prompt, image_path_or_prompt
from .tiling import tiled_decode

__all__ = [
    "DEFAULT_DECODER",
    "DEFAULT_PRIOR",
    "STATISTICS_FILE",
    "VSlerpPipeline",
    "VSlerpPipelineOutput",
    "auto_device",
]

DEFAULT_DECODER = "kandinsky-community/kandinsky-2-2-decoder"
DEFAULT_PRIOR = "kandinsky-community/kandinsky-2-2-prior"
STATISTICS_FILE = "vslerp_statistics.safetensors"  # written beside model_index.json
_OUTPUT_TYPES = ("pil", "np", "pt", "latent")


@dataclass
class VSlerpPipelineOutput(BaseOutput):
    """Output of :class:`VSlerpPipeline`.

    images: list of T·A PIL images (or an (T·A, H, W, 3) array / (T·A, 3, H, W) tensor /
        latents, per ``output_type``), row-major over thetas × alphas.
    embeddings: (T, A, D) float32 raw image embeddings of the cells (Eq. 12).
    thetas, alphas: the grid axes, as lists of float.
    conformity: (T, A) float32 estimated conformity of each cell (Eq. 11, image modality).
    """

    images: list | np.ndarray | torch.Tensor
    embeddings: torch.Tensor
    thetas: list
    alphas: list
    conformity: torch.Tensor


def auto_device() -> torch.device:
    """cuda, then mps, then cpu (with a warning: rendering on a CPU is slow)."""
    device = default_device()
    if device.type == "cpu":
        warnings.warn("no CUDA or MPS device found: VSlerpPipeline runs on the CPU (slow)", stacklevel=3)
    return device


def _downscale(height: int, width: int, scale_factor: int) -> tuple[int, int]:
    """Latent size of KandinskyV22Pipeline (``downscale_height_and_width``)."""
    from diffusers.pipelines.kandinsky2_2.pipeline_kandinsky2_2 import downscale_height_and_width

    return downscale_height_and_width(height, width, scale_factor)


def _is_unclip(source) -> bool:
    """True for an unCLIP/Karlo image-variation folder or id (or a VSlerpUnCLIPPipeline folder)."""
    import json

    if source is None:
        return False
    index = Path(str(source)).expanduser() / "model_index.json"
    if index.is_file():
        try:
            name = json.loads(index.read_text(encoding="utf-8")).get("_class_name")
        except (OSError, ValueError):
            return False
        return name in ("UnCLIPImageVariationPipeline", "VSlerpUnCLIPPipeline")
    return "karlo" in str(source).lower()


def _check_axis(name: str, values, allow_outside: bool) -> list[float]:
    if isinstance(values, (str, bytes)) or values is None:
        raise TypeError(f"{name} must be a list of numbers, got {type(values).__name__}")
    if isinstance(values, (int, float)):
        values = [values]
    if isinstance(values, torch.Tensor):
        values = values.detach().reshape(-1).tolist()
    try:
        out = [float(v) for v in values]
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a list of numbers, got {values!r}") from None
    if not out:
        raise ValueError(f"{name} is empty: give at least one value")
    bad = [v for v in out if not math.isfinite(v)]
    if bad:
        raise ValueError(f"{name} must be finite, got {bad[0]}")
    check_magnitude(name[:-1] if name.endswith("s") else name, out)  # "theta 1e+308 is too large"
    if not allow_outside:
        outside = [v for v in out if not 0.0 <= v <= 1.0]
        if outside:
            raise ValueError(
                f"{name} value {outside[0]} is outside [0, 1]: pass allow_extrapolation=True to extrapolate"
            )
    return out


def _distinct_rows(flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Distinct rows of ``flat`` (N, D) in first-seen order, and each row's index among them.

    Returns ``(distinct (U, D), inverse (N,) int64)`` with ``distinct[inverse] == flat``.
    """
    index: dict[bytes, int] = {}
    inverse = [index.setdefault(row.numpy().tobytes(), len(index)) for row in flat.cpu()]
    first = {k: i for i, k in reversed(list(enumerate(inverse)))}  # distinct index → first row
    return flat[[first[k] for k in range(len(index))]], torch.tensor(inverse, dtype=torch.int64)


def _open_image(name: str, path) -> PIL.Image.Image:
    """``vslerp.stats.open_image`` (RGB, EXIF-upright), its failures as ``ValueError`` naming ``name``."""
    found = image_path_or_prompt(path)
    path = found.path or Path(str(path))
    if found.kind == "directory":
        raise ValueError(f"{name} image {path} is a directory, not an image file")
    if found.kind != "image":
        raise ValueError(f"{name} image not found: {path}")
    note_input(path, f"{name} image")
    try:
        return open_image(path)
    except UnreadableImage as err:
        raise ValueError(f"{name} image {path} cannot be read: {err}") from None


class VSlerpPipeline(DiffusionPipeline):
    """Vertical SLERP between two CLIP image embeddings, rendered by the Kandinsky 2.2 decoder.

    Components (typed, registered with ``register_modules``, as in diffusers'
    ``KandinskyV22PriorPipeline`` + ``KandinskyV22Pipeline``): prior (PriorTransformer),
    image_encoder (CLIPVisionModelWithProjection), text_encoder (CLIPTextModelWithProjection),
    tokenizer (CLIPTokenizer), image_processor (CLIPImageProcessor), prior_scheduler
    (UnCLIPScheduler), unet (UNet2DConditionModel), scheduler (DDPM/DDIM), movq (VQModel).
    ``statistics``: a :class:`vslerp.stats.Statistics` giving the image mean m; None → the
    prior's ``clip_mean`` (zero data).
    """

    backend = "kandinsky2.2"
    default_guidance_scale = 4.0  # KandinskyV22Pipeline's
    default_size = 512  # px, KandinskyV22Pipeline's
    model_cpu_offload_seq = "text_encoder->image_encoder->prior->unet->movq"
    _callback_tensor_inputs = ["latents", "image_embeds", "negative_image_embeds"]
    _optional_components: list[str] = []
    _min_steps = 1  # denoising steps at least (the decoder's scheduler)

    def __init__(self, prior, image_encoder, text_encoder, tokenizer, image_processor,
                 prior_scheduler, unet, scheduler, movq):
        super().__init__()
        self.register_modules(prior=prior, image_encoder=image_encoder, text_encoder=text_encoder,
                              tokenizer=tokenizer, image_processor=image_processor,
                              prior_scheduler=prior_scheduler, unet=unet, scheduler=scheduler,
                              movq=movq)
        self.movq_scale_factor = 2 ** (len(self.movq.config.block_out_channels) - 1)
        self._statistics: Statistics | None = None
        self._zero_embed: torch.Tensor | None = None
        self._movq_slicing = False
        self._movq_tiling: tuple[int, float] | None = None  # (tile latent px, overlap) when enabled
        self.model_ids = {"decoder": None, "prior": None}

    # -- loading and saving -------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, decoder_id_or_dir=None, prior=None, stats=None, torch_dtype=None,
                        backend: str = "auto", device="auto", **kwargs) -> VSlerpPipeline:
        """Load from the two hub repos / local folders, or from a folder saved by ``save_pretrained``.

        decoder_id_or_dir: a Kandinsky 2.2 decoder (default ``kandinsky-community/kandinsky-2-2-decoder``)
            or a folder written by :meth:`save_pretrained` (then ``prior`` is not needed).
        prior: the Kandinsky 2.2 prior (default ``kandinsky-community/kandinsky-2-2-prior``).
        stats: a statistics file path, a :class:`Statistics`, a (D,) raw image-mean tensor, or
            None (the saved folder's statistics, else the prior's ``clip_mean``).
        torch_dtype: default float16 on CUDA, float32 elsewhere.
        backend: "auto" or "kandinsky2.2" (the only backend implemented here).
        device: "auto" (cuda, then mps, then cpu with a warning), a device, or None (stay on CPU,
            e.g. before ``enable_model_cpu_offload()``).
        """
        if backend not in ("auto", "kandinsky2.2", "kandinsky", "unclip"):
            raise ValueError(f"backend must be 'auto', 'kandinsky2.2' or 'unclip', got {backend!r}")
        if cls is VSlerpPipeline and (backend == "unclip" or (backend == "auto" and _is_unclip(decoder_id_or_dir))):
            from .unclip import VSlerpUnCLIPPipeline

            return VSlerpUnCLIPPipeline.from_pretrained(decoder_id_or_dir, prior=prior, stats=stats,
                                                        torch_dtype=torch_dtype, device=device, **kwargs)
        target = auto_device() if device == "auto" else (parse_device(device) if device else None)
        if torch_dtype is None:
            torch_dtype = torch.float16 if target is not None and target.type == "cuda" else torch.float32
        clip_image_processor_class()  # the class without torchvision, resolved without a warning
        decoder_src = str(decoder_id_or_dir or DEFAULT_DECODER)
        saved = cls._saved_folder(decoder_src)
        if saved is not None:
            pipe = super().from_pretrained(str(saved), dtype=torch_dtype, **kwargs)
            stats_file = saved / STATISTICS_FILE
            if stats is None and stats_file.is_file():
                stats = load_statistics(stats_file)
            pipe.model_ids = {"decoder": decoder_src, "prior": str(prior) if prior else decoder_src}
        else:
            from diffusers import KandinskyV22Pipeline, KandinskyV22PriorPipeline

            prior_src = str(prior or DEFAULT_PRIOR)
            try:
                prior_pipe = KandinskyV22PriorPipeline.from_pretrained(prior_src, dtype=torch_dtype,
                                                                       **kwargs)
            except (OSError, ValueError) as err:
                raise unavailable_model(prior_src, "--prior") or ValueError(
                    f"cannot load the Kandinsky 2.2 prior {prior_src!r}: {err}") from None
            try:
                decoder = KandinskyV22Pipeline.from_pretrained(decoder_src, dtype=torch_dtype, **kwargs)
            except (OSError, ValueError) as err:
                raise unavailable_model(decoder_src, "--model") or ValueError(
                    f"cannot load the Kandinsky 2.2 decoder {decoder_src!r}: {err}") from None
            pc, dc = prior_pipe.components, decoder.components
            pipe = cls(prior=pc["prior"], image_encoder=pc["image_encoder"],
                       text_encoder=pc["text_encoder"], tokenizer=pc["tokenizer"],
                       image_processor=pc["image_processor"], prior_scheduler=pc["scheduler"],
                       unet=dc["unet"], scheduler=dc["scheduler"], movq=dc["movq"])
            pipe.model_ids = {"decoder": decoder_src, "prior": prior_src}
        pipe.set_statistics(stats)
        if target is not None:
            pipe.to(target)
        return pipe

    @staticmethod
    def _saved_folder(source: str) -> Path | None:
        """The folder if ``source`` is a local folder saved by :meth:`save_pretrained`."""
        import json

        folder = Path(source).expanduser()
        index = folder / "model_index.json"
        if not index.is_file():
            return None
        try:
            name = json.loads(index.read_text(encoding="utf-8")).get("_class_name")
        except (OSError, ValueError):
            return None
        return folder if name == "VSlerpPipeline" else None

    def save_pretrained(self, save_directory, *args, **kwargs):
        """diffusers' ``save_pretrained`` plus the statistics as ``vslerp_statistics.safetensors``."""
        super().save_pretrained(save_directory, *args, **kwargs)
        self.statistics.save(Path(save_directory) / STATISTICS_FILE)

    # -- statistics ---------------------------------------------------------------------
    def set_statistics(self, stats=None) -> Statistics:
        """Set the image mean's source: path | Statistics | (D,) tensor | None (prior clip_mean).

        Checked against this image encoder's dim and fingerprint (``vslerp.stats.check_compatible``).
        To use other statistics for one call only, pass ``statistics=`` to that call instead.
        """
        self._statistics = self.check_statistics(stats)
        return self._statistics

    def check_statistics(self, stats=None) -> Statistics:
        """``stats`` (as :meth:`set_statistics` takes it) as a checked :class:`Statistics`; sets nothing."""
        dim = int(self.image_encoder.config.projection_dim)
        if stats is None:
            stats = Statistics.from_prior(self.prior, model_id=self.model_ids.get("prior"))
        elif isinstance(stats, (str, Path)):
            stats = load_statistics(stats)
        elif isinstance(stats, torch.Tensor):
            stats = Statistics.from_mean(stats, model_id=self.model_ids.get("prior"))
        elif not isinstance(stats, Statistics):
            raise TypeError("stats must be a statistics file path, a vslerp.stats.Statistics, a (D,) "
                            f"tensor or None, got {type(stats).__name__}")
        if stats.image is None:
            raise ValueError("the statistics have no image modality: vSLERP needs the image mean")
        fp = encoder_fingerprint(self.image_encoder) if stats.metadata.get("encoder_fingerprint") else None
        check_compatible(stats, dim=dim, fingerprint=fp)
        return stats

    def _statistics_for(self, statistics) -> Statistics:
        """A call's statistics: ``None`` → the pipeline's own (:attr:`statistics`), else checked."""
        return self.statistics if statistics is None else self.check_statistics(statistics)

    @property
    def statistics(self) -> Statistics:
        if self._statistics is None:
            self.set_statistics(None)
        return self._statistics

    @property
    def image_mean(self) -> torch.Tensor:
        """Raw image modality mean m, (D,) float32 on the CPU."""
        return self.statistics.image.mean.to(torch.float32)

    def estimated_conformity(self, embeds: torch.Tensor, modality: str = "image", statistics=None) -> torch.Tensor:
        """Conformity of each raw embedding (N, D) → (N,) float32 (paper Eq. 11).

        With dataset statistics (count ≥ 2 and the unit-vector mean μ̂) this is the exact identity
        C = N‖μ̂‖/(N−1)·cos(v, μ̂) − 1/(N−1) (``vslerp.exact_conformity_coefficients``); with a
        mean-only source (prior clip_mean, tensor) it is cos(v, m) itself (a = 1, b = 0).
        statistics: for this call only (as :meth:`set_statistics` takes it); None → the pipeline's.
        """
        if modality not in ("image", "text"):
            raise ValueError(f"modality must be 'image' or 'text', got {modality!r}")
        mod = getattr(self._statistics_for(statistics), modality)
        if mod is None:
            raise ValueError(f"the statistics have no {modality} modality")
        raw = torch.as_tensor(embeds).detach().to("cpu", torch.float32).reshape(-1, mod.dim)  # (N, D)
        if mod.count >= 2:
            fit = vslerp.exact_conformity_coefficients(int(mod.count), mod.mean_unit)
            return (fit.a * vslerp.cosine_to_mean(raw, mod.mean_unit.float()) + fit.b).float()
        return vslerp.cosine_to_mean(raw, mod.mean.float()).float()

    def conformity_method(self, statistics=None) -> str:
        """'exact_identity' (dataset statistics) or 'cosine_to_mean' (mean-only source)."""
        stats = self._statistics_for(statistics)
        return CONFORMITY_EXACT if stats.image.count >= 2 else CONFORMITY_COSINE

    # -- speed and memory options -------------------------------------------------------
    def compile_unet(self, **kwargs) -> None:
        """``torch.compile`` the UNet in place (``nn.Module.compile``); kwargs go to torch.compile."""
        self._denoiser().compile(**kwargs)

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

    # -- encoders -----------------------------------------------------------------------
    def _to_images(self, name: str, images) -> list[PIL.Image.Image]:
        if isinstance(images, (PIL.Image.Image, str, Path)):
            images = [images]
        out = []
        for im in images:
            if isinstance(im, PIL.Image.Image):
                out.append(im.convert("RGB"))
            elif isinstance(im, (str, Path)):
                out.append(_open_image(name, im))
            else:
                raise TypeError(f"{name} must be PIL images or image paths, got {type(im).__name__}")
        if not out:
            raise ValueError(f"{name}: no images given")
        return out

    @torch.no_grad()
    def encode_image(self, images) -> torch.Tensor:
        """PIL images / paths → raw ``image_embeds`` (N, D) float32 on the CPU (as the prior pipeline)."""
        images = self._to_images("images", images)
        device = self._execution_device
        pixels = self._clip_processor()(images, return_tensors="pt").pixel_values  # (N, 3, S, S)
        pixels = pixels.to(device=device, dtype=self.image_encoder.dtype)
        return self.image_encoder(pixels)["image_embeds"].float().cpu()

    @torch.no_grad()
    def encode_text(self, prompts) -> torch.Tensor:
        """Prompts → raw ``text_embeds`` (N, D) float32 on the CPU (max-length padding, truncated)."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise TypeError("prompts must be a string or a non-empty list of strings")
        tokens = self.tokenizer(prompts, padding="max_length", max_length=self.tokenizer.model_max_length,
                                truncation=True, return_tensors="pt")
        device = self._execution_device
        out = self.text_encoder(input_ids=tokens.input_ids.to(device),
                                attention_mask=tokens.attention_mask.to(device))
        return out.text_embeds.float().cpu()

    @torch.no_grad()
    def zero_image_embedding(self) -> torch.Tensor:
        """Raw embedding (1, D) of the all-zeros image, as ``KandinskyV22PriorPipeline.get_zero_embed``."""
        if self._zero_embed is None:
            size = self.image_encoder.config.image_size
            zero = torch.zeros(1, 3, size, size, device=self._execution_device, dtype=self.image_encoder.dtype)
            self._zero_embed = self.image_encoder(zero)["image_embeds"].float().cpu()
        return self._zero_embed

    def _clip_processor(self):
        return self.image_processor

    def _denoiser(self):
        return self.unet

    def _main_scheduler(self):
        return self.scheduler

    def _default_negative(self) -> torch.Tensor | None:
        """The unconditional image embedding (D,): the all-zeros image's, as the prior pipeline."""
        return self.zero_image_embedding()[0]

    def _prior_pipeline(self):
        from diffusers import KandinskyV22PriorPipeline

        prior = KandinskyV22PriorPipeline(prior=self.prior, image_encoder=self.image_encoder,
                                          text_encoder=self.text_encoder, tokenizer=self.tokenizer,
                                          scheduler=self.prior_scheduler, image_processor=self.image_processor)
        prior.set_progress_bar_config(**getattr(self, "_progress_bar_config", {}))
        return prior

    @torch.no_grad()
    def prompt_to_image_embedding(self, prompts, generator=None, num_inference_steps: int = 25,
                                  guidance_scale: float = 4.0) -> torch.Tensor:
        """Prompts → raw image embeddings (N, D) float32 through the prior (``KandinskyV22PriorPipeline``)."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise TypeError("prompts must be a string or a non-empty list of strings")
        out = self._prior_pipeline()(prompts, generator=generator, num_inference_steps=num_inference_steps,
                                     guidance_scale=guidance_scale, output_type="pt")
        return out.image_embeds.float().cpu()

    # -- inputs -------------------------------------------------------------------------
    def _check_embedding(self, name: str, raw: torch.Tensor) -> torch.Tensor:
        dim = int(self.image_encoder.config.projection_dim)
        raw = raw.detach()
        if raw.ndim == 2 and raw.shape[0] == 1:
            raw = raw[0]
        if raw.ndim != 1 or raw.shape[0] != dim:
            raise ValueError(f"{name} embedding must have shape ({dim},), got {tuple(raw.shape)}")
        raw = raw.to("cpu", torch.float32)
        if not bool(torch.isfinite(raw).all()):
            raise ValueError(f"{name} embedding contains non-finite values")
        if not bool((raw != 0).any()):
            raise ValueError(f"{name} embedding is the zero vector")
        return raw

    def _resolve(self, name: str, value, allow_prompt: bool, prompt_generator, prior_steps: int):
        """source/target → raw (D,) float32; a prompt goes through the prior."""
        if isinstance(value, torch.Tensor):
            return self._check_embedding(name, value)
        if isinstance(value, PIL.Image.Image):
            return self.encode_image([value])[0]
        if isinstance(value, Path):
            return self.encode_image([_open_image(name, value)])[0]
        if isinstance(value, str):
            found = image_path_or_prompt(value)
            if found.kind in ("image", "directory") or not allow_prompt or found.kind == "missing":
                return self.encode_image([_open_image(name, found.path or value)])[0]
            check_prompt(name, value)
            self._warn_if_truncated(name, value)
            return self.prompt_to_image_embedding([value], generator=prompt_generator,
                                                  num_inference_steps=prior_steps)[0]
        kinds = "a PIL image, an image path, a prompt or a (D,) tensor" if allow_prompt else \
            "a PIL image, an image path or a (D,) tensor"
        raise TypeError(f"{name} must be {kinds}, got {type(value).__name__}")

    def check_inputs(self, source, target, thetas, alphas, num_inference_steps, guidance_scale, height,
                     width, max_batch_size, output_type, generator, latents, callback_on_step_end_tensor_inputs,
                     allow_extrapolation):
        """Validate everything before any compute; returns (thetas, alphas) as float lists."""
        ok_source = (torch.Tensor, PIL.Image.Image, str, Path)
        if not isinstance(source, ok_source):
            raise TypeError(f"source must be a PIL image, an image path or a (D,) tensor, got {type(source).__name__}")
        if not isinstance(target, ok_source):
            raise TypeError("target must be a PIL image, an image path, a prompt or a (D,) tensor, "
                            f"got {type(target).__name__}")
        thetas = _check_axis("thetas", thetas, allow_extrapolation)
        alphas = _check_axis("alphas", alphas, True)
        for name, value in (("num_inference_steps", num_inference_steps), ("height", height), ("width", width),
                            ("max_batch_size", max_batch_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, (int, float)) \
                or not math.isfinite(guidance_scale):
            raise ValueError(f"guidance_scale must be a finite number, got {guidance_scale!r}")
        check_magnitude("guidance_scale", guidance_scale)
        if output_type not in _OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {_OUTPUT_TYPES}, got {output_type!r}")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError("generator must be one torch.Generator (every cell shares its noise), "
                            f"got {type(generator).__name__}")
        if latents is not None and not isinstance(latents, torch.Tensor):
            raise TypeError(f"latents must be a tensor, got {type(latents).__name__}")
        bad = [k for k in callback_on_step_end_tensor_inputs or [] if k not in self._callback_tensor_inputs]
        if bad:
            raise ValueError(f"callback_on_step_end_tensor_inputs must be in {self._callback_tensor_inputs}, got {bad}")
        return thetas, alphas

    def size_rule(self) -> tuple[int, int | None]:
        """``(factor, fixed)``: sizes must be multiples of ``factor`` px (Kandinsky 2.2: the
        movq's factor squared, as ``downscale_height_and_width`` rounds up to it), and equal
        ``fixed`` when the model renders one size only (None here)."""
        return self.movq_scale_factor ** 2, None

    def _check_limits(self, height: int, width: int, cells: int, max_size: int, max_cells: int) -> None:
        """The size rule and the caps of :mod:`vslerp.pipelines.limits` (before any compute)."""
        factor, fixed = self.size_rule()
        for name, value in (("height", height), ("width", width)):
            limits.check_size(name, value, factor=factor, fixed=fixed, max_size=max_size)
        limits.check_cells(cells, max_cells=max_cells)

    def _warn_if_truncated(self, name: str, prompt: str) -> None:
        """CLIP reads ``tokenizer.model_max_length`` tokens (77); diffusers' prior pipeline
        truncates longer prompts: say so once, as a warning, naming the prompt's length."""
        limit = int(self.tokenizer.model_max_length)
        count = len(self.tokenizer(prompt, truncation=False, verbose=False).input_ids)
        if count > limit:
            warnings.warn(f"the {name} prompt is {count} tokens long: CLIP reads its first {limit} "
                          "tokens and ignores the rest", UserWarning, stacklevel=5)

    # -- rendering ----------------------------------------------------------------------
    @property
    def guidance_scale(self):
        return self._guidance_scale

    @property
    def do_classifier_free_guidance(self):
        return self._guidance_scale > 1

    @property
    def num_timesteps(self):
        return self._num_timesteps

    def _device(self) -> torch.device:
        """Where the UNet runs: diffusers' ``_execution_device`` under offload hooks, else the UNet's
        device (``_execution_device`` walks every module of all nine components: ms per call)."""
        denoiser = self._denoiser()
        if hasattr(denoiser, "_hf_hook") or hasattr(denoiser, "_diffusers_hook"):
            return self._execution_device
        return denoiser.device

    @staticmethod
    def _clone_generator(state: torch.Tensor, device) -> torch.Generator:
        gen = torch.Generator(device=device)
        gen.set_state(state)
        return gen

    @torch.no_grad()
    def __call__(self, source, target, thetas=(0.0, 0.5, 1.0), alphas=(0.0,), num_inference_steps: int = 50,
                 guidance_scale: float | None = None, height: int | None = None, width: int | None = None, generator=None, latents=None,
                 max_batch_size: int = 8, allow_extrapolation: bool = False, negative_image_embeds=None,
                 callback_on_step_end=None, callback_on_step_end_tensor_inputs=("latents",),
                 output_type: str = "pil", prior_num_inference_steps: int = 25,
                 super_res_num_inference_steps: int = 7,
                 return_dict: bool = True, max_size: int = limits.MAX_SIZE,
                 max_cells: int = limits.MAX_CELLS, statistics=None) -> VSlerpPipelineOutput:
        """Render the θ × α grid of vSLERP(source, target, θ, α, m) (paper Eq. 12).

        source: PIL image | image path | (D,) raw embedding. target: the same, or a prompt
        (through the prior, seeded from ``generator``'s state). thetas: T values in [0, 1]
        (outside only with ``allow_extrapolation=True``); alphas: A values (−2..2 useful).
        Every cell starts from the latents ``KandinskyV22Pipeline.prepare_latents`` draws for one
        image with ``generator`` (or ``latents`` (1, C, h, w)); stochastic scheduler steps use
        copies of that generator per cell, so a θ=0 cell equals diffusers' single render of the
        source embedding. negative_image_embeds: (D,) or (1, D); default the all-zeros image's
        embedding (as the prior pipeline). Cells run ``max_batch_size`` at a time.
        guidance_scale, height, width: None → the backend's defaults (Kandinsky 2.2: 4.0, 512×512;
        unCLIP: 8.0 and the super-resolution size); super_res_num_inference_steps: unCLIP only.
        max_size, max_cells: the limits of one call (:mod:`vslerp.pipelines.limits`: 4096 px,
        1024 cells), raised by passing larger ones. statistics: the image mean's source for this
        call only (path | Statistics | (D,) tensor, as :meth:`set_statistics`); None → the
        pipeline's own. An out-of-memory while rendering raises
        :class:`~vslerp.pipelines.limits.RenderOutOfMemory` naming the size and batch.
        Returns :class:`VSlerpPipelineOutput` (images row-major over thetas × alphas).
        """
        cb_inputs = list(callback_on_step_end_tensor_inputs or [])
        guidance_scale = self.default_guidance_scale if guidance_scale is None else guidance_scale
        height = self.default_size if height is None else height
        width = self.default_size if width is None else width
        thetas, alphas = self.check_inputs(source, target, thetas, alphas, num_inference_steps, guidance_scale,
                                           height, width, max_batch_size, output_type, generator, latents,
                                           cb_inputs, allow_extrapolation)
        self._check_limits(height, width, len(thetas) * len(alphas), max_size, max_cells)
        # UnCLIPScheduler (the prior's; unCLIP's decoder and super-resolution) divides by steps - 1
        for name, value, low in (("prior_num_inference_steps", prior_num_inference_steps, 2),
                                 ("super_res_num_inference_steps", super_res_num_inference_steps, 2),
                                 ("num_inference_steps", num_inference_steps, self._min_steps)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        stats = self._statistics_for(statistics)
        device = self._device()
        self._guidance_scale = guidance_scale
        if generator is None:
            generator = torch.Generator().manual_seed(int(torch.randint(0, 2**62, ()).item()))
        initial_state = generator.get_state()

        # Embeddings (raw, float32, CPU) — every input error surfaces before denoising.
        source_raw = self._resolve("source", source, False, None, prior_num_inference_steps)  # (D,)
        prompt_gen = self._clone_generator(initial_state, generator.device)
        target_raw = self._resolve("target", target, True, prompt_gen, prior_num_inference_steps)  # (D,)
        if negative_image_embeds is None:
            negative_raw = self._default_negative()
        elif self.backend == "unclip":
            raise ValueError("negative_image_embeds is not supported by the unCLIP backend")
        else:
            negative_raw = self._check_embedding("negative_image_embeds", torch.as_tensor(negative_image_embeds))
        mean = stats.image.mean.to(torch.float32)  # (D,)
        theta_grid = torch.tensor(thetas, dtype=torch.float32)[:, None].expand(len(thetas), len(alphas))
        alpha_grid = torch.tensor(alphas, dtype=torch.float32)[None, :].expand(len(thetas), len(alphas))
        cells = vslerp.vslerp(source_raw, target_raw, theta_grid, alpha_grid, mean)  # (T, A, D)
        if not bool(torch.isfinite(cells).all()):
            raise ValueError("some cells' embeddings are not finite (extreme alphas or thetas?)")
        conformity = self.estimated_conformity(cells.reshape(-1, cells.shape[-1]), statistics=stats
                                               ).reshape(cells.shape[:2])

        # Equal embeddings render equal images (same noise, same generator copies): render each
        # distinct cell once. A θ=0 row is the source for every α (Eq. 12), a θ=1 row the target.
        distinct, inverse = _distinct_rows(cells.reshape(-1, cells.shape[-1]))  # (U, D), (T·A,)
        try:
            outputs = self._render(distinct, device, negative_raw, generator, initial_state, latents,
                                   num_inference_steps, height, width, max_batch_size, output_type,
                                   callback_on_step_end, cb_inputs,
                                   super_res_num_inference_steps=super_res_num_inference_steps)
        except Exception as err:  # noqa: BLE001 - torch's OOM types differ by device and version
            if not limits.is_out_of_memory(err) or isinstance(err, limits.RenderOutOfMemory):
                raise
            self.maybe_free_model_hooks()
            raise limits.out_of_memory(height, width, min(max_batch_size, distinct.shape[0])) from err
        self.maybe_free_model_hooks()
        if output_type == "pil":
            rendered = [im for part in outputs for im in part]
            images, seen = [], set()
            for k in inverse.tolist():  # a repeated cell gets its own copy of the image
                images.append(rendered[k].copy() if k in seen else rendered[k])
                seen.add(k)
        elif output_type == "np":
            images = np.concatenate(outputs, axis=0)[inverse.numpy()]
        else:
            images = torch.cat(outputs, dim=0)[inverse.to(outputs[0].device)]
        result = VSlerpPipelineOutput(images=images, embeddings=cells.float(), thetas=thetas, alphas=alphas,
                                      conformity=conformity)
        return result if return_dict else result.to_tuple()

    @torch.no_grad()
    def render_batch(self, requests, num_inference_steps: int = 50, guidance_scale: float | None = None,
                     height: int | None = None, width: int | None = None, max_batch_size: int = 8,
                     negative_image_embeds=None, callback_on_step_end=None,
                     callback_on_step_end_tensor_inputs=("latents",), output_type: str = "pil",
                     super_res_num_inference_steps: int = 7, statistics=None) -> list[VSlerpPipelineOutput]:
        """Render independent requests that share steps, guidance and size in one batched call.

        requests: dicts ``{"source": (D,) raw, "target": (D,) raw, "thetas": [...], "alphas": [...],
        "generator": torch.Generator}``, θ in [0, 1]. Each request's cells start from the latents a
        call ``pipe(source, target, thetas, alphas, generator=g)`` draws, and step with copies of
        that generator (the request's generator itself is only read, not advanced): every request
        gets what it would get alone, while the UNet sees all requests' cells in ``max_batch_size``
        chunks. A request's optional ``"statistics"`` (as :meth:`set_statistics` takes it) is its
        image mean's source; else ``statistics``, else the pipeline's own. Returns one
        :class:`VSlerpPipelineOutput` per request, in order.
        """
        cb_inputs = list(callback_on_step_end_tensor_inputs or [])
        guidance_scale = self.default_guidance_scale if guidance_scale is None else guidance_scale
        height = self.default_size if height is None else height
        width = self.default_size if width is None else width
        if not requests:
            return []
        grids, states = [], []
        call_stats = self._statistics_for(statistics)
        for k, req in enumerate(requests):
            name = f"requests[{k}]"
            generator = req.get("generator")
            if not isinstance(req.get("source"), torch.Tensor) or not isinstance(req.get("target"), torch.Tensor):
                raise TypeError(f"{name}: source and target must be raw (D,) embeddings")
            thetas, alphas = self.check_inputs(req["source"], req["target"], req["thetas"], req["alphas"],
                                               num_inference_steps, guidance_scale, height, width, max_batch_size,
                                               output_type, generator, None, cb_inputs, False)
            if generator is None:
                raise TypeError(f"{name}: give each request its own torch.Generator")
            source_raw = self._check_embedding(f"{name} source", req["source"])  # (D,)
            target_raw = self._check_embedding(f"{name} target", req["target"])  # (D,)
            stats = call_stats if req.get("statistics") is None else self.check_statistics(req["statistics"])
            mean = stats.image.mean.to(torch.float32)  # (D,)
            theta_grid = torch.tensor(thetas, dtype=torch.float32)[:, None].expand(len(thetas), len(alphas))
            alpha_grid = torch.tensor(alphas, dtype=torch.float32)[None, :].expand(len(thetas), len(alphas))
            cells = vslerp.vslerp(source_raw, target_raw, theta_grid, alpha_grid, mean)  # (T, A, D)
            if not bool(torch.isfinite(cells).all()):
                raise ValueError(f"{name}: some cells' embeddings are not finite (extreme alphas or thetas?)")
            distinct, inverse = _distinct_rows(cells.reshape(-1, cells.shape[-1]))  # (U, D), (T·A,)
            grids.append((thetas, alphas, cells, distinct, inverse, stats))
            states.append(generator.get_state())
        if negative_image_embeds is None:
            negative_raw = self._default_negative()
        else:
            negative_raw = self._check_embedding("negative_image_embeds", torch.as_tensor(negative_image_embeds))
        device = self._device()
        self._guidance_scale = guidance_scale
        render = dict(num_inference_steps=num_inference_steps, height=height, width=width,
                      max_batch_size=max_batch_size, output_type=output_type,
                      callback_on_step_end=callback_on_step_end, cb_inputs=cb_inputs,
                      super_res_num_inference_steps=super_res_num_inference_steps)

        def flatten(outputs):
            if output_type == "pil":
                return [im for part in outputs for im in part]
            return np.concatenate(outputs, axis=0) if output_type == "np" else torch.cat(outputs, dim=0)

        if type(self)._render is VSlerpPipeline._render and len(requests) > 1:  # all cells in one call
            flat = torch.cat([grid[3] for grid in grids])  # (ΣU, D)
            cell_states = [state for grid, state in zip(grids, states, strict=True)
                           for _ in range(grid[3].shape[0])]
            generator = self._clone_generator(states[0], requests[0]["generator"].device)
            rendered = flatten(self._render(flat, device, negative_raw, generator, cell_states, None, **render))
            per_request, start = [], 0
            for grid in grids:
                per_request.append(rendered[start : start + grid[3].shape[0]])
                start += grid[3].shape[0]
        else:  # one request, or a backend with its own _render: request by request
            per_request = [flatten(self._render(grid[3], device, negative_raw,
                                                self._clone_generator(state, req["generator"].device), state,
                                                None, **render))
                           for req, state, grid in zip(requests, states, grids, strict=True)]
        self.maybe_free_model_hooks()
        results = []
        for (thetas, alphas, cells, _, inverse, stats), rendered in zip(grids, per_request, strict=True):
            if output_type == "pil":
                images, seen = [], set()
                for k in inverse.tolist():  # a repeated cell gets its own copy of the image
                    images.append(rendered[k].copy() if k in seen else rendered[k])
                    seen.add(k)
            elif output_type == "np":
                images = rendered[inverse.numpy()]
            else:
                images = rendered[inverse.to(rendered.device)]
            conformity = self.estimated_conformity(cells.reshape(-1, cells.shape[-1]), statistics=stats
                                                   ).reshape(cells.shape[:2])
            results.append(VSlerpPipelineOutput(images=images, embeddings=cells.float(), thetas=thetas,
                                                alphas=alphas, conformity=conformity))
        return results

    def _render(self, flat, device, negative_raw, generator, initial_state, latents, num_inference_steps, height,
                width, max_batch_size, output_type, callback_on_step_end, cb_inputs,
                super_res_num_inference_steps=7) -> list:
        """Render cells (N, D) in chunks of ``max_batch_size``; returns one output per chunk.

        initial_state: one generator state (every cell starts from the latents it draws: a grid's
        shared noise) or a list of N states, one per cell (independent requests: each cell starts
        from the latents a single render from its own state draws, and steps with copies of it).
        """
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps
        self._num_timesteps = len(timesteps)
        lat_h, lat_w = _downscale(height, width, self.movq_scale_factor)
        shape = (1, self.unet.config.in_channels, lat_h, lat_w)
        dtype = self.unet.dtype
        per_cell = isinstance(initial_state, (list, tuple))
        if per_cell and latents is not None:
            raise ValueError("latents cannot be combined with per-cell generator states")
        if latents is not None:
            if latents.ndim == 3:
                latents = latents[None]
            if tuple(latents.shape) != shape:
                raise ValueError(f"latents must have shape {shape} (one image), got {tuple(latents.shape)}")
        drawn: dict[bytes, tuple] = {}  # generator state → (init latents (1, C, h, w), state after)
        for state in (initial_state if per_cell else [initial_state]):
            key = state.numpy().tobytes()
            if key not in drawn:  # one image's latents, as KandinskyV22Pipeline draws them
                generator.set_state(state)
                lat = latents.to(device=device, dtype=dtype) if latents is not None else \
                    randn_tensor(shape, generator=generator, device=device, dtype=dtype)
                drawn[key] = (lat * self.scheduler.init_noise_sigma, generator.get_state())
        if per_cell:
            cells = [drawn[state.numpy().tobytes()] for state in initial_state]
            init_latents = torch.cat([lat for lat, _ in cells])  # (N, C, h, w), one per cell
            after_states = [after for _, after in cells]
        else:
            init_latents, after_states = drawn[initial_state.numpy().tobytes()]  # (1, C, h, w): shared

        outputs = []
        starts = range(0, flat.shape[0], max_batch_size)
        with self.progress_bar(total=len(starts) * len(timesteps)) as bar:
            for i in starts:
                part = slice(i, i + max_batch_size)
                outputs.append(self._render_chunk(flat[part], device, negative_raw,
                                                  init_latents[part] if per_cell else init_latents, timesteps,
                                                  after_states[part] if per_cell else after_states,
                                                  generator.device, output_type, callback_on_step_end,
                                                  cb_inputs, bar))
        generator.set_state(after_states[-1] if per_cell else after_states)
        return outputs

    def _render_chunk(self, chunk, device, negative_raw, init_latents, timesteps, gen_state, gen_device, output_type,
                      callback_on_step_end, cb_inputs, bar):
        """Denoise and decode one batch of cells (B, D) exactly as KandinskyV22Pipeline.__call__.

        init_latents: (1, C, h, w) shared by every cell, or (B, C, h, w) one per cell; gen_state: one
        generator state copied for every cell, or a list of B states (one per cell).
        """
        batch = chunk.shape[0]
        image_embeds = chunk.to(device=device, dtype=self.unet.dtype)  # (B, D)
        negative_image_embeds = negative_raw[None].expand(batch, -1).to(device=device, dtype=self.unet.dtype)
        if self.do_classifier_free_guidance:
            image_embeds = torch.cat([negative_image_embeds, image_embeds], dim=0)  # (2B, D)
        latents = init_latents.expand(batch, -1, -1, -1).clone()  # (B, C, h, w)
        # One generator copy per cell: a stochastic step draws the single render's noise for each.
        states = gen_state if isinstance(gen_state, (list, tuple)) else [gen_state] * batch
        generators = [self._clone_generator(state, gen_device) for state in states]
        step_generator = generators if batch > 1 else generators[0]
        for i, t in enumerate(timesteps):
            latent_model_input = torch.cat([latents] * 2) if self.do_classifier_free_guidance else latents
            noise_pred = self.unet(sample=latent_model_input, timestep=t, encoder_hidden_states=None,
                                   added_cond_kwargs={"image_embeds": image_embeds}, return_dict=False)[0]
            if self.do_classifier_free_guidance:
                noise_pred, variance_pred = noise_pred.split(latents.shape[1], dim=1)
                noise_pred_uncond, noise_pred_text = noise_pred.chunk(2)
                _, variance_pred_text = variance_pred.chunk(2)
                noise_pred = noise_pred_uncond + self.guidance_scale * (noise_pred_text - noise_pred_uncond)
                noise_pred = torch.cat([noise_pred, variance_pred_text], dim=1)
            if not (hasattr(self.scheduler.config, "variance_type")
                    and self.scheduler.config.variance_type in ["learned", "learned_range"]):
                noise_pred, _ = noise_pred.split(latents.shape[1], dim=1)
            latents = self.scheduler.step(noise_pred, t, latents, generator=step_generator)[0]
            if callback_on_step_end is not None:
                values = {"latents": latents, "image_embeds": image_embeds,
                          "negative_image_embeds": negative_image_embeds}
                callback_outputs = callback_on_step_end(self, i, t, {k: values[k] for k in cb_inputs}) or {}
                latents = callback_outputs.pop("latents", latents)
                image_embeds = callback_outputs.pop("image_embeds", image_embeds)
                negative_image_embeds = callback_outputs.pop("negative_image_embeds", negative_image_embeds)
            bar.update()
        if output_type == "latent":
            return latents
        image = self._decode_latents(latents)  # (B, 3, H, W)
        if output_type == "pt":
            return image
        image = (image * 0.5 + 0.5).clamp(0, 1).cpu().permute(0, 2, 3, 1).float().numpy()  # (B, H, W, 3)
        return self.numpy_to_pil(image) if output_type == "pil" else image

    # -- metadata -----------------------------------------------------------------------
    def describe(self, statistics=None) -> dict:
        """JSON-able description for sidecars and editor metadata (of a call with ``statistics``)."""
        stats = self._statistics_for(statistics)
        return {
            "backend": self.backend,
            "decoder": self.model_ids.get("decoder"),
            "prior": self.model_ids.get("prior"),
            "mean_source": stats.metadata.get("source"),
            "stats_fingerprint": stats.fingerprint,
            "stats_model_id": stats.metadata.get("model_id"),
            "conformity": self.conformity_method(stats),
            "dim": int(self.image_encoder.config.projection_dim),
            "dtype": str(self._denoiser().dtype).replace("torch.", ""),
            "device": str(self._execution_device),
            "scheduler": type(self._main_scheduler()).__name__,
            "vslerp_version": __version__,
        }
