"""The one validated request (``vslerp.pipelines.request``): each error names its field, and
``pipe(...)`` and ``pipe.render_batch(...)`` check a request the same way."""

from __future__ import annotations

import pytest
import torch

from vslerp.pipelines.request import RenderRequest, RequestError, RequestTypeError

RENDER = {"num_inference_steps": 2, "height": 32, "width": 32, "output_type": "np"}


@pytest.mark.parametrize(("fields", "field", "text"), [
    ({"thetas": [0.0, 1.5]}, "thetas", r"outside \[0, 1\]"),
    ({"alphas": []}, "alphas", "empty"),
    ({"alphas": [1e308]}, "alphas", "too large"),
    ({"thetas": {0.5}}, "thetas", "ordered list"),
    ({"num_inference_steps": 0}, "num_inference_steps", "positive int"),
    ({"max_batch_size": True}, "max_batch_size", "positive int"),
    ({"height": 2.5}, "height", "positive int"),
    ({"prior_num_inference_steps": 1}, "prior_num_inference_steps", ">= 2"),
    ({"guidance_scale": float("nan")}, "guidance_scale", "finite"),
    ({"output_type": "jpeg"}, "output_type", "output_type"),
    ({"seed": -1}, "seed", "seed"),
    ({"strength": 0.0}, "strength", r"\(0, 1\]"),
    ({"strength": 0.2, "num_inference_steps": 2}, "strength", "leaves no denoising step"),
    ({"noise_level": -3}, "noise_level", "noise_level"),
    ({"ip_adapter_scale": float("inf")}, "ip_adapter_scale", "ip_adapter_scale"),
    ({"thetas": [0.5] * 5, "alphas": [0.0] * 5, "max_cells": 24}, "max_cells", "max_cells"),
    ({"theta": [0.5]}, "theta", "unknown field"),
])
def test_each_error_names_its_field(fields, field, text):
    with pytest.raises(RequestError, match=text) as caught:
        RenderRequest.from_fields(fields, origin="job 3: ")
    assert caught.value.field == field
    assert str(caught.value).startswith("job 3: ")


def test_a_wrong_type_is_a_type_error_too():
    with pytest.raises(RequestTypeError) as caught:
        RenderRequest.from_fields({"prompt": 5})
    assert isinstance(caught.value, TypeError) and caught.value.field == "prompt"


def test_extrapolation_and_axis_types():
    import numpy as np

    request = RenderRequest.from_fields({"thetas": np.array([0.0, 1.5]), "alphas": torch.tensor(2.0),
                                         "allow_extrapolation": True})
    assert request.thetas == (0.0, 1.5) and request.alphas == (2.0,) and request.cells == 2


def test_for_backend_fills_defaults_and_refuses_options():
    request = RenderRequest.from_fields({"height": None}).for_backend(
        "kandinsky2.2", (), (64, None), default_size=512, default_guidance=4.0)
    assert (request.height, request.width, request.guidance_scale) == (512, 512, 4.0)
    with pytest.raises(RequestError, match="not supported by the kandinsky2.2 backend") as caught:
        RenderRequest.from_fields({"noise_level": 3}).for_backend("kandinsky2.2", (), (64, None))
    assert caught.value.field == "noise_level"
    with pytest.raises(RequestError, match="max_size") as caught:
        RenderRequest.from_fields({"height": 128, "max_size": 64}).for_backend("kandinsky2.2", (), (64, None))
    assert caught.value.field == "height"


@pytest.fixture(scope="module")
def kandinsky(tiny_kandinsky):
    from vslerp.pipelines import VSlerpPipeline

    prior_dir, decoder_dir = tiny_kandinsky
    pipe = VSlerpPipeline.from_pretrained(decoder_dir, prior=prior_dir, device=None)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _request(pipe, thetas):
    dim = pipe.image_encoder.config.projection_dim
    return {"source": torch.randn(dim, generator=torch.Generator().manual_seed(1)),
            "target": torch.randn(dim, generator=torch.Generator().manual_seed(2)),
            "thetas": thetas, "alphas": [0.0, 1.0], "generator": torch.Generator().manual_seed(0)}


def test_render_batch_takes_the_limits_of_a_call(kandinsky):
    """render_batch checked neither max_cells nor max_size, which pipe(...) applies."""
    with pytest.raises(ValueError, match="max_cells") as caught:
        kandinsky.render_batch([_request(kandinsky, [0.0, 0.5, 1.0])], max_cells=4, **RENDER)
    assert caught.value.field == "max_cells"
    with pytest.raises(ValueError, match="max_size") as caught:
        kandinsky.render_batch([_request(kandinsky, [0.0])], max_size=16, **RENDER)
    assert caught.value.field == "height"
    with pytest.raises(ValueError, match="max_cells"):
        kandinsky(_request(kandinsky, [0.0])["source"], _request(kandinsky, [0.0])["target"],
                  thetas=[0.0, 0.5, 1.0], alphas=[0.0, 1.0], max_cells=4, **RENDER)


def test_dtype_is_the_keyword_and_torch_dtype_its_deprecated_alias(tiny_kandinsky):
    import warnings

    from vslerp.pipelines import VSlerpPipeline

    prior_dir, decoder_dir = tiny_kandinsky
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        pipe = VSlerpPipeline.from_pretrained(decoder_dir, prior=prior_dir, dtype=torch.bfloat16, device=None)
    assert pipe.unet.dtype == torch.bfloat16 and pipe.describe()["dtype"] == "bfloat16"
    with pytest.warns(FutureWarning, match="dtype="):
        old = VSlerpPipeline.from_pretrained(decoder_dir, prior=prior_dir, torch_dtype=torch.bfloat16, device=None)
    assert old.unet.dtype == torch.bfloat16
    with pytest.raises(TypeError, match="dtype= only"):
        VSlerpPipeline.from_pretrained(decoder_dir, prior=prior_dir, dtype=torch.float32,
                                       torch_dtype=torch.bfloat16, device=None)
