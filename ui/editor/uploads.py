"""Uploads: what a page or API event sends for a file, as a path that keeps the file's name.

The editor's events skip Gradio's preprocessing (``preprocess=False``, and ``gr.api``), so an
upload reaches the callbacks as Gradio's file payload, undecoded: Gradio has already checked that
the file was uploaded to its cache. :func:`as_upload` makes it an :class:`Upload` (a data URL of a
raw HTTP client is written to a file as bytes); :func:`open_upload` reads the pixel count from
the file header, refuses huge images before any pixel is decoded, and decodes with
``vslerp.stats.open_image`` (EXIF-upright RGB), as the pipeline does for paths.
"""

from __future__ import annotations

import base64
import binascii
import os
import tempfile
import warnings
from pathlib import Path

import PIL.Image

from vslerp.ui.editor.messages import EditorError, display_name, mentioning

__all__ = ["MAX_PIXELS", "MAX_UPLOAD_BYTES", "Upload", "as_upload", "open_upload"]

MAX_PIXELS = 40_000_000  # uploads above this many pixels are refused (decompression bombs)
MAX_UPLOAD_BYTES = 25_000_000  # launch(max_file_size="25mb"); also the limit for data: URLs


class Upload(str):
    """A server path of an uploaded file that remembers the file's original name."""

    orig_name: str | None

    def __new__(cls, path, orig_name: str | None = None):
        self = super().__new__(cls, str(path))
        self.orig_name = orig_name
        return self


def as_upload(payload, folder, name: str = "uploaded file"):
    """An event's file value as an :class:`Upload` (or None, or a PIL image as it is).

    payload: Gradio's file payload (a dict or a ``FileData``: ``path``, ``orig_name``, ``url``),
    a path (programmatic callers) or a PIL image. A ``data:…;base64,`` URL without a path is
    written, undecoded, to a file in ``folder``. Raises :class:`EditorError`.
    """
    if payload is None or isinstance(payload, (PIL.Image.Image, Upload)):
        return payload
    if isinstance(payload, (str, os.PathLike)):
        return Upload(payload, None)
    get = payload.get if isinstance(payload, dict) else lambda key: getattr(payload, key, None)
    path, url = get("path"), get("url") or ""
    if not path and url.startswith("data:"):
        return Upload(_data_url_to_file(url, folder, name), None)
    if not path:
        raise EditorError(f"The {name} did not arrive: upload it again.")
    return Upload(path, get("orig_name"))


def _data_url_to_file(url: str, folder, name: str) -> str:
    """Write a ``data:…;base64,`` payload to a file without decoding its pixels."""
    head, _, body = url.partition(",")
    if ";base64" not in head:
        raise EditorError(f"The {name} must be a base64 data URL or a file upload.")
    if len(body) > MAX_UPLOAD_BYTES * 4 // 3 + 4:
        raise EditorError(f"The {name} is larger than {MAX_UPLOAD_BYTES // 1_000_000} MB.")
    try:
        data = base64.b64decode(body, validate=False)
    except (binascii.Error, ValueError):
        raise EditorError(f"The {name} cannot be read (bad base64 data).") from None
    Path(folder).mkdir(parents=True, exist_ok=True)
    fd, path = tempfile.mkstemp(prefix="data-url-", suffix=".img", dir=folder)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    return path


def open_upload(path, name: str = "source", max_pixels: int = MAX_PIXELS) -> PIL.Image.Image:
    """Open an uploaded image file as EXIF-upright RGB, refusing unreadable files and huge images.

    The pixel count is read from the file header and checked before any pixel is decoded; then
    ``vslerp.stats.open_image`` decodes (CMYK, 16-bit, palette, alpha → RGB). Raises EditorError.
    """
    from vslerp.stats import UnreadableImage, open_image

    if path is None:
        raise EditorError(f"No {name} image: upload one (drag and drop, paste or webcam).")
    if isinstance(path, PIL.Image.Image):  # programmatic callers: already decoded
        width, height = path.size
        if width * height > max_pixels:
            raise EditorError(f"The {name} image is too large: {width}×{height} pixels "
                              f"(at most {max_pixels:,} pixels).")
        return path.convert("RGB")
    label = display_name(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", PIL.Image.DecompressionBombWarning)
            with PIL.Image.open(str(path)) as header:  # reads the header only
                width, height = header.size
    except (PIL.Image.DecompressionBombError, PIL.Image.DecompressionBombWarning):
        raise EditorError(f"The {name} image is too large to open (decompression bomb?).") from None
    except PIL.UnidentifiedImageError:
        raise EditorError(f"The {name} image cannot be read (not an image file).") from None
    except FileNotFoundError:
        raise EditorError(f"The {name} image is no longer on the server: upload it again.") from None
    except (OSError, ValueError, SyntaxError) as err:
        raise EditorError(f"The {name} image cannot be read ({type(err).__name__}).") from None
    if width * height > max_pixels:
        raise EditorError(f"The {name} image is too large: {width}×{height} pixels "
                          f"(at most {max_pixels:,} pixels).")
    try:
        return open_image(str(path))
    except UnreadableImage as err:
        raise EditorError(f"The {name} image cannot be read ({mentioning(err, path, label)}).") from None
