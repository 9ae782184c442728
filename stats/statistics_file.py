"""Statistics files: per-modality moment sums in one safetensors file with JSON metadata.

Layout of a file written by ``vslerp stats compute`` (docs/design.md, "Files it writes"):

- tensors ``"{modality}.{name}"`` for modality ``image`` / ``text`` and the
  :class:`vslerp.MomentAccumulator` sums ``count`` (int64), ``sum`` (D,), ``sum_unit`` (D,),
  ``sum_outer`` (D, D), ``sum_norm`` (), ``sum_sq_norm`` (), all float64; a mean-only source
  (the Kandinsky prior's ``clip_mean``, or a tensor) stores ``"{modality}.mean"`` (D,) and,
  when known, ``"{modality}.std"`` (D,) instead;
- safetensors metadata ``{"vslerp": "<JSON>"}`` (safetensors metadata values are strings):
  model_id, encoder_fingerprint, dim, dataset, dataset_size, counts, skipped, version, source.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from vslerp import (
    MomentAccumulator,
    off_diagonal_dominance,
    offset_ratio,
    separability,
    top_features,
)
from vslerp._version import __version__

from .jsonfile import parse_json
from .outputs import atomic_write, note_input

__all__ = [
    "FORMAT",
    "ModalityStats",
    "SOURCES",
    "Statistics",
    "atomic_save_safetensors",
    "check_compatible",
    "check_input_file",
    "load",
]

FORMAT = "vslerp-statistics/1"  # bumped when the layout above changes
SOURCES = ("dataset", "prior_clip_mean", "image_normalizer_mean", "tensor")
MODALITIES = ("image", "text")
_F64 = torch.float64


def check_input_file(path: str | Path, what: str) -> Path:
    """``path`` as a :class:`Path` if it is a file that can be opened; else one line naming
    ``what`` and ``path``: ``FileNotFoundError`` ("not found"), ``IsADirectoryError``
    ("is a directory, not a file") or ``PermissionError`` — the check of every input file."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise IsADirectoryError(f"{what} {path} is a directory, not a file")
    if not path.exists():
        raise FileNotFoundError(f"{what} not found: {path}")
    if not path.is_file():
        raise ValueError(f"{what} {path} is not a regular file")
    if not os.access(path, os.R_OK):
        raise PermissionError(f"{what} {path} is not readable (permission denied)")
    return path


