"""Dataset readers: MS-COCO caption files, plain image folders, text files of captions, and
:func:`open_image`, the one answer to "is this a readable image" (datasets, the pipeline's
image paths, the editor's uploads).

Images are opened defensively: EXIF orientation applied, CMYK / 16-bit / 32-bit / float /
grayscale / palette / RGBA converted to RGB (alpha composited on white), and truncated files,
non-images and decompression bombs refused with a short reason.
"""

from __future__ import annotations

import json
import os
import re
import stat
import struct
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from vslerp.defaults import IMAGE_SUFFIXES

from .jsonfile import JSONStream, check_regular_file
from .outputs import note_input

__all__ = [
    "IMAGE_EXTENSIONS",
    "Caption",
    "ImageItem",
    "UnreadableImage",
    "iter_images",
    "list_images",
    "open_image",
    "read_captions",
    "read_coco",
]

IMAGE_EXTENSIONS = IMAGE_SUFFIXES  # the name this module exported before vslerp.defaults


@dataclass(frozen=True)
class ImageItem:
    """One image of a dataset."""

    name: str  # path relative to the image folder (what is reported when skipped)
    path: Path  # where to read it
    image_id: int  # COCO image id, or -1 for a plain folder (no caption pairing)


@dataclass(frozen=True)
class Caption:
    """One caption of a dataset."""

    text: str  # the caption
    image_id: int  # COCO image id it describes, or -1 when unpaired (text files)
    caption_id: int  # COCO annotation id, or the 0-based line number of a text file


class UnreadableImage(ValueError):
    """An image that cannot be used, from :func:`open_image`.

    ``reason``: a few words — "missing", "not an image", "truncated", "decompression bomb (…)",
    "unreadable (…)" — what ``stats compute`` records per skipped item; ``path``: the file
    (None for a file object without a name or a PIL image); ``str()``: one line naming both,
    "image cat.png cannot be read: truncated" (the reason alone without a path).
    """

    def __init__(self, reason: str, path: str | Path | None = None) -> None:
        super().__init__(reason, path)  # both in args: the exception pickles whole
        self.reason = reason
        self.path = path

    def __str__(self) -> str:
        return self.reason if self.path is None else f"image {self.path} cannot be read: {self.reason}"


# -- captions ---------------------------------------------------------------------------
def _annotation(ann, i: int, where: str) -> Caption:
    if (not isinstance(ann, dict) or not isinstance(ann.get("caption"), str)
            or not _is_int(ann.get("image_id")) or not _is_int(ann.get("id", i))):
        raise ValueError(f"{where}: annotations[{i}] needs an int 'image_id' and a str "
                         f"'caption' (and an int 'id', if any), got {_shown(ann)}")
    return Caption(ann["caption"].strip(), ann["image_id"], ann.get("id", i))


def _image_entry(img, i: int, where: str) -> tuple[int, str]:
    if (not isinstance(img, dict) or not _is_int(img.get("id"))
            or not isinstance(img.get("file_name"), str) or "\0" in img["file_name"]):
        raise ValueError(f"{where}: images[{i}] needs an int 'id' and a str 'file_name', "
                         f"got {_shown(img)}")
    return img["id"], img["file_name"]


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _shown(value) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 80 else f"{text[:79]}…"


