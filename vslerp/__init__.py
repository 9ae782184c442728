"""vslerp: vertical SLERP in raw CLIP embedding space, and the geometry of that space.

The core (this package) is pure tensor functions implementing Levi & Gilboa, "The
Double-Ellipsoid Geometry of CLIP": SLERP and vSLERP (Eq. 12), exact conformity in linear
time (Eq. 10), its estimate from the mean (Eq. 11), and the §4 geometry measures.
The rooms ``vslerp.stats``, ``vslerp.pipelines`` and ``vslerp.ui`` build on it.
"""

from ._version import __version__
from .conformal import (
    ConformityFit,
    LinearFit,
    conformity,
    conformity_fit,
    cosine_to_mean,
    exact_conformity_coefficients,
    unit_sum,
)
from .interp import angle, slerp, vslerp
from .moments import (
    MomentAccumulator,
    off_diagonal_dominance,
    offset_ratio,
    separability,
    thin_shell,
    top_features,
)

__all__ = [
    "ConformityFit",
    "LinearFit",
    "MomentAccumulator",
    "__version__",
    "angle",
    "conformity",
    "conformity_fit",
    "cosine_to_mean",
    "exact_conformity_coefficients",
    "off_diagonal_dominance",
    "offset_ratio",
    "separability",
    "slerp",
    "thin_shell",
    "top_features",
    "unit_sum",
    "vslerp",
]
