"""Streaming statistics of a dataset through a generator's CLIP encoders (``stats compute``).

Each modality's items are cut into fixed chunks of ``shard_size``; process ``r`` of ``W``
(``accelerate launch``) takes chunks r, r+W, … The encoding loop (DataLoader workers,
batches, progress: :mod:`vslerp.stats.stream`) yields each chunk's raw embeddings (n, D);
this module adds them to a :class:`vslerp.MomentAccumulator` (float64) and, with an
:class:`~vslerp.stats.embeddings.EmbeddingStore`, writes them as one shard. Chunks already on
disk are summed from their shards instead of re-encoded, in chunk order, so a resumed run
adds exactly the same tensors in the same order as an uninterrupted one. Memory is
O(shard_size·D + D²), independent of the dataset size. The sums are then all-reduced across
processes; the caller (rank 0) writes the file.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone

import torch

from vslerp import MomentAccumulator
from vslerp._version import __version__

from .data import Caption, ImageItem
from .embeddings import EmbeddingStore, Shard
from .encode import ClipEncoders
from .statistics_file import Statistics
from .stream import check_loader_limits, check_sizes, encoded_chunks, modality_inputs, plan_chunks

__all__ = ["ComputeResult", "compute_statistics", "dataset_digest", "reduced_result", "start_run",
           "sum_in_order"]

MAX_SKIPPED_IN_METADATA = 1000  # names of skipped items kept in the file (all are counted)


# -- planning ---------------------------------------------------------------------------------
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


# -- the runner (folders and shards) ---------------------------------------------------------
def start_run(encoders: ClipEncoders, state, *, text: bool, batch_size: int, num_workers: int,
              max_workers: int | None, max_batch_size: int | None, **sizes: int):
    """Check a run's sizes and loader limits; ``(rank, world, accumulator device)``."""
    check_sizes(batch_size=batch_size, num_workers=num_workers, **sizes)
    check_loader_limits(num_workers, batch_size, max_workers=max_workers, max_batch_size=max_batch_size)
    if text and encoders.text_encoder is None:
        raise ValueError("captions given but the encoders were loaded without a text encoder")
    rank = state.process_index if state is not None else 0
    world = state.num_processes if state is not None else 1
    acc_device = encoders.device if encoders.device.type == "cuda" else torch.device("cpu")
    return rank, world, acc_device


def sum_in_order(encoded, done: set[int], accs: dict[str, MomentAccumulator],
                 store: EmbeddingStore | None, *, label: str | None = None,
                 on_shard: Callable[[str, int], None] | None = None):
    """Sum ``encoded`` units ``(k, {modality: Shard})`` (ascending k) into ``accs``, and units
    ``done`` from the store's shards where they fall, so a resumed run adds the same tensors
    in the same order as an uninterrupted one; write each encoded unit to ``store``. Calls
    ``on_shard(label or modality, k)`` after each unit. Returns (skipped, counts per modality:
    encoded / resumed / skipped)."""
    queue = sorted(done)
    skipped: list[tuple[str, str]] = []
    counts = {m: {"encoded": 0, "resumed": 0, "skipped": 0} for m in accs}

    def add(m: str, shard: Shard, how: str) -> None:
        acc = accs[m]
        if shard.embeddings.shape[0]:
            acc.update(shard.embeddings.to(acc.sum.device))
        skipped.extend(shard.skipped)
        counts[m][how] += int(shard.embeddings.shape[0])
        counts[m]["skipped"] += len(shard.skipped)

    def add_from_disk(k: int) -> None:
        for m, acc in accs.items():
            shard = store.read_shard(m, k)
            if shard.embeddings.ndim != 2 or shard.embeddings.shape[1] != acc.dim:
                raise ValueError(f"embedding shard {store.shard_path(m, k)} has shape "
                                 f"{tuple(shard.embeddings.shape)}, expected (n, {acc.dim})")
            add(m, shard, "resumed")

    with contextlib.closing(iter(encoded)) as units:
        for k, shards in units:
            while queue and queue[0] < k:  # keep the unit order of a full run
                add_from_disk(queue.pop(0))
            for m, shard in shards.items():
                add(m, shard, "encoded")
                if store is not None:
                    store.write_shard(m, k, replace(shard, embeddings=shard.embeddings.cpu()))
            if on_shard is not None:
                on_shard(label or next(iter(shards)), k)
    for k in queue:
        add_from_disk(k)
    return skipped, counts


def _folder_chunks(modality: str, items: Sequence, encoders: ClipEncoders, chunks: list[int], *,
                   dim: int, trim: bool, world: int, progress: bool, **loader):
    """A folder's pending chunks of one modality as ``(k, {modality: Shard})``."""
    dataset, collate, encode, name_of, image_id_of, workers = modality_inputs(
        encoders, modality, items, loader.pop("num_workers"))
    desc = f"encoding {modality}s" + (f" (process 0 of {world})" if world > 1 else "")
    for chunk in encoded_chunks(modality, len(items), dataset, collate, encode, name_of, dim,
                                 chunks=chunks, num_workers=workers,
                                 pin_memory=encoders.device.type == "cuda", trim=trim,
                                 progress=progress, desc=desc, **loader):
        index = torch.tensor(chunk.rows, dtype=torch.int64)
        ids = torch.tensor([image_id_of(i) for i in chunk.rows], dtype=torch.int64)
        yield chunk.index, {modality: Shard(chunk.embeddings, index, ids, chunk.skipped)}


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
                       on_shard: Callable[[str, int], None] | None = None,
                       max_workers: int | None = None,
                       max_batch_size: int | None = None) -> ComputeResult:
    """Encode ``images`` and ``captions`` and sum their raw embeddings per modality.

    encoders: :class:`~vslerp.stats.ClipEncoders`; images / captions: dataset items (either
    may be empty, not both); state: an accelerate ``PartialState`` (None: one process);
    store: where to write / resume shards (its folder must be prepared by rank 0 first);
    on_shard(modality, chunk): called after each chunk is summed (and written). Unreadable
    images are skipped and named in ``ComputeResult.skipped``. Returns the reduced
    statistics on every process. ``max_workers``, ``max_batch_size``: lift the limits of
    :func:`~vslerp.stats.stream.check_loader_limits` (4 workers per CPU, 4096 items a batch).
    """
    if not images and not captions:
        raise ValueError("nothing to encode: no images and no captions")
    rank, world, acc_device = start_run(encoders, state, text=bool(captions), batch_size=batch_size,
                                        num_workers=num_workers, shard_size=shard_size,
                                        max_workers=max_workers, max_batch_size=max_batch_size)
    accs: dict[str, MomentAccumulator] = {}
    skipped: list[tuple[str, str]] = []
    encoded, resumed = {}, {}
    for modality, items in (("image", images), ("text", captions)):
        if not items:
            continue
        acc = {modality: MomentAccumulator(encoders.dim, device=acc_device)}
        mine = plan_chunks(len(items), shard_size, rank, world)
        done = store.completed(modality) & set(mine) if store is not None else set()
        units = _folder_chunks(modality, items, encoders, [k for k in mine if k not in done],
                               dim=encoders.dim, trim=acc_device.type == "cpu", world=world,
                               progress=progress and rank == 0, shard_size=shard_size,
                               batch_size=batch_size, num_workers=num_workers)
        skip, counts = sum_in_order(units, done, acc, store, on_shard=on_shard)
        accs.update(acc)
        skipped += skip
        encoded[modality], resumed[modality] = counts[modality]["encoded"], counts[modality]["resumed"]
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
