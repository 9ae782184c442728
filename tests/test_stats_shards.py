"""`vslerp stats compute --webdataset / --parquet`: sharded sources, processes, resume, damage.

Small webdataset tar shards (img2dataset layout) and parquet files are written to a temp
folder and encoded with the tiny random Kandinsky prior (conftest ``tiny_kandinsky``).
"""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import sums_equal as _sums_equal
from PIL import Image

import vslerp
import vslerp.stats as vs
from vslerp.stats.shard_stats import sample_image_id
from vslerp.ui.cli import main

N_SHARDS, PER_SHARD = 4, 7
BROKEN = {"00001.tar/000100003": "not an image", "00002.tar/000200005": "no caption"}
TRUNCATED = "00003.tar"


def _jpeg(gen: torch.Generator, i: int, fmt: str = "JPEG") -> bytes:
    pixels = (torch.rand(30 + i % 5, 36, 3, generator=gen) * 255).to(torch.uint8).numpy()
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt)
    return buf.getvalue()


def _samples() -> list[list[dict]]:
    """Per shard, img2dataset-style samples: jpg/png + txt (or a json caption)."""
    gen = torch.Generator().manual_seed(0)
    shards = []
    for s in range(N_SHARDS):
        samples = []
        for j in range(PER_SHARD):
            key = f"{s:04d}{j:05d}"
            sample = {"__key__": key}
            sample["png" if j % 3 == 1 else "jpg"] = _jpeg(gen, j, "PNG" if j % 3 == 1 else "JPEG")
            if j % 2:
                sample["json"] = json.dumps({"caption": f" photo {j} of shard {s} ", "key": key})
            else:
                sample["txt"] = f"a picture {j} of shard {s}"
            samples.append(sample)
        shards.append(samples)
    shards[1][3]["jpg"] = b"this is not an image"
    del shards[2][5]["json"]  # neither txt nor json: no caption
    return shards


def _write_tars(folder: Path, shards) -> None:
    from webdataset.writer import TarWriter

    folder.mkdir(parents=True)
    for s, samples in enumerate(shards):
        with TarWriter(str(folder / f"{s:05d}.tar")) as sink:
            for sample in samples:
                sink.write(sample)
    last = folder / TRUNCATED  # cut in the middle of its 5th sample
    data = last.read_bytes()
    last.write_bytes(data[: int(len(data) * 0.62)])


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("web")
    shards = _samples()
    _write_tars(root / "shards", shards)
    return root, shards


PATTERN = "shards/{00000..00003}.tar"


def _argv(root: Path, prior, out: Path, *extra) -> list[str]:
    return ["stats", "compute", "--webdataset", str(root / PATTERN), "--prior", str(prior),
            "--out", str(out), "--no-progress", "--batch-size", "3", "--num-workers", "0",
            "--dataset-name", "tiny-web", *map(str, extra)]


@pytest.fixture(scope="module")
def full_run(data, prior, tmp_path_factory):
    """One uninterrupted run with --save-embeddings and 2 DataLoader workers."""
    root, _ = data
    out_dir = tmp_path_factory.mktemp("full")
    out, emb = out_dir / "stats.safetensors", out_dir / "emb"
    argv = _argv(root, prior, out, "--save-embeddings", emb)
    argv[argv.index("--num-workers") + 1] = "2"
    assert main(argv) == 0
    return out, emb


def _readable(shards, truncated_count: int):
    """(images, captions) a correct reader finds: all but the broken, up to the truncation."""
    images, captions = [], []
    for s, samples in enumerate(shards):
        for j, sample in enumerate(samples[: truncated_count if s == 3 else None]):
            name = f"{s:05d}.tar/{sample['__key__']}"
            image = sample.get("jpg", sample.get("png"))
            if BROKEN.get(name) != "not an image":
                images.append((sample_image_id(s, j), Image.open(io.BytesIO(image)).convert("RGB")))
            text = sample.get("txt") or (json.loads(sample["json"])["caption"].strip()
                                         if "json" in sample else None)
            if text is not None:
                captions.append((sample_image_id(s, j), text))
    return images, captions


