"""Streaming statistics of a dataset through a generator's CLIP encoders (``stats compute``).

Each modality's items are cut into fixed chunks of ``shard_size``; process ``r`` of ``W``
(``accelerate launch``) takes chunks r, r+W, … A torch DataLoader decodes and preprocesses
images in worker processes; the main process encodes batches and, when a chunk is done, adds
its raw embeddings (n, D) to a :class:`vslerp.MomentAccumulator` (float64) — and, with an
:class:`~vslerp.stats.embeddings.EmbeddingStore`, writes them as one shard. Chunks already on
disk are summed from their shards instead of re-encoded, in chunk order, so a resumed run
adds exactly the same tensors in the same order as an uninterrupted one. Memory is
O(shard_size·D + D²), independent of the dataset size. The sums are then all-reduced across
processes; the caller (rank 0) writes the file.
"""

from __future__ import annotations

import ctypes
import hashlib
import math
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone

import torch
from torch.utils.data import DataLoader, Dataset

from vslerp import MomentAccumulator
from vslerp._version import __version__

from .data import Caption, ImageItem, UnreadableImage, open_image
from .embeddings import EmbeddingStore, Shard
from .encode import ClipEncoders
from .files import Statistics

__all__ = ["ComputeResult", "EncodedChunk", "compute_statistics", "dataset_digest",
           "encode_stream", "plan_chunks", "reduced_result"]

MAX_SKIPPED_IN_METADATA = 1000  # names of skipped items kept in the file (all are counted)


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
            image = open_image(self.items[i].path)
            pixels = self.processor(image, return_tensors="pt").pixel_values[0]  # (3, H, W)
        except UnreadableImage as err:
            return i, None, str(err)
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


# -- planning ---------------------------------------------------------------------------------
def plan_chunks(n_items: int, shard_size: int, rank: int = 0, world: int = 1) -> list[int]:
    """The chunk indices process ``rank`` of ``world`` handles: rank, rank+world, …"""
    return list(range(rank, math.ceil(n_items / shard_size), world))


def dataset_digest(names: Sequence[str]) -> str:
    """sha256 of the item names in order: a resumed run must see the same items."""
    digest = hashlib.sha256()
    for name in names:
        digest.update(name.encode("utf-8", "surrogatepass"))
        digest.update(b"\0")
    return digest.hexdigest()


@dataclass
class ComputeResult:
    """What :func:`compute_statistics` returns (identical on every process)."""

    statistics: Statistics  # sums of all processes, with metadata
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (name, reason), sorted
    encoded: dict[str, int] = field(default_factory=dict)  # items encoded by this process now
    resumed: dict[str, int] = field(default_factory=dict)  # items read back from shards


class _HeapTrimmer:
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


class _ChunkBatches:
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


def _encoded_chunks(modality: str, n_items: int, dataset: Dataset, collate, encode: Callable,
                    name_of: Callable[[int], str], dim: int, *, chunks: Sequence[int],
                    shard_size: int, batch_size: int, num_workers: int, pin_memory: bool,
                    trim: bool, progress: bool, desc: str):
    """Yield an :class:`EncodedChunk` per chunk of ``chunks``, in order (embeddings on the
    encoder's device). A DataLoader decodes and preprocesses in ``num_workers`` processes;
    batches never straddle two chunks; a tqdm bar counts items/s. Memory: one chunk of
    embeddings plus the DataLoader's prefetched batches, independent of ``n_items``."""
    from tqdm.auto import tqdm

    trimmer = _HeapTrimmer() if trim else None
    batches = _ChunkBatches(chunks, n_items, shard_size, batch_size)  # lazy: O(1) memory
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


def _modality_inputs(encoders: ClipEncoders, modality: str, items: Sequence, num_workers: int):
    """(dataset, collate, encode, name_of, image_id_of, workers) of one modality's items."""
    if modality == "image":
        return (_ImageDataset(items, encoders.image_processor), _collate_images,
                encoders.encode_pixels, lambda i: items[i].name, lambda i: items[i].image_id,
                num_workers)
    # captions: tokenizing in the main process is cheap, and the tokenizer need not pickle
    return (_TextDataset(items), _TextCollate(encoders.tokenizer),
            lambda tokens: encoders.encode_tokens(*tokens),
            lambda i: f"caption {items[i].caption_id}", lambda i: items[i].image_id, 0)


