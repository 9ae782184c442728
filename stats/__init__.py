"""Modality statistics, the geometry report and conformity scoring (paper §4–7).

Reading datasets (COCO captions json, image folders, caption text files), encoding them with
a generator's own CLIP encoders, and the statistics files (moment sums per modality) that
the pipeline shifts by. Never imports ``vslerp.pipelines`` or ``vslerp.ui``.
"""

from .data import (
    Caption,
    ImageItem,
    UnreadableImage,
    iter_images,
    list_images,
    open_image,
    read_captions,
    read_coco,
)
from .embeddings import Embeddings, read_embeddings
from .encode import ClipEncoders, default_device, encoder_fingerprint, load_encoders
from .files import ModalityStats, Statistics, check_compatible, load

__all__ = [
    "Caption",
    "ClipEncoders",
    "Embeddings",
    "ImageItem",
    "ModalityStats",
    "Statistics",
    "UnreadableImage",
    "check_compatible",
    "default_device",
    "encoder_fingerprint",
    "iter_images",
    "list_images",
    "load",
    "load_encoders",
    "open_image",
    "read_captions",
    "read_coco",
    "read_embeddings",
]
