"""Input checks shared by the core functions: one clear error naming the argument."""

from __future__ import annotations

import torch

__all__ = [
    "CHUNK_ROWS",
    "MAX_EMBEDDING_VALUE",
    "MAX_MAGNITUDE",
    "as_tensor",
    "check_finite",
    "check_int",
    "check_matrix",
    "check_embedding_values",
    "check_magnitude",
    "check_nonzero_rows",
    "check_values",
    "compute_dtype",
    "row_norms",
    "unit_rows",
]

# The largest |t| / |alpha| the core accepts: far past any useful edit (the paper uses
# -2 <= alpha <= 2), small enough that sin/cos of t·Omega and alpha·m stay exact in float32.
MAX_MAGNITUDE = 1e6

# The largest |entry| of a raw embedding the pipelines render (source, target, negative, the
# image mean, every cell). Raw CLIP embeddings have entries of order 1 (norms of tens); a
# generator's layers turn entries of 1e30 into Inf and NaN (black cells), in float32 and more
# so in float16 (largest 65504). 1e4 leaves a factor of a thousand for scaled embeddings.
MAX_EMBEDDING_VALUE = 1e4


def compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """The dtype to compute in: float64 if any input is float64, else float32."""
    if any(t.dtype == torch.float64 for t in tensors):
        return torch.float64
    return torch.float32


def as_tensor(name: str, value, *, min_rank: int = 0, rank: int | None = None) -> torch.Tensor:
    """Return ``value`` as a real floating-point tensor, or raise naming ``name``.

    Complex tensors (and numbers) are a ``TypeError`` (casting would drop the imaginary
    part); empty tensors a ``ValueError`` — for every core function, which all come here.
    """
    if isinstance(value, complex) or (isinstance(value, torch.Tensor) and value.is_complex()):
        got = f"a {value.dtype} tensor" if isinstance(value, torch.Tensor) else f"{value!r}"
        raise TypeError(f"{name} must be real, got {got} (complex): embeddings, t and alpha "
                        "are real (pass .real or .abs() explicitly if that is meant)")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = torch.tensor(float(value), dtype=torch.float64)  # cast to the compute dtype later
    elif not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or a number, got {type(value).__name__}")
    if value.numel() == 0:
        raise ValueError(f"{name} is empty: got shape {tuple(value.shape)}, need a non-empty tensor")
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


def check_magnitude(name: str, value, limit: float = MAX_MAGNITUDE) -> None:
    """Raise ``ValueError`` naming ``name`` when ``value`` (a number, a sequence of numbers or a
    tensor) holds NaN/Inf or a value with ``|value| > limit``: "alpha 1e+308 is too large:
    |alpha| <= 1e+06". The one check of θ/α magnitudes (core, pipeline and CLI)."""
    if isinstance(value, torch.Tensor):
        flat = value.detach().reshape(-1).to(torch.float64).cpu().tolist()
    elif isinstance(value, (int, float)):
        flat = [float(value)]
    else:
        flat = [float(v) for v in value]
    for v in flat:
        if v != v or v in (float("inf"), float("-inf")):
            raise ValueError(f"{name} must be finite, got {v}")
        if abs(v) > limit:
            raise ValueError(f"{name} {v:g} is too large: |{name}| <= {limit:g}")


def check_embedding_values(name: str, raw: torch.Tensor, limit: float = MAX_EMBEDDING_VALUE) -> None:
    """Raise ``ValueError`` naming ``name`` when the finite embedding(s) ``raw`` hold an entry with
    ``|value| > limit`` (``MAX_EMBEDDING_VALUE``): "source embedding has an entry of magnitude
    1e+30, more than a generator can render (|value| <= 1e+04; raw CLIP embeddings are of order 1)"."""
    peak = float(raw.detach().abs().max().to(torch.float64)) if raw.numel() else 0.0
    if peak > limit:
        raise ValueError(f"{name} has an entry of magnitude {peak:.3g}, more than a generator can render "
                         f"(|value| <= {limit:g}; raw CLIP embeddings are of order 1)")


def check_int(name: str, value, low: int = 1) -> int:
    """``value`` if it is an int ≥ ``low`` (not a bool), else ``ValueError`` naming ``name``:
    "chunk_size must be an int ≥ 1, got 0". The one check of sizes, counts and bins."""
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ValueError(f"{name} must be an int ≥ {low}, got {value!r}")
    return value


def check_values(name: str, values) -> list[float]:
    """``values`` (a number, a sequence of numbers or a tensor, e.g. the α of a sweep) as a
    non-empty list of floats, each finite with |v| ≤ ``MAX_MAGNITUDE``; else an error naming
    ``name`` ("alphas is empty", "alpha 1e+308 is too large: |alpha| <= 1e+06")."""
    if isinstance(values, torch.Tensor):
        flat = as_tensor(name, values).detach().reshape(-1).to(torch.float64).cpu().tolist()
    elif isinstance(values, (int, float)) and not isinstance(values, bool):
        flat = [float(values)]
    else:
        try:
            flat = [float(v) for v in values]
        except (TypeError, ValueError):
            raise TypeError(f"{name} must be real numbers, got {values!r}") from None
    if not flat:
        raise ValueError(f"{name} is empty: give at least one value")
    check_magnitude(name[:-1] if name.endswith("s") else name, flat)
    return flat


CHUNK_ROWS = 16384  # rows per chunk: bounds the temporaries to O(chunk·D), not O(N·D)


def check_matrix(name: str, x) -> torch.Tensor:
    """``x`` as a real (N, D) tensor with N, D ≥ 1, or ``ValueError`` naming ``name``."""
    x = as_tensor(name, x, rank=2)
    if x.shape[0] == 0:
        raise ValueError(f"{name} is empty: got shape {tuple(x.shape)}, need at least one row")
    if x.shape[1] == 0:
        raise ValueError(f"{name} has zero features: got shape {tuple(x.shape)}")
    return x


def row_norms(name: str, raw: torch.Tensor, offset: int) -> torch.Tensor:
    """‖row‖ of one chunk (n, D) already in the compute dtype, as (n,).

    One pass in the common case; rows whose squared norm overflows or underflows (to 0 for a
    non-zero row, e.g. entries ~1e-30 in float32) are recomputed scaled by their max |entry|.
    Non-finite entries and zero rows raise ``ValueError`` naming ``name``.
    """
    norms = torch.linalg.vector_norm(raw, dim=1)  # (n,)
    bad = ~torch.isfinite(norms) | (norms == 0)
    if bool(bad.any()):
        check_finite(name, raw)  # NaN/Inf entries → error; else overflow, underflow or zero
        rows = raw[bad]
        scale = rows.abs().amax(dim=1)  # 0 only for a zero row
        safe = torch.where(scale > 0, scale, torch.ones_like(scale))
        norms[bad] = torch.linalg.vector_norm(rows / safe[:, None], dim=1) * scale
        if bool((~torch.isfinite(norms)).any()):
            raise ValueError(f"{name} has rows whose norm overflows {raw.dtype}")
    zero = norms == 0
    if bool(zero.any()):
        rows = (torch.nonzero(zero).flatten()[:5] + offset).tolist()
        check_nonzero_rows(f"{name} (rows {rows})", norms)
    return norms


def unit_rows(name: str, raw: torch.Tensor, offset: int, cd: torch.dtype) -> torch.Tensor:
    """Unit rows of one chunk (n, D) in dtype ``cd``; zero/non-finite rows raise."""
    raw = raw.to(cd)
    return raw / row_norms(name, raw, offset).unsqueeze(1)
