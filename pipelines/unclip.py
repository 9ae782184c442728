"""unCLIP / Karlo backend of VSlerpPipeline (the paper's own generator).

``kakaobrain/karlo-v1-alpha-image-variations``: CLIP ViT-L/14 image embeddings (768-d) →
decoder (64 px, conditioned through ``text_proj`` on the embedding and the empty prompt) →
two super-resolution UNets (256 px). diffusers keeps it under ``pipelines/deprecated/unclip``.
Each batch of cells is rendered by diffusers' own ``UnCLIPImageVariationPipeline`` from
``image_embeddings``, with one copy of the call's generator per cell — so every cell draws the
noise a single render with that generator draws (decoder and super-resolution alike).
The grid geometry (Eq. 12), statistics and checks are VSlerpPipeline's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from vslerp.stats import parse_device
from vslerp.stats.encode import clip_image_processor_class
from vslerp.stats.hub import unavailable_model

from .inputs import image_path_or_prompt
from .pipeline import STATISTICS_FILE, VSlerpPipeline, auto_device

__all__ = ["VSlerpUnCLIPPipeline", "load_unclip_components"]

_PARTS = {  # component → (library, class) in the Karlo image-variations layout
    "decoder": ("diffusers", "UNet2DConditionModel"),
    "text_encoder": ("transformers", "CLIPTextModelWithProjection"),
    "tokenizer": ("transformers", "CLIPTokenizer"),
    "text_proj": ("unclip", "UnCLIPTextProjModel"),
    "feature_extractor": ("transformers", "CLIPImageProcessor"),
    "image_encoder": ("transformers", "CLIPVisionModelWithProjection"),
    "super_res_first": ("diffusers", "UNet2DModel"),
    "super_res_last": ("diffusers", "UNet2DModel"),
    "decoder_scheduler": ("diffusers", "UnCLIPScheduler"),
    "super_res_scheduler": ("diffusers", "UnCLIPScheduler"),
}


def load_unclip_components(source: str, dtype: torch.dtype, **kwargs) -> dict:
    """Load every component of an unCLIP image-variation repo/folder, class by class.

    (diffusers 0.42's ``DiffusionPipeline.from_pretrained`` cannot resolve the deprecated
    ``UnCLIPTextProjModel`` from ``model_index.json``, so each subfolder is loaded directly.)
    """
    import diffusers
    import transformers

    clip_image_processor_class()  # the class without torchvision, resolved without a warning
    from diffusers.pipelines.deprecated.unclip.text_proj import UnCLIPTextProjModel

    out = {}
    for name, (library, class_name) in _PARTS.items():
        cls = UnCLIPTextProjModel if library == "unclip" else getattr(
            diffusers if library == "diffusers" else transformers, class_name)
        extra = {}
        if name in ("decoder", "text_proj", "super_res_first", "super_res_last", "text_encoder", "image_encoder"):
            extra = {"dtype": dtype}
        try:
            out[name] = cls.from_pretrained(source, subfolder=name, **extra, **kwargs)
        except (OSError, ValueError) as err:
            raise unavailable_model(source, "--model") or ValueError(
                f"cannot load the {name} of unCLIP model {source!r}: {err}") from None
    return out


class VSlerpUnCLIPPipeline(VSlerpPipeline):
    """VSlerpPipeline on unCLIP/Karlo image variations (components as ``UnCLIPImageVariationPipeline``).

    Same interface as :class:`VSlerpPipeline`, with these differences: targets are images or
    embeddings (Karlo image variations has no prior, so no prompts); the image mean must come
    from ``stats`` (there is no ``clip_mean``); the output size is fixed by the models (256 px
    for Karlo); ``num_inference_steps`` are the decoder's, ``super_res_num_inference_steps``
    the super-resolution's (7 by default); guidance defaults to 8.0 (diffusers' default);
    ``latents``, ``negative_image_embeds`` and ``callback_on_step_end`` are not supported.
    """

    backend = "unclip"
    default_guidance_scale = 8.0  # UnCLIPImageVariationPipeline's
    model_cpu_offload_seq = "text_encoder->image_encoder->text_proj->decoder->super_res_first->super_res_last"
    _callback_tensor_inputs: list[str] = []
    _min_steps = 2  # UnCLIPScheduler divides by steps - 1

    def __init__(self, decoder, text_encoder, tokenizer, text_proj, feature_extractor, image_encoder,
                 super_res_first, super_res_last, decoder_scheduler, super_res_scheduler):
        super(VSlerpPipeline, self).__init__()
        self.register_modules(decoder=decoder, text_encoder=text_encoder, tokenizer=tokenizer, text_proj=text_proj,
                              feature_extractor=feature_extractor, image_encoder=image_encoder,
                              super_res_first=super_res_first, super_res_last=super_res_last,
                              decoder_scheduler=decoder_scheduler, super_res_scheduler=super_res_scheduler)
        self._statistics = None
        self._zero_embed = None
        self._movq_slicing = False
        self._movq_tiling = None
        self.model_ids = {"decoder": None, "prior": None}

    @property
    def default_size(self) -> int:
        return int(self.super_res_first.config.sample_size)

    def size_rule(self) -> tuple[int, int | None]:
        """unCLIP/Karlo renders the super-resolution UNet's size only (256 px for Karlo)."""
        return 1, self.default_size

    @classmethod
    def from_pretrained(cls, decoder_id_or_dir=None, prior=None, stats=None, torch_dtype=None, backend="unclip",
                        device="auto", **kwargs) -> VSlerpUnCLIPPipeline:
        """Load a Karlo image-variations repo/folder (or a folder saved by ``save_pretrained``).

        ``stats`` (path | Statistics | (D,) tensor) is required unless the folder was saved
        with statistics. ``prior`` is not used (Karlo image variations has none).
        """
        if prior is not None:
            raise ValueError("the unCLIP backend takes no prior (Karlo image variations has none)")
        if decoder_id_or_dir is None:
            decoder_id_or_dir = "kakaobrain/karlo-v1-alpha-image-variations"
        target = auto_device() if device == "auto" else (parse_device(device) if device else None)
        if torch_dtype is None:
            torch_dtype = torch.float16 if target is not None and target.type == "cuda" else torch.float32
        source = str(decoder_id_or_dir)
        local = Path(source).expanduser()
        pipe = cls(**load_unclip_components(str(local) if local.is_dir() else source, torch_dtype, **kwargs))
        pipe.model_ids = {"decoder": source, "prior": None}
        if stats is None and (local / STATISTICS_FILE).is_file():
            stats = local / STATISTICS_FILE
        if stats is None:
            raise ValueError("the unCLIP backend needs stats= (a statistics file, Statistics or a (D,) mean "
                             "tensor): Karlo has no prior clip_mean to fall back on")
        pipe.set_statistics(stats)
        if target is not None:
            pipe.to(target)
        return pipe

    # -- backend hooks ------------------------------------------------------------------
    def _clip_processor(self):
        return self.feature_extractor

    def _denoiser(self):
        return self.decoder

    def _main_scheduler(self):
        return self.decoder_scheduler

    def _default_negative(self):
        return None  # unCLIP's unconditional branch is text_proj's learned embedding

    def check_statistics(self, stats=None):
        if stats is None:
            raise ValueError("the unCLIP backend needs statistics (no prior clip_mean)")
        return super().check_statistics(stats)

    def prompt_to_image_embedding(self, prompts, generator=None, num_inference_steps: int = 25,
                                  guidance_scale: float = 4.0) -> torch.Tensor:
        raise ValueError("the unCLIP image-variations backend has no prior: a prompt cannot become an image "
                         "embedding; give an image or a (D,) embedding as target")

    def _unclip_pipeline(self):
        from diffusers import UnCLIPImageVariationPipeline

        pipe = UnCLIPImageVariationPipeline(**self.components)
        pipe.set_progress_bar_config(**getattr(self, "_progress_bar_config", {}))
        return pipe

    def _render(self, flat, device, negative_raw, generator, initial_state, latents, num_inference_steps, height,
                width, max_batch_size, output_type, callback_on_step_end, cb_inputs, super_res_num_inference_steps=7):
        size = self.default_size
        if (height, width) != (size, size):
            raise ValueError(f"the unCLIP backend renders {size}x{size} only, got height={height}, width={width}")
        if latents is not None or callback_on_step_end is not None:
            raise ValueError("latents and callback_on_step_end are not supported by the unCLIP backend")
        if output_type == "latent":
            raise ValueError("output_type='latent' is not supported by the unCLIP backend")
        unclip = self._unclip_pipeline()
        outputs = []
        for start in range(0, flat.shape[0], max_batch_size):
            chunk = flat[start : start + max_batch_size]  # (B, D)
            generators = [self._clone_generator(initial_state, generator.device) for _ in range(chunk.shape[0])]
            images = unclip(image_embeddings=chunk.to(device=device, dtype=self.decoder.dtype),
                            decoder_num_inference_steps=num_inference_steps,
                            super_res_num_inference_steps=super_res_num_inference_steps,
                            generator=generators if len(generators) > 1 else generators[0],
                            decoder_guidance_scale=self._guidance_scale,
                            output_type="pil" if output_type == "pil" else "np").images
            if output_type == "pt":
                images = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2) * 2 - 1  # (B, 3, H, W)
            outputs.append(images)
        return outputs

    def check_inputs(self, source, target, thetas, alphas, num_inference_steps, guidance_scale, height, width,
                     max_batch_size, output_type, generator, latents, callback_on_step_end_tensor_inputs,
                     allow_extrapolation):
        if isinstance(target, str) and image_path_or_prompt(target).kind == "prompt":
            raise ValueError(f"target image not found: {target} (the unCLIP backend takes no prompts)")
        return super().check_inputs(source, target, thetas, alphas, num_inference_steps, guidance_scale, height,
                                    width, max_batch_size, output_type, generator, latents, [],
                                    allow_extrapolation)
