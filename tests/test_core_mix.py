"""N-way vertical mixing, ``vslerp.vmix``: the weighted spherical (Karcher) mean of the
mean-shifted inputs; N = 2 is vSLERP (Eq. 12)."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import vslerp

ROOT = Path(__file__).resolve().parents[1]
DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]


def _inputs(seed: int, n: int, dim: int, offset: float = 3.0, dtype=torch.float64):
    """(vectors (N, D), mean (D,)): a thin shell around a mean far from the origin, like CLIP's."""
    g = torch.Generator().manual_seed(seed)
    mean = torch.randn(dim, generator=g, dtype=torch.float64)
    mean = offset * mean / mean.norm()
    noise = torch.randn(n, dim, generator=g, dtype=torch.float64)
    vectors = mean + noise / noise.norm(dim=1, keepdim=True)
    return vectors.to(dtype), mean.to(dtype)


def _weights(seed: int, *shape: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(*shape, generator=g, dtype=torch.float64) + 0.05


def _np_karcher(units: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Independent reference: Buss & Fillmore's first algorithm in float64 numpy, in R^D,
    q ← exp_q(Σ wᵢ log_q(ûᵢ)) from the normalised linear mean, until the step is ~0."""
    q = w @ units
    q /= np.linalg.norm(q)
    for _ in range(20_000):
        cos = np.clip(units @ q, -1.0, 1.0)
        theta = np.arccos(cos)
        factor = np.where(theta > 1e-12, theta / np.maximum(np.sin(theta), 1e-300), 1.0)
        step = (w * factor) @ (units - cos[:, None] * q)
        size = np.linalg.norm(step)
        q = np.cos(size) * q + (np.sin(size) / size if size > 0 else 1.0) * step
        q /= np.linalg.norm(q)
        if size < 1e-15:
            break
    return q


# ------------------------------------------------------------------- N = 2 is vSLERP
@settings(max_examples=50, deadline=None)
@given(
    dim=st.integers(2, 24),
    t=st.one_of(st.sampled_from([0.0, 1.0, 1e-9, 0.5]), st.floats(0, 1)),
    alpha=st.floats(-2, 2),
    nearly_parallel=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_two_inputs_are_vslerp(dim, t, alpha, nearly_parallel, seed):
    g = torch.Generator().manual_seed(seed)
    a, mean = (torch.randn(dim, generator=g, dtype=torch.float64) for _ in range(2))
    b = (a + 1e-7 * torch.randn(dim, generator=g, dtype=torch.float64) if nearly_parallel
         else torch.randn(dim, generator=g, dtype=torch.float64) * 2)
    shift = alpha * mean
    assume(float((a - shift).norm()) > 1e-3 and float((b - shift).norm()) > 1e-3)
    assume(float(vslerp.angle(a - shift, b - shift)) < math.pi - 0.3)  # SLERP well-conditioned
    expected = vslerp.vslerp(a, b, t, alpha, mean)
    got = vslerp.vmix(torch.stack([a, b]), torch.tensor([1 - t, t], dtype=torch.float64),
                      alpha, mean)
    scale = max(1.0, float(a.abs().max()), float(b.abs().max()), float(shift.abs().max()))
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-9 * scale)
    if t in (0.0, 1.0):
        assert torch.equal(got, a if t == 0 else b)


def test_two_inputs_are_vslerp_along_a_whole_path_and_alpha_grid():
    vectors, mean = _inputs(0, 2, 64)
    ts = torch.linspace(0, 1, 11, dtype=torch.float64)
    alphas = torch.tensor([-2.0, 0.0, 1.0, 2.0], dtype=torch.float64)
    weights = torch.stack([1 - ts, ts], dim=-1)[:, None, :]  # (T, 1, 2)
    got = vslerp.vmix(vectors, weights, alphas[None, :], mean)  # (T, A, D)
    expected = vslerp.vslerp(vectors[0], vectors[1], ts[:, None], alphas[None, :], mean)
    assert got.shape == expected.shape == (11, 4, 64)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)


# -------------------------------------------------- the Karcher mean, independently
@pytest.mark.parametrize(("n", "dim", "alpha"), [(3, 3, 0.0), (3, 3, 1.0), (5, 16, 1.0),
                                                 (8, 64, 2.0), (8, 64, -1.0), (12, 7, 1.0)])
def test_matches_an_independent_karcher_mean(n, dim, alpha):
    """Σ cᵢ ûᵢ is the weighted spherical mean of the shifted inputs as an independent numpy
    transcription of Buss & Fillmore finds it, cᵢ = wᵢ θᵢ/sin θᵢ / Σ wⱼ θⱼ cot θⱼ, and vmix
    applies them to the raw shifted vectors."""
    vectors, mean = _inputs(n * dim, n, dim)
    w = _weights(n, n)
    w = w / w.sum()
    shifted = (vectors - alpha * mean).numpy()
    units = shifted / np.linalg.norm(shifted, axis=1, keepdims=True)
    q = _np_karcher(units, w.numpy())
    theta = np.arccos(np.clip(units @ q, -1, 1))
    coef = w.numpy() * theta / np.sin(theta) / np.sum(w.numpy() * theta / np.tan(theta))
    expected = coef @ shifted + alpha * mean.numpy()
    got = vslerp.vmix(vectors, w, alpha, mean)
    np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=1e-9)
    mix = vslerp.vmix_coefficients(vectors, w, alpha, mean)
    np.testing.assert_allclose(mix.coefficients.numpy(), coef, rtol=0, atol=1e-9)
    np.testing.assert_allclose(mix.coefficients.numpy() @ units, q, rtol=0, atol=1e-9)  # q = Σ cᵢûᵢ


def test_shared_inputs_many_weight_rows_converge_fast():
    """A CLIP-like shell: the benchmark's setting, small; few Newton steps, residual ≤ tol."""
    vectors, mean = _inputs(7, 8, 256)
    weights = _weights(8, 50, 8)
    for alpha in (0.0, 1.0, 2.0):
        mix = vslerp.vmix_coefficients(vectors, weights, alpha, mean)
        assert mix.coefficients.shape == (50, 8) and mix.coefficients.dtype == torch.float64
        assert mix.residual <= 1e-12 and 1 <= mix.iterations <= 6, (alpha, mix)
        loose = vslerp.vmix_coefficients(vectors, weights, alpha, mean, tol=1e-4)
        assert loose.residual <= 1e-4 and loose.iterations < mix.iterations


# ------------------------------------------------------------------------ properties
@settings(max_examples=30, deadline=None)
@given(n=st.integers(2, 8), dim=st.integers(2, 40), alpha=st.floats(-2, 2),
       seed=st.integers(0, 2**31 - 1))
def test_permutation_invariant(n, dim, alpha, seed):
    vectors, mean = _inputs(seed, n, dim)
    w = _weights(seed + 1, n)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    try:
        expected = vslerp.vmix(vectors, w, alpha, mean)
    except ValueError as err:  # a shift can put an input opposite the others: refused, by name
        assert "vectors" in str(err) or "mean" in str(err), err  # names what was wrong
        assume(False)
    got = vslerp.vmix(vectors[perm], w[perm], alpha, mean)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-11 * max(1.0, abs(alpha)) * 4)


@pytest.mark.parametrize("gap", [0.0, 1e-12, 1e-7])
def test_repeated_inputs_add_their_weights(gap):
    """An input given twice (or twice to within ``gap``) weighs as one with both weights:
    the mean's directions there are (nearly) equal, θ ≈ 0 between them."""
    vectors, mean = _inputs(9, 3, 16)
    twin = vectors[0] + gap * torch.ones(16, dtype=torch.float64)
    w = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)
    for alpha in (0.0, 1.0):
        merged = vslerp.vmix(vectors, torch.tensor([0.2 + 0.25, 0.3, 0.5], dtype=torch.float64), alpha, mean)
        got = vslerp.vmix(torch.cat([vectors, twin[None]]), torch.cat([w, torch.tensor([0.25])]),
                          alpha, mean)
        torch.testing.assert_close(got, merged, rtol=0, atol=1e-9 + 10 * gap)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 6), dim=st.integers(1, 40), dtype=st.sampled_from(DTYPES),
       alpha=st.floats(-2, 2), seed=st.integers(0, 2**31 - 1), data=st.data())
