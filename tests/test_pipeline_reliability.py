"""Issue 27, the pipeline's parts: concurrent calls, one image one embedding, huge embeddings,
non-finite latents from a callback, and requests/axes refused by name (tiny random models)."""

from __future__ import annotations

import copy
import threading

import numpy as np
import PIL.Image
import pytest
import torch
from helpers import embedding
from helpers import gen as _gen
from PIL import ImageOps

import vslerp
from vslerp.pipelines.serial import call_lock

RENDER = {"num_inference_steps": 2, "height": 32, "width": 32, "output_type": "np"}


def _emb(seed: int) -> torch.Tensor:
    return embedding(7000 + seed)  # (D,) raw


@pytest.fixture(scope="module")
def kandinsky(kandinsky_pipe):
    return kandinsky_pipe


@pytest.fixture(scope="module")
def stable_unclip(tiny_stable_unclip, make_pipe):
    return make_pipe(tiny_stable_unclip, stats=_emb(0), device=None)


@pytest.fixture(params=["kandinsky", "stable_unclip"])
def pipe(request):
    return request.getfixturevalue(request.param)


def _denoiser_calls(pipe):
    calls = []
    return calls, pipe.unet.register_forward_hook(lambda *a: calls.append(1))


# -- concurrency ----------------------------------------------------------------------------
def _jobs():
    """Four calls with their own seeds, thetas, alphas and step counts (the scheduler's state)."""
    return [{"thetas": [0.0, 0.4], "alphas": [0.0], "seed": 1, "num_inference_steps": 2},
            {"thetas": [0.7], "alphas": [1.0, -1.0], "seed": 2, "num_inference_steps": 3},
            {"thetas": [1.0, 0.2], "alphas": [0.5], "seed": 3, "num_inference_steps": 2},
            {"thetas": [0.5], "alphas": [2.0], "seed": 4, "num_inference_steps": 3}]


def _call(pipe, job):
    return pipe(_emb(1), _emb(2), thetas=job["thetas"], alphas=job["alphas"], generator=_gen(job["seed"]),
                **{**RENDER, "num_inference_steps": job["num_inference_steps"]}).images


