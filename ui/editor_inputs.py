"""The editor's inputs: uploads checked before decoding, and the shared cache of embeddings.

Uploads reach the callbacks as file paths, undecoded (:func:`checked_image`): the callback
reads the pixel count from the file header, refuses huge images before any pixel is decoded,
hashes the file's bytes for the metadata and decodes with ``vslerp.stats.open_image``
(EXIF-upright RGB), as the pipeline does for paths. :class:`EditorState` caches raw embeddings.
User's mistakes are ``gr.Error`` toasts without a server traceback (:func:`_error`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import tempfile
import threading
import warnings
from collections import OrderedDict
from pathlib import Path

import PIL.Image
import torch

from vslerp.ui.outputs import file_sha256

__all__ = ["MAX_PIXELS", "MAX_UPLOAD_BYTES", "EditorState", "Upload", "checked_image", "open_upload"]

MAX_PIXELS = 40_000_000  # uploads above this many pixels are refused (decompression bombs)
MAX_UPLOAD_BYTES = 25_000_000  # launch(max_file_size="25mb"); also the limit for data: URLs
_CACHE_SIZE = 64  # embeddings kept per kind (images, prompts)


def _error(message: str):
    """A user's mistake as a red toast; the server prints no traceback for it."""
    import gradio as gr

    return gr.Error(message, print_exception=False)


def _sentence(err: Exception) -> str:
    """An exception's message as a sentence for the page: one line, capitalised, full stop."""
    text = " ".join(str(err).split()) or type(err).__name__
    text = text[0].upper() + text[1:]
    return text if text.endswith((".", "!", "?", ")")) else text + "."


def _warn(message: str) -> None:
    """A yellow toast on the page (a Python warning outside an event)."""
    import gradio as gr

    gr.Warning(message)


class Upload(str):
    """A server path of an uploaded file that remembers the file's original name."""

    orig_name: str | None

    def __new__(cls, path, orig_name: str | None = None):
        self = super().__new__(cls, str(path))
        self.orig_name = orig_name
        return self


def _display_name(upload) -> str | None:
    """What the user calls an upload: its original file name, else the file's own name."""
    if upload is None or isinstance(upload, PIL.Image.Image):
        return None
    return getattr(upload, "orig_name", None) or Path(str(upload)).name


def _mentioning(text: str, path, name: str | None) -> str:
    """``text`` with a server path replaced by the file's name (users never see temp paths)."""
    text = " ".join(str(text).split())
    return text.replace(str(path), repr(name or Path(str(path)).name)) if path else text


