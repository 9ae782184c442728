"""Sharded web-scale datasets: webdataset tar shards and parquet files of image bytes + captions.

A *shard* (one ``.tar`` or one ``.parquet`` file) is the unit of work and of resuming for
``stats compute --webdataset`` / ``--parquet``. A source lists its shards up front (paths
checked, parquet schemas read from the footers: cheap, before any model loads) and streams
one shard's samples at a time as :class:`Sample` s, in file order.

- :class:`WebDatasetSource`: the layout ``img2dataset`` writes — ``KEY.jpg``/``.png``/
  ``.webp`` plus ``KEY.txt`` (or ``KEY.json`` with a ``"caption"``) per sample — read with
  the ``webdataset`` package (``tarfile_samples``; brace patterns by its ``expand_urls``).
- :class:`ParquetSource`: a binary image column (or the Hugging Face ``datasets`` Image
  layout, a struct ``{bytes, path}``) and a text caption column, read with ``pyarrow`` in
  record batches (memory flat in the file size). Columns are auto-detected or named.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .jsonfile import parse_json
from .outputs import note_input

__all__ = ["ParquetSource", "Sample", "ShardSource", "WebDatasetSource", "expand_shards"]

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")  # webdataset extensions of an image, in preference
IMAGE_COLUMNS = ("image", "jpg", "png", "webp", "img", "image_bytes", "bytes")
CAPTION_COLUMNS = ("caption", "text", "txt", "prompt", "sentence", "title")
NO_CAPTION = "no caption (neither a txt file nor a json 'caption')"


@dataclass
class Sample:
    """One sample of a shard (an image–caption pair when both are there)."""

    key: str  # the sample's key in its shard (webdataset ``__key__``, parquet row number)
    image: bytes | None  # encoded image file bytes, None when missing
    caption: str | None  # the caption, None when missing
    problems: list[tuple[str, str]] = field(default_factory=list)  # (modality, reason)


class ShardSource:
    """Shards of one dataset: ``shards`` (names as given), ``paths``, :meth:`samples`."""

    kind = "shards"
    option = "--shards"

    def __init__(self, paths: Sequence[Path], names: Sequence[str]) -> None:
        self.paths, self.shards = list(paths), list(names)

    def __len__(self) -> int:
        return len(self.shards)

    def digest(self) -> str:
        """sha256 of the shard names and sizes in order: a resumed run must see the same."""
        digest = hashlib.sha256(self.kind.encode())
        for name, path in zip(self.shards, self.paths, strict=True):
            digest.update(f"\0{name}\0{path.stat().st_size}".encode("utf-8", "surrogatepass"))
        return digest.hexdigest()

    def samples(self, index: int) -> Iterator[Sample]:  # pragma: no cover - abstract
        raise NotImplementedError


def expand_shards(patterns: Sequence[str], option: str) -> list[str]:
    """Brace patterns (``shards/{00000..00009}.tar``) → shard paths, each checked to exist."""
    from webdataset.shardlists import expand_urls

    names: list[str] = []
    for pattern in patterns:
        if "://" in pattern or pattern.startswith("pipe:"):
            raise ValueError(f"{option} {pattern}: only local files are supported "
                             "(copy or mount the shards first)")
        expanded = expand_urls(str(pattern))
        if not expanded:
            raise ValueError(f"{option} {pattern} names no files")
        for name in expanded:
            path = Path(name).expanduser()
            if not path.is_file():
                extra = f" (from the pattern {pattern})" if name != pattern else ""
                raise FileNotFoundError(f"{option}: shard not found: {name}{extra}")
            names.append(name)
    seen: set[str] = set()
    for name in names:
        resolved = str(Path(name).expanduser().resolve())
        if resolved in seen:
            raise ValueError(f"{option}: shard {name} is listed twice")
        seen.add(resolved)
    return names


# -- webdataset ------------------------------------------------------------------------------
def _text(data: bytes) -> str | None:
    try:
        return data.decode("utf-8").strip()
    except UnicodeDecodeError:
        return None


def _json(data: bytes) -> dict | None:
    try:
        meta = parse_json(data, "a sample's .json")
    except ValueError:  # not JSON, not UTF-8, nested too deeply: no caption
        return None
    return meta if isinstance(meta, dict) else None


class WebDatasetSource(ShardSource):
    """Tar shards of the ``img2dataset`` webdataset layout; brace patterns expanded."""

    kind = "webdataset"
    option = "--webdataset"

    def __init__(self, patterns: Sequence[str] | str) -> None:
        patterns = [patterns] if isinstance(patterns, str) else list(patterns)
        names = expand_shards(patterns, self.option)
        paths = [Path(n).expanduser() for n in names]
        for path in paths:
            note_input(path, "webdataset shard")
        super().__init__(paths, names)

    def samples(self, index: int) -> Iterator[Sample]:
        """The samples of shard ``index`` in tar order. A damaged tar raises (tarfile or
        webdataset's ValueError) after the samples before the damage were yielded."""
        from webdataset.tariterators import tarfile_samples

        for raw in tarfile_samples([{"url": str(self.paths[index])}]):
            key = raw["__key__"]
            problems = []
            image = next((raw[k] for k in IMAGE_KEYS if k in raw), None)
            if image is None:
                problems.append(("image", "no image (jpg, png or webp file)"))
            caption = None
            if "txt" in raw:
                caption = _text(raw["txt"])
                if caption is None:
                    problems.append(("text", "caption (txt) is not UTF-8 text"))
            elif "json" in raw:
                meta = _json(raw["json"])
                if meta is None:
                    problems.append(("text", "json is not a valid JSON object"))
                elif isinstance(meta.get("caption"), str):
                    caption = meta["caption"].strip()
                else:
                    problems.append(("text", NO_CAPTION))
            else:
                problems.append(("text", NO_CAPTION))
            yield Sample(key, image, caption, problems)


# -- parquet ---------------------------------------------------------------------------------
def _image_like(kind) -> bool:
    import pyarrow as pa

    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
        return True
    return pa.types.is_struct(kind) and kind.get_field_index("bytes") >= 0 and _image_like(
        kind.field("bytes").type)


def _text_like(kind) -> bool:
    import pyarrow as pa

    return pa.types.is_string(kind) or pa.types.is_large_string(kind)


def _pick(schema, wanted: str | None, like, preferred: Sequence[str], what: str,
          option: str, path: str) -> str:
    columns = {f.name: f.type for f in schema}
    listing = ", ".join(f"{n} ({t})" for n, t in columns.items()) or "none"
    if wanted is not None:
        if wanted not in columns:
            raise ValueError(f"parquet file {path} has no column {wanted!r} ({option}); its "
                             f"columns: {listing}")
        if not like(columns[wanted]):
            raise ValueError(f"column {wanted!r} of parquet file {path} is {columns[wanted]}, "
                             f"not {what}")
        return wanted
    fits = [n for n, t in columns.items() if like(t)]
    named = [n for n in preferred if n in fits]
    if named:
        return named[0]
    if len(fits) == 1:
        return fits[0]
    noun, kind = what.split(" ", 1)
    found = f"several {noun} columns {kind}: {', '.join(fits)}" if fits else (
        f"no {noun} column {kind}")
    raise ValueError(f"parquet file {path} has {found}; name one with {option} "
                     f"(columns: {listing})")


class ParquetSource(ShardSource):
    """Parquet files with image bytes and captions, one file a shard (row groups streamed)."""

    kind = "parquet"
    option = "--parquet"

    def __init__(self, files: Sequence[str] | str, *, image_column: str | None = None,
                 caption_column: str | None = None, captions: bool = True) -> None:
        import pyarrow.parquet as pq

        files = [files] if isinstance(files, str) else list(files)
        names = expand_shards(files, self.option)
        paths = [Path(n).expanduser() for n in names]
        self.columns: tuple[str, str | None] | None = None
        for name, path in zip(names, paths, strict=True):
            try:
                schema = pq.read_schema(path)
            except Exception as err:  # noqa: BLE001 - ArrowInvalid, OSError: one line
                first = (str(err).strip().splitlines() or [type(err).__name__])[0]
                raise ValueError(f"{self.option} {name} is not a readable parquet file "
                                 f"({first})") from None
            image = _pick(schema, image_column, _image_like, IMAGE_COLUMNS,
                          "image (binary or {bytes, path} struct)", "--image-column", name)
            caption = (_pick(schema, caption_column, _text_like, CAPTION_COLUMNS,
                             "caption (text)", "--caption-column", name) if captions else None)
            if self.columns is not None and self.columns != (image, caption):
                raise ValueError(f"parquet file {name} has image/caption columns {image!r}/"
                                 f"{caption!r} but {names[0]} has {self.columns[0]!r}/"
                                 f"{self.columns[1]!r}; name them with --image-column / "
                                 "--caption-column")
            self.columns = (image, caption)
            note_input(path, "parquet file")
        super().__init__(paths, names)

    def samples(self, index: int) -> Iterator[Sample]:
        import pyarrow.parquet as pq

        image_col, caption_col = self.columns
        wanted = [image_col] + ([caption_col] if caption_col else [])
        row = 0
        with pq.ParquetFile(self.paths[index]) as handle:
            for batch in handle.iter_batches(batch_size=256, columns=wanted):
                images = batch.column(0).to_pylist()
                texts = batch.column(1).to_pylist() if caption_col else [None] * len(images)
                for value, text in zip(images, texts, strict=True):
                    problems = []
                    if isinstance(value, dict):  # datasets' Image feature: {bytes, path}
                        value = value.get("bytes")
                    if value is None:
                        problems.append(("image", f"no image bytes in column {image_col!r}"))
                    if caption_col and text is None:
                        problems.append(("text", f"no caption in column {caption_col!r}"))
                    elif text is not None:
                        text = text.strip()
                    yield Sample(str(row), value, text, problems)
                    row += 1

