"""One call's render settings, shared by every batch of cells it renders, and generator copies.

:class:`RenderSettings` is what a backend's ``_render_chunk`` receives besides the cells: steps,
guidance, size, output type, the initial latents, the unconditional embedding and the callback,
with the backend's defaults filled in and checked before any compute.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from . import limits
from .inputs import check_steps

__all__ = ["RenderSettings", "clone_generator"]


def clone_generator(generator: torch.Generator) -> torch.Generator:
    """A new generator on ``generator``'s device in its current state (the original is not advanced)."""
    clone = torch.Generator(device=generator.device)
    clone.set_state(generator.get_state())
    return clone


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

    @classmethod
    def of_call(cls, pipe, num_inference_steps, guidance_scale, height, width, max_batch_size, output_type,
                callback_on_step_end, callback_on_step_end_tensor_inputs, super_res_num_inference_steps,
                negative_image_embeds=None, latents=None) -> RenderSettings:
        """A call's arguments, None → ``pipe``'s backend defaults (guidance, size)."""
        return cls(
            num_inference_steps=num_inference_steps,
            guidance_scale=pipe.default_guidance_scale if guidance_scale is None else guidance_scale,
            height=pipe.default_size if height is None else height,
            width=pipe.default_size if width is None else width,
            output_type=output_type, max_batch_size=max_batch_size, latents=latents,
            negative=negative_image_embeds, callback_on_step_end=callback_on_step_end,
            callback_tensor_inputs=list(callback_on_step_end_tensor_inputs or []),
            super_res_num_inference_steps=super_res_num_inference_steps)

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
