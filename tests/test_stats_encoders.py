"""`vslerp stats compute --model / --ip-adapter / --clip`: statistics through any generator's
image encoder (Kandinsky 2.2, Stable unCLIP, SD + IP-Adapter, a plain CLIPModel), the text
side from a matching --clip only, and statistics keyed by the encoder's fingerprint.

Each file's mean is checked against the embeddings of that encoder computed directly with
transformers (or diffusers' own ``encode_image`` after ``load_ip_adapter``). Tiny random models.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

import vslerp.stats as vs
from vslerp.stats.models import parse_ip_adapter
from vslerp.ui.cli import main

WEIGHT = "ip-adapter_sd15.safetensors"
CAPTIONS = ["a red square", "two blue circles", "noise"]


@pytest.fixture(scope="module")
def models(tiny_kandinsky, tmp_path_factory):
    from vslerp.pipelines.testing_clip import make_tiny_clip_model
    from vslerp.pipelines.testing_sd import (
        make_tiny_ip_adapter,
        make_tiny_sd,
        make_tiny_stable_unclip,
    )

    root = tmp_path_factory.mktemp("encoders")
    prior, decoder = tiny_kandinsky
    stable_unclip = make_tiny_stable_unclip(root)
    sd = make_tiny_sd(root)
    ip = make_tiny_ip_adapter(root, sd, weight_name=WEIGHT)
    return {"prior": prior, "decoder": decoder, "stable_unclip": stable_unclip, "sd": sd, "ip": ip,
            "clip_su": make_tiny_clip_model(root, vision_from=stable_unclip, name="clip_su"),
            "clip_ip": make_tiny_clip_model(root, vision_from=ip / "models", name="clip_ip"),
            "clip_k": make_tiny_clip_model(root, vision_from=prior, name="clip_k"),
            "clip": make_tiny_clip_model(root, seed=1, name="clip")}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    gen = torch.Generator().manual_seed(0)
    (root / "images").mkdir()
    for i in range(3):
        pixels = (torch.rand(28 + 4 * i, 36, 3, generator=gen) * 255).to(torch.uint8).numpy()
        Image.fromarray(pixels).save(root / "images" / f"{i}.png")
    (root / "captions.txt").write_text("\n".join(CAPTIONS) + "\n")
    return root / "images", root / "captions.txt"


def _images(folder: Path):
    return [vs.open_image(p) for p in sorted(folder.glob("*.png"))]


def _run(tmp_path, *args, captions=None, images=None, name="s.safetensors"):
    out = tmp_path / name
    argv = ["stats", "compute", "--out", str(out), "--no-progress", "--num-workers", "0",
            "--device", "cpu", *[str(a) for a in args]]
    if images is not None:
        argv += ["--images", str(images)]
    if captions is not None:
        argv += ["--captions", str(captions)]
    return main(argv), out


def _encoder(folder, subfolder=None):
    from transformers import CLIPVisionModelWithProjection

    where = {"subfolder": subfolder} if subfolder else {}
    return CLIPVisionModelWithProjection.from_pretrained(folder, **where).eval()


def _processor(folder, subfolder=None):
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor.from_pretrained(folder, **({"subfolder": subfolder} if subfolder else {}))


@torch.no_grad()
def _image_mean(encoder, processor, images) -> torch.Tensor:
    pixels = processor(_images(images), return_tensors="pt").pixel_values
    return encoder(pixel_values=pixels).image_embeds.double().mean(0)


@torch.no_grad()
def _text_mean(folder, subfolder=None) -> torch.Tensor:
    from transformers import CLIPTextModelWithProjection, CLIPTokenizer

    where = (lambda s: {"subfolder": s}) if subfolder else (lambda s: {})
    text = CLIPTextModelWithProjection.from_pretrained(folder, **where("text_encoder")).eval()
    tokenizer = CLIPTokenizer.from_pretrained(folder, **where("tokenizer"))
    tokens = tokenizer(CAPTIONS, padding="max_length", max_length=tokenizer.model_max_length,
                       truncation=True, return_tensors="pt")
    return text(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask).text_embeds.double().mean(0)


def _close(stats_mean, ref):
    assert torch.allclose(stats_mean.double(), ref, atol=1e-5), (stats_mean[:4], ref[:4])


# -- the --ip-adapter value --------------------------------------------------------------------
def test_parse_ip_adapter():
    assert parse_ip_adapter("h94/IP-Adapter:models/ip-adapter_sd15.safetensors") == (
        "h94/IP-Adapter", "models", "ip-adapter_sd15.safetensors")
    assert parse_ip_adapter("h94/IP-Adapter:sdxl_models/ip-adapter_sdxl.bin") == (
        "h94/IP-Adapter", "sdxl_models", "ip-adapter_sdxl.bin")
    assert parse_ip_adapter("C:\\adapters:a/b/w.safetensors") == ("C:\\adapters", "a/b", "w.safetensors")
    assert parse_ip_adapter("XLabs-AI/flux-ip-adapter:ip_adapter.safetensors") == (
        "XLabs-AI/flux-ip-adapter", "", "ip_adapter.safetensors")  # XLabs' weight at the root
    for bad in ("h94/IP-Adapter", "h94/IP-Adapter:ip-adapter_sd15.txt", ":models/w.safetensors",
                "h94/IP-Adapter:models/", "h94/IP-Adapter:models/w.txt", "x:../w.safetensors"):
        with pytest.raises(ValueError) as err:
            parse_ip_adapter(bad)
        assert str(err.value).startswith(f"--ip-adapter must be REPO_OR_DIR:[SUBFOLDER/]WEIGHT.safetensors, got {bad!r} (")
        assert "\n" not in str(err.value)


@pytest.mark.parametrize("value", ["h94/IP-Adapter", "h94/IP-Adapter:w.txt"])
def test_malformed_ip_adapter_is_one_line_before_loading(value, models, data, tmp_path, capsys, monkeypatch):
    import vslerp.stats.generators as generators

    def never(*a, **k):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(generators, "load_generator_encoders", never)
    monkeypatch.setattr(generators, "generator_layout", never)
    rc, out = _run(tmp_path, "--model", models["sd"], "--ip-adapter", value, images=data[0])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0 and not out.exists()
    assert len(err) == 1 and err[0].startswith(
        "vslerp stats compute: error: --ip-adapter must be REPO_OR_DIR:[SUBFOLDER/]WEIGHT.safetensors, got"), err


# -- each layout: the file's image mean is that encoder's ----------------------------------------
def test_kandinsky_prior_and_decoder(models, data, tmp_path, capsys):
    images, captions = data
    rc, out = _run(tmp_path, "--model", models["prior"], images=images, captions=captions)
    assert rc == 0
    stats = vs.load(out)
    _close(stats.image.mean, _image_mean(_encoder(models["prior"], "image_encoder"),
                                         _processor(models["prior"], "image_processor"), images))
    _close(stats.text.mean, _text_mean(models["prior"], subfolder=True))
    assert stats.metadata["layout"] == "kandinsky2.2-prior"
    capsys.readouterr()
    rc, out2 = _run(tmp_path, "--model", models["decoder"], "--prior", models["prior"], images=images,
                    name="d.safetensors")
    assert rc == 0 and "is a Kandinsky 2.2 decoder: its CLIP encoders are its prior's" in capsys.readouterr().out
    assert torch.equal(vs.load(out2).image.mean, stats.image.mean)


def test_stable_unclip_image_only_with_a_note(models, data, tmp_path, capsys):
    images, captions = data
    rc, out = _run(tmp_path, "--model", models["stable_unclip"], images=images, captions=captions)
    assert rc == 0
    stdout = capsys.readouterr().out
    assert stdout.count("note: ") == 1 and "text side skipped, image statistics only" in stdout
    stats = vs.load(out)
    assert stats.text is None and stats.metadata["layout"] == "stable-unclip"
    _close(stats.image.mean, _image_mean(_encoder(models["stable_unclip"], "image_encoder"),
                                         _processor(models["stable_unclip"], "feature_extractor"), images))
    with pytest.raises(ValueError, match="needs image and text statistics; these have only image"):
        stats.separability()


def test_stable_unclip_text_from_a_matching_clip(models, data, tmp_path):
    images, captions = data
    rc, out = _run(tmp_path, "--model", models["stable_unclip"], "--clip", models["clip_su"],
                   images=images, captions=captions)
    assert rc == 0
    stats = vs.load(out)
    _close(stats.image.mean, _image_mean(_encoder(models["stable_unclip"], "image_encoder"),
                                         _processor(models["stable_unclip"], "feature_extractor"), images))
    _close(stats.text.mean, _text_mean(models["clip_su"]))
    assert stats.metadata["clip"] == str(models["clip_su"]) and stats.text.count == len(CAPTIONS)


def test_mismatched_clip_is_refused(models, data, tmp_path, capsys):
    rc, out = _run(tmp_path, "--model", models["stable_unclip"], "--clip", models["clip"],
                   images=data[0], captions=data[1])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0 and not out.exists() and len(err) == 1, err
    assert f"--clip {models['clip']}: its vision tower" in err[0]
    assert f"is not the image encoder of {models['stable_unclip']}" in err[0]


def test_sd_with_ip_adapter_matches_diffusers_encode_image(models, data, tmp_path):
    from diffusers import StableDiffusionPipeline

    images, captions = data
    rc, out = _run(tmp_path, "--model", models["sd"], "--ip-adapter", f"{models['ip']}:models/{WEIGHT}",
                   "--clip", models["clip_ip"], images=images, captions=captions)
    assert rc == 0
    pipe = StableDiffusionPipeline.from_pretrained(models["sd"], safety_checker=None)
    pipe.load_ip_adapter(str(models["ip"]), subfolder="models", weight_name=WEIGHT)
    with torch.no_grad():
        ref = pipe.encode_image(_images(images), "cpu", 1)[0].double().mean(0)
    stats = vs.load(out)
    _close(stats.image.mean, ref)
    _close(stats.text.mean, _text_mean(models["clip_ip"]))
    assert stats.metadata["ip_adapter"] == f"{models['ip']}:models/{WEIGHT}"
    assert stats.metadata["encoder_fingerprint"] == vs.encoder_fingerprint(pipe.image_encoder)


def test_sd_needs_ip_adapter_and_ip_adapter_needs_sd(models, data, tmp_path, capsys):
    rc, _ = _run(tmp_path, "--model", models["sd"], images=data[0])
    assert rc != 0 and "give --ip-adapter REPO_OR_DIR:[SUBFOLDER/]WEIGHT" in capsys.readouterr().err
    rc, _ = _run(tmp_path, "--model", models["stable_unclip"], "--ip-adapter",
                 f"{models['ip']}:models/{WEIGHT}", images=data[0])
    assert rc != 0 and "--ip-adapter is for a Stable Diffusion / SDXL / FLUX.1 base" in capsys.readouterr().err
    rc, _ = _run(tmp_path, "--model", models["sd"], "--ip-adapter", f"{models['ip']}:models/missing.safetensors",
                 images=data[0])
    assert rc != 0 and "missing.safetensors is not a file" in capsys.readouterr().err


def test_sdxl_layout_is_read_from_model_index(tmp_path):
    from vslerp.stats.generators import generator_layout

    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionXLPipeline"}))
    assert generator_layout(tmp_path) == "ip-adapter-sdxl"


def test_clip_model_alone_gives_both_towers(models, data, tmp_path):
    from transformers import CLIPModel, CLIPProcessor

    images, captions = data
    rc, out = _run(tmp_path, "--clip", models["clip"], images=images, captions=captions)
    assert rc == 0
    model = CLIPModel.from_pretrained(models["clip"]).eval()
    processor = CLIPProcessor.from_pretrained(models["clip"])
    with torch.no_grad():
        feats = model.get_image_features(**processor(images=_images(images), return_tensors="pt"))
    feats = feats if isinstance(feats, torch.Tensor) else feats.pooler_output
    stats = vs.load(out)
    _close(stats.image.mean, feats.double().mean(0))
    _close(stats.text.mean, _text_mean(models["clip"]))
    assert stats.metadata["layout"] == "clip"


def test_from_prior_mean_is_kandinsky_only(models, tmp_path, capsys):
    rc, out = _run(tmp_path, "--model", models["stable_unclip"], "--from-prior-mean")
    assert rc != 0 and not out.exists()
    assert "--from-prior-mean is Kandinsky 2.2 only" in capsys.readouterr().err
    rc, out = _run(tmp_path, "--model", models["prior"], "--from-prior-mean")
    assert rc == 0 and vs.load(out).metadata["source"] == "prior_clip_mean"


# -- statistics are keyed by the encoder, not the model id ---------------------------------------
def test_statistics_fit_every_model_with_that_encoder(models, data, tmp_path):
    from transformers import CLIPVisionModelWithProjection

    from vslerp.pipelines import VSlerpPipeline

    images, _ = data
    assert _run(tmp_path, "--model", models["prior"], images=images, name="k.safetensors")[0] == 0
    assert _run(tmp_path, "--clip", models["clip_k"], images=images, name="c.safetensors")[0] == 0
    assert _run(tmp_path, "--model", models["stable_unclip"], images=images, name="u.safetensors")[0] == 0
    kandinsky, clip, other = (vs.load(tmp_path / n) for n in ("k.safetensors", "c.safetensors", "u.safetensors"))
    assert kandinsky.metadata["model_id"] != clip.metadata["model_id"]
    # a Kandinsky-prior file on the same weights under another id (the CLIP they came from)
    same = CLIPVisionModelWithProjection.from_pretrained(models["clip_k"])
    vs.check_compatible(kandinsky, dim=32, fingerprint=vs.encoder_fingerprint(same), model=str(models["clip_k"]))
    pipe = VSlerpPipeline.from_pretrained(models["decoder"], prior=models["prior"], device=None)
    assert pipe.check_statistics(tmp_path / "c.safetensors").metadata["model_id"] == str(models["clip_k"])
    _close(clip.image.mean, kandinsky.image.mean.double())
    with pytest.raises(ValueError, match="another embedding space; recompute them with `vslerp stats compute --model"):
        pipe.check_statistics(tmp_path / "u.safetensors")
    fp = other.metadata["encoder_fingerprint"][:12]
    with pytest.raises(ValueError, match=f"image encoder {fp} .* but this encoder \\(x\\) is"):
        vs.check_compatible(other, dim=32, fingerprint=vs.encoder_fingerprint(same), model="x")


def test_sdxl_vit_h_adapter_uses_the_vit_h_encoder(models, data, tmp_path, capsys):
    """h94/IP-Adapter's sdxl_models/*_vit-h* adapters run on models/image_encoder (ViT-H/14)."""
    import shutil

    ip = tmp_path / "ip"
    shutil.copytree(models["ip"], ip)
    (ip / "sdxl_models").mkdir()
    shutil.copy(ip / "models" / WEIGHT, ip / "sdxl_models" / "ip-adapter_sdxl_vit-h.safetensors")
    base = tmp_path / "sdxl"
    base.mkdir()
    (base / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionXLPipeline"}))
    rc, out = _run(tmp_path, "--model", base, "--ip-adapter", f"{ip}:sdxl_models/ip-adapter_sdxl_vit-h.safetensors",
                   images=data[0])
    assert rc == 0 and "image encoder models/image_encoder" in capsys.readouterr().out
    stats = vs.load(out)
    assert stats.metadata["layout"] == "ip-adapter-sdxl"
    from transformers import CLIPImageProcessor

    encoder = _encoder(ip, "models/image_encoder")  # load_ip_adapter's processor for it:
    _close(stats.image.mean, _image_mean(encoder, CLIPImageProcessor(size=32, crop_size=32), data[0]))


def test_clip_sub_configs_without_projection_dim(models, data, tmp_path):
    """A CLIPModel config.json whose sub-configs omit projection_dim: both towers still project to
    the model's projection_dim (not transformers' default 512)."""
    import shutil

    clip = tmp_path / "clip"
    shutil.copytree(models["clip_su"], clip)
    config = json.loads((clip / "config.json").read_text())
    for sub in ("vision_config", "text_config"):
        config[sub].pop("projection_dim", None)
    (clip / "config.json").write_text(json.dumps(config))
    rc, out = _run(tmp_path, "--model", models["stable_unclip"], "--clip", clip, images=data[0],
                   captions=data[1])
    assert rc == 0 and vs.load(out).text.dim == 32


def test_clip_must_be_a_clip_model(models, data, tmp_path, capsys):
    rc, _ = _run(tmp_path, "--clip", models["stable_unclip"] / "image_encoder", images=data[0])
    assert rc != 0 and "not a transformers CLIPModel" in capsys.readouterr().err


def test_image_only_embeddings_report_says_what_is_missing(models, data, tmp_path, capsys):
    emb = tmp_path / "emb"
    rc, _ = _run(tmp_path, "--model", models["stable_unclip"], "--save-embeddings", emb, images=data[0],
                 captions=data[1])
    assert rc == 0 and vs.read_embeddings(emb).text.shape[0] == 0
    capsys.readouterr()
    assert main(["stats", "report", "--embeddings", str(emb), "--out-dir", str(tmp_path / "rep")]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds 0 text embedding(s)" in err[0], err


def test_conformity_scores_through_any_generator(models, data, tmp_path, capsys):
    """`vslerp conformity --model` takes the generators `stats compute` does: images scored
    through Stable unCLIP's encoder equal the estimator on that encoder's embeddings; captions
    need a text side (--clip) there, one line otherwise."""
    from vslerp.stats.scoring import estimated_conformity

    images, captions = data
    code, stats = _run(tmp_path, "--model", models["stable_unclip"], images=images)
    assert code == 0
    out = tmp_path / "scores.csv"
    argv = ["conformity", "--stats", str(stats), "--model", str(models["stable_unclip"]), "--out", str(out),
            "--no-progress", "--num-workers", "0", "--device", "cpu"]
    assert main([*argv, "--images", str(images)]) == 0
    rows = [line.split(",") for line in out.read_text().splitlines() if line and not line.startswith("#")][1:]
    encoders = vs.ClipEncoders(_encoder(models["stable_unclip"], "image_encoder"),
                               vs.encode.clip_image_processor_class().from_pretrained(
                                   models["stable_unclip"], subfolder="feature_extractor"))
    expected, _, _ = estimated_conformity(encoders.encode_images(_images(images)), vs.load(stats).image)
    torch.testing.assert_close(torch.tensor([float(r[-1]) for r in rows]), expected, rtol=1e-4, atol=1e-5)
    code, both = _run(tmp_path, "--model", models["stable_unclip"], "--clip", models["clip_su"], images=images,
                      captions=captions, name="both.safetensors")
    assert code == 0
    argv[2] = str(both)
    capsys.readouterr()
    assert main([*argv, "--captions", str(captions), "--overwrite"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no projected text encoder" in err[0] and "--clip" in err[0]
    assert main([*argv, "--captions", str(captions), "--overwrite", "--clip", str(models["clip_su"])]) == 0
