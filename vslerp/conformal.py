"""Conformity (paper §6.1, Eq. 10–11): exact in O(N·D), estimated from the mean, and fits."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .checks import CHUNK_ROWS, as_tensor, check_finite, check_matrix, compute_dtype, row_norms

__all__ = [
    "ConformityFit",
    "LinearFit",
    "conformity",
    "conformity_fit",
    "cosine_to_mean",
    "exact_conformity_coefficients",
    "unit_sum",
]

def unit_sum(x: torch.Tensor) -> torch.Tensor:
    """Σ_j x_j/‖x_j‖ over the rows of x (N, D), as (D,) float64. O(D) extra memory."""
    x = check_matrix("x", x)
    return _unit_sum(x, compute_dtype(x))


def _unit_sum(x: torch.Tensor, cd: torch.dtype, norms_out: torch.Tensor | None = None):
    total = torch.zeros(x.shape[1], dtype=torch.float64, device=x.device)
    for start in range(0, x.shape[0], CHUNK_ROWS):
        raw = x[start : start + CHUNK_ROWS].to(cd)  # (n, D)
        norms = row_norms("x", raw, start)  # (n,)
        if norms_out is not None:
            norms_out[start : start + raw.shape[0]] = norms
        total += (norms.reciprocal() @ raw).to(torch.float64)  # Σ û over the chunk, (D,)
    return total


def conformity(x: torch.Tensor) -> torch.Tensor:
    """Exact conformity, paper Eq. 10: C(v_j) = mean over k≠j of cos(v_j, v_k).

    x: (N, D) raw embeddings, N ≥ 2. Uses Σ_{k≠j} cos(v_j, v_k) = û_j·(Σ_k û_k) − 1, so it
    runs in O(N·D) time (three passes over x) and O(D) extra memory (chunked), never forming
    the N×N matrix. Returns (N,) float32 (float64 for float64 input).
    """
    x = check_matrix("x", x)
    n = x.shape[0]
    if n < 2:
        raise ValueError(f"conformity needs at least 2 vectors in x, got N={n}")
    cd = compute_dtype(x)
    out = torch.empty(n, dtype=cd, device=x.device)  # holds the row norms until overwritten
    total = _unit_sum(x, cd, norms_out=out).to(cd)  # (D,)
    for start in range(0, n, CHUNK_ROWS):
        raw = x[start : start + CHUNK_ROWS].to(cd)  # (n_chunk, D)
        norms = out[start : start + raw.shape[0]]
        dots = (raw @ total) / norms  # û_j · Σû, (n_chunk,)
        out[start : start + raw.shape[0]] = (dots - 1.0) / (n - 1)
    return out


def cosine_to_mean(x: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """cos(v_j, m) for each row of x (N, D) and a mean (D,): paper Eq. 11 without a, b.

    Returns (N,) float32 (float64 for float64 input).
    """
    x = check_matrix("x", x)
    mean = as_tensor("mean", mean, rank=1)
    if mean.shape[0] != x.shape[1]:
        raise ValueError(f"mean must have shape ({x.shape[1]},) to match x, got {tuple(mean.shape)}")
    cd = compute_dtype(x, mean)
    mean_c = mean.to(device=x.device, dtype=cd)
    check_finite("mean", mean_c)
    scale = mean_c.abs().max()
    if scale == 0:
        raise ValueError("mean is the zero vector: the cosine to it is undefined")
    mean_unit = (mean_c / scale) / torch.linalg.vector_norm(mean_c / scale)
    out = torch.empty(x.shape[0], dtype=cd, device=x.device)
    for start in range(0, x.shape[0], CHUNK_ROWS):
        raw = x[start : start + CHUNK_ROWS].to(cd)  # (n, D)
        out[start : start + raw.shape[0]] = (raw @ mean_unit) / row_norms("x", raw, start)
    return out


@dataclass(frozen=True)
class LinearFit:
    """y ≈ a·x + b with Pearson correlation r between x and y."""

    a: float  # slope
    b: float  # intercept
    r: float  # Pearson correlation of x and y


@dataclass(frozen=True)
class ConformityFit:
    """Both regression directions between cos-to-mean and exact conformity (paper Eq. 11)."""

    conformity_from_cos: LinearFit  # Ĉ = a·cos(m, v) + b: the estimator of Eq. 11
    cos_from_conformity: LinearFit  # cos = a·C + b: the direction whose a > 1 the paper reports


def _linear_fit(x: torch.Tensor, y: torch.Tensor) -> LinearFit:
    x = x.to(torch.float64)
    y = y.to(torch.float64)
    dx, dy = x - x.mean(), y - y.mean()
    sxx, syy, sxy = (dx * dx).sum(), (dy * dy).sum(), (dx * dy).sum()
    if sxx == 0 or syy == 0:
        raise ValueError("cannot fit a line: one of the inputs is constant (zero variance)")
    a = sxy / sxx
    b = y.mean() - a * x.mean()
    r = (sxy / torch.sqrt(sxx * syy)).clamp(-1.0, 1.0)
    return LinearFit(float(a), float(b), float(r))


def conformity_fit(cos: torch.Tensor, conf: torch.Tensor) -> ConformityFit:
    """Least-squares fits between cosine-to-mean (N,) and exact conformity (N,), both ways.

    Computed in float64. ``conformity_from_cos`` is Eq. 11's Ĉ = a·cos + b;
    ``cos_from_conformity`` regresses cos on C (a ≈ 1/‖μ̂‖ > 1, as the paper reports).
    """
    cos = as_tensor("cos", cos, rank=1)
    conf = as_tensor("conf", conf, rank=1)
    if cos.shape != conf.shape:
        raise ValueError(f"cos and conf must have the same shape, got {tuple(cos.shape)} and {tuple(conf.shape)}")
    if cos.shape[0] < 2:
        raise ValueError(f"a fit needs at least 2 points, got {cos.shape[0]}")
    check_finite("cos", cos)
    check_finite("conf", conf)
    return ConformityFit(_linear_fit(cos, conf), _linear_fit(conf, cos))


def exact_conformity_coefficients(count: int, mean_unit: torch.Tensor) -> LinearFit:
    """The exact a, b of C = a·cos(v, μ̂) + b, with μ̂ the mean of the N unit vectors.

    From Eq. 10: C(v_j) = (N‖μ̂‖·cos(v_j, μ̂) − 1)/(N − 1), so a = N‖μ̂‖/(N−1),
    b = −1/(N−1) and r = 1 (this holds for cos to μ̂; to the raw mean it is the estimate).
    """
    if not isinstance(count, int) or count < 2:
        raise ValueError(f"count must be an int ≥ 2, got {count!r}")
    mean_unit = as_tensor("mean_unit", mean_unit, rank=1)
    norm = float(torch.linalg.vector_norm(mean_unit.to(torch.float64)))
    return LinearFit(count * norm / (count - 1), -1.0 / (count - 1), 1.0)