def read_coco(path: str | Path, *, limit: int | None = None,
              paired: bool = True) -> tuple[list[tuple[int, str]], list[Caption]]:
    """Read an MS-COCO captions json: ([(image_id, file_name)], [Caption]) in file order.

    Streamed (:class:`vslerp.stats.jsonfile.JSONStream`): memory holds what is kept, not the
    file. ``limit``: keep the first ``limit`` images and, ``paired``, only their captions (all
    annotations are read; those of other images dropped as they come, unless the file lists
    its annotations before its images), else the first ``limit`` captions (reading stops
    there). ``ValueError`` naming the file (and line) if it is not COCO-shaped JSON."""
    path = check_regular_file(path, "captions file")
    note_input(path, "captions file")
    where = f"captions file {path}"
    images: list[tuple[int, str]] = []
    captions: list[Caption] = []
    found = False  # an "annotations" list
    keep: set[int] | None = None  # with a limit, once the images are read: their ids
    try:
        with open(path, encoding="utf-8", newline="") as handle:
            stream = JSONStream(handle, where)
            if stream.peek() != "{":
                raise ValueError(f"{where} is not in COCO format: it needs an 'annotations' list "
                                 "of {image_id, caption}")
            for key in stream.members():
                if key == "annotations" and stream.peek() == "[":
                    found = True
                    for i, ann in enumerate(stream.elements(check=False)):  # not kept: no walk
                        caption = _annotation(ann, i, where)
                        if keep is None or caption.image_id in keep:
                            captions.append(caption)
                        if limit is not None and not paired and len(captions) >= limit:
                            return images, captions  # the first `limit`: read no further
                elif key == "images" and stream.peek() == "[":
                    for i, img in enumerate(stream.elements(check=False)):
                        if limit is None or len(images) < limit:
                            images.append(_image_entry(img, i, where))
                    if limit is not None and paired:
                        keep = {image_id for image_id, _ in images}
                        captions = [c for c in captions if c.image_id in keep]
                else:
                    stream.value(depth=2)
    except UnicodeDecodeError:
        raise ValueError(f"{where} is not UTF-8 text") from None
    if not found:
        raise ValueError(f"{where} is not in COCO format: it needs an 'annotations' list of "
                         "{image_id, caption}")
    return images, captions


def read_captions(path: str | Path, *, limit: int | None = None) -> list[Caption]:
    """Captions from a COCO json (``.json``) or a text file (one caption a line, blanks
    skipped); ``limit``: the first ``limit`` only, and the file is read no further."""
    path = check_regular_file(path, "captions file")
    if path.suffix.lower() == ".json":
        return read_coco(path, limit=limit, paired=False)[1]
    note_input(path, "captions file")
    captions = []
    with open(path, "rb") as handle:  # line by line, decoded each: the rest is never read
        for i, raw in enumerate(handle):
            if limit is not None and len(captions) >= limit:
                break
            try:
                line = raw.decode("utf-8").strip()
            except UnicodeDecodeError:
                raise ValueError(f"captions file {path} is not UTF-8 text (line {i + 1})") from None
            if line:
                captions.append(Caption(line, -1, i))
    return captions


# -- images -----------------------------------------------------------------------------
def list_images(path: str | Path, coco: str | Path | None = None, *,
                listed: list[tuple[int, str]] | None = None) -> list[ImageItem]:
    """The images of a dataset: those a COCO captions json lists (``coco``; or ``listed``, its
    ``(image_id, file_name)`` pairs read already by :func:`read_coco`), else every file with
    an image extension under the folder ``path``, sorted (ids = positions)."""
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    if listed is None and coco is not None and Path(coco).suffix.lower() == ".json":
        listed, _ = read_coco(coco)
    if listed:
            return [ImageItem(name, root / name, image_id) for image_id, name in listed]
    files = sorted(p for p in root.rglob("*")
                   if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(root).parts))
    return [ImageItem(p.relative_to(root).as_posix(), p, -1) for p in files]


def _to_8bit(image):
    """A single-channel 16/32-bit integer or float image → 8-bit grayscale ("L").

    ``convert("L")`` would clip everything above 255 to white and float values in [0, 1] to
    black. Integers: 16-bit modes /65535; values within 0..255 as they are, within
    0..65535 /65535. Floats within [0, 1] ×255. Anything else is stretched min–max to
    0..255 (non-finite pixels count as the minimum).
    """
    import numpy as np
    from PIL import Image

    arr = np.asarray(image, dtype=np.float64)
    finite = np.isfinite(arr)
    if not finite.any():
        return Image.new("L", image.size, 0)
    lo, hi = float(arr[finite].min()), float(arr[finite].max())
    arr = np.where(finite, arr, lo)
    if image.mode.startswith("I;16"):
        scaled = arr / 65535.0 * 255.0
    elif image.mode == "F" and lo >= 0.0 and hi <= 1.0:
        scaled = arr * 255.0
    elif image.mode != "F" and lo >= 0.0 and hi <= 255.0:
        scaled = arr
    elif image.mode != "F" and lo >= 0.0 and hi <= 65535.0:
        scaled = arr / 65535.0 * 255.0
    else:
        scaled = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
    return Image.fromarray(np.clip(scaled + 0.5, 0, 255).astype(np.uint8), "L")


