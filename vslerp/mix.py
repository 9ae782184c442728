"""N-way vertical mixing: Eq. 12 for N inputs, through the weighted spherical (Karcher) mean.

``vmix(v₁…v_N, w, α, m)`` shifts uᵢ = vᵢ − α·m, takes the weighted spherical mean q of the
directions ûᵢ (Buss & Fillmore 2001, "Spherical averages and applications to spherical
splines and interpolation"), writes it as q = Σ cᵢ ûᵢ and returns Σ cᵢ uᵢ + α·m: the raw uᵢ,
as SLERP applies its unit-circle weights to the raw vectors. For two inputs it is
:func:`vslerp.vslerp`.

The mean is found by Newton's method on the sphere in float64, in coordinates of the span of
v₁…v_N and m (one QR of those N + 1 vectors): a step costs O(N³) per weight row whatever D.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .checks import as_tensor, check_finite, check_int, check_magnitude, compute_dtype
from .interp import check_result, unit

__all__ = ["MixCoefficients", "vmix", "vmix_coefficients"]

TOL = 1e-12  # default convergence tolerance: ‖Σ wᵢ log_q(ûᵢ)‖ in radians
MAX_ITER = 64  # default cap on Newton steps
_CANCEL = 1e-9  # a weighted mean of unit directions (or Σ wᵢ θᵢ cot θᵢ) this small: they cancel
_TOO_FAR = math.pi / 1e-4  # θ/sin θ of a direction within 1e-4 of π from the mean: antipodal
_MAX_STEP = 1.0  # radians: the longest step, so that a far start cannot jump past the mean


@dataclass(frozen=True)
class MixCoefficients:
    """What :func:`vmix_coefficients` found, for B = the broadcast leading dimensions."""

    coefficients: torch.Tensor  # (B..., N) float64 cᵢ: the mix is Σ cᵢ (vᵢ − αm) + αm
    iterations: int  # Newton steps taken (the slowest row); 0 when the start was the mean
    residual: float  # max over rows of ‖Σ wᵢ log_q(ûᵢ)‖ at the mean q found (radians)


@dataclass(frozen=True)
class _Request:
    raw: torch.Tensor  # (Bv..., N, D) raw vectors, in the compute dtype (float32 or float64)
    mean: torch.Tensor  # (D,) raw mean, in the compute dtype
    weights: torch.Tensor  # (Bw..., N) float64, rows summing to 1
    alpha: torch.Tensor  # (Ba...) float64
    batch: torch.Size  # broadcast of Bv, Bw, Ba
    out_dtype: torch.dtype


def _check(vectors, weights, alpha, mean, tol, max_iter) -> _Request:
    """Every argument checked before any compute; weights and alpha in float64, vectors and
    mean in the compute dtype (float32, float64 for float64 input), on the vectors' device."""
    vectors = as_tensor("vectors", vectors, min_rank=2)
    check_finite("vectors", vectors)
    n, dim = vectors.shape[-2], vectors.shape[-1]
    device = vectors.device
    mean = as_tensor("mean", mean, rank=1)
    if mean.shape[0] != dim:
        raise ValueError(f"mean must have shape ({dim},) to match vectors {tuple(vectors.shape)}, "
                         f"got {tuple(mean.shape)}")
    check_finite("mean", mean)
    weights = as_tensor("weights", weights, min_rank=1)
    if weights.shape[-1] != n:
        raise ValueError(f"weights must have {n} entries in its last dimension (one per vector of "
                         f"vectors {tuple(vectors.shape)}), got shape {tuple(weights.shape)}")
    check_finite("weights", weights)
    weights = weights.to(device=device, dtype=torch.float64)
    if bool((weights < 0).any()):
        raise ValueError(f"weights must be non-negative, got {float(weights.min()):g}")
    top = weights.amax(dim=-1, keepdim=True)  # (Bw..., 1): scale first, so sums cannot overflow
    if bool((top == 0).any()):
        zero = torch.nonzero((top == 0).reshape(-1))[:5].flatten().tolist()
        raise ValueError(f"weights has {int((top == 0).sum())} all-zero row(s) (flat indices "
                         f"{zero}): each mix needs a positive weight")
    scaled = weights / top
    weights = scaled / scaled.sum(dim=-1, keepdim=True)  # (Bw..., N), rows sum to 1
    alpha = as_tensor("alpha", alpha)
    check_magnitude("alpha", alpha)
    alpha = alpha.to(device=device, dtype=torch.float64)
    try:
        batch = torch.broadcast_shapes(vectors.shape[:-2], weights.shape[:-1], alpha.shape)
    except RuntimeError:
        raise ValueError(f"weights {tuple(weights.shape)} and alpha {tuple(alpha.shape)} do not "
                         f"broadcast with the leading dimensions of vectors "
                         f"{tuple(vectors.shape)}") from None
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not 0 < tol < math.inf:
        raise ValueError(f"tol must be a positive finite number, got {tol!r}")
    check_int("max_iter", max_iter)
    cd = compute_dtype(vectors, mean)
    return _Request(vectors.to(cd), mean.to(device=device, dtype=cd), weights, alpha, batch,
                    vectors.dtype)


