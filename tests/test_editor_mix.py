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
