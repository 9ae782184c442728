"""The θ × α grid (or the weights × α mix) of one request, backend-free: axes, cells (paper
Eq. 12; :func:`vslerp.vmix` for a mix), distinct cells, the images mapped back to every cell,
the conformity read-out and the output dataclasses.

Written once for every backend and for both entry points (``pipe(...)`` and
``pipe.render_batch(...)``): a backend only renders the distinct cells it is handed.
No diffusers pipeline and no model here — tensors in, tensors out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from diffusers.utils import BaseOutput

import vslerp
from vslerp.checks import check_embedding_values
from vslerp.stats.scoring import estimated_conformity

__all__ = ["Grid", "VSlerpMixOutput", "VSlerpPipelineOutput", "conformity_read_out", "distinct_rows",
           "join_chunks", "make_grid", "make_mix"]


@dataclass
class VSlerpPipelineOutput(BaseOutput):
    """Output of :class:`~vslerp.pipelines.VSlerpPipeline` (every backend).

    images: list of T·A PIL images (or an (T·A, H, W, 3) array / (T·A, 3, H, W) tensor /
        latents, per ``output_type``), row-major over thetas × alphas.
    embeddings: (T, A, D) float32 raw image embeddings of the cells (Eq. 12).
    thetas, alphas: the grid axes, as lists of float.
    conformity: (T, A) float32 estimated conformity of each cell (Eq. 11, image modality).
    """

    images: list | np.ndarray | torch.Tensor
    embeddings: torch.Tensor
    thetas: list
    alphas: list
    conformity: torch.Tensor


@dataclass
class VSlerpMixOutput(BaseOutput):
    """Output of ``pipe.mix(...)`` (every backend).

    images: K·A images (as ``output_type`` asks), row-major over weight rows × alphas.
    conformity: (K, A) float32 estimated conformity of each mix (Eq. 11, image modality).
    weights: (K, N) float64, each row normalised to sum 1.
    alphas: the columns, as a list of float.
    embeddings: (K, A, D) float32 raw embeddings of the mixes with ``return_embeddings=True``, else None.
    """

    images: list | np.ndarray | torch.Tensor
    conformity: torch.Tensor
    weights: torch.Tensor
    alphas: list
    embeddings: torch.Tensor | None = None


def distinct_rows(flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Distinct rows of ``flat`` (N, D) in first-seen order, and each row's index among them.

    Returns ``(distinct (U, D), inverse (N,) int64)`` with ``distinct[inverse] == flat``.
    """
    index: dict[bytes, int] = {}
    inverse = [index.setdefault(row.numpy().tobytes(), len(index)) for row in flat.cpu()]
    first = {k: i for i, k in reversed(list(enumerate(inverse)))}  # distinct index → first row
    return flat[[first[k] for k in range(len(index))]], torch.tensor(inverse, dtype=torch.int64)


def conformity_read_out(raw: torch.Tensor, modality_stats) -> tuple[torch.Tensor, str]:
    """Estimated conformity (N,) float32 of raw embeddings (N, D) against one modality's
    statistics, by :func:`vslerp.stats.scoring.estimated_conformity` (the one estimator),
    and its name as :mod:`vslerp.defaults` spells it (``exact_identity`` / ``cosine_to_mean``)."""
    scores, name, _ = estimated_conformity(raw, modality_stats)
    return scores.float(), name


@dataclass
class Grid:
    """One request's grid: rows (θ values, or a mix's weight rows), alphas, cells (T, A, D) raw,
    and its distinct cells.

    distinct: (U, D) the cells to render, in first-seen order; inverse: (T·A,) int64 index of
    each cell among them (a θ=0 row is the source for every α, a θ=1 row the target: Eq. 12).
    """

    rows: list
    alphas: list[float]
    cells: torch.Tensor  # (T, A, D) float32 raw
    distinct: torch.Tensor  # (U, D)
    inverse: torch.Tensor  # (T·A,) int64
    conformity: torch.Tensor  # (T, A) float32, estimated (Eq. 11)

    def images(self, rendered, output_type: str):
        """Rendered distinct cells (U images, as :func:`join_chunks` gives them) mapped to every
        cell (a repeated PIL cell its own copy)."""
        if output_type == "pil":
            images, seen = [], set()
            for k in self.inverse.tolist():
                images.append(rendered[k].copy() if k in seen else rendered[k])
                seen.add(k)
        elif output_type == "np":
            images = rendered[self.inverse.numpy()]
        else:
            images = rendered[self.inverse.to(rendered.device)]
        return images

    def output(self, rendered, output_type: str) -> VSlerpPipelineOutput:
        """The grid's output for its rendered distinct cells."""
        return VSlerpPipelineOutput(images=self.images(rendered, output_type), embeddings=self.cells.float(),
                                    thetas=self.rows, alphas=self.alphas, conformity=self.conformity)

    def mix_output(self, rendered, output_type: str, embeddings: bool) -> VSlerpMixOutput:
        """The mix's output for its rendered distinct cells (``embeddings``: with the cells)."""
        return VSlerpMixOutput(images=self.images(rendered, output_type), conformity=self.conformity,
                               weights=torch.tensor(self.rows, dtype=torch.float64), alphas=self.alphas,
                               embeddings=self.cells.float() if embeddings else None)


