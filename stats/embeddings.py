"""Stored embeddings (``--save-embeddings DIR``): safetensors shards plus ``manifest.json``.

Each modality's item list is cut into fixed chunks of ``shard_size`` items; chunk ``k`` of
modality ``m`` becomes ``DIR/{m}-{k:06d}.safetensors`` holding ``embeddings`` (n, D) float32
raw, ``item_index`` (n,) int64 (position in the item list), ``image_id`` (n,) int64 (COCO
image id; −1 when unpaired) and, in its metadata, the items skipped in that chunk. A shard
file exists only once complete (temporary name + rename), so the set of shard files *is* the
progress record: a killed run resumes by summing the shards present and encoding the rest.
"""

from __future__ import annotations

import json
import os
import signal
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .jsonfile import read_json
from .outputs import atomic_write, remove_stale_temporaries
from .statistics_file import atomic_save_safetensors

__all__ = ["EmbeddingStore", "Embeddings", "read_embeddings"]

MANIFEST = "manifest.json"
INPUT_SHARD = "input shard"  # shard_size of a webdataset/parquet run: one shard per input shard
FORMAT = "vslerp-embeddings/1"
MODALITIES = ("image", "text")
# Temporary names of older versions (".{stem}-XXXXXXXX{suffix}", ".tmp"); today's are
# atomic_write's (".NAME.vslerp-tmp-XXXXXXXX.SUFFIX"), removed by remove_stale_temporaries.
_LEGACY_TEMP_PATTERNS = tuple(f".{m}-??????-*.safetensors" for m in MODALITIES) + (
    f".{Path(MANIFEST).stem}-*.json", ".*.tmp")
# Tests only: with this environment variable set to k, the process SIGKILLs itself right
# after writing its k-th shard — a real, deterministic kill for the resume test.
TEST_KILL_ENV = "VSLERP_TEST_KILL_AFTER_SHARDS"


def _test_kill_after_shards(written: int) -> None:
    if os.environ.get(TEST_KILL_ENV) == str(written):
        os.kill(os.getpid(), signal.SIGKILL)


def _write_json_atomic(path: Path, data: dict) -> None:
    text = json.dumps(data, indent=1, sort_keys=True, default=str)
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


@dataclass
class Shard:
    """One completed chunk read back from disk."""

    embeddings: torch.Tensor  # (n, D) float32 raw
    item_index: torch.Tensor  # (n,) int64
    image_id: torch.Tensor  # (n,) int64
    skipped: list = field(default_factory=list)  # [(name, reason)]


