"""Tiny random models of every backend, for bench_pipeline.py: the VSlerp pipeline and diffusers'
own pipeline on the same components, and a one-embedding render of each.

``build(name, root)`` → :class:`Pair`; ``name`` is a backend of
:data:`vslerp.pipelines.loading.BACKENDS` (``kandinsky2.2``, ``unclip``, ``stable-unclip``,
``ip-adapter-sd``, ``ip-adapter-sdxl``, ``flux``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = ["NAMES", "Pair", "build"]

NAMES = ("kandinsky2.2", "unclip", "stable-unclip", "ip-adapter-sd", "ip-adapter-sdxl", "flux")


@dataclass
class Pair:
    """The VSlerp pipeline, diffusers' pipeline for one embedding, and their shared settings."""

    pipe: object  # the VSlerp pipeline
    reference: Callable[[torch.Tensor], object]  # (D,) raw embedding → diffusers' render of it
    render: dict  # steps / size / output_type of both sides


def _gen():
    return torch.Generator().manual_seed(0)


def _stats(dim: int, root: Path) -> Path:
    from vslerp.stats import Statistics

    path = root / f"stats_{dim}.safetensors"
    Statistics.from_mean(torch.randn(dim, generator=_gen())).save(path)
    return path


def build(name: str, root: str | Path, steps: int, size: int) -> Pair:
    """Tiny ``name`` models under ``root``; both pipelines with their progress bars off."""
    import diffusers

    from vslerp.pipelines import VSlerpPipeline
    from vslerp.pipelines import testing as tiny
    from vslerp.pipelines import testing_sd as tiny_sd
    from vslerp.stats.encode import clip_image_processor_class

    clip_image_processor_class()  # diffusers' loaders then find the class without torchvision, quietly
    root = Path(root)
    render = {"num_inference_steps": steps, "height": size, "width": size, "output_type": "np"}
    stats = _stats(tiny.TINY_DIM, root)
    if name == "kandinsky2.2":
        prior_dir, decoder_dir = tiny.make_tiny_kandinsky(root)
        pipe = VSlerpPipeline.from_pretrained(decoder_dir, prior=prior_dir, device=None)
        ref = diffusers.KandinskyV22Pipeline.from_pretrained(decoder_dir)
        negative = pipe.zero_image_embedding()

        def reference(e):
            return ref(image_embeds=e[None], negative_image_embeds=negative, generator=_gen(), **render)
    elif name == "unclip":
        folder = tiny.make_tiny_unclip(root)
        pipe = VSlerpPipeline.from_pretrained(folder, stats=stats, device=None)
        ref = diffusers.UnCLIPImageVariationPipeline(**pipe.components)
        render = {"num_inference_steps": max(steps, 2), "output_type": "np"}  # the size is the model's

        def reference(e):
            return ref(image_embeddings=e[None], decoder_num_inference_steps=render["num_inference_steps"],
                       super_res_num_inference_steps=2, generator=_gen(), output_type="np")
        render["super_res_num_inference_steps"] = 2
    elif name == "stable-unclip":
        folder = tiny_sd.make_tiny_stable_unclip(root)
        pipe = VSlerpPipeline.from_pretrained(folder, stats=stats, device=None)
        ref = diffusers.StableUnCLIPImg2ImgPipeline.from_pretrained(folder)

        def reference(e):
            return ref(image_embeds=e[None], generator=_gen(), **render)
    elif name == "flux":  # FLUX.1 + the XLabs IP-Adapter
        from vslerp.pipelines import testing_flux as tiny_flux

        base = tiny_flux.make_tiny_flux(root)
        adapter, encoder = tiny_flux.make_tiny_flux_ip_adapter(root, base)
        weight = tiny_flux.FLUX_ADAPTER_WEIGHT
        pipe = VSlerpPipeline.from_pretrained(base, stats=stats, device=None, ip_adapter=f"{adapter}:{weight}",
                                              ip_adapter_image_encoder=encoder)
        ref = diffusers.FluxPipeline.from_pretrained(base)
        ref.load_ip_adapter(str(adapter), weight_name=weight, image_encoder_pretrained_model_name_or_path=str(encoder),
                            image_encoder_dtype=torch.float32)

        def reference(e):  # diffusers encodes its default negative (a black image) itself
            return ref(prompt="", ip_adapter_image_embeds=[e[None, None]], generator=_gen(), **render)
    else:  # IP-Adapter on SD 1.5 / SDXL
        xl = name == "ip-adapter-sdxl"
        base = (tiny_sd.make_tiny_sdxl if xl else tiny_sd.make_tiny_sd)(root)
        weight = "ip-adapter_sdxl.safetensors" if xl else "ip-adapter_sd15.safetensors"
        adapter = tiny_sd.make_tiny_ip_adapter(root, base, "models", weight)
        pipe = VSlerpPipeline.from_pretrained(base, stats=stats, device=None, ip_adapter=str(adapter),
                                              ip_adapter_subfolder="models", ip_adapter_weight_name=weight)
        kind = diffusers.StableDiffusionXLPipeline if xl else diffusers.StableDiffusionPipeline
        ref = kind.from_pretrained(base)
        ref.load_ip_adapter(str(adapter), subfolder="models", weight_name=weight)

        def reference(e):
            embeds = torch.stack([torch.zeros_like(e), e])[:, None]  # (2, 1, D): negative = zeros
            return ref(prompt="", ip_adapter_image_embeds=[embeds], generator=_gen(), **render)
    for p in (pipe, ref):
        p.set_progress_bar_config(disable=True)
    return Pair(pipe, reference, render)
