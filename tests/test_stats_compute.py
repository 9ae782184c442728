"""`vslerp.stats` API and `vslerp stats compute`: readers, encoding, files, resume, processes.

A generated COCO-format set of small images, including broken files, encoded with the tiny
random Kandinsky prior (conftest ``tiny_kandinsky``).
"""

from __future__ import annotations

import io
import json
import os
import socket
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import torch
from helpers import sums_equal as _sums_equal
from PIL import Image

import vslerp
import vslerp.stats as vs
from vslerp.ui.cli import main

N_GOOD = 24
SKIPPED = {"broken/truncated.jpg": "truncated", "broken/text.jpg": "not an image",
           "broken/bomb.png": "decompression bomb", "missing.jpg": "missing"}
CONVERTED = ["odd/cmyk.jpg", "odd/sixteen.png", "odd/gray.png", "odd/rgba.png",
             "odd/exif_rotated.jpg", "odd/palette.gif"]


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width × height 1-bit pixels, with no pixel data: PIL's
    decompression-bomb check fires on the header, so it costs nothing to make or open."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def _write_dataset(root: Path) -> tuple[Path, Path]:
    gen = torch.Generator().manual_seed(0)
    images = root / "images"
    (images / "good").mkdir(parents=True)
    (images / "odd").mkdir()
    (images / "broken").mkdir()

    def noise(w, h, channels=3):
        return (torch.rand(h, w, channels, generator=gen) * 255).to(torch.uint8).numpy()

    names = []
    for i in range(N_GOOD):
        name = f"good/{i:03d}.{'jpg' if i % 2 else 'png'}"
        Image.fromarray(noise(32 + i, 40 + (i * 7) % 24)).save(images / name)
        names.append(name)
    Image.fromarray(noise(40, 36)).convert("CMYK").save(images / "odd/cmyk.jpg")
    sixteen = (torch.rand(30, 34, generator=gen) * 65535).to(torch.int32).numpy().astype("uint16")
    Image.fromarray(sixteen).save(images / "odd/sixteen.png")  # mode I;16
    Image.fromarray(noise(36, 36, 1)[..., 0]).save(images / "odd/gray.png")
    rgba = noise(38, 34, 4)
    rgba[:10, :, 3] = 0  # a transparent band
    Image.fromarray(rgba, "RGBA").save(images / "odd/rgba.png")
    rotated = Image.fromarray(noise(48, 32))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to display
    rotated.save(images / "odd/exif_rotated.jpg", exif=exif.tobytes())
    Image.fromarray(noise(33, 33)).convert("P").save(images / "odd/palette.gif")
    names += CONVERTED
    buf = io.BytesIO()
    Image.fromarray(noise(64, 64)).save(buf, format="JPEG")
    (images / "broken/truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (images / "broken/text.jpg").write_text("this is not an image")
    # 40000² px: above twice Image.MAX_IMAGE_PIXELS (so in DataLoader workers and subprocesses)
    (images / "broken/bomb.png").write_bytes(_png_header_only(40_000, 40_000))
    names += ["broken/truncated.jpg", "broken/text.jpg", "broken/bomb.png", "missing.jpg"]
    coco_images = [{"id": 1000 + i, "file_name": n, "height": 0, "width": 0}
                   for i, n in enumerate(names)]
    annotations = []
    for img in coco_images:
        for j in range(2):
            annotations.append({"id": len(annotations) + 1, "image_id": img["id"],
                                "caption": f" a picture {j} of item {img['id']} "})
    captions = root / "captions.json"
    captions.write_text(json.dumps({"images": coco_images, "annotations": annotations}))
    return images, captions


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return _write_dataset(tmp_path_factory.mktemp("coco"))


def _compute(out: Path, prior, images=None, captions=None, *extra) -> int:
    argv = ["stats", "compute", "--prior", str(prior), "--out", str(out), "--no-progress",
            "--num-workers", "0", "--batch-size", "5", "--shard-size", "7"]
    if images is not None:
        argv += ["--images", str(images)]
    if captions is not None:
        argv += ["--captions", str(captions)]
    return main(argv + [str(e) for e in extra])


@pytest.fixture(scope="module")
def full_run(dataset, prior, tmp_path_factory):
    """One uninterrupted run with --save-embeddings (2 DataLoader workers)."""
    images, captions = dataset
    root = tmp_path_factory.mktemp("full")
    out, emb = root / "stats.safetensors", root / "emb"
    argv = ["stats", "compute", "--prior", str(prior), "--out", str(out), "--no-progress",
            "--images", str(images), "--captions", str(captions), "--batch-size", "5",
            "--shard-size", "7", "--num-workers", "2", "--save-embeddings", str(emb),
            "--dataset-name", "tiny-coco"]
    assert main(argv) == 0
    return out, emb


# -- readers ----------------------------------------------------------------------------------
def test_open_image_converts_odd_files(dataset):
    images, _ = dataset
    for name in CONVERTED:
        img = vs.open_image(images / name)
        assert img.mode == "RGB", name
    rotated = vs.open_image(images / "odd/exif_rotated.jpg")
    assert rotated.size == (32, 48)  # stored 48×32, EXIF says rotate 90°
    sixteen = torch.frombuffer(bytearray(vs.open_image(images / "odd/sixteen.png").tobytes()),
                               dtype=torch.uint8)
    assert sixteen.float().std() > 20  # scaled to 8 bits, not clipped to white
    rgba = vs.open_image(images / "odd/rgba.png")
    assert rgba.getpixel((5, 2)) == (255, 255, 255)  # transparent band composited on white
    for name, reason in SKIPPED.items():
        with pytest.raises(vs.UnreadableImage, match=reason):
            vs.open_image(images / name)


def test_open_image_scales_float_and_32bit_images(tmp_path):
    """Float TIFFs (mode F) in [0, 1] are ×255, other ranges min–max; mode I likewise."""
    import numpy as np

    ramp = np.tile(np.linspace(0.0, 1.0, 64, dtype=np.float32), (8, 1))  # (8, 64)
    cases = {"unit.tif": (Image.fromarray(ramp, "F"), ramp * 255),
             "wide.tif": (Image.fromarray(ramp * 105 - 5, "F"), ramp * 255),
             "int32.tif": (Image.fromarray((ramp * 1e6).astype(np.int32), "I"), ramp * 255)}
    for name, (image, expected) in cases.items():
        image.save(tmp_path / name)
        got = np.asarray(vs.open_image(tmp_path / name), dtype=np.float64)  # (8, 64, 3)
        assert got.shape == (8, 64, 3), name
        np.testing.assert_allclose(got[..., 0], expected, atol=1.0, err_msg=name)
    flat = Image.fromarray(np.full((4, 4), 7.5, dtype=np.float32), "F")
    flat.save(tmp_path / "flat.tif")
    assert np.asarray(vs.open_image(tmp_path / "flat.tif")).max() == 0  # no division by zero
def test_readers(dataset, tmp_path):
    images, captions = dataset
    listed = vs.list_images(images, captions)
    assert len(listed) == N_GOOD + len(CONVERTED) + len(SKIPPED)
    assert listed[0].image_id == 1000
    folder = vs.list_images(images)  # plain folder: every image file, unpaired
    assert len(folder) == N_GOOD + len(CONVERTED) + 3 and {i.image_id for i in folder} == {-1}
    caps = vs.read_captions(captions)
    assert len(caps) == 2 * len(listed) and caps[0].text == "a picture 0 of item 1000"
    txt = tmp_path / "c.txt"
    txt.write_text("one\n\n two \n")
    assert [(c.text, c.image_id, c.caption_id) for c in vs.read_captions(txt)] == [
        ("one", -1, 0), ("two", -1, 2)]
    skipped = []
    got = list(vs.iter_images(images, coco=captions, skipped=skipped))
    assert len(got) == N_GOOD + len(CONVERTED)
    assert {n for n, _ in skipped} == set(SKIPPED)


# -- encoders ---------------------------------------------------------------------------------
def test_encoders_match_the_kandinsky_prior_pipeline(prior, encoders, dataset):
    from diffusers import KandinskyV22PriorPipeline

    pipe = KandinskyV22PriorPipeline.from_pretrained(prior)
    texts = ["a cat", "a much longer caption about a dog on a mat " * 3]
    expected_text, _, _ = pipe._encode_prompt(texts, "cpu", 1, False)
    assert torch.allclose(encoders.encode_texts(texts), expected_text, atol=1e-5)
    ims = [vs.open_image(dataset[0] / f"good/{i:03d}.png") for i in (0, 2)]
    with torch.no_grad():
        expected = torch.cat([pipe.image_encoder(pipe.image_processor(im, return_tensors="pt")
                                                 .pixel_values[0].unsqueeze(0))["image_embeds"]
                              for im in ims])
    raw = encoders.encode_images(ims)
    assert raw.dtype == torch.float32 and raw.shape == (2, encoders.dim)
    assert torch.allclose(raw, expected, atol=1e-5)
    assert not torch.allclose(raw.norm(dim=1), torch.ones(2))  # raw, not normalised
    # the fingerprint names the weights, not the dtype or the object
    assert vs.encoder_fingerprint(pipe.image_encoder) == encoders.fingerprint
    assert vs.encoder_fingerprint(pipe.image_encoder.half()) == encoders.fingerprint
    with torch.no_grad():
        pipe.image_encoder.visual_projection.weight.view(-1)[0] += 1.0
    assert vs.encoder_fingerprint(pipe.image_encoder) != encoders.fingerprint


def _broken_prior(prior: Path, tmp: Path, case: str) -> Path:
    import shutil

    bad = tmp / case
    shutil.copytree(prior, bad)
    if case == "truncated weights":
        weights = bad / "image_encoder" / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif case == "no tokenizer":
        shutil.rmtree(bad / "tokenizer")
    elif case == "empty tokenizer":
        for path in (bad / "tokenizer").iterdir():
            path.unlink()
    elif case == "no image processor":
        shutil.rmtree(bad / "image_processor")
    elif case == "empty folder":
        shutil.rmtree(bad)
        bad.mkdir()
    return bad


BAD_PRIORS = {"truncated weights": "cannot load the image_encoder",
              "no tokenizer": "cannot load the tokenizer",
              "empty tokenizer": "cannot load the tokenizer",
              "no image processor": "neither image_processor/ nor feature_extractor/",
              "empty folder": "cannot load the image_encoder"}


@pytest.mark.parametrize("case", list(BAD_PRIORS))
def test_load_encoders_bad_prior(case, prior, tmp_path):
    """Every broken part is one ValueError naming the prior and the part, found at load time."""
    bad = _broken_prior(prior, tmp_path, case)
    with pytest.raises(ValueError, match=BAD_PRIORS[case]) as info:
        vs.load_encoders(bad, device="cpu")
    assert str(bad) in str(info.value)
    assert "\n" not in str(info.value)


# -- stats compute ----------------------------------------------------------------------------
def test_sums_equal_direct_encode(full_run, dataset, encoders):
    out, _ = full_run
    images, captions = dataset
    stats = vs.load(out)
    readable = [item for item in vs.list_images(images, captions) if item.name not in SKIPPED]
    raw_images = encoders.encode_images([vs.open_image(i.path) for i in readable])  # (N, D)
    raw_texts = encoders.encode_texts([c.text for c in vs.read_captions(captions)])
    for modality, raw in (("image", raw_images), ("text", raw_texts)):
        direct = vslerp.MomentAccumulator(encoders.dim).update(raw)
        got = getattr(stats, modality)
        assert got.count == raw.shape[0]
        for name in direct._SUMS:
            assert torch.allclose(getattr(got.accumulator, name), getattr(direct, name),
                                  rtol=1e-5, atol=1e-4), (modality, name)
        assert torch.allclose(got.mean, raw.double().mean(0), atol=1e-5)
        assert got.covariance().shape == (encoders.dim, encoders.dim)
    meta = stats.metadata
    assert meta["source"] == "dataset" and meta["dataset"] == "tiny-coco"
    assert meta["dim"] == encoders.dim and meta["encoder_fingerprint"] == encoders.fingerprint
    assert meta["model_id"] == str(encoders.model_id)
    assert meta["counts"] == {"image": raw_images.shape[0], "text": raw_texts.shape[0]}
    assert meta["dataset_size"] == {"image": len(readable) + len(SKIPPED),
                                    "text": raw_texts.shape[0]}
    assert meta["skipped"]["count"] == len(SKIPPED)
    reasons = {name: reason for name, reason in meta["skipped"]["items"]}
    assert set(reasons) == set(SKIPPED)
    for name, word in SKIPPED.items():
        assert word in reasons[name]
    assert meta["version"] == vslerp.__version__


def test_statistics_file_round_trip(full_run, tmp_path):
    out, _ = full_run
    stats = vs.load(out)
    copy = tmp_path / "copy.safetensors"
    stats.save(copy)
    again = vs.load(copy)
    assert again.fingerprint == stats.fingerprint and len(stats.fingerprint) == 64
    assert again.metadata == stats.metadata
    _sums_equal(stats, again, exact=True)
    assert [p.name for p in tmp_path.iterdir()] == ["copy.safetensors"]  # no temp left
    mean_unit = stats.image.mean_unit
    assert float(mean_unit.norm()) < 1.0


def test_check_compatible(full_run, encoders):
    stats = vs.load(full_run[0])
    vs.check_compatible(stats, dim=encoders.dim, fingerprint=encoders.fingerprint)
    vs.check_compatible(stats, dim=encoders.dim, fingerprint=None)
    with pytest.raises(ValueError, match="dim 32 .* this encoder's is 1280"):
        vs.check_compatible(stats, dim=1280, fingerprint=None)
    with pytest.raises(ValueError, match="different|recompute"):
        vs.check_compatible(stats, dim=encoders.dim, fingerprint="0" * 64)
    with pytest.raises(TypeError):
        vs.check_compatible("stats.safetensors", dim=32, fingerprint=None)


def test_read_embeddings_pairs_and_sums(full_run, dataset):
    out, emb_dir = full_run
    emb = vs.read_embeddings(emb_dir)
    stats = vs.load(out)
    assert emb.image.shape == (stats.image.count, stats.dim)
    assert emb.text.shape == (stats.text.count, stats.dim)
    assert emb.metadata["encoder_fingerprint"] == stats.metadata["encoder_fingerprint"]
    # every caption of a readable image is paired with it, by COCO image id
    assert emb.pairs.shape == (2 * stats.image.count, 2)
    assert torch.equal(emb.image_ids[emb.pairs[:, 0]], emb.text_image_ids[emb.pairs[:, 1]])
    # the file's sums are the sums of the stored embeddings, chunk by chunk
    acc = vslerp.MomentAccumulator(stats.dim).update(emb.image)  # (Ni, D) at once
    assert torch.allclose(acc.sum_outer, stats.image.accumulator.sum_outer, rtol=1e-12)


def _resume_argv(prior, images, captions, out, emb) -> list[str]:
    """`vslerp stats compute` with embeddings saved in shards of 7 (several shards to kill between)."""
    return ["stats", "compute", "--prior", str(prior), "--out", str(out), "--no-progress",
            "--images", str(images), "--captions", str(captions), "--batch-size", "5",
            "--shard-size", "7", "--num-workers", "0", "--save-embeddings", str(emb),
            "--dataset-name", "tiny-coco"]


def test_resume_after_kill_equals_uninterrupted(full_run, dataset, prior, tmp_path, capsys):
    from vslerp.ui import stats_compute
    from vslerp.ui.cli import build_parser

    images, captions = dataset
    out, emb = tmp_path / "s.safetensors", tmp_path / "emb"
    argv = _resume_argv(prior, images, captions, out, emb)

    class Killed(Exception):
        pass

    for kill_at in (("image", 2), ("text", 3)):  # once among images, once among captions
        def hook(modality, chunk, kill_at=kill_at):
            if (modality, chunk) == kill_at:
                raise Killed

        with pytest.raises(Killed):
            stats_compute.run_compute(build_parser().parse_args(argv), on_shard=hook)
        assert not out.exists()
        with pytest.raises(ValueError, match="incomplete"):
            vs.read_embeddings(emb)
    (emb / ".text-000009.safetensors.abc.tmp").write_bytes(b"half a shard")  # killed mid-write
    assert main(argv) == 0
    _sums_equal(vs.load(out), vs.load(full_run[0]), exact=True)
    resumed, full = vs.read_embeddings(emb), vs.read_embeddings(full_run[1])
    assert torch.equal(resumed.image, full.image) and torch.equal(resumed.text, full.text)
    assert vs.load(out).metadata["skipped"] == vs.load(full_run[0]).metadata["skipped"]
    assert not list(emb.glob(".*.tmp"))
    # a finished folder reruns without encoding anything again and gives the same file
    out.unlink()
    capsys.readouterr()
    assert main(argv) == 0
    n = vs.load(full_run[0]).metadata["counts"]
    assert f"{n['image'] + n['text']} resumed from shards" in capsys.readouterr().out
    _sums_equal(vs.load(out), vs.load(full_run[0]), exact=True)


def test_two_processes_equal_one(full_run, dataset, prior, tmp_path):
    images, captions = dataset
    out = tmp_path / "two.safetensors"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PYTHONWARNINGS": "ignore"}
    with socket.socket() as sock:  # a free rendezvous port: other runs may hold 29500
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
           "--main_process_port", str(port),
           "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
           "--dynamo_backend", "no", "-m", "vslerp.ui.cli", "stats", "compute",
           "--prior", str(prior), "--out", str(out), "--images", str(images),
           "--captions", str(captions), "--batch-size", "5", "--shard-size", "7",
           "--num-workers", "0", "--no-progress", "--dataset-name", "tiny-coco",
           "--device", "cpu"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    two, one = vs.load(out), vs.load(full_run[0])
    assert two.metadata["processes"] == 2
    _sums_equal(two, one, exact=False, rtol=1e-6)  # float32 encoder round-off
    assert two.metadata["skipped"] == one.metadata["skipped"]


def test_captions_only_and_images_only(dataset, prior, tmp_path, encoders):
    images, _ = dataset
    txt = tmp_path / "caps.txt"
    txt.write_text("a red square\na blue circle\n\na green dog\n")
    assert _compute(tmp_path / "t.safetensors", prior, None, txt) == 0
    stats = vs.load(tmp_path / "t.safetensors")
    assert stats.image is None and stats.text.count == 3
    expected = encoders.encode_texts(["a red square", "a blue circle", "a green dog"])
    assert torch.allclose(stats.text.mean, expected.double().mean(0), atol=1e-5)
    assert _compute(tmp_path / "i.safetensors", prior, images / "good", None,
                    "--limit", "5") == 0
    stats = vs.load(tmp_path / "i.safetensors")
    assert stats.text is None and stats.image.count == 5
    assert stats.metadata["dataset"] == "good"


def test_from_prior_mean(prior, tmp_path):
    from diffusers import PriorTransformer

    out = tmp_path / "prior.safetensors"
    assert main(["stats", "compute", "--prior", str(prior), "--from-prior-mean",
                 "--out", str(out)]) == 0
    stats = vs.load(out)
    transformer = PriorTransformer.from_pretrained(prior, subfolder="prior")
    assert stats.metadata["source"] == "prior_clip_mean" and stats.image.count == 0
    assert torch.allclose(stats.image.mean, transformer.clip_mean.double().flatten())
    assert torch.allclose(stats.image.std(), transformer.clip_std.double().flatten())
    with pytest.raises(ValueError, match="only a mean"):
        stats.image.covariance()
    # the prior's image-encoder fingerprint is recorded: another model of the same dim is refused
    encoders = vs.load_encoders(prior, device="cpu", text=False)
    assert stats.metadata["encoder_fingerprint"] == encoders.fingerprint
    vs.check_compatible(stats, dim=encoders.dim, fingerprint=encoders.fingerprint)
    with pytest.raises(ValueError, match="recompute"):
        vs.check_compatible(stats, dim=encoders.dim, fingerprint="0" * 64)
    assert stats.image.offset() == pytest.approx(
        float(transformer.clip_mean.detach().double().norm()
              / transformer.clip_std.detach().double().norm()))
    for measure in ("rms_centered", "mean_norm"):
        with pytest.raises(ValueError, match="only a mean"):
            getattr(stats.image, measure)
    with pytest.raises(ValueError, match="only a mean"):
        stats.image.off_diagonal_dominance()
    direct = vs.Statistics.from_prior(transformer, model_id="x")
    assert direct.metadata["model_id"] == "x" and direct.image.accumulator is None
    from_tensor = vs.Statistics.from_mean(torch.ones(4))
    assert from_tensor.metadata["source"] == "tensor" and from_tensor.dim == 4
    with pytest.raises(ValueError, match="zero vector"):
        vs.Statistics.from_mean(torch.zeros(4))


# -- CLI errors -------------------------------------------------------------------------------
def _bad_json(tmp: Path) -> list[str]:
    (tmp / "bad.json").write_text("{not json")
    return ["--captions", str(tmp / "bad.json")]


def _not_coco(tmp: Path) -> list[str]:
    (tmp / "list.json").write_text(json.dumps([{"caption": "x"}]))
    return ["--captions", str(tmp / "list.json")]


def _empty_folder(tmp: Path) -> list[str]:
    (tmp / "empty").mkdir()
    return ["--images", str(tmp / "empty")]


def _empty_txt(tmp: Path) -> list[str]:
    (tmp / "e.txt").write_text("\n\n")
    return ["--captions", str(tmp / "e.txt")]


def _out_exists(tmp: Path) -> list[str]:
    (tmp / "out.safetensors").write_bytes(b"old")
    return ["--captions", str(tmp / "e.txt")]


CLI_ERRORS = {
    "no inputs": (lambda tmp: [], "--images DIR and/or --captions"),
    "images missing": (lambda tmp: ["--images", str(tmp / "nope")], "not a folder"),
    "captions missing": (lambda tmp: ["--captions", str(tmp / "nope.json")], "not found"),
    "malformed json": (_bad_json, "not valid JSON"),
    "not coco": (_not_coco, "not in COCO format"),
    "empty folder": (_empty_folder, "no images found"),
    "empty captions": (_empty_txt, "no captions"),
    "bad prior": (lambda tmp: ["--captions", str(tmp / "c.txt"), "--prior", str(tmp)],
                  "cannot load the image_encoder"),
    "prior mean with data": (lambda tmp: ["--from-prior-mean", "--captions",
                                          str(tmp / "c.txt")], "uses no data"),
    "out not safetensors": (lambda tmp: ["--captions", str(tmp / "c.txt"), "--out",
                                         str(tmp / "x.pt")], ".safetensors"),
    "bad batch size": (lambda tmp: ["--captions", str(tmp / "c.txt"), "--batch-size", "0"],
                       "must be ≥ 1"),
}


@pytest.mark.parametrize("case", list(CLI_ERRORS))
def test_cli_errors(case, prior, tmp_path, capsys):
    (tmp_path / "c.txt").write_text("a caption\n")
    make, message = CLI_ERRORS[case]
    extra = make(tmp_path)
    out = tmp_path / "out.safetensors"
    argv = ["stats", "compute", "--prior", str(prior), "--out", str(out), "--no-progress"]
    with pytest.raises(SystemExit) if case == "bad batch size" else _nullcontext() as exit_info:
        rc = main(argv + extra)
    if case == "bad batch size":
        rc = exit_info.value.code
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and message in err[0], err
    assert not out.exists() and not (tmp_path / "x.pt").exists()


def test_cli_error_out_exists_and_other_embeddings(prior, tmp_path, capsys, dataset):
    (tmp_path / "c.txt").write_text("a caption\n")
    out = tmp_path / "out.safetensors"
    out.write_bytes(b"old")
    rc = _compute(out, prior, None, tmp_path / "c.txt")
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "exists" in err[0] and out.read_bytes() == b"old"
    # embeddings folder of another run (different captions) is refused, not mixed
    emb = tmp_path / "emb"
    out2 = tmp_path / "a.safetensors"
    assert _compute(out2, prior, None, tmp_path / "c.txt", "--save-embeddings", emb) == 0
    capsys.readouterr()
    (tmp_path / "d.txt").write_text("another caption\n")
    out3 = tmp_path / "b.safetensors"
    rc = _compute(out3, prior, None, tmp_path / "d.txt", "--save-embeddings", emb)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "another run" in err[0] and not out3.exists()
    assert _compute(out3, prior, None, tmp_path / "d.txt", "--save-embeddings", emb,
                    "--overwrite") == 0
    assert vs.read_embeddings(emb).text.shape[0] == 1


def test_all_images_unreadable(dataset, prior, tmp_path, capsys):
    images, _ = dataset
    rc = _compute(tmp_path / "o.safetensors", prior, images / "broken")
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "none of the 3 images" in err[0]
    assert not (tmp_path / "o.safetensors").exists()


class _nullcontext:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def test_load_and_read_embeddings_errors(tmp_path):
    from safetensors.torch import save_file

    with pytest.raises(FileNotFoundError, match="not found"):
        vs.load(tmp_path / "nope.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file at all")
    with pytest.raises(ValueError, match="not a readable safetensors"):
        vs.load(tmp_path / "junk.safetensors")
    save_file({"x": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="not a vslerp statistics file"):
        vs.load(tmp_path / "other.safetensors")
    with pytest.raises(FileNotFoundError, match="manifest"):
        vs.read_embeddings(tmp_path)
    stats = vs.Statistics.from_mean(torch.arange(1.0, 5.0), model_id="m")
    for key in ("dataset", "dataset_size", "skipped", "counts", "version", "source"):
        assert key in stats.metadata


# -- unCLIP / Karlo layout (feature_extractor/) ------------------------------------------------
@pytest.fixture(scope="module")
def unclip_dir(tiny_unclip):
    return tiny_unclip


def test_unclip_stats_compute_feeds_the_unclip_pipeline(unclip_dir, dataset, tmp_path, capsys):
    from vslerp.pipelines import VSlerpPipeline

    images, captions = dataset
    out = tmp_path / "karlo.safetensors"
    assert _compute(out, unclip_dir, images / "good", None, "--limit", "6") == 0
    stats = vs.load(out)
    encoders = vs.load_encoders(unclip_dir, device="cpu")  # feature_extractor/ + tokenizer/
    assert stats.image.count == 6 and stats.dim == encoders.dim
    assert stats.metadata["encoder_fingerprint"] == encoders.fingerprint
    pipe = VSlerpPipeline.from_pretrained(unclip_dir, stats=out, device=None)
    assert torch.equal(pipe.statistics.image.mean, stats.image.mean)
    raw = encoders.encode_images([vs.open_image(images / "good/000.png")])
    assert torch.allclose(raw, pipe.encode_image([vs.open_image(images / "good/000.png")]).cpu(),
                          atol=1e-5)
    assert encoders.encode_texts(["a cat"]).shape == (1, encoders.dim)
    # --from-prior-mean: Karlo has no prior clip_mean, said in one line
    capsys.readouterr()
    rc = main(["stats", "compute", "--prior", str(unclip_dir), "--from-prior-mean",
               "--out", str(tmp_path / "m.safetensors")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "unCLIP/Karlo has no clip_mean" in err[0]


@pytest.mark.parametrize("argv", [["stats", "compute"], ["conformity"]])
def test_prior_help_names_both_layouts(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main([*argv, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert info.value.code == 0
    assert "unCLIP/Karlo" in text and "Kandinsky 2.2 prior" in text
    assert "example" in text and "(default: " in text


# -- one line, exit 2, before any work ------------------------------------------------------------
def _run_error(argv, capsys) -> str:
    capsys.readouterr()
    rc = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    return err[0]


@pytest.mark.parametrize("device", ["cuda", "banana"] if not torch.cuda.is_available()
                         else ["banana", "cuda:99"])
def test_bad_device_is_one_line(device, prior, tmp_path, capsys):
    (tmp_path / "c.txt").write_text("a caption\n")
    line = _run_error(["stats", "compute", "--prior", str(tmp_path / "no-prior"),
                       "--captions", str(tmp_path / "c.txt"), "--device", device,
                       "--out", str(tmp_path / "o.safetensors"), "--no-progress"], capsys)
    assert line.startswith("vslerp stats compute: error: --device") and repr(device) in line
    assert not (tmp_path / "o.safetensors").exists()


def _out_under_file(tmp: Path) -> list[str]:
    (tmp / "afile").write_text("x")
    return ["--out", str(tmp / "afile" / "sub" / "o.safetensors")]


def _out_is_folder(tmp: Path) -> list[str]:
    (tmp / "dir.safetensors").mkdir()
    return ["--out", str(tmp / "dir.safetensors")]


def _embeddings_under_file(tmp: Path) -> list[str]:
    (tmp / "afile").write_text("x")
    return ["--out", str(tmp / "o.safetensors"), "--save-embeddings", str(tmp / "afile" / "emb")]


UNWRITABLE = {"out under a file": (_out_under_file, "afile is not a folder"),
              "out is a folder": (_out_is_folder, "is a folder"),
              "embeddings under a file": (_embeddings_under_file, "afile is not a folder")}


@pytest.mark.parametrize("case", list(UNWRITABLE))
def test_unwritable_output_found_before_loading(case, tmp_path, capsys):
    """The output check runs first: a prior that does not exist is never reached."""
    (tmp_path / "c.txt").write_text("a caption\n")
    make, message = UNWRITABLE[case]
    line = _run_error(["stats", "compute", "--prior", str(tmp_path / "no-prior"),
                       "--captions", str(tmp_path / "c.txt"), "--no-progress",
                       *make(tmp_path)], capsys)
    assert message in line and "no-prior" not in line, line
    assert ".o-" not in line  # no temporary name leaks


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux /proc")
def test_check_writable_probes_the_folder(tmp_path):
    assert vs.check_writable(tmp_path / "new" / "deeper" / "x.safetensors")
    assert not (tmp_path / "new").exists()  # nothing created
    with pytest.raises(ValueError, match="not writable"):
        vs.check_writable(Path("/proc/vslerp-test/out.safetensors"))  # even root cannot


# -- the derived §4 measures of vslerp.stats.load(...) ---------------------------------------------
def test_loaded_statistics_give_the_section_4_measures(full_run):
    import numpy as np

    out, emb_dir = full_run
    stats, emb = vs.load(out), vs.read_embeddings(emb_dir)
    for name in ("image", "text"):
        mod, x = getattr(stats, name), getattr(emb, name).double()  # (N, D)
        m = x.mean(0)
        assert mod.rms_centered == pytest.approx(vslerp.thin_shell(x, m)["rms"], rel=1e-6)
        assert mod.mean_norm == pytest.approx(float(x.norm(dim=1).mean()), rel=1e-9)
        std = x.std(0)
        assert mod.offset() == pytest.approx(float(m.norm() / std.norm()), rel=1e-6)
        cov = np.cov(x.numpy(), rowvar=False)
        odd = (np.abs(cov).sum(1) - np.diag(cov)) / np.diag(cov)
        np.testing.assert_allclose(mod.off_diagonal_dominance().numpy(), odd, rtol=1e-5)
        np.testing.assert_allclose(mod.variance().numpy(), np.diag(cov), rtol=1e-6)
        fit = mod.conformity_coefficients()
        exact = vslerp.conformity(x)
        est = fit.a * vslerp.cosine_to_mean(x, mod.mean_unit) + fit.b
        assert torch.allclose(est, exact, atol=1e-9)
    i, t = emb.image.double(), emb.text.double()
    sep = (i.mean(0) - t.mean(0)).abs() / (i.var(0) + t.var(0)).sqrt()
    assert torch.allclose(stats.separability(), sep, rtol=1e-6)
    assert stats.top_features(3) == sep.topk(3).indices.tolist()
    with pytest.raises(ValueError, match="image and text"):
        vs.Statistics(stats.image, None).separability()


# -- resume after a real kill ---------------------------------------------------------------------
def test_resume_after_sigkill(full_run, dataset, prior, tmp_path):
    """SIGKILL right after the 3rd shard (test hook), then the same command finishes the run."""
    from vslerp.stats.embeddings import TEST_KILL_ENV

    images, captions = dataset
    out, emb = tmp_path / "s.safetensors", tmp_path / "emb"
    argv = _resume_argv(prior, images, captions, out, emb)
    code = "import sys; from vslerp.ui.cli import main; sys.exit(main(sys.argv[1:]))"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", TEST_KILL_ENV: "3"}
    proc = subprocess.run([sys.executable, "-c", code, *argv], env=env, capture_output=True,
                          text=True, timeout=180)
    assert proc.returncode == -9, proc.stderr[-2000:]  # killed, not exited
    assert sorted(p.name for p in emb.glob("*-??????.safetensors")) == [
        "image-000000.safetensors", "image-000001.safetensors", "image-000002.safetensors"]
    assert not out.exists()
    assert json.loads((emb / "manifest.json").read_text())["complete"] is False
    (emb / ".image-000003-k1ll3d.safetensors").write_bytes(b"half a shard")  # killed mid-write
    assert main(argv) == 0
    _sums_equal(vs.load(out), vs.load(full_run[0]), exact=True)
    resumed, full = vs.read_embeddings(emb), vs.read_embeddings(full_run[1])
    assert torch.equal(resumed.image, full.image) and torch.equal(resumed.text, full.text)
    assert [p.name for p in emb.iterdir()  # no temporaries (the run's lock file stays)
            if p.name.startswith(".") and p.name != ".vslerp.lock"] == []
