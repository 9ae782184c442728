"""The editor's backend options on the tiny random Kandinsky: the strength slider reaches the
render (the callbacks and the ``/edit`` endpoint), changes the image, is never merged into
another strength's batch, and the controls a backend does not take are hidden and refused."""

from __future__ import annotations

import base64
import os
import threading

import numpy as np
import PIL.Image
import pytest
import torch
from helpers import editor_client
from helpers import free_port as _free_port

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
gr = pytest.importorskip("gradio")
gradio_client = pytest.importorskip("gradio_client")

STEPS, SIZE = 2, 64
PIPE_KWARGS = {"device": "cpu"}  # the conftest pipe's


def _pixels(image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("editor_strength")
    out = {}
    for seed, name in enumerate(("source", "target")):
        rng = np.random.default_rng(seed + 1)
        PIL.Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(root / f"{name}.png")
        out[name] = root / f"{name}.png"
    return out


@pytest.fixture(scope="module")
def editor(pipe, tmp_path_factory):
    from vslerp.ui.editor import Editor

    return Editor(pipe, tiny_random=True, prior_steps=2, out_dir=tmp_path_factory.mktemp("editor_strength_out"))


def _alone(pipe, images, strength, seed=0):
    """The pipeline's own render of the θ=0 cell at ``strength``, as the editor makes it."""
    from vslerp.pipelines.inputs import open_named_image

    photo = open_named_image("source", images["source"])
    out = pipe(photo, images["target"], thetas=[0.0], alphas=[0.0], num_inference_steps=STEPS, guidance_scale=4.0,
               height=SIZE, width=SIZE, generator=torch.Generator().manual_seed(seed), strength=strength)
    return _pixels(out.images[0])


def test_strength_reaches_the_render_and_no_image_is_reused_across_strengths(editor, pipe, images):
    source, target = str(images["source"]), str(images["target"])
    full, meta_full = editor.edit(source, target, "", 0.0, 0.0, 0, STEPS, 4.0, SIZE)
    encodes = editor.state.encode_calls
    half, meta_half = editor.edit(source, target, "", 0.0, 0.0, 0, STEPS, 4.0, SIZE, strength=0.5)
    assert editor.state.encode_calls == encodes  # the embeddings are cached, the image is rendered anew
    assert meta_half["metadata"]["strength"] == 0.5 and meta_full["metadata"]["strength"] == 1.0
    assert np.abs(_pixels(half) - _pixels(full)).mean() > 5
    np.testing.assert_array_equal(_pixels(half), _alone(pipe, images, 0.5))
    np.testing.assert_array_equal(_pixels(full), _alone(pipe, images, 1.0))
    again, _ = editor.edit(source, target, "", 0.0, 0.0, 0, STEPS, 4.0, SIZE)  # back to 1: not the 0.5 image
    np.testing.assert_array_equal(_pixels(again), _pixels(full))


@pytest.mark.parametrize(("options", "message"), [
    ({"strength": 0}, "Strength must be above 0"),
    ({"strength": 1.5}, "Strength must be from 0 to 1"),
    ({"strength": "half"}, "Strength must be a number"),
    ({"strength": 0.2}, "Strength 0.2 with 2 steps leaves no denoising step"),
    ({"text_prompt": "a cat"}, "A text prompt is not supported by this model (kandinsky2.2)"),
    ({"negative_prompt": "blurry"}, "A negative prompt is not supported by this model"),
    ({"noise_level": 10}, "A noise level is not supported by this model"),
    ({"noise_level": 1.5}, "Noise level must be a whole number"),
    ({"ip_adapter_scale": 0.5}, "An IP-Adapter scale is not supported by this model"),
    ({"ip_adapter_scale": -1}, "IP-Adapter scale must be from 0"),
    ({"true_cfg_scale": 3.0}, "A true CFG scale above 1 is not supported by this model"),
    ({"true_cfg_scale": "strong"}, "True CFG scale must be a number"),
])
def test_bad_backend_options_are_named_before_any_render(editor, images, options, message, monkeypatch):
    from vslerp.ui.editor.messages import EditorError

    def tripwire(*args, **kwargs):
        raise AssertionError("rendered a request its checks should refuse")

    monkeypatch.setattr(editor.queue, "submit", tripwire)
    with pytest.raises(EditorError, match=message.replace("(", r"\(").replace(")", r"\)")):
        editor.edit(str(images["source"]), str(images["target"]), "", 0.0, 0.0, 0, STEPS, 4.0, SIZE, **options)


def test_requests_of_different_strengths_are_never_one_batch(pipe, images):
    """Two requests wait while a third renders; they differ in strength only: two batches, each
    request with the pixels it has alone."""
    from vslerp.ui.editor import Editor

    editor = Editor(pipe, tiny_random=True, prior_steps=2)
    queue, results, started = editor.queue, {}, threading.Event()
    source, target = str(images["source"]), str(images["target"])
    for path, name in ((source, "source"), (target, "target")):  # cached: the waiting requests need no encoder
        editor.state.upload_embedding(path, name)

    def first_render_waits_for_two_more():
        started.set()
        with queue._cond:
            assert queue._cond.wait_for(lambda: len(queue._pending) == 2, timeout=120)
        return False

    def edit(name, strength, should_stop=None):
        results[name] = editor.edit(source, target, "", 0.0, 0.0, 0, STEPS, 4.0, SIZE, strength=strength,
                                    should_stop=should_stop)[0]

    first = threading.Thread(target=edit, args=("first", 1.0, first_render_waits_for_two_more))
    first.start()
    assert started.wait(120)
    others = [threading.Thread(target=edit, args=("half", 0.5)), threading.Thread(target=edit, args=("full", 1.0))]
    for t in others:
        t.start()
    for t in [first, *others]:
        t.join(120)
    assert queue.batches == 3 and queue.largest == 1  # "half" and "full" waited together, in two batches
    np.testing.assert_array_equal(_pixels(results["half"]), _alone(pipe, images, 0.5))
    np.testing.assert_array_equal(_pixels(results["full"]), _alone(pipe, images, 1.0))


def test_render_many_refuses_to_mix_strengths(pipe, images):
    from dataclasses import replace

    from vslerp.ui.render import RenderSpec, batch_key, render_many

    raw = pipe.encode_image([PIL.Image.open(images["source"]).convert("RGB")])[0]  # (D,)
    ref = {"kind": "image", "path": str(images["source"]), "sha256": None}
    spec = RenderSpec(source=ref, target=ref, thetas=(0.0,), alphas=(0.0,), steps=STEPS, size=SIZE, guidance=4.0)
    half = replace(spec, strength=0.5)
    assert batch_key(spec) != batch_key(half)
    with pytest.raises(ValueError, match="differ in steps, size, guidance, batch size or backend options"):
        render_many(pipe, [(spec, raw, raw, None), (half, raw, raw, None)])
    out = render_many(pipe, [(half, raw, raw, None)])  # the photo: the spec's source path
    np.testing.assert_array_equal(_pixels(out[0].images[0]), _alone(pipe, images, 0.5))


def _component(demo, elem_id):
    found = [block for block in demo.blocks.values() if getattr(block, "elem_id", None) == elem_id]
    assert len(found) == 1, elem_id
    return found[0]


def test_the_page_shows_the_controls_its_backend_takes(pipe, monkeypatch):
    from vslerp.ui.editor import Editor, build_page

    demo = build_page(Editor(pipe, tiny_random=True))
    strength = _component(demo, "vslerp-strength")
    assert strength.visible and (strength.minimum, strength.maximum, strength.value) == (0.05, 1.0, 1.0)
    assert strength.info == "below 1 keeps the photo's layout (img2img)"
    for hidden in ("vslerp-text-prompt", "vslerp-negative-prompt", "vslerp-noise-level", "vslerp-ip-scale",
                   "vslerp-true-cfg"):
        assert not _component(demo, hidden).visible  # Kandinsky 2.2 takes strength only
    monkeypatch.setattr(pipe, "_backend_options", ("prompt", "negative_prompt", "ip_adapter_scale"), raising=False)
    demo = build_page(Editor(pipe, tiny_random=True))  # as an IP-Adapter backend's page
    assert not _component(demo, "vslerp-strength").visible and not _component(demo, "vslerp-noise-level").visible
    for shown in ("vslerp-text-prompt", "vslerp-negative-prompt", "vslerp-ip-scale"):
        assert _component(demo, shown).visible


def test_the_edit_endpoint_takes_the_strength(pipe, images):
    from gradio_client import handle_file

    from vslerp.ui.editor import Editor, build_page
    from vslerp.ui.images import read_png_metadata

    demo = build_page(Editor(pipe, tiny_random=True))
    demo.launch(server_name="127.0.0.1", server_port=_free_port(), prevent_thread_lock=True, quiet=True,
                ssr_mode=False)
    try:
        client = editor_client(demo.local_url)
        args = (handle_file(str(images["source"])), handle_file(str(images["target"])), "", 0.0, 0.0, 0, STEPS,
                4.0, SIZE)
        path = client.predict(*args, "startup", None, 0.5, api_name="/edit")
        with PIL.Image.open(path) as im:
            assert read_png_metadata(path)["strength"] == 0.5
            np.testing.assert_array_equal(_pixels(im), _alone(pipe, images, 0.5))
        with pytest.raises(Exception, match="A text prompt is not supported by this model"):
            client.predict(*args, "startup", None, 1.0, "a cat", api_name="/edit")
    finally:
        demo.close()


def test_the_pages_edit_event_passes_the_strength_and_drops_hidden_controls(editor, pipe, images):
    """The page's own Edit event (not an endpoint): the Strength slider's value reaches the render;
    the controls Kandinsky 2.2 does not take are hidden, and whatever they hold is not sent."""
    from vslerp.ui.editor import build_page

    demo = build_page(editor)
    ui_edit = next(f.fn for f in demo.fns.values() if getattr(f, "name", "") == "ui_edit")
    # an HTTP event takes uploads, never a server path: the files' bytes, as a browser's data URLs
    source, target = ("data:image/png;base64," + base64.b64encode(images[key].read_bytes()).decode()
                      for key in ("source", "target"))
    image, result = ui_edit(source, target, "", 0.0, 0.0, 0, STEPS, 4.0, SIZE,
                            "startup", None, 0.5, "a hidden text prompt", "", 100, 1.0, 4.0, "image")
    assert result["metadata"]["strength"] == 0.5 and result["metadata"]["prompt"] is None
    np.testing.assert_array_equal(_pixels(image), _alone(pipe, images, 0.5))