def _with_mean(req: _Request) -> torch.Tensor:
    """[v₁…v_N; m], (Bv..., N+1, D) in the compute dtype."""
    return torch.cat([req.raw, req.mean.expand(*req.raw.shape[:-2], 1, req.mean.shape[0])], dim=-2)


def _shifted_directions(req: _Request) -> torch.Tensor:
    """Unit directions of uᵢ = vᵢ − αm, (Bu..., N, r) float64 (Bu: the leading dimensions of
    the vectors and alpha), as coordinates in an orthonormal basis of span(v₁…v_N, m),
    r = min(N + 1, D): lengths and angles as in R^D."""
    n, dim = req.raw.shape[-2:]
    stacked = _with_mean(req).to(torch.float64)  # (Bv..., N+1, D)
    _, upper = torch.linalg.qr(stacked.mT)  # (Bv..., r, N+1): column i = coordinates of row i
    coords = upper.mT  # (Bv..., N+1, r)
    vec, mean = coords[..., :n, :], coords[..., n:, :]  # (Bv..., N, r), (Bv..., 1, r)
    alpha = req.alpha[..., None, None]  # (Ba..., 1, 1)
    shifted = vec - alpha * mean  # (Bu..., N, r)
    # vᵢ = αm (to rounding) leaves a direction made of rounding errors: refuse it by name.
    size = (torch.linalg.vector_norm(vec, dim=-1)
            + alpha.squeeze(-1).abs() * torch.linalg.vector_norm(mean, dim=-1))  # (Bu..., N)
    zero = torch.linalg.vector_norm(shifted, dim=-1) <= 64 * torch.finfo(torch.float64).eps * size
    if bool(zero.any()):
        raise ValueError(f"vectors − alpha·mean is zero (to rounding) for {int(zero.sum())} "
                         "vector(s): its direction, and so the mix, is undefined")
    return unit("vectors", shifted)


