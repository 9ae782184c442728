"""VSlerpBasePipeline: the diffusers-style call every backend shares.

``pipe(source, target, thetas, alphas, ...)`` and ``pipe.mix(inputs, weights, alphas, ...)``
(:mod:`.mixing`) take one path (``_generate``): check the request (:mod:`.request`), encode the
inputs (raw CLIP image space; a prompt through the backend's prior), build the cells
(:mod:`.grid`), hand the distinct ones to the backend ``max_batch_size`` at a time and map the
images back; ``render_batch`` renders many requests of raw embeddings in one batched call.

A backend is a subclass that registers its components and implements the ``# -- backend
interface`` block below; its ``_render_chunk`` hands a batch of cells, their noise and one
generator copy per cell to diffusers' own pipeline. Loading and dispatch: :mod:`.loading`.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from diffusers import DiffusionPipeline

from vslerp._version import __version__
from vslerp.defaults import STATISTICS_FILE
from vslerp.stats import Statistics

from . import limits
from .encoding import EncodingMixin
from .grid import Grid, VSlerpPipelineOutput, join_chunks, make_grid, make_mix
from .inputs import check_embedding, check_generator, check_input, check_request, init_photo
from .mixing import MixMixin
from .request import RenderRequest, RenderSettings, RequestError, RequestTypeError, clone_generator
from .serial import serialised
from .statistics import StatisticsMixin

__all__ = ["VSlerpBasePipeline"]


class VSlerpBasePipeline(StatisticsMixin, EncodingMixin, MixMixin, DiffusionPipeline):
    """Vertical SLERP between two CLIP image embeddings (paper Eq. 12), on a diffusers generator.

    Not used directly: :class:`~vslerp.pipelines.VSlerpPipeline` (Kandinsky 2.2, and the
    entry point that loads any backend) and :class:`~vslerp.pipelines.VSlerpUnCLIPPipeline`.
    """

    # -- backend interface: each backend sets these and implements the methods below ---------
    backend = ""  # its name in describe(), sidecars and from_pretrained(backend=)
    default_guidance_scale = 1.0  # diffusers' default for the model
    default_size = 512  # px (a property where the model fixes the size)
    _min_steps = 1  # denoising steps at least (the decoder's scheduler)
    _callback_tensor_inputs: list[str] = []  # what callback_on_step_end may ask for
    _optional_components: list[str] = []
    _bar_config: dict = {}  # set_progress_bar_config's options, handed to diffusers' pipelines
    # the options of RenderSettings this backend takes away from their defaults: "strength"
    # (img2img), "prompt", "negative_prompt", "noise_level", "ip_adapter_scale"
    _backend_options: tuple[str, ...] = ()

    def _clip_processor(self):
        """The CLIP image processor of ``image_encoder``."""
        raise NotImplementedError

    def _denoiser(self) -> torch.nn.Module:
        """The module that denoises (its dtype is the render's)."""
        raise NotImplementedError

    def _main_scheduler(self):
        """The denoiser's scheduler (named in describe())."""
        raise NotImplementedError

    def _default_statistics(self) -> Statistics:
        """The image mean's source when none is given."""
        raise NotImplementedError

    def _default_negative(self) -> torch.Tensor | None:
        """The unconditional image embedding (D,), or None where the model has its own."""
        raise NotImplementedError

    def prompt_to_image_embedding(self, prompts, generator=None, num_inference_steps: int = 25,
                                  guidance_scale: float = 4.0) -> torch.Tensor:
        """Prompts → raw image embeddings (N, D) float32 (through the backend's prior)."""
        raise NotImplementedError

    def size_rule(self) -> tuple[int, int | None]:
        """``(factor, fixed)``: sizes are multiples of ``factor`` px, equal to ``fixed`` if not None."""
        raise NotImplementedError

    def _check_backend(self, settings: RenderSettings, target) -> list[str]:
        """Refuse what this backend cannot render (before any compute); returns the callback tensor inputs."""
        return settings.callback_tensor_inputs

    def _progress_steps(self, settings: RenderSettings) -> int | None:
        """Steps of one batch on the call's progress bar; None: diffusers' pipeline shows its own."""
        return settings.denoise_steps

    def _render_chunk(self, chunk: torch.Tensor, noise: list[torch.Generator], device: torch.device,
                      settings: RenderSettings, tick: Callable[[], None], init: list | None = None):
        """Render one batch of distinct cells (B, D) raw; returns B images as ``output_type`` asks.

        noise: B generators, read only: cell k is diffusers' render of one image with ``noise[k]``.
        tick: advance the progress bar one step. init: with ``strength`` < 1, the B photos (PIL)
        the cells start from, as diffusers' img2img pipeline renders ``image=``; else None."""
        raise NotImplementedError

    def _advance_generator(self, generator: torch.Generator, settings: RenderSettings) -> None:
        """Leave the call's generator as one render of diffusers' pipeline would (default: as it is)."""

    # -- construction and saving -------------------------------------------------------------
    def __init__(self):
        super().__init__()
        self._statistics: Statistics | None = None
        self._guidance_scale = 1.0
        self._num_timesteps = 0
        self.model_ids = {"decoder": None, "prior": None}

    @classmethod
    def from_pretrained(cls, decoder_id_or_dir=None, prior=None, stats=None, dtype=None,
                        backend: str = "auto", device="auto", *, torch_dtype=None, **kwargs):
        """Load from hub repos / local folders, or a folder saved by :meth:`save_pretrained`.

        ``VSlerpPipeline.from_pretrained`` picks the backend from ``model_index.json``'s
        ``_class_name`` (as diffusers' AutoPipeline); a backend's own class loads that backend.

        Args:
            decoder_id_or_dir: the decoder's hub id or folder (None: the default model), or a
                folder saved by :meth:`save_pretrained`.
            prior: the prior's hub id or folder (Kandinsky 2.2; None: the default prior).
            stats: the image mean's source (path | Statistics | (D,) tensor); None: the model's.
            dtype: the ``torch.dtype`` of every component; None: float16 on CUDA, else float32.
            backend: ``"auto"`` (from ``model_index.json``) or a backend's name.
            device: ``"auto"``, a device, or None (stay on the CPU, not moved).
            torch_dtype: deprecated alias of ``dtype`` (diffusers renamed it), for one release.
            kwargs: see :func:`vslerp.pipelines.loading.load_pipeline`.
        """
        from .loading import load_pipeline

        if torch_dtype is not None:
            if dtype is not None:
                raise TypeError("give dtype= only (torch_dtype= is its deprecated alias)")
            warnings.warn("torch_dtype= is deprecated and will be removed in the next release: use dtype=",
                          FutureWarning, stacklevel=2)
            dtype = torch_dtype
        return load_pipeline(cls, decoder_id_or_dir, prior=prior, stats=stats, dtype=dtype,
                             backend=backend, device=device, **kwargs)

    @classmethod
    def _load_saved(cls, folder: Path, dtype: torch.dtype, **kwargs):
        """diffusers' own ``DiffusionPipeline.from_pretrained`` of a folder this class saved."""
        return super().from_pretrained(str(folder), dtype=dtype, **kwargs)

    def save_pretrained(self, save_directory, *args, **kwargs):
        """diffusers' ``save_pretrained`` plus the statistics as ``vslerp_statistics.safetensors``."""
        super().save_pretrained(save_directory, *args, **kwargs)
        self.statistics.save(Path(save_directory) / STATISTICS_FILE)

    def set_progress_bar_config(self, **kwargs):
        """diffusers' own; the options also reach the diffusers pipelines a backend renders with."""
        super().set_progress_bar_config(**kwargs)
        self._bar_config = dict(kwargs)

    def execution_device(self) -> torch.device:
        """The offload hooks' device, else the denoiser's (``_execution_device`` walks every module)."""
        denoiser = self._denoiser()
        if hasattr(denoiser, "_hf_hook") or hasattr(denoiser, "_diffusers_hook"):
            return self._execution_device
        return denoiser.device

    # -- inputs ----------------------------------------------------------------------------------
    def check_request(self, fields: dict, origin: str = "") -> RenderRequest:
        """A call's fields checked once as a ``RenderRequest`` for this backend (``RequestError``: the field)."""
        return RenderRequest.from_fields(fields, origin).for_backend(
            self.backend, self._backend_options, self.size_rule(), self._min_steps, self.default_size,
            self.default_guidance_scale)

    def _settings(self, request: RenderRequest, target, latents, negative, callback, tensor_inputs) -> RenderSettings:
        """The settings every batch renders with; the backend refuses what it cannot render."""
        if latents is not None and not isinstance(latents, torch.Tensor):
            raise RequestTypeError("latents", f"latents must be a tensor, got {type(latents).__name__}")
        settings = RenderSettings.of_request(request, latents, negative, callback, tensor_inputs)
        bad = [k for k in self._check_backend(settings, target) if k not in self._callback_tensor_inputs]
        if bad:
            raise RequestError("callback_on_step_end_tensor_inputs",
                               f"callback_on_step_end_tensor_inputs must be in {self._callback_tensor_inputs}, got {bad}")
        return settings

    def _negative(self, negative_image_embeds) -> torch.Tensor | None:
        """The unconditional embedding (D,): the caller's, else the backend's own."""
        if negative_image_embeds is None:
            return self._default_negative()
        return check_embedding("negative_image_embeds", torch.as_tensor(negative_image_embeds), self._dim())

    # -- rendering -------------------------------------------------------------------------------
    @property
    def guidance_scale(self):
        return self._guidance_scale

    @property
    def do_classifier_free_guidance(self):
        return self._guidance_scale > 1

    @property
    def num_timesteps(self):
        return self._num_timesteps

    def _render(self, cells: torch.Tensor, noise: list[torch.Generator], settings: RenderSettings,
                init: list | None = None) -> list:
        """Render distinct cells (N, D) raw in batches of ``max_batch_size``; one output per batch.

        noise: one generator per cell, read and not advanced; init: one photo per cell or None
        (see :meth:`_render_chunk`)."""
        device = self.execution_device()
        self._guidance_scale = settings.guidance_scale
        starts = range(0, cells.shape[0], settings.max_batch_size)
        steps = self._progress_steps(settings)
        bar = self.progress_bar(total=len(starts) * steps) if steps else contextlib.nullcontext()
        outputs = []
        with bar as progress:
            tick = progress.update if progress is not None else (lambda: None)
            for start in starts:
                part = slice(start, start + settings.max_batch_size)
                photos = init[part] if init is not None else None
                outputs.append(self._render_chunk(cells[part], noise[part], device, settings, tick, photos))
        return outputs

    @serialised
    @torch.no_grad()
    def __call__(self, source, target, thetas=(0.0, 0.5, 1.0), alphas=(0.0,), num_inference_steps: int = 50,
                 guidance_scale: float | None = None, height: int | None = None, width: int | None = None,
                 generator=None, latents=None, max_batch_size: int = 8, allow_extrapolation: bool = False,
                 negative_image_embeds=None, callback_on_step_end=None,
                 callback_on_step_end_tensor_inputs=("latents",), output_type: str = "pil",
                 prior_num_inference_steps: int = 25, super_res_num_inference_steps: int = 7,
                 return_dict: bool = True, max_size: int = limits.MAX_SIZE,
                 max_cells: int = limits.MAX_CELLS, statistics=None, image=None, strength: float = 1.0,
                 prompt: str | None = None, negative_prompt: str | None = None, noise_level: int = 0,
                 ip_adapter_scale: float | None = None, true_cfg_scale: float = 1.0) -> VSlerpPipelineOutput:
        """Render the θ × α grid of vSLERP(source, target, θ, α, m) (paper Eq. 12).

        source: PIL image | numpy image | image path (each through ``vslerp.stats.open_image``)
        | (D,) raw embedding. target: the same, or a prompt (through the prior, seeded from
        ``generator``'s state). Calls on one pipeline are serialised (:mod:`.serial`). thetas: T values in [0, 1]
        (outside only with ``allow_extrapolation=True``); alphas: A values (−2..2 useful).
        Every cell is rendered as diffusers' own pipeline renders one image with ``generator``:
        the same initial latents for every cell (or ``latents`` (1, C, h, w)) and, for
        stochastic scheduler steps, one copy of that generator per cell — so a θ=0 cell equals
        diffusers' single render of the source embedding. negative_image_embeds: (D,) or (1, D);
        default the all-zeros image's embedding (as the prior pipeline). Distinct cells are
        rendered ``max_batch_size`` at a time. guidance_scale, height, width: None → the
        backend's defaults (Kandinsky 2.2: 4.0, 512×512; unCLIP: 8.0 and the super-resolution
        size); super_res_num_inference_steps: unCLIP only. max_size, max_cells: the limits of one
        call (:mod:`vslerp.pipelines.limits`: 4096 px, 1024 cells), raised by passing larger
        ones. statistics: the image mean's source for this call only (path | Statistics | (D,)
        tensor, as :meth:`set_statistics`); None → the pipeline's own. callback_on_step_end
        (pipe, step, timestep, tensors) → dict is called after every step of every batch, with
        this pipeline as ``pipe``. An out-of-memory while rendering raises
        :class:`~vslerp.pipelines.limits.RenderOutOfMemory` naming the size and batch.
        strength: 1 (default) renders every cell from noise; below 1 every cell starts from the
        photo (``image``, default the source image) encoded by the backend's VAE/MoVQ and
        noised to ``strength``, as diffusers' img2img pipelines do — the grid keeps the
        photo's layout. prompt, negative_prompt: text conditioning (Stable unCLIP, IP-Adapter);
        noise_level: Stable unCLIP's; ip_adapter_scale: the IP-Adapter's (None: as set);
        true_cfg_scale: FLUX's true classifier-free guidance (with ``negative_prompt``). A
        backend refuses the options it does not take, naming them.
        Returns :class:`VSlerpPipelineOutput` (images row-major over thetas × alphas).
        """
        check_input("source", source, prompt=False)
        check_input("target", target, prompt=True)
        request = self.check_request(dict(
            thetas=thetas, alphas=alphas, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
            height=height, width=width, max_batch_size=max_batch_size, output_type=output_type,
            allow_extrapolation=allow_extrapolation, prior_num_inference_steps=prior_num_inference_steps,
            super_res_num_inference_steps=super_res_num_inference_steps, max_size=max_size, max_cells=max_cells,
            strength=strength, prompt=prompt, negative_prompt=negative_prompt, noise_level=noise_level,
            ip_adapter_scale=ip_adapter_scale, true_cfg_scale=true_cfg_scale))
        grid, rendered = self._generate(request, [("source", source, False), ("target", target, True)], target,
                                        generator, latents, negative_image_embeds, callback_on_step_end,
                                        callback_on_step_end_tensor_inputs, statistics, image)
        result = grid.output(rendered, output_type)
        return result if return_dict else result.to_tuple()

    def _generate(self, request: RenderRequest, inputs: list, target, generator, latents, negative, callback,
                  tensor_inputs, statistics, image) -> tuple[Grid, list]:
        """``__call__``'s and ``mix``'s render: ``inputs`` ``(name, value, may be a prompt)`` as raw (D,)
        (``target``: what the backend checks), the cells (θ × α, weights × α), the distinct ones rendered."""
        check_generator("generator", generator)
        settings = self._settings(request, target, latents, negative, callback, tensor_inputs)
        stats = self._statistics_for(statistics)
        photo = init_photo("", image, inputs[0][1], settings.strength)
        if generator is None:
            generator = torch.Generator().manual_seed(int(torch.randint(0, 2**62, ()).item()))

        # Embeddings (raw, float32, CPU): every input error surfaces before denoising.
        raws = torch.stack([self._resolve(name, value, prompt, clone_generator(generator) if prompt else None,
                                          request.prior_num_inference_steps) for name, value, prompt in inputs])  # (N, D)
        settings.negative = self._negative(settings.negative)
        grid = (make_grid(raws[0], raws[1], list(request.thetas), list(request.alphas), stats) if request.weights is None
                else make_mix(raws, [list(row) for row in request.weights], list(request.alphas), stats))
        try:
            count = grid.distinct.shape[0]
            outputs = self._render(grid.distinct, [generator] * count, settings,
                                   [photo] * count if photo is not None else None)
        except Exception as err:  # noqa: BLE001 - torch's OOM types differ by device and version
            if not limits.is_out_of_memory(err) or isinstance(err, limits.RenderOutOfMemory):
                raise
            self.maybe_free_model_hooks()
            raise limits.out_of_memory(settings.height, settings.width,
                                       min(settings.max_batch_size, grid.distinct.shape[0])) from err
        self.maybe_free_model_hooks()
        self._advance_generator(generator, settings)
        return grid, join_chunks(outputs, request.output_type)

    @serialised
    @torch.no_grad()
    def render_batch(self, requests, num_inference_steps: int = 50, guidance_scale: float | None = None,
                     height: int | None = None, width: int | None = None, max_batch_size: int = 8,
                     negative_image_embeds=None, callback_on_step_end=None,
                     callback_on_step_end_tensor_inputs=("latents",), output_type: str = "pil",
                     super_res_num_inference_steps: int = 7, statistics=None, strength: float = 1.0,
                     prompt: str | None = None, negative_prompt: str | None = None, noise_level: int = 0,
                     ip_adapter_scale: float | None = None, true_cfg_scale: float = 1.0,
                     max_size: int = limits.MAX_SIZE,
                     max_cells: int = limits.MAX_CELLS) -> list[VSlerpPipelineOutput]:
        """Render independent requests that share steps, guidance and size in one batched call.

        Args:
            requests: dicts ``{"source": (D,) raw, "target": (D,) raw, "thetas", "alphas",
                "generator"}`` or mixes ``{"inputs": (N, D) raw, "weights": rows, "alphas",
                "generator"}``; optional ``"statistics"`` (the request's image mean) and, with
                ``strength`` < 1, ``"image"`` (its photo). Each request gets what ``pipe(...)``
                (a mix: ``pipe.mix(...)``) gives it with that generator (only read, not advanced),
                while the denoiser sees every request's distinct cells ``max_batch_size`` at a time.
            the rest: as :meth:`__call__`, shared by every request.

        Returns:
            One :class:`VSlerpPipelineOutput` (a mix: :class:`VSlerpMixOutput`) per request, in order.
        """
        shared = dict(num_inference_steps=num_inference_steps, guidance_scale=guidance_scale, height=height,
                      width=width, max_batch_size=max_batch_size, output_type=output_type,
                      super_res_num_inference_steps=super_res_num_inference_steps, max_size=max_size,
                      max_cells=max_cells, strength=strength, prompt=prompt, negative_prompt=negative_prompt,
                      noise_level=noise_level, ip_adapter_scale=ip_adapter_scale, true_cfg_scale=true_cfg_scale)
        settings = self._settings(self.check_request(shared), None, None, negative_image_embeds,
                                  callback_on_step_end, callback_on_step_end_tensor_inputs)
        if not requests:
            return []
        grids, noise, photos = [], [], []
        call_stats = self._statistics_for(statistics)
        for k, req in enumerate(requests):
            name, req = f"requests[{k}]", check_request(k, req)
            generator = req["generator"]
            stats = call_stats if req.get("statistics") is None else self.check_statistics(req["statistics"])
            grid = self._request_grid(name, req, shared, stats)
            grids.append(grid)
            noise += [generator] * grid.distinct.shape[0]
            photos += [init_photo(f"{name}: ", req.get("image"), None, settings.strength)] * grid.distinct.shape[0]
        settings.negative = self._negative(settings.negative)
        flat = torch.cat([grid.distinct for grid in grids])  # (ΣU, D): every request's distinct cells
        rendered = join_chunks(self._render(flat, noise, settings, photos if settings.strength < 1 else None),
                               output_type)
        self.maybe_free_model_hooks()
        results, start = [], 0
        for req, grid in zip(requests, grids, strict=True):
            part = rendered[start : start + grid.distinct.shape[0]]
            results.append(grid.mix_output(part, output_type, False) if "inputs" in req else grid.output(part, output_type))
            start += grid.distinct.shape[0]
        return results

    def _request_grid(self, name: str, req: dict, shared: dict, stats) -> Grid:
        """A ``render_batch`` request's cells: its θ × α grid, or its mix's weights × α."""
        if "inputs" not in req:
            axes = self.check_request({**shared, "thetas": req["thetas"], "alphas": req["alphas"]})
            source_raw = check_embedding(f"{name} source", req["source"], self._dim())  # (D,)
            target_raw = check_embedding(f"{name} target", req["target"], self._dim())  # (D,)
            return make_grid(source_raw, target_raw, list(axes.thetas), list(axes.alphas), stats, name=f"{name}: ")
        axes = self.check_request({**shared, "weights": req["weights"], "alphas": req["alphas"]})
        raws = torch.stack([check_embedding(f"{name} inputs[{i}]", v, self._dim()) for i, v in enumerate(req["inputs"])])
        return make_mix(raws, [list(row) for row in axes.weights], list(axes.alphas), stats, name=f"{name}: ")

    # -- speed options and metadata ------------------------------------------------------------
    def compile_unet(self, **kwargs) -> None:
        """``torch.compile`` the denoiser in place (``nn.Module.compile``); kwargs go to torch.compile."""
        self._denoiser().compile(**kwargs)

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
            "dim": self._dim(),
            "dtype": str(self._denoiser().dtype).replace("torch.", ""),
            "device": str(self.execution_device()),
            "scheduler": type(self._main_scheduler()).__name__,
            "vslerp_version": __version__,
        }
