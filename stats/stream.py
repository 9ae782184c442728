"""Encoding a list of items chunk by chunk: the loop under ``stats compute`` and ``vslerp conformity``.

A torch DataLoader decodes and preprocesses images in worker processes (captions are
tokenized in the main process); the main process encodes batches with a generator's CLIP
(:class:`~vslerp.stats.ClipEncoders`) and yields one :class:`EncodedChunk` of raw embeddings
(n, D) per chunk of ``chunk_size`` items. Batches never straddle two chunks, unreadable
images are skipped and named (``vslerp.stats.data.open_image`` decides what is readable), a
tqdm bar counts items/s, and memory is one chunk of embeddings plus the batches in flight,
independent of the number of items.
"""

from __future__ import annotations

import ctypes
import math
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset

from vslerp.checks import check_int

from . import data
from .data import Caption, ImageItem, UnreadableImage
from .encode import ClipEncoders

__all__ = ["ChunkBatches", "EncodedChunk", "HeapTrimmer", "check_sizes", "encode_stream",
           "encoded_chunks", "modality_inputs", "plan_chunks"]


# -- datasets for the DataLoader (picklable: workers may be spawned) ---------------------------
class _ImageDataset(Dataset):
    """Item i → (i, pixel_values (3, H, W) float32 or None, reason or None)."""

    def __init__(self, items: Sequence[ImageItem], image_processor) -> None:
        from PIL import Image

        self.items = items  # not copied: O(1) extra memory
        self.processor = image_processor
        self.max_pixels = Image.MAX_IMAGE_PIXELS  # carried into spawned workers

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        from PIL import Image

        Image.MAX_IMAGE_PIXELS = self.max_pixels
        try:
            image = data.open_image(self.items[i].path)  # looked up at call time
            pixels = self.processor(image, return_tensors="pt").pixel_values[0]  # (3, H, W)
        except UnreadableImage as err:
            return i, None, err.reason
        except Exception as err:  # noqa: BLE001 - a file the processor rejects is skipped too
            return i, None, f"unreadable ({type(err).__name__}: {err})"
        return i, pixels, None


def _collate_images(samples):
    ok = [s for s in samples if s[1] is not None]
    pixels = torch.stack([s[1] for s in ok]) if ok else None  # (n_ok, 3, H, W)
    bad = [(s[0], s[2]) for s in samples if s[1] is None]
    return [s[0] for s in ok], pixels, bad


class _TextDataset(Dataset):
    def __init__(self, captions: Sequence[Caption]) -> None:
        self.texts = [c.text for c in captions]

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, i: int):
        return i, self.texts[i]


