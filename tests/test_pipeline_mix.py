"""``pipe.mix``: N-way vertical mixing through the render path of ``pipe(...)``, on every backend's
tiny models: two inputs with weights (1 − θ, θ) render the θ × α grid's cells, pixel for pixel."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import embedding, random_image
from helpers import gen as _gen

import vslerp
from vslerp.pipelines import VSlerpMixOutput
from vslerp.pipelines.request import RequestError

TINY = {"num_inference_steps": 2, "height": 32, "width": 32, "output_type": "np"}


def _ip_adapter(kind: str):
    def build(root, make_pipe):
        from vslerp.pipelines.testing_sd import make_tiny_ip_adapter, make_tiny_sd, make_tiny_sdxl

        sub, weight = ("models", "ip-adapter_sd15.safetensors") if kind == "sd15" else \
            ("sdxl_models", "ip-adapter_sdxl.safetensors")
        base = (make_tiny_sd if kind == "sd15" else make_tiny_sdxl)(root)
        adapter = make_tiny_ip_adapter(root, base, sub, weight)
        pipe = make_pipe(base, ip_adapter=adapter, ip_adapter_subfolder=sub, ip_adapter_weight_name=weight,
                         stats=embedding(7), device=None)
        return pipe, {**TINY, "height": 64, "width": 64}

    return build


def _kandinsky(root, make_pipe):
    from vslerp.pipelines.testing import make_tiny_kandinsky

    prior, decoder = make_tiny_kandinsky(root)
    return make_pipe(decoder, prior=prior, device=None), TINY


def _unclip(root, make_pipe):
    from vslerp.pipelines.testing import make_tiny_unclip

    return make_pipe(make_tiny_unclip(root), stats=embedding(7), device=None), \
        {"num_inference_steps": 2, "super_res_num_inference_steps": 2, "output_type": "np"}


def _stable_unclip(root, make_pipe):
    from vslerp.pipelines.testing_sd import make_tiny_stable_unclip

    return make_pipe(make_tiny_stable_unclip(root), stats=embedding(7), device=None), TINY


def _flux(root, make_pipe):
    from vslerp.pipelines.testing_flux import (
        FLUX_ADAPTER_WEIGHT,
        make_tiny_flux,
        make_tiny_flux_ip_adapter,
    )

    base = make_tiny_flux(root)
    adapter, encoder = make_tiny_flux_ip_adapter(root, base)
    return make_pipe(base, ip_adapter=adapter, ip_adapter_weight_name=FLUX_ADAPTER_WEIGHT,
                     ip_adapter_image_encoder=encoder, stats=embedding(7), device=None), TINY


# backend → build(root, make_pipe) -> (pipe, render keywords); a new backend adds its row here
BACKENDS = {"kandinsky": _kandinsky, "unclip": _unclip, "stable-unclip": _stable_unclip,
            "ip-adapter-sd": _ip_adapter("sd15"), "ip-adapter-sdxl": _ip_adapter("sdxl"), "flux": _flux}


@pytest.fixture(scope="module", params=list(BACKENDS))
def backend(request, tmp_path_factory, make_pipe):
    return BACKENDS[request.param](tmp_path_factory.mktemp(f"mix_{request.param}"), make_pipe)


def test_two_inputs_render_the_grids_cells_on_every_backend(backend):
    pipe, render = backend
    a, b = embedding(1), embedding(2)
    grid = pipe(a, b, thetas=[0.25, 0.5, 1.0], alphas=[0.0, 1.5], generator=_gen(4), **render)
    mix = pipe.mix([a, b], weights=[[0.75, 0.25], [1, 1], [0, 3]], alphas=[0.0, 1.5], generator=_gen(4),
                   return_embeddings=True, **render)
    assert isinstance(mix, VSlerpMixOutput)
    assert np.array_equal(mix.images, grid.images)
    assert torch.equal(mix.embeddings, grid.embeddings)
    assert torch.equal(mix.conformity, grid.conformity)
    assert mix.weights.tolist() == [[0.75, 0.25], [0.5, 0.5], [0.0, 1.0]]
    assert mix.alphas == [0.0, 1.5]


@pytest.fixture(scope="module")
def kandinsky(tmp_path_factory, make_pipe):
    return _kandinsky(tmp_path_factory.mktemp("mix_kandinsky"), make_pipe)[0]


def test_a_one_hot_row_of_three_renders_that_input(kandinsky, tmp_path):
    path = tmp_path / "photo.png"
    random_image(3, 32).save(path)
    inputs = [embedding(1), str(path), "a red bicycle"]
    mix = kandinsky.mix(inputs, weights=[[0, 0, 2], [1, 1, 1]], alphas=[0.5], generator=_gen(4),
                        return_embeddings=True, max_batch_size=1, **TINY)  # one cell a batch, as alone
    alone = kandinsky(embedding(9), "a red bicycle", thetas=[1.0], alphas=[0.5], generator=_gen(4), **TINY)
    assert np.array_equal(mix.images[0], alone.images[0])  # the prompt through the prior, same seed
    assert torch.equal(mix.embeddings[0, 0], alone.embeddings[0, 0])
    assert mix.images.shape == (2, 32, 32, 3) and mix.conformity.shape == (2, 1)
    # the equal mix is vmix of the three raw embeddings, and its read-out their conformity
    raws = torch.stack([inputs[0], kandinsky.encode_image(path)[0], alone.embeddings[0, 0]])
    mean = kandinsky.statistics.image.mean.float()
    expected = vslerp.vmix(raws, torch.ones(3), 0.5, mean)
    torch.testing.assert_close(mix.embeddings[1, 0], expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mix.conformity[1], kandinsky.estimated_conformity(mix.embeddings[1]))


def test_equal_rows_render_once_and_batches_change_no_pixel(kandinsky, monkeypatch):
    inputs = [embedding(1), embedding(2), embedding(3)]
    once = kandinsky.mix(inputs, weights=[[1, 2, 3], [2, 4, 6], [1, 0, 0]], alphas=[0.0, 1.0],
                         generator=_gen(5), **TINY)
    sizes = []
    chunk = kandinsky._render_chunk
    monkeypatch.setattr(kandinsky, "_render_chunk", lambda cells, *args: sizes.append(len(cells)) or chunk(cells, *args))
    batched = kandinsky.mix(inputs, weights=[[1, 2, 3], [2, 4, 6], [1, 0, 0]], alphas=[0.0, 1.0],
                            generator=_gen(5), max_batch_size=1, **TINY)
    assert sizes == [1, 1, 1]  # 6 cells, 3 distinct: rows 1 and 2 are one mix, row 3 the first input at any α
    np.testing.assert_allclose(batched.images, once.images, atol=1e-4)
    assert np.array_equal(once.images[0], once.images[2]) and np.array_equal(once.images[1], once.images[3])
    assert np.array_equal(once.images[4], once.images[5])


def test_strength_and_callback_take_the_calls_path(kandinsky, tmp_path):
    path = tmp_path / "photo.png"
    random_image(6, 32).save(path)
    steps = []
    grid = kandinsky(str(path), embedding(2), thetas=[0.5], alphas=[1.0], generator=_gen(1), strength=0.5,
                     **{**TINY, "num_inference_steps": 4})
    mix = kandinsky.mix([str(path), embedding(2)], alphas=[1.0], generator=_gen(1), strength=0.5,
                        callback_on_step_end=lambda pipe, step, t, tensors: steps.append(step) or {},
                        **{**TINY, "num_inference_steps": 4})
    assert np.array_equal(mix.images, grid.images)  # img2img from the first input's photo
    assert steps == [0, 1]  # int(4 × 0.5) steps of one batch
    images, conformity, weights, alphas = kandinsky.mix([embedding(1), embedding(2)], generator=_gen(1),
                                                        return_dict=False, **TINY)
    assert len(images) == 1 and weights.tolist() == [[0.5, 0.5]] and alphas == [1.0]


@pytest.mark.parametrize(("inputs", "kwargs", "error", "message"), [
    (2, {"weights": [1, 2, 3]}, RequestError, "weights has 3 weights for 2 inputs"),
    (3, {"weights": [[1, 1, 1], [1, 1]]}, RequestError, "weights row 2 has 2 weights for 3 inputs"),
    (2, {"weights": [1, -1]}, RequestError, "weights must be finite and non-negative, got -1"),
    (2, {"weights": [0, 0]}, RequestError, "weights is all zeros"),
    (2, {"weights": [1, float("nan")]}, RequestError, "weights must be finite"),
    (2, {"weights": "1,2"}, TypeError, "weights must be a row of numbers"),
    (1, {}, ValueError, "a mix takes 2 to 16 inputs, got 1"),
    (17, {}, ValueError, "a mix takes 2 to 16 inputs, got 17"),
    (2, {"thetas": [0.5]}, TypeError, "unexpected keyword argument 'thetas'"),
    (2, {"alphas": [float("inf")]}, RequestError, "alphas must be finite"),
    (2, {"max_cells": 1, "alphas": [0, 1]}, RequestError, "2 cells in one call is more than the limit 1"),
])
def test_bad_mixes_are_refused_before_any_compute(kandinsky, monkeypatch, inputs, kwargs, error, message):
    def tripwire(*args, **kwargs):
        raise AssertionError("encoded or rendered before the arguments were checked")

    monkeypatch.setattr(kandinsky, "_render_chunk", tripwire)
    monkeypatch.setattr(kandinsky, "_resolve", tripwire)
    with pytest.raises(error, match=message.replace("(", r"\(")) as info:
        kandinsky.mix([embedding(k) for k in range(inputs)], **kwargs)
    if isinstance(info.value, RequestError):
        assert info.value.field in ("weights", "alphas", "max_cells")


# -- mixes in render_batch: batched with grids, each request its own result -------------------------
def _mix_request(seed: int = 6, **change) -> dict:
    return {"inputs": torch.stack([embedding(1), embedding(2), embedding(3)]), "weights": [[1, 2, 3], [1, 0, 1]],
            "alphas": [0.0, 1.0], "generator": _gen(seed), **change}


def test_a_mix_request_in_render_batch_renders_what_pipe_mix_renders(kandinsky):
    (batched,) = kandinsky.render_batch([_mix_request()], **TINY)
    alone = kandinsky.mix(list(_mix_request()["inputs"]), weights=[[1, 2, 3], [1, 0, 1]], alphas=[0.0, 1.0],
                          generator=_gen(6), return_embeddings=False, **TINY)
    assert isinstance(batched, VSlerpMixOutput)
    assert np.array_equal(batched.images, alone.images)
    assert torch.equal(batched.conformity, alone.conformity) and torch.equal(batched.weights, alone.weights)
    assert batched.alphas == alone.alphas == [0.0, 1.0]


def test_a_mix_and_a_grid_in_one_render_batch_each_get_their_solo_result(kandinsky, monkeypatch):
    grid_request = {"source": embedding(4), "target": embedding(5), "thetas": [0.3], "alphas": [1.0],
                    "generator": _gen(8)}
    grid_alone = kandinsky.render_batch([dict(grid_request)], **TINY)[0]
    mix_alone = kandinsky.render_batch([_mix_request()], **TINY)[0]
    sizes = []
    chunk = kandinsky._render_chunk
    monkeypatch.setattr(kandinsky, "_render_chunk", lambda cells, *args: sizes.append(len(cells)) or chunk(cells, *args))
    grid_out, mix_out = kandinsky.render_batch([grid_request, _mix_request()], **TINY)
    assert sizes == [5]  # one denoiser batch: the grid's cell and the mix's 4 distinct cells
    assert isinstance(grid_out, vslerp.pipelines.VSlerpPipelineOutput) and isinstance(mix_out, VSlerpMixOutput)
    np.testing.assert_allclose(grid_out.images, grid_alone.images, atol=1e-4)  # batch numerics only
    np.testing.assert_allclose(mix_out.images, mix_alone.images, atol=1e-4)
    torch.testing.assert_close(mix_out.conformity, mix_alone.conformity)


@pytest.mark.parametrize(("change", "error", "message"), [
    ({"weights": None}, ValueError, r"^requests\[1\] has no 'weights': a mix request needs"),
    ({"thetas": [0.5]}, ValueError, r"^requests\[1\] has an unknown key 'thetas': a mix request takes"),
    ({"inputs": [embedding(1)], "weights": [1]}, ValueError, r"^requests\[1\] inputs: a mix takes 2 to 16"),
    ({"inputs": [embedding(1), "a cat"]}, TypeError, r"^requests\[1\]: inputs must be raw embeddings"),
    ({"weights": [[1, 2]]}, RequestError, r"^requests\[1\]: weights has 2 weights for 3 inputs"),
    ({"weights": [1, -1, 0]}, RequestError, r"^requests\[1\]: weights must be finite and non-negative"),
    ({"generator": None}, TypeError, r"^requests\[1\]: give each request its own torch.Generator"),
])
def test_bad_mix_requests_are_named_before_any_compute(kandinsky, monkeypatch, change, error, message):
    def tripwire(*args, **kwargs):
        raise AssertionError("rendered before the requests were checked")

    monkeypatch.setattr(kandinsky, "_render_chunk", tripwire)
    bad = {k: v for k, v in _mix_request(**change).items() if v is not None or k == "generator"}
    with pytest.raises(error, match=message):
        kandinsky.render_batch([_mix_request(), bad], **TINY)
