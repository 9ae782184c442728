"""Uploads: what a page or API event sends for a file, as a path that keeps the file's name.

The editor's events skip Gradio's preprocessing (``preprocess=False``, and ``gr.api``), so a file
reaches the callbacks as Gradio's file payload, undecoded, and nothing has checked it yet: a raw
HTTP client can send any string or dict. :func:`client_upload` is the one door for an HTTP
client's file: it takes only a file in Gradio's upload folder (links resolved first) or the bytes
of a ``data:`` URL, and refuses anything else with one message that does not depend on the path.
:func:`as_upload` is the same for Python callers of the ``Editor``, who may also name their own
paths. :func:`open_upload` reads the pixel count from the file header, refuses huge images before
any pixel is decoded, and decodes with ``vslerp.stats.open_image`` (EXIF-upright RGB). A client's
file that is refused is deleted at once; a data URL's file lives for its request only
(:func:`discard`).
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

__all__ = ["MAX_PIXELS", "MAX_UPLOAD_BYTES", "Upload", "as_upload", "check_image", "client_upload", "discard",
           "not_uploaded",
           "open_upload", "refused"]

MAX_PIXELS = 40_000_000  # uploads above this many pixels are refused (decompression bombs)
MAX_UPLOAD_BYTES = 25_000_000  # launch(max_file_size="25mb"); also the limit for data: URLs


class Upload(str):
    """A server path of an uploaded file that remembers the file's original name.

    ``client``: the file came from an HTTP client (Gradio's upload folder or a data URL), so the
    editor may delete it once refused; ``temporary``: written by the editor from a data URL, for
    one request.
    """

    orig_name: str | None
    client: bool
    temporary: bool

    def __new__(cls, path, orig_name: str | None = None, *, client: bool = False, temporary: bool = False):
        self = super().__new__(cls, str(path))
        self.orig_name = orig_name
        self.client = client
        self.temporary = temporary
        return self


def not_uploaded(name: str) -> EditorError:
    """The one refusal of a client's file value that is not an upload (the same for every path)."""
    return EditorError(f"The {name} must be a file uploaded to this editor (or the bytes of a data: URL); "
                       "upload it again.")


def _get(payload):
    return payload.get if isinstance(payload, dict) else lambda key: getattr(payload, key, None)


def as_upload(payload, folder, name: str = "uploaded file"):
    """A Python caller's file value as an :class:`Upload` (or None, or a PIL image as it is).

    payload: Gradio's file payload (a dict or a ``FileData``: ``path``, ``orig_name``, ``url``),
    a path of the caller's own or a PIL image. A ``data:…;base64,`` URL without a path is written,
    undecoded, to a file in ``folder``. Raises :class:`EditorError`. HTTP clients go through
    :func:`client_upload` instead, which never takes a server path.
    """
    if payload is None or isinstance(payload, (PIL.Image.Image, Upload)):
        return payload
    if isinstance(payload, (str, os.PathLike)):
        return Upload(payload, None)
    get = _get(payload)
    path, url = get("path"), get("url") or ""
    if not path and isinstance(url, str) and url.startswith("data:"):
        return Upload(_data_url_to_file(url, folder, name), None, client=True, temporary=True)
    if not path:
        raise EditorError(f"The {name} did not arrive: upload it again.")
    return Upload(path, get("orig_name"))


def client_upload(payload, folder, name: str = "uploaded file") -> Upload | None:
    """An HTTP client's file value as an :class:`Upload`, or None when there is none.

    Accepted: Gradio's file payload (dict or ``FileData``) whose path, links resolved, is a file
    inside Gradio's upload folder (``gradio.utils.get_upload_folder()``, where ``/upload`` puts
    files); or a ``data:…;base64,`` URL (as the payload's ``url`` or as a plain string), written to
    ``folder`` for this request. Anything else — a plain path, a payload naming a server file, a
    folder, a missing file — is :func:`not_uploaded`, the same message whatever the path.
    """
    if payload is None or payload == "":
        return None
    if isinstance(payload, str):
        if payload.startswith("data:"):
            return Upload(_data_url_to_file(payload, folder, name), None, client=True, temporary=True)
        raise not_uploaded(name)
    if not isinstance(payload, dict) and not hasattr(payload, "path"):
        raise not_uploaded(name)
    get = _get(payload)
    path, url, orig_name = get("path"), get("url"), get("orig_name")
    if not path and isinstance(url, str) and url.startswith("data:"):
        return Upload(_data_url_to_file(url, folder, name), None, client=True, temporary=True)
    if not isinstance(path, str) or not path or "\0" in path:
        raise not_uploaded(name)
    from gradio.utils import get_upload_folder, is_in_or_equal

    try:
        resolved = Path(path).resolve()  # links first: a link in the cache to a server file is not an upload
        uploads = Path(get_upload_folder()).resolve()
        accepted = resolved != uploads and is_in_or_equal(resolved, uploads) and resolved.is_file()
    except (OSError, ValueError, RuntimeError):
        accepted = False
    if not accepted:
        raise not_uploaded(name)
    return Upload(resolved, orig_name if isinstance(orig_name, str) else None, client=True)


def discard(upload) -> None:
    """Delete a client's file (refused, or a data URL's file once its request is over); never a
    Python caller's own path."""
    if isinstance(upload, Upload) and upload.client:
        Path(upload).unlink(missing_ok=True)


def refused(upload, error: EditorError) -> EditorError:
    """``error``, once a client's refused file is deleted (refused uploads are not kept)."""
    discard(upload)
    return error


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
    ``vslerp.stats.open_image`` decodes (CMYK, 16-bit, palette, alpha → RGB). Raises EditorError;
    a client's file that is refused is deleted first.
    """
    try:
        return _open(path, name, max_pixels)
    except EditorError as err:
        raise refused(path, err) from None


def check_image(path, name: str = "source", max_pixels: int = MAX_PIXELS) -> tuple[int, int]:
    """(width, height) of an uploaded image file from its header, refusing a file that is not an
    image or holds more than ``max_pixels`` (a client's refused file is deleted)."""
    try:
        return _header(path, name, max_pixels)
    except EditorError as err:
        raise refused(path, err) from None


def _header(path, name: str, max_pixels: int) -> tuple[int, int]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", PIL.Image.DecompressionBombWarning)
            with PIL.Image.open(str(path)) as header:  # reads the header only
                width, height = header.size
    except (PIL.Image.DecompressionBombError, PIL.Image.DecompressionBombWarning):
        raise EditorError(f"The {name} image is too large to open (decompression bomb?).") from None
    except PIL.UnidentifiedImageError:
        raise EditorError(f"The {name} is not an image file: upload a PNG, JPEG or WebP image.") from None
    except FileNotFoundError:
        raise EditorError(f"The {name} image is no longer on the server: upload it again.") from None
    except (OSError, ValueError, SyntaxError) as err:
        raise EditorError(f"The {name} image cannot be read ({type(err).__name__}).") from None
    if width * height > max_pixels:
        raise EditorError(f"The {name} image is too large: {width}×{height} pixels "
                          f"(at most {max_pixels:,} pixels).")
    return width, height


def _open(path, name: str, max_pixels: int) -> PIL.Image.Image:
    from vslerp.stats import UnreadableImage, open_image

    if path is None:
        raise EditorError(f"No {name} image: upload one (drag and drop, paste or webcam).")
    if isinstance(path, PIL.Image.Image):  # programmatic callers: already decoded
        width, height = path.size
        if width * height > max_pixels:
            raise EditorError(f"The {name} image is too large: {width}×{height} pixels "
                              f"(at most {max_pixels:,} pixels).")
        try:  # the one image normalisation (alpha on white, EXIF, modes), as for a file
            return open_image(path, max_pixels=max_pixels)
        except UnreadableImage as err:
            raise EditorError(f"The {name} image cannot be read ({err}).") from None
    label = display_name(path)
    _header(path, name, max_pixels)
    try:
        return open_image(str(path))
    except UnreadableImage as err:
        raise EditorError(f"The {name} image cannot be read ({mentioning(err, path, label)}).") from None