def atomic_save_safetensors(tensors: dict[str, torch.Tensor], path: str | Path,
                            metadata: dict[str, str] | None = None) -> Path:
    """Write ``tensors`` to ``path`` as safetensors, atomically (:func:`atomic_write`)."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


@dataclass
class ModalityStats:
    """Statistics of one modality (``image`` or ``text``) in raw embedding space.

    Either built from a :class:`vslerp.MomentAccumulator` (``source="dataset"``), or holding
    only a mean (and possibly a per-feature std) for the zero-data sources. ``count``,
    ``mean`` (raw), ``mean_unit``, ``covariance()``, ``std()``, ``variance()`` and the derived
    §4 measures ``mean_norm``, ``rms_centered`` (thin-shell radius), ``offset()``,
    ``off_diagonal_dominance()`` and ``conformity_coefficients()``, each computed by the
    core (:mod:`vslerp`) from the sums; a mean-only source raises ``ValueError`` for those.
    """

    dim: int  # embedding dimension D
    accumulator: MomentAccumulator | None = None  # the sums; None for a mean-only source
    _mean: torch.Tensor | None = field(default=None, repr=False)  # (D,) float64, mean-only
    _std: torch.Tensor | None = field(default=None, repr=False)  # (D,) float64 or None

    @classmethod
    def from_accumulator(cls, acc: MomentAccumulator) -> ModalityStats:
        if acc.count < 1:
            raise ValueError("cannot build statistics from an empty accumulator (count 0)")
        return cls(dim=acc.dim, accumulator=acc)

    @classmethod
    def from_mean(cls, mean: torch.Tensor, std: torch.Tensor | None = None) -> ModalityStats:
        mean = _as_vector("mean", mean)
        if std is not None:
            std = _as_vector("std", std)
            if std.shape != mean.shape:
                raise ValueError(f"std must have shape {tuple(mean.shape)}, got {tuple(std.shape)}")
        return cls(dim=int(mean.shape[0]), _mean=mean, _std=std)

    @property
    def count(self) -> int:
        """Number of embeddings summed (0 for a mean-only source)."""
        return self.accumulator.count if self.accumulator is not None else 0

    @property
    def mean(self) -> torch.Tensor:
        """Raw modality mean m (D,) float64: the vector vSLERP shifts by (Eq. 12)."""
        if self.accumulator is not None:
            return self.accumulator.mean
        return self._mean

    @property
    def mean_unit(self) -> torch.Tensor:
        """Mean of the unit vectors μ̂ (D,) float64 (‖μ̂‖ ≤ 1, Eq. 10's exact identity).

        For a mean-only source the spread is unknown and this is the direction m/‖m‖.
        """
        if self.accumulator is not None:
            return self.accumulator.mean_unit
        return self._mean / torch.linalg.vector_norm(self._mean)

    def covariance(self, correction: int = 1) -> torch.Tensor:
        """Covariance (D, D) float64; ``ValueError`` for a mean-only source."""
        if self.accumulator is None:
            raise ValueError("this statistics source holds only a mean: no covariance")
        return self.accumulator.covariance(correction)

    def std(self, correction: int = 1) -> torch.Tensor:
        """Per-feature standard deviation σ (D,) float64 (the prior's ``clip_std`` if mean-only)."""
        if self.accumulator is not None:
            return self.accumulator.std(correction)
        if self._std is None:
            raise ValueError("this statistics source holds only a mean: no standard deviation")
        return self._std

    # -- the derived §4 measures (the core computes them; mean-only sources have no sums) --
    def _sums(self, what: str) -> MomentAccumulator:
        if self.accumulator is None:
            raise ValueError(f"this statistics source holds only a mean (no moment sums): no {what}; "
                             "compute statistics from data with `vslerp stats compute`")
        return self.accumulator

    def variance(self, correction: int = 1) -> torch.Tensor:
        """Per-feature variance (D,) float64 (the square of the prior's ``clip_std`` if mean-only)."""
        if self.accumulator is None and self._std is not None:
            return self._std * self._std
        return self._sums("variance").variance(correction)

    @property
    def mean_norm(self) -> float:
        """E‖v‖ of the raw vectors."""
        return self._sums("mean norm").mean_norm

    @property
    def rms_centered(self) -> float:
        """√E‖v − m‖²: the thin-shell radius of §4 (paper, COCO images: 7.6007)."""
        return self._sums("thin-shell radius").rms_centered

    def offset(self) -> float:
        """‖m‖/‖σ‖, how far the modality sits from the origin (§4; paper 0.94 image, 1.03 text).

        For a mean-only source with a known std (the prior's ``clip_std``) that std is used.
        """
        if self.accumulator is None and self._std is not None:
            return offset_ratio(self._mean, self._std)
        return self._sums("offset").offset()

    def off_diagonal_dominance(self) -> torch.Tensor:
        """ODD(ℓ) = Σ_{k≠ℓ}|C_ℓk| / C_ℓℓ per feature (D,) float64 (Eq. 6; > 1: tilted ellipsoid)."""
        return off_diagonal_dominance(self._sums("covariance").covariance())

    def conformity_coefficients(self):
        """Exact (a, b) of C = a·cos(v, μ̂) + b over this set (Eq. 10 identity), a ``LinearFit``."""
        return self._sums("mean of unit vectors").conformity_coefficients()

    def tensors(self, prefix: str) -> dict[str, torch.Tensor]:
        if self.accumulator is not None:
            return {f"{prefix}.{k}": v for k, v in self.accumulator.state_dict().items()}
        out = {f"{prefix}.mean": self._mean.cpu()}
        if self._std is not None:
            out[f"{prefix}.std"] = self._std.cpu()
        return out


def _as_vector(name: str, value) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.is_complex():
        raise TypeError(f"{name} must be real, got a complex {value.dtype} tensor")
    value = value.detach().reshape(-1) if value.ndim == 2 and value.shape[0] == 1 else value.detach()
    if value.ndim != 1 or value.shape[0] == 0:
        raise ValueError(f"{name} must have shape (D,), got {tuple(value.shape)}")
    value = value.to(device="cpu", dtype=_F64)
    if not bool(torch.isfinite(value).all()):
        raise ValueError(f"{name} contains non-finite values")
    if name == "mean" and not bool((value != 0).any()):
        raise ValueError("mean is the zero vector")
    return value


class Statistics:
    """Image and text statistics of one embedding space, plus where they came from.

    ``.image`` / ``.text``: :class:`ModalityStats` or None; ``.metadata``: dict (model_id,
    encoder_fingerprint, dim, dataset, dataset_size, counts, skipped, version, source);
    ``.dim``; ``.fingerprint``: sha256 of the sums (for sidecars).
    """

    def __init__(self, image: ModalityStats | None = None, text: ModalityStats | None = None,
                 metadata: dict | None = None) -> None:
        if image is None and text is None:
            raise ValueError("statistics need at least one modality (image or text)")
        dims = {m.dim for m in (image, text) if m is not None}
        if len(dims) != 1:
            raise ValueError(f"image and text statistics have different dims {sorted(dims)}")
        self.image = image
        self.text = text
        self.dim = dims.pop()
        meta = dict(metadata or {})
        meta.setdefault("source", "dataset")
        if meta["source"] not in SOURCES:
            raise ValueError(f"metadata source must be one of {SOURCES}, got {meta['source']!r}")
        meta.setdefault("model_id", None)
        meta.setdefault("encoder_fingerprint", None)
        meta.setdefault("dataset", None)
        meta.setdefault("dataset_size", {})
        meta.setdefault("skipped", {"count": 0, "items": []})
        meta["dim"] = self.dim
        meta["counts"] = {m: s.count for m, s in self._modalities()}
        meta.setdefault("version", __version__)
        meta.setdefault("format", FORMAT)
        self.metadata = meta

    def _modalities(self):
        return [(m, s) for m, s in (("image", self.image), ("text", self.text)) if s is not None]

    def __repr__(self) -> str:
        counts = ", ".join(f"{m}={s.count}" for m, s in self._modalities())
        return (f"Statistics(dim={self.dim}, source={self.metadata['source']!r}, {counts}, "
                f"model_id={self.metadata.get('model_id')!r})")

    # -- two-modality measures (§4) -----------------------------------------------------
    def _both(self, what: str) -> tuple[ModalityStats, ModalityStats]:
        if self.image is None or self.text is None:
            have = ", ".join(m for m, _ in self._modalities())
            raise ValueError(f"{what} needs image and text statistics; these have only {have}")
        return self.image, self.text

    def separability(self) -> torch.Tensor:
        """Sep(ℓ) = |m_i(ℓ) − m_t(ℓ)| / √(var_i(ℓ) + var_t(ℓ)) per feature (D,) float64 (Eq. 5)."""
        image, text = self._both("separability")
        return separability(image.mean, image._sums("variance").variance(),
                            text.mean, text._sums("variance").variance())

    def top_features(self, k: int = 10) -> list[int]:
        """The ``k`` most separable features (the modality "tags" of Fig. 2–3), best first."""
        return top_features(self.separability(), k)

    # -- constructors -------------------------------------------------------------------
    @classmethod
    def from_accumulators(cls, image: MomentAccumulator | None, text: MomentAccumulator | None,
                          metadata: dict | None = None) -> Statistics:
        """From per-modality accumulators (either may be None or empty, not both)."""
        mods = {name: ModalityStats.from_accumulator(acc) if acc is not None and acc.count else None
                for name, acc in (("image", image), ("text", text))}
        return cls(mods["image"], mods["text"], {**(metadata or {}), "source": "dataset"})

    @classmethod
    def from_prior(cls, prior_transformer, model_id: str | None = None, *,
                   encoder_fingerprint: str | None = None) -> Statistics:
        """Zero-data image mean: the Kandinsky ``PriorTransformer``'s ``clip_mean`` buffer.

        The prior un-normalises its output as ``x·clip_std + clip_mean``: these buffers are
        the prior's training statistics of raw image embeddings. Labelled
        ``source="prior_clip_mean"``; ``.image.count`` is 0 and only mean and std exist.
        """
        mean = getattr(prior_transformer, "clip_mean", None)
        if not isinstance(mean, torch.Tensor):
            raise TypeError("prior_transformer has no clip_mean buffer "
                            f"(got {type(prior_transformer).__name__}); pass a diffusers PriorTransformer")
        std = getattr(prior_transformer, "clip_std", None)
        image = ModalityStats.from_mean(mean, std if isinstance(std, torch.Tensor) else None)
        return cls(image, None, {"source": "prior_clip_mean", "model_id": model_id,
                                 "encoder_fingerprint": encoder_fingerprint})

    @classmethod
    def from_mean(cls, mean_tensor: torch.Tensor, model_id: str | None = None) -> Statistics:
        """An image mean given as a (D,) tensor; ``source="tensor"``."""
        return cls(ModalityStats.from_mean(mean_tensor), None,
                   {"source": "tensor", "model_id": model_id})

    # -- files --------------------------------------------------------------------------
    def tensors(self) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for name, mod in self._modalities():
            out.update(mod.tensors(name))
        return out

    @property
    def fingerprint(self) -> str:
        """sha256 (hex) of the stored tensors: names, dtypes, shapes and bytes, sorted by name."""
        digest = hashlib.sha256()
        for key, value in sorted(self.tensors().items()):
            value = value.detach().cpu().contiguous()
            digest.update(f"{key}|{value.dtype}|{tuple(value.shape)}|".encode())
            digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes())
        return digest.hexdigest()

    def save(self, path: str | Path) -> Path:
        """Write the safetensors file atomically (temporary name in the same folder + rename)."""
        meta = json.dumps(self.metadata, sort_keys=True, default=str)
        return atomic_save_safetensors(self.tensors(), path, metadata={"vslerp": meta})


def load(path: str | Path) -> Statistics:
    """Read a statistics file written by ``vslerp stats compute`` (or :meth:`Statistics.save`)."""
    from safetensors import SafetensorError, safe_open

    path = check_input_file(path, "statistics file")
    note_input(path, "statistics file")
    try:
        with safe_open(str(path), framework="pt") as handle:
            raw_meta = handle.metadata() or {}
            tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"{path} is not a readable safetensors statistics file ({err})") from None
    if "vslerp" not in raw_meta:
        raise ValueError(f"{path} is a safetensors file but not a vslerp statistics file "
                         "(no 'vslerp' metadata)")
    metadata = parse_json(raw_meta["vslerp"], f"{path}: the 'vslerp' metadata")
    if not isinstance(metadata, dict):
        raise ValueError(f"{path}: the 'vslerp' metadata is not a JSON object")
    mods: dict[str, ModalityStats | None] = {}
    for name in MODALITIES:
        sub = {k.split(".", 1)[1]: v for k, v in tensors.items() if k.startswith(f"{name}.")}
        if not sub:
            mods[name] = None
        elif "sum" in sub:
            try:
                mods[name] = ModalityStats.from_accumulator(MomentAccumulator.from_state_dict(sub))
            except ValueError as err:
                raise ValueError(f"{path}: bad {name} statistics ({err})") from None
        elif "mean" in sub:
            try:
                mods[name] = ModalityStats.from_mean(sub["mean"], sub.get("std"))
            except (TypeError, ValueError) as err:
                raise ValueError(f"{path}: bad {name} statistics ({err})") from None
        else:
            raise ValueError(f"{path}: {name} statistics have neither sums nor a mean")
    try:
        return Statistics(mods["image"], mods["text"], metadata)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None


