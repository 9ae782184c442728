"""The geometry report (vslerp.stats.report) on synthetic embeddings with known structure."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import vslerp
from vslerp.stats.report import (
    conformity_kl_vs_alpha,
    geometry_report,
    loss_vs_alpha,
    one_pair_per_image,
    write_report,
)

D = 48
TAGS = (5, 17)  # the features that separate image from text


def _clouds(n: int = 400, seed: int = 0):
    """Two shifted anisotropic Gaussian clouds; captions are noisy copies of their images
    (plus an offset on the tag features), one caption per image plus unpaired extras."""
    gen = torch.Generator().manual_seed(seed)
    scale = torch.linspace(0.3, 2.0, D)
    image = torch.randn(n, D, generator=gen) * scale + 1.5
    text = image + 0.4 * torch.randn(n, D, generator=gen)
    text[:, TAGS[0]] += 9.0
    text[:, TAGS[1]] -= 9.0
    image[:, TAGS[0]] -= 0.0
    pairs = torch.stack([torch.arange(n), torch.arange(n)], dim=1)
    return image, text, pairs


@pytest.fixture(scope="module")
def report():
    image, text, pairs = _clouds()
    emb = SimpleNamespace(image=image, text=text, pairs=pairs, metadata={"model_id": "synthetic"})
    return geometry_report(emb, alphas=[-1.0, -0.5, 0.0, 0.5, 1.0], chunk_size=64), emb


def test_tags_and_svm(report):
    rep, _ = report
    assert set(rep["separability"]["top_features"][:2]) == set(TAGS)
    assert rep["separability"]["top_scores"][1] > 5 * rep["separability"]["top_scores"][2]
    assert set(rep["svm"]["features"]) == set(TAGS)
    assert rep["svm"]["accuracy"] == 1.0


def test_thin_shell_and_offsets_match_numpy(report):
    rep, emb = report
    for name in ("image", "text"):
        x = getattr(emb, name).double().numpy()
        m = x.mean(0)
        y = np.linalg.norm(x - m, axis=1)
        got = rep["modalities"][name]["thin_shell"]
        np.testing.assert_allclose(got["mu_norm"], y.mean(), rtol=1e-9)
        np.testing.assert_allclose(got["var_y"], y.var(), rtol=1e-6)
        np.testing.assert_allclose(got["rms"], math.sqrt((y ** 2).mean()), rtol=1e-9)
        std = x.std(0, ddof=1)
        np.testing.assert_allclose(rep["modalities"][name]["offset"],
                                   np.linalg.norm(m) / np.linalg.norm(std), rtol=1e-9)
        var = np.asarray(rep["modalities"][name]["variance"]["values"])
        np.testing.assert_allclose(var, x.var(0, ddof=1), rtol=1e-9)
        cov = np.cov(x, rowvar=False)
        odd = (np.abs(cov).sum(1) - np.diag(cov)) / np.diag(cov)
        np.testing.assert_allclose(rep["modalities"][name]["odd"]["values"], odd, rtol=1e-6)


def test_exact_identity_and_fits(report):
    rep, emb = report
    for name in ("image", "text"):
        c = rep["conformity"][name]
        assert c["max_abs_error_identity"] < 1e-5
        assert c["unit_mean"]["conformity_from_cos"]["r"] == pytest.approx(1.0, abs=1e-9)
        assert c["unit_mean"]["conformity_from_cos"]["a"] == pytest.approx(
            c["exact_identity"]["a"], rel=1e-5)
        assert 0.9 < c["raw_mean"]["conformity_from_cos"]["r"] <= 1.0
        # the reverse direction's slope is 1/a·r² of the forward one
        fwd, rev = c["raw_mean"]["conformity_from_cos"], c["raw_mean"]["cos_from_conformity"]
        assert fwd["a"] * rev["a"] == pytest.approx(fwd["r"] ** 2, rel=1e-6)
        conf = vslerp.conformity(getattr(emb, name).double())
        assert c["mean_conformity"] == pytest.approx(float(conf.mean()), rel=1e-5)


def _dense_loss(image, text, scale):
    logits = scale * F.normalize(image.double(), dim=1) @ F.normalize(text.double(), dim=1).T
    target = torch.arange(len(image))
    per = 0.5 * F.cross_entropy(logits, target, reduction="none") \
        + 0.5 * F.cross_entropy(logits.T, target, reduction="none")
    ok = (logits.argmax(1) == target) & (logits.argmax(0) == target)
    return per, ok


@pytest.mark.parametrize("chunk", [1, 7, 64, 1000])
def test_chunked_loss_equals_dense(chunk):
    gen = torch.Generator().manual_seed(1)
    image = torch.randn(50, 16, generator=gen) + 0.5
    text = image + 1.2 * torch.randn(50, 16, generator=gen)
    got = vslerp.clip_loss(image, text, logit_scale=20.0, chunk_size=chunk).summary()
    per, ok = _dense_loss(image, text, 20.0)
    assert 0 < ok.sum() < 50  # both groups present
    assert got["total"] == pytest.approx(float(per.mean()), rel=1e-5)
    assert got["correct"] == pytest.approx(float(per[ok].mean()), rel=1e-5)
    assert got["misclassified"] == pytest.approx(float(per[~ok].mean()), rel=1e-5)
    assert got["accuracy"] == pytest.approx(float(ok.double().mean()))
    assert got["total"] == pytest.approx(got["alignment"] + got["uniformity"], rel=1e-9, abs=1e-9)


def test_loss_vs_alpha_shifts_images(report):
    rep, emb = report
    rows = rep["loss_vs_alpha"]
    assert [r["alpha"] for r in rows] == [-1.0, -0.5, 0.0, 0.5, 1.0]
    m = emb.image.double().mean(0)
    direct = vslerp.clip_loss(emb.image - 0.5 * m.float(), emb.text, logit_scale=100.0).summary()
    assert rows[3]["total"] == pytest.approx(direct["total"], rel=1e-5)
    for r in rows:
        assert r["total"] == pytest.approx(r["alignment"] + r["uniformity"], rel=1e-9, abs=1e-9)
    again = loss_vs_alpha(emb.image, emb.text, m, [0.0], logit_scale=100.0, chunk_size=1000)
    assert again[0]["total"] == pytest.approx(rows[2]["total"], rel=1e-5)


def test_kl():
    gen = torch.Generator().manual_seed(2)
    a = torch.randn(500, generator=gen)
    assert float(vslerp.kl_divergence(a, a.clone())) == 0.0
    assert float(vslerp.kl_divergence(a, a + 3.0)) > 1.0
    assert float(vslerp.kl_divergence(a, a + 0.1)) < float(vslerp.kl_divergence(a, a + 1.0))
    with pytest.raises(ValueError, match="non-empty"):
        vslerp.kl_divergence(a[:0], a)
    x = torch.randn(60, 8, generator=gen) + 1.0
    rows = conformity_kl_vs_alpha(x, x.clone(), x.mean(0), [0.0, 0.5])
    assert rows[0]["kl"] == 0.0 and rows[1]["kl"] > 0.0


def test_one_pair_per_image():
    pairs = torch.tensor([[0, 0], [0, 1], [1, 2], [2, 3], [1, 4]])
    got = one_pair_per_image(pairs)
    assert got.tolist() == [[0, 0], [1, 2], [2, 3]]
    assert one_pair_per_image(pairs, max_pairs=2).shape == (2, 2)


def test_bad_input():
    image, text, pairs = _clouds(20)
    with pytest.raises(ValueError, match="same shape"):
        vslerp.clip_loss(image, text[:10])
    with pytest.raises(ValueError, match="logit_scale"):
        vslerp.clip_loss(image, text, logit_scale=-1.0)
    with pytest.raises(ValueError, match="different dims"):
        geometry_report(SimpleNamespace(image=image, text=text[:, :10], pairs=pairs))
    with pytest.raises(TypeError, match="emb.image"):
        geometry_report(SimpleNamespace(image=None, text=text, pairs=pairs))


def test_files_written(report, tmp_path):
    rep, _ = report
    written = write_report(rep, tmp_path / "out")
    names = {p.name for p in written}
    assert {"report.json", "report.md", "feature_histograms.png", "separability.png",
            "svm_two_features.png", "thin_shell.png", "variance_odd.png",
            "conformity_estimate.png", "loss_vs_alpha.png", "kl_vs_alpha.png"} <= names
    for p in written:
        assert p.stat().st_size > 0
        if p.suffix == ".png":
            assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    back = json.loads((tmp_path / "out" / "report.json").read_text())
    assert back["svm"]["accuracy"] == 1.0
    md = (tmp_path / "out" / "report.md").read_text()
    table = md.split("## Modality tags (Eq. 5)")[1].splitlines()
    rows = [line for line in table if line.startswith("| ") and line[2].isdigit()]
    # feature 5 (image std ≈ 0.48) separates better than feature 17 (≈ 0.95), both shifted by 9
    assert rows[0].startswith("| 5 |") and rows[1].startswith("| 17 |")
    assert not list((tmp_path / "out").glob("*.tmp"))
    with pytest.raises(FileExistsError, match="--overwrite"):
        write_report(rep, tmp_path / "out")
    write_report(rep, tmp_path / "out", overwrite=True)


def _strict_json(path):
    """report.json parsed with NaN/Infinity refused: the files never hold them."""
    def refuse(token):
        raise AssertionError(f"{path} holds {token}")

    return json.loads(path.read_text(), parse_constant=refuse)


def test_empty_loss_group_is_null_not_nan(tmp_path):
    """At accuracy 100 % there is no misclassified pair: None / null / "—", never NaN."""
    gen = torch.Generator().manual_seed(4)
    image = torch.randn(30, 16, generator=gen) + 0.5
    got = vslerp.clip_loss(image, image.clone(), logit_scale=100.0).summary()
    assert got["accuracy"] == 1.0 and got["misclassified"] is None
    assert got["correct"] == pytest.approx(got["total"])
    emb = SimpleNamespace(image=image, text=2.0 * image,  # cos = 1 for every pair
                          pairs=torch.stack([torch.arange(30)] * 2, dim=1))
    rep = geometry_report(emb, alphas=[0.0])
    write_report(rep, tmp_path)
    back = _strict_json(tmp_path / "report.json")
    assert all(r["misclassified"] is None for r in back["loss_vs_alpha"])
    assert any("no misclassified pairs" in n for n in back["notes"])
    md = (tmp_path / "report.md").read_text()
    assert "nan" not in md.lower() and "| — |" in md and "no pairs in that group" in md


def test_two_images_and_no_pairs_still_report(tmp_path):
    """N = 2 (equal conformities: no fit) and no image–caption pairs: the rest is reported."""
    from vslerp.stats.plots import report_figures

    gen = torch.Generator().manual_seed(5)
    image, text = torch.randn(2, 12, generator=gen) + 1, torch.randn(2, 12, generator=gen) - 1
    rep = geometry_report(SimpleNamespace(image=image, text=text,
                                          pairs=torch.zeros(0, 2, dtype=torch.int64)),
                          alphas=[-1.0, 0.0, 1.0])
    assert rep["conformity"]["image"]["raw_mean"] is None
    assert "both conformities are equal" in rep["conformity"]["image"]["degenerate"]
    assert rep["conformity"]["image"]["max_abs_error_identity"] < 1e-5
    assert rep["loss_vs_alpha"] == [] and len(rep["kl_vs_alpha"]) == 3
    written = {p.name for p in write_report(rep, tmp_path)}
    assert "conformity_estimate.png" in written and "loss_vs_alpha.png" not in written
    back = _strict_json(tmp_path / "report.json")
    assert back["modalities"]["image"]["count"] == 2
    md = (tmp_path / "report.md").read_text()
    assert "no regression line with N = 2" in md
    assert "no image–caption pairs" in md and "COCO captions json" in md
    assert dict(report_figures(rep)).keys() == {n for n in written if n.endswith(".png")}


def test_figure_titles_and_panels(report):
    """Titles name the paper's figure; Fig. 6 shows accuracy; the KL figure shows the
    image and text conformity distributions at α = 0 (Fig. 10–11)."""
    from vslerp.stats.plots import report_figures

    rep, _ = report
    figs = dict(report_figures(rep))
    titles = {name: " ".join([fig.get_suptitle()] + [ax.get_title() for ax in fig.axes])
              for name, fig in figs.items()}
    assert "Fig. 2, right" in titles["svm_two_features.png"]
    assert "Fig. 4" not in titles["svm_two_features.png"]
    assert "Fig. 2, left" in titles["feature_histograms.png"]
    assert "Fig. 3" in titles["separability.png"] and "Fig. 5" in titles["variance_odd.png"]
    assert "Fig. 4, bottom" in titles["thin_shell.png"] and "Fig. 9" in titles["conformity_estimate.png"]
    loss = figs["loss_vs_alpha.png"]
    assert any(ax.get_ylabel() == "accuracy (%)" for ax in loss.axes)
    acc_line = next(ax for ax in loss.axes if ax.get_ylabel() == "accuracy (%)").lines[0]
    assert list(acc_line.get_ydata()) == [100 * r["accuracy"] for r in rep["loss_vs_alpha"]]
    kl = figs["kl_vs_alpha.png"]
    assert len(kl.axes) == 2 and "α = 0" in kl.axes[1].get_title()
    hist = rep["plots"]["conformity_hist"]
    assert sum(hist["image"]) == rep["counts"]["image"] and sum(hist["text"]) == rep["counts"]["text"]
    assert hist["kl"] == pytest.approx(next(r["kl"] for r in rep["kl_vs_alpha"] if r["alpha"] == 0))