def _run_modality(modality: str, items: Sequence, encoders: ClipEncoders,
                  acc: MomentAccumulator, *, store: EmbeddingStore | None, shard_size: int,
                  batch_size: int, num_workers: int, rank: int, world: int, progress: bool,
                  on_shard: Callable[[str, int], None] | None):
    n_items = len(items)
    mine = plan_chunks(n_items, shard_size, rank, world)
    done = store.completed(modality) & set(mine) if store is not None else set()
    pending = [k for k in mine if k not in done]
    skipped: list[tuple[str, str]] = []
    counts = {"encoded": 0, "resumed": 0}

    def add_from_disk(k: int) -> None:
        shard = store.read_shard(modality, k)
        if shard.embeddings.ndim != 2 or shard.embeddings.shape[1] != acc.dim:
            raise ValueError(f"embedding shard {store.shard_path(modality, k)} has shape "
                             f"{tuple(shard.embeddings.shape)}, expected (n, {acc.dim})")
        if shard.embeddings.shape[0]:
            acc.update(shard.embeddings.to(acc.sum.device))
        skipped.extend(shard.skipped)
        counts["resumed"] += int(shard.embeddings.shape[0])

    dataset, collate, encode, name_of, image_id_of, workers = _modality_inputs(
        encoders, modality, items, num_workers)
    done_queue = sorted(done)
    desc = f"encoding {modality}s" + (f" (process 0 of {world})" if world > 1 else "")
    for chunk in _encoded_chunks(modality, n_items, dataset, collate, encode, name_of, acc.dim,
                                 chunks=pending, shard_size=shard_size, batch_size=batch_size,
                                 num_workers=workers, pin_memory=encoders.device.type == "cuda",
                                 trim=acc.sum.device.type == "cpu", progress=progress,
                                 desc=desc):
        k, emb = chunk.index, chunk.embeddings
        while done_queue and done_queue[0] < k:  # keep the chunk order of a full run
            add_from_disk(done_queue.pop(0))
        if emb.shape[0]:
            acc.update(emb.to(acc.sum.device))
        if store is not None:
            index = torch.tensor(chunk.rows, dtype=torch.int64)
            ids = torch.tensor([image_id_of(i) for i in chunk.rows], dtype=torch.int64)
            store.write_shard(modality, k, Shard(emb.cpu(), index, ids, chunk.skipped))
        skipped.extend(chunk.skipped)
        counts["encoded"] += int(emb.shape[0])
        if on_shard is not None:
            on_shard(modality, k)
    for k in done_queue:
        add_from_disk(k)
    return skipped, counts


def encode_stream(encoders: ClipEncoders, images: Sequence[ImageItem] = (),
                  captions: Sequence[Caption] = (), *, batch_size: int = 32,
                  num_workers: int = 2, chunk_size: int = 1024,
                  progress: bool = True) -> Iterator[EncodedChunk]:
    """Encode the items of one modality, yielding :class:`EncodedChunk` s (embeddings on the
    CPU) — the loop of ``stats compute`` (DataLoader workers, batches, progress bar) without
    the sums, for consumers such as ``vslerp conformity`` that need every item's embedding
    but not all of them at once. Give ``images`` or ``captions``, not both. Unreadable
    images are skipped and named in each chunk's ``skipped``. Memory is independent of the
    number of items: one chunk of embeddings and the batches in flight."""
    if bool(images) == bool(captions):
        raise ValueError("encode_stream encodes one modality: give images or captions")
    _check_sizes(batch_size=batch_size, num_workers=num_workers, chunk_size=chunk_size)
    if captions and encoders.text_encoder is None:
        raise ValueError("captions given but the encoders were loaded without a text encoder")
    modality, items = ("image", images) if images else ("text", captions)
    dataset, collate, encode, name_of, _, workers = _modality_inputs(
        encoders, modality, items, num_workers)
    chunks = plan_chunks(len(items), chunk_size)
    for chunk in _encoded_chunks(modality, len(items), dataset, collate, encode, name_of,
                                 encoders.dim, chunks=chunks, shard_size=chunk_size,
                                 batch_size=batch_size, num_workers=workers,
                                 pin_memory=encoders.device.type == "cuda",
                                 trim=encoders.device.type != "cuda", progress=progress,
                                 desc=f"encoding {modality}s"):
        chunk.embeddings = chunk.embeddings.cpu()
        yield chunk


def _check_sizes(**values) -> None:
    for name, value in values.items():
        low = 0 if name == "num_workers" else 1
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"{name} must be an int ≥ {low}, got {value!r}")


