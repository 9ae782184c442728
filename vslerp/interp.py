"""Spherical interpolation in raw embedding space: SLERP and vertical SLERP (paper Eq. 12)."""

from __future__ import annotations

import math

import torch

from .checks import as_tensor, check_finite, check_magnitude, check_nonzero_rows, compute_dtype

__all__ = ["angle", "slerp", "vslerp"]


def unit(name: str, raw: torch.Tensor) -> torch.Tensor:
    """Unit vectors of ``raw`` (..., D), overflow-safe: scaled by the max |entry| first; a zero
    vector is a ``ValueError`` naming ``name``."""
    scale = raw.abs().amax(dim=-1, keepdim=True)  # (..., 1)
    check_nonzero_rows(name, scale.squeeze(-1))
    scaled = raw / scale
    return scaled / torch.linalg.vector_norm(scaled, dim=-1, keepdim=True)


# Entries above this are computed on copies divided by a power of two (exact): the SLERP weights
# exceed 1 for wide angles, so their products could overflow while the result is representable.
_RESCALE_ABOVE = 2.0**64


def _pow2_scale(*raws: torch.Tensor) -> torch.Tensor:
    """(..., 1): 1 per vector, or the power of two at most its largest |entry| among ``raws``
    (broadcast together) where that exceeds ``_RESCALE_ABOVE``."""
    peak = raws[0].abs().amax(dim=-1, keepdim=True)
    for raw in raws[1:]:
        peak = torch.maximum(peak, raw.abs().amax(dim=-1, keepdim=True))
    return torch.where(peak > _RESCALE_ABOVE, torch.exp2(torch.floor(torch.log2(peak))), torch.ones_like(peak))


def _check_pair(a, b) -> tuple[torch.Tensor, torch.Tensor]:
    a = as_tensor("a", a, min_rank=1)
    b = as_tensor("b", b, min_rank=1)
    if a.shape[-1] != b.shape[-1]:
        raise ValueError(
            f"a and b must have the same last dimension, got a {tuple(a.shape)} and b {tuple(b.shape)}"
        )
    if a.device != b.device:
        raise ValueError(f"a and b must be on one device, got {a.device} and {b.device}")
    check_finite("a", a)
    check_finite("b", b)
    return a, b