class EmbeddingStore:
    """Reads and writes the shards and manifest of one ``--save-embeddings`` folder.

    ``plan`` describes the run: ``{"metadata": {...}, "shard_size": S, "modalities":
    {m: {"items": N, "digest": sha256 of the item names}}}``. Opening a folder whose
    manifest has a different plan (another dataset, model or shard size) raises
    ``ValueError`` unless ``overwrite`` (which deletes its shards).
    """

    def __init__(self, directory: str | Path, plan: dict) -> None:
        self.dir = Path(directory)
        self.plan = plan
        self.shards_written = 0  # by this process, this run

    # -- setup (rank 0 only) ------------------------------------------------------------
    def _key(self, plan: dict) -> dict:
        meta = plan.get("metadata", {})
        return {"shard_size": plan.get("shard_size"), "modalities": plan.get("modalities"),
                "encoder_fingerprint": meta.get("encoder_fingerprint"), "dim": meta.get("dim")}

    def check(self, overwrite: bool = False) -> None:
        """Raise ``ValueError`` if the folder holds another run (unless ``overwrite``)."""
        if self.dir.exists() and not self.dir.is_dir():
            raise ValueError(f"--save-embeddings {self.dir} exists and is not a folder")
        manifest = self.dir / MANIFEST
        if not manifest.exists():
            stray = list(self.dir.glob("*-??????.safetensors")) if self.dir.is_dir() else []
            if stray and not overwrite:
                raise ValueError(f"--save-embeddings {self.dir} holds shards but no manifest; "
                                 "pass --overwrite to start again")
            return
        old = _manifest_or_empty(manifest)
        if self._key(old) != self._key(self.plan) and not overwrite:
            raise ValueError(f"--save-embeddings {self.dir} holds embeddings of another run "
                             "(different dataset, model or shard size); pass --overwrite to "
                             "replace them or choose another folder")

    def prepare(self, overwrite: bool = False) -> None:
        """Create the folder and write the manifest (incomplete); clear it on ``overwrite``."""
        self.check(overwrite)
        self.dir.mkdir(parents=True, exist_ok=True)
        manifest = self.dir / MANIFEST
        if overwrite and manifest.exists():
            old = _manifest_or_empty(manifest)
            if self._key(old) != self._key(self.plan):
                for path in self.dir.glob("*-??????.safetensors"):
                    path.unlink()
        elif overwrite:
            for path in self.dir.glob("*-??????.safetensors"):
                path.unlink()
        remove_stale_temporaries(self.dir, folder=True)  # leftovers of a run killed mid-write
        for pattern in _LEGACY_TEMP_PATTERNS:
            for tmp in self.dir.glob(pattern):
                tmp.unlink(missing_ok=True)
        self.write_manifest(complete=False)

    def write_manifest(self, complete: bool) -> None:
        shards = {m: sorted(p.name for p in self.dir.glob(f"{m}-??????.safetensors"))
                  for m in MODALITIES}
        _write_json_atomic(self.dir / MANIFEST, {"format": FORMAT, **self.plan,
                                                 "complete": complete, "shards": shards})

    # -- shards -------------------------------------------------------------------------
    def shard_path(self, modality: str, index: int) -> Path:
        return self.dir / f"{modality}-{index:06d}.safetensors"

    def completed(self, modality: str) -> set[int]:
        return {int(p.stem.split("-")[1]) for p in self.dir.glob(f"{modality}-??????.safetensors")}

    def write_shard(self, modality: str, index: int, shard: Shard) -> None:
        meta = {"vslerp": json.dumps({"modality": modality, "shard": index,
                                      "skipped": shard.skipped})}
        atomic_save_safetensors({"embeddings": shard.embeddings.float(),
                                 "item_index": shard.item_index.long(),
                                 "image_id": shard.image_id.long()},
                                self.shard_path(modality, index), metadata=meta)
        self.shards_written += 1
        _test_kill_after_shards(self.shards_written)

    def read_shard(self, modality: str, index: int) -> Shard:
        """Read chunk ``index`` back (to resume), checked against the plan's item count."""
        path = self.shard_path(modality, index)
        shard = _read_shard(path)
        if self.plan.get("shard_size") == INPUT_SHARD:  # one shard per input shard: no fixed size
            shard_size, n_items = None, 0
        else:
            shard_size = int(self.plan["shard_size"])
            n_items = int(self.plan["modalities"][modality]["items"])
        problem = _shard_problem(shard, index, shard_size, n_items,
                                 self.plan.get("metadata", {}).get("dim"))
        if problem:
            raise ValueError(f"embedding shard {path} {problem}; delete it and rerun "
                             "`vslerp stats compute` to re-encode it")
        return shard


def _manifest_or_empty(path: Path) -> dict:
    """The manifest as a dict, or {} when it is unreadable or not a JSON object."""
    try:
        data = read_json(path, "embeddings manifest")
    except (OSError, ValueError):  # not JSON, not UTF-8, nested too deeply, not a regular file
        return {}
    return data if isinstance(data, dict) else {}


def _chunk_range(index: int, shard_size: int, n_items: int) -> range:
    return range(index * shard_size, min((index + 1) * shard_size, n_items))


