"""vslerp: vertical SLERP in raw CLIP embedding space, and the geometry of that space.

The core (this package) is pure tensor functions implementing Levi & Gilboa, "The
Double-Ellipsoid Geometry of CLIP": SLERP and vSLERP (Eq. 12) and its N-way mix (``vmix``,
through the weighted spherical mean), exact conformity in linear time (Eq. 10), its estimate
from the mean (Eq. 11), and the §4 geometry measures.
The rooms ``vslerp.stats``, ``vslerp.pipelines`` and ``vslerp.ui`` build on it.

The names below are imported on first use (PEP 562), so that ``import vslerp.ui.cli`` and
``vslerp --help`` do not import torch; ``vslerp.slerp`` and ``from vslerp import slerp`` work
as usual.
"""

from __future__ import annotations

import importlib

from ._version import __version__ as __version__  # re-exported

# public name -> the core module that defines it
_EXPORTS = {
    "ConformityFit": "conformal", "LinearFit": "conformal", "conformity": "conformal",
    "conformity_fit": "conformal", "cosine_to_mean": "conformal",
    "exact_conformity_coefficients": "conformal", "unit_sum": "conformal",
    "ClipLoss": "contrastive", "clip_loss": "contrastive", "clip_loss_vs_alpha": "contrastive",
    "ConformityKL": "divergence", "conformity_kl_vs_alpha": "divergence", "histogram": "divergence",
    "kl_divergence": "divergence",
    "angle": "interp", "slerp": "interp", "vslerp": "interp",
    "MixCoefficients": "mix", "vmix": "mix", "vmix_coefficients": "mix",
    "MomentAccumulator": "moments", "off_diagonal_dominance": "moments", "offset_ratio": "moments",
    "separability": "moments", "thin_shell": "moments", "top_features": "moments",
}

__all__ = sorted([*_EXPORTS, "__version__"])


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'vslerp' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