def test_webdataset_sums_pairs_and_skips(full_run, data, encoders):
    root, shards = data
    out, emb_dir = full_run
    stats, emb = vs.load(out), vs.read_embeddings(emb_dir)
    meta = stats.metadata
    names = [n for n, _ in meta["skipped"]["items"]]
    # the truncated shard keeps the samples before the damage and is named once
    (reason,) = [r for n, r in meta["skipped"]["items"] if n.endswith(TRUNCATED)]
    assert "unreadable webdataset shard after" in reason
    kept = int(reason.split("after ")[1].split()[0])
    assert 0 < kept < PER_SHARD
    for name, word in BROKEN.items():
        assert any(word in r for n, r in meta["skipped"]["items"] if n.endswith(name)), name
    assert meta["skipped"]["count"] == len(names) == len(BROKEN) + 1
    images, captions = _readable(shards, kept)
    raw_images = encoders.encode_images([im for _, im in images])  # (Ni, D)
    raw_texts = encoders.encode_texts([t for _, t in captions])  # (Nt, D)
    for modality, raw in (("image", raw_images), ("text", raw_texts)):
        direct = vslerp.MomentAccumulator(encoders.dim).update(raw)
        got = getattr(stats, modality)
        assert got.count == raw.shape[0]
        for name in direct._SUMS:
            assert torch.allclose(getattr(got.accumulator, name), getattr(direct, name),
                                  rtol=1e-5, atol=1e-4), (modality, name)
    assert meta["shards"] == N_SHARDS and meta["source_kind"] == "webdataset"
    assert meta["dataset"] == "tiny-web"
    # one embeddings shard per input shard and modality; pairs are the samples with both
    assert sorted(p.name for p in emb_dir.glob("image-*.safetensors")) == [
        f"image-{k:06d}.safetensors" for k in range(N_SHARDS)]
    assert torch.equal(emb.image_ids, torch.tensor([i for i, _ in images]))
    assert torch.equal(emb.text_image_ids, torch.tensor([i for i, _ in captions]))
    both = {i for i, _ in images} & {i for i, _ in captions}
    assert emb.pairs.shape == (len(both), 2)
    assert torch.equal(emb.image_ids[emb.pairs[:, 0]], emb.text_image_ids[emb.pairs[:, 1]])
    assert torch.allclose(emb.image, raw_images, atol=1e-5)


def test_workers_and_batches_do_not_change_the_sums(full_run, data, prior, tmp_path):
    """0 workers vs 2 workers (the fixture): the same batches, summed in the same order."""
    root, _ = data
    out = tmp_path / "s.safetensors"
    assert main(_argv(root, prior, out)) == 0
    _sums_equal(vs.load(out), vs.load(full_run[0]), exact=True)


def test_report_on_webdataset_embeddings(full_run, tmp_path):
    out_dir = tmp_path / "report"
    assert main(["stats", "report", "--embeddings", str(full_run[1]), "--out-dir",
                 str(out_dir), "--alphas", "-1,0,1"]) == 0
    report = json.loads((out_dir / "report.json").read_text())
    assert report["counts"]["pairs"] >= 2 * (N_SHARDS - 1)
    assert len(report["loss_vs_alpha"]) == 3 and "no CLIP loss" not in " ".join(report["notes"])


