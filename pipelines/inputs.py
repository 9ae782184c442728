"""Is a string an image path or a prompt? The one decision, for the pipeline and the CLI.

A target may be either; users give prompts of any length and content (hundreds of bytes,
newlines, NUL bytes, text pasted with broken encodings), and asking the file system about
such a string raises (``OSError: [Errno 36] File name too long``, ``ValueError: embedded
null byte``, ``UnicodeEncodeError``). :func:`image_path_or_prompt` never raises.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["IMAGE_SUFFIXES", "ImageOrPrompt", "check_prompt", "image_path_or_prompt"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")


@dataclass(frozen=True)
class ImageOrPrompt:
    """What a string names.

    kind: "image" (an existing file), "directory" (an existing folder), "missing" (looks like
        an image path — an image suffix and no spaces — but no such file) or "prompt".
    path: the path for "image"/"directory"/"missing" (``~`` expanded, joined to ``base``).
    """

    kind: str
    path: Path | None = None


def _as_path(text: str, base) -> Path | None:
    """``text`` as a path the OS can be asked about, or None when it cannot name a file."""
    if "\x00" in text or not text.strip():
        return None
    try:
        os.fsencode(text)  # lone surrogates that are not surrogateescape'd bytes
        path = Path(text).expanduser()
        if base is not None and not path.is_absolute():
            path = Path(base) / path
        encoded = os.fsencode(str(path))
    except (ValueError, RuntimeError, UnicodeError, OSError):
        return None
    if len(encoded) > 4096 or any(len(part) > 255 for part in encoded.split(b"/")):
        return None  # longer than any file name the OS accepts (ENAMETOOLONG)
    return path


def image_path_or_prompt(text, base=None) -> ImageOrPrompt:
    """Decide whether ``text`` names an image file or is a prompt; never raises.

    An existing file is an "image" (read and checked by the caller), an existing folder a
    "directory" (an error for the caller to name), a string ending in an image suffix with
    no spaces that is not there "missing"; anything else — a sentence, a 2,000-byte prompt,
    text with NUL bytes or newlines — a "prompt". ``base``: folder of relative paths
    (a jobs file's folder)."""
    if not isinstance(text, str):
        text = os.fspath(text) if isinstance(text, os.PathLike) else str(text)
        if isinstance(text, bytes):
            text = os.fsdecode(text)
    path = _as_path(text, base)
    if path is not None:
        try:
            if path.is_file():
                return ImageOrPrompt("image", path)
            if path.is_dir():
                return ImageOrPrompt("directory", path)
        except (OSError, ValueError):  # EACCES, ELOOP, ...: not a file we can read
            pass
        stripped = text.strip()
        if stripped.lower().endswith(IMAGE_SUFFIXES) and " " not in stripped:
            return ImageOrPrompt("missing", path)
    return ImageOrPrompt("prompt")


def check_prompt(name: str, text: str) -> str:
    """``text`` if a tokenizer can read it, else ``ValueError`` naming ``name``: not empty,
    and valid Unicode (no unpaired surrogates, which text decoded with errors carries and
    which the tokenizers library rejects with an unrelated TypeError)."""
    if not text.strip():
        raise ValueError(f"{name} prompt is empty")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        char = text[err.start]
        raise ValueError(f"{name} prompt is not valid text: it holds an unpaired surrogate "
                         f"U+{ord(char):04X} at character {err.start}") from None
    return text