def test_one_hot_weight_returns_that_input_exactly(n, dim, dtype, alpha, seed, data):
    vectors, mean = _inputs(seed, n, dim, dtype=dtype)
    pick = data.draw(st.integers(0, n - 1))
    weights = torch.zeros(n, dtype=torch.float64)
    weights[pick] = data.draw(st.sampled_from([1.0, 0.25, 7.0]))
    try:
        got = vslerp.vmix(vectors, weights, alpha, mean)
    except ValueError as err:  # only a shifted input that is zero to rounding
        assert "is zero" in str(err)
        return
    assert got.dtype == dtype and torch.equal(got, vectors[pick])


def test_single_input_is_returned():
    vectors, mean = _inputs(3, 1, 32, dtype=torch.float32)
    for alpha in (0.0, 1.0, -2.0):
        assert torch.equal(vslerp.vmix(vectors, torch.tensor([3.0]), alpha, mean), vectors[0])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_the_mean_is_found_in_float64_whatever_the_dtype(dtype):
    vectors, mean = _inputs(4, 5, 48, dtype=dtype)
    weights = _weights(5, 3, 5).to(dtype)
    low = vslerp.vmix_coefficients(vectors, weights, 1.0, mean)
    high = vslerp.vmix_coefficients(vectors.double(), weights.double(), 1.0, mean.double())
    assert low.coefficients.dtype == torch.float64
    assert torch.equal(low.coefficients, high.coefficients)  # the same float64 computation
    got = vslerp.vmix(vectors, weights, 1.0, mean)
    assert got.dtype == dtype
    expected = vslerp.vmix(vectors.double(), weights.double(), 1.0, mean.double())
    torch.testing.assert_close(got.double(), expected, rtol=0,
                               atol=8 * torch.finfo(dtype).eps * float(expected.abs().max()))


