"""The Gradio editor on a tiny random Kandinsky: gradio_client round trips, cache, errors, CLI."""

from __future__ import annotations

import os
import socket
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import PIL.Image
import pytest
import torch

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
gr = pytest.importorskip("gradio")
gradio_client = pytest.importorskip("gradio_client")

STEPS, SIZE = 2, 64


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _image(path, seed, size=40):
    rng = np.random.default_rng(seed)
    PIL.Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def pipe(tiny_kandinsky):
    from vslerp.pipelines import VSlerpPipeline

    prior_dir, decoder_dir = tiny_kandinsky
    pipe = VSlerpPipeline.from_pretrained(decoder_dir, prior=prior_dir, device="cpu")
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def app(pipe):
    from vslerp.ui.editor import build_editor

    demo = build_editor(pipe, tiny_random=True, concurrency=1)
    demo.launch(server_name="127.0.0.1", server_port=_free_port(), prevent_thread_lock=True, quiet=True,
                ssr_mode=False)
    yield demo
    demo.close()


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("editor_images")
    return {"source": _image(root / "source.png", 1), "target": _image(root / "target.png", 2),
            "other": _image(root / "other.png", 3)}


@pytest.fixture()
def client(app):
    return gradio_client.Client(app.local_url, verbose=False)


def _edit(client, source, target=None, prompt="", theta=0.5, alpha=0.0, seed=0):
    from gradio_client import handle_file

    path = client.predict(handle_file(str(source)) if source else None,
                          handle_file(str(target)) if target else None, prompt, theta, alpha, seed,
                          STEPS, 4.0, SIZE, api_name="/edit")
    with PIL.Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def test_api_lists_edit_and_sweep(client):
    api = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert {"/edit", "/sweep"} <= set(api)
    names = [p["parameter_name"] for p in api["/edit"]["parameters"]]
    assert names[:6] == ["source", "target_image", "target_prompt", "theta", "alpha", "seed"]
    assert len(api["/edit"]["returns"]) == 1  # the image only (state outputs are not API values)


def test_edit_matches_the_pipeline_and_the_cache_skips_the_encoders(app, client, pipe, images):
    state = app.vslerp_editor.state
    calls = (state.encode_calls, state.prompt_calls)
    first = _edit(client, images["source"], prompt="a red cube", theta=0.3, alpha=0.0, seed=5)
    assert first.shape == (SIZE, SIZE, 3)
    assert (state.encode_calls, state.prompt_calls) == (calls[0] + 1, calls[1] + 1)
    moved = _edit(client, images["source"], prompt="a red cube", theta=0.8, alpha=1.5, seed=5)
    # moving θ and α only decodes: no encoder and no prior run
    assert (state.encode_calls, state.prompt_calls) == (calls[0] + 1, calls[1] + 1)
    # the cached raw embeddings give exactly the pipeline's own render from the image and prompt
    with PIL.Image.open(images["source"]) as src:
        ref = pipe(src.convert("RGB"), "a red cube", thetas=[0.8], alphas=[1.5], num_inference_steps=STEPS,
                   height=SIZE, width=SIZE, generator=torch.Generator().manual_seed(5),
                   prior_num_inference_steps=state.prior_steps).images[0]
    np.testing.assert_array_equal(moved, np.asarray(ref))
    assert not np.array_equal(first, moved)


def test_target_image_is_cached_by_pixels(app, client, images, tmp_path):
    state = app.vslerp_editor.state
    _edit(client, images["source"], target=images["target"], theta=0.5, alpha=-1.0)
    after_first = state.encode_calls
    # same pixels under another file name: a cache hit
    copy = tmp_path / "copy.png"
    copy.write_bytes(images["target"].read_bytes())
    _edit(client, images["source"], target=copy, theta=1.0, alpha=2.0)
    assert state.encode_calls == after_first
    _edit(client, images["source"], target=images["other"], theta=1.0, alpha=2.0)
    assert state.encode_calls == after_first + 1


def test_sweep_is_one_labelled_grid(app, client, images):
    pytest.importorskip("vslerp.ui.outputs")
    from gradio_client import handle_file

    path = client.predict(handle_file(str(images["source"])), None, "a cat", "0,0.5,1", "-1,1", 3, STEPS, 4.0,
                          SIZE, api_name="/sweep")
    with PIL.Image.open(path) as grid:
        width, height = grid.size
    assert width >= 2 * SIZE and height >= 3 * SIZE  # 3 θ rows × 2 α columns (plus labels)


