"""The image mean m of a pipeline and the conformity read-out: which statistics a call uses.

:class:`StatisticsMixin` gives a VSlerp pipeline ``set_statistics`` / ``check_statistics`` /
``statistics`` / ``image_mean`` and ``estimated_conformity`` / ``conformity_method``, with
per-call statistics (``statistics=``) that leave the pipeline's own unchanged. Statistics are
checked against the image encoder (dim, fingerprint); conformity is
:func:`vslerp.stats.scoring.estimated_conformity`'s (:func:`~vslerp.pipelines.grid.conformity_read_out`).
"""

from __future__ import annotations

from pathlib import Path

import torch

from vslerp.checks import check_embedding_values
from vslerp.stats import Statistics, check_compatible, encoder_fingerprint
from vslerp.stats import load as load_statistics

from .grid import conformity_read_out

__all__ = ["StatisticsMixin"]


class StatisticsMixin:
    """Statistics of a pipeline with an ``image_encoder``, ``model_ids`` and a backend default
    (``_default_statistics()``: the Kandinsky prior's ``clip_mean``; unCLIP has none)."""

    _statistics: Statistics | None = None

    def set_statistics(self, stats=None) -> Statistics:
        """Set the image mean's source: path | Statistics | (D,) tensor | None (the backend's default).

        Checked against this image encoder's dim and fingerprint (``vslerp.stats.check_compatible``).
        To use other statistics for one call only, pass ``statistics=`` to that call instead.
        """
        self._statistics = self.check_statistics(stats)
        return self._statistics

    def check_statistics(self, stats=None) -> Statistics:
        """``stats`` (as :meth:`set_statistics` takes it) as a checked :class:`Statistics`; sets nothing."""
        dim = int(self.image_encoder.config.projection_dim)
        if stats is None:
            stats = self._default_statistics()
        elif isinstance(stats, (str, Path)):
            stats = load_statistics(stats)
        elif isinstance(stats, torch.Tensor):
            stats = Statistics.from_mean(stats, model_id=self.model_ids.get("prior"))
        elif not isinstance(stats, Statistics):
            raise TypeError("stats must be a statistics file path, a vslerp.stats.Statistics, a (D,) "
                            f"tensor or None, got {type(stats).__name__}")
        if stats.image is None:
            raise ValueError("the statistics have no image modality: vSLERP needs the image mean")
        check_embedding_values("the statistics' image mean", stats.image.mean)
        fp = encoder_fingerprint(self.image_encoder) if stats.metadata.get("encoder_fingerprint") else None
        check_compatible(stats, dim=dim, fingerprint=fp, model=self._stats_model_args())
        return stats

    def _stats_model_args(self) -> str | None:
        """How ``vslerp stats compute`` names this pipeline's model: ``--model``'s value (and the
        IP-Adapter, ``--ip-adapter``'s), for the message of mismatched statistics."""
        model = self.model_ids.get("prior") or self.model_ids.get("decoder")
        adapter = self.model_ids.get("ip_adapter")
        return f"{model} --ip-adapter {adapter}" if model and adapter else model

    def _statistics_for(self, statistics) -> Statistics:
        """A call's statistics: ``None`` → the pipeline's own (:attr:`statistics`), else checked."""
        return self.statistics if statistics is None else self.check_statistics(statistics)

    @property
    def statistics(self) -> Statistics:
        if self._statistics is None:
            self.set_statistics(None)
        return self._statistics

    @property
    def image_mean(self) -> torch.Tensor:
        """Raw image modality mean m, (D,) float32 on the CPU."""
        return self.statistics.image.mean.to(torch.float32)

    def estimated_conformity(self, embeds: torch.Tensor, modality: str = "image", statistics=None) -> torch.Tensor:
        """Conformity of each raw embedding (N, D) → (N,) float32 (paper Eq. 10–11), by
        :func:`vslerp.stats.scoring.estimated_conformity`: with dataset statistics (count ≥ 2
        and Σû) the exact identity C = N‖μ̂‖/(N−1)·cos(v, μ̂) − 1/(N−1), exact for the dataset's
        members; with a mean-only source (prior clip_mean, tensor) cos(v, m).
        statistics: for this call only (as :meth:`set_statistics` takes it); None → the pipeline's.
        """
        if modality not in ("image", "text"):
            raise ValueError(f"modality must be 'image' or 'text', got {modality!r}")
        mod = getattr(self._statistics_for(statistics), modality)
        if mod is None:
            raise ValueError(f"the statistics have no {modality} modality")
        raw = torch.as_tensor(embeds).detach().to("cpu", torch.float32).reshape(-1, mod.dim)  # (N, D)
        return conformity_read_out(raw, mod)[0]

    def conformity_method(self, statistics=None) -> str:
        """'exact_identity' (dataset statistics) or 'cosine_to_mean' (mean-only source)."""
        mod = self._statistics_for(statistics).image
        return conformity_read_out(mod.mean.to(torch.float32)[None], mod)[1]  # the scorer's own choice