def test_batched_over_leading_dimensions_and_weight_rows():
    vectors, mean = _inputs(5, 4, 16)
    batch = torch.stack([vectors, vectors.flip(0) * 1.5, vectors + 0.5])  # (3, N, D)
    weights = _weights(6, 3, 4)
    alphas = torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64)
    got = vslerp.vmix(batch, weights, alphas, mean)  # (3, D)
    rows = [vslerp.vmix(batch[k], weights[k], float(alphas[k]), mean) for k in range(3)]
    torch.testing.assert_close(got, torch.stack(rows), rtol=0, atol=1e-12)
    # K weight rows over one set of inputs, times A alphas: (K, A, D)
    grid = vslerp.vmix(vectors, weights[:, None, :], alphas[None, :], mean)
    assert grid.shape == (3, 3, 16)
    for k in range(3):
        for a in range(3):
            torch.testing.assert_close(grid[k, a], vslerp.vmix(vectors, weights[k], float(alphas[a]), mean),
                                       rtol=0, atol=1e-12)
    # one weight row for a batch of input sets
    assert vslerp.vmix(batch, weights[0], 1.0, mean).shape == (3, 16)


@settings(max_examples=25, deadline=None)
@given(dtype=st.sampled_from(DTYPES), magnitude=st.sampled_from([1e-30, 1e-3, 1.0, 1e3, 1e30]),
       seed=st.integers(0, 1000))
def test_never_nan_for_finite_input(dtype, magnitude, seed):
    vectors, mean = _inputs(seed, 4, 8, dtype=torch.float64)
    vectors, mean = (vectors * magnitude).to(dtype), (mean * magnitude).to(dtype)
    assume(bool(torch.isfinite(vectors).all() and torch.isfinite(mean).all()))  # finite input
    try:
        out = vslerp.vmix(vectors, _weights(seed, 4), 1.0, mean)
    except ValueError as err:  # refused by name (zero after rounding to dtype, overflow)
        assert any(w in str(err) for w in ("zero", "overflows", "undefined", "antipodal")), err
        return
    assert bool(torch.isfinite(out).all())


# ---------------------------------------------------------------------------- refusals
def test_bad_weights_are_refused_by_name():
    vectors, mean = _inputs(1, 3, 8)
    for bad, words in [([1.0, 1.0], "3 entries"), ([1.0, -0.5, 1.0], "non-negative"),
                       ([0.0, 0.0, 0.0], "all-zero"), ([1.0, float("nan"), 1.0], "non-finite"),
                       ([[1.0, 0, 0], [0, 0, 0]], "all-zero row")]:
        with pytest.raises(ValueError, match=f"weights.*{words}|{words}.*weights"):
            vslerp.vmix(vectors, torch.tensor(bad), 1.0, mean)
    with pytest.raises(TypeError, match="weights"):
        vslerp.vmix(vectors, "1,2,3", 1.0, mean)
    with pytest.raises(ValueError, match="do not broadcast"):
        vslerp.vmix(vectors, torch.ones(2, 3), torch.zeros(3), mean)


