"""Streaming statistics of a sharded dataset (``stats compute --webdataset / --parquet``).

Input shards are the unit of work and of resuming. Process ``r`` of ``W`` (``accelerate
launch``, any number of nodes) takes shards r, r+W, …; the sums are all-reduced as for
folders (:func:`vslerp.stats.compute.reduced_result`). With an
:class:`~vslerp.stats.embeddings.EmbeddingStore`, input shard ``k`` becomes
``image-{k:06d}.safetensors`` and ``text-{k:06d}.safetensors`` (image ids ``k·2³² + j`` for
sample j, shared by its caption, so ``read_embeddings`` pairs them); a shard counts as done
once both exist, and a run started again sums the done shards from disk, in shard order, and
encodes the rest: the same tensors added in the same order as an uninterrupted run.

Within a process, DataLoader workers decode and preprocess: every worker reads each pending
shard in order (tar / parquet reads are cheap next to decoding) and decodes only the
batches ``g ≡ worker (mod workers)`` of the process's global batch sequence, so batches
arrive in shard order and never straddle two shards (a reorder buffer keyed by ``g`` keeps
that order whatever the DataLoader does). Memory: one shard's embeddings plus the batches in
flight — flat in the number and size of shards.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from vslerp import MomentAccumulator

from .compute import ComputeResult, reduced_result, start_run, sum_in_order
from .data import UnreadableImage, open_image
from .embeddings import EmbeddingStore, Shard
from .encode import ClipEncoders, first_line
from .shard_readers import Sample, ShardSource
from .stream import HeapTrimmer

__all__ = ["ID_STRIDE", "compute_shard_statistics", "completed_shards", "sample_image_id"]

ID_STRIDE = 2**32  # image id of sample j of shard k: k·ID_STRIDE + j


def sample_image_id(shard: int, position: int) -> int:
    """The int64 image id pairing sample ``position`` of shard ``shard`` with its caption."""
    return shard * ID_STRIDE + position


@dataclass
class _Batch:
    """Up to batch_size consecutive samples of one shard, decoded in a worker."""

    g: int  # position in the process's batch sequence (the order to consume)
    shard: int
    last: bool  # the shard's final batch (a shard yields ≥ 1 batch, maybe empty)
    image_rows: list[int]  # sample positions j of the decoded images
    pixels: torch.Tensor | None  # (n_img, 3, H, W) float32
    caption_rows: list[int]  # sample positions j of the captions
    captions: list[str]
    skipped: dict[str, list] = field(default_factory=dict)  # modality → [(name, reason)]
    samples: int = 0

    def pin_memory(self) -> _Batch:  # the DataLoader's pin_memory thread calls this
        if self.pixels is not None:
            self.pixels = self.pixels.pin_memory()
        return self


def _batches(samples, batch_size: int):
    """(batch of Samples, start, last, error or None): ≥ 1 per shard, an error ends it."""
    batch, start, error = [], 0, None
    iterator = iter(samples)
    try:
        ahead = next(iterator, None)
        while ahead is not None:
            batch.append(ahead)
            ahead = next(iterator, None)
            if len(batch) == batch_size and ahead is not None:
                yield batch, start, False, None
                start += len(batch)
                batch = []
    except Exception as err:  # noqa: BLE001 - a damaged shard ends it, counted and named
        error = err
    yield batch, start, True, error


class _ShardBatches(IterableDataset):
    """The pending shards' batches; a worker decodes its share ``g % workers``."""

    def __init__(self, source: ShardSource, shards: list[int], batch_size: int,
                 image_processor, captions: bool) -> None:
        from PIL import Image

        self.source, self.shards, self.batch_size = source, shards, batch_size
        self.processor, self.captions = image_processor, captions
        self.max_pixels = Image.MAX_IMAGE_PIXELS  # carried into spawned workers

    def __iter__(self):
        from PIL import Image

        Image.MAX_IMAGE_PIXELS = self.max_pixels
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        g = 0
        for k in self.shards:
            name = self.source.shards[k]
            for samples, start, last, error in _batches(self.source.samples(k), self.batch_size):
                if g % workers == worker:
                    batch = self._decode(g, k, name, samples, start, last)
                    if error is not None:
                        first = first_line(error).split(" @ ")[0]
                        batch.skipped["image"].append(
                            (name, f"unreadable {self.source.kind} shard after "
                             f"{start + len(samples)} samples ({type(error).__name__}: "
                             f"{first[:200]})"))
                    yield batch
                g += 1

    def _decode(self, g: int, k: int, name: str, samples: list[Sample], start: int,
                last: bool) -> _Batch:
        rows, pixels, caption_rows, captions = [], [], [], []
        skipped = {"image": [], "text": []}
        for j, sample in enumerate(samples, start):
            label = f"{name}/{sample.key}"
            for modality, reason in sample.problems:
                if modality == "image" or self.captions:
                    skipped[modality].append((label, reason))
            if self.captions and sample.caption is not None:
                caption_rows.append(j)
                captions.append(sample.caption)
            if sample.image is None:
                continue
            try:
                image = open_image(io.BytesIO(sample.image))
                pixels.append(self.processor(image, return_tensors="pt").pixel_values[0])
            except UnreadableImage as err:
                skipped["image"].append((label, err.reason))
                continue
            except Exception as err:  # noqa: BLE001 - an image the processor rejects is skipped
                skipped["image"].append((label, f"unreadable ({type(err).__name__}: {err})"))
                continue
            rows.append(j)
        stacked = torch.stack(pixels) if pixels else None  # (n_img, 3, H, W)
        return _Batch(g, k, last, rows, stacked, caption_rows, captions, skipped, len(samples))


