"""Facts every room shares, written once: model ids, image suffixes, estimator names, ranges.

Plain constants, no torch: the CLI's parser and ``vslerp --help`` read them without
importing a model library.
"""

from __future__ import annotations

__all__ = [
    "CONFORMITY_COSINE", "CONFORMITY_EXACT", "CONFORMITY_ESTIMATORS", "DEFAULT_DECODER", "DEFAULT_PRIOR",
    "DEFAULT_UNCLIP", "IMAGE_SUFFIXES", "MAX_CELLS", "MAX_FRAMES", "MAX_SIZE", "SEED_LIMIT", "STATISTICS_FILE",
]

# --- generators (docs/pipeline.md): the hub ids a bare `VSlerpPipeline.from_pretrained()` and
# the CLI's --model / --prior default to
DEFAULT_DECODER = "kandinsky-community/kandinsky-2-2-decoder"  # Kandinsky 2.2 decoder (UNet + MoVQ)
DEFAULT_PRIOR = "kandinsky-community/kandinsky-2-2-prior"  # its CLIP ViT-bigG/14 encoders + prior
DEFAULT_UNCLIP = "kakaobrain/karlo-v1-alpha-image-variations"  # unCLIP / Karlo (the paper's)
STATISTICS_FILE = "vslerp_statistics.safetensors"  # saved beside model_index.json

# --- files: what counts as an image path (input checks, folder listings)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")

# --- conformity estimators (paper Eq. 10-11): the names sidecars, CSVs and the editor print
CONFORMITY_EXACT = "exact_identity"  # C = a·cos(v, μ̂) + b from the dataset's sums: exact
CONFORMITY_COSINE = "cosine_to_mean"  # cos(v, m) with a mean only (a prior's clip_mean, a tensor)
CONFORMITY_ESTIMATORS = {
    CONFORMITY_EXACT: "exact, from the dataset's statistics",
    CONFORMITY_COSINE: "cosine to the mean (a mean only: an estimate)",
}

# --- ranges: a seed is in [0, SEED_LIMIT) (torch.Generator.manual_seed takes a signed 64-bit int)
SEED_LIMIT = 2**63

# --- limits of one render (vslerp.pipelines.limits checks them; each can be raised per call or
# with --max-size / --max-cells / --max-frames): against typos that would run for hours
MAX_SIZE = 4096  # px per side: larger is a typo on any GPU of today
MAX_CELLS = 1024  # cells rendered by one call (a grid's θ × α, an animation's frames)
MAX_FRAMES = 2000  # frames of one animation