def test_resume_after_sigkill(full_run, data, prior, tmp_path, capsys):
    """SIGKILL after the 3rd embeddings file (image-0, text-0, image-1: shard 1 half done),
    then the same command finishes: equal to the uninterrupted run, bit for bit."""
    from vslerp.stats.embeddings import TEST_KILL_ENV

    root, _ = data
    out, emb = tmp_path / "s.safetensors", tmp_path / "emb"
    argv = _argv(root, prior, out, "--save-embeddings", emb)
    code = "import sys; from vslerp.ui.cli import main; sys.exit(main(sys.argv[1:]))"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", TEST_KILL_ENV: "3"}
    proc = subprocess.run([sys.executable, "-c", code, *argv], env=env, capture_output=True,
                          text=True, timeout=180)
    assert proc.returncode == -9, proc.stderr[-2000:]  # killed, not exited
    assert sorted(p.name for p in emb.glob("*-??????.safetensors")) == [
        "image-000000.safetensors", "image-000001.safetensors", "text-000000.safetensors"]
    assert not out.exists()
    assert main(argv) == 0
    _sums_equal(vs.load(out), vs.load(full_run[0]), exact=True)
    resumed, full = vs.read_embeddings(emb), vs.read_embeddings(full_run[1])
    assert torch.equal(resumed.image, full.image) and torch.equal(resumed.text, full.text)
    assert torch.equal(resumed.pairs, full.pairs)
    assert vs.load(out).metadata["skipped"] == vs.load(full_run[0]).metadata["skipped"]
    assert vs.load(out).metadata["dataset_size"] == vs.load(full_run[0]).metadata["dataset_size"]
    # a finished folder: every shard is read back, nothing is encoded again
    again = tmp_path / "again.safetensors"
    capsys.readouterr()
    assert main(argv[: argv.index("--out") + 1] + [str(again)] + argv[argv.index("--out") + 2:]) == 0
    n = vs.load(full_run[0]).metadata["counts"]
    assert f"{n['image'] + n['text']} resumed from embeddings shards" in capsys.readouterr().out
    _sums_equal(vs.load(again), vs.load(full_run[0]), exact=True)


def test_two_processes_equal_one(full_run, data, prior, tmp_path):
    root, _ = data
    out, emb = tmp_path / "two.safetensors", tmp_path / "emb"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PYTHONWARNINGS": "ignore"}
    with socket.socket() as sock:  # a free rendezvous port: other runs may hold 29500
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
           "--main_process_port", str(port), "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "vslerp.ui.cli",
           *_argv(root, prior, out, "--save-embeddings", emb, "--device", "cpu")[:]]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    two, one = vs.load(out), vs.load(full_run[0])
    assert two.metadata["processes"] == 2
    _sums_equal(two, one, exact=False, rtol=1e-6)  # float64 sums added in another order
    assert two.metadata["skipped"] == one.metadata["skipped"]
    assert two.metadata["dataset_size"] == one.metadata["dataset_size"]
    got, full = vs.read_embeddings(emb), vs.read_embeddings(full_run[1])
    assert torch.allclose(got.image, full.image, atol=1e-6)
    assert torch.equal(got.pairs, full.pairs)


