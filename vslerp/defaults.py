"""Facts every room shares, written once: model ids, image suffixes, estimator names, ranges.

Plain constants, no torch: the CLI's parser and ``vslerp --help`` read them without
importing a model library.
"""

from __future__ import annotations

import os

__all__ = [
    "CONFORMITY_COSINE", "CONFORMITY_EXACT", "CONFORMITY_ESTIMATORS", "DEFAULT_DECODER", "DEFAULT_PRIOR",
    "DEFAULT_UNCLIP", "IMAGE_SUFFIXES", "MAX_CELLS", "MAX_ENCODE_BATCH", "MAX_FRAMES", "MAX_JSON_DEPTH", "MAX_SIZE",
    "SEED_LIMIT", "STATISTICS_FILE", "WORKERS_PER_CPU", "max_workers",
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

# --- limits of reading: against input that would exhaust the machine or the stack
MAX_JSON_DEPTH = 64  # nesting of any JSON a user hands in (sidecars, jobs, captions, metadata)
WORKERS_PER_CPU = 4  # DataLoader worker processes (~300 MB each) per CPU: decoding is CPU-bound,
# so more than a few per core only adds memory; --max-workers N lifts it
MAX_ENCODE_BATCH = 4096  # items per encoder batch (stats compute, conformity): 4096 images of
# 224² are 2.5 GB as float32, per batch in flight; --max-batch-size N lifts it


def max_workers() -> int:
    """The most DataLoader workers accepted by default: ``WORKERS_PER_CPU`` × the CPUs this
    process may run on."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    return WORKERS_PER_CPU * max(cpus, 1)
