"""The CLIP loss of matched image–caption pairs (paper §5, Eq. 7–8) and under the mean shift
of Eq. 9, streamed over row chunks: memory O(chunk·P), never the P×P logits."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .checks import (
    as_tensor,
    check_finite,
    check_int,
    check_magnitude,
    check_matrix,
    check_values,
    compute_dtype,
    unit_rows,
)

__all__ = ["ClipLoss", "clip_loss", "clip_loss_vs_alpha"]

_F64 = torch.float64


@dataclass(frozen=True)
class ClipLoss:
    """Per-pair terms of the symmetric CLIP loss (Eq. 7–8), each (P,): loss = alignment + uniformity."""

    loss: torch.Tensor  # ℓ_j = ½[LSE_k l_jk − l_jj] + ½[LSE_k l_kj − l_jj], (P,) float64
    alignment: torch.Tensor  # −l_jj = −s·cos(i_j, t_j), (P,) float64
    uniformity: torch.Tensor  # ½ LSE_k l_jk + ½ LSE_k l_kj, (P,) float64
    correct: torch.Tensor  # (P,) bool: t_j is the arg-max of image j's row and i_j of caption j's column

    def summary(self) -> dict[str, float | int | None]:
        """The means as numbers: ``total``, ``alignment``, ``uniformity``, ``correct`` and
        ``misclassified`` (mean ℓ over those pairs; None when the group is empty), ``accuracy``
        (share of correct pairs) and ``pairs`` (P). Never NaN."""

        def group(mask: torch.Tensor) -> float | None:
            return float(self.loss[mask].mean()) if bool(mask.any()) else None

        return {"total": float(self.loss.mean()), "alignment": float(self.alignment.mean()),
                "uniformity": float(self.uniformity.mean()), "correct": group(self.correct),
                "misclassified": group(~self.correct),
                "accuracy": float(self.correct.to(_F64).mean()), "pairs": int(self.loss.shape[0])}


def _check_scale(logit_scale) -> float:
    if (isinstance(logit_scale, bool) or not isinstance(logit_scale, (int, float))
            or not math.isfinite(logit_scale) or logit_scale <= 0):
        raise ValueError(f"logit_scale must be a positive number, got {logit_scale!r}")
    check_magnitude("logit_scale", logit_scale)  # ≤ 1e6: the logits stay finite in float32
    return float(logit_scale)


def _check_pairs(image, text) -> tuple[torch.Tensor, torch.Tensor]:
    image = check_matrix("image", image)
    text = check_matrix("text", text)
    if image.shape != text.shape:
        raise ValueError(f"image and text must have the same shape (P, D), got "
                         f"{tuple(image.shape)} and {tuple(text.shape)}")
    if image.device != text.device:
        raise ValueError(f"image and text must be on one device, got {image.device} and {text.device}")
    return image, text


def clip_loss(image: torch.Tensor, text: torch.Tensor, *, logit_scale: float = 100.0,
              chunk_size: int = 1024) -> ClipLoss:
    """Symmetric CLIP loss of matched rows, paper Eq. 7, split as Eq. 8.

    image, text: (P, D) raw embeddings, row j of each a matching pair; logits
    l_jk = s·cos(i_j, t_k) with s = ``logit_scale`` (1/τ, CLIP's 100; at most 1e6). Streams
    ``chunk_size`` image rows at a time, merging the column log-sum-exp and arg-max chunk by
    chunk; logits in float32 (float64 for float64 input), reductions in float64. Ties go to
    the first arg-max, as ``torch.argmax``. Returns :class:`ClipLoss` of (P,) tensors.
    """
    image, text = _check_pairs(image, text)
    scale = _check_scale(logit_scale)
    check_int("chunk_size", chunk_size)
    cd = compute_dtype(image, text)
    image_unit = unit_rows("image", image, 0, cd)  # (P, D)
    text_unit = unit_rows("text", text, 0, cd)  # (P, D)
    n, dev = image.shape[0], image.device
    diag = torch.empty(n, dtype=_F64, device=dev)  # l_jj
    row_lse = torch.empty(n, dtype=_F64, device=dev)  # LSE over captions, per image
    row_ok = torch.empty(n, dtype=torch.bool, device=dev)
    col_lse = torch.full((n,), -math.inf, dtype=_F64, device=dev)  # running LSE over images
    col_max = torch.full((n,), -math.inf, dtype=cd, device=dev)
    col_arg = torch.zeros(n, dtype=torch.int64, device=dev)
    for start in range(0, n, chunk_size):
        stop = min(start + chunk_size, n)
        logits = (image_unit[start:stop] @ text_unit.T) * scale  # (c, P) in cd
        rows = torch.arange(start, stop, device=dev)
        diag[start:stop] = logits[rows - start, rows].to(_F64)
        row_ok[start:stop] = logits.argmax(dim=1) == rows
        chunk_max, chunk_arg = logits.max(dim=0)  # (P,)
        logits = logits.to(_F64)  # reductions in float64; the cd copy is released
        row_lse[start:stop] = torch.logsumexp(logits, dim=1)
        col_lse = torch.logaddexp(col_lse, torch.logsumexp(logits, dim=0))
        del logits
        better = chunk_max > col_max  # the first arg-max wins ties
        col_max = torch.where(better, chunk_max, col_max)
        col_arg = torch.where(better, chunk_arg + start, col_arg)
    correct = row_ok & (col_arg == torch.arange(n, device=dev))
    loss = 0.5 * (row_lse - diag) + 0.5 * (col_lse - diag)  # (P,)
    return ClipLoss(loss=loss, alignment=-diag, uniformity=0.5 * row_lse + 0.5 * col_lse,
                    correct=correct)


def clip_loss_vs_alpha(image: torch.Tensor, text: torch.Tensor, alphas: Sequence[float] | torch.Tensor,
                       mean: torch.Tensor, *, logit_scale: float = 100.0,
                       chunk_size: int = 1024) -> list[ClipLoss]:
    """:func:`clip_loss` of (image − α·m, text) for each α, paper Eq. 9 (Fig. 6).

    image, text: (P, D) raw matched rows; alphas: (A,) numbers (|α| ≤ 1e6); mean m: (D,) raw
    image mean (of the whole set). Returns A :class:`ClipLoss` results, in ``alphas`` order.
    """
    image, text = _check_pairs(image, text)
    mean = as_tensor("mean", mean, rank=1)
    if mean.shape[0] != image.shape[1]:
        raise ValueError(f"mean must have shape ({image.shape[1]},) to match image, got {tuple(mean.shape)}")
    check_finite("mean", mean)
    values = check_values("alphas", alphas)  # (A,) finite, |α| ≤ 1e6
    _check_scale(logit_scale)
    check_int("chunk_size", chunk_size)
    cd = compute_dtype(image, text)  # the embeddings' dtype: a float64 mean does not promote
    raw, mean_c = image.to(cd), mean.to(device=image.device, dtype=cd)
    out = []
    for alpha in values:
        centered = raw - float(alpha) * mean_c  # v' = v − α·m, (P, D)
        if not bool(torch.isfinite(centered).all()):
            raise ValueError(f"image − alpha·mean overflows {cd} at alpha {alpha:g}: the inputs are "
                             "too large in magnitude for this dtype")
        out.append(clip_loss(centered, text, logit_scale=logit_scale, chunk_size=chunk_size))
    return out