def check_compatible(stats: Statistics, *, dim: int, fingerprint: str | None,
                     model: str | None = None) -> None:
    """Raise ``ValueError`` if ``stats`` were not computed in this embedding space.

    ``dim``: the encoder's embedding dimension; ``fingerprint``: its
    :func:`vslerp.stats.encoder_fingerprint` (None, or a file without one, skips that check);
    ``model``: what this encoder belongs to, for the message. Statistics are keyed by the
    encoder, never by a model id: a file computed under any id (a Kandinsky prior, a CLIP, an
    IP-Adapter's encoder) fits every model whose image encoder has its fingerprint.
    """
    if not isinstance(stats, Statistics):
        raise TypeError(f"stats must be a vslerp.stats.Statistics, got {type(stats).__name__}")
    theirs_model = stats.metadata.get("model_id")
    ours = f" ({model})" if model else ""
    redo = f"`vslerp stats compute --model {model or 'MODEL'} ...`"
    if stats.dim != dim:
        raise ValueError(
            f"statistics have embedding dim {stats.dim} (model {theirs_model!r}) but this "
            f"encoder's is {dim}{ours}: they were computed with a different CLIP; recompute "
            f"them with {redo}")
    theirs = stats.metadata.get("encoder_fingerprint")
    if fingerprint is not None and theirs is not None and theirs != fingerprint:
        raise ValueError(
            f"statistics were computed with image encoder {theirs[:12]} (model {theirs_model!r}) "
            f"but this encoder{ours} is {fingerprint[:12]}: another embedding space; recompute "
            f"them with {redo}")
