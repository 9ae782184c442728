"""What the CLI and stats read from users, against what users really give (issue 27).

Every JSON a user hands in goes through one reader (``vslerp.stats.jsonfile``): 100 000-deep
nesting is one line naming the file, in each of the five places. Captions files are checked
with ``stat`` before ``open`` and streamed under ``--limit``; sidecar and jobs fields are read
with their JSON type; DataLoader workers and batch sizes are capped by the machine. The CLI
runs in-process with model loading replaced by a tripwire wherever the error comes first.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from test_cli_grid import _lines, cli

import vslerp.stats as vs
from vslerp.defaults import MAX_ENCODE_BATCH, MAX_JSON_DEPTH, WORKERS_PER_CPU, max_workers
from vslerp.stats.jsonfile import JSONStream, parse_json, read_json
from vslerp.stats.outputs import forget_inputs
from vslerp.ui.cli import CLIError

DEEP = "[" * 100_000 + "]" * 100_000


@pytest.fixture(autouse=True)
def _fresh_inputs():
    forget_inputs()
    yield
    forget_inputs()


def _one_line(code, err, command) -> str:
    assert code == 2, err
    lines = _lines(err)
    assert len(lines) == 1 and lines[0].startswith(f"vslerp {command}: error: "), err
    assert "Traceback" not in err
    return lines[0]


def _image(path: Path, color="red") -> Path:
    Image.new("RGB", (32, 32), color).save(path)
    return path


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _sidecar(tmp: Path, **fields) -> Path:
    """A minimal grid sidecar (what --from needs) with ``fields`` set."""
    src = _image(tmp / "src.png")
    meta = {"source": {"kind": "image", "path": str(src), "sha256": _sha(src)},
            "target": {"kind": "prompt", "prompt": "a red cat"},
            "thetas": [0, 1], "alphas": [0], "seed": 0, "steps": 2, **fields}
    path = tmp / "side.json"
    path.write_text(json.dumps(meta))
    return path


# -- one JSON reader: depth -----------------------------------------------------------------
def test_parse_json_caps_depth_exactly_and_names_the_place():
    ok = "[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH
    assert parse_json(ok, "x") == json.loads(ok)
    deeper = "[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1)  # no RecursionError here
    with pytest.raises(ValueError, match=rf"^jobs.jsonl:3: JSON nested deeper than {MAX_JSON_DEPTH}"):
        parse_json(deeper, "jobs.jsonl:3")
    with pytest.raises(ValueError, match="^f.json: JSON nested deeper"):
        parse_json(DEEP, "f.json")
    with pytest.raises(ValueError, match=r"^f.json is not valid JSON \(.* at line 2 column"):
        parse_json('{"a": 1,\n oops}', "f.json")


def _deep_cases(tmp: Path, prior, decoder) -> dict:
    model = ["--model", decoder, "--prior", prior]
    src, tgt = _image(tmp / "a.png"), _image(tmp / "b.png", "blue")
    (tmp / "deep.json").write_text(DEEP)
    jobs = tmp / "jobs.jsonl"
    jobs.write_text(json.dumps({"source": str(src), "target": str(tgt), "name": "j"}) + "\n" + DEEP + "\n")
    resume = tmp / "resume.jsonl"
    resume.write_text(json.dumps({"source": str(src), "target": str(tgt), "name": "j"}) + "\n")
    (tmp / "od").mkdir()
    _image(tmp / "od" / "j.png")
    (tmp / "od" / "j.json").write_text(DEEP)  # the resume sidecar of job j
    save_file({"image.mean": torch.zeros(4)}, str(tmp / "deep.safetensors"), metadata={"vslerp": DEEP})
    (tmp / "captions.json").write_text('{"info": {}, "annotations": ' + DEEP + "}")
    return {
        "--from sidecar": (["grid", "--from", tmp / "deep.json", "--out", tmp / "g.png"], "grid",
                           "deep.json: JSON nested deeper"),
        "jobs line": (["batch", jobs, "--out-dir", tmp / "o1"], "batch", "jobs.jsonl:2: JSON nested deeper"),
        "resume sidecar": (["batch", resume, "--out-dir", tmp / "od", *model], "batch",
                           "j.json beside it cannot be read"),
        "statistics metadata": (["grid", src, tgt, "--stats", tmp / "deep.safetensors", "--out",
                                 tmp / "g2.png", *model], "grid",
                                "deep.safetensors: the 'vslerp' metadata: JSON nested deeper"),
        "captions": (["stats", "compute", "--captions", tmp / "captions.json", "--prior", prior,
                      "--out", tmp / "s.safetensors"], "stats compute", "captions.json: JSON nested deeper"),
    }


@pytest.mark.parametrize("case", ["--from sidecar", "jobs line", "resume sidecar", "statistics metadata",
                                  "captions"])
def test_deep_json_is_one_line_naming_the_file(case, tmp_path, tiny_kandinsky, capsys, no_models):
    argv, command, expected = _deep_cases(tmp_path, *tiny_kandinsky)[case]
    code, _, err = cli(capsys, *argv)
    line = _one_line(code, err, command)
    assert expected in line, line


@pytest.mark.parametrize("recorded", [{"job": 5}, {"job": [1]}, [1, 2], {"job": {"params": 5}}])
def test_a_resume_sidecar_of_another_shape_is_one_line(tmp_path, tiny_kandinsky, capsys, no_models, recorded):
    prior, decoder = tiny_kandinsky
    src, tgt = _image(tmp_path / "a.png"), _image(tmp_path / "b.png", "blue")
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(json.dumps({"source": str(src), "target": str(tgt), "name": "j"}) + "\n")
    (tmp_path / "od").mkdir()
    _image(tmp_path / "od" / "j.png")
    (tmp_path / "od" / "j.json").write_text(json.dumps(recorded))
    code, _, err = cli(capsys, "batch", jobs, "--out-dir", tmp_path / "od", "--model", decoder, "--prior", prior)
    line = _one_line(code, err, "batch")
    assert "jobs.jsonl:1 (j)" in line and "pass --overwrite" in line, line


def test_png_metadata_too_deep_is_one_line(tmp_path, capsys, no_models):
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("vslerp", DEEP)
    Image.new("RGB", (8, 8)).save(tmp_path / "g.png", pnginfo=info)
    code, _, err = cli(capsys, "grid", "--from", tmp_path / "g.png", "--out", tmp_path / "x.png")
    assert "JSON nested deeper" in _one_line(code, err, "grid")


def test_stale_sidecar_check_reads_through_the_one_reader(tmp_path):
    from vslerp.ui.checks import check_stale_sidecar

    (tmp_path / "g.json").write_text(DEEP)
    with pytest.raises(CLIError, match="g.json exists and is not a vslerp sidecar"):
        check_stale_sidecar(tmp_path / "g.json")
    os.mkfifo(tmp_path / "f.json")  # stat, not open: a FIFO would block the read forever
    with pytest.raises(CLIError, match="f.json exists and is not a vslerp sidecar"):
        check_stale_sidecar(tmp_path / "f.json")


def test_read_json_refuses_special_files_by_kind(tmp_path):
    os.mkfifo(tmp_path / "fifo.json")
    with pytest.raises(ValueError, match="fifo.json is a FIFO, not a regular file"):
        read_json(tmp_path / "fifo.json", "sidecar")
    with pytest.raises(ValueError, match="/dev/null is a character device"):
        read_json("/dev/null", "sidecar")
    with pytest.raises(IsADirectoryError, match="is a directory"):
        read_json(tmp_path, "sidecar")
    (tmp_path / "latin.json").write_bytes(b'{"a": "\xe9"}')
    with pytest.raises(ValueError, match="latin.json is not UTF-8 text"):
        read_json(tmp_path / "latin.json", "sidecar")


# -- captions -------------------------------------------------------------------------------
def _coco(n_images=4, per_image=2, annotations_first=False, tail="") -> str:
    images = [{"id": 10 + i, "file_name": f"{i}.png", "w": 1.5e-3} for i in range(n_images)]
    anns = [{"image_id": 10 + i, "id": 100 + 10 * i + k, "caption": f" cat {i}.{k} \u00e9\\\"\u2028 "}
            for i in range(n_images) for k in range(per_image)]
    parts = [("annotations", anns), ("images", images)] if annotations_first else \
        [("images", images), ("annotations", anns)]
    body = ", ".join(f"{json.dumps(k)}: {json.dumps(v, ensure_ascii=False)}" for k, v in parts)
    return '{"info": {"year": 2017, "nested": [[1, 2.5e10, null, true]]}, ' + body + tail + "}"


@pytest.mark.parametrize("chunk", [1, 7, 1 << 20])
@pytest.mark.parametrize("annotations_first", [False, True])
def test_streamed_coco_equals_json_load(tmp_path, monkeypatch, chunk, annotations_first):
    """Whatever the buffer size (a value cut anywhere), the stream reads what json.load reads."""
    monkeypatch.setattr(JSONStream, "CHUNK", chunk)
    path = tmp_path / "c.json"
    path.write_text(_coco(annotations_first=annotations_first), encoding="utf-8")
    data = json.loads(path.read_text(encoding="utf-8"))
    images, captions = vs.read_coco(path)
    assert images == [(img["id"], img["file_name"]) for img in data["images"]]
    assert [(c.text, c.image_id, c.caption_id) for c in captions] == \
        [(a["caption"].strip(), a["image_id"], a["id"]) for a in data["annotations"]]


@pytest.mark.parametrize("annotations_first", [False, True])
def test_limit_keeps_the_first_images_and_only_their_captions(tmp_path, annotations_first):
    path = tmp_path / "c.json"
    path.write_text(_coco(annotations_first=annotations_first), encoding="utf-8")
    images, captions = vs.read_coco(path, limit=2)
    assert images == [(10, "0.png"), (11, "1.png")]
    assert [c.caption_id for c in captions] == [100, 101, 110, 111]


def test_limit_stops_reading_the_captions_file(tmp_path):
    """With --limit 3 the file is read no further than the third caption: a broken tail (a
    stand-in for the 200 MB after it) is never parsed."""
    path = tmp_path / "c.json"
    text = _coco(n_images=3, per_image=1)
    path.write_text(text[:-1] + ', "more": [1, 2, oops' + "}", encoding="utf-8")
    assert [c.text.split()[1] for c in vs.read_captions(path, limit=3)] == ["0.0", "1.0", "2.0"]
    with pytest.raises(ValueError, match=r"c.json is not valid JSON \(.* at line 1\)"):
        vs.read_captions(path)
    txt = tmp_path / "c.txt"
    txt.write_bytes(b"one\n\ntwo\nthree\n\xff\xfe not utf-8 \n")
    assert [c.text for c in vs.read_captions(txt, limit=3)] == ["one", "two", "three"]
    with pytest.raises(ValueError, match="not UTF-8"):
        vs.read_captions(txt)


def test_captions_that_are_not_regular_files_are_refused_by_kind(tmp_path):
    os.mkfifo(tmp_path / "fifo.json")
    with pytest.raises(ValueError, match="captions file .*fifo.json is a FIFO, not a regular file"):
        vs.read_captions(tmp_path / "fifo.json")
    with pytest.raises(ValueError, match="captions file /dev/zero is a character device"):
        vs.read_captions("/dev/zero")
    with pytest.raises(IsADirectoryError, match="captions file .* is a directory"):
        vs.read_coco(tmp_path)


@pytest.mark.parametrize("entry, expected", [
    ('{"annotations": [{"image_id": 1, "caption": "a", "id": "7"}]}', r"annotations\[0\] needs an int"),
    ('{"images": [{"id": 1, "file_name": ["a.png"]}], "annotations": []}', r"images\[0\] needs an int 'id'"),
    ('{"images": [{"id": 1, "file_name": "a\\u0000.png"}], "annotations": []}', r"images\[0\]"),
    ('[1, 2]', "not in COCO format"),
    ('{"annotations": {"a": 1}}', "not in COCO format"),
])
def test_malformed_coco_entries_are_named(tmp_path, entry, expected):
    (tmp_path / "c.json").write_text(entry)
    with pytest.raises(ValueError, match=f"captions file .*c.json.*{expected}"):
        vs.read_coco(tmp_path / "c.json")


def test_a_fifo_named_by_the_captions_json_is_skipped_not_opened(tmp_path, tiny_kandinsky, capsys):
    """stats compute with a COCO json listing a FIFO: it is skipped with its reason (open()
    on it would block the run forever), the other image is encoded."""
    prior, _ = tiny_kandinsky
    (tmp_path / "imgs").mkdir()
    _image(tmp_path / "imgs" / "a.png")
    os.mkfifo(tmp_path / "imgs" / "f.png")
    with pytest.raises(vs.UnreadableImage, match="not a regular file"):
        vs.open_image(tmp_path / "imgs" / "f.png")
    (tmp_path / "c.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "f.png"}],
        "annotations": [{"image_id": 1, "caption": "red", "id": 1}, {"image_id": 2, "caption": "x", "id": 2}]}))
    code, out, err = cli(capsys, "stats", "compute", "--images", tmp_path / "imgs", "--captions",
                         tmp_path / "c.json", "--prior", prior, "--out", tmp_path / "s.safetensors",
                         "--num-workers", 0, "--device", "cpu", "--no-progress")
    assert code == 0, err
    assert "f.png: not a regular file" in out
    assert vs.load(tmp_path / "s.safetensors").image.count == 1


def test_stats_compute_limit_reads_only_what_it_keeps(tmp_path, tiny_kandinsky, capsys):
    prior, _ = tiny_kandinsky
    text = _coco(n_images=3, per_image=1)
    (tmp_path / "c.json").write_text(text[:-1] + ', "more": [oops' + "}", encoding="utf-8")  # never reached
    code, out, err = cli(capsys, "stats", "compute", "--captions", tmp_path / "c.json", "--limit", 2,
                         "--prior", prior, "--out", tmp_path / "s.safetensors", "--device", "cpu",
                         "--no-progress", "--num-workers", 0)
    assert code == 0, err
    assert vs.load(tmp_path / "s.safetensors").text.count == 2


# -- typed sidecar and jobs fields ----------------------------------------------------------
@pytest.mark.parametrize("fields, expected", [
    ({"guidance": "4"}, 'guidance must be a finite number, got "4" (str)'),
    ({"allow_extrapolation": "no", "thetas": [0, 1.5]}, 'allow_extrapolation must be true or false, got "no" (str)'),
    ({"steps": "2"}, 'steps must be an integer, got "2" (str)'),
    ({"labels": 0}, "labels must be true or false, got 0 (int)"),
    ({"thetas": 5}, "thetas must be a list of finite numbers, got 5 (int)"),
    ({"alphas": [0, "1"]}, 'alphas must be a list of finite numbers, got [0, "1"] (list)'),
    ({"model": ["a", "b"]}, 'model must be a path (text), got ["a", "b"] (list)'),
    ({"prior": "models/\u0000prior"}, "prior 'models/\\x00prior' is not a path (it holds a NUL byte)"),
    ({"stats": ["x.safetensors"]}, "stats must be a JSON object"),
    ({"stats": {"path": ["x"]}}, 'stats: path must be a path (text), got ["x"] (list)'),
    ({"dtype": 16}, "dtype must be text, got 16 (int)"),
    ({"seed": 1.0}, "seed must be an integer, got 1.0 (float)"),
    ({"source": {"kind": "image", "path": ["x.png"]}}, 'source: path must be a path (text), got ["x.png"] (list)'),
    ({"source": {"kind": "image", "path": "x.png", "sha256": 5}}, "source: sha256 must be text, got 5 (int)"),
])
def test_sidecar_fields_are_read_with_their_type(tmp_path, capsys, no_models, fields, expected):
    side = _sidecar(tmp_path, **fields)
    code, _, err = cli(capsys, "grid", "--from", side, "--out", tmp_path / "again.png")
    line = _one_line(code, err, "grid")
    assert f"--from {side}: {expected}" in line, line


@pytest.mark.parametrize("job, expected", [
    ({"thetas": 5}, "thetas must be a list of numbers (or a start:stop:count text), got 5 (int)"),
    ({"alphas": {"a": 1}}, 'alphas must be a list of numbers (or a start:stop:count text), got {"a": 1}'),
    ({"guidance": "4"}, 'guidance must be a finite number, got "4"'),
    ({"name": "a\u0000b"}, 'name "a\\u0000b" must be a plain file name'),
    ({"source": ["a.png"]}, "'source' must be a string"),
    ({"steps": True}, "steps must be an integer, got true"),
])
def test_job_fields_are_read_with_their_type_naming_the_line(tmp_path, capsys, no_models, job, expected):
    src, tgt = _image(tmp_path / "a.png"), _image(tmp_path / "b.png", "blue")
    jobs = tmp_path / "jobs.jsonl"
    first = {"source": str(src), "target": str(tgt), "name": "ok"}
    jobs.write_text("# a comment\n" + json.dumps(first) + "\n" + json.dumps({**first, "name": "two", **job}) + "\n")
    code, _, err = cli(capsys, "batch", jobs, "--out-dir", tmp_path / "out")
    line = _one_line(code, err, "batch")
    assert f"jobs.jsonl:3: {expected}" in line, line
    assert not (tmp_path / "out").exists()


# -- the machine, exhausted -----------------------------------------------------------------
def test_worker_and_batch_caps_scale_with_the_machine_and_lift():
    from vslerp.stats.compute import compute_statistics
    from vslerp.stats.stream import check_loader_limits

    cap = max_workers()
    assert cap == WORKERS_PER_CPU * len(os.sched_getaffinity(0))
    check_loader_limits(cap, MAX_ENCODE_BATCH)
    with pytest.raises(ValueError, match=rf"num_workers {cap + 1} is more than the limit {cap} .*max_workers=N"):
        check_loader_limits(cap + 1, 1)
    with pytest.raises(ValueError, match=rf"batch_size {MAX_ENCODE_BATCH + 1} .*max_batch_size=N"):
        check_loader_limits(0, MAX_ENCODE_BATCH + 1)
    check_loader_limits(10_000, 10**6, max_workers=10_000, max_batch_size=10**6)
    with pytest.raises(ValueError, match="num_workers 10000 is more than the limit"):
        compute_statistics(None, [vs.ImageItem("a", Path("a"), -1)], num_workers=10_000)


@pytest.mark.parametrize("command", [["stats", "compute"], ["conformity"]])
def test_cli_refuses_too_many_workers_before_loading(tmp_path, capsys, no_models, command):
    """Refused before the (missing) --prior is even looked at; lifted, the run goes on to it."""
    (tmp_path / "c.txt").write_text("a cat\n")
    (tmp_path / "imgs").mkdir()
    (tmp_path / "s.safetensors").write_bytes(b"not read before the cap")
    extra = (["--stats", tmp_path / "s.safetensors", "--images", tmp_path / "imgs", "--out", tmp_path / "o.csv"]
             if command == ["conformity"] else ["--captions", tmp_path / "c.txt", "--out", tmp_path / "o.safetensors"])
    base = [*command, "--prior", tmp_path / "noprior", *extra]
    code, _, err = cli(capsys, *base, "--num-workers", 10_000)
    line = _one_line(code, err, ' '.join(command))
    assert f"--num-workers 10000 is more than the limit {max_workers()}" in line
    assert "raise it with --max-workers N" in line
    code, _, err = cli(capsys, *base, "--batch-size", MAX_ENCODE_BATCH + 1)
    assert "raise it with --max-batch-size N" in _one_line(code, err, ' '.join(command))
    # lifted: the cap passes, and the run goes on to the next check (the missing prior)
    code, _, err = cli(capsys, *base, "--num-workers", 10_000, "--max-workers", 10_000)
    assert "more than the limit" not in err


def test_check_loader_reads_the_parsed_options():
    from vslerp.ui.checks import check_loader

    args = argparse.Namespace(num_workers=max_workers(), batch_size=32, max_workers=None, max_batch_size=None)
    check_loader(args)
    with pytest.raises(CLIError, match="--num-workers"):
        check_loader(argparse.Namespace(**{**vars(args), "num_workers": max_workers() + 1}))


def test_a_deep_embeddings_manifest_is_one_line(tmp_path, capsys):
    """Not one of the issue's five places, but the same reader: `stats report --embeddings`."""
    folder = tmp_path / "emb"
    folder.mkdir()
    (folder / "manifest.json").write_text(DEEP)
    with pytest.raises(ValueError, match="embeddings manifest .*manifest.json: JSON nested deeper"):
        vs.read_embeddings(folder)
