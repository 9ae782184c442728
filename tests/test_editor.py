"""The Gradio editor on a tiny random Kandinsky: gradio_client round trips, cache, errors, CLI."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import struct
import urllib.request
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import PIL.Image
import PIL.ImageFile
import pytest
import torch
from helpers import editor_client, launched_editor
from helpers import free_port as _free_port
from helpers import save_random_image as _image

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
gr = pytest.importorskip("gradio")
gradio_client = pytest.importorskip("gradio_client")

STEPS, SIZE = 2, 64
PIPE_KWARGS = {"device": "cpu"}  # the conftest pipe's
# The keys of `vslerp grid`'s sidecar (vslerp.ui.sidecar), which `vslerp grid --from` reads.
CLI_SIDECAR_KEYS = {"command", "vslerp_version", "model", "prior", "stats", "dtype", "source", "target", "thetas",
                    "alphas", "seed", "steps", "size", "guidance", "prior_steps", "batch_size",
                    "allow_extrapolation", "labels", "conformity", "pipeline", "strength", "prompt",
                    "negative_prompt", "noise_level", "ip_adapter", "ip_adapter_scale"}




def _huge_png(path, width, height):
    """A valid black 1-bit PNG of width×height pixels, written row by row: a few kB on disk."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\0" * (1 + (width + 7) // 8)  # filter byte + packed bits
    packer = zlib.compressobj(6)
    idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1 bit, grayscale
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def _sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def served(pipe):
    """(the editor's callbacks, its page launched on a free port)."""
    with launched_editor(pipe) as served:
        yield served


@pytest.fixture(scope="module")
def app(served):
    return served[1]


@pytest.fixture(scope="module")
def served_editor(served):
    return served[0]


@pytest.fixture(scope="module")
def editor(pipe, tmp_path_factory):
    """Editor callbacks without a server (a fresh cache, its own output folder)."""
    from vslerp.ui.editor import Editor

    return Editor(pipe, tiny_random=True, prior_steps=2, out_dir=tmp_path_factory.mktemp("editor_out"))


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("editor_images")
    return {"source": _image(root / "source.png", 1), "target": _image(root / "target.png", 2),
            "other": _image(root / "other.png", 3)}


@pytest.fixture(scope="module")
def stats_file(pipe, tmp_path_factory):
    """A statistics file whose image mean is far from the prior's clip_mean."""
    from vslerp.stats import Statistics

    mean = torch.randn(pipe.image_mean.shape[0], generator=torch.Generator().manual_seed(9)) * 3  # (D,)
    return Statistics.from_mean(mean).save(tmp_path_factory.mktemp("stats") / "mine.safetensors")


@pytest.fixture()
def client(app):
    return editor_client(app.local_url)


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
    assert names == ["source", "target_image", "target_prompt", "theta", "alpha", "seed", "steps", "guidance",
                     "size", "mean_source", "stats_file", "strength", "text_prompt", "negative_prompt",
                     "noise_level", "ip_adapter_scale", "true_cfg_scale"]  # the backend options last, all optional
    assert len(api["/edit"]["returns"]) == 1  # the image only (state outputs are not API values)
    assert not any("ui_" in name for name in api)  # the page's own events are not endpoints


def test_edit_matches_the_pipeline_and_the_cache_skips_the_encoders(served_editor, client, pipe, images):
    state = served_editor.state
    calls = (state.encode_calls, state.prompt_calls)
    first = _edit(client, images["source"], prompt="a red cube", theta=0.3, alpha=0.0, seed=5)
    assert first.shape == (SIZE, SIZE, 3)
    assert (state.encode_calls, state.prompt_calls) == (calls[0] + 1, calls[1] + 1)
    decodes = state.decode_calls
    moved = _edit(client, images["source"], prompt="a red cube", theta=0.8, alpha=1.5, seed=5)
    # moving θ and α only decodes: no encoder and no prior run
    assert (state.encode_calls, state.prompt_calls) == (calls[0] + 1, calls[1] + 1)
    assert state.decode_calls == decodes  # nor is the known upload decoded again
    # the cached raw embeddings give exactly the pipeline's own render from the image and prompt
    with PIL.Image.open(images["source"]) as src:
        ref = pipe(src.convert("RGB"), "a red cube", thetas=[0.8], alphas=[1.5], num_inference_steps=STEPS,
                   height=SIZE, width=SIZE, generator=torch.Generator().manual_seed(5),
                   prior_num_inference_steps=state.prior_steps).images[0]
    np.testing.assert_array_equal(moved, np.asarray(ref))
    assert not np.array_equal(first, moved)


def test_target_image_is_cached_by_pixels(served_editor, client, images, tmp_path):
    state = served_editor.state
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
    from gradio_client import handle_file

    path = client.predict(handle_file(str(images["source"])), None, "a cat", "0,0.5,1", "-1,1", 3, STEPS, 4.0,
                          SIZE, api_name="/sweep")
    with PIL.Image.open(path) as grid:
        width, height = grid.size
    assert width >= 2 * SIZE and height >= 3 * SIZE  # 3 θ rows × 2 α columns (plus labels)


@pytest.mark.parametrize(("kind", "message"), [
    ("no_source", "No source image"),
    ("no_target", "No target"),
    ("both_targets", "not both"),
    ("unreadable", "not an image file"),
    ("bomb", "too large"),
    ("many_pixels", "too large: 8000×8000 pixels"),
    ("bad_sweep", "θ values: 'zero' is not a number"),
    ("theta_outside", "between 0 \\(the source\\) and 1"),
])
def test_user_mistakes_are_messages_and_the_server_survives(client, images, tmp_path, kind, message):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    source = images["source"]
    with pytest.raises(AppError, match=message) as caught:
        if kind == "no_source":
            _edit(client, None, prompt="a cat")
        elif kind == "no_target":
            _edit(client, source, prompt="   ")
        elif kind == "both_targets":
            _edit(client, source, target=images["target"], prompt="a cat")
        elif kind == "unreadable":
            bad = tmp_path / "bad.png"
            bad.write_bytes(b"this is not a png" * 8)
            _edit(client, bad, prompt="a cat")
        elif kind == "bomb":  # 400 Mpx in a few kB: PIL's own limit, at the header
            _edit(client, _huge_png(tmp_path / "bomb.png", 20_000, 20_000), prompt="a cat")
        elif kind == "many_pixels":  # 64 Mpx: under PIL's limit, over the editor's 40 Mpx
            _edit(client, _huge_png(tmp_path / "huge.png", 8000, 8000), prompt="a cat")
        else:
            thetas = "zero" if kind == "bad_sweep" else "0,1.5"
            client.predict(handle_file(str(source)), None, "a cat", thetas, "0", 0, STEPS, 4.0, SIZE,
                           api_name="/sweep")
    text = str(caught.value)
    assert "/tmp" not in text and "allow_extrapolation=True" not in text  # nothing a page user can't act on
    assert _edit(client, source, prompt="a cat").shape == (SIZE, SIZE, 3)


def test_two_clients_at_once_both_get_results(app, images):
    from gradio_client import handle_file

    clients = [editor_client(app.local_url) for _ in range(2)]
    jobs = [c.submit(handle_file(str(images["source"])), None, f"prompt {i}", 0.5, float(i), i, STEPS, 4.0, SIZE,
                     api_name="/edit") for i, c in enumerate(clients)]
    with ThreadPoolExecutor(2) as pool:
        paths = list(pool.map(lambda job: job.result(timeout=120), jobs))
    for path in paths:
        with PIL.Image.open(path) as im:
            assert im.size == (SIZE, SIZE)


def test_uploads_reach_the_callback_undecoded_and_huge_ones_are_refused_from_the_header(client, images, tmp_path,
                                                                                          monkeypatch):
    from gradio.data_classes import ImageData
    from gradio_client.exceptions import AppError

    from vslerp.ui.editor import EditorError, Upload, as_upload, open_upload

    huge = _huge_png(tmp_path / "upload.png", 8000, 8000)
    assert huge.stat().st_size < 50_000
    decodes = []

    def no_decode(self, *args, **kwargs):
        decodes.append(self.size)
        raise AssertionError("pixels decoded")

    monkeypatch.setattr(PIL.ImageFile.ImageFile, "load", no_decode)
    # through the server (in this process): Gradio's events skip its own decoding (preprocess=False)
    with pytest.raises(AppError, match="too large: 8000×8000 pixels"):
        _edit(client, huge, prompt="a cat")
    # the payload an event receives, as a path that keeps the original name
    payload = ImageData(path=str(huge), orig_name="my 1-bit scan.png").model_dump()
    upload = as_upload(payload, tmp_path / "uploads", "source image")
    assert isinstance(upload, Upload) and str(upload) == str(huge) and upload.orig_name == "my 1-bit scan.png"
    with pytest.raises(EditorError, match="too large: 8000×8000 pixels"):
        open_upload(upload, "source")
    # a raw HTTP client's base64 data URL becomes the same bytes in a file, undecoded too
    data_url = "data:image/png;base64," + base64.b64encode(huge.read_bytes()).decode()
    from_url = as_upload(ImageData(url=data_url).model_dump(), tmp_path / "uploads", "source image")
    assert Path(from_url).read_bytes() == huge.read_bytes()
    assert decodes == []  # neither gradio's preprocessing nor the callback decoded a pixel
    with pytest.raises(EditorError, match="did not arrive"):
        as_upload({"path": None, "url": None}, tmp_path, "source image")


def test_exif_rotated_jpeg_is_upright_and_its_file_is_hashed(editor, tmp_path):
    from PIL import ImageOps

    from vslerp.ui.editor import EditorState, Upload, open_upload

    stored = np.zeros((20, 40, 3), dtype=np.uint8)  # 40 wide × 20 high as stored
    stored[:, :20] = (255, 0, 0)
    exif = PIL.Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to display
    path = tmp_path / "phone.jpg"
    PIL.Image.fromarray(stored).save(path, exif=exif.tobytes(), quality=95)
    image = open_upload(Upload(path, "IMG_0001.jpg"))
    assert image.size == (20, 40)  # upright: 20 wide × 40 high
    with PIL.Image.open(path) as raw:
        upright = ImageOps.exif_transpose(raw).convert("RGB")
    _, result = editor.edit(Upload(path, "IMG_0001.jpg"), None, "a cat", 0.5, 0.0, 0, STEPS, 4.0, SIZE)
    assert result["metadata"]["source"] == {"kind": "image", "path": "IMG_0001.jpg", "sha256": _sha256(path),
                                            "pixels_sha256": EditorState.image_key(upright)}


def test_png_and_json_downloads_carry_the_cli_sidecar_schema(editor, images):
    from vslerp.ui.editor import Upload
    from vslerp.ui.images import read_png_metadata

    source = Upload(images["source"], "cat.png")
    _, result = editor.edit(source, None, "a cat", 0.25, -0.5, 7, STEPS, 4.0, SIZE)
    readout, _, gallery, _, downloads = editor.details(result, [])
    files = downloads["value"]
    assert downloads["visible"] and [f.rsplit(".", 1)[1] for f in files] == ["png", "json", "gif"]
    meta = read_png_metadata(files[0])
    assert json.loads(Path(files[1]).read_text(encoding="utf-8")) == meta  # the sidecar beside the PNG
    assert meta["source"] == {"kind": "image", "path": "cat.png", "sha256": _sha256(images["source"]),
                              "pixels_sha256": meta["source"]["pixels_sha256"]}
    assert meta["target"] == {"kind": "prompt", "prompt": "a cat"}
    assert meta["thetas"] == [0.25] and meta["alphas"] == [-0.5] and meta["seed"] == 7
    assert meta["prior_steps"] == 2 and meta["labels"] is False  # a bare cell, as `grid --from` renders it
    assert meta["pipeline"]["backend"] == "kandinsky2.2"
    assert CLI_SIDECAR_KEYS <= set(meta) and set(meta["stats"]) == {"path", "fingerprint", "mean_source"}
    assert "source" in readout and "No reference images" in readout
    assert len(gallery) == 1 and gallery[0][1] == "“a cat” · θ=0.25 α=-0.5 · seed 7 · 64px"  # the target first
    assert Path(files[0]).name.startswith("vslerp-seed7-theta0.25-alpha-0.5-")  # named by what it shows
    with PIL.Image.open(files[2]) as im:
        assert im.format == "GIF"


def test_size_change_between_edits_keeps_readout_downloads_and_gallery(editor, images):
    gallery = []
    for size, theta in ((64, 0.2), (128, 0.4), (128, 0.6)):
        _, result = editor.edit(str(images["source"]), None, "a cat", theta, 0.0, 1, STEPS, 4.0, size)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            readout, _, gallery, _, downloads = editor.details(result, gallery)
        assert not [str(w.message) for w in caught if "could not" in str(w.message)]
        assert "source" in readout and f"θ={theta:g}" in gallery[-1][1]
        assert [f.rsplit(".", 1)[1] for f in downloads["value"]] == ["png", "json", "gif"]
    with PIL.Image.open(downloads["value"][2]) as gif:
        assert gif.n_frames == 2 and gif.size == (128, 128)  # the session GIF: this size's results only
    assert len(gallery) == 3


def test_reference_is_scored_with_the_edits_own_statistics(pipe, images, stats_file):
    from vslerp.ui.editor import Editor

    reference = torch.randn(50, pipe.image_mean.shape[0], generator=torch.Generator().manual_seed(3))  # (N, D)
    editor = Editor(pipe, reference=reference, tiny_random=True, prior_steps=2)
    _, startup = editor.edit(str(images["source"]), str(images["target"]), "", 0.5, 1.0, 0, STEPS, 4.0, SIZE)
    src = pipe.encode_image([PIL.Image.open(images["source"]).convert("RGB")])  # (1, D)
    assert startup["source_conformity"] == pytest.approx(float(pipe.estimated_conformity(src)[0]), abs=1e-6)
    np.testing.assert_allclose(startup["reference_conformity"], pipe.estimated_conformity(reference).numpy())
    _, mine = editor.edit(str(images["source"]), str(images["target"]), "", 0.5, 1.0, 0, STEPS, 4.0, SIZE,
                          "statistics file", str(stats_file))
    default = pipe.statistics
    try:
        pipe.set_statistics(stats_file)
        expected = pipe.estimated_conformity(reference).numpy()  # (N,) under the file's mean
    finally:
        pipe.set_statistics(default)
    np.testing.assert_allclose(mine["reference_conformity"], expected)
    assert not np.allclose(expected, startup["reference_conformity"])
    pct = [round(float((expected <= v).mean() * 100)) for v in (mine["source_conformity"],
                                                                  mine["target_conformity"])]
    assert f"source {pct[0]}, target {pct[1]}," in editor.readout(mine)
    assert "Percentile in the reference (50 images" in editor.readout(mine)
    assert editor.histogram(mine) is not None


def test_sweep_histogram_and_readout_mark_every_cell(pipe, images):
    from vslerp.ui.editor import Editor

    reference = torch.randn(40, pipe.image_mean.shape[0], generator=torch.Generator().manual_seed(4))  # (N, D)
    editor = Editor(pipe, reference=reference, tiny_random=True, prior_steps=2)
    _, result = editor.sweep(str(images["source"]), None, "a cat", "0,0.5,1", "-5,0,5", 0, STEPS, 4.0, SIZE)
    cells = result["conformity"].reshape(-1).tolist()
    ax = editor.histogram(result).axes[0]
    handles, labels = ax.get_legend_handles_labels()
    assert "result" not in labels and "sweep cells (9)" in labels
    rug = handles[labels.index("sweep cells (9)")]
    np.testing.assert_allclose(rug.get_xdata(), cells)  # one tick per cell, not the θ=0 cell alone
    ref = result["reference_conformity"]
    pct = sorted(round(float((ref <= c).mean() * 100)) for c in cells)
    text = editor.readout(result)
    assert f"sweep cells {pct[0]}–{pct[-1]}." in text
    assert "α = -5, 5 lies outside −2..2" in text  # extrapolation is allowed, and said


def test_the_target_choice_is_explicit(editor, images):
    from vslerp.ui.editor import EditorError

    src, tgt = str(images["source"]), str(images["target"])
    _, by_prompt = editor.edit(src, tgt, "a cat", 0.5, 0.0, 0, STEPS, 4.0, SIZE, target_kind="prompt")
    assert by_prompt["metadata"]["target"] == {"kind": "prompt", "prompt": "a cat"}
    assert "**Target:** “a cat”" in editor.readout(by_prompt)
    _, by_image = editor.edit(src, tgt, "a cat", 0.5, 0.0, 0, STEPS, 4.0, SIZE, target_kind="image")
    assert by_image["metadata"]["target"]["kind"] == "image"
    assert "**Target:** image target.png" in editor.readout(by_image)
    with pytest.raises(EditorError, match="upload a target image"):
        editor.edit(src, None, "a cat", 0.5, 0.0, 0, STEPS, 4.0, SIZE, target_kind="image")
    with pytest.raises(EditorError, match="not both"):
        editor.edit(src, tgt, "a cat", 0.5, 0.0, 0, STEPS, 4.0, SIZE)  # the API's rule


def test_a_render_stops_between_steps_when_its_page_is_gone(editor, images):
    from vslerp.ui.editor import EditorError

    polls = []
    before = (editor.steps_run, editor.cancelled)
    with pytest.raises(EditorError, match="Render stopped"):
        editor.edit(str(images["source"]), None, "a cat", 0.5, 0.0, 0, 10, 4.0, SIZE,
                    should_stop=lambda: polls.append(1) or True)
    assert polls == [1] and editor.steps_run == before[0] + 1 and editor.cancelled == before[1] + 1
    _, result = editor.edit(str(images["source"]), None, "a cat", 0.5, 0.0, 0, STEPS, 4.0, SIZE)
    assert result["images"][0].size == (SIZE, SIZE)  # the pipeline is usable afterwards


def test_cli_ui_options_and_load_errors(capsys, tmp_path):
    from vslerp.ui.cli import build_parser, main

    args = build_parser().parse_args(["ui"])
    assert (args.host, args.port, args.share, args.concurrency) == ("127.0.0.1", 7860, False, 1)
    assert main(["ui", "--model", str(tmp_path / "missing"), "--prior", str(tmp_path / "nope"),
                 "--port", str(_free_port())]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("vslerp ui: error: cannot load the Kandinsky 2.2 prior")  # the loader's own line
    assert main(["ui", "--tiny-random", "--stats", str(tmp_path / "none.safetensors")]) == 2
    assert "--stats" in capsys.readouterr().err
    assert main(["ui", "--tiny-random", "--device", "banana"]) == 2  # the CLI's device check, before loading
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("vslerp ui: error: --device 'banana' "), err
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["ui", "--tiny-random", "--port", str(port)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"vslerp ui: error: cannot serve on 127.0.0.1:{port}: the port is in use "
                   "(choose another with --port)"]  # one line, before any model is loaded


def test_cli_ui_says_serving_only_once_the_server_answers(capsys, monkeypatch):
    from vslerp.ui.cli import main

    port, seen = _free_port(), {}

    def block_thread(self):  # instead of waiting for Ctrl-C: look at what was said, and ask the server
        seen["out"], seen["err"] = capsys.readouterr()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as response:
            seen["status"] = response.status

    monkeypatch.setattr(gr.Blocks, "block_thread", block_thread)
    assert main(["ui", "--tiny-random", "--port", str(port)]) == 0
    assert seen["status"] == 200 and f"serving on http://127.0.0.1:{port}" in seen["err"]
    assert "share=True" not in seen["out"] + seen["err"] and "Running on" not in seen["out"]  # no Gradio hints

    def failing_launch(self, *args, **kwargs):
        raise OSError("no server for you")

    monkeypatch.setattr(gr.Blocks, "launch", failing_launch)
    assert main(["ui", "--tiny-random", "--port", str(_free_port())]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].endswith("no server for you") and err[-1].startswith("vslerp ui: error: cannot serve on")
    assert not any("serving on" in line for line in err)


# -- many users at once: concurrent requests rendered in one batched call -----------------------

def _pixels(image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def test_render_batch_gives_each_request_its_own_pixels(pipe):
    """Two requests (other sources, targets, seeds, grids) in one call == each rendered alone."""
    from diffusers import DDPMScheduler

    from vslerp.pipelines.testing import TINY_DIM

    emb = [torch.randn(TINY_DIM, generator=torch.Generator().manual_seed(100 + i)) for i in range(4)]  # (D,)
    requests = [dict(source=emb[0], target=emb[1], thetas=[0.3], alphas=[1.0], seed=5),
                dict(source=emb[2], target=emb[3], thetas=[0.0, 0.7], alphas=[-1.0, 0.0], seed=9)]
    old = pipe.scheduler
    pipe.scheduler = DDPMScheduler.from_config(old.config)  # stochastic steps: per-cell generators matter
    try:
        render = dict(num_inference_steps=STEPS, height=SIZE, width=SIZE, output_type="np")
        both = pipe.render_batch([{"generator": torch.Generator().manual_seed(r.pop("seed")), **r}
                                  for r in [dict(r) for r in requests]], **render)  # "seed" is no request key
        for request, batched in zip(requests, both, strict=True):
            alone = pipe(request["source"], request["target"], thetas=request["thetas"], alphas=request["alphas"],
                         generator=torch.Generator().manual_seed(request["seed"]), **render)
            np.testing.assert_allclose(batched.images, alone.images, atol=2e-4)  # batch numerics only
            torch.testing.assert_close(batched.conformity, alone.conformity)
        assert np.abs(both[0].images[0] - both[1].images[0]).max() > 1e-2  # their own noise, not shared
    finally:
        pipe.scheduler = old


def test_concurrent_edits_share_one_batched_call_and_keep_their_pixels(pipe, images):
    """While one render runs, two more requests wait; they are rendered together, each as if alone."""
    import threading

    from vslerp.ui.editor import Editor

    editor = Editor(pipe, tiny_random=True, prior_steps=2)
    queue, results, started = editor.queue, {}, threading.Event()
    for name in ("source", "target", "other"):  # cached: the waiting requests need no encoder
        editor.state.upload_embedding(str(images[name]), name)

    def first_render_waits_for_two_more():  # the first request's step callback
        started.set()
        with queue._cond:
            assert queue._cond.wait_for(lambda: len(queue._pending) == 2, timeout=120)
        return False

    def edit(name, source, target, seed, alpha, should_stop=None):
        results[name] = editor.edit(str(source), str(target), "", 0.5, alpha, seed, STEPS, 4.0, SIZE,
                                    should_stop=should_stop)[0]

    first = threading.Thread(target=edit, args=("first", images["source"], images["target"], 1, 0.0,
                                                first_render_waits_for_two_more))
    first.start()
    assert started.wait(120)
    others = [threading.Thread(target=edit, args=("b", images["source"], images["target"], 2, 1.0)),
              threading.Thread(target=edit, args=("c", images["other"], images["source"], 3, -1.0))]
    for t in others:
        t.start()
    for t in [first, *others]:
        t.join(120)
    assert queue.batches == 2 and queue.largest == 2  # b and c: one call
    alone = {"b": editor.edit(str(images["source"]), str(images["target"]), "", 0.5, 1.0, 2, STEPS, 4.0, SIZE)[0],
             "c": editor.edit(str(images["other"]), str(images["source"]), "", 0.5, -1.0, 3, STEPS, 4.0, SIZE)[0]}
    assert queue.largest == 2 and queue.batches == 4
    for name in ("b", "c"):
        assert np.abs(_pixels(results[name]) - _pixels(alone[name])).max() <= 1  # float batch noise at most
    assert np.abs(_pixels(results["b"]) - _pixels(results["c"])).mean() > 5


def test_a_bad_request_in_a_batch_fails_alone():
    from vslerp.ui.editor.batching import RenderQueue, _Job

    def run(payloads):
        if any(p < 0 for p in payloads):
            raise ValueError(f"negative in {payloads}")
        return [p * 10 for p in payloads]

    queue = RenderQueue(run, max_cells=4)
    good, bad = _Job(("k",), 1, 2), _Job(("k",), 1, -1)
    queue._execute([good, bad])
    assert (good.result, good.error) == (20, None)
    assert bad.result is None and isinstance(bad.error, ValueError) and "[-1]" in str(bad.error)
    assert queue.submit(("k",), 1, 3) == 30  # a lone request runs at once


# -- messages: words a user knows, no server traceback for a user's mistake ----------------------

def test_readout_speaks_plain_words_and_keeps_the_technical_names_in_the_metadata(editor, images):
    from vslerp.defaults import CONFORMITY_COSINE, CONFORMITY_ESTIMATORS

    _, result = editor.edit(str(images["source"]), None, "a cat", 0.5, 0.0, 0, STEPS, 4.0, SIZE)
    text = editor.readout(result)
    assert "**Typical image:** the prior's training mean" in text and CONFORMITY_ESTIMATORS[CONFORMITY_COSINE] in text
    for jargon in ("prior_clip_mean", "cosine_to_mean", "exact_identity", "startup ("):
        assert jargon not in text
    assert result["metadata"]["stats"]["mean_source"] == "prior_clip_mean"
    assert result["metadata"]["pipeline"]["conformity"] == "cosine_to_mean"


@pytest.mark.parametrize(("field", "value", "message"), [
    ("alpha", 1e308, "(?i)alpha 1e\\+308 is too large"),
    ("theta", 1.5, "between 0 \\(the source\\) and 1"),
    ("steps", 0, "Steps must be a whole number from 1"),
    ("size", 100, "Size must be a whole number|multiple"),
    ("guidance", 1e308, "Guidance must be a number"),
    ("seed", -1, "The seed must be a whole number from 0"),
])
def test_bad_values_are_named_and_print_no_traceback(app, client, images, capsys, field, value, message):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    args = {"theta": 0.5, "alpha": 0.0, "seed": 0, "steps": STEPS, "guidance": 4.0, "size": SIZE} | {field: value}
    capsys.readouterr()
    with pytest.raises(AppError, match=message) as caught:
        client.predict(handle_file(str(images["source"])), None, "a cat", args["theta"], args["alpha"], args["seed"],
                       args["steps"], args["guidance"], args["size"], api_name="/edit")
    assert not str(caught.value).strip("'\"").startswith("The render failed")
    assert "Traceback" not in capsys.readouterr().err  # a user's mistake is not a server error


def test_a_server_error_is_logged_with_its_traceback(pipe, images, caplog, monkeypatch):
    from vslerp.ui.editor import Editor, run_event

    editor = Editor(pipe, tiny_random=True, prior_steps=2)
    args = (str(images["source"]), None, "a cat", 0.5, 0.0, 0, STEPS, 4.0, SIZE)
    with caplog.at_level("DEBUG"), pytest.raises(gr.Error, match="alpha") as mistake:
        run_event(editor.edit, *args[:4], 1e308, *args[5:])
    assert not mistake.value.print_exception and not [r for r in caplog.records if r.levelname == "ERROR"]

    def broken(*a, **k):
        raise RuntimeError("CUDA went away")

    monkeypatch.setattr(pipe, "render_batch", broken)
    with caplog.at_level("DEBUG"), pytest.raises(gr.Error, match="Unexpected error \\(RuntimeError: CUDA went"):
        run_event(editor.edit, *args)
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and errors[0].exc_info[0] is RuntimeError  # the traceback is in the log


# -- the sweep's own read-out, table and downloads; an Edit marks it stale -----------------------

def test_sweep_details_give_one_conformity_per_cell_labelled_by_theta_and_alpha(editor, images):
    grid, result = editor.sweep(str(images["source"]), None, "a cat", "0,0.5,1", "-1,0,1,2", 0, STEPS, 4.0, SIZE)
    readout, table, _, gallery, _, downloads, image = editor.details(result, [])
    value = table["value"]
    assert value["headers"] == ["θ \\ α", "α = -1", "α = 0", "α = 1", "α = 2"]
    assert [row[0] for row in value["data"]] == ["θ = 0", "θ = 0.5", "θ = 1"]
    cells = np.array([row[1:] for row in value["data"]], dtype=float)  # (T, A): all 12, none cut
    np.testing.assert_allclose(cells, result["conformity"].numpy(), atol=1e-4)
    assert "sweep cells" not in readout and "…" not in readout
    assert [f.rsplit(".", 1)[1] for f in downloads["value"]] == ["png", "json", "gif"]
    assert gallery[-1][1] == "“a cat” · sweep 3×4 · seed 0 · 64px" and image["label"] == "Sweep"
    stale, label = editor.stale_sweep(readout)
    assert stale.startswith("⚠️ _Earlier settings") and stale.endswith(readout) and "earlier" in label["label"]
    assert editor.stale_sweep(stale)[0] == stale  # marked once
    assert editor.stale_sweep("") == ({"__type__": "update"}, {"__type__": "update"})  # no sweep yet


# -- vslerp ui: errors name the statistics, the reference, or the model the loader names ---------

def test_cli_ui_errors_name_stats_and_reference(capsys, tmp_path, monkeypatch):
    from vslerp.stats import Statistics
    from vslerp.ui.cli import main

    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not safetensors at all")
    wide = Statistics.from_mean(torch.randn(768)).save(tmp_path / "wide.safetensors")
    port = str(_free_port())
    cases = [(["--stats", str(garbage)], f"--stats {garbage}: "),
             (["--stats", str(wide)], f"--stats {wide} does not fit the model: "),
             (["--reference", str(tmp_path)], f"--reference {tmp_path}: no embeddings manifest")]
    for extra, start in cases:
        assert main(["ui", "--tiny-random", "--port", port, *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith(f"vslerp ui: error: {start}") and "cannot load the models" not in err[-1]

    class Other:  # embeddings from another image encoder
        image = torch.randn(5, 768)
        metadata = {"encoder_fingerprint": "0123abcd", "dim": 768}

    monkeypatch.setattr("vslerp.stats.read_embeddings", lambda folder: Other)
    assert main(["ui", "--tiny-random", "--port", port, "--reference", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"vslerp ui: error: --reference {tmp_path}: its embeddings are 768-d") and \
        "another encoder" in err


def test_cli_ui_gives_the_loaders_one_line_as_it_is(capsys, monkeypatch):
    from vslerp.pipelines import VSlerpPipeline
    from vslerp.ui.cli import main

    line = ("model 'kandinsky-community/kandinsky-2-2-prior' is not in the local cache and could not be "
            "downloaded (offline?): give --model/--prior local folders, or try `vslerp ui --tiny-random`")

    def offline(*args, **kwargs):
        raise OSError(line)

    monkeypatch.setattr(VSlerpPipeline, "from_pretrained", offline)
    assert main(["ui", "--port", str(_free_port())]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"vslerp ui: error: {line}"
    assert not any("root cause" in e or "cannot load the models" in e for e in err)


# -- one sidecar schema: an editor download renders again with `vslerp grid --from` ---------------

def test_an_editor_download_renders_the_same_pixels_with_grid_from(editor, images, tmp_path, capsys):
    from vslerp.ui.cli import main
    from vslerp.ui.editor import Upload

    source = Upload(images["source"], "cat.png")
    image, result = editor.edit(source, None, "a red cube", 0.6, 1.0, 11, STEPS, 4.0, SIZE)
    _, _, _, _, downloads = editor.details(result, [])
    png = Path(downloads["value"][0])
    assert result["metadata"]["batch_size"] == editor.spec.batch_size  # what render_batch was given
    code = main(["grid", "--from", str(png), str(images["source"]), "--out", str(tmp_path / "again.png"),
                 "--no-progress"])
    assert code == 0, capsys.readouterr().err
    with PIL.Image.open(tmp_path / "again.png") as again:
        assert again.size == (SIZE, SIZE)  # one cell, no labels: as the editor showed it
        np.testing.assert_array_equal(np.asarray(again.convert("RGB")), np.asarray(image.convert("RGB")))


def test_the_client_gone_probe_is_none_outside_a_gradio_event():
    from vslerp.ui.editor.boundary import client_gone_probe

    assert client_gone_probe() is None  # no queued event here: renders run to the end


def test_render_many_gives_each_job_its_own_image_mean(pipe, stats_file):
    """Jobs with other statistics share one batched call; each gets its own mean's cells and
    conformity, as rendered alone (the pipeline's own statistics are not changed)."""
    from dataclasses import replace

    from vslerp.pipelines.testing import TINY_DIM
    from vslerp.stats import load
    from vslerp.ui.render import RenderSpec, render_many

    raw = [torch.randn(TINY_DIM, generator=torch.Generator().manual_seed(200 + i)) for i in range(2)]  # (D,)
    spec = RenderSpec(thetas=(0.5,), alphas=(1.5,), seed=4, steps=STEPS, size=SIZE, guidance=4.0)
    mine = load(stats_file)
    before = pipe.statistics.fingerprint
    both = render_many(pipe, [(spec, raw[0], raw[1], None), (replace(spec, seed=5), raw[0], raw[1], mine)])
    alone = render_many(pipe, [(replace(spec, seed=5), raw[0], raw[1], mine)])[0]
    assert pipe.statistics.fingerprint == before
    torch.testing.assert_close(both[1].embeddings, alone.embeddings)
    torch.testing.assert_close(both[1].conformity, alone.conformity)
    assert not torch.allclose(both[0].embeddings, both[1].embeddings)  # α pulls towards another mean
    np.testing.assert_allclose(_pixels(both[1].images[0]), _pixels(alone.images[0]), atol=1)
    with pytest.raises(ValueError, match="differ in steps"):
        render_many(pipe, [(spec, raw[0], raw[1], None), (replace(spec, steps=STEPS + 1), raw[0], raw[1], None)])


def test_an_image_handed_in_decoded_is_normalised_as_its_file(tmp_path):
    """A PIL image given to the editor (a programmatic caller) becomes the same RGB pixels as its
    file: alpha composited on white and EXIF orientation applied, by vslerp.stats.open_image."""
    from vslerp.ui.editor.uploads import open_upload

    rgba = np.zeros((8, 12, 4), np.uint8)
    rgba[..., 0], rgba[:4, :, 3] = 255, 255  # red, the bottom half transparent
    path = tmp_path / "half.png"
    PIL.Image.fromarray(rgba, "RGBA").save(path)
    exif = PIL.Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to view
    rotated = tmp_path / "rotated.jpg"
    PIL.Image.fromarray(rgba[..., :3]).save(rotated, exif=exif)
    for file in (path, rotated):
        from_file = np.asarray(open_upload(str(file)))
        with PIL.Image.open(file) as decoded:
            from_pil = np.asarray(open_upload(decoded))
        assert from_pil.shape == from_file.shape
        np.testing.assert_array_equal(from_pil, from_file)
    assert np.asarray(open_upload(str(path)))[-1, 0].tolist() == [255, 255, 255]  # on white
