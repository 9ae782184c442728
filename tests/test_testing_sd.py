"""The tiny Stable unCLIP / SD 1.5 / SDXL / IP-Adapter folders load and render through diffusers' own
pipelines and loaders (the groundwork of the next backends: pipelines/testing_sd.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vslerp.pipelines.testing import TINY_DIM
from vslerp.pipelines.testing_sd import (
    make_tiny_ip_adapter,
    make_tiny_sd,
    make_tiny_sdxl,
    make_tiny_stable_unclip,
)

RENDER = {"num_inference_steps": 2, "height": 64, "width": 64, "output_type": "np"}


def _gen():
    return torch.Generator().manual_seed(0)


def test_stable_unclip_folder_renders_image_embeds(tmp_path):
    from diffusers import StableUnCLIPImg2ImgPipeline

    pipe = StableUnCLIPImg2ImgPipeline.from_pretrained(make_tiny_stable_unclip(tmp_path))
    pipe.set_progress_bar_config(disable=True)
    assert pipe.image_encoder.config.projection_dim == TINY_DIM
    a, b = torch.randn(2, 1, TINY_DIM, generator=_gen())
    one = pipe(image_embeds=a, generator=_gen(), **RENDER).images
    assert one.shape == (1, 64, 64, 3) and np.isfinite(one).all()
    assert np.abs(one - pipe(image_embeds=b, generator=_gen(), **RENDER).images).max() > 1e-4  # embeds matter


@pytest.mark.parametrize("base", ["sd15", "sdxl"])
def test_ip_adapter_loads_with_diffusers_and_its_embeds_matter(tmp_path, base):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    make, cls, sub, weight = ((make_tiny_sd, StableDiffusionPipeline, "models", "ip-adapter_sd15.safetensors")
                              if base == "sd15" else
                              (make_tiny_sdxl, StableDiffusionXLPipeline, "sdxl_models", "ip-adapter_sdxl.safetensors"))
    base_dir = make(tmp_path)
    pipe = cls.from_pretrained(base_dir)
    pipe.set_progress_bar_config(disable=True)
    pipe.load_ip_adapter(str(make_tiny_ip_adapter(tmp_path, base_dir, sub, weight)), subfolder=sub, weight_name=weight)
    assert pipe.image_encoder.config.projection_dim == TINY_DIM
    a, b = torch.randn(2, 1, 1, TINY_DIM, generator=_gen())

    def render(e):
        return pipe(prompt="a cat", ip_adapter_image_embeds=[torch.cat([torch.zeros_like(e), e])], generator=_gen(),
                    **RENDER).images

    one = render(a)
    assert one.shape == (1, 64, 64, 3) and np.isfinite(one).all()
    assert np.abs(one - render(b)).max() > 1e-4