def _to_rgb(image):
    from PIL import Image

    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        image = _to_8bit(image)
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB") if image.mode != "RGB" else image


def _name_of(source) -> str | Path | None:
    """What an error calls ``source``: the path, a named file object's name, else None."""
    if isinstance(source, (str, Path)):
        return source
    name = getattr(source, "name", None)
    return name if isinstance(name, (str, Path)) else None


def _check_pixels(size: tuple[int, int], limit: int | None, what: str) -> None:
    width, height = size
    if width < 1 or height < 1:
        raise UnreadableImage(f"empty ({width}×{height} pixels)")
    if limit is not None and width * height > limit:
        raise UnreadableImage(f"{what} ({width}×{height} = {width * height} pixels, limit {limit})")


_ARRAY_CHANNELS = (1, 2, 3, 4)  # of an (H, W, C) image array: gray, gray + alpha, RGB, RGBA


def _from_array(array, limit: int | None):
    """A numpy image array → a PIL image of the mode its channels say (before :func:`_to_rgb`).

    (H, W) gray or (H, W, C) with C = 1, 2 (gray + alpha), 3 (RGB) or 4 (RGBA); uint8 as it is,
    uint16 as 16-bit (/65535, the rule of 16-bit files), bool as black/white, other integers
    within 0..255, floats within [0, 1] (×255). Pixels are taken as upright (no EXIF)."""
    import numpy as np
    from PIL import Image

    shape = tuple(array.shape)
    if array.ndim not in (2, 3) or (array.ndim == 3 and shape[2] not in _ARRAY_CHANNELS):
        raise UnreadableImage(f"an image array must have shape (H, W) or (H, W, C) with C = 1, 2, 3 "
                              f"or 4, got {shape}")
    _check_pixels((shape[1], shape[0]), limit, "too large")
    if array.dtype == np.uint16 and array.ndim == 2:
        return Image.fromarray(np.ascontiguousarray(array))  # mode I;16: as a 16-bit gray file
    if array.dtype == np.bool_:
        pixels = array.astype(np.uint8) * 255
    elif array.dtype == np.uint8:
        pixels = array
    elif array.dtype == np.uint16:
        pixels = np.clip(array / 65535.0 * 255.0 + 0.5, 0, 255).astype(np.uint8)
    elif np.issubdtype(array.dtype, np.floating):
        values = array.astype(np.float64)
        if not np.isfinite(values).all():
            raise UnreadableImage("a float image array must hold finite values in [0, 1], got NaN or Inf")
        if values.min() < 0.0 or values.max() > 1.0:
            raise UnreadableImage(f"a float image array must hold values in [0, 1], got "
                                  f"{values.min():g}..{values.max():g}")
        pixels = np.clip(values * 255.0 + 0.5, 0, 255).astype(np.uint8)
    elif np.issubdtype(array.dtype, np.integer):
        if array.min() < 0 or array.max() > 255:
            raise UnreadableImage(f"an integer image array other than uint16 must hold values in "
                                  f"0..255, got {array.min()}..{array.max()} ({array.dtype})")
        pixels = array.astype(np.uint8)
    else:
        raise UnreadableImage(f"an image array must be of integers, floats or bools, got {array.dtype}")
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[:, :, 0]
    return Image.fromarray(np.ascontiguousarray(pixels))  # L, LA, RGB or RGBA by the channels


def _refuse_special(path) -> None:
    """A path that is a FIFO, device or socket: refused by ``stat`` before ``open`` blocks on it."""
    if isinstance(path, (str, os.PathLike)):
        mode = os.stat(path).st_mode  # FileNotFoundError: "missing"
        if not stat.S_ISREG(mode) and not stat.S_ISDIR(mode):
            raise UnreadableImage("not a regular file (a FIFO, device or socket)")


