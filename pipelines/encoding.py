"""A call's source and target as raw CLIP image embeddings (the space of Eq. 12).

:class:`EncodingMixin` gives a VSlerp pipeline ``encode_image`` / ``encode_text`` — the project's
one CLIP encoding, :class:`vslerp.stats.ClipEncoders`, on the pipeline's own encoders where
they are (device, dtype, offload hooks) — and resolves a call's source / target: a (D,)
embedding, a PIL image, a numpy image or an image path (all through
:func:`~vslerp.pipelines.inputs.open_named_image`, the one image normalisation) or a
prompt (through the backend's prior, ``prompt_to_image_embedding``).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from vslerp.stats import ClipEncoders

from .inputs import check_embedding, check_prompt, image_path_or_prompt, is_image, open_named_image
from .serial import serialised

__all__ = ["EncodingMixin"]


class EncodingMixin:
    """Encoders of a pipeline with ``image_encoder``, ``text_encoder``, ``tokenizer``, the
    backend's ``_clip_processor()`` and ``prompt_to_image_embedding``."""

    def _dim(self) -> int:
        """D: the image encoder's embedding dimension."""
        return int(self.image_encoder.config.projection_dim)

    def clip_encoders(self) -> ClipEncoders:
        """This pipeline's CLIP encoders as :class:`vslerp.stats.ClipEncoders` (used in place)."""
        return ClipEncoders(self.image_encoder, self._clip_processor(), self.text_encoder, self.tokenizer,
                            model_id=self.model_ids.get("prior") or self.model_ids.get("decoder"))

    @serialised
    def encode_image(self, images) -> torch.Tensor:
        """Images → raw ``image_embeds`` (N, D) float32 on the CPU.

        images: one image or a list of them — PIL images, image paths or numpy arrays ((H, W) or
        (H, W, C); uint8, uint16, floats in [0, 1]). Each goes through
        :func:`vslerp.stats.open_image` (EXIF upright, alpha on white, 16-bit and palette
        rules), so a file, its PIL image and its pixels give one embedding."""
        if is_image(images) or isinstance(images, (str, Path)):
            images = [images]
        try:
            images = list(images)
        except TypeError:
            raise TypeError(f"images must be an image or a list of images, got {type(images).__name__}") from None
        rgb = []
        for k, im in enumerate(images):
            if not (is_image(im) or isinstance(im, (str, Path))):
                raise TypeError(f"images[{k}] must be a PIL image, an image path or a numpy array, "
                                f"got {type(im).__name__}")
            rgb.append(open_named_image(f"images[{k}]", im))
        if not rgb:
            raise ValueError("images: no images given")
        return self.clip_encoders().encode_images(rgb)

    @serialised
    def encode_text(self, prompts) -> torch.Tensor:
        """Prompts → raw ``text_embeds`` (N, D) float32 on the CPU (max-length padding, truncated)."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise TypeError("prompts must be a string or a non-empty list of strings")
        return self.clip_encoders().encode_texts(prompts)

    @serialised
    def embed_input(self, value, generator=None, prior_num_inference_steps: int = 25) -> torch.Tensor:
        """An input as ``pipe(...)`` resolves a target — an image, image path, prompt (through the
        prior, from ``generator``'s state) or (D,) tensor — as a raw (D,) float32 embedding."""
        return self._resolve("input", value, True, generator, prior_num_inference_steps)

    def _resolve(self, name: str, value, allow_prompt: bool, prompt_generator, prior_steps: int):
        """source/target → raw (D,) float32; a prompt goes through the prior."""
        if isinstance(value, torch.Tensor):
            return check_embedding(name, value, self._dim())
        if is_image(value) or isinstance(value, Path):
            return self.encode_image([open_named_image(name, value)])[0]
        if isinstance(value, str):
            found = image_path_or_prompt(value)
            if found.kind in ("image", "directory") or not allow_prompt or found.kind == "missing":
                return self.encode_image([open_named_image(name, found.path or value)])[0]
            check_prompt(name, value)
            self._warn_if_truncated(name, value)
            return self.prompt_to_image_embedding([value], generator=prompt_generator,
                                                  num_inference_steps=prior_steps)[0]
        kinds = "a PIL image, a numpy image, an image path, a prompt or a (D,) tensor" if allow_prompt else \
            "a PIL image, a numpy image, an image path or a (D,) tensor"
        raise TypeError(f"{name} must be {kinds}, got {type(value).__name__}")

    def _prior_image_embeds(self, prompts, image_processor, generator, num_inference_steps: int,
                            guidance_scale: float) -> torch.Tensor:
        """Prompts → raw image embeddings (N, D) float32 by diffusers' ``KandinskyV22PriorPipeline``
        on this model's prior parts (``prior``, encoders, tokenizer, ``prior_scheduler``)."""
        from diffusers import KandinskyV22PriorPipeline

        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise TypeError("prompts must be a string or a non-empty list of strings")
        prior = KandinskyV22PriorPipeline(prior=self.prior, image_encoder=self.image_encoder,
                                          text_encoder=self.text_encoder, tokenizer=self.tokenizer,
                                          scheduler=self.prior_scheduler, image_processor=image_processor)
        prior.set_progress_bar_config(disable=True)  # the render's own bar is the one shown
        out = prior(prompts, generator=generator, num_inference_steps=num_inference_steps,
                    guidance_scale=guidance_scale, output_type="pt")
        return out.image_embeds.float().cpu()

    def _warn_if_truncated(self, name: str, prompt: str) -> None:
        """CLIP reads ``tokenizer.model_max_length`` tokens (77); diffusers' prior pipeline
        truncates longer prompts: say so once, as a warning, naming the prompt's length."""
        limit = int(self.tokenizer.model_max_length)
        count = len(self.tokenizer(prompt, truncation=False, verbose=False).input_ids)
        if count > limit:
            warnings.warn(f"the {name} prompt is {count} tokens long: CLIP reads its first {limit} "
                          "tokens and ignores the rest", UserWarning, stacklevel=6)  # user → serialised → __call__ (no_grad)
