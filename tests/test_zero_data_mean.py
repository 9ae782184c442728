"""Zero-data image means for Karlo (its prior's clip_mean) and Stable unCLIP (its image_normalizer),
prompt targets through Karlo's prior exactly as diffusers' UnCLIPPipeline makes them, and
`vslerp stats report --compare-mean` (issue 24, the zero-data part)."""

from __future__ import annotations

import contextlib
import io
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from vslerp.pipelines import STATISTICS_FILE, VSlerpPipeline
from vslerp.pipelines.testing import TINY_DIM, make_tiny_karlo
from vslerp.pipelines.testing_sd import make_tiny_stable_unclip
from vslerp.ui.cli import main

UNCLIP = {"num_inference_steps": 2, "super_res_num_inference_steps": 2, "output_type": "np"}
SD = {"num_inference_steps": 2, "height": 64, "width": 64, "output_type": "np"}


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _emb(seed: int) -> torch.Tensor:
    return torch.randn(TINY_DIM, generator=_gen(3000 + seed))  # (D,) raw


def _cli(argv) -> tuple[int, list[str]]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, err.getvalue().strip().splitlines()


@pytest.fixture(scope="module")
def karlo(tmp_path_factory):
    """(Karlo text-to-image folder, its image-variations folder)."""
    return make_tiny_karlo(tmp_path_factory.mktemp("karlo"))


@pytest.fixture(scope="module")
def karlo_pipe(karlo):
    prior, variations = karlo
    pipe = VSlerpPipeline.from_pretrained(variations, prior=prior, device=None)  # no stats=
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def sd_models(tmp_path_factory):
    """(a -small-like Stable unCLIP with a non-trivial normaliser, an -H-like identity one)."""
    root = tmp_path_factory.mktemp("stable_unclip")
    return make_tiny_stable_unclip(root / "small", clip_stats=True), make_tiny_stable_unclip(root / "h")


# -- Karlo ----------------------------------------------------------------------------------
def test_karlo_mean_is_its_priors_clip_mean_and_stats_still_win(karlo, karlo_pipe):
    info = karlo_pipe.describe()
    assert info["backend"] == "unclip" and info["mean_source"] == "prior_clip_mean"
    assert info["prior"] == str(karlo[0]) and info["stats_model_id"] == str(karlo[0])
    clip_mean = karlo_pipe.prior.clip_mean.reshape(-1).float()
    assert clip_mean.abs().sum() > 0
    torch.testing.assert_close(karlo_pipe.image_mean, clip_mean)
    given = VSlerpPipeline.from_pretrained(karlo[1], prior=karlo[0], stats=_emb(1), device=None)
    assert given.describe()["mean_source"] == "tensor"
    torch.testing.assert_close(given.image_mean, _emb(1))
    assert karlo_pipe.describe(statistics=_emb(2))["mean_source"] == "tensor"  # per call too


def test_karlo_prompt_embeddings_are_unclip_pipelines(karlo_pipe):
    """UnCLIPPipeline on the same components and generator hands text_proj the same embeddings."""
    from diffusers import UnCLIPPipeline

    parts = {k: v for k, v in karlo_pipe.components.items() if k not in ("feature_extractor", "image_encoder")}
    reference = UnCLIPPipeline(**parts)
    reference.set_progress_bar_config(disable=True)
    seen = []
    hook = reference.text_proj.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["image_embeddings"].detach().clone()), with_kwargs=True)
    try:
        for guidance in (4.0, 1.0):  # guided, and unguided (then UnCLIPPipeline's decoder must not guide)
            seen.clear()
            reference(["a red bicycle", "a cat"], prior_num_inference_steps=3, prior_guidance_scale=guidance,
                      decoder_guidance_scale=guidance if guidance <= 1 else 8.0, decoder_num_inference_steps=2,
                      super_res_num_inference_steps=2, generator=_gen(7), output_type="np")
            ours = karlo_pipe.prompt_to_image_embedding(["a red bicycle", "a cat"], generator=_gen(7),
                                                        num_inference_steps=3, guidance_scale=guidance)
            assert ours.shape == (2, TINY_DIM) and torch.equal(ours, seen[0].float())
    finally:
        hook.remove()
    # a prompt target goes through it: the θ = 1, α = 0 cell is that embedding
    out = karlo_pipe(_emb(3), "a red bicycle", thetas=[0.0, 1.0], alphas=[0.0], generator=_gen(7),
                     prior_num_inference_steps=3, **UNCLIP)
    expected = karlo_pipe.prompt_to_image_embedding("a red bicycle", generator=_gen(7), num_inference_steps=3)
    torch.testing.assert_close(out.embeddings[1, 0], expected[0])
    assert out.images.shape == (2, 64, 64, 3)


