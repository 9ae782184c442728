"""`vslerp conformity` and `vslerp stats report` end to end on the tiny random prior."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

N_IMAGES = 12
_MAIN = "import sys; from vslerp.ui.cli import main; sys.exit(main(sys.argv[1:]))"


def _vslerp(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-c", _MAIN, *args], env=env,
                          capture_output=True, text=True, timeout=240)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A COCO-format set of N_IMAGES random images with 2 captions each."""
    from PIL import Image

    root = tmp_path_factory.mktemp("coco")
    images = root / "val"
    images.mkdir()
    rng = np.random.default_rng(0)
    words = ["a cat", "a dog", "two birds", "a red car", "a bowl of fruit", "a city street"]
    coco = {"images": [], "annotations": []}
    for i in range(N_IMAGES):
        name = f"{i:04d}.png"
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(images / name)
        coco["images"].append({"id": 100 + i, "file_name": name})
        for k in range(2):
            coco["annotations"].append({"id": 1000 + 2 * i + k, "image_id": 100 + i,
                                        "caption": f"{words[(i + k) % len(words)]} number {i}"})
    captions = root / "captions.json"
    captions.write_text(json.dumps(coco))
    return images, captions


@pytest.fixture(scope="module")
def computed(dataset, tiny_kandinsky, tmp_path_factory):
    """Statistics file + saved embeddings from `vslerp stats compute`."""
    images, captions = dataset
    out = tmp_path_factory.mktemp("stats")
    stats, emb = out / "stats.safetensors", out / "emb"
    proc = _vslerp("stats", "compute", "--images", str(images), "--captions", str(captions),
                   "--prior", str(tiny_kandinsky[0]), "--out", str(stats), "--num-workers", "0",
                   "--save-embeddings", str(emb), "--no-progress")
    assert proc.returncode == 0, proc.stderr
    return stats, emb, images


def test_conformity_images_csv_hist_kl(computed, dataset, tiny_kandinsky, tmp_path):
    """Scoring the reference images themselves reproduces their exact conformity (Eq. 10)."""
    import vslerp
    import vslerp.stats as vs

    stats, emb, _ = computed
    out, hist = tmp_path / "scores.csv", tmp_path / "hist.png"
    proc = _vslerp("conformity", "--stats", str(stats), "--images", str(dataset[0]),
                   "--prior", str(tiny_kandinsky[0]), "--out", str(out), "--hist", str(hist),
                   "--reference-embeddings", str(emb), "--num-workers", "1")
    assert proc.returncode == 0, proc.stderr
    assert "KL to reference" in proc.stdout
    assert f"{N_IMAGES}/{N_IMAGES}" in proc.stderr and "img/s" in proc.stderr  # progress bar
    lines = out.read_text().splitlines()
    header = [line for line in lines if line.startswith("#")]
    from vslerp.defaults import CONFORMITY_EXACT

    assert any(f"estimator: {CONFORMITY_EXACT}: " in line for line in header)  # "exact_identity"
    rows = list(csv.DictReader(line for line in lines if not line.startswith("#")))
    assert len(rows) == N_IMAGES
    assert hist.is_file() and hist.stat().st_size > 1000
    saved = vs.read_embeddings(emb)
    exact = vslerp.conformity(saved.image.double())
    by_name = {r["name"]: float(r["conformity"]) for r in rows}
    got = torch.tensor([by_name[f"{i:04d}.png"] for i in range(N_IMAGES)], dtype=torch.float64)
    torch.testing.assert_close(got, exact, atol=2e-4, rtol=0)
    kl_line = next(line for line in header if "kl_to_reference" in line)
    assert float(kl_line.split(":")[1]) < 1e-3  # the reference set against itself