def _shard_problem(shard: Shard, index: int, shard_size: int | None, n_items: int,
                   dim: int | None) -> str | None:
    """What is wrong with chunk ``index`` read back (None: it matches the plan). With
    ``shard_size`` None (one shard per input shard) its item count is not known ahead."""
    emb, rows = shard.embeddings, shard.item_index
    if emb.ndim != 2 or (dim is not None and emb.shape[1] != dim) or not emb.is_floating_point():
        return f"has embeddings of shape {tuple(emb.shape)} {emb.dtype}, expected (n, {dim}) float"
    n = emb.shape[0]
    if rows.shape != (n,) or shard.image_id.shape != (n,):
        return (f"has {n} embeddings but item_index {tuple(rows.shape)} and image_id "
                f"{tuple(shard.image_id.shape)}")
    if shard_size is None:
        if n and int(torch.unique(rows).numel()) != n:
            return f"repeats item indices ({n - int(torch.unique(rows).numel())} duplicates)"
        if not bool(torch.isfinite(emb).all()):
            return f"holds {int((~torch.isfinite(emb)).sum())} non-finite values (NaN or Inf)"
        return None
    expected = _chunk_range(index, shard_size, n_items)
    if n + len(shard.skipped) != len(expected):
        return (f"holds {n} embeddings + {len(shard.skipped)} skipped items, but chunk {index} "
                f"has {len(expected)} items (short or damaged)")
    if n and (int(rows.min()) < expected.start or int(rows.max()) >= expected.stop):
        return f"has item indices outside chunk {index} ({expected.start}…{expected.stop - 1})"
    if n and int(torch.unique(rows).numel()) != n:
        return f"repeats item indices ({n - int(torch.unique(rows).numel())} duplicates)"
    if not bool(torch.isfinite(emb).all()):
        return f"holds {int((~torch.isfinite(emb)).sum())} non-finite values (NaN or Inf)"
    return None


def _read_shard(path: Path) -> Shard:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = json.loads((handle.metadata() or {}).get("vslerp", "{}"))
            tensors = {k: handle.get_tensor(k) for k in handle.keys()}
        return Shard(tensors["embeddings"], tensors["item_index"], tensors["image_id"],
                     [tuple(s) for s in meta.get("skipped", [])])
    except Exception as err:  # noqa: BLE001 - any damage to a shard reads as one message
        raise ValueError(f"embedding shard {path} is damaged ({err}); delete it and rerun "
                         "`vslerp stats compute` to re-encode it") from None


@dataclass
class Embeddings:
    """Raw embeddings stored by ``stats compute --save-embeddings``.

    ``image`` (Ni, D) float32, ``text`` (Nt, D) float32 (either may be (0, D)), ``pairs``
    (P, 2) int64 rows ``(image_index, text_index)`` of matching image–caption pairs,
    ``image_ids`` (Ni,) / ``text_image_ids`` (Nt,) int64 COCO image ids, ``metadata`` dict.
    """

    image: torch.Tensor  # (Ni, D) float32 raw
    text: torch.Tensor  # (Nt, D) float32 raw
    pairs: torch.Tensor  # (P, 2) int64: (row in image, row in text)
    image_ids: torch.Tensor  # (Ni,) int64
    text_image_ids: torch.Tensor  # (Nt,) int64, −1 unpaired
    metadata: dict  # model_id, encoder_fingerprint, dim, dataset, ...


def _pairs(image_ids: torch.Tensor, text_image_ids: torch.Tensor) -> torch.Tensor:
    """(P, 2) rows (image_index, text_index) where a caption's image id matches an image's."""
    if image_ids.numel() == 0 or text_image_ids.numel() == 0:
        return torch.zeros(0, 2, dtype=torch.int64)
    order = torch.argsort(image_ids)
    sorted_ids = image_ids[order]
    pos = torch.searchsorted(sorted_ids, text_image_ids).clamp_max(len(sorted_ids) - 1)
    hit = (sorted_ids[pos] == text_image_ids) & (text_image_ids >= 0)
    text_rows = torch.nonzero(hit).flatten()
    return torch.stack([order[pos[text_rows]], text_rows], dim=1)