def test_saved_karlo_pipeline_keeps_its_prior(karlo_pipe, tmp_path):
    karlo_pipe.save_pretrained(tmp_path / "saved")
    assert (tmp_path / "saved" / "prior").is_dir() and (tmp_path / "saved" / "prior_scheduler").is_dir()
    (tmp_path / "saved" / STATISTICS_FILE).unlink()  # the mean must come from the saved prior itself
    loaded = VSlerpPipeline.from_pretrained(tmp_path / "saved", device=None)
    loaded.set_progress_bar_config(disable=True)
    assert loaded.describe()["mean_source"] == "prior_clip_mean"
    torch.testing.assert_close(loaded.image_mean, karlo_pipe.image_mean)
    again = loaded.prompt_to_image_embedding("a cat", generator=_gen(1), num_inference_steps=2)
    torch.testing.assert_close(again, karlo_pipe.prompt_to_image_embedding("a cat", generator=_gen(1),
                                                                           num_inference_steps=2))


def test_karlo_without_its_prior(karlo):
    """The default prior not cached: with stats= it renders images (prompts refused, naming the
    prior); without, one error; an explicit prior that cannot be had is an error naming --prior."""
    variations = karlo[1]
    with pytest.raises(ValueError, match="needs stats=.*karlo-v1-alpha"):
        VSlerpPipeline.from_pretrained(variations, device=None)
    pipe = VSlerpPipeline.from_pretrained(variations, stats=_emb(0), device=None)
    assert pipe.prior is None and pipe.describe()["prior"] is None
    with pytest.raises(ValueError, match="loaded without Karlo's prior"):
        pipe(_emb(1), "a red bicycle", thetas=[0.5], alphas=[0.0], **UNCLIP)
    with pytest.raises(ValueError, match="--prior"):
        VSlerpPipeline.from_pretrained(variations, prior="nobody/no-such-karlo", stats=_emb(0), device=None)


# -- Stable unCLIP --------------------------------------------------------------------------
def test_stable_unclip_mean_is_its_image_normalizers(sd_models):
    small, _ = sd_models
    pipe = VSlerpPipeline.from_pretrained(small, device=None)  # no stats=
    pipe.set_progress_bar_config(disable=True)
    info = pipe.describe()
    assert info["backend"] == "stable-unclip" and info["mean_source"] == "image_normalizer_mean"
    torch.testing.assert_close(pipe.image_mean, pipe.image_normalizer.mean.detach().reshape(-1))
    torch.testing.assert_close(pipe.statistics.image.std(), pipe.image_normalizer.std.detach().reshape(-1).double())
    out = pipe(_emb(1), _emb(2), thetas=[0.0, 0.5], alphas=[0.0, 1.0], generator=_gen(2), **SD)
    assert out.images.shape == (4, 64, 64, 3)
    # α pulls towards the normaliser's mean: the Eq. 12 cell with that m
    import vslerp

    expected = vslerp.vslerp(_emb(1), _emb(2), 0.5, 1.0, pipe.image_normalizer.mean.detach().reshape(-1))
    torch.testing.assert_close(out.embeddings[1, 1], expected)
    given = VSlerpPipeline.from_pretrained(small, stats=_emb(3), device=None)
    assert given.describe()["mean_source"] == "tensor"


def test_identity_normalizer_is_no_mean(sd_models, monkeypatch):
    from diffusers import StableUnCLIPImg2ImgPipeline

    _, identity = sd_models

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the normaliser was checked")

    monkeypatch.setattr(StableUnCLIPImg2ImgPipeline, "from_pretrained", refuse)
    with pytest.raises(ValueError, match=r"image_normalizer is the identity \(mean 0, std 1.*vslerp stats compute"):
        VSlerpPipeline.from_pretrained(identity, device=None)
    monkeypatch.undo()
    assert VSlerpPipeline.from_pretrained(identity, stats=_emb(0), device=None).describe()["mean_source"] == "tensor"