class _TextCollate:
    """Tokenizes a batch as the Kandinsky prior pipeline does (padding to max length)."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer

    def __call__(self, samples):
        tokens = self.tokenizer([s[1] for s in samples], padding="max_length",
                                max_length=self.tokenizer.model_max_length, truncation=True,
                                return_tensors="pt")
        return [s[0] for s in samples], (tokens.input_ids, tokens.attention_mask), []


# -- batching -------------------------------------------------------------------------------
def plan_chunks(n_items: int, shard_size: int, rank: int = 0, world: int = 1) -> list[int]:
    """The chunk indices process ``rank`` of ``world`` handles: rank, rank+world, …"""
    return list(range(rank, math.ceil(n_items / shard_size), world))


class HeapTrimmer:
    """Gives freed heap memory back to the OS (glibc ``malloc_trim``; a no-op elsewhere).

    On the CPU the encoder's large activations come from glibc's heap once its adaptive
    mmap threshold has risen; without a trim the freed, fragmented heap stays resident and
    RSS creeps up with the number of batches (measured in benchmarks/bench_stats.py). A trim
    costs ~1 ms, so it runs only once at least 50× its own last duration has passed: at
    most ~2 % of the loop's time, every batch for a real encoder.
    """

    def __init__(self) -> None:
        self.trim = None
        if sys.platform.startswith("linux"):
            try:
                self.trim = ctypes.CDLL("libc.so.6").malloc_trim
            except (OSError, AttributeError):
                self.trim = None
        self.last_end = time.perf_counter()
        self.last_cost = 0.0

    def maybe_trim(self) -> None:
        if self.trim is None:
            return
        now = time.perf_counter()
        if now - self.last_end < 50 * self.last_cost:
            return
        self.trim(0)
        self.last_end = time.perf_counter()
        self.last_cost = self.last_end - now


class ChunkBatches:
    """Batch sampler over the pending chunks: batches never straddle two chunks."""

    def __init__(self, chunks: Sequence[int], n_items: int, shard_size: int,
                 batch_size: int) -> None:
        self.chunks, self.n, self.shard, self.batch = list(chunks), n_items, shard_size, batch_size

    def _range(self, k: int) -> range:
        return range(k * self.shard, min((k + 1) * self.shard, self.n))

    def items(self) -> int:
        return sum(len(self._range(k)) for k in self.chunks)

    def __len__(self) -> int:
        return sum(math.ceil(len(self._range(k)) / self.batch) for k in self.chunks)

    def __iter__(self):
        for k in self.chunks:
            rows = self._range(k)
            for j in range(0, len(rows), self.batch):
                yield list(rows[j : j + self.batch])


# -- the loop ---------------------------------------------------------------------------------
@dataclass
class EncodedChunk:
    """One chunk of items encoded by the streaming loop (:func:`encode_stream`)."""

    modality: str  # "image" or "text"
    index: int  # chunk k: items k·chunk_size … (k+1)·chunk_size − 1 of the item list
    embeddings: torch.Tensor  # (n, D) float32 raw, one row per readable item
    rows: list[int]  # the n items' positions in the item list, ascending
    skipped: list[tuple[str, str]]  # (name, reason) of this chunk's unreadable items


def encoded_chunks(modality: str, n_items: int, dataset: Dataset, collate, encode: Callable,
                    name_of: Callable[[int], str], dim: int, *, chunks: Sequence[int],
                    shard_size: int, batch_size: int, num_workers: int, pin_memory: bool,
                    trim: bool, progress: bool, desc: str):
    """Yield an :class:`EncodedChunk` per chunk of ``chunks``, in order (embeddings on the
    encoder's device). A DataLoader decodes and preprocesses in ``num_workers`` processes;
    batches never straddle two chunks; a tqdm bar counts items/s. Memory: one chunk of
    embeddings plus the DataLoader's prefetched batches, independent of ``n_items``."""
    from tqdm.auto import tqdm

    trimmer = HeapTrimmer() if trim else None
    batches = ChunkBatches(chunks, n_items, shard_size, batch_size)  # lazy: O(1) memory
    unit = "img" if modality == "image" else "caption"
    bar = tqdm(total=batches.items(), unit=unit, unit_scale=False, desc=desc,
               disable=not progress or not chunks, dynamic_ncols=True)
    loader = DataLoader(dataset, batch_sampler=batches, collate_fn=collate,
                        num_workers=num_workers if chunks else 0, pin_memory=pin_memory)
    parts: list[torch.Tensor] = []
    rows_ok: list[int] = []
    chunk_skipped: list[tuple[str, str]] = []
    try:
        for ok, inputs, bad in loader:
            last_row = max(ok[-1] if ok else -1, max((i for i, _ in bad), default=-1))
            k = last_row // shard_size
            last = last_row == min((k + 1) * shard_size, n_items) - 1
            if ok:
                parts.append(encode(inputs))  # (n_ok, D) float32 on the device
                rows_ok.extend(ok)
            chunk_skipped.extend((name_of(i), reason) for i, reason in bad)
            bar.update(len(ok) + len(bad))
            if trimmer is not None:
                trimmer.maybe_trim()
            if not last:
                continue
            emb = torch.cat(parts) if parts else torch.zeros(0, dim)  # (n, D) raw
            yield EncodedChunk(modality, k, emb, rows_ok, chunk_skipped)
            parts, rows_ok, chunk_skipped = [], [], []
    finally:
        bar.close()


def modality_inputs(encoders: ClipEncoders, modality: str, items: Sequence, num_workers: int):
    """(dataset, collate, encode, name_of, image_id_of, workers) of one modality's items."""
    if modality == "image":
        return (_ImageDataset(items, encoders.image_processor), _collate_images,
                encoders.encode_pixels, lambda i: items[i].name, lambda i: items[i].image_id,
                num_workers)
    # captions: tokenizing in the main process is cheap, and the tokenizer need not pickle
    return (_TextDataset(items), _TextCollate(encoders.tokenizer),
            lambda tokens: encoders.encode_tokens(*tokens),
            lambda i: f"caption {items[i].caption_id}", lambda i: items[i].image_id, 0)


def encode_stream(encoders: ClipEncoders, images: Sequence[ImageItem] = (),
                  captions: Sequence[Caption] = (), *, batch_size: int = 32,
                  num_workers: int = 2, chunk_size: int = 1024,
                  progress: bool = True, max_workers: int | None = None,
                  max_batch_size: int | None = None) -> Iterator[EncodedChunk]:
    """Encode the items of one modality, yielding :class:`EncodedChunk` s (embeddings on the
    CPU) — the loop of ``stats compute`` (DataLoader workers, batches, progress bar) without
    the sums, for consumers such as ``vslerp conformity`` that need every item's embedding
    but not all of them at once. Give ``images`` or ``captions``, not both. Unreadable
    images are skipped and named in each chunk's ``skipped``. Memory is independent of the
    number of items: one chunk of embeddings and the batches in flight. ``max_workers``,
    ``max_batch_size``: lift the limits of :func:`check_loader_limits`."""
    if bool(images) == bool(captions):
        raise ValueError("encode_stream encodes one modality: give images or captions")
    check_sizes(batch_size=batch_size, num_workers=num_workers, chunk_size=chunk_size)
    check_loader_limits(num_workers, batch_size, max_workers=max_workers, max_batch_size=max_batch_size)
    if captions and encoders.text_encoder is None:
        raise ValueError("captions given but the encoders were loaded without a text encoder")
    modality, items = ("image", images) if images else ("text", captions)
    dataset, collate, encode, name_of, _, workers = modality_inputs(
        encoders, modality, items, num_workers)
    chunks = plan_chunks(len(items), chunk_size)
    for chunk in encoded_chunks(modality, len(items), dataset, collate, encode, name_of,
                                 encoders.dim, chunks=chunks, shard_size=chunk_size,
                                 batch_size=batch_size, num_workers=workers,
                                 pin_memory=encoders.device.type == "cuda",
                                 trim=encoders.device.type != "cuda", progress=progress,
                                 desc=f"encoding {modality}s"):
        chunk.embeddings = chunk.embeddings.cpu()
        yield chunk


def check_loader_limits(num_workers: int, batch_size: int, *, max_workers: int | None = None,
                        max_batch_size: int | None = None, names: dict | None = None) -> None:
    """``num_workers`` ≤ ``max_workers`` (None: :func:`vslerp.defaults.max_workers`, 4 per CPU)
    and ``batch_size`` ≤ ``max_batch_size`` (None: ``MAX_ENCODE_BATCH``): a typo such as 10000
    workers would fork ~300 MB processes until the machine stalls. ``ValueError`` naming the
    argument and how to lift it; ``names``: the caller's spelling of the four (the CLI's flags)."""
    from vslerp.defaults import MAX_ENCODE_BATCH, WORKERS_PER_CPU
    from vslerp.defaults import max_workers as default_workers

    names = {"num_workers": "num_workers", "max_workers": "max_workers=", "batch_size": "batch_size",
             "max_batch_size": "max_batch_size=", **(names or {})}
    workers = default_workers() if max_workers is None else max_workers
    if num_workers > workers:
        why = f"{WORKERS_PER_CPU} per CPU here, " if max_workers is None else ""
        raise ValueError(f"{names['num_workers']} {num_workers} is more than the limit {workers} "
                         f"({why}each a process of ~300 MB; raise it with {names['max_workers']}N)")
    batch = MAX_ENCODE_BATCH if max_batch_size is None else max_batch_size
    if batch_size > batch:
        raise ValueError(f"{names['batch_size']} {batch_size} is more than the limit {batch} items "
                         f"per batch (raise it with {names['max_batch_size']}N)")


def check_sizes(**values) -> None:
    """Each keyword an int ≥ 1 (``num_workers`` ≥ 0), else ``ValueError`` naming it."""
    for name, value in values.items():
        check_int(name, value, 0 if name == "num_workers" else 1)