def open_image(path, *, max_pixels: int | None = None):
    """Open an image as an RGB ``PIL.Image``, upright per its EXIF orientation.

    ``path``: a file path, a binary file object (e.g. ``io.BytesIO`` of a shard's bytes), an
    already decoded ``PIL.Image`` (then only the pixel limit, EXIF orientation and the mode
    conversion apply, as diffusers' ``load_image`` does) or a numpy array — (H, W) gray or
    (H, W, C) with 1–4 channels; uint8, uint16 (16-bit), bool, or floats in [0, 1]; taken as
    upright. The image normalisation of every entry (the pipelines, statistics, the CLI): a file,
    the PIL image of that file and its pixels as an array give the same RGB image, so the same
    embedding. Converts CMYK, 16-bit, 32-bit integer and float (mode F, e.g. float TIFF),
    grayscale, palette and RGBA / LA / PA (composited on white); the first frame of an
    animation; refuses an empty (0-pixel) image. Raises :class:`UnreadableImage`
    (a ``ValueError``) naming the path with a short reason: "missing", "a directory, not an
    image file", "permission denied", "not an image", "truncated", "decompression bomb" —
    more than ``max_pixels`` pixels (default ``PIL.Image.MAX_IMAGE_PIXELS``, read at each
    call; None there: no limit), checked on the header before any pixel is decoded — or
    "unreadable (…)" for any other decoder error. Notes no input (callers do, with their
    own label: :func:`vslerp.stats.note_input`).
    """
    import numpy as np
    from PIL import Image, ImageOps, UnidentifiedImageError

    if max_pixels is not None and (isinstance(max_pixels, bool) or not isinstance(max_pixels, int)
                                   or max_pixels < 1):
        raise ValueError(f"max_pixels must be a positive int or None, got {max_pixels!r}")
    limit = Image.MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    name = _name_of(path)
    try:
        if isinstance(path, np.ndarray):  # pixels: no file, no EXIF
            return _to_rgb(_from_array(path, limit))
        if isinstance(path, Image.Image):  # decoded already: no file to read
            _check_pixels(path.size, limit, "too large")
            return _to_rgb(ImageOps.exif_transpose(path))
        _refuse_special(path)
        with warnings.catch_warnings():
            # PIL warns above its limit and raises above twice it; the limit is checked below
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:  # reads the header only
                _check_pixels(image.size, limit, "decompression bomb")
                image.load()
                return _to_rgb(ImageOps.exif_transpose(image))
    except UnreadableImage as err:
        raise UnreadableImage(err.reason, name) from None
    except Image.DecompressionBombError as err:
        sizes = [int(n) for n in re.findall(r"\d+", str(err))]  # pixels, PIL's 2× limit
        shown = sizes[1] if limit is None or len(sizes) < 2 else min(limit, sizes[1])
        detail = f" ({sizes[0]} pixels, limit {shown})" if len(sizes) >= 2 else ""
        raise UnreadableImage(f"decompression bomb{detail}", name) from None
    except UnidentifiedImageError:
        raise UnreadableImage("not an image", name) from None
    except FileNotFoundError:
        raise UnreadableImage("missing", name) from None
    except IsADirectoryError:
        raise UnreadableImage("a directory, not an image file", name) from None
    except PermissionError:
        raise UnreadableImage("permission denied", name) from None
    except (OSError, SyntaxError, ValueError, TypeError, EOFError, struct.error) as err:  # decoders'
        reason = " ".join(str(err).split()) or type(err).__name__
        if "truncated" in reason.lower():
            reason = "truncated"
        raise UnreadableImage(f"unreadable ({reason})", name) from None


def iter_images(path: str | Path, *, coco: str | Path | None = None,
                skipped: list | None = None) -> Iterator[tuple[ImageItem, object]]:
    """Yield ``(ImageItem, PIL.Image RGB)`` for each readable image of a folder (or of the
    images a COCO json lists); unreadable ones are skipped and, if ``skipped`` is a list,
    appended to it as ``(name, reason)``."""
    for item in list_images(path, coco):
        try:
            image = open_image(item.path)
        except UnreadableImage as err:
            if skipped is not None:
                skipped.append((item.name, err.reason))
            continue
        yield item, image
