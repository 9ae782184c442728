"""Conformity scoring of new images or captions against a statistics file (paper §7.1).

Estimator (one, used everywhere): Ĉ(v) = a·cos(v, μ̂) + b with μ̂ the statistics' mean of
unit vectors and the exact-identity coefficients a = N‖μ̂‖/(N−1), b = −1/(N−1) of the
statistics' count N (Eq. 10 rewritten; :func:`vslerp.exact_conformity_coefficients`). For
an item of the reference set this *is* its exact conformity; for a new item it is the mean
cosine to the N reference items up to O(1/N). A mean-only source (the prior's
``clip_mean``, count 0) has no μ̂: then Ĉ = cos(v, m) with the raw mean (Eq. 11 with
a = 1, b = 0), labelled ``cosine_to_raw_mean``.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import torch

from vslerp import conformity, cosine_to_mean, exact_conformity_coefficients

from .outputs import atomic_write
from .report import kl_divergence

__all__ = ["ESTIMATORS", "estimated_conformity", "reference_conformity", "score_kl",
           "write_scores_csv"]

ESTIMATORS = {
    "exact_identity_unit_mean": "C = a*cos(v, mean_unit) + b, a = N*|mean_unit|/(N-1), "
                                "b = -1/(N-1) (Eq. 10 identity, N = statistics count)",
    "cosine_to_raw_mean": "C = cos(v, m) with the raw mean m (Eq. 11, a = 1, b = 0; "
                          "mean-only statistics)",
}


def estimated_conformity(raw: torch.Tensor, modality_stats) -> tuple[torch.Tensor, str, dict]:
    """Estimated conformity (N,) float32 of raw embeddings ``raw`` (N, D) against one
    modality of a statistics file (``vslerp.stats.ModalityStats``); returns
    ``(scores, estimator name, {"a": .., "b": ..})`` (see the module docstring)."""
    if modality_stats.count >= 2:
        fit = exact_conformity_coefficients(int(modality_stats.count), modality_stats.mean_unit)
        cos = cosine_to_mean(raw, modality_stats.mean_unit)
        return (fit.a * cos.double() + fit.b).float(), "exact_identity_unit_mean", \
            {"a": fit.a, "b": fit.b}
    cos = cosine_to_mean(raw, modality_stats.mean)
    return cos.float(), "cosine_to_raw_mean", {"a": 1.0, "b": 0.0}


def reference_conformity(raw: torch.Tensor) -> torch.Tensor:
    """Exact conformity (Eq. 10) of a reference set (N, D) → (N,), in O(N·D)."""
    return conformity(raw)


def score_kl(scores: torch.Tensor, reference: torch.Tensor, bins: int = 100) -> float:
    """KL(scored ‖ reference) of two conformity samples (shared bins, smoothed)."""
    return kl_divergence(scores, reference, bins=bins)


def write_scores_csv(path: str | Path, names: list[str], scores: torch.Tensor, *,
                     header: dict[str, str]) -> Path:
    """Write ``name,conformity`` rows (atomically) after ``# key: value`` comment lines."""
    path = Path(path)
    buf = io.StringIO()
    for key, value in header.items():
        buf.write(f"# {key}: {value}\n")
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["name", "conformity"])
    for name, score in zip(names, scores.tolist(), strict=True):
        writer.writerow([name, f"{score:.6f}"])
    return atomic_write(path, lambda tmp: tmp.write_text(buf.getvalue(), encoding="utf-8", newline=""))
