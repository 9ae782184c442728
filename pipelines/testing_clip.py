"""A tiny random transformers ``CLIPModel`` folder, from configs (for ``--clip`` tests).

``make_tiny_clip_model(root, vision_from=folder)`` writes a ``CLIPModel`` (both towers with
their projections), its ``CLIPImageProcessor`` and ``CLIPTokenizer`` in the layout of a hub
CLIP repo (``laion/CLIP-ViT-H-14-laion2B-s32B-b79K``, ``openai/clip-vit-large-patch14``), so
``CLIPVisionModelWithProjection.from_pretrained(folder)`` and
``CLIPTextModelWithProjection.from_pretrained(folder)`` read it. With ``vision_from`` (a
``CLIPVisionModelWithProjection`` folder, or a generator / IP-Adapter folder holding one in
``image_encoder/``) its vision tower *is* that encoder — same config, same weights, so the
same :func:`vslerp.stats.encoder_fingerprint` — and only the text tower is new.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .testing import (
    make_tiny_clip_tokenizer,
    tiny_clip_image_processor,
    tiny_clip_text_config,
    tiny_clip_vision_config,
)

__all__ = ["make_tiny_clip_model", "make_tiny_encoder_repos"]


def _vision_folder(folder: Path) -> Path:
    folder = Path(folder)
    return folder / "image_encoder" if (folder / "image_encoder").is_dir() else folder


def make_tiny_clip_model(root: str | Path, vision_from: str | Path | None = None, seed: int = 0,
                         name: str = "clip") -> Path:
    """A tiny random ``CLIPModel`` folder ``root``/``name``; returns its path.

    vision_from: None (a new random ``TINY_DIM``-d vision tower) or a folder whose
    ``CLIPVisionModelWithProjection`` becomes the vision tower, weights included.
    """
    from transformers import CLIPConfig, CLIPModel, CLIPVisionModelWithProjection

    root = Path(root)
    out = root / name
    torch.manual_seed(seed)
    tokenizer = make_tiny_clip_tokenizer(root / f"_{name}_tokenizer")
    vision = None
    if vision_from is not None:
        vision = CLIPVisionModelWithProjection.from_pretrained(_vision_folder(vision_from))
        vision_config = vision.config
    else:
        vision_config = tiny_clip_vision_config()
    dim = int(vision_config.projection_dim)
    text_config = tiny_clip_text_config(tokenizer, projection_dim=dim)
    model = CLIPModel(CLIPConfig(text_config=text_config.to_dict(),
                                 vision_config=vision_config.to_dict(), projection_dim=dim)).eval()
    if vision is not None:
        with torch.no_grad():
            model.vision_model.load_state_dict(vision.vision_model.state_dict())
            model.visual_projection.load_state_dict(vision.visual_projection.state_dict())
    model.save_pretrained(out)
    tiny_clip_image_processor(int(vision_config.image_size)).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def make_tiny_encoder_repos(root: str | Path) -> dict[str, Path]:
    """Tiny folders for the hub ids of ``docs/statistics.md``'s encoder examples, consistent as
    the real ones are: ``{hub_id: folder}``.

    ``stabilityai/stable-diffusion-2-1-unclip``'s image encoder is also ``h94/IP-Adapter``'s
    ``models/image_encoder`` and the vision tower of ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K``;
    ``h94/IP-Adapter``'s ``sdxl_models/image_encoder`` is that of
    ``laion/CLIP-ViT-bigG-14-laion2B-39B-b160k``; ``stabilityai/stable-diffusion-2-1-unclip-small``'s
    is that of ``openai/clip-vit-large-patch14``. ``sdxl_models`` holds ``ip-adapter_sdxl`` and
    ``ip-adapter_sdxl_vit-h`` weights (for the tiny SD 1.5 UNet: they are never rendered with).
    The SD / SDXL base ids need no folder (``stats compute`` reads only the adapter).
    """
    import shutil

    from .testing_sd import make_tiny_ip_adapter, make_tiny_sd, make_tiny_stable_unclip

    root = Path(root)
    vit_h = make_tiny_stable_unclip(root / "vit_h")
    vit_l = make_tiny_stable_unclip(root / "vit_l", seed=1, clip_stats=True)  # -small: Karlo's mean
    sd = make_tiny_sd(root / "sd")
    ip = make_tiny_ip_adapter(root, sd)
    shutil.rmtree(ip / "models" / "image_encoder")
    shutil.copytree(vit_h / "image_encoder", ip / "models" / "image_encoder")
    sdxl = make_tiny_ip_adapter(root / "sdxl", sd, subfolder="sdxl_models",
                                weight_name="ip-adapter_sdxl.safetensors", seed=2)
    shutil.copytree(sdxl / "sdxl_models", ip / "sdxl_models")
    shutil.copy(ip / "sdxl_models" / "ip-adapter_sdxl.safetensors",
                ip / "sdxl_models" / "ip-adapter_sdxl_vit-h.safetensors")
    return {
        "stabilityai/stable-diffusion-2-1-unclip": vit_h,
        "stabilityai/stable-diffusion-2-1-unclip-small": vit_l,
        "h94/IP-Adapter": ip,
        "laion/CLIP-ViT-H-14-laion2B-s32B-b79K": make_tiny_clip_model(root, vision_from=vit_h, name="vit_h_clip"),
        "openai/clip-vit-large-patch14": make_tiny_clip_model(root, vision_from=vit_l, name="vit_l_clip"),
        "laion/CLIP-ViT-bigG-14-laion2B-39B-b160k": make_tiny_clip_model(root, vision_from=ip / "sdxl_models",
                                                                          name="vit_bigg_clip"),
    }
