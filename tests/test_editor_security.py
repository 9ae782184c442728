"""The editor's HTTP surface names no server file: uploads or request bytes only, one refusal for
every path (gradio_client and raw HTTP: the API endpoints and the page's own events), refused
uploads deleted, the page's values checked by their labels, the temporary folders removed at
exit (SIGTERM too)."""

from __future__ import annotations

import base64
import gc
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import PIL.Image
import pytest
import torch
from helpers import editor_client, launched_editor
from helpers import free_port as _free_port
from helpers import save_random_image as _image

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
gr = pytest.importorskip("gradio")
gradio_client = pytest.importorskip("gradio_client")
httpx = pytest.importorskip("httpx")

STEPS, SIZE = 2, 64
PIPE_KWARGS = {"device": "cpu"}  # the conftest pipe's


@pytest.fixture(scope="module")
def served(pipe, tmp_path_factory):
    """(the editor, its page launched on a free port)."""
    with launched_editor(pipe, out_dir=tmp_path_factory.mktemp("security_out")) as served:
        yield served


@pytest.fixture(scope="module")
def server_files(tmp_path_factory, pipe_stats_dim):
    """Files on the server that no client uploaded: an image, a statistics file, a folder, links."""
    from gradio.utils import get_upload_folder

    from vslerp.stats import Statistics

    root = tmp_path_factory.mktemp("server_side")
    secret = _image(root / "secret.png", 7)
    stats = Statistics.from_mean(torch.full((pipe_stats_dim,), 3.0)).save(root / "server.safetensors")
    uploads = Path(get_upload_folder())
    uploads.mkdir(parents=True, exist_ok=True)
    link = uploads / f"link-{uuid.uuid4().hex}.png"  # inside Gradio's upload folder, pointing out
    link.symlink_to(secret)
    paths = {"image": str(secret), "missing": str(root / "missing.png"), "folder": str(root),
             "passwd": "/etc/passwd", "shadow": "/etc/shadow", "proc": "/proc/self/environ",
             "traversal": str(uploads) + "/.." * len(uploads.parts) + str(secret),
             "link": str(link), "relative": "../../etc/passwd", "stats": str(stats)}
    yield paths
    link.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def pipe_stats_dim(tiny_kandinsky):
    config = json.loads((Path(tiny_kandinsky[0]) / "image_encoder" / "config.json").read_text())
    return int(config["projection_dim"])


@pytest.fixture(scope="module")
def client(served):
    return editor_client(served[1].local_url)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return _image(tmp_path_factory.mktemp("client_side") / "mine.png", 1)


def _edit_args(source, target=None, prompt="a cat", mean_source="startup", stats_file=None, theta=0.5):
    return [source, target, prompt, theta, 0.0, 0, STEPS, 4.0, SIZE, mean_source, stats_file]


def _call_api(base: str, endpoint: str, data: list) -> tuple[str, str]:
    """POST /gradio_api/call/<endpoint> and read its event stream: (event, data) of the last event."""
    data = [*data, 1.0, None, None, 0, None, 1.0][:17]  # the backend options at their defaults: every input
    with httpx.Client(base_url=base, timeout=120) as http:
        body = json.dumps({"data": data})  # ASCII escapes: a lone surrogate arrives as the client sent it
        event_id = http.post(f"/gradio_api/call/{endpoint}", content=body,
                             headers={"Content-Type": "application/json"}).json()["event_id"]
        text = http.get(f"/gradio_api/call/{endpoint}/{event_id}").text
    blocks = [block for block in text.strip().split("\n\n") if block.startswith("event:")]
    event, _, payload = blocks[-1].partition("\n")
    return event.removeprefix("event:").strip(), payload.removeprefix("data:").strip()


