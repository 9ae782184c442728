"""Conformity scoring of new images or captions against a statistics file (paper §7.1).

:func:`estimated_conformity` is the project's one conformity estimator (``vslerp conformity``
and the geometry report call it); its two forms are named by ``vslerp.defaults``:

- ``CONFORMITY_EXACT`` ("exact_identity"): Ĉ(v) = a·cos(v, μ̂) + b with μ̂ the statistics'
  mean of unit vectors and the exact-identity coefficients a = N‖μ̂‖/(N−1), b = −1/(N−1) of
  the statistics' count N (Eq. 10 rewritten; :func:`vslerp.exact_conformity_coefficients`).
  For an item of the reference set this *is* its exact conformity; for a new item it is the
  mean cosine to the N reference items up to O(1/N).
- ``CONFORMITY_COSINE`` ("cosine_to_mean"): a mean-only source (the prior's ``clip_mean``, a
  tensor; count 0) has no μ̂, so Ĉ = cos(v, m) with the raw mean (Eq. 11 with a = 1, b = 0).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import torch

from vslerp import cosine_to_mean, exact_conformity_coefficients
from vslerp.defaults import CONFORMITY_COSINE, CONFORMITY_EXACT

from .outputs import atomic_write, spreadsheet_safe

__all__ = ["ESTIMATORS", "estimated_conformity", "write_scores_csv"]

# the formula of each estimator, for the CSV header (vslerp.defaults.CONFORMITY_ESTIMATORS
# has the words for people)
ESTIMATORS = {
    CONFORMITY_EXACT: "C = a*cos(v, mean_unit) + b, a = N*|mean_unit|/(N-1), b = -1/(N-1) "
                      "(Eq. 10 identity, N = statistics count)",
    CONFORMITY_COSINE: "C = cos(v, m) with the raw mean m (Eq. 11, a = 1, b = 0; mean-only "
                       "statistics)",
}


def estimated_conformity(raw: torch.Tensor, modality_stats) -> tuple[torch.Tensor, str, dict]:
    """Estimated conformity (N,) float32 of raw embeddings ``raw`` (N, D) against one
    modality of a statistics file (``vslerp.stats.ModalityStats``); returns
    ``(scores, estimator name, {"a": .., "b": ..})`` — the name ``CONFORMITY_EXACT`` with
    dataset statistics (count ≥ 2), else ``CONFORMITY_COSINE`` (see the module docstring).
    Cosines and the affine map in float64."""
    if modality_stats.count >= 2:
        fit = exact_conformity_coefficients(int(modality_stats.count), modality_stats.mean_unit)
        cos = cosine_to_mean(raw, modality_stats.mean_unit)  # (N,) float64 (μ̂ is float64)
        return (fit.a * cos.double() + fit.b).float(), CONFORMITY_EXACT, {"a": fit.a, "b": fit.b}
    cos = cosine_to_mean(raw, modality_stats.mean)
    return cos.float(), CONFORMITY_COSINE, {"a": 1.0, "b": 0.0}


def write_scores_csv(path: str | Path, names: list[str], scores: torch.Tensor, *,
                     header: dict[str, str]) -> Path:
    """Write ``name,conformity`` rows (atomically) after ``# key: value`` comment lines; a name
    that would start a spreadsheet formula is quoted with a leading ``'`` (spreadsheet_safe)."""
    path = Path(path)
    buf = io.StringIO()
    for key, value in header.items():
        buf.write(f"# {key}: {value}\n")
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["name", "conformity"])
    for name, score in zip(names, scores.tolist(), strict=True):
        writer.writerow([spreadsheet_safe(name), f"{score:.6f}"])
    return atomic_write(path, lambda tmp: tmp.write_text(buf.getvalue(), encoding="utf-8", newline=""))