def _as_batch_param(name: str, value, like: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    value = as_tensor(name, value)
    check_magnitude(name, value)  # NaN/Inf, or |t|, |alpha| > 1e6: refused by name, up front
    return value.to(device=like.device, dtype=dtype)


def check_result(out: torch.Tensor, what: str) -> torch.Tensor:
    """``out`` if finite: finite input can still overflow the compute dtype (huge vectors times
    large t/alpha); refuse that (``ValueError`` naming ``what``) rather than return Inf/NaN."""
    # A finite sum means finite entries (an Inf or NaN entry makes it Inf or NaN): one cheap
    # reduction first, the element-wise check only when the sum itself is not finite.
    if not bool(torch.isfinite(out.sum())) and not bool(torch.isfinite(out).all()):
        raise ValueError(f"{what} overflows {out.dtype}: the inputs are too large in magnitude "
                         "for this dtype (use float64 inputs or smaller t/alpha)")
    return out


def angle(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Angle Ω between whole vectors, (..., D) x (..., D) -> (...,), in radians.

    Ω = 2·atan2(‖â − b̂‖, ‖â + b̂‖): equal to arccos(â·b̂) (one *summed* dot product) but
    accurate near 0 and π. Computed in float32 or float64, returned in that dtype.
    """
    a, b = _check_pair(a, b)
    cd = compute_dtype(a, b)
    unit_a, unit_b = unit("a", a.to(cd)), unit("b", b.to(cd))
    return _angle_of_units(unit_a, unit_b)


def _angle_of_units(unit_a: torch.Tensor, unit_b: torch.Tensor) -> torch.Tensor:
    diff = torch.linalg.vector_norm(unit_a - unit_b, dim=-1)
    total = torch.linalg.vector_norm(unit_a + unit_b, dim=-1)
    return 2.0 * torch.atan2(diff, total)


def slerp(a: torch.Tensor, b: torch.Tensor, t) -> torch.Tensor:
    """Spherical linear interpolation (Shoemake), as used by the paper's Eq. 12.

    SLERP(a, b, t) = sin((1−t)Ω)/sin Ω · a + sin(tΩ)/sin Ω · b, with Ω the angle between the
    whole vectors a and b. a, b: (..., D) raw vectors (not normalised); t: float or tensor
    broadcastable with the leading dimensions. The weights are written with sinc, so (nearly)
    parallel vectors fall back smoothly to linear interpolation (1−t)·a + t·b. Exactly (or
    within ~10 float epsilons of) antipodal a and b raise ``ValueError``: SLERP is undefined.
    Computes in float32 (float64 for float64 input) and returns the promoted input dtype.
    """
    a, b = _check_pair(a, b)
    out_dtype = torch.promote_types(a.dtype, b.dtype)
    cd = compute_dtype(a, b)
    raw_a, raw_b = a.to(cd), b.to(cd)
    t = _as_batch_param("t", t, raw_a, cd)
    try:
        batch = torch.broadcast_shapes(raw_a.shape[:-1], raw_b.shape[:-1], t.shape)
    except RuntimeError:
        raise ValueError(
            f"t of shape {tuple(t.shape)} does not broadcast with the leading dimensions of "
            f"a {tuple(a.shape)} and b {tuple(b.shape)}"
        ) from None
    scale = _pow2_scale(raw_a, raw_b)  # (..., 1): huge vectors are combined at unit scale
    out = check_result(_slerp_weights_apply(raw_a / scale, raw_b / scale, t) * scale, "slerp(a, b, t)")
    return check_result(out.expand(*batch, out.shape[-1]).to(out_dtype), "slerp(a, b, t)")


def _slerp_weights_apply(raw_a: torch.Tensor, raw_b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The SLERP combination in the compute dtype; inputs already checked."""
    unit_a, unit_b = unit("a", raw_a), unit("b", raw_b)
    omega = _angle_of_units(unit_a, unit_b)  # (...,)
    total = torch.linalg.vector_norm(unit_a + unit_b, dim=-1)
    tol = 10 * torch.finfo(raw_a.dtype).eps
    if bool((total <= tol).any()):
        raise ValueError(
            "a and b are antipodal (angle π between them): SLERP is undefined, "
            "every great circle joins them"
        )
    # sin(kΩ)/sin(Ω) = k·sinc(kΩ/π)/sinc(Ω/π): exact at Ω → 0 (linear interpolation).
    sinc_omega = torch.sinc(omega / math.pi)
    weight_a = (1 - t) * torch.sinc((1 - t) * omega / math.pi) / sinc_omega  # (...,)
    weight_b = t * torch.sinc(t * omega / math.pi) / sinc_omega  # (...,)
    return weight_a.unsqueeze(-1) * raw_a + weight_b.unsqueeze(-1) * raw_b


def vslerp(a: torch.Tensor, b: torch.Tensor, t, alpha, mean: torch.Tensor) -> torch.Tensor:
    """Vertical SLERP, paper Eq. 12: SLERP(a − α·m, b − α·m, t) + α·m.

    a, b: (..., D) raw embeddings; t (θ in the paper) and alpha: floats or tensors that
    broadcast with the leading dimensions; mean: (D,) raw modality mean m. t = 0 returns
    ``a`` exactly and t = 1 returns ``b`` exactly; alpha = 0 is plain :func:`slerp`.
    Computes in float32 (float64 for float64 input) and returns the promoted input dtype.
    """
    a, b = _check_pair(a, b)
    mean = as_tensor("mean", mean, rank=1)
    if mean.shape[0] != a.shape[-1]:
        raise ValueError(f"mean must have shape ({a.shape[-1]},) to match a, got {tuple(mean.shape)}")
    check_finite("mean", mean)
    out_dtype = torch.promote_types(a.dtype, b.dtype)
    cd = compute_dtype(a, b, mean)
    raw_a, raw_b = a.to(cd), b.to(cd)
    t = _as_batch_param("t", t, raw_a, cd)
    alpha = _as_batch_param("alpha", alpha, raw_a, cd)
    try:
        batch = torch.broadcast_shapes(raw_a.shape[:-1], raw_b.shape[:-1], t.shape, alpha.shape)
    except RuntimeError:
        raise ValueError(
            f"t {tuple(t.shape)} and alpha {tuple(alpha.shape)} do not broadcast with the leading "
            f"dimensions of a {tuple(a.shape)} and b {tuple(b.shape)}"
        ) from None
    shift = alpha.unsqueeze(-1) * mean.to(device=raw_a.device, dtype=cd)  # (..., D)
    if not bool(torch.isfinite(shift).all()):
        raise ValueError(f"alpha·mean overflows {cd}: alpha or mean is too large in magnitude")
    scale = _pow2_scale(raw_a, raw_b, shift)  # (..., 1): huge vectors are combined at unit scale
    try:
        scaled_shift = shift / scale
        centered = (_slerp_weights_apply(raw_a / scale - scaled_shift, raw_b / scale - scaled_shift, t)
                    + scaled_shift) * scale
    except ValueError as err:
        raise ValueError(f"{err} (after shifting both by alpha·mean)") from None
    centered = centered.expand(*batch, a.shape[-1])
    # Endpoints exactly: (a − αm) + αm is not bit-equal to a in floating point.
    out = torch.where((t == 0).unsqueeze(-1), raw_a, centered)
    out = torch.where((t == 1).unsqueeze(-1), raw_b, out)
    return check_result(out.to(out_dtype), "vslerp(a, b, t, alpha, mean)")
