"""Statistics and embeddings files that are damaged, incomplete or not files (issue 17).

Built without models: an embeddings folder is written through :class:`EmbeddingStore`
exactly as ``stats compute --save-embeddings`` does, statistics files through
:class:`vslerp.stats.Statistics`. The CLI runs in-process (``vslerp.ui.cli.main``).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import vslerp
import vslerp.stats as vs
from vslerp.stats.compute import dataset_digest
from vslerp.stats.embeddings import EmbeddingStore, Shard
from vslerp.stats.outputs import TEMP_MARK, forget_inputs, output_lock
from vslerp.ui.cli import main

D, SHARD, N_IMAGES, N_TEXT = 6, 4, 10, 10


@pytest.fixture(autouse=True)
def _fresh_inputs():
    forget_inputs()
    yield
    forget_inputs()


def _plan(n_images=N_IMAGES, n_text=N_TEXT) -> dict:
    return {"metadata": {"dim": D, "model_id": "tiny", "encoder_fingerprint": "f" * 64},
            "shard_size": SHARD,
            "modalities": {"image": {"items": n_images, "digest": dataset_digest([])},
                           "text": {"items": n_text, "digest": dataset_digest([])}}}


def write_embeddings(folder: Path, *, skip_image: int | None = None, complete=True) -> Path:
    """A complete embeddings folder: N_IMAGES images, one caption each, shards of SHARD."""
    store = EmbeddingStore(folder, _plan())
    store.prepare()
    gen = torch.Generator().manual_seed(0)
    for modality, n in (("image", N_IMAGES), ("text", N_TEXT)):
        offset = 3.0 if modality == "image" else -3.0
        for k in range(-(-n // SHARD)):
            rows = list(range(k * SHARD, min((k + 1) * SHARD, n)))
            skipped = []
            if modality == "image" and skip_image in rows:
                rows.remove(skip_image)
                skipped = [(f"{skip_image}.png", "unreadable")]
            emb = torch.randn(len(rows), D, generator=gen) + offset
            index = torch.tensor(rows, dtype=torch.int64)
            store.write_shard(modality, k, Shard(emb, index, index + 100, skipped))
    store.write_manifest(complete=complete)
    return folder


def test_complete_folder_reads_all_items_and_counts_skipped_ones(tmp_path):
    emb = vs.read_embeddings(write_embeddings(tmp_path / "emb", skip_image=5))
    assert emb.image.shape == (N_IMAGES - 1, D) and emb.text.shape == (N_TEXT, D)
    assert emb.pairs.shape == (N_IMAGES - 1, 2)


def test_missing_shard_is_refused_naming_it(tmp_path):
    folder = write_embeddings(tmp_path / "emb")
    (folder / "image-000001.safetensors").unlink()
    with pytest.raises(ValueError, match=r"1 of 3 image shard\(s\) missing: image-000001"):
        vs.read_embeddings(folder)


def test_short_shard_is_refused_naming_it(tmp_path):
    folder = write_embeddings(tmp_path / "emb")
    path = folder / "text-000000.safetensors"
    tensors = load_file(str(path))
    save_file({k: v[:2].contiguous() for k, v in tensors.items()}, str(path),
              metadata={"vslerp": json.dumps({"skipped": []})})
    with pytest.raises(ValueError, match=r"text-000000.safetensors holds 2 embeddings .* has 4"):
        vs.read_embeddings(folder)


def test_extra_shard_is_refused(tmp_path):
    folder = write_embeddings(tmp_path / "emb")
    (folder / "image-000009.safetensors").write_bytes(
        (folder / "image-000000.safetensors").read_bytes())
    with pytest.raises(ValueError, match="image-000009.safetensors"):
        vs.read_embeddings(folder)


def test_stats_report_refuses_a_folder_with_a_missing_shard(tmp_path, capsys):
    folder = write_embeddings(tmp_path / "emb")
    assert main(["stats", "report", "--embeddings", str(folder), "--out-dir",
                 str(tmp_path / "ok"), "--alphas", "0"]) == 0
    (folder / "image-000002.safetensors").unlink()
    capsys.readouterr()
    code = main(["stats", "report", "--embeddings", str(folder), "--out-dir",
                 str(tmp_path / "r"), "--alphas", "0"])
    err = capsys.readouterr().err
    assert code == 2 and "image-000002.safetensors" in err and "missing" in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r" / "report.json").exists()


def test_resume_in_progress_folder_still_reads_its_shards(tmp_path):
    folder = write_embeddings(tmp_path / "emb", complete=False)
    (folder / "image-000001.safetensors").unlink()
    with pytest.raises(ValueError, match="incomplete"):
        vs.read_embeddings(folder)
    store = EmbeddingStore(folder, _plan())
    store.check()  # the same run: accepted, resumes
    assert store.completed("image") == {0, 2}
    assert store.read_shard("image", 2).embeddings.shape == (2, D)


def _manifest(folder: Path, **change) -> None:
    path = folder / "manifest.json"
    data = json.loads(path.read_text())
    for key, value in change.items():
        if key == "items":
            data["modalities"]["image"]["items"] = value
        else:
            data[key] = value
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("change, message", [
    ({"items": -4}, "modalities.image.items must be an integer ≥ 0, got -4"),
    ({"items": 14}, "1 of 4 image shard"),
    ({"items": 6}, "beyond the manifest's 6 items"),
    ({"shard_size": 0}, "shard_size must be an integer ≥ 1"),
    ({"modalities": None}, "no per-modality item counts"),
    ({"complete": "yes"}, "incomplete"),
])
def test_bad_manifests_are_one_clear_error(tmp_path, change, message):
    folder = write_embeddings(tmp_path / "emb")
    _manifest(folder, **change)
    with pytest.raises(ValueError, match=message):
        vs.read_embeddings(folder)


def test_manifest_not_an_object_and_shard_of_wrong_dim(tmp_path):
    folder = write_embeddings(tmp_path / "emb")
    (folder / "manifest.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="not a JSON object"):
        vs.read_embeddings(folder)
    folder = write_embeddings(tmp_path / "emb2")
    path = folder / "image-000000.safetensors"
    tensors = load_file(str(path))
    tensors["embeddings"] = torch.zeros(4, D + 1)
    save_file(tensors, str(path), metadata={"vslerp": json.dumps({"skipped": []})})
    with pytest.raises(ValueError, match=rf"image-000000.safetensors has embeddings of shape \(4, {D + 1}\)"):
        vs.read_embeddings(folder)


def test_directories_where_files_are_expected(tmp_path):
    (tmp_path / "stats.safetensors").mkdir()
    with pytest.raises(IsADirectoryError, match="stats.safetensors is a directory"):
        vs.load(tmp_path / "stats.safetensors")
    folder = write_embeddings(tmp_path / "emb")
    (folder / "manifest.json").unlink()
    (folder / "manifest.json").mkdir()
    with pytest.raises(IsADirectoryError, match="manifest.json is a directory"):
        vs.read_embeddings(folder)
    with pytest.raises(NotADirectoryError, match="is a file, not a folder"):
        vs.read_embeddings(folder / "image-000000.safetensors")


# -- statistics files ----------------------------------------------------------------------
def _stats_file(path: Path) -> Path:
    gen = torch.Generator().manual_seed(1)
    image = vslerp.MomentAccumulator(D).update(torch.randn(8, D, generator=gen) + 2)
    text = vslerp.MomentAccumulator(D).update(torch.randn(8, D, generator=gen) - 2)
    return vs.Statistics.from_accumulators(image, text).save(path)


@pytest.mark.parametrize("key", ["image.sum", "text.sum_outer", "image.sum_norm"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_load_refuses_non_finite_sums_naming_file_and_tensor(tmp_path, key, bad):
    path = _stats_file(tmp_path / "s.safetensors")
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata()
    tensors = load_file(str(path))
    tensors[key] = tensors[key].clone()
    tensors[key].reshape(-1)[0] = bad
    save_file(tensors, str(path), metadata=meta)
    modality, name = key.split(".")
    with pytest.raises(ValueError, match=rf"s\.safetensors: bad {modality} statistics .*'{name}'.*non-finite"):
        vs.load(path)


def test_load_refuses_non_finite_mean_only_file_naming_it(tmp_path):
    path = vs.Statistics.from_mean(torch.arange(1.0, 5.0)).save(tmp_path / "m.safetensors")
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata()
    save_file({"image.mean": torch.tensor([1.0, float("nan"), 2.0, 3.0], dtype=torch.float64)},
              str(path), metadata=meta)
    with pytest.raises(ValueError, match=r"m\.safetensors: bad image statistics .*non-finite"):
        vs.load(path)


def test_report_out_dir_is_locked_and_stale_temporaries_removed(tmp_path, capsys):
    folder = write_embeddings(tmp_path / "emb")
    out = tmp_path / "report"
    out.mkdir()
    stale = out / f".report.json{TEMP_MARK}deadbeef.json"
    stale.write_text("half")
    argv = ["stats", "report", "--embeddings", str(folder), "--out-dir", str(out), "--alphas", "0"]
    with output_lock(folders=(out,)):
        capsys.readouterr()
        assert main(argv) == 2
        err = capsys.readouterr().err
    assert "report is being written by another vslerp run" in err and str(out) in err
    assert len(err.strip().splitlines()) == 1
    stale.write_text("half")  # the lock's own owner cleaned it; a killed run leaves it again
    assert main(argv) == 0
    assert not stale.exists() and (out / "report.json").is_file()


def test_report_out_dir_may_not_be_the_embeddings_folder(tmp_path, capsys):
    folder = write_embeddings(tmp_path / "emb")
    code = main(["stats", "report", "--embeddings", str(folder), "--out-dir", str(folder)])
    err = capsys.readouterr().err
    assert code == 2 and "--out-dir" in err and "--embeddings" in err
    assert not (folder / "report.json").exists()


# -- stats compute / conformity: one run per output, outputs never inputs ------------------
NO_PRIOR = "no-such-prior-folder"  # a refusal must come before any model would load


def _compute_argv(tmp: Path, *extra) -> list[str]:
    return ["stats", "compute", "--prior", str(tmp / NO_PRIOR), "--no-progress",
            "--num-workers", "0", *[str(e) for e in extra]]


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


@pytest.mark.parametrize("held", ["out", "save-embeddings"])
def test_stats_compute_second_run_on_an_output_fails_at_once(tmp_path, capsys, held):
    caps = tmp_path / "c.txt"
    caps.write_text("a cat\n")
    out, emb = tmp_path / "s.safetensors", tmp_path / "emb"
    lock = output_lock(out) if held == "out" else output_lock(folders=(emb,))
    with lock:
        code = main(_compute_argv(tmp_path, "--captions", caps, "--out", out,
                                  "--save-embeddings", emb))
    line = _one_line(capsys)
    assert code == 2
    assert "is being written by another vslerp run" in line
    assert str(out if held == "out" else emb) in line
    assert NO_PRIOR not in line  # refused before the (missing) model was looked at


def _captions_named_like_an_output(tmp: Path) -> Path:
    caps = tmp / "caps.safetensors"  # a text file of captions with an output's suffix
    caps.write_text("a cat\na dog\n")
    return caps


@pytest.mark.parametrize("via", ["same path", "symlink", "hard link"])
def test_stats_compute_out_may_not_be_the_captions_file(tmp_path, capsys, via):
    caps = _captions_named_like_an_output(tmp_path)
    out = caps
    if via == "symlink":
        out = tmp_path / "link.safetensors"
        out.symlink_to(caps)
    elif via == "hard link":
        out = tmp_path / "hard.safetensors"
        out.hardlink_to(caps)
    code = main(_compute_argv(tmp_path, "--captions", caps, "--out", out, "--overwrite"))
    line = _one_line(capsys)
    assert code == 2 and "--out" in line and "--captions" in line and "never replaces" in line
    assert caps.read_text() == "a cat\na dog\n"


def test_stats_compute_outputs_may_not_be_inside_the_prior_or_the_image_folder(tmp_path, capsys):
    prior = tmp_path / "prior"
    (prior / "prior").mkdir(parents=True)
    weights = prior / "prior" / "model.safetensors"
    weights.write_bytes(b"weights")
    code = main(["stats", "compute", "--prior", str(prior), "--from-prior-mean", "--out",
                 str(weights), "--overwrite"])
    assert code == 2 and "is a file of the --prior folder" in _one_line(capsys)
    assert weights.read_bytes() == b"weights"
    images = tmp_path / "images"
    images.mkdir()
    code = main(_compute_argv(tmp_path, "--images", images, "--out", tmp_path / "s.safetensors",
                              "--save-embeddings", images))
    line = _one_line(capsys)
    assert code == 2 and "--save-embeddings" in line and "--images" in line


def test_stats_compute_directory_for_captions_says_so(tmp_path, capsys):
    (tmp_path / "caps.json").mkdir()
    code = main(_compute_argv(tmp_path, "--captions", tmp_path / "caps.json", "--out",
                              tmp_path / "s.safetensors"))
    assert code == 2 and "caps.json is a directory" in _one_line(capsys)


def _conformity_argv(tmp: Path, *extra) -> list[str]:
    stats = _stats_file(tmp / "stats.safetensors")
    return ["conformity", "--stats", str(stats), "--prior", str(tmp / NO_PRIOR),
            "--no-progress", *[str(e) for e in extra]]


def test_conformity_out_may_not_be_the_captions_file(tmp_path, capsys):
    caps = tmp_path / "scores.csv"
    caps.write_text("a cat\na dog\n")
    code = main(_conformity_argv(tmp_path, "--captions", caps, "--out", caps, "--overwrite"))
    line = _one_line(capsys)
    assert code == 2 and "--out" in line and "--captions" in line
    assert caps.read_text() == "a cat\na dog\n"


def test_conformity_hist_may_not_be_one_of_the_images(tmp_path, capsys):
    from PIL import Image

    images = tmp_path / "imgs"
    images.mkdir()
    Image.new("RGB", (8, 8), "red").save(images / "a.png")
    before = (images / "a.png").read_bytes()
    code = main(_conformity_argv(tmp_path, "--images", images, "--out", tmp_path / "s.csv",
                                 "--hist", images / "a.png", "--overwrite"))
    line = _one_line(capsys)
    assert code == 2 and "--hist" in line and "--images" in line
    assert (images / "a.png").read_bytes() == before


@pytest.mark.parametrize("held", ["--out", "--hist"])
def test_conformity_second_run_on_an_output_fails_at_once(tmp_path, capsys, held):
    caps = tmp_path / "c.txt"
    caps.write_text("a cat\n")
    out, hist = tmp_path / "s.csv", tmp_path / "h.png"
    with output_lock(out if held == "--out" else hist):
        code = main(_conformity_argv(tmp_path, "--captions", caps, "--out", out, "--hist", hist))
    line = _one_line(capsys)
    assert code == 2 and "is being written by another vslerp run" in line
    assert str(out if held == "--out" else hist) in line


@pytest.mark.parametrize("option", ["--stats", "--captions"])
def test_conformity_directory_inputs_say_so(tmp_path, capsys, option):
    argv = _conformity_argv(tmp_path, "--out", tmp_path / "s.csv")
    (tmp_path / "d.txt").mkdir()
    if option == "--stats":
        (tmp_path / "dir.safetensors").mkdir()
        argv[argv.index("--stats") + 1] = str(tmp_path / "dir.safetensors")
        argv += ["--captions", str(tmp_path / "c.txt")]
        (tmp_path / "c.txt").write_text("a cat\n")
    else:
        argv += ["--captions", str(tmp_path / "d.txt")]
    assert main(argv) == 2
    assert "is a directory" in _one_line(capsys)


def test_stats_compute_removes_a_killed_runs_temporaries(tiny_kandinsky, tmp_path, capsys):
    caps = tmp_path / "c.txt"
    caps.write_text("a cat\na dog\na bird\n")
    out, emb = tmp_path / "s.safetensors", tmp_path / "emb"
    emb.mkdir()
    stale = [tmp_path / f".s.safetensors{TEMP_MARK}deadbeef.safetensors",
             emb / f".text-000000.safetensors{TEMP_MARK}deadbeef.safetensors",
             emb / f".manifest.json{TEMP_MARK}0badf00d.json"]
    for path in stale:
        path.write_bytes(b"half-written by a killed run")
    code = main(["stats", "compute", "--prior", str(tiny_kandinsky[0]), "--captions", str(caps),
                 "--out", str(out), "--save-embeddings", str(emb), "--no-progress",
                 "--num-workers", "0", "--shard-size", "2"])
    assert code == 0, capsys.readouterr().err
    assert [p for p in stale if p.exists()] == []
    assert vs.read_embeddings(emb).text.shape[0] == 3
    assert vs.load(out).text.count == 3


def test_device_rule_honours_accelerate_use_cpu(monkeypatch):
    """One device rule for every room: ACCELERATE_USE_CPU (accelerate launch --cpu) means the CPU."""
    import torch

    from vslerp.stats import default_device, default_dtype

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.delenv("ACCELERATE_USE_CPU", raising=False)
    assert default_device().type == "cuda" and default_dtype(default_device()) == torch.float16
    for flag in ("1", "true", "YES"):
        monkeypatch.setenv("ACCELERATE_USE_CPU", flag)
        assert default_device().type == "cpu" and default_dtype(default_device()) == torch.float32
    monkeypatch.setenv("ACCELERATE_USE_CPU", "0")
    assert default_device().type == "cuda"
