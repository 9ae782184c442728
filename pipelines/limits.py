"""The limits of one render, in one place: image size, cells per call, animation frames.

Each limit keeps a typo (``--size 100000``, a 1000 × 1000 grid) from running for hours or
exhausting memory; each can be lifted explicitly (API keyword / CLI option named in the
message). Sizes follow the model's rule (its backend record's, :mod:`vslerp.stats.models`): a
multiple of its spatial factor, or the one size unCLIP/Karlo renders.
An out-of-memory during rendering becomes :class:`RenderOutOfMemory`, one line naming the
size and batch and what to lower.
"""

from __future__ import annotations

import json
from pathlib import Path

from vslerp.defaults import MAX_CELLS, MAX_FRAMES, MAX_SIZE  # the numbers' one home

__all__ = [
    "KANDINSKY_FACTOR",
    "MAX_CELLS",
    "MAX_FRAMES",
    "MAX_SIZE",
    "RenderOutOfMemory",
    "check_cells",
    "check_frames",
    "check_size",
    "is_out_of_memory",
    "out_of_memory",
    "size_rule",
]

KANDINSKY_FACTOR = 64  # px: Kandinsky 2.2's movq (factor 8) squared, as downscale_height_and_width


class RenderOutOfMemory(MemoryError):
    """The device ran out of memory while rendering; the message says what to lower.
    ``height``, ``width``, ``batch``: the render that failed."""

    def __init__(self, message: str, height: int = 0, width: int = 0, batch: int = 0):
        super().__init__(message)
        self.height, self.width, self.batch = height, width, batch


def _int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def check_size(name: str, value, *, factor: int = 1, fixed: int | None = None,
               max_size: int = MAX_SIZE, lift: str = "max_size=") -> int:
    """``value`` (px) if it is a size the model renders, else ``ValueError`` naming ``name``.

    The one size rule of the pipeline and the CLI: a positive int, a multiple of ``factor``
    (the model's spatial factor: other sizes would be rounded silently), equal to ``fixed``
    when the model renders one size only, and at most ``max_size`` (``lift`` names the
    keyword or option that raises it)."""
    value = _int(name, value)
    if value < 1:
        raise ValueError(f"{name} must be a positive int, got {value}")
    if fixed is not None and value != fixed:
        raise ValueError(f"{name} {value}: this model renders {fixed}×{fixed} px only")
    if value > max_size:
        raise ValueError(f"{name} {value} px is larger than the limit {max_size} px "
                         f"(raise it with {lift}N)")
    if value % factor:
        lower, upper = value // factor * factor, (value // factor + 1) * factor
        near = f"{lower} or {upper}" if lower else str(upper)
        raise ValueError(f"{name} {value} is not a multiple of {factor} (the model's spatial "
                         f"factor): use {near}")
    return value


def check_cells(count: int, *, max_cells: int = MAX_CELLS, lift: str = "max_cells=",
                what: str = "cells") -> int:
    """``count`` cells of one call, refused (``ValueError``) above ``max_cells``."""
    if count > max_cells:
        raise ValueError(f"{count} {what} in one call is more than the limit {max_cells} "
                         f"(raise it with {lift}N)")
    return count


def check_frames(frames, *, max_frames: int = MAX_FRAMES, lift: str = "--max-frames ",
                 name: str = "--frames") -> int:
    """An animation's frame count: both ends included, so at least 2; at most ``max_frames``."""
    frames = _int(name, frames)
    if frames < 2:
        raise ValueError(f"{name} must be at least 2 (θ = 0 and θ = 1 are both frames), "
                         f"got {frames}")
    if frames > max_frames:
        raise ValueError(f"{name} {frames} is more than the limit {max_frames} "
                         f"(raise it with {lift}N)")
    return frames


def size_rule(decoder: str | Path | None) -> tuple[int, int | None]:
    """``(factor, fixed)`` of a model before it loads: its backend's rule
    (:func:`vslerp.stats.models.size_rule_of`) applied to the local config it names, else that
    backend's rule for a hub id (Kandinsky 2.2's when the backend cannot be told); the loaded
    pipeline checks again."""
    from vslerp.stats.models import (
        KANDINSKY,
        backend_by_name,
        backend_of,
        backend_record,
        size_rule_of,
    )

    try:
        backend = backend_of(decoder) if decoder is not None else KANDINSKY
    except ValueError:  # an unreadable model_index.json: the pipeline names it
        backend = backend_by_name(decoder)
    record = backend_record(backend or KANDINSKY)
    folder = Path(str(decoder)).expanduser() if decoder else None
    config = folder / record.size_part / "config.json" if folder is not None else None
    try:
        if config is not None and config.is_file():
            return size_rule_of(record, json.loads(config.read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return record.hub_size


def is_out_of_memory(err: BaseException) -> bool:
    """True for torch's ``OutOfMemoryError`` (CUDA, MPS), a RuntimeError saying "out of
    memory" (older torch, other backends) and Python's own ``MemoryError``."""
    import torch

    oom = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", ())
    if isinstance(err, (MemoryError, oom)):
        return True
    return isinstance(err, RuntimeError) and "out of memory" in str(err).lower()


def out_of_memory(height: int, width: int, batch: int, lower: str = "max_batch_size=",
                  tiling: str | None = "pipe.enable_movq_tiling()") -> RenderOutOfMemory:
    """The one-line error replacing an out-of-memory while rendering ``batch`` cells of
    ``width`` × ``height`` px: lower the batch (``lower``: the keyword or option), the size,
    or decode in tiles (``tiling``, where the caller offers it)."""
    tiles = f", or decode in tiles ({tiling})" if tiling else ""
    return RenderOutOfMemory(
        f"out of memory rendering {batch} cell(s) of {width}×{height} px at once: lower the "
        f"batch ({lower}{max(1, batch // 2)}) or the size{tiles}", height, width, batch)
