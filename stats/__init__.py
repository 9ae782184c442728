"""Modality statistics, the geometry report and conformity scoring (paper §4–7).

Reading datasets (COCO captions json, image folders, caption text files), encoding them with
a generator's own CLIP encoders (a Kandinsky 2.2 prior or an unCLIP/Karlo repo:
``load_encoders``; any generator, an IP-Adapter's encoder or a CLIPModel:
``load_generator_encoders``), and the statistics files (moment sums per modality) that the
pipeline shifts by; what a model id or folder is (``stats.models``: the backend table, its
``model_index.json``, an IP-Adapter's name). Never imports ``vslerp.ui`` or ``vslerp.pipelines``.
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
from .encode import (
    ClipEncoders,
    default_device,
    default_dtype,
    encoder_fingerprint,
    load_encoders,
    parse_device,
)
from .generators import generator_layout, load_generator_encoders
from .outputs import (
    OutputBusy,
    atomic_write,
    check_writable,
    forget_inputs,
    note_input,
    output_lock,
    refuse_overwriting_inputs,
)
from .statistics_file import ModalityStats, Statistics, check_compatible, load

__all__ = [
    "Caption",
    "ClipEncoders",
    "Embeddings",
    "ImageItem",
    "ModalityStats",
    "OutputBusy",
    "Statistics",
    "UnreadableImage",
    "atomic_write",
    "check_compatible",
    "check_writable",
    "default_device",
    "default_dtype",
    "encoder_fingerprint",
    "forget_inputs",
    "generator_layout",
    "iter_images",
    "list_images",
    "load",
    "load_encoders",
    "load_generator_encoders",
    "note_input",
    "open_image",
    "output_lock",
    "parse_device",
    "read_captions",
    "read_coco",
    "read_embeddings",
    "refuse_overwriting_inputs",
]
