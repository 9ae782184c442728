"""dtype reaches every component, on both loading paths.

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


def test_dtype_reaches_every_component_on_both_paths(tiny_kandinsky, tmp_path):
    prior_dir, decoder_dir = tiny_kandinsky
    pipe = VSlerpPipeline.from_pretrained(decoder_dir, prior=prior_dir,
                                          dtype=torch.bfloat16, device=None)
    assert _dtypes(pipe) == dict.fromkeys(MODULES, torch.bfloat16)

    pipe.save_pretrained(tmp_path / "saved")
    loaded = VSlerpPipeline.from_pretrained(tmp_path / "saved", dtype=torch.float16,
                                            device=None)
    assert _dtypes(loaded) == dict.fromkeys(MODULES, torch.float16)


def test_default_dtype_follows_the_device_rule_on_both_backends(tiny_kandinsky, tmp_path):
    """float32 off CUDA (vslerp.stats.encode.default_dtype), and dtype reaches unCLIP's parts."""
    from vslerp.pipelines.testing import TINY_DIM, make_tiny_unclip
    from vslerp.stats.encode import default_dtype

    prior_dir, decoder_dir = tiny_kandinsky
    pipe = VSlerpPipeline.from_pretrained(decoder_dir, prior=prior_dir, device="cpu")
    assert _dtypes(pipe) == dict.fromkeys(MODULES, default_dtype(torch.device("cpu")))
    unclip = VSlerpPipeline.from_pretrained(make_tiny_unclip(tmp_path), stats=torch.randn(TINY_DIM),
                                            dtype=torch.bfloat16, device=None)
    parts = ("decoder", "text_proj", "super_res_first", "super_res_last", "text_encoder", "image_encoder")
    assert {name: next(getattr(unclip, name).parameters()).dtype for name in parts} == \
        dict.fromkeys(parts, torch.bfloat16)
