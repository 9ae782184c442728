"""Input checks shared by the core functions: one clear error naming the argument."""

from __future__ import annotations

import torch

__all__ = ["as_tensor", "check_finite", "check_nonzero_rows", "compute_dtype"]


def compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """The dtype to compute in: float64 if any input is float64, else float32."""
    if any(t.dtype == torch.float64 for t in tensors):
        return torch.float64
    return torch.float32


def as_tensor(name: str, value, *, min_rank: int = 0, rank: int | None = None) -> torch.Tensor:
    """Return ``value`` as a floating-point tensor, or raise naming ``name``."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = torch.tensor(float(value), dtype=torch.float64)  # cast to the compute dtype later
    elif not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or a number, got {type(value).__name__}")
    if not (value.is_floating_point()):
        value = value.to(torch.float32)
    if rank is not None and value.ndim != rank:
        raise ValueError(f"{name} must have rank {rank}, got shape {tuple(value.shape)}")
    if value.ndim < min_rank:
        raise ValueError(
            f"{name} must have at least {min_rank} dimension(s), got shape {tuple(value.shape)}"
        )
    return value


def check_finite(name: str, value: torch.Tensor) -> None:
    """Raise ``ValueError`` if ``value`` holds NaN or Inf."""
    if value.numel() and not bool(torch.isfinite(value).all()):
        bad = int((~torch.isfinite(value)).sum())
        raise ValueError(f"{name} contains {bad} non-finite value(s) (NaN or Inf)")


def check_nonzero_rows(name: str, norms: torch.Tensor) -> None:
    """Raise ``ValueError`` if any vector (row) has zero norm; ``norms`` is (...,)."""
    zero = norms == 0
    if bool(zero.any()):
        idx = torch.nonzero(zero.reshape(-1))[:5].flatten().tolist()
        raise ValueError(
            f"{name} contains {int(zero.sum())} zero vector(s) (flat indices {idx}); "
            "angles and cosines are undefined for them"
        )
