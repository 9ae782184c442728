"""torch_dtype reaches every component, on both loading paths.

The pipeline passes ``dtype=`` to diffusers' ``from_pretrained``; a diffusers release that does
not know that keyword ignores it with a warning and loads float32, so this test is what holds
the lower bound on diffusers in pyproject.toml (CI also runs it at the lowest versions).
"""

from __future__ import annotations

import torch

from vslerp.pipelines import VSlerpPipeline

MODULES = ("prior", "image_encoder", "text_encoder", "unet", "movq")


def _dtypes(pipe) -> dict[str, torch.dtype]:
    return {name: next(getattr(pipe, name).parameters()).dtype for name in MODULES}


def test_torch_dtype_reaches_every_component_on_both_paths(tiny_kandinsky, tmp_path):
    prior_dir, decoder_dir = tiny_kandinsky
    pipe = VSlerpPipeline.from_pretrained(decoder_dir, prior=prior_dir,
                                          torch_dtype=torch.bfloat16, device=None)
    assert _dtypes(pipe) == dict.fromkeys(MODULES, torch.bfloat16)

    pipe.save_pretrained(tmp_path / "saved")
    loaded = VSlerpPipeline.from_pretrained(tmp_path / "saved", torch_dtype=torch.float16,
                                            device=None)
    assert _dtypes(loaded) == dict.fromkeys(MODULES, torch.float16)