def _page_event(demo, name: str, data: list) -> dict:
    """The page's own event ``name`` (``ui_edit``, ...), as a browser's raw queue/join POST: its
    process_completed message."""
    fn_index = next(i for i, fn in demo.fns.items() if getattr(fn.fn, "__name__", "") == name)
    session = uuid.uuid4().hex
    with httpx.Client(base_url=demo.local_url, timeout=120) as http:
        joined = http.post("/gradio_api/queue/join", json={"data": data, "fn_index": fn_index,
                                                            "session_hash": session, "event_data": None,
                                                            "trigger_id": None})
        assert joined.status_code == 200, joined.text
        with http.stream("GET", "/gradio_api/queue/data", params={"session_hash": session}) as stream:
            for line in stream.iter_lines():
                if line.startswith("data:"):
                    message = json.loads(line[5:])
                    if message.get("msg") == "process_completed":
                        return message
    raise AssertionError("no process_completed message")


def _page_data(source, target=None, mean_source="startup", stats_file=None, kind="prompt"):
    # ui_edit's inputs: edit inputs, the backend controls, the Target choice
    return [*_edit_args(source, target, "a cat", mean_source, stats_file), 1.0, "", "", 0, 1.0, 1.0, kind]


REFUSED = "must be a file uploaded to this editor"
NAMES = ("image", "missing", "folder", "passwd", "shadow", "proc", "traversal", "link", "relative", "stats")


def test_gradio_client_cannot_name_a_server_file(served, client, server_files, source):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    messages = {}
    for name in NAMES:
        path = server_files[name]
        for value in (path, {"path": path}, {"path": path, "orig_name": "x.png"}):
            for field in ("source", "target"):
                args = _edit_args(value) if field == "source" else _edit_args(handle_file(str(source)), value, "")
                with pytest.raises(AppError) as caught:
                    client.predict(*args, api_name="/edit")
                messages.setdefault(field, set()).add(str(caught.value))
            with pytest.raises(AppError) as caught:
                client.predict(*_edit_args(handle_file(str(source)), mean_source="statistics file",
                                           stats_file=value), api_name="/edit")
            messages.setdefault("stats", set()).add(str(caught.value))
    # one message per field, whatever the path: existing, missing, a folder, not an image, a link
    assert {field: len(found) for field, found in messages.items()} == {"source": 1, "target": 1, "stats": 1}
    for found in messages.values():
        (text,) = found
        assert REFUSED in text and "/" not in text
    assert Path(server_files["image"]).is_file()  # nothing of the server's was touched
    # an upload of the same image is rendered: the refusal was about the path, not the file
    assert Path(client.predict(*_edit_args(handle_file(server_files["image"])), api_name="/edit")).is_file()


def test_raw_http_cannot_name_a_server_file_at_the_api_or_the_page_events(served, server_files, source):
    """Raw POSTs to /gradio_api/call/edit and to the queue (the page's Edit event): for each shape
    of payload the answer is the same whatever the path — ours, or Gradio's own refusal of a
    payload marked as its FileData (its message hidden, ``show_error=False``)."""
    editor, demo = served
    meta = {"_type": "gradio.FileData"}
    shapes = {"string": lambda path: path, "dict": lambda path: {"path": path},
              "filedata": lambda path: {"path": path, "meta": meta},
              "named": lambda path: {"path": path, "url": None, "meta": meta, "orig_name": "cat.png"}}
    answers = {}
    for name in NAMES:
        path = server_files[name]
        for shape, make in shapes.items():
            value = make(path)
            event, data = _call_api(demo.local_url, "edit", _edit_args(value))
            answers.setdefault(("api", shape), set()).add((event, data))
            event, data = _call_api(demo.local_url, "edit", _edit_args(_data_url(source), mean_source="statistics file",
                                                                        stats_file=value))
            answers.setdefault(("stats", shape), set()).add((event, data))
            message = _page_event(demo, "ui_edit", _page_data(value))
            answers.setdefault(("page", shape), set()).add((message["success"], json.dumps(message["output"])))
    assert {key: len(found) for key, found in answers.items()} == dict.fromkeys(answers, 1)
    for (where, shape), found in answers.items():
        ((status, text),) = found
        assert status in ("error", False), (where, shape, text)  # never a render
        if shape in ("string", "dict") and (where, shape) != ("page", "string"):
            assert REFUSED in text, (where, shape, text)  # ours (the page's Image rejects a bare string itself)
    # the bytes in the request are taken, and give the same pixels as an upload of the same file
    event, data = _call_api(demo.local_url, "edit", _edit_args(_data_url(source)))
    assert event == "complete", data
    message = _page_event(demo, "ui_edit", _page_data({"path": None, "url": _data_url(source)}))
    assert message["success"] is True, message


