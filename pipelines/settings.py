"""One call's render settings, shared by every batch of cells it renders, and generator copies.

:class:`RenderSettings` is what a backend's ``_render_chunk`` receives besides the cells: steps,
guidance, size, output type, the initial latents, the unconditional embedding and the callback,
from the call's checked request (:mod:`.request`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .request import denoise_steps

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
    def of_request(cls, request, latents=None, negative=None, callback_on_step_end=None,
                   callback_tensor_inputs=()) -> RenderSettings:
        """The settings of a checked :class:`~vslerp.pipelines.request.RenderRequest` (for its backend)."""
        return cls(num_inference_steps=request.num_inference_steps, guidance_scale=request.guidance_scale,
                   height=request.height, width=request.width, output_type=request.output_type,
                   max_batch_size=request.max_batch_size, latents=latents, negative=negative,
                   callback_on_step_end=callback_on_step_end, callback_tensor_inputs=list(callback_tensor_inputs or []),
                   super_res_num_inference_steps=request.super_res_num_inference_steps, **request.options)

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
        """The steps the denoiser runs (all, or img2img's ``int(steps × strength)``)."""
        return denoise_steps(self.num_inference_steps, self.strength)