def test_other_bad_arguments_are_refused_by_name():
    vectors, mean = _inputs(1, 3, 8)
    w = torch.ones(3)
    with pytest.raises(ValueError, match="mean must have shape"):
        vslerp.vmix(vectors, w, 1.0, mean[:4])
    with pytest.raises(ValueError, match="vectors must have at least 2"):
        vslerp.vmix(vectors[0], w, 1.0, mean)
    with pytest.raises(ValueError, match="vectors contains 8 non-finite"):
        vslerp.vmix(torch.cat([vectors[:2], torch.full((1, 8), math.inf, dtype=torch.float64)]), w, 1.0, mean)
    with pytest.raises(ValueError, match="alpha 1e\\+07 is too large"):
        vslerp.vmix(vectors, w, 1e7, mean)
    with pytest.raises(ValueError, match="tol must be"):
        vslerp.vmix(vectors, w, 1.0, mean, tol=0)
    with pytest.raises(ValueError, match="max_iter must be"):
        vslerp.vmix(vectors, w, 1.0, mean, max_iter=0)
    with pytest.raises(ValueError, match="zero"):  # v₀ = 1·m: no direction to mix
        vslerp.vmix(torch.cat([mean[None], vectors[1:]]), w, 1.0, mean)


def test_undefined_means_are_refused():
    a = torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64)
    zero = torch.zeros(3, dtype=torch.float64)
    pair = torch.stack([a, -a])
    with pytest.raises(ValueError, match="cancel"):  # equal weights: every midpoint
        vslerp.vmix(pair, torch.tensor([0.5, 0.5]), 0.0, zero)
    with pytest.raises(ValueError, match="antipodal"):  # a circle of minima
        vslerp.vmix(pair, torch.tensor([0.6, 0.4]), 0.0, zero)
    # a zero weight on an antipodal input is no obstacle: it plays no part
    third = torch.tensor([2.0, 1.0, 0.0], dtype=torch.float64)
    out = vslerp.vmix(torch.stack([a, -a, third]), torch.tensor([0.5, 0.0, 0.5]), 0.0, zero)
    torch.testing.assert_close(out, vslerp.slerp(a, third, 0.5), rtol=0, atol=1e-12)


def test_not_converging_within_the_cap_is_an_error():
    vectors, mean = _inputs(2, 8, 64)
    weights = _weights(3, 8)
    with pytest.raises(ValueError, match="did not converge in max_iter=1"):
        vslerp.vmix(vectors, weights, 1.0, mean, max_iter=1)
    assert vslerp.vmix_coefficients(vectors, weights, 1.0, mean, max_iter=8).residual <= 1e-12


# ------------------------------------------------------------------------ conformity
def test_estimated_conformity_of_mixes():
    """Mixes are raw embeddings like grid cells: the project's estimator scores them, (K, A)
    after a reshape; a one-hot mix of a reference member scores its exact Eq. 10 value."""
    from vslerp.defaults import CONFORMITY_EXACT
    from vslerp.stats import ModalityStats
    from vslerp.stats.scoring import estimated_conformity

    reference, _ = _inputs(11, 300, 32)
    acc = vslerp.MomentAccumulator(32).update(reference)
    stats = ModalityStats.from_accumulator(acc)
    weights = torch.cat([torch.eye(4, dtype=torch.float64), _weights(12, 3, 4)])  # (K=7, N=4)
    alphas = torch.tensor([-1.0, 0.0, 1.0, 2.0], dtype=torch.float64)
    mixes = vslerp.vmix(reference[:4], weights[:, None, :], alphas[None, :], acc.mean)  # (K, A, D)
    scores, name, _ = estimated_conformity(mixes.reshape(-1, 32), stats)
    scores = scores.reshape(7, 4)
    assert name == CONFORMITY_EXACT and scores.shape == (7, 4)
    exact = vslerp.conformity(reference)[:4].float()  # (4,)
    torch.testing.assert_close(scores[:4], exact[:, None].expand(4, 4), rtol=0, atol=1e-6)
    cos = vslerp.cosine_to_mean(mixes.reshape(-1, 32), acc.mean).reshape(7, 4)
    assert bool((cos[4:] > 0).all())  # mixes stay on the mean's side of the shell


# ---------------------------------------------------------------------------- figure
def test_the_docs_figure_draws(tmp_path):
    """docs/figures/make_figures.py draws the 3-way mix figure with the package's vmix."""
    spec = importlib.util.spec_from_file_location("make_figures", ROOT / "docs/figures/make_figures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = module.vmix_paths(tmp_path / "vmix_paths.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
