"""The geometry core: SLERP, vSLERP (Eq. 12), conformity (Eq. 10–11), moments (§4)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from scipy.spatial import geometric_slerp

import vslerp

DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _np_slerp(a: np.ndarray, b: np.ndarray, t: float) -> np.ndarray:
    """Independent float64 transcription of SLERP with one summed dot product."""
    cos = np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b))
    omega = np.arccos(np.clip(cos, -1.0, 1.0))
    return (np.sin((1 - t) * omega) * a + np.sin(t * omega) * b) / np.sin(omega)


# ----------------------------------------------------------------------------------- SLERP
@pytest.mark.parametrize("dim", [2, 3, 17, 512])
def test_slerp_matches_scipy_geometric_slerp(dim):
    g = _gen(dim)
    a = torch.randn(dim, generator=g, dtype=torch.float64)
    b = torch.randn(dim, generator=g, dtype=torch.float64)
    a, b = a / a.norm(), b / b.norm()
    ts = np.linspace(0, 1, 11)
    expected = geometric_slerp(a.numpy(), b.numpy(), ts)  # (11, D)
    ours = vslerp.slerp(a, b, torch.tensor(ts))  # (11, D)
    np.testing.assert_allclose(ours.numpy(), expected, atol=1e-12)


def test_slerp_endpoints_exact_and_symmetric():
    g = _gen(1)
    a, b = torch.randn(4, 64, generator=g), torch.randn(4, 64, generator=g) * 3
    assert torch.equal(vslerp.slerp(a, b, 0.0), a)
    assert torch.equal(vslerp.slerp(a, b, 1.0), b)
    for t in (0.1, 0.37, 0.5, 0.9):
        torch.testing.assert_close(vslerp.slerp(a, b, t), vslerp.slerp(b, a, 1 - t),
                                   atol=1e-5, rtol=1e-5)


def test_slerp_angle_to_a_grows_linearly():
    g = _gen(2)
    a = torch.randn(128, generator=g, dtype=torch.float64)
    b = torch.randn(128, generator=g, dtype=torch.float64)
    a, b = a / a.norm(), b / b.norm()
    omega = float(vslerp.angle(a, b))
    ts = torch.linspace(0, 1, 21, dtype=torch.float64)
    path = vslerp.slerp(a, b, ts)  # (21, D)
    angles = vslerp.angle(a.expand_as(path), path)
    torch.testing.assert_close(angles, ts * omega, atol=1e-10, rtol=0)
    # unit vectors stay on the sphere (the element-wise-arccos bug inflates the midpoint ~30 %)
    torch.testing.assert_close(path.norm(dim=-1), torch.ones(21, dtype=torch.float64))


def test_elementwise_arccos_variant_is_not_ours():
    """The bug docs/pipeline.md names ("Why SLERP done right"): arccos of the element-wise product inflates the norm."""
    g = _gen(3)
    shared = torch.randn(512, generator=g, dtype=torch.float64)  # CLIP-like: cos(a, b) ≈ 0.7
    a = shared + 0.65 * torch.randn(512, generator=g, dtype=torch.float64)
    b = shared + 0.65 * torch.randn(512, generator=g, dtype=torch.float64)
    a, b = a / a.norm(), b / b.norm()
    omega_bad = torch.arccos((a * b).clamp(-1, 1))  # element-wise: wrong
    bad = (torch.sin(0.5 * omega_bad) * a + torch.sin(0.5 * omega_bad) * b) / torch.sin(omega_bad)
    ours = vslerp.slerp(a, b, 0.5)
    assert abs(float(ours.norm()) - 1) < 1e-12
    assert float(bad.norm()) > 1.25  # ~30 % too long at t = 0.5


def test_slerp_broadcasts_t_and_batch():
    g = _gen(4)
    a, b = torch.randn(3, 16, generator=g), torch.randn(16, generator=g)
    out = vslerp.slerp(a, b, torch.tensor([0.0, 0.5, 1.0]))
    assert out.shape == (3, 16)
    assert torch.equal(out[0], a[0])
    assert torch.equal(out[2], b)
    grid = vslerp.slerp(a[0], b, torch.linspace(0, 1, 5)[:, None].expand(5, 2))
    assert grid.shape == (5, 2, 16)


def test_slerp_parallel_vectors_fall_back_to_linear():
    a = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    b = 2.5 * a
    for t in (0.0, 0.25, 0.5, 1.0, 1.5):
        torch.testing.assert_close(vslerp.slerp(a, b, t), (1 - t) * a + t * b)
    nearly = a + torch.tensor([0.0, 1e-9, 0.0], dtype=torch.float64)
    out = vslerp.slerp(a, nearly, 0.5)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, (a + nearly) / 2)


@settings(max_examples=150, deadline=None)
@given(
    dim=st.integers(2, 64),
    dtype=st.sampled_from(DTYPES),
    log_scale_a=st.floats(-3, 3),
    log_scale_b=st.floats(-3, 3),
    t=st.floats(0, 1),
    seed=st.integers(0, 2**31 - 1),
)
def test_slerp_property_finite_and_dtype(dim, dtype, log_scale_a, log_scale_b, t, seed):
    g = _gen(seed)
    a = (torch.randn(dim, generator=g, dtype=torch.float64) * 10**log_scale_a).to(dtype)
    b = (torch.randn(dim, generator=g, dtype=torch.float64) * 10**log_scale_b).to(dtype)
    assume(bool((a != 0).any()) and bool((b != 0).any()))
    cos = float(torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=0))
    assume(cos > -0.999)
    out = vslerp.slerp(a, b, t)
    assert out.dtype == dtype
    assert out.shape == (dim,)
    assert torch.isfinite(out).all()
    # the result lies in the plane of a and b, at angle t·Ω from a (in float64 from the same
    # rounded inputs); tolerance by the output dtype's resolution
    ref = torch.from_numpy(_np_slerp(a.double().numpy(), b.double().numpy(), t))
    tol = {torch.float16: 2e-2, torch.bfloat16: 2e-1}.get(dtype, 1e-4)
    scale = max(float(a.double().norm()), float(b.double().norm()))
    assert float((out.double() - ref).norm()) <= tol * scale * 10 + 1e-6


@settings(max_examples=60, deadline=None)
@given(dtype=st.sampled_from(DTYPES), magnitude=st.sampled_from([1e-30, 1e-3, 1.0, 1e3, 1e30]),
       seed=st.integers(0, 1000))
def test_slerp_never_nan_for_extreme_magnitudes(dtype, magnitude, seed):
    g = _gen(seed)
    finfo = torch.finfo(dtype)
    magnitude = min(magnitude, finfo.max / 8)
    a = (torch.rand(32, generator=g, dtype=torch.float64) + 0.1) * magnitude
    b = (torch.rand(32, generator=g, dtype=torch.float64) + 0.1) * magnitude
    a, b = a.to(dtype), b.to(dtype)
    assume(bool((a != 0).any()) and bool((b != 0).any()))
    for t in (0.0, 0.3, 1.0):
        out = vslerp.slerp(a, b, t)
        assert torch.isfinite(out).all(), (dtype, magnitude, t)


def test_slerp_bad_input_errors():
    a = torch.randn(8)
    with pytest.raises(ValueError, match="antipodal"):
        vslerp.slerp(a, -a, 0.5)
    with pytest.raises(ValueError, match="zero vector"):
        vslerp.slerp(a, torch.zeros(8), 0.5)
    with pytest.raises(ValueError, match="same last dimension"):
        vslerp.slerp(a, torch.randn(9), 0.5)
    with pytest.raises(ValueError, match="non-finite"):
        vslerp.slerp(a, torch.full((8,), float("nan")), 0.5)
    with pytest.raises(ValueError, match="t"):
        vslerp.slerp(a, torch.randn(8), float("inf"))
    with pytest.raises(TypeError, match="a must be a torch.Tensor"):
        vslerp.slerp([1.0, 2.0], torch.randn(2), 0.5)
    with pytest.raises(ValueError, match="at least 1 dimension"):
        vslerp.slerp(torch.tensor(1.0), torch.tensor(2.0), 0.5)
    with pytest.raises(ValueError, match="broadcast"):
        vslerp.slerp(torch.randn(3, 8), torch.randn(3, 8), torch.rand(4))


# ---------------------------------------------------------------------------------- vSLERP
def _eq12(a, b, t, alpha, m):
    """Direct transcription of paper Eq. 12 in float64 numpy."""
    return _np_slerp(a - alpha * m, b - alpha * m, t) + alpha * m


def test_vslerp_matches_eq12_transcription():
    g = _gen(5)
    a, b, m = (torch.randn(64, generator=g, dtype=torch.float64) for _ in range(3))
    for t in (0.2, 0.5, 0.8):
        for alpha in (-2.0, -0.5, 0.7, 2.0):
            ours = vslerp.vslerp(a, b, t, alpha, m)
            ref = _eq12(a.numpy(), b.numpy(), t, alpha, m.numpy())
            np.testing.assert_allclose(ours.numpy(), ref, atol=1e-10)


def test_vslerp_theta0_is_a_and_alpha0_is_slerp():
    g = _gen(6)
    a, b, m = (torch.randn(1280, generator=g) for _ in range(3))
    for alpha in (-2.0, -1.0, 0.5, 2.0):
        assert torch.equal(vslerp.vslerp(a, b, 0.0, alpha, m), a)
        assert torch.equal(vslerp.vslerp(a, b, 1.0, alpha, m), b)
    for t in (0.25, 0.5, 0.75):
        assert torch.equal(vslerp.vslerp(a, b, t, 0.0, m), vslerp.slerp(a, b, t))


def test_vslerp_grid_shape_and_dtype():
    g = _gen(7)
    a, b, m = (torch.randn(32, generator=g).half() for _ in range(3))
    thetas = torch.tensor([0.0, 0.5, 1.0])[:, None]
    alphas = torch.tensor([-2.0, -1.0, 0.0, 1.0, 2.0])[None, :]
    grid = vslerp.vslerp(a, b, thetas, alphas, m)
    assert grid.shape == (3, 5, 32)
    assert grid.dtype == torch.float16
    assert torch.isfinite(grid).all()
    assert all(torch.equal(grid[0, j], a) for j in range(5))
    torch.testing.assert_close(grid[1, 2], vslerp.slerp(a, b, 0.5))


def test_vslerp_bad_input_errors():
    a, b = torch.randn(8), torch.randn(8)
    with pytest.raises(ValueError, match="mean must have shape"):
        vslerp.vslerp(a, b, 0.5, 1.0, torch.randn(7))
    with pytest.raises(ValueError, match="alpha"):
        vslerp.vslerp(a, b, 0.5, float("nan"), torch.randn(8))
    with pytest.raises(ValueError, match="after shifting"):
        vslerp.vslerp(a, b, 0.5, 1.0, a)  # a − 1·a is the zero vector


# ------------------------------------------------------------------------------ conformity
def _brute_conformity(x: torch.Tensor) -> torch.Tensor:
    unit = x.double() / x.double().norm(dim=1, keepdim=True)
    sim = unit @ unit.T
    return (sim.sum(1) - sim.diagonal()) / (x.shape[0] - 1)


@pytest.mark.parametrize("dtype", DTYPES)
def test_conformity_matches_brute_force(dtype):
    g = _gen(8)
    x = (torch.randn(700, 48, generator=g) + torch.linspace(-1, 2, 48)).to(dtype)
    ours = vslerp.conformity(x)
    assert ours.shape == (700,)
    assert ours.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    ref = _brute_conformity(x)
    torch.testing.assert_close(ours.double(), ref, atol=1e-6, rtol=0)


def test_conformity_chunking_is_exact(monkeypatch):
    import vslerp.conformal as conf_mod

    g = _gen(9)
    x = torch.randn(1000, 16, generator=g, dtype=torch.float64) + 1
    whole = vslerp.conformity(x)
    monkeypatch.setattr(conf_mod, "CHUNK_ROWS", 37)
    chunked = vslerp.conformity(x)
    torch.testing.assert_close(whole, chunked, atol=1e-14, rtol=0)


def test_exact_identity_reaches_pearson_one():
    g = _gen(10)
    x = torch.randn(2000, 64, generator=g, dtype=torch.float64) * torch.linspace(0.5, 2, 64) + 0.8
    conf = vslerp.conformity(x)
    n = x.shape[0]
    mean_unit = vslerp.unit_sum(x) / n
    cos_unit = vslerp.cosine_to_mean(x, mean_unit)
    fit = vslerp.conformity_fit(cos_unit, conf)
    assert fit.conformity_from_cos.r > 1 - 1e-12
    exact = vslerp.exact_conformity_coefficients(n, mean_unit)
    torch.testing.assert_close(exact.a * cos_unit + exact.b, conf, atol=1e-12, rtol=0)
    assert fit.conformity_from_cos.a == pytest.approx(exact.a, rel=1e-9)
    # the paper's direction regresses cos on C: slope ≈ 1/a > 1
    assert fit.cos_from_conformity.a == pytest.approx(1 / exact.a, rel=1e-9)
    assert fit.cos_from_conformity.a > 1
    # with the raw mean it is the estimate (Eq. 11): high r, but not exactly 1
    raw_fit = vslerp.conformity_fit(vslerp.cosine_to_mean(x, x.mean(0)), conf)
    assert 0.95 < raw_fit.conformity_from_cos.r


def test_conformity_bad_input_errors():
    with pytest.raises(ValueError, match="at least 2"):
        vslerp.conformity(torch.randn(1, 8))
    with pytest.raises(ValueError, match="empty"):
        vslerp.conformity(torch.randn(0, 8))
    with pytest.raises(ValueError, match="rank 2"):
        vslerp.conformity(torch.randn(8))
    x = torch.randn(5, 8)
    x[3] = 0
    with pytest.raises(ValueError, match=r"rows \[3\]"):
        vslerp.conformity(x)
    x[3] = float("inf")
    with pytest.raises(ValueError, match="non-finite"):
        vslerp.conformity(x)
    with pytest.raises(ValueError, match="zero vector"):
        vslerp.cosine_to_mean(torch.randn(4, 8), torch.zeros(8))
    with pytest.raises(ValueError, match="mean must have shape"):
        vslerp.cosine_to_mean(torch.randn(4, 8), torch.ones(9))
    with pytest.raises(ValueError, match="constant"):
        vslerp.conformity_fit(torch.ones(5), torch.randn(5))
    with pytest.raises(ValueError, match="count"):
        vslerp.exact_conformity_coefficients(1, torch.ones(3))


def test_fig7_mean_vs_extreme_only_differs_when_shifted():
    """Paper Fig. 7: 1000 Gaussian vectors of length 512, centred at 0 vs at (10, 5, 5, 0, …).

    The mean vector's cosine similarities are much higher than the extreme vector's only
    when the distribution is shifted away from the origin.
    """
    g = _gen(11)
    noise = torch.randn(1000, 512, generator=g, dtype=torch.float64)
    shift = torch.zeros(512, dtype=torch.float64)
    shift[:3] = torch.tensor([10.0, 5.0, 5.0])
    gaps = {}
    for name, x in (("origin", noise), ("shifted", noise + shift)):
        m = x.mean(0)
        cos_mean = vslerp.cosine_to_mean(x, m)  # (N,)
        far = int(torch.argmin(cos_mean))
        others = torch.cat([x[:far], x[far + 1:]])
        cos_far = vslerp.cosine_to_mean(others, x[far])
        gaps[name] = float(cos_mean.mean() - cos_far.mean())
        # and conformity agrees: the farthest vector is among the least conformal
        conf = vslerp.conformity(x)
        assert float(conf[far]) <= float(conf.quantile(0.05)) + 1e-12
    assert gaps["shifted"] > 0.2
    assert abs(gaps["origin"]) < 0.1
    assert gaps["shifted"] > 5 * abs(gaps["origin"])


# --------------------------------------------------------------------------------- moments
def test_accumulator_merge_equals_one_pass_and_matches_numpy():
    g = _gen(12)
    x = torch.randn(1000, 24, generator=g) * torch.linspace(0.2, 3, 24) + 2
    one = vslerp.MomentAccumulator(24).update(x)
    shards = [vslerp.MomentAccumulator(24).update(s) for s in x.split(137)]
    merged = shards[0]
    for s in shards[1:]:
        merged.merge(s)
    assert merged.count == one.count == 1000
    for name in ("sum", "sum_unit", "sum_outer", "sum_norm", "sum_sq_norm"):
        torch.testing.assert_close(getattr(merged, name), getattr(one, name), atol=1e-9, rtol=1e-12)
    xd = x.double().numpy()
    np.testing.assert_allclose(one.mean.numpy(), xd.mean(0), atol=1e-12)
    np.testing.assert_allclose(one.covariance().numpy(), np.cov(xd, rowvar=False), atol=1e-10)
    np.testing.assert_allclose(one.std(correction=0).numpy(), xd.std(0), atol=1e-10)
    unit = xd / np.linalg.norm(xd, axis=1, keepdims=True)
    np.testing.assert_allclose(one.mean_unit.numpy(), unit.mean(0), atol=1e-12)
    centered = xd - xd.mean(0)
    assert one.rms_centered == pytest.approx(np.sqrt((centered**2).sum(1).mean()), rel=1e-9)
    assert one.mean_norm == pytest.approx(np.linalg.norm(xd, axis=1).mean(), rel=1e-12)
    assert one.offset() == pytest.approx(
        np.linalg.norm(xd.mean(0)) / np.linalg.norm(xd.std(0, ddof=1)), rel=1e-9)
    # exact conformity from the sums alone
    coeffs = one.conformity_coefficients()
    cos_unit = vslerp.cosine_to_mean(x.double(), one.mean_unit)
    torch.testing.assert_close(coeffs.a * cos_unit + coeffs.b, vslerp.conformity(x.double()),
                               atol=1e-10, rtol=0)


def test_accumulator_state_dict_round_trip_and_errors():
    g = _gen(13)
    acc = vslerp.MomentAccumulator(8).update(torch.randn(50, 8, generator=g))
    back = vslerp.MomentAccumulator.from_state_dict(acc.state_dict())
    assert back.count == 50
    torch.testing.assert_close(back.covariance(), acc.covariance())
    with pytest.raises(ValueError, match="8 features"):
        acc.update(torch.randn(3, 9))
    with pytest.raises(ValueError, match="dim"):
        acc.merge(vslerp.MomentAccumulator(9))
    with pytest.raises(TypeError):
        acc.merge("nope")
    with pytest.raises(ValueError, match="at least 1 embedding"):
        _ = vslerp.MomentAccumulator(8).mean
    with pytest.raises(ValueError, match="missing"):
        vslerp.MomentAccumulator.from_state_dict({"sum": torch.zeros(8)})
    bad = torch.randn(4, 8)
    bad[1] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        vslerp.MomentAccumulator(8).update(bad)


def test_separability_odd_thin_shell_against_numpy():
    g = _gen(14)
    image = torch.randn(800, 16, generator=g, dtype=torch.float64)
    text = torch.randn(800, 16, generator=g, dtype=torch.float64)
    image[:, 3] += 8  # a "tag" feature separating the modalities
    text[:, 7] -= 5
    acc_i = vslerp.MomentAccumulator(16).update(image)
    acc_t = vslerp.MomentAccumulator(16).update(text)
    sep = vslerp.separability(acc_i.mean, acc_i.variance(), acc_t.mean, acc_t.variance())
    ref = np.abs(image.numpy().mean(0) - text.numpy().mean(0)) / np.sqrt(
        image.numpy().var(0, ddof=1) + text.numpy().var(0, ddof=1))
    np.testing.assert_allclose(sep.numpy(), ref, rtol=1e-9)
    assert vslerp.top_features(sep, 2) == [3, 7]

    cov = np.cov(image.numpy(), rowvar=False)
    odd = vslerp.off_diagonal_dominance(torch.from_numpy(cov))
    ref_odd = (np.abs(cov).sum(1) - np.abs(np.diag(cov))) / np.diag(cov)
    np.testing.assert_allclose(odd.numpy(), ref_odd, rtol=1e-12)

    shell = vslerp.thin_shell(image, acc_i.mean)
    y = np.linalg.norm(image.numpy() - image.numpy().mean(0), axis=1)
    assert shell["mu_norm"] == pytest.approx(y.mean(), rel=1e-12)
    assert shell["var_y"] == pytest.approx(y.var(), rel=1e-9)
    assert shell["rms"] == pytest.approx(np.sqrt((y**2).mean()), rel=1e-12)
    assert shell["rms"] == pytest.approx(acc_i.rms_centered, rel=1e-9)
    assert 0 < shell["rel_error"] < 0.05  # a thin shell in 16-d already
    with pytest.raises(ValueError, match="non-positive diagonal"):
        vslerp.off_diagonal_dominance(torch.zeros(3, 3))
    with pytest.raises(ValueError, match="share one dimension"):
        vslerp.separability(torch.ones(3), torch.ones(3), torch.ones(4), torch.ones(4))
    assert math.isfinite(vslerp.offset_ratio(acc_i.mean, acc_i.std()))