def make_grid(source_raw: torch.Tensor, target_raw: torch.Tensor, thetas: list[float], alphas: list[float],
              statistics, name: str = "") -> Grid:
    """Cells vSLERP(source, target, θ, α, m) (Eq. 12) for every θ × α, m the statistics' raw
    image mean, with their conformity against the statistics (before any rendering);
    ``ValueError`` (prefixed ``name``) when a cell is not finite."""
    mean = statistics.image.mean.to(torch.float32)  # (D,)
    theta_grid = torch.tensor(thetas, dtype=torch.float32)[:, None].expand(len(thetas), len(alphas))
    alpha_grid = torch.tensor(alphas, dtype=torch.float32)[None, :].expand(len(thetas), len(alphas))
    cells = vslerp.vslerp(source_raw, target_raw, theta_grid, alpha_grid, mean)  # (T, A, D)
    return _grid_of(thetas, alphas, cells, statistics, name)


def make_mix(raws: torch.Tensor, weights: list, alphas: list[float], statistics, name: str = "") -> Grid:
    """Cells vmix(v₁…v_N, w, α, m) for every weight row × α (rows (K, N) summing to 1), with their
    conformity; ``ValueError`` (prefixed ``name``) when a mix is undefined or not finite.

    Two inputs are Eq. 12 itself, computed as :func:`make_grid` computes it (vmix's N = 2
    identity): a mix (1 − θ, θ) is the grid's θ cell to the bit, so it renders the same pixels."""
    mean = statistics.image.mean.to(torch.float32)  # (D,)
    rows = torch.tensor(weights, dtype=torch.float64)  # (K, N)
    alpha_grid = torch.tensor(alphas, dtype=torch.float32)[None, :].expand(len(weights), len(alphas))  # (K, A)
    if raws.shape[0] == 2:
        theta_grid = rows[:, 1:].float().expand(len(weights), len(alphas))  # (K, A): θ = w₂
        cells = vslerp.vslerp(raws[0], raws[1], theta_grid, alpha_grid, mean)  # (K, A, D)
    else:
        try:
            cells = vslerp.vmix(raws, rows[:, None, :], alpha_grid, mean)  # (K, A, D)
        except ValueError as err:
            raise ValueError(f"{name}{err}") from None
    return _grid_of(weights, alphas, cells, statistics, name)


def _grid_of(rows: list, alphas: list[float], cells: torch.Tensor, statistics, name: str) -> Grid:
    """The grid of cells (T, A, D): checked finite and renderable, distinct cells, conformity."""
    if not bool(torch.isfinite(cells).all()):
        raise ValueError(f"{name}some cells' embeddings are not finite (extreme alphas or thetas?)")
    check_embedding_values(f"{name}a cell's embedding (alpha × the image mean, or an extrapolated theta)", cells)
    flat = cells.reshape(-1, cells.shape[-1])  # (T·A, D)
    conformity, _ = conformity_read_out(flat, statistics.image)
    distinct, inverse = distinct_rows(flat)  # (U, D), (T·A,)
    return Grid(rows, alphas, cells, distinct, inverse, conformity.reshape(cells.shape[:2]))


def join_chunks(outputs: list, output_type: str):
    """One output per rendered chunk → one list / array / tensor over all their cells."""
    if output_type == "pil":
        return [im for part in outputs for im in part]
    return np.concatenate(outputs, axis=0) if output_type == "np" else torch.cat(outputs, dim=0)