def _in_order(loader):
    """Batches in ``g`` order (a reorder buffer; the DataLoader's order already is)."""
    waiting, expected = {}, 0
    for batch in loader:
        waiting[batch.g] = batch
        while expected in waiting:
            yield waiting.pop(expected)
            expected += 1
    if waiting:
        raise RuntimeError(f"batches {sorted(waiting)} arrived but batch {expected} never did")


def completed_shards(store: EmbeddingStore | None, captions: bool) -> set[int]:
    """Input shards whose embeddings shards are all on disk (image, and text if captions)."""
    if store is None:
        return set()
    done = store.completed("image")
    return done & store.completed("text") if captions else done


def _encoded_shards(encoders: ClipEncoders, loader, modalities: tuple[str, ...], bar, trimmer):
    """The pending input shards, encoded, as ``(k, {modality: Shard})`` in shard order."""
    parts, rows, skipped = ({m: [] for m in modalities} for _ in range(3))
    for batch in _in_order(loader):
        if batch.pixels is not None:
            parts["image"].append(encoders.encode_pixels(batch.pixels))  # (n, D) raw
            rows["image"].extend(batch.image_rows)
        if "text" in modalities and batch.captions:
            tokens = encoders.tokenize(batch.captions)
            parts["text"].append(encoders.encode_tokens(**tokens))  # (n, D) raw
            rows["text"].extend(batch.caption_rows)
        for m in modalities:
            skipped[m].extend(batch.skipped[m])
        if trimmer is not None:
            trimmer.maybe_trim()
        if not batch.last:
            continue
        k = batch.shard
        shards = {m: Shard(torch.cat(parts[m]) if parts[m] else torch.zeros(0, encoders.dim),
                           torch.tensor(rows[m], dtype=torch.int64),
                           torch.tensor([sample_image_id(k, j) for j in rows[m]], dtype=torch.int64),
                           skipped[m]) for m in modalities}
        parts, rows, skipped = ({m: [] for m in modalities} for _ in range(3))
        bar.update(1)
        yield k, shards


def compute_shard_statistics(encoders: ClipEncoders, source: ShardSource, *,
                             captions: bool = True, batch_size: int = 32, num_workers: int = 2,
                             store: EmbeddingStore | None = None, state=None,
                             progress: bool = True, metadata: dict | None = None,
                             on_shard: Callable[[str, int], None] | None = None,
                             max_workers: int | None = None, max_batch_size: int | None = None
                             ) -> ComputeResult:
    """Encode the images (and captions) of every shard of ``source`` and sum their raw
    embeddings per modality; as :func:`~vslerp.stats.compute.compute_statistics`, with
    shards as the unit of work and resume. ``on_shard("shard", k)`` is called after input
    shard k is summed (and written). Broken samples are skipped and named
    ``SHARD/KEY``; a damaged shard keeps its samples before the damage and is named.
    ``max_workers``, ``max_batch_size``: lift :func:`~vslerp.stats.stream.check_loader_limits`."""
    from tqdm.auto import tqdm

    rank, world, acc_device = start_run(encoders, state, text=captions, batch_size=batch_size,
                                        num_workers=num_workers, max_workers=max_workers,
                                        max_batch_size=max_batch_size)
    if len(source) == 0:
        raise ValueError("nothing to encode: no shards")
    mine = list(range(rank, len(source), world))
    done = completed_shards(store, captions) & set(mine)
    pending = [k for k in mine if k not in done]
    modalities = ("image", "text") if captions else ("image",)
    accs = {m: MomentAccumulator(encoders.dim, device=acc_device) for m in modalities}
    dataset = _ShardBatches(source, pending, batch_size, encoders.image_processor, captions)
    loader = DataLoader(dataset, batch_size=None, num_workers=num_workers if pending else 0,
                        pin_memory=encoders.device.type == "cuda")
    trimmer = HeapTrimmer() if acc_device.type == "cpu" else None
    desc = "encoding shards" + (f" (process 0 of {world})" if world > 1 else "")
    with tqdm(total=len(pending), unit="shard", desc=desc, dynamic_ncols=True,
              disable=not (progress and rank == 0) or not pending) as bar:
        skipped, counts = sum_in_order(_encoded_shards(encoders, loader, modalities, bar, trimmer),
                                       done, accs, store, label="shard", on_shard=on_shard)
    sizes = {m: c["encoded"] + c["resumed"] + c["skipped"] for m, c in counts.items()}
    if state is not None and world > 1:
        from accelerate.utils import gather_object

        sizes = {m: sum(gather_object([n])) for m, n in sizes.items()}
    meta = {**(metadata or {}), "shards": len(source), "source_kind": source.kind}
    return reduced_result(encoders, accs, skipped, sizes, state, meta,
                          {m: c["encoded"] for m, c in counts.items()},
                          {m: c["resumed"] for m, c in counts.items()})