def test_threads_on_one_pipeline_get_the_images_of_sequential_calls(pipe):
    """Four threads started together (a barrier) on one pipeline == the same calls one by one."""
    jobs = _jobs()
    sequential = [_call(pipe, job) for job in jobs]
    barrier = threading.Barrier(len(jobs))
    results: list = [None] * len(jobs)

    def worker(k):
        barrier.wait()
        try:
            results[k] = _call(pipe, jobs[k])
        except BaseException as err:  # noqa: BLE001 - handed to the main thread
            results[k] = err

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(len(jobs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for k, (alone, together) in enumerate(zip(sequential, results, strict=True)):
        assert not isinstance(together, BaseException), f"call {k} raised {together!r}"
        np.testing.assert_allclose(together, alone, atol=1e-5, err_msg=f"call {k}")
    assert np.abs(sequential[0][0] - sequential[3][0]).max() > 1e-2  # the calls differ


def test_a_call_holds_the_pipeline_lock_and_encoders_wait_for_it(kandinsky):
    """While a call denoises, another thread cannot take the pipeline's lock (encode_image and
    every other serialised method wait); the calling thread can (the call encodes its inputs)."""
    seen = []

    def callback(pipe, step, timestep, tensors):
        other = []
        probe = threading.Thread(target=lambda: other.append(call_lock(pipe).acquire(blocking=False)))
        probe.start()
        probe.join()
        seen.append((other[0], call_lock(pipe).acquire(blocking=False)))
        call_lock(pipe).release()
        return {}

    kandinsky(_emb(1), _emb(2), thetas=[0.5], alphas=[0.0], callback_on_step_end=callback, **RENDER)
    assert seen and all(not other and mine for other, mine in seen)


def test_a_deep_copy_has_its_own_lock_and_renders_the_same(kandinsky, tmp_path):
    twin = copy.deepcopy(kandinsky)
    assert call_lock(twin) is not call_lock(kandinsky)
    job = _jobs()[1]
    np.testing.assert_allclose(_call(twin, job), _call(kandinsky, job), atol=1e-6)
    kandinsky.save_pretrained(tmp_path / "saved")  # the lock is no component: nothing saved for it
    assert not any("lock" in p.name for p in (tmp_path / "saved").rglob("*"))


# -- one image, one embedding -----------------------------------------------------------------
def _pixels(seed: int, shape, dtype=np.uint8, high: int = 256) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, high, shape).astype(dtype)


def _rgba_png(folder):
    rgba = _pixels(1, (40, 44, 4))
    rgba[..., 3] = np.linspace(0, 255, 44, dtype=np.uint8)[None, :]  # every alpha level
    path = folder / "rgba.png"
    PIL.Image.fromarray(rgba).save(path)
    return path, lambda im: np.asarray(im)  # (H, W, 4) uint8


def _gray16_png(folder):
    path = folder / "gray16.png"
    PIL.Image.fromarray(_pixels(2, (36, 30), np.uint16, 65536)).save(path)
    return path, lambda im: np.asarray(im)  # (H, W) uint16


def _exif_jpeg(folder):
    path = folder / "rotated.jpg"
    exif = PIL.Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to view
    PIL.Image.fromarray(_pixels(3, (24, 48, 3))).save(path, exif=exif.tobytes(), quality=95)
    return path, lambda im: np.asarray(ImageOps.exif_transpose(im))  # an array is upright pixels


def _palette_png(folder):
    path = folder / "palette.png"
    image = PIL.Image.new("P", (32, 32))
    image.putdata(_pixels(4, (32 * 32,), high=16).tolist())  # 16 colours, index 0 among them
    image.putpalette(_pixels(5, (16 * 3,)).tolist())
    image.save(path, transparency=0)  # index 0 transparent
    return path, lambda im: np.asarray(im.convert("RGBA"))


FILES = {"rgba": _rgba_png, "gray16": _gray16_png, "exif6": _exif_jpeg, "palette": _palette_png}


@pytest.mark.parametrize("kind", FILES)
def test_a_path_its_pil_image_and_its_array_give_one_embedding(kandinsky, tmp_path, kind):
    path, as_array = FILES[kind](tmp_path)
    with PIL.Image.open(path) as opened:
        opened.load()
        array = as_array(opened)
        from_pil = kandinsky.encode_image(opened)
        cell_pil = kandinsky(opened, _emb(2), thetas=[0.0], alphas=[0.0], output_type="latent",
                             num_inference_steps=1, height=32, width=32).embeddings
    from_path = kandinsky.encode_image(path)
    from_str = kandinsky.encode_image(str(path))
    from_array = kandinsky.encode_image(array)
    assert torch.equal(from_pil, from_path) and torch.equal(from_str, from_path)
    assert torch.equal(from_array, from_path)
    assert torch.equal(cell_pil[0, 0], from_path[0])  # a call's source, as encode_image
    stats_encoders = kandinsky.clip_encoders()  # stats compute's encoding of a PIL image
    with PIL.Image.open(path) as opened:
        assert torch.equal(stats_encoders.encode_images([opened]), from_path)
    if kind == "rgba":  # alpha is composited on white, not dropped (as convert("RGB") would)
        with PIL.Image.open(path) as opened:
            dropped = kandinsky.clip_encoders().encode_pixels(
                kandinsky.clip_encoders().preprocess_images([opened.convert("RGB")])).cpu()
        assert not torch.equal(dropped, from_path)


def test_a_float_array_in_0_1_is_its_uint8_image(kandinsky):
    pixels = _pixels(5, (30, 34, 3))
    assert torch.equal(kandinsky.encode_image(pixels / 255.0), kandinsky.encode_image(PIL.Image.fromarray(pixels)))


def test_the_init_photo_of_strength_goes_through_the_same_normalisation(kandinsky, tmp_path):
    path, _ = _rgba_png(tmp_path)
    kw = dict(thetas=[0.0], alphas=[0.0], strength=0.5, **RENDER)
    with PIL.Image.open(path) as opened:
        from_pil = kandinsky(_emb(1), _emb(2), image=opened, generator=_gen(3), **kw).images
    from_path = kandinsky(_emb(1), _emb(2), image=path, generator=_gen(3), **kw).images
    np.testing.assert_array_equal(from_pil, from_path)


@pytest.mark.parametrize("where", ["source", "target", "image"])
def test_an_empty_image_is_refused_naming_the_argument(kandinsky, where):
    empty = PIL.Image.new("RGB", (0, 0))
    call = {"source": _emb(1), "target": _emb(2), where: empty}
    if where == "image":
        call["strength"] = 0.5
    calls, hook = _denoiser_calls(kandinsky)
    try:
        with pytest.raises(ValueError, match=rf"^{where} image cannot be used: empty \(0×0 pixels\)"):
            kandinsky(**call, thetas=[0.0], alphas=[0.0], **RENDER)
    finally:
        hook.remove()
    assert calls == []
    with pytest.raises(ValueError, match=r"images\[0\] image cannot be used: empty"):
        kandinsky.encode_image([empty])


# -- huge embeddings --------------------------------------------------------------------------
HUGE = {"x1e30": lambda v: v * 1e30, "3e38": lambda v: v / v.abs().max() * 3e38,
        "float64 1e300": lambda v: v.double() * 1e300}


@pytest.mark.parametrize("scale", HUGE)
@pytest.mark.parametrize("where", ["source", "target", "negative_image_embeds", "statistics"])
def test_huge_finite_embeddings_are_refused_naming_them(pipe, scale, where):
    if where == "negative_image_embeds" and pipe.backend == "stable-unclip":
        pytest.skip("Stable unCLIP takes no negative_image_embeds (refused by name)")
    huge = HUGE[scale](_emb(3))
    name = {"negative_image_embeds": "negative_image_embeds embedding",
            "statistics": "the statistics' image mean"}.get(where, f"{where} embedding")
    request = {"source": _emb(1), "target": _emb(2), "thetas": [0.5], "alphas": [0.0], "generator": _gen()}
    if where in ("source", "target"):  # a request's own embedding; the others are the call's
        batch, options, batch_name = [{**request, where: huge}], {}, f"requests\\[0\\] {name}"
    else:
        batch, options, batch_name = [request], {where: huge}, name
    calls, hook = _denoiser_calls(pipe)
    try:
        with pytest.raises(ValueError, match=rf"^{name} has an entry of magnitude .*\|value\| <= 10000"):
            pipe(**{"source": _emb(1), "target": _emb(2), where: huge}, thetas=[0.0, 0.5], alphas=[0.0], **RENDER)
        with pytest.raises(ValueError, match=rf"^{batch_name} has an entry of magnitude"):
            pipe.render_batch(batch, **options, **RENDER)
    finally:
        hook.remove()
    assert calls == []


def test_a_cell_too_large_to_render_is_refused_before_denoising(kandinsky):
    """Every input in range, but θ far out on a line (parallel source and target) makes a huge cell."""
    source, target, theta, alpha = _emb(1), 2 * _emb(1), 1e4, 0.0
    cell = vslerp.vslerp(source, target, theta, alpha, kandinsky.image_mean)
    assert float(cell.abs().max()) > 1e4  # the case: a cell beyond MAX_EMBEDDING_VALUE
    with pytest.raises(ValueError, match="a cell's embedding .* has an entry of magnitude"):
        kandinsky(source, target, thetas=[theta], alphas=[alpha], allow_extrapolation=True, **RENDER)


# -- callbacks ----------------------------------------------------------------------------------
def _nan_callback(in_place: bool):
    def callback(pipe, step, timestep, tensors):
        if in_place:
            tensors["latents"].fill_(float("nan"))
            return {}
        return {"latents": tensors["latents"] * float("nan")}

    return callback


@pytest.mark.parametrize("in_place", [False, True], ids=["returned", "in_place"])
def test_non_finite_latents_from_a_callback_are_refused(pipe, in_place):
    how = "left in place" if in_place else "returned"
    with pytest.raises(ValueError, match=rf"callback_on_step_end {how} non-finite 'latents' .* at step 0"):
        pipe(_emb(1), _emb(2), thetas=[0.5], alphas=[0.0], callback_on_step_end=_nan_callback(in_place),
             **RENDER)
    with pytest.raises(ValueError, match="callback_on_step_end returned non-finite"):
        pipe.render_batch([{"source": _emb(1), "target": _emb(2), "thetas": [0.5], "alphas": [0.0],
                            "generator": _gen()}], callback_on_step_end=_nan_callback(False), **RENDER)


def test_a_callback_returning_finite_latents_and_none_still_works(pipe):
    plain = pipe(_emb(1), _emb(2), thetas=[0.5], alphas=[0.0], generator=_gen(1), **RENDER).images
    same = pipe(_emb(1), _emb(2), thetas=[0.5], alphas=[0.0], generator=_gen(1), **RENDER,
                callback_on_step_end=lambda *a: None).images
    np.testing.assert_allclose(same, plain, atol=1e-6)
    with pytest.raises(TypeError, match="callback_on_step_end must return a dict"):
        pipe(_emb(1), _emb(2), thetas=[0.5], alphas=[0.0], **RENDER, callback_on_step_end=lambda *a: [1])


# -- requests and axes ------------------------------------------------------------------------
def _request(**change):
    request = {"source": _emb(1), "target": _emb(2), "thetas": [0.5], "alphas": [0.0], "generator": _gen()}
    request.update(change)
    return {k: v for k, v in request.items() if v is not None}


@pytest.mark.parametrize(("request_", "error", "match"), [
    (_request(thetas=None), ValueError, r"^requests\[1\] has no 'thetas'"),
    (_request(generator=None), ValueError, r"^requests\[1\] has no 'generator'"),
    (_request(source=None), ValueError, r"^requests\[1\] has no 'source'"),
    (_request(theta=[0.5]), ValueError, r"^requests\[1\] has an unknown key 'theta'"),
    ([_emb(1), _emb(2)], TypeError, r"^requests\[1\] must be a dict"),
])
def test_render_batch_requests_are_checked_by_key_and_index(kandinsky, request_, error, match):
    calls, hook = _denoiser_calls(kandinsky)
    try:
        with pytest.raises(error, match=match):
            kandinsky.render_batch([_request(), request_], **RENDER)
    finally:
        hook.remove()
    assert calls == []


UNORDERED = {"set": lambda: {0.0, 0.5}, "frozenset": lambda: frozenset({0.0, 0.5}),
             "dict keys": lambda: {0.0: "a", 0.5: "b"}.keys(), "dict": lambda: {0.0: "a", 0.5: "b"},
             "generator": lambda: (v for v in (0.0, 0.5))}


@pytest.mark.parametrize("kind", UNORDERED)
@pytest.mark.parametrize("axis", ["thetas", "alphas"])
def test_unordered_axes_are_refused_naming_them(kandinsky, kind, axis):
    call = {"thetas": [0.5], "alphas": [0.0], axis: UNORDERED[kind]()}
    with pytest.raises(TypeError, match=rf"^{axis} must be an ordered list of numbers"):
        kandinsky(_emb(1), _emb(2), **call, **RENDER)
    with pytest.raises(TypeError, match=rf"^{axis} must be an ordered list"):
        kandinsky.render_batch([{**_request(), **call}], **RENDER)


def test_numpy_axes_and_scalars_are_accepted(kandinsky):
    kw = dict(output_type="latent", num_inference_steps=1, height=32, width=32, generator=None)
    want = kandinsky(_emb(1), _emb(2), thetas=[0.0, 0.5], alphas=[1.0], **kw).embeddings
    for thetas, alphas in [(np.array([0.0, 0.5]), np.float32(1.0)), ([np.float64(0.0), np.float32(0.5)], [np.int64(1)]),
                           (torch.tensor([0.0, 0.5]), (1.0,)), (range(0, 1), 1)]:
        got = kandinsky(_emb(1), _emb(2), thetas=thetas, alphas=alphas, **kw)
        torch.testing.assert_close(got.embeddings[:, :1], want[: got.embeddings.shape[0], :1])


def test_the_core_never_gives_nan_for_the_pipelines_huge_inputs():
    a, b, m = _emb(1), _emb(2), _emb(3)
    for scale in HUGE.values():
        try:
            out = vslerp.vslerp(scale(a), scale(b), 0.5, 1.0, scale(m))
        except ValueError as err:
            assert "overflow" in str(err)
        else:
            assert bool(torch.isfinite(out).all())
