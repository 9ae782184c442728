"""A call's source and target as raw CLIP image embeddings (the space of Eq. 12).

:class:`EncodingMixin` gives a VSlerp pipeline ``encode_image`` / ``encode_text`` — the project's
one CLIP encoding, :class:`vslerp.stats.ClipEncoders`, on the pipeline's own encoders where
they are (device, dtype, offload hooks) — and resolves a call's source / target: a (D,)
embedding, a PIL image, an image path (:func:`~vslerp.pipelines.inputs.open_named_image`) or a
prompt (through the backend's prior, ``prompt_to_image_embedding``).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import PIL.Image
import torch

from vslerp.stats import ClipEncoders

from .inputs import check_embedding, check_prompt, image_path_or_prompt, open_named_image

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

    def encode_image(self, images) -> torch.Tensor:
        """PIL images / paths → raw ``image_embeds`` (N, D) float32 on the CPU."""
        if isinstance(images, (PIL.Image.Image, str, Path)):
            images = [images]
        rgb = []
        for im in images:
            if isinstance(im, PIL.Image.Image):
                rgb.append(im.convert("RGB"))
            elif isinstance(im, (str, Path)):
                rgb.append(open_named_image("images", im))
            else:
                raise TypeError(f"images must be PIL images or image paths, got {type(im).__name__}")
        if not rgb:
            raise ValueError("images: no images given")
        return self.clip_encoders().encode_images(rgb)

    def encode_text(self, prompts) -> torch.Tensor:
        """Prompts → raw ``text_embeds`` (N, D) float32 on the CPU (max-length padding, truncated)."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise TypeError("prompts must be a string or a non-empty list of strings")
        return self.clip_encoders().encode_texts(prompts)

    def _resolve(self, name: str, value, allow_prompt: bool, prompt_generator, prior_steps: int):
        """source/target → raw (D,) float32; a prompt goes through the prior."""
        if isinstance(value, torch.Tensor):
            return check_embedding(name, value, self._dim())
        if isinstance(value, PIL.Image.Image):
            return self.encode_image([value])[0]
        if isinstance(value, Path):
            return self.encode_image([open_named_image(name, value)])[0]
        if isinstance(value, str):
            found = image_path_or_prompt(value)
            if found.kind in ("image", "directory") or not allow_prompt or found.kind == "missing":
                return self.encode_image([open_named_image(name, found.path or value)])[0]
            check_prompt(name, value)
            self._warn_if_truncated(name, value)
            return self.prompt_to_image_embedding([value], generator=prompt_generator,
                                                  num_inference_steps=prior_steps)[0]
        kinds = "a PIL image, an image path, a prompt or a (D,) tensor" if allow_prompt else \
            "a PIL image, an image path or a (D,) tensor"
        raise TypeError(f"{name} must be {kinds}, got {type(value).__name__}")

    def _warn_if_truncated(self, name: str, prompt: str) -> None:
        """CLIP reads ``tokenizer.model_max_length`` tokens (77); diffusers' prior pipeline
        truncates longer prompts: say so once, as a warning, naming the prompt's length."""
        limit = int(self.tokenizer.model_max_length)
        count = len(self.tokenizer(prompt, truncation=False, verbose=False).input_ids)
        if count > limit:
            warnings.warn(f"the {name} prompt is {count} tokens long: CLIP reads its first {limit} "
                          "tokens and ignores the rest", UserWarning, stacklevel=5)