# -- the CLI --------------------------------------------------------------------------------
def test_cli_grid_without_stats(karlo, sd_models, tmp_path):
    """Karlo renders a prompt TARGET without --stats; Stable unCLIP -small renders without it; the
    -H-like identity normaliser is one line naming why."""
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(tmp_path / "src.png")
    common = ["--thetas", "0,1", "--alphas", "0", "--steps", 2, "--seed", 1, "--no-progress", "--prior-steps", 2]
    code, err = _cli(["grid", tmp_path / "src.png", "a red bicycle", "--model", karlo[1], "--prior", karlo[0],
                      *common, "--out", tmp_path / "karlo.png"])
    assert code == 0, err
    meta = json.loads((tmp_path / "karlo.json").read_text())
    assert meta["stats"]["mean_source"] == "prior_clip_mean" and meta["prior"] == str(karlo[0].resolve())
    small, identity = sd_models
    code, err = _cli(["grid", tmp_path / "src.png", tmp_path / "src.png", "--model", small, "--size", 64, *common,
                      "--out", tmp_path / "small.png"])
    assert code == 0, err
    assert json.loads((tmp_path / "small.json").read_text())["stats"]["mean_source"] == "image_normalizer_mean"
    code, err = _cli(["grid", tmp_path / "src.png", tmp_path / "src.png", "--model", identity, "--size", 64,
                      *common, "--out", tmp_path / "h.png"])
    assert code == 2 and len(err) == 1 and "image_normalizer is the identity" in err[0], err
    assert not (tmp_path / "h.png").exists()


def test_compare_means_against_numpy():
    from vslerp.stats.report import compare_means

    a, b = _emb(5).double(), _emb(6).double() + 1.0
    got = compare_means(a, b)
    x, y = a.numpy(), b.numpy()
    np.testing.assert_allclose(got["relative_difference"], np.linalg.norm(x - y) / np.linalg.norm(y), rtol=1e-12)
    np.testing.assert_allclose(got["cosine"], x @ y / (np.linalg.norm(x) * np.linalg.norm(y)), rtol=1e-12)
    assert compare_means(b, b) == {"relative_difference": 0.0, "cosine": pytest.approx(1.0)}
    assert compare_means(a, torch.zeros(TINY_DIM)) == {"relative_difference": None, "cosine": None}
    with pytest.raises(ValueError, match="different dims"):
        compare_means(a, torch.ones(TINY_DIM + 1))


def test_stats_report_compares_with_the_checkpoint_mean(karlo, sd_models, tmp_path):
    from vslerp.stats import read_embeddings
    from vslerp.stats.report import compare_means

    rng = np.random.default_rng(1)
    (tmp_path / "images").mkdir()
    captions = {"images": [], "annotations": []}
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(tmp_path / "images" / f"{i}.png")
        captions["images"].append({"id": i, "file_name": f"{i}.png"})
        captions["annotations"].append({"id": i, "image_id": i, "caption": f"photo {i}"})
    (tmp_path / "captions.json").write_text(json.dumps(captions))
    code, err = _cli(["stats", "compute", "--images", tmp_path / "images", "--captions", tmp_path / "captions.json",
                      "--model", karlo[1], "--out", tmp_path / "s.safetensors", "--save-embeddings",
                      tmp_path / "emb", "--num-workers", 0, "--no-progress"])
    assert code == 0, err
    out = tmp_path / "report"
    code, err = _cli(["stats", "report", "--embeddings", tmp_path / "emb", "--out-dir", out, "--alphas", "0",
                      "--compare-mean", karlo[0]])
    assert code == 0, err
    cmp = json.loads((out / "report.json").read_text())["mean_comparison"]
    from diffusers import PriorTransformer

    clip_mean = PriorTransformer.from_pretrained(karlo[0], subfolder="prior").clip_mean.reshape(-1)
    expected = compare_means(read_embeddings(tmp_path / "emb").image.double().mean(0), clip_mean)
    assert cmp["source"] == "prior_clip_mean" and cmp["model"] == str(karlo[0])
    assert cmp["relative_difference"] == pytest.approx(expected["relative_difference"], rel=1e-9)
    assert cmp["cosine"] == pytest.approx(expected["cosine"], rel=1e-9)
    assert "‖Δ‖/‖m‖" in (out / "report.md").read_text()
    # what holds no mean, or another space, is one line naming --compare-mean
    small, identity = sd_models
    for model, expect in ((identity, "identity"), (karlo[1], "karlo-v1-alpha"), (small, None),
                          (tmp_path / "nowhere", "no such folder"), ("nobody/no-such-prior", "not in the local cache")):
        shutil.rmtree(out, ignore_errors=True)
        code, err = _cli(["stats", "report", "--embeddings", tmp_path / "emb", "--out-dir", out, "--alphas", "0",
                          "--compare-mean", model])
        if expect is None:  # the tiny -small model is another encoder, but the same dim: compared
            assert code == 0, err
            continue
        assert code == 2 and len(err) == 1 and "--compare-mean" in err[0] and expect in err[0], err
