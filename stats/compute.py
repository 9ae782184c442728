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

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone

import torch

from vslerp import MomentAccumulator
from vslerp._version import __version__

from .data import Caption, ImageItem
from .embeddings import EmbeddingStore, Shard
from .encode import ClipEncoders
from .files import Statistics
from .stream import (
    EncodedChunk,
    check_loader_limits,
    check_sizes,
    encode_stream,
    encoded_chunks,
    modality_inputs,
    plan_chunks,
)

__all__ = ["ComputeResult", "EncodedChunk", "compute_statistics", "dataset_digest",
           "encode_stream", "plan_chunks", "reduced_result"]

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


# -- the sums ---------------------------------------------------------------------------------
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

    dataset, collate, encode, name_of, image_id_of, workers = modality_inputs(
        encoders, modality, items, num_workers)
    done_queue = sorted(done)
    desc = f"encoding {modality}s" + (f" (process 0 of {world})" if world > 1 else "")
    for chunk in encoded_chunks(modality, n_items, dataset, collate, encode, name_of, acc.dim,
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
    check_sizes(batch_size=batch_size, num_workers=num_workers, shard_size=shard_size)
    check_loader_limits(num_workers, batch_size, max_workers=max_workers, max_batch_size=max_batch_size)
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