def open_upload(path, name: str = "source", max_pixels: int = MAX_PIXELS) -> PIL.Image.Image:
    """Open an uploaded image file as EXIF-upright RGB, refusing unreadable files and huge images.

    The pixel count is read from the file header and checked before any pixel is decoded; then
    ``vslerp.stats.open_image`` decodes (CMYK, 16-bit, palette, alpha → RGB). Raises gr.Error.
    """
    from vslerp.stats import UnreadableImage, open_image

    if path is None:
        raise _error(f"No {name} image: upload one (drag and drop, paste or webcam).")
    if isinstance(path, PIL.Image.Image):  # programmatic callers: already decoded
        width, height = path.size
        if width * height > max_pixels:
            raise _error(f"The {name} image is too large: {width}×{height} pixels "
                         f"(at most {max_pixels:,} pixels).")
        return path.convert("RGB")
    label = _display_name(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", PIL.Image.DecompressionBombWarning)
            with PIL.Image.open(str(path)) as header:  # reads the header only
                width, height = header.size
    except (PIL.Image.DecompressionBombError, PIL.Image.DecompressionBombWarning):
        raise _error(f"The {name} image is too large to open (decompression bomb?).") from None
    except PIL.UnidentifiedImageError:
        raise _error(f"The {name} image cannot be read (not an image file).") from None
    except FileNotFoundError:
        raise _error(f"The {name} image is no longer on the server: upload it again.") from None
    except (OSError, ValueError, SyntaxError) as err:
        raise _error(f"The {name} image cannot be read ({type(err).__name__}).") from None
    if width * height > max_pixels:
        raise _error(f"The {name} image is too large: {width}×{height} pixels "
                     f"(at most {max_pixels:,} pixels).")
    try:
        return open_image(str(path))
    except UnreadableImage as err:
        raise _error(f"The {name} image cannot be read ({_mentioning(err, path, label)}).") from None


class EditorState:
    """Cache of raw embeddings, shared by every session of one editor (thread-safe).

    Images are keyed by a sha256 of their RGB pixels and size; prompts by (prompt, seed,
    prior steps), since a prompt becomes an image embedding through the seeded prior.
    ``encode_calls`` / ``prompt_calls`` count the encoder / prior runs (cache misses),
    ``decode_calls`` the uploads decoded (a known file is not decoded again).
    """

    def __init__(self, pipe, *, prior_steps: int = 25, cache_size: int = _CACHE_SIZE) -> None:
        self.pipe = pipe
        self.prior_steps = int(prior_steps)
        self.cache_size = int(cache_size)
        self.encode_calls = 0  # image-encoder runs
        self.prompt_calls = 0  # prompt → prior runs
        self.decode_calls = 0  # uploaded files decoded
        self._images: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._prompts: OrderedDict[tuple, torch.Tensor] = OrderedDict()
        self._files: OrderedDict[str, str] = OrderedDict()  # sha256 of a file → of its pixels
        self._lock = threading.Lock()  # guards the caches and the counters
        self.pipe_lock = threading.RLock()  # one pipeline call at a time (statistics are pipe state)

    @staticmethod
    def image_key(image: PIL.Image.Image) -> str:
        rgb = image.convert("RGB")
        digest = hashlib.sha256(f"{rgb.size}".encode())
        digest.update(rgb.tobytes())
        return digest.hexdigest()

    def _remember(self, cache: OrderedDict, key, value) -> None:
        cache[key] = value
        cache.move_to_end(key)
        while len(cache) > self.cache_size:
            cache.popitem(last=False)

    def image_embedding(self, image: PIL.Image.Image) -> tuple[torch.Tensor, str]:
        """Raw image embedding (D,) float32 of an RGB image and its cache key."""
        key = self.image_key(image)
        with self._lock:
            if key in self._images:
                self._images.move_to_end(key)
                return self._images[key], key
        with self.pipe_lock:
            raw = self.pipe.encode_image([image])[0]  # (D,)
        with self._lock:
            self.encode_calls += 1
            self._remember(self._images, key, raw)
        return raw, key

    def upload_embedding(self, upload, name: str) -> tuple[torch.Tensor, dict]:
        """(raw (D,), reference) of an uploaded image file (or a PIL image).

        The reference is the CLI sidecar's ``{"kind": "image", "path", "sha256"}``: path = the
        upload's original file name, sha256 = of the file's bytes; plus ``pixels_sha256`` (the
        cache key). A file seen before (same bytes) is not decoded again while its embedding is
        cached.
        """
        if upload is None or isinstance(upload, PIL.Image.Image):
            raw, key = self.image_embedding(open_upload(upload, name))
            return raw, {"kind": "image", "path": None, "sha256": None, "pixels_sha256": key}
        try:
            file_sha = file_sha256(upload)
        except OSError:
            raise _error(f"The {name} image is no longer on the server: upload it again.") from None
        raw = None
        with self._lock:
            pixels_key = self._files.get(file_sha)
            if pixels_key is not None and pixels_key in self._images:
                self._files.move_to_end(file_sha)
                self._images.move_to_end(pixels_key)
                raw = self._images[pixels_key]
        if raw is None:
            image = open_upload(upload, name)
            with self._lock:
                self.decode_calls += 1
            raw, pixels_key = self.image_embedding(image)
            with self._lock:
                self._remember(self._files, file_sha, pixels_key)
        return raw, {"kind": "image", "path": _display_name(upload), "sha256": file_sha,
                     "pixels_sha256": pixels_key}

    def prompt_embedding(self, prompt: str, seed: int) -> torch.Tensor:
        """Raw image embedding (D,) float32 the prior makes of ``prompt`` with ``seed``.

        The same as ``pipe(source, prompt, generator=torch.Generator().manual_seed(seed))``
        computes internally, so cached and uncached edits agree.
        """
        key = (prompt, int(seed), self.prior_steps)
        with self._lock:
            if key in self._prompts:
                self._prompts.move_to_end(key)
                return self._prompts[key]
        with self.pipe_lock:
            gen = torch.Generator().manual_seed(int(seed))
            raw = self.pipe.prompt_to_image_embedding([prompt], generator=gen,
                                                      num_inference_steps=self.prior_steps)[0]  # (D,)
        with self._lock:
            self.prompt_calls += 1
            self._remember(self._prompts, key, raw)
        return raw


def _data_url_to_file(url: str, cache_dir: str, name: str) -> str:
    """Write a ``data:…;base64,`` image payload to a file without decoding its pixels."""

    head, _, body = url.partition(",")
    if ";base64" not in head:
        raise _error(f"The {name} must be a base64 data URL or a file upload.")
    if len(body) > MAX_UPLOAD_BYTES * 4 // 3 + 4:
        raise _error(f"The {name} is larger than {MAX_UPLOAD_BYTES // 1_000_000} MB.")
    try:
        data = base64.b64decode(body, validate=False)
    except (binascii.Error, ValueError):
        raise _error(f"The {name} cannot be read (bad base64 data).") from None
    folder = Path(cache_dir)
    folder.mkdir(parents=True, exist_ok=True)
    fd, path = tempfile.mkstemp(prefix="data-url-", suffix=".img", dir=folder)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    return path


def checked_image(**kwargs):
    """A gr.Image whose callbacks receive the uploaded file itself, undecoded, as an :class:`Upload`.

    Gradio's own preprocessing opens every upload with PIL and, for a file whose mode is not
    ``image_mode``, decodes and converts it before any callback runs (a few-kB 1-bit PNG of
    8000×8000 pixels becomes 200 MB of RGB). This instance's ``preprocess`` instead passes the
    uploaded file's path on (with its original name); :func:`open_upload` checks its header and
    decodes it. Data URLs (a raw HTTP client's base64) are written to a file as bytes. Uploads,
    drag and drop, paste and webcam all arrive as files. (An instance attribute, not a subclass:
    gradio's component metaclass writes a ``.pyi`` stub beside the source of every subclass.)
    """
    import gradio as gr

    component = gr.Image(type="filepath", image_mode=None, **kwargs)
    name = (component.label or "uploaded image").lower()

    def preprocess(payload):
        if payload is None:
            return None
        url = getattr(payload, "url", None) or ""
        if url.startswith("data:"):
            return Upload(_data_url_to_file(url, component.GRADIO_CACHE, name), None)
        if not getattr(payload, "path", None):
            raise _error(f"The {name} did not arrive: upload it again.")
        return Upload(payload.path, getattr(payload, "orig_name", None))

    component.preprocess = preprocess
    return component