def _data_url(path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode()


def test_no_server_file_reaches_a_render(served, server_files, monkeypatch):
    """Nothing of the server's is opened: the refusal comes before any file is read."""
    editor, demo = served
    opened = []
    real_open = PIL.Image.open

    def spy(fp, *args, **kwargs):
        opened.append(str(fp))
        return real_open(fp, *args, **kwargs)

    monkeypatch.setattr(PIL.Image, "open", spy)
    calls = editor.state.encode_calls
    for name in NAMES:
        event, _ = _call_api(demo.local_url, "edit", _edit_args({"path": server_files[name]}))
        assert event == "error"
    assert editor.state.encode_calls == calls
    assert not [path for path in opened if Path(path).name in {"secret.png", "passwd", "shadow", "environ"}]


def test_refused_uploads_are_deleted_at_once(served, client, tmp_path):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    editor, demo = served
    uploads = editor.out_dir / "uploads"
    noise = "data:image/png;base64," + base64.b64encode(os.urandom(300_000)).decode()
    for _ in range(3):  # a non-image data URL: refused, and its bytes not kept
        with pytest.raises(AppError, match="not an image file"):
            client.predict(*_edit_args({"path": None, "url": noise}), api_name="/edit")
    assert not list(uploads.glob("*")) if uploads.exists() else True
    source = _image(tmp_path / "ok.png", 3)
    client.predict(*_edit_args({"path": None, "url": _data_url(source)}), api_name="/edit")
    assert not list(uploads.glob("*"))  # an accepted data URL's file lives for its request only
    # a file uploaded through /upload that is refused is deleted from Gradio's cache too
    bad = tmp_path / "not-an-image.png"
    bad.write_bytes(b"not a png" * 1000)
    seen = []
    real = editor.state.upload_embedding

    def remember(upload, name):
        seen.append(str(upload))
        return real(upload, name)

    editor.state.upload_embedding = remember
    try:
        with pytest.raises(AppError, match="not an image file"):
            client.predict(*_edit_args(handle_file(str(bad))), api_name="/edit")
    finally:
        del editor.state.upload_embedding
    assert seen and not Path(seen[0]).exists()
    from gradio.utils import get_upload_folder, is_in_or_equal

    assert is_in_or_equal(seen[0], get_upload_folder())


def test_results_are_capped_by_age_and_size(served, source, tmp_path):
    from vslerp.ui.editor import Editor, Upload

    editor = Editor(served[0].pipe, tiny_random=True, out_dir=tmp_path / "out")
    old = editor.out_dir / "api-old"
    old.mkdir()
    (old / "vslerp-result.png").write_bytes(b"x" * 10)
    past = time.time() - 2 * editor.results_max_age
    os.utime(old, (past, past))
    keep = editor.out_dir / "uploads-not-a-result"
    keep.mkdir(exist_ok=True)
    os.utime(keep, (past, past))
    _, result = editor.edit(Upload(source, "mine.png"), None, "a cat", 0.5, 0.0, 0, STEPS, 4.0, SIZE)
    editor.details(result, [])
    assert not old.exists() and keep.exists()  # too old: gone; not a result folder: kept
    one = sum(f.stat().st_size for f in editor.out_dir.rglob("*") if f.is_file())
    editor.results_max_bytes = one  # room for one result's files
    for _ in range(4):
        editor.details(result, [])
    folders = [p for p in editor.out_dir.iterdir() if p.name.startswith(("api-", "result-", "sweep-"))]
    assert len(folders) == 2  # pruned to the cap before each new result: the cap's one, and the newest


def test_an_editors_own_results_folder_goes_with_it(served):
    from vslerp.ui.editor import Editor

    editor = Editor(served[0].pipe, tiny_random=True)  # no out_dir: a temporary folder of its own
    folder = editor.out_dir
    assert folder.is_dir()
    del editor
    gc.collect()
    assert not folder.exists()


def test_gradio_cache_is_bounded(served):
    from vslerp.ui.editor.layout import DELETE_CACHE

    _, demo = served
    assert demo.delete_cache == DELETE_CACHE and all(0 < value <= 86400 for value in DELETE_CACHE)


@pytest.mark.parametrize(("field", "value", "message"), [
    ("mean_source", "evil", "Typical image \\(what α pulls towards\\) must be one of 'startup', 'prior clip_mean', "
                            "'statistics file', got the text 'evil'"),
    ("theta", "0.5", "Towards the target \\(θ\\) must be a number, got the text '0.5'"),
    ("alpha", "1", "Pull towards the typical image \\(α\\) must be a number, got the text '1'"),
    ("seed", "42", "Seed must be a number, got the text '42'"),
    ("steps", "2", "Steps must be a number"),
    ("prompt", "\ud800", "Target prompt holds a character that is not text \\(U\\+D800"),
    ("strength", "0.5", "Strength must be a number, got the text '0.5'"),
])
def test_api_values_are_checked_against_the_page_controls(served, client, source, field, value, message):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    editor, _ = served
    args = dict(zip(("source", "target", "prompt", "theta", "alpha", "seed", "steps", "guidance", "size",
                     "mean_source", "stats_file"), _edit_args(handle_file(str(source))), strict=True))
    extra = {}
    if field == "strength":
        extra["strength"] = value
    else:
        args[field] = value
    steps = editor.steps_run
    if field != "prompt":  # httpx, under gradio_client, encodes no lone surrogate
        with pytest.raises(AppError, match=message):
            client.predict(*args.values(), **extra, api_name="/edit")
    data = list(args.values())
    data[0] = _data_url(source)
    event, text = _call_api(served[1].local_url, "edit", [*data, extra.get("strength", 1.0), None, None, 0, None])
    assert event == "error" and re.search(message, json.loads(text)["error"])
    assert editor.steps_run == steps  # refused before any render


OURS = ("vslerp", "gradio", "tmp")  # the editor's folders (and any tempfile.mkdtemp default name)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_removes_the_editors_temporary_folders(tmp_path, signum):
    """`vslerp ui --tiny-random` stopped by SIGTERM or SIGINT (Ctrl-C): its temporary root (the
    tiny model, the results, Gradio's uploads) is gone."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    port = _free_port()
    env = {**os.environ, "TMPDIR": str(tmp), "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1",
           "MPLCONFIGDIR": str(tmp_path / "mpl")}
    env.pop("GRADIO_TEMP_DIR", None)
    proc = subprocess.Popen([sys.executable, "-m", "vslerp.ui.cli", "ui", "--tiny-random", "--port", str(port)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    serving, said = threading.Event(), []

    def read_stderr():  # drains the pipe; wakes the test once the server answers or the process ends
        for line in proc.stderr:
            if "serving on" in line:
                said.append(line)
                serving.set()
        serving.set()

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    try:
        if not (serving.wait(timeout=300) and said):
            pytest.fail(f"vslerp ui did not serve (exit status {proc.poll()})")
        client = editor_client(f"http://127.0.0.1:{port}/")
        source = _image(tmp_path / "mine.png", 4)
        client.predict(*_edit_args(gradio_client.handle_file(str(source))), api_name="/edit")
        made = sorted(p.name for p in tmp.iterdir() if p.name.startswith(OURS))  # not torch's caches
        assert len(made) == 1 and made[0].startswith("vslerp-ui-"), made  # one root for everything
        root = tmp / made[0]
        assert list((root / "gradio").rglob("mine.png")) and list((root / "editor").rglob("*.png"))
        proc.send_signal(signum)
        code = proc.wait(timeout=120)
        assert code == 128 + signal.SIGTERM if signum == signal.SIGTERM else code in (0, 130)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert [p.name for p in tmp.iterdir() if p.name.startswith(OURS)] == []