def _reduce(acc: MomentAccumulator, state) -> None:
    """All-reduce an accumulator's sums (and count) across processes, in place (float64)."""
    if state is None or state.num_processes <= 1:
        return
    from accelerate.utils import reduce

    d = acc.dim
    flat = torch.cat([acc.sum, acc.sum_unit, acc.sum_outer.reshape(-1), acc.sum_norm[None],
                      acc.sum_sq_norm[None],
                      torch.tensor([float(acc.count)], dtype=torch.float64, device=acc.sum.device)])
    dev = state.device if "nccl" in str(state.backend) else torch.device("cpu")  # gloo: CPU
    flat = reduce(flat.to(dev), reduction="sum").to(acc.sum.device)
    acc.sum = flat[:d].clone()
    acc.sum_unit = flat[d : 2 * d].clone()
    acc.sum_outer = flat[2 * d : 2 * d + d * d].reshape(d, d).clone()
    acc.sum_norm, acc.sum_sq_norm = flat[-3].clone(), flat[-2].clone()
    acc.count = int(round(float(flat[-1])))


def compute_statistics(encoders: ClipEncoders, images: Sequence[ImageItem] = (),
                       captions: Sequence[Caption] = (), *, batch_size: int = 32,
                       num_workers: int = 2, shard_size: int = 1024,
                       store: EmbeddingStore | None = None, state=None, progress: bool = True,
                       metadata: dict | None = None,
                       on_shard: Callable[[str, int], None] | None = None) -> ComputeResult:
    """Encode ``images`` and ``captions`` and sum their raw embeddings per modality.

    encoders: :class:`~vslerp.stats.ClipEncoders`; images / captions: dataset items (either
    may be empty, not both); state: an accelerate ``PartialState`` (None: one process);
    store: where to write / resume shards (its folder must be prepared by rank 0 first);
    on_shard(modality, chunk): called after each chunk is summed (and written). Unreadable
    images are skipped and named in ``ComputeResult.skipped``. Returns the reduced
    statistics on every process.
    """
    if not images and not captions:
        raise ValueError("nothing to encode: no images and no captions")
    _check_sizes(batch_size=batch_size, num_workers=num_workers, shard_size=shard_size)
    if captions and encoders.text_encoder is None:
        raise ValueError("captions given but the encoders were loaded without a text encoder")
    rank = state.process_index if state is not None else 0
    world = state.num_processes if state is not None else 1
    main = rank == 0
    acc_device = encoders.device if encoders.device.type == "cuda" else torch.device("cpu")
    common = dict(store=store, shard_size=shard_size, batch_size=batch_size,
                  num_workers=num_workers, rank=rank, world=world, progress=progress and main,
                  on_shard=on_shard)
    accs: dict[str, MomentAccumulator] = {}
    skipped: list[tuple[str, str]] = []
    encoded, resumed = {}, {}
    if images:
        acc = accs["image"] = MomentAccumulator(encoders.dim, device=acc_device)
        skip, counts = _run_modality("image", images, encoders, acc, **common)
        skipped += skip
        encoded["image"], resumed["image"] = counts["encoded"], counts["resumed"]
    if captions:
        acc = accs["text"] = MomentAccumulator(encoders.dim, device=acc_device)
        skip, counts = _run_modality("text", captions, encoders, acc, **common)
        skipped += skip
        encoded["text"], resumed["text"] = counts["encoded"], counts["resumed"]
    dataset_size = {"image": len(images), "text": len(captions)}
    return reduced_result(encoders, accs, skipped, dataset_size, state, metadata, encoded,
                          resumed)


def reduced_result(encoders: ClipEncoders, accs: dict[str, MomentAccumulator],
                   skipped: list[tuple[str, str]], dataset_size: dict[str, int], state,
                   metadata: dict | None, encoded: dict[str, int],
                   resumed: dict[str, int]) -> ComputeResult:
    """All-reduce each process's sums and skipped items; the statistics and their metadata
    (identical on every process). Raises ``ValueError`` when a modality got no item."""
    world = state.num_processes if state is not None else 1
    for acc in accs.values():
        _reduce(acc, state)
    if state is not None and world > 1:
        from accelerate.utils import gather_object

        skipped = list(gather_object(skipped))
    skipped = sorted({(str(n), str(r)) for n, r in skipped})
    for modality, acc in accs.items():
        if acc.count == 0:
            raise ValueError(f"none of the {dataset_size[modality]} {modality}s could be "
                             f"encoded ({len(skipped)} skipped, e.g. {skipped[:3]})")
    meta = {
        **(metadata or {}),
        "model_id": encoders.model_id,
        "encoder_fingerprint": encoders.fingerprint,
        "dim": encoders.dim,
        "dataset_size": dataset_size,
        "skipped": {"count": len(skipped),
                    "items": [list(s) for s in skipped[:MAX_SKIPPED_IN_METADATA]]},
        "version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "dtype": str(encoders.dtype).replace("torch.", ""),
        "processes": world,
    }
    stats = Statistics.from_accumulators(accs.get("image"), accs.get("text"), meta)
    return ComputeResult(stats, skipped, encoded, resumed)
