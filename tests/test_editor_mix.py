"""The editor's Mix panel: ``/mix`` (gradio_client) renders what ``pipe.mix`` renders, and its checks."""

from __future__ import annotations

import json
import os

import numpy as np
import PIL.Image
import pytest
import torch
from helpers import editor_client, launched_editor

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
pytest.importorskip("gradio")
pytest.importorskip("gradio_client")


@pytest.fixture(scope="module")
def served(pipe):
    with launched_editor(pipe) as served:
        yield served


@pytest.fixture(scope="module")
def client(served):
    return editor_client(served[1].local_url)


def test_mix_renders_what_pipe_mix_renders_and_its_png_says_how(served, client, pipe):
    from gradio_client import handle_file

    from vslerp.ui.editor.layout import example_images

    cat, mountains, _ = example_images()
    path = client.predict([handle_file(cat), None, handle_file(mountains)], [None, "a red fox", None],
                          [1.0, 0.5, 0.5], 1.0, 3, 2, 4.0, 64, api_name="/mix")
    with PIL.Image.open(path) as im:
        got, meta = np.asarray(im.convert("RGB")), json.loads(im.info["vslerp"])
    want = pipe.mix([cat, "a red fox", mountains], weights=[[1.0, 0.5, 0.5]], alphas=[1.0],
                    generator=torch.Generator().manual_seed(3), num_inference_steps=2, guidance_scale=4.0,
                    height=64, width=64, prior_num_inference_steps=2).images[0]
    assert np.array_equal(got, np.asarray(want.convert("RGB")))
    assert meta["weights"] == [0.5, 0.25, 0.25] and meta["alphas"] == [1.0] and meta["seed"] == 3
    assert [ref["kind"] for ref in meta["inputs"]] == ["image", "prompt", "image"]
    assert meta["inputs"][0]["path"] == "cat.png" and meta["inputs"][1]["prompt"] == "a red fox"


@pytest.mark.parametrize(("images", "prompts", "weights", "message"), [
    ([True, None], [None, None], [1.0, 1.0], "at least 2 inputs"),
    ([True, None], ["a dog", "a cat"], [1.0, 1.0], "Mix input 1: give an image or a prompt, not both"),
    ([None, None], ["a dog", "a cat"], [1.0, -0.5], "Mix input 2: its weight must be from 0 to 1"),
    ([None, None], ["a dog", "a cat"], [0.0, 0.0], "at least one mix input a weight above 0"),
    ([None, None], ["a dog", "a cat"], [1.0], "one image, prompt and weight per input"),
])
def test_mix_mistakes_are_named_before_anything_renders(served, client, images, prompts, weights, message):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    from vslerp.ui.editor.layout import example_images

    editor = served[0]
    files = [handle_file(example_images()[0]) if image else None for image in images]
    steps = editor.steps_run
    with pytest.raises(AppError, match=message):
        client.predict(files, prompts, weights, 1.0, 0, 2, 4.0, 64, api_name="/mix")
    assert editor.steps_run == steps


def test_the_weights_are_shown_normalised_over_the_filled_inputs():
    from vslerp.ui.editor.mix import shown_weights

    assert shown_weights([True, True, False], [1.0, 0.5, 1.0]) == \
        "**Weights used** (normalised): input 1: 67 % · input 2: 33 %"
    assert "fill at least two" in shown_weights([True, False, False], [1.0, 1.0, 1.0])
    assert "fill at least two" in shown_weights([True, True], [0.0, 0.0])


def test_a_weight_sent_as_text_is_named():
    from vslerp.ui.editor import EditorError
    from vslerp.ui.editor.mix import mix_values

    with pytest.raises(EditorError, match="A mix weight must be a number, got the text '1'"):
        mix_values([None, None], ["a dog", "a cat"], [1.0, "1"])


def test_a_mix_and_an_edit_submitted_together_render_in_one_render_batch_call(pipe, tmp_path, monkeypatch):
    """While one edit renders, a mix and another edit wait; they are rendered in ONE render_batch
    call (the queue's own batch), each with the pixels it gets alone."""
    import threading

    from helpers import save_random_image

    from vslerp.ui.editor import Editor
    from vslerp.ui.editor.mix import mix

    paths = {name: str(save_random_image(tmp_path / f"{name}.png", seed)) for name, seed in
             (("a", 1), ("b", 2), ("c", 3))}
    editor = Editor(pipe, tiny_random=True, prior_steps=2)
    for name, path in paths.items():  # cached: the waiting requests need no encoder
        editor.state.upload_embedding(path, name)
    queue, results, started, calls = editor.queue, {}, threading.Event(), []
    render_batch = pipe.render_batch
    monkeypatch.setattr(pipe, "render_batch",
                        lambda requests, **kw: calls.append(["inputs" in r for r in requests]) or render_batch(requests, **kw))

    def first_render_waits_for_two_more():  # the first request's step callback
        started.set()
        with queue._cond:
            assert queue._cond.wait_for(lambda: len(queue._pending) == 2, timeout=120)
        return False

    def edit(name, seed, should_stop=None):
        results[name] = editor.edit(paths["a"], paths["b"], "", 0.5, 1.0, seed, 2, 4.0, 64, should_stop=should_stop)[0]

    def mixed():
        results["mix"] = mix(editor, [("image", paths["a"]), ("image", paths["c"])], [1.0, 0.5], 1.0, 4, 2, 4.0, 64)

    first = threading.Thread(target=edit, args=("first", 1, first_render_waits_for_two_more))
    first.start()
    assert started.wait(120)
    others = [threading.Thread(target=mixed), threading.Thread(target=edit, args=("edit", 2))]
    for t in others:
        t.start()
    for t in [first, *others]:
        t.join(120)
    assert calls == [[False], [True, False]] or calls == [[False], [False, True]]  # the mix and the edit: one call
    assert queue.batches == 2 and queue.largest == 2
    edit_alone = editor.edit(paths["a"], paths["b"], "", 0.5, 1.0, 2, 2, 4.0, 64)[0]
    mix_alone = mix(editor, [("image", paths["a"]), ("image", paths["c"])], [1.0, 0.5], 1.0, 4, 2, 4.0, 64)
    assert calls[2:] == [[False], [True]]
    pixels = [np.asarray(im.convert("RGB"), dtype=np.int16) for im in
              (results["edit"], edit_alone, results["mix"][0], mix_alone[0])]
    assert np.abs(pixels[0] - pixels[1]).max() <= 1 and np.abs(pixels[2] - pixels[3]).max() <= 1  # float batch noise
    assert np.abs(pixels[0] - pixels[2]).mean() > 5  # each its own render
    assert results["mix"][1]["metadata"]["weights"] == pytest.approx([2 / 3, 1 / 3])
    assert results["mix"][1]["metadata"]["source"] is None and len(results["mix"][1]["input_conformity"]) == 2