def _combine(coef: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Σᵢ coefᵢ·rowsᵢ: (B..., N) x (Bu..., N, k) -> (B..., k), one matrix product (rows shared
    by every weight row when Bu is empty)."""
    return torch.matmul(coef.unsqueeze(-2), rows).squeeze(-2)


def _spherical_mean(units: torch.Tensor, weights: torch.Tensor, tol: float,
                    max_iter: int) -> MixCoefficients:
    """Coefficients cᵢ of the weighted spherical mean q = Σ cᵢ ûᵢ of ``units`` (Bu..., N, r),
    ``weights`` (B..., N) rows summing to 1: Newton's method on the sphere from the
    normalised linear mean (Buss & Fillmore's fixed-point step where the Hessian is not
    positive definite)."""
    dim = units.shape[-1]
    active = weights > 0  # zero-weight directions play no part (they may even be antipodal)
    outer = (units.unsqueeze(-1) * units.unsqueeze(-2)).flatten(-2)  # (Bu..., N, r²): ûᵢûᵢᵀ
    linear = _combine(weights, units)  # (B..., r)
    length = torch.linalg.vector_norm(linear, dim=-1, keepdim=True)  # (B..., 1)
    if bool((length <= _CANCEL).any()):
        raise ValueError("the weighted directions cancel (their weighted linear mean is ~0, e.g. "
                         "antipodal inputs with equal weights): the spherical mean is undefined")
    q = linear / length  # (B..., r)
    for step in range(max_iter + 1):
        # θᵢ from the dot products ûᵢ·q, (B..., N) rather than (B..., N, r) of differences: its
        # rounding near θ = 0 (~1e-8) is harmless, as θ/sin θ and θ cot θ are flat there, and
        # near π, where they are not, the mean is refused as undefined.
        cos = torch.matmul(q.unsqueeze(-2), units.mT).squeeze(-2).clamp(-1.0, 1.0)  # (B..., N)
        theta = torch.acos(cos)
        over_sin = torch.where(active, 1 / torch.sinc(theta / math.pi), 0.0)  # sᵢ = θᵢ/sin θᵢ
        if bool((over_sin > _TOO_FAR).any()):  # θ/sin θ > π/1e-4: θ within 1e-4 of π
            raise ValueError("an input direction is antipodal to the weighted spherical mean "
                             "(vectors − alpha·mean nearly opposite): the mean is undefined")
        scaled = weights * over_sin  # (B..., N)
        theta_cot = (scaled * cos).sum(dim=-1, keepdim=True)  # (B..., 1): Σ wᵢ θᵢ cot θᵢ
        # Σ wᵢ log_q(ûᵢ), log_q(û) = θ/sin θ·(û − cos θ·q): minus the gradient of Σ wᵢ d²/2
        gradient = _combine(scaled, units) - theta_cot * q  # (B..., r)
        residual = float(torch.linalg.vector_norm(gradient, dim=-1).max())  # the slowest row
        if residual <= tol:
            break
        if step == max_iter:
            raise ValueError(f"the weighted spherical mean did not converge in max_iter={max_iter} "
                             f"steps (residual {residual:.3g} > tol={tol:g}): it is "
                             "ill-defined for these directions (nearly antipodal inputs?)")
        # Newton: solve H v = Σ wᵢ log_q(ûᵢ), H the Riemannian Hessian of Σ wᵢ d(q, ûᵢ)²/2,
        # Σ wᵢ [θᵢ cot θᵢ (I − qqᵀ) + (1 − θᵢ cot θᵢ) tᵢtᵢᵀ] (tᵢ the unit tangent towards ûᵢ),
        # plus qqᵀ (then H q = q: invertible, and v stays tangent). With κᵢ = cos θᵢ,
        # tᵢ = (ûᵢ − κᵢq)/sin θᵢ, so Σ wᵢ (1 − θᵢ cot θᵢ) tᵢtᵢᵀ = Σ βᵢ (ûᵢ − κᵢq)(ûᵢ − κᵢq)ᵀ
        # = S − p qᵀ − q pᵀ + γ qqᵀ (S = Σ βᵢûᵢûᵢᵀ, p = Σ βᵢκᵢûᵢ, γ = Σ βᵢκᵢ²) and, with
        # a = Σ wᵢ θᵢ cot θᵢ: H = S + a·I + q yᵀ + y qᵀ, y = (1 − a + γ)/2·q − p.
        # βᵢ = wᵢ sᵢ² (1 − θᵢ cot θᵢ)/θᵢ²; the last factor is 1/3 + θ²/45 + … near 0.
        rest = torch.where(theta < 1e-4, 1 / 3, (1 - cos * over_sin) / theta.square())
        beta = scaled * over_sin * rest  # (B..., N)
        beta_cos = beta * cos
        p = _combine(beta_cos, units)  # (B..., r)
        gamma = (beta_cos * cos).sum(dim=-1, keepdim=True)  # (B..., 1)
        y = (1 - theta_cot + gamma) / 2 * q - p  # (B..., r)
        cross = q.unsqueeze(-1) * y.unsqueeze(-2)  # (B..., r, r): q yᵀ
        hessian = _combine(beta, outer).unflatten(-1, (dim, dim)) + cross + cross.mT
        hessian.diagonal(dim1=-2, dim2=-1).add_(theta_cot)
        factor, info = torch.linalg.cholesky_ex(hessian)
        # Two triangular solves rather than cholesky_solve: the same, and (batched, with more
        # than one thread) not many times slower on a busy machine.
        half = torch.linalg.solve_triangular(factor, gradient.unsqueeze(-1), upper=False)
        newton = torch.linalg.solve_triangular(factor.mT, half, upper=True).squeeze(-1)
        # Where H is not positive definite (directions far apart), Buss & Fillmore's step.
        move = torch.where((info == 0).unsqueeze(-1), newton, gradient)  # (B..., r) tangent
        length = torch.linalg.vector_norm(move, dim=-1, keepdim=True)  # (B..., 1)
        shrink = torch.clamp(_MAX_STEP / length, max=1.0)  # a far start (1/0 = inf → 1)
        length = length * shrink
        q = torch.cos(length) * q + (torch.sinc(length / math.pi) * shrink) * move  # exp_q(move)
        q = q / torch.linalg.vector_norm(q, dim=-1, keepdim=True)
    # At the mean Σ wᵢ log_q(ûᵢ) = 0, so q = Σ cᵢ ûᵢ with cᵢ = wᵢ θᵢ/sin θᵢ / Σⱼ wⱼ θⱼ cot θⱼ.
    if bool((theta_cot <= _CANCEL).any()):
        raise ValueError("the weighted spherical mean is not a positive combination of the "
                         "directions (they spread over more than a hemisphere): undefined")
    coefficients = scaled / theta_cot
    one_hot = (weights == 1).any(dim=-1, keepdim=True)  # one input: that input, exactly
    coefficients = torch.where(one_hot, weights, coefficients)
    return MixCoefficients(coefficients, step, residual)


def vmix_coefficients(vectors, weights, alpha, mean, *, tol: float = TOL,
                      max_iter: int = MAX_ITER) -> MixCoefficients:
    """The coefficients cᵢ of :func:`vmix` (same arguments), with the Newton steps taken and
    the final residual: ``vmix(...) == Σ cᵢ (vᵢ − α·m) + α·m``."""
    req = _check(vectors, weights, alpha, mean, tol, max_iter)
    return _spherical_mean(_shifted_directions(req), req.weights, tol, max_iter)


def vmix(vectors, weights, alpha, mean, *, tol: float = TOL, max_iter: int = MAX_ITER) -> torch.Tensor:
    """Vertical mix of N raw embeddings: Eq. 12 generalised by the weighted spherical mean.

    Shift uᵢ = vᵢ − α·m, find the weighted spherical (Karcher) mean q of the ûᵢ (Buss &
    Fillmore 2001), write q = Σ cᵢ ûᵢ with cᵢ = wᵢ·θᵢ/sin θᵢ / Σⱼ wⱼ·θⱼ·cot θⱼ (θᵢ the angle
    from ûᵢ to q: the mean's condition Σ wᵢ log_q(ûᵢ) = 0 solved for q), return Σ cᵢ uᵢ + α·m.

    N = 2, weights (1 − t, t) is ``vslerp(a, b, t, alpha, mean)``: the mean of two points is the
    point tΩ along their geodesic, so θ = (tΩ, (1 − t)Ω), and cot tΩ + cot (1 − t)Ω =
    sin Ω / (sin tΩ · sin (1 − t)Ω) turns cᵢ into SLERP's sin((1 − t)Ω)/sin Ω, sin(tΩ)/sin Ω.

    Args:
        vectors: (..., N, D) raw embeddings (not normalised), any float dtype.
        weights: (..., N) or (N,), non-negative, each row with a positive entry; normalised to
            sum 1. Weights (K, N) with vectors (N, D) give K mixes of the same inputs.
        alpha: a float or a tensor broadcasting with the leading dimensions; 0 mixes about
            the origin, 1 about the mean.
        mean: (D,) raw modality mean m.
        tol: convergence tolerance on ‖Σ wᵢ log_q(ûᵢ)‖ (radians).
        max_iter: the most Newton steps before ``ValueError``.

    Returns:
        (B..., D) in the dtype of ``vectors``, B the broadcast of the leading dimensions of
        ``vectors``, ``weights`` and ``alpha``. A one-hot weight row returns that input exactly
        (so does N = 1). The mean is found in float64 whatever the input dtype; the final
        sum runs in float32 (float64 for float64 input), as in :func:`vslerp.vslerp`.

    Raises:
        ValueError: bad arguments (naming them: ``weights`` all-zero, negative, NaN or of the
            wrong length), a zero shifted vector, directions whose mean is undefined (they
            cancel, one is antipodal to it) or that do not converge in ``max_iter`` steps.
        TypeError: an argument that is not a real tensor or number (named).
    """
    req = _check(vectors, weights, alpha, mean, tol, max_iter)
    mix = _spherical_mean(_shifted_directions(req), req.weights, tol, max_iter)
    coefficients = mix.coefficients.expand(*req.batch, mix.coefficients.shape[-1])  # (B..., N)
    # Σ cᵢ (vᵢ − αm) + αm = Σ cᵢ vᵢ + α (1 − Σ cᵢ) m: one product with [v₁…v_N; m], no
    # (B..., N, D) shifted copy; the mean's weight is exactly 0 for a one-hot row.
    rest = (req.alpha * (1 - coefficients.sum(dim=-1))).expand(req.batch)  # (B...,)
    both = torch.cat([coefficients, rest.unsqueeze(-1)], dim=-1)  # (B..., N+1) float64
    out = _combine(both.to(req.raw.dtype), _with_mean(req))  # (B..., D)
    return check_result(out.to(req.out_dtype), "vmix(vectors, weights, alpha, mean)")