def _plan_of(manifest, path: Path) -> tuple[int, int | None, dict[str, int]]:
    """(dim, shard_size, items per modality) of a manifest, or ``ValueError`` naming ``path``.

    For a run over input shards (``shard_size`` ``"input shard"``: webdataset, parquet) the
    shard size is None and the counts are shards per modality, not items."""
    if not isinstance(manifest, dict):
        raise ValueError(f"{path} is not an embeddings manifest (not a JSON object)")

    def whole(value, what: str, low: int) -> int:
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"{path}: {what} must be an integer ≥ {low}, got {value!r}")
        return value

    meta = manifest.get("metadata")
    dim = whole(meta.get("dim") if isinstance(meta, dict) else None, "metadata.dim", 1)
    by_input = manifest.get("shard_size") == INPUT_SHARD
    shard_size = None if by_input else whole(manifest.get("shard_size"), "shard_size", 1)
    mods = manifest.get("modalities")
    if not isinstance(mods, dict):
        raise ValueError(f"{path} has no per-modality item counts ('modalities')")
    key = "shards" if by_input else "items"
    items = {}
    for modality in MODALITIES:
        entry = mods.get(modality, {key: 0})
        items[modality] = whole(entry.get(key) if isinstance(entry, dict) else None,
                                f"modalities.{modality}.{key}", 0)
    return dim, shard_size, items


def read_embeddings(directory: str | Path) -> Embeddings:
    """Read every shard of a finished ``--save-embeddings`` folder, in item order.

    Strict: the manifest must mark the run complete, and the shards on disk must be exactly
    the chunks its item counts call for, each holding its chunk's items (embedded or
    skipped); a missing, short, extra or damaged shard raises ``ValueError`` naming it. (A
    run in progress resumes through :class:`EmbeddingStore`, not through this reader.)
    """
    directory = Path(directory).expanduser()
    if directory.exists() and not directory.is_dir():
        raise NotADirectoryError(f"embeddings folder {directory} is a file, not a folder "
                                 "(give the folder written by `stats compute --save-embeddings`)")
    if not directory.exists():
        raise FileNotFoundError(f"embeddings folder not found: {directory}")
    manifest_path = directory / MANIFEST
    if manifest_path.is_dir():
        raise IsADirectoryError(f"embeddings manifest {manifest_path} is a directory, not a file")
    if not manifest_path.is_file():
        raise FileNotFoundError(f"no embeddings manifest in {directory} (expected {MANIFEST} "
                                "written by `vslerp stats compute --save-embeddings`)")
    manifest = read_json(manifest_path, "embeddings manifest")  # one line if not JSON or too deep
    dim, shard_size, items = _plan_of(manifest, manifest_path)
    if manifest.get("complete") is not True:
        raise ValueError(f"embeddings in {directory} are incomplete (the run was interrupted): "
                         "rerun the same `vslerp stats compute` command to finish them")
    problems: list[str] = []
    out = {}
    for modality in MODALITIES:
        n_chunks = items[modality] if shard_size is None else -(-items[modality] // shard_size)
        expected = [f"{modality}-{k:06d}.safetensors" for k in range(n_chunks)]
        present = {p.name for p in directory.glob(f"{modality}-??????.safetensors")}
        missing = [n for n in expected if n not in present]
        extra = sorted(present - set(expected))
        if missing:
            problems.append(f"{len(missing)} of {n_chunks} {modality} shard(s) missing: "
                            + ", ".join(missing[:10]) + (" …" if len(missing) > 10 else ""))
        if extra:
            problems.append(f"{modality} shard(s) beyond the manifest's {items[modality]} "
                            f"{'shards' if shard_size is None else 'items'}: "
                            + ", ".join(extra[:10]))
        shards = []
        for k, name in enumerate(expected):
            if name not in present:
                continue
            shard = _read_shard(directory / name)
            problem = _shard_problem(shard, k, shard_size, items[modality], dim)
            if problem:
                problems.append(f"{name} {problem}")
            shards.append(shard)
        if problems:
            continue
        emb = [s.embeddings.float() for s in shards if s.embeddings.shape[0]]
        ids = [s.image_id for s in shards if s.image_id.shape[0]]
        out[modality] = (torch.cat(emb) if emb else torch.zeros(0, dim),
                         torch.cat(ids) if ids else torch.zeros(0, dtype=torch.int64))
    if problems:
        raise ValueError(f"embeddings in {directory} do not match their manifest: "
                         + "; ".join(problems)
                         + " — rerun the `vslerp stats compute` command that wrote them, "
                         "with --overwrite if its --out exists (it re-encodes what is missing)")
    (image, image_ids), (text, text_ids) = out["image"], out["text"]
    return Embeddings(image, text, _pairs(image_ids, text_ids), image_ids, text_ids,
                      dict(manifest["metadata"]))
