"""One call's render settings, shared by every batch of cells it renders, and generator copies.

:class:`RenderSettings` is what a backend's ``_render_chunk`` receives besides the cells: steps,
guidance, size, output type, the initial latents, the unconditional embedding and the callback,
with the backend's defaults filled in and checked before any compute.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from . import limits
from .inputs import check_steps, options_given, refused_option

__all__ = ["RenderSettings", "clone_generator"]


def clone_generator(generator: torch.Generator) -> torch.Generator:
    """A new generator on ``generator``'s device in its current state (the original is not advanced)."""
    clone = torch.Generator(device=generator.device)
    clone.set_state(generator.get_state())
    return clone


def _finite(value) -> bool:
    """Whether ``value`` is not a floating-point tensor with NaN or Inf in it."""
    return not (isinstance(value, torch.Tensor) and value.is_floating_point()) or bool(torch.isfinite(value).all())


@dataclass
class RenderSettings:
    """What every batch of cells of one call is rendered with."""

    num_inference_steps: int  # the denoiser's steps
    guidance_scale: float  # classifier-free guidance (on when > 1)
    height: int  # px
    width: int  # px
    output_type: str  # "pil" | "np" | "pt" | "latent"
    max_batch_size: int  # distinct cells per batch
    latents: torch.Tensor | None = None  # (1, C, h, w) initial latents of every cell, or None: drawn
    negative: torch.Tensor | None = None  # (D,) raw unconditional embedding, None: the backend's own
    # (the caller's argument until the call resolves it)
    callback_on_step_end: Callable | None = None  # callback(pipe, step, timestep, tensors) -> dict
    callback_tensor_inputs: list[str] = field(default_factory=list)  # the tensors it receives
    super_res_num_inference_steps: int = 7  # unCLIP's super-resolution steps
    # Backend options (each backend names the ones it takes in ``_backend_options``):
    strength: float = 1.0  # img2img: < 1 starts from the photo noised to this strength
    prompt: str | None = None  # text conditioning (Stable unCLIP, IP-Adapter)
    negative_prompt: str | None = None
    noise_level: int = 0  # Stable unCLIP's image-embedding noise level
    ip_adapter_scale: float | None = None  # IP-Adapter's scale (None: as loaded / set)

    @classmethod
    def of_call(cls, pipe, num_inference_steps, guidance_scale, height, width, max_batch_size, output_type,
                callback_on_step_end, callback_on_step_end_tensor_inputs, super_res_num_inference_steps,
                negative_image_embeds=None, latents=None, **options) -> RenderSettings:
        """A call's arguments, None → ``pipe``'s backend defaults (guidance, size); ``options``:
        the backend options (strength, prompt, negative_prompt, noise_level, ip_adapter_scale),
        checked by :meth:`check_options`."""
        return cls(**options,
            num_inference_steps=num_inference_steps,
            guidance_scale=pipe.default_guidance_scale if guidance_scale is None else guidance_scale,
            height=pipe.default_size if height is None else height,
            width=pipe.default_size if width is None else width,
            output_type=output_type, max_batch_size=max_batch_size, latents=latents,
            negative=negative_image_embeds, callback_on_step_end=callback_on_step_end,
            callback_tensor_inputs=list(callback_on_step_end_tensor_inputs or []),
            super_res_num_inference_steps=super_res_num_inference_steps)

    def step_callback(self, pipe, step: int, timestep, tensors: dict) -> dict:
        """Call ``callback_on_step_end(pipe, step, timestep, tensors)`` (if any) and return the
        tensors it replaces ({} without one) — for every backend's diffusers loop. A tensor it
        returns, or changes in place, that is not finite (NaN/Inf latents would render black or
        NaN images) is a ``ValueError`` naming ``callback_on_step_end`` and the step."""
        callback = self.callback_on_step_end
        if callback is None:
            return {}
        finite_before = {key: _finite(value) for key, value in tensors.items()}
        out = callback(pipe, step, timestep, tensors)
        out = {} if out is None else out
        if not isinstance(out, dict):
            raise TypeError(f"callback_on_step_end must return a dict of tensors (or None), got {type(out).__name__}")
        for key, value in {**tensors, **out}.items():
            returned = key in out
            if not _finite(value) and (returned or finite_before.get(key, True)):
                how = "returned" if returned else "left in place"
                raise ValueError(f"callback_on_step_end {how} non-finite {key!r} (NaN or Inf) at step {step}: "
                                 "they would render NaN or black images")
        return out

    @property
    def denoise_steps(self) -> int:
        """The steps the denoiser runs: all of them, or img2img's ``int(steps × strength)``
        (diffusers' ``get_timesteps``)."""
        if self.strength >= 1.0:
            return self.num_inference_steps
        return min(int(self.num_inference_steps * self.strength), self.num_inference_steps)

    def check_options(self, backend: str, accepted: tuple[str, ...]) -> None:
        """The backend options: their types and ranges, and only the ones ``backend`` takes
        (``accepted``) away from their defaults — each refusal names the option and the backend."""
        strength = self.strength
        if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0.0 < strength <= 1.0:
            raise ValueError(f"strength must be a number in (0, 1] (1: from pure noise), got {strength!r}")
        self.strength = float(strength)
        for name in ("prompt", "negative_prompt"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise TypeError(f"{name} must be a string or None, got {type(value).__name__}")
        level = self.noise_level
        if isinstance(level, bool) or not isinstance(level, int) or level < 0:
            raise ValueError(f"noise_level must be an int >= 0, got {level!r}")
        scale = self.ip_adapter_scale
        if scale is not None and (isinstance(scale, bool) or not isinstance(scale, (int, float))
                                  or not math.isfinite(scale) or scale < 0):
            raise ValueError(f"ip_adapter_scale must be a number >= 0, got {scale!r}")
        refusal = refused_option(backend, accepted, options_given(
            self.strength, self.prompt, self.negative_prompt, level, scale))
        if refusal is not None:
            raise ValueError(refusal)
        if self.strength < 1.0 and self.denoise_steps < 1:
            raise ValueError(f"strength={self.strength} with num_inference_steps={self.num_inference_steps} "
                             "leaves no denoising step: int(steps × strength) must be >= 1")

    def check_steps(self, min_steps: int, prior_num_inference_steps: int = 25) -> None:
        """Step counts: UnCLIPScheduler (the Kandinsky prior's; unCLIP's decoder and
        super-resolution) divides by steps − 1; the denoiser needs ``min_steps``."""
        check_steps("prior_num_inference_steps", prior_num_inference_steps, 2)
        check_steps("super_res_num_inference_steps", self.super_res_num_inference_steps, 2)
        check_steps("num_inference_steps", self.num_inference_steps, min_steps)

    def check_size(self, size_rule: tuple[int, int | None], max_size: int = limits.MAX_SIZE) -> None:
        """Height and width by the model's ``(factor, fixed)`` rule and the size cap."""
        factor, fixed = size_rule
        for name, value in (("height", self.height), ("width", self.width)):
            limits.check_size(name, value, factor=factor, fixed=fixed, max_size=max_size)
