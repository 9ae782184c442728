"""``pipe.mix(inputs, weights, alphas, ...)``: N-way vertical mixing (:func:`vslerp.vmix`) on any
backend, through the request and render path of ``pipe(...)`` (``VSlerpBasePipeline._generate``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields

import torch

from .grid import VSlerpMixOutput
from .inputs import check_input, first_prompt
from .request import MAX_INPUTS, RenderRequest, check_weights
from .serial import serialised

__all__ = ["MIX_OPTIONS", "MixMixin"]

# the request's fields pipe.mix takes as keywords (its rows are weights, not thetas)
MIX_OPTIONS = frozenset(f.name for f in fields(RenderRequest)) - {"thetas", "weights", "alphas", "seed",
                                                                   "allow_extrapolation"}


class MixMixin:
    """``mix`` of a VSlerp pipeline (its ``check_request`` and ``_generate``)."""

    @serialised
    @torch.no_grad()
    def mix(self, inputs, weights=None, alphas=(1.0,), *, generator=None, latents=None, negative_image_embeds=None,
            callback_on_step_end=None, callback_on_step_end_tensor_inputs=("latents",), statistics=None, image=None,
            return_dict: bool = True, return_embeddings: bool = False, **options) -> VSlerpMixOutput:
        """Render the weights × α grid of vmix(inputs, w, α, m): N-way vertical mixing (Eq. 12 for N inputs).

        A mix of two inputs with weights (1 − θ, θ) is the θ cell of ``pipe(a, b, thetas, alphas)``,
        rendered as that call renders it (same path: shared noise, one generator copy per cell,
        distinct cells once, ``max_batch_size`` at a time).

        Args:
            inputs: 2–16 inputs, each a PIL image, numpy image, image path, prompt (through the
                backend's prior, seeded from ``generator``'s state) or (D,) raw embedding.
            weights: None (equal weights), one row ``[w1, …, wN]`` or K rows (K, N): non-negative,
                each row normalised to sum 1.
            alphas: A values (−2..2 useful; 0 mixes about the origin, 1 about the mean).
            return_embeddings: also return the mixes' raw embeddings (K, A, D).
            generator, latents, negative_image_embeds, callback_on_step_end,
                callback_on_step_end_tensor_inputs, statistics, return_dict: as :meth:`__call__`.
            image: with ``strength`` < 1 the photo every mix starts from (default: the first input).
            options: :meth:`__call__`'s other keywords (``num_inference_steps``, ``guidance_scale``,
                ``height``, ``width``, ``max_batch_size``, ``output_type``, ``strength``, the
                backend options, ...).

        Returns:
            :class:`~vslerp.pipelines.VSlerpMixOutput`: images row-major over weight rows × alphas,
            conformity (K, A), the normalised weights (K, N), alphas, embeddings or None.
        """
        unknown = [key for key in options if key not in MIX_OPTIONS]
        if unknown:
            raise TypeError(f"mix() got an unexpected keyword argument {unknown[0]!r}")
        if isinstance(inputs, (str, bytes)) or not isinstance(inputs, Sequence):
            raise TypeError(f"inputs must be a list of 2 to {MAX_INPUTS} images, prompts or (D,) tensors, "
                            f"got {type(inputs).__name__}")
        if not 2 <= len(inputs) <= MAX_INPUTS:
            raise ValueError(f"inputs: a mix takes 2 to {MAX_INPUTS} inputs, got {len(inputs)}")
        for k, value in enumerate(inputs):
            check_input(f"inputs[{k}]", value, prompt=True)
        rows = check_weights([[1.0] * len(inputs)] if weights is None else weights, len(inputs))
        request = self.check_request({**options, "alphas": alphas, "weights": rows})
        named = [(f"inputs[{k}]", value, True) for k, value in enumerate(inputs)]
        grid, rendered = self._generate(request, named, first_prompt(inputs), generator, latents, negative_image_embeds,
                                        callback_on_step_end, callback_on_step_end_tensor_inputs, statistics, image)
        result = grid.mix_output(rendered, request.output_type, return_embeddings)
        return result if return_dict else result.to_tuple()