# -- parquet ------------------------------------------------------------------------------------
def _write_parquet(path: Path, shards, layout: str) -> None:
    """The same samples as the tars (whole shards 0–2): 'hf' = datasets' Image struct
    {bytes, path} + 'text'; 'flat' = a binary 'jpg' column + 'caption' and a 'url' column."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [s for samples in shards[:3] for s in samples]
    images = [s.get("jpg", s.get("png")) for s in rows]
    texts = [s.get("txt") or (json.loads(s["json"])["caption"] if "json" in s else None)
             for s in rows]
    if layout == "hf":
        table = pa.table({"image": [{"bytes": b, "path": None} for b in images], "text": texts})
    else:
        table = pa.table({"url": [f"http://x/{i}" for i in range(len(rows))],
                          "jpg": pa.array(images, pa.binary()), "caption": texts})
    pq.write_table(table, path, row_group_size=5)


@pytest.mark.parametrize("layout", ["hf", "flat"])
def test_parquet_equals_the_same_samples_as_tar(layout, data, prior, encoders, tmp_path):
    root, shards = data
    path = tmp_path / f"{layout}.parquet"
    _write_parquet(path, shards, layout)
    out = tmp_path / "p.safetensors"
    argv = ["stats", "compute", "--parquet", str(path), "--prior", str(prior), "--out",
            str(out), "--no-progress", "--batch-size", "3", "--num-workers", "0"]
    assert main(argv) == 0
    stats = vs.load(out)
    images, captions = _readable(shards[:3], PER_SHARD)
    assert stats.image.count == len(images) and stats.text.count == len(captions)
    raw = encoders.encode_images([im for _, im in images])
    assert torch.allclose(stats.image.mean, raw.double().mean(0), atol=1e-5)
    image_col, caption_col = ("image", "text") if layout == "hf" else ("jpg", "caption")
    assert stats.metadata["parquet_columns"] == {"image": image_col, "caption": caption_col}
    reasons = [r for _, r in stats.metadata["skipped"]["items"]]
    assert sorted(reasons) == sorted(["not an image", f"no caption in column {caption_col!r}"])


def _parquet_case(tmp: Path, case: str) -> list[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp / "x.parquet"
    if case == "not parquet":
        path.write_bytes(b"PAR1 but not really")
        return ["--parquet", str(path)]
    columns = {"no image column": {"url": ["a"], "caption": ["c"]},
               "wrong caption type": {"image": pa.array([b"x"]), "caption": [3]},
               "missing named column": {"image": pa.array([b"x"]), "caption": ["c"]},
               "two text columns": {"image": pa.array([b"x"]), "url": ["u"], "alt": ["c"]}}[case]
    pq.write_table(pa.table(columns), path)
    extra = {"wrong caption type": ["--caption-column", "caption"],
             "missing named column": ["--image-column", "picture"]}.get(case, [])
    return ["--parquet", str(path), *extra]


BAD = {
    "not parquet": (_parquet_case, "is not a readable parquet file"),
    "no image column": (_parquet_case, "has no image column (binary or {bytes, path} struct);"
                        " name one with --image-column"),
    "wrong caption type": (_parquet_case, "column 'caption' of parquet file"),
    "missing named column": (_parquet_case, "has no column 'picture' (--image-column)"),
    "two text columns": (_parquet_case, "several caption columns (text): url, alt; name one "
                         "with --caption-column"),
    "missing shard": (lambda tmp: ["--webdataset", str(tmp / "s/{0..2}.tar")],
                      "shard not found"),
    "with --images": (lambda tmp: ["--webdataset", str(tmp / "a.tar"), "--images", str(tmp)],
                      "does not go with --images"),
    "with --limit": (lambda tmp: ["--webdataset", str(tmp / "a.tar"), "--limit", "3"],
                     "name fewer shards"),
    "both sources": (lambda tmp: ["--webdataset", str(tmp / "a.tar"), "--parquet",
                                  str(tmp / "a.tar")], "not both"),
    "url": (lambda tmp: ["--webdataset", "https://host/{0..3}.tar"], "only local files"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_sources_are_one_line_before_loading(case, tmp_path, capsys):
    """Each is one line, exit 2, found before the (missing) prior is loaded."""
    (tmp_path / "a.tar").write_bytes(b"")
    make, message = BAD[case]
    extra = make(tmp_path, case) if make is _parquet_case else make(tmp_path)
    out = tmp_path / "o.safetensors"
    rc = main(["stats", "compute", "--prior", str(tmp_path / "no-prior"), "--out", str(out),
               "--no-progress", *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and message in err[0], err
    assert "no-prior" not in err[0] and not out.exists()


def test_all_shards_unreadable_is_one_line(prior, tmp_path, capsys):
    (tmp_path / "s").mkdir()
    for i in range(2):
        (tmp_path / f"s/{i}.tar").write_bytes(b"garbage, not a tar archive" * 40)
    rc = main(["stats", "compute", "--webdataset", str(tmp_path / "s/{0..1}.tar"), "--prior",
               str(prior), "--out", str(tmp_path / "o.safetensors"), "--no-progress",
               "--num-workers", "0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "none of the" in err[0] and "0.tar" in err[0], err