@pytest.mark.parametrize(("kind", "message"), [
    ("no_source", "No source image"),
    ("no_target", "No target"),
    ("unreadable", "cannot be read"),
    ("bomb", "too large"),
    ("bad_sweep", "thetas"),
])
def test_user_mistakes_are_messages_and_the_server_survives(client, images, tmp_path, kind, message):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    source = images["source"]
    with pytest.raises(AppError, match=message):
        if kind == "no_source":
            _edit(client, None, prompt="a cat")
        elif kind == "no_target":
            _edit(client, source, prompt="   ")
        elif kind == "unreadable":
            bad = tmp_path / "bad.png"
            bad.write_bytes(b"this is not a png" * 8)
            _edit(client, bad, prompt="a cat")
        elif kind == "bomb":
            bomb = tmp_path / "bomb.png"
            PIL.Image.new("1", (20_000, 20_000)).save(bomb)  # 400 Mpx in a few kB
            _edit(client, bomb, prompt="a cat")
        else:
            pytest.importorskip("vslerp.ui.outputs")
            client.predict(handle_file(str(source)), None, "a cat", "zero", "0", 0, STEPS, 4.0, SIZE,
                           api_name="/sweep")
    assert _edit(client, source, prompt="a cat").shape == (SIZE, SIZE, 3)


def test_two_clients_at_once_both_get_results(app, images):
    from gradio_client import handle_file

    clients = [gradio_client.Client(app.local_url, verbose=False) for _ in range(2)]
    jobs = [c.submit(handle_file(str(images["source"])), None, f"prompt {i}", 0.5, float(i), i, STEPS, 4.0, SIZE,
                     api_name="/edit") for i, c in enumerate(clients)]
    with ThreadPoolExecutor(2) as pool:
        paths = list(pool.map(lambda job: job.result(timeout=120), jobs))
    for path in paths:
        with PIL.Image.open(path) as im:
            assert im.size == (SIZE, SIZE)


def test_details_write_png_metadata_and_gif(app, images):
    outputs = pytest.importorskip("vslerp.ui.outputs")
    editor = app.vslerp_editor
    _, result = editor.edit(str(images["source"]), None, "a cat", 0.25, -0.5, 7, STEPS, 4.0, SIZE)
    readout, _, gallery, _, png, gif = editor.details(result, [])
    assert "source" in readout and "No reference distribution" in readout
    assert len(gallery) == 1
    meta = outputs.read_png_metadata(png)
    assert meta["thetas"] == [0.25] and meta["alphas"] == [-0.5] and meta["seed"] == 7
    assert meta["target"] == {"kind": "prompt", "prompt": "a cat"}
    assert meta["pipeline"]["backend"] == "kandinsky2.2"
    with PIL.Image.open(gif) as im:
        assert im.format == "GIF"


def test_readout_uses_the_pipelines_conformity_and_a_reference(pipe, images):
    from vslerp.ui.editor import Editor

    reference = torch.randn(50, pipe.image_mean.shape[0])  # (N, D) raw
    editor = Editor(pipe, reference=reference, tiny_random=True, prior_steps=2)
    _, result = editor.edit(str(images["source"]), str(images["target"]), "", 0.5, 1.0, 0, STEPS, 4.0, SIZE)
    src = pipe.encode_image([PIL.Image.open(images["source"]).convert("RGB")])  # (1, D)
    assert result["source_conformity"] == pytest.approx(float(pipe.estimated_conformity(src)[0]), abs=1e-6)
    np.testing.assert_allclose(editor.reference_conformity, pipe.estimated_conformity(reference).numpy())
    assert "Percentile in the reference (50 images)" in editor.readout(result)
    assert editor.histogram(result) is not None


def test_cli_ui_options_and_load_errors(capsys, tmp_path):
    from vslerp.ui.cli import build_parser, main

    args = build_parser().parse_args(["ui"])
    assert (args.host, args.port, args.share, args.concurrency) == ("127.0.0.1", 7860, False, 1)
    assert main(["ui", "--model", str(tmp_path / "missing"), "--prior", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("vslerp ui: error: cannot load the models")
    assert main(["ui", "--tiny-random", "--stats", str(tmp_path / "none.safetensors")]) == 2
    assert "--stats" in capsys.readouterr().err
