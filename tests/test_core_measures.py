"""The core's CLIP loss (Eq. 7–9), histograms and KL divergence (Fig. 2, Fig. 11): property
tests against independent dense / numpy transcriptions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import vslerp

DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _pairs(p: int, d: int, seed: int, noise: float = 1.0, dtype=torch.float64):
    g = _gen(seed)
    image = torch.randn(p, d, generator=g, dtype=torch.float64) + 0.5
    text = image + noise * torch.randn(p, d, generator=g, dtype=torch.float64)
    return image.to(dtype), text.to(dtype)


def _dense(image: torch.Tensor, text: torch.Tensor, scale: float):
    """The textbook symmetric loss from the full (P, P) logits, in float64."""
    logits = scale * F.normalize(image.double(), dim=1) @ F.normalize(text.double(), dim=1).T
    target = torch.arange(len(image))
    per = 0.5 * F.cross_entropy(logits, target, reduction="none") \
        + 0.5 * F.cross_entropy(logits.T, target, reduction="none")
    ok = (logits.argmax(1) == target) & (logits.argmax(0) == target)
    return per, -logits.diagonal(), ok


# ------------------------------------------------------------------------------ CLIP loss
@settings(max_examples=80, deadline=None)
@given(p=st.integers(1, 40), d=st.integers(1, 12), chunk=st.integers(1, 50),
       scale=st.floats(0.1, 200.0), seed=st.integers(0, 2**16))
def test_clip_loss_equals_dense_for_any_chunking(p, d, chunk, scale, seed):
    image, text = _pairs(p, d, seed)
    got = vslerp.clip_loss(image, text, logit_scale=scale, chunk_size=chunk)
    per, alignment, ok = _dense(image, text, scale)
    for t in (got.loss, got.alignment, got.uniformity):
        assert t.shape == (p,) and t.dtype == torch.float64 and torch.isfinite(t).all()
    torch.testing.assert_close(got.loss, per, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(got.alignment, alignment, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(got.alignment + got.uniformity, got.loss, rtol=1e-12, atol=1e-9)
    assert torch.equal(got.correct, ok)
    assert (got.loss >= -1e-9).all()  # a cross-entropy is ≥ 0


@settings(max_examples=60, deadline=None)
@given(dtype=st.sampled_from(DTYPES), magnitude=st.sampled_from([1e-30, 1e-3, 1.0, 1e3, 1e30]),
       seed=st.integers(0, 2**16))
def test_clip_loss_is_finite_scale_free_and_float64_for_any_dtype(dtype, magnitude, seed):
    image, text = _pairs(12, 6, seed)
    base = vslerp.clip_loss(image, text, logit_scale=50.0)
    if dtype in (torch.float16, torch.bfloat16) and magnitude != 1.0:
        magnitude = 1.0  # 1e±30 is outside their range: the cast itself would give 0 / inf
    got = vslerp.clip_loss((image * magnitude).to(dtype), (text / magnitude).to(dtype),
                           logit_scale=50.0)
    assert got.loss.dtype == torch.float64 and torch.isfinite(got.loss).all()
    tol = 1e-9 if dtype == torch.float64 else (1e-4 if dtype == torch.float32 else 0.5)
    torch.testing.assert_close(got.loss, base.loss, rtol=tol, atol=tol)  # cosines only


def test_clip_loss_is_permutation_equivariant_and_summary_matches():
    image, text = _pairs(30, 8, 3, noise=1.5)
    perm = torch.randperm(30, generator=_gen(4))
    got = vslerp.clip_loss(image, text, logit_scale=20.0, chunk_size=7)
    shuffled = vslerp.clip_loss(image[perm], text[perm], logit_scale=20.0, chunk_size=7)
    torch.testing.assert_close(shuffled.loss, got.loss[perm], rtol=1e-12, atol=1e-12)
    assert torch.equal(shuffled.correct, got.correct[perm])
    s = got.summary()
    assert 0 < got.correct.sum() < 30  # both groups present
    assert s["total"] == pytest.approx(float(got.loss.mean()))
    assert s["correct"] == pytest.approx(float(got.loss[got.correct].mean()))
    assert s["misclassified"] == pytest.approx(float(got.loss[~got.correct].mean()))
    assert s["accuracy"] == pytest.approx(float(got.correct.double().mean())) and s["pairs"] == 30


def test_clip_loss_empty_group_is_none_never_nan():
    image, _ = _pairs(10, 8, 5)
    s = vslerp.clip_loss(image, 3.0 * image, logit_scale=100.0).summary()  # every pair correct
    assert s["accuracy"] == 1.0 and s["misclassified"] is None
    assert not any(isinstance(v, float) and math.isnan(v) for v in s.values())


def test_clip_loss_vs_alpha_shifts_the_images():
    image, text = _pairs(25, 8, 6)
    mean = image.mean(0)
    rows = vslerp.clip_loss_vs_alpha(image, text, [0.0, 0.5, -1.0], mean, logit_scale=30.0,
                                     chunk_size=4)
    assert len(rows) == 3
    torch.testing.assert_close(rows[0].loss, vslerp.clip_loss(image, text, logit_scale=30.0).loss)
    for alpha, row in zip([0.5, -1.0], rows[1:], strict=True):
        direct = vslerp.clip_loss(image - alpha * mean, text, logit_scale=30.0)
        torch.testing.assert_close(row.loss, direct.loss, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(rows[1].loss, rows[0].loss)  # the shift changes the loss
    again = vslerp.clip_loss_vs_alpha(image, text, torch.tensor([0.5]), mean, logit_scale=30.0)
    torch.testing.assert_close(again[0].loss, rows[1].loss)


def test_clip_loss_bad_input_errors():
    image, text = _pairs(6, 4, 7)
    with pytest.raises(ValueError, match="same shape"):
        vslerp.clip_loss(image, text[:5])
    for bad in (0.0, -1.0, float("nan"), float("inf"), True, 1e7, "100"):
        with pytest.raises(ValueError, match="logit_scale"):
            vslerp.clip_loss(image, text, logit_scale=bad)
    for bad in (0, -2, True, 1.5):
        with pytest.raises(ValueError, match="chunk_size must be an int"):
            vslerp.clip_loss(image, text, chunk_size=bad)
    zero = image.clone()
    zero[2] = 0
    with pytest.raises(ValueError, match="image .*zero vector"):
        vslerp.clip_loss(zero, text)
    nan = text.clone()
    nan[1, 1] = float("nan")
    with pytest.raises(ValueError, match="text .*non-finite"):
        vslerp.clip_loss(image, nan)
    with pytest.raises(ValueError, match="alphas is empty"):
        vslerp.clip_loss_vs_alpha(image, text, [], image.mean(0))
    with pytest.raises(ValueError, match="alpha .*too large"):
        vslerp.clip_loss_vs_alpha(image, text, [0.0, 1e9], image.mean(0))
    with pytest.raises(ValueError, match="mean must have shape"):
        vslerp.clip_loss_vs_alpha(image, text, [0.0], image.mean(0)[:3])
    with pytest.raises(ValueError, match="overflows"):
        vslerp.clip_loss_vs_alpha(image.float(), text.float(), [1e6], torch.full((4,), 1e35))


# ------------------------------------------------------------------------- histogram, KL
@settings(max_examples=80, deadline=None)
@given(n=st.integers(1, 300), bins=st.integers(1, 40), seed=st.integers(0, 2**16),
       dtype=st.sampled_from(DTYPES))
def test_histogram_counts_every_value_once_and_matches_numpy(n, bins, seed, dtype):
    values = (torch.randn(n, generator=_gen(seed), dtype=torch.float64) * 3).to(dtype)
    edges = torch.linspace(-2.0, 2.0, bins + 1, dtype=torch.float64)
    counts = vslerp.histogram(values, edges)
    assert counts.shape == (bins,) and counts.dtype == torch.float64
    assert float(counts.sum()) == n  # outside values go to the end bins
    clipped = np.clip(values.double().numpy(), -2.0, 2.0)
    expected, _ = np.histogram(clipped, bins=edges.numpy())
    np.testing.assert_array_equal(counts.numpy(), expected)


def _np_kl(p: np.ndarray, q: np.ndarray, bins: int, pseudo: float) -> float:
    """Independent transcription: numpy histograms on the joint range, additive smoothing."""
    lo, hi = min(p.min(), q.min()), max(p.max(), q.max())
    edges = np.linspace(lo, hi if hi > lo else lo + 1e-12, bins + 1)
    hp = np.histogram(p, edges)[0] + pseudo
    hq = np.histogram(q, edges)[0] + pseudo
    hp, hq = hp / hp.sum(), hq / hq.sum()
    return float((hp * np.log(hp / hq)).sum())


@settings(max_examples=80, deadline=None)
@given(n=st.integers(1, 200), m=st.integers(1, 200), bins=st.integers(1, 60),
       shift=st.floats(-3, 3), power=st.integers(-20, 20), seed=st.integers(0, 2**16))
def test_kl_matches_numpy_is_nonnegative_and_scale_free(n, m, bins, shift, power, seed):
    g = _gen(seed)
    p = torch.randn(n, generator=g, dtype=torch.float64)
    q = torch.randn(m, generator=g, dtype=torch.float64) + shift
    kl = vslerp.kl_divergence(p, q, bins=bins)
    assert kl.shape == () and kl.dtype == torch.float64 and math.isfinite(float(kl))
    assert float(kl) >= 0.0
    assert float(kl) == pytest.approx(max(_np_kl(p.numpy(), q.numpy(), bins, 0.5), 0.0),
                                      rel=1e-9, abs=1e-12)
    scaled = vslerp.kl_divergence(p * 2.0**power, q * 2.0**power, bins=bins)  # exact in binary
    assert float(scaled) == float(kl)
    assert float(vslerp.kl_divergence(p, p.clone(), bins=bins)) == 0.0


@settings(max_examples=40, deadline=None)
@given(magnitude=st.sampled_from([1e-300, 1e-30, 1.0, 1e30, 1e300]), seed=st.integers(0, 2**16))
def test_kl_never_nan_for_extreme_or_constant_samples(magnitude, seed):
    g = _gen(seed)
    p = torch.randn(50, generator=g, dtype=torch.float64) * magnitude
    q = torch.randn(40, generator=g, dtype=torch.float64) * magnitude
    assert math.isfinite(float(vslerp.kl_divergence(p, q)))
    const = torch.full((10,), magnitude, dtype=torch.float64)
    assert float(vslerp.kl_divergence(const, const.clone())) == 0.0


def test_histogram_and_kl_bad_input_errors():
    x = torch.randn(10, generator=_gen(8))
    with pytest.raises(ValueError, match="edges must hold at least 2"):
        vslerp.histogram(x, torch.tensor([0.0]))
    with pytest.raises(ValueError, match="non-decreasing"):
        vslerp.histogram(x, torch.tensor([0.0, 1.0, 0.5]))
    with pytest.raises(ValueError, match="values .*non-finite"):
        vslerp.histogram(torch.tensor([0.0, float("nan")]), torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="values must have rank 1"):
        vslerp.histogram(x.reshape(2, 5), torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="q_samples .*non-finite"):
        vslerp.kl_divergence(x, torch.tensor([float("inf")]))
    for bad in (0, True, 2.5):
        with pytest.raises(ValueError, match="bins must be an int"):
            vslerp.kl_divergence(x, x, bins=bad)
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="pseudo_count"):
            vslerp.kl_divergence(x, x, pseudo_count=bad)


# -------------------------------------------------------------------- conformity KL vs α
def test_conformity_kl_vs_alpha_is_kl_of_shifted_conformities():
    image, text = _pairs(40, 8, 9, dtype=torch.float32)
    mean = image.double().mean(0)
    got = vslerp.conformity_kl_vs_alpha(image, text, [-0.5, 0.0, 1.0], mean, bins=20)
    assert got.kl.shape == got.image_mean_conformity.shape == got.alphas.shape == (3,)
    assert got.text_mean_conformity.shape == ()
    text_conf = vslerp.conformity(text)
    for i, alpha in enumerate([-0.5, 0.0, 1.0]):
        image_conf = vslerp.conformity(image - alpha * mean.float())
        assert float(got.kl[i]) == pytest.approx(
            float(vslerp.kl_divergence(image_conf, text_conf, bins=20)), rel=1e-5, abs=1e-9)
        assert float(got.image_mean_conformity[i]) == pytest.approx(float(image_conf.mean()), rel=1e-5)
    assert float(got.text_mean_conformity) == pytest.approx(float(text_conf.mean()), rel=1e-6)
    same = vslerp.conformity_kl_vs_alpha(image, image.clone(), [0.0, 0.5], mean)
    assert float(same.kl[0]) == 0.0 and float(same.kl[1]) > 0.0


def test_conformity_kl_bad_input_errors():
    image, text = _pairs(10, 4, 10)
    with pytest.raises(ValueError, match="same dimension"):
        vslerp.conformity_kl_vs_alpha(image, text[:, :3], [0.0], image.mean(0))
    with pytest.raises(ValueError, match="alpha .*too large"):
        vslerp.conformity_kl_vs_alpha(image, text, [float("1e300")], image.mean(0))
    with pytest.raises(TypeError, match="alphas must be real numbers"):
        vslerp.conformity_kl_vs_alpha(image, text, ["a"], image.mean(0))