def test_conformity_streams_names_skipped_and_kl_of_another_set(computed, tiny_kandinsky,
                                                                 tmp_path, monkeypatch, capsys):
    """Another image set: KL > 0; batches of 1; decoded images never pile up in memory;
    unreadable files are named at the end."""
    import weakref

    from PIL import Image

    from vslerp.stats import data
    from vslerp.ui.cli import main

    stats, emb, _ = computed
    other = tmp_path / "other"
    other.mkdir()
    for i in range(10):  # smooth gradients, unlike the noise images of the reference set
        ramp = np.linspace(0, 255, 48 * 40 * 3).reshape(40, 48, 3)
        Image.fromarray(((ramp * (i + 1)) % 256).astype(np.uint8)).save(other / f"g{i}.png")
    (other / "broken.png").write_text("not an image")
    live, peak = set(), [0]

    def tracked_open(path, _open=data.open_image):
        image = _open(path)
        live.add(id(image))
        weakref.finalize(image, live.discard, id(image))
        peak[0] = max(peak[0], len(live))
        return image

    monkeypatch.setattr(data, "open_image", tracked_open)
    out = tmp_path / "other.csv"
    capsys.readouterr()
    code = main(["conformity", "--stats", str(stats), "--images", str(other), "--prior",
                 str(tiny_kandinsky[0]), "--out", str(out), "--reference-embeddings", str(emb),
                 "--batch-size", "1", "--num-workers", "0", "--no-progress"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert peak[0] == 1  # one decoded image at a time, not all of them
    rows = [r for r in out.read_text().splitlines() if not r.startswith("#")]
    assert len(rows) == 1 + 10
    kl = float(next(r for r in out.read_text().splitlines() if "kl_to_reference" in r)
               .split(":")[1])
    assert kl > 0.1
    assert "skipped 1 unreadable image(s):" in captured.out
    assert "broken.png: not an image" in captured.out
    assert "# skipped: 1 unreadable image(s)" in out.read_text()


def test_conformity_captions_without_reference(computed, tiny_kandinsky, tmp_path):
    stats, _, _ = computed
    caps = tmp_path / "caps.txt"
    caps.write_text("a cat\na photo of a dog on a sofa\nzebra quantum violin\n")
    out = tmp_path / "caps.csv"
    proc = _vslerp("conformity", "--stats", str(stats), "--captions", str(caps),
                   "--prior", str(tiny_kandinsky[0]), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "KL not computed" in proc.stdout
    rows = [r for r in out.read_text().splitlines() if not r.startswith("#")]
    assert len(rows) == 1 + 3
    assert all(-1.0 <= float(r.split(",")[-1]) <= 1.0 for r in rows[1:])


def _bad_stats(tmp: Path, computed, prior) -> list[str]:
    bad = tmp / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    return ["--stats", str(bad), "--captions", str(_caps(tmp)), "--prior", prior,
            "--out", str(tmp / "o.csv")]


def _caps(tmp: Path) -> Path:
    path = tmp / "c.txt"
    path.write_text("a cat\n")
    return path


def _other_dim(tmp: Path, computed, prior) -> list[str]:
    import vslerp.stats as vs

    other = tmp / "other.safetensors"
    vs.Statistics.from_mean(torch.ones(7)).save(other)  # image statistics of another dim
    return ["--stats", str(other), "--images", str(computed[2]), "--prior", prior,
            "--out", str(tmp / "o.csv")]


def _no_text_stats(tmp: Path, computed, prior) -> list[str]:
    import vslerp.stats as vs

    img_only = tmp / "img.safetensors"
    vs.Statistics.from_mean(torch.ones(32)).save(img_only)
    return ["--stats", str(img_only), "--captions", str(_caps(tmp)), "--prior", prior,
            "--out", str(tmp / "o.csv")]


def _out_not_csv(tmp: Path, computed, prior) -> list[str]:
    return ["--stats", str(computed[0]), "--captions", str(_caps(tmp)), "--prior", prior,
            "--out", str(tmp / "o.txt")]


def _missing_images(tmp: Path, computed, prior) -> list[str]:
    return ["--stats", str(computed[0]), "--images", str(tmp / "nope"), "--prior", prior,
            "--out", str(tmp / "o.csv")]


def _bad_device(tmp: Path, computed, prior) -> list[str]:
    return ["--stats", str(computed[0]), "--captions", str(_caps(tmp)), "--prior", prior,
            "--out", str(tmp / "o.csv"), "--device", "banana"]


def _out_unwritable(tmp: Path, computed, prior) -> list[str]:
    (tmp / "afile").write_text("x")
    return ["--stats", str(computed[0]), "--captions", str(_caps(tmp)), "--prior",
            str(tmp / "no-prior"), "--out", str(tmp / "o.csv"), "--hist",
            str(tmp / "afile" / "h.png")]


@pytest.mark.parametrize(("case", "expect"), [
    (_bad_stats, "bad.safetensors"), (_other_dim, "dim 7"), (_no_text_stats, "no text"),
    (_out_not_csv, ".csv"), (_missing_images, "not a folder"),
    (_bad_device, "--device 'banana'"), (_out_unwritable, "--hist: cannot write")])
def test_conformity_errors(case, expect, computed, tiny_kandinsky, tmp_path):
    from vslerp.ui.cli import main

    args = case(tmp_path, computed, str(tiny_kandinsky[0]))
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["conformity", *args])
    lines = err.getvalue().strip().splitlines()
    assert code == 2
    assert len(lines) == 1 and lines[0].startswith("vslerp conformity: error: "), err.getvalue()
    assert expect in lines[0]
    assert not (tmp_path / "o.csv").exists()


def test_stats_report_cli(computed, tmp_path):
    _, emb, _ = computed
    out = tmp_path / "report"
    proc = _vslerp("stats", "report", "--embeddings", str(emb), "--out-dir", str(out),
                   "--alphas", "-1:1:3", "--max-pairs", "10", "--chunk-size", "1")
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "report.json").read_text())
    assert [r["alpha"] for r in report["kl_vs_alpha"]] == [-1.0, 0.0, 1.0]
    assert report["counts"]["loss_pairs"] == 10 and report["settings"]["chunk_size"] == 1
    for name in ("report.md", "thin_shell.png", "loss_vs_alpha.png", "kl_vs_alpha.png"):
        assert (out / name).is_file(), name
    again = _vslerp("stats", "report", "--embeddings", str(emb), "--out-dir", str(out))
    assert again.returncode == 2 and len(again.stderr.strip().splitlines()) == 1
    assert again.stderr.startswith("vslerp stats report: error: ") and "--overwrite" in again.stderr


def test_report_and_conformity_accept_one(computed, tiny_kandinsky, tmp_path, capsys):
    """--batch-size 1, --chunk-size 1 and a leading-minus --alphas parse (in-process)."""
    from vslerp.ui.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["stats", "report", "--embeddings", "e", "--out-dir", "o",
                              "--alphas", "-2:2:5", "--chunk-size", "1"])
    assert args.alphas == [-2.0, -1.0, 0.0, 1.0, 2.0] and args.chunk_size == 1
    args = parser.parse_args(["conformity", "--stats", "s", "--captions", "c", "--prior", "p",
                              "--out", "o.csv", "--batch-size", "1"])
    assert args.batch_size == 1
    with pytest.raises(SystemExit):
        parser.parse_args(["stats", "report", "--embeddings", "e", "--out-dir", "o",
                           "--alphas", "-1:x:3"])
    assert "--alphas" in capsys.readouterr().err
