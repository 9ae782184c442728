"""Hub id or folder, and why a model could not be loaded, as typed errors.

diffusers and transformers report a model that is neither cached nor downloadable with
hundreds of characters ending in "check out the root cause in the stacktrace above". A
failed load is :class:`ModelLoadError` (``.ident``, ``.option``, ``.reason``), built by
:func:`load_failure`: :class:`ModelUnavailable` when the model is a hub id absent from the
local cache, else the loader's own reason in one line (a missing part, bad weights).
Front ends translate the type (the CLI names ``.option``), never the message text.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["ModelLoadError", "ModelUnavailable", "is_cached", "is_repo_id", "load_failure", "local_folder", "offline",
           "unavailable_model"]


class ModelLoadError(ValueError):
    """A model that could not be loaded: ``ident`` (its id or folder), ``option`` (how a user
    names it: ``--model``, ``--prior``, ...), ``reason`` (why, one line)."""

    def __init__(self, message: str, ident, option: str = "--model", reason: str | None = None):
        super().__init__(message)
        self.ident, self.option, self.reason = str(ident), option, reason or message


class ModelUnavailable(ModelLoadError):
    """A hub model that is not in the local cache and could not be downloaded."""


def offline() -> bool:
    """``HF_HUB_OFFLINE`` is set: huggingface_hub downloads nothing."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def is_repo_id(text: str) -> bool:
    """``org/name`` as the hub spells ids (a path such as ``./models/x`` is not one).

    The one rule telling a hub id from a path, with :func:`local_folder`: a string that names
    an existing folder is that folder; else it is a hub id if the hub could spell it so."""
    text = str(text)
    if text.startswith(("/", ".", "~")) or "\\" in text or text.count("/") > 1:
        return False
    try:
        from huggingface_hub.utils import validate_repo_id

        validate_repo_id(text)
    except Exception:  # noqa: BLE001 - HFValidationError, or no huggingface_hub
        return False
    return True


def local_folder(id_or_dir) -> Path | None:
    """The local folder ``id_or_dir`` names (``~`` expanded), or None when there is no such
    folder (a hub id, a missing path, or a file)."""
    if id_or_dir is None:
        return None
    try:
        folder = Path(str(id_or_dir)).expanduser()
        return folder if folder.is_dir() else None
    except (OSError, ValueError, RuntimeError):  # a name too long, a NUL byte, no such user
        return None


def is_cached(model_id: str) -> bool:
    """True when a snapshot of hub repo ``model_id`` is in the local Hugging Face cache."""
    try:
        from huggingface_hub import snapshot_download

        snapshot_download(str(model_id), local_files_only=True)
    except Exception:  # noqa: BLE001 - not cached, a malformed id, no huggingface_hub
        return False
    return True


def unavailable_model(model_id, option: str = "--model/--prior") -> ModelUnavailable | None:
    """The error to raise for a model that failed to load, when the reason is that it is a
    hub id absent from the local cache (offline, no network, or no such repo); None when
    ``model_id`` is a local folder or is cached (the loader's own message is then the right
    one). ``option``: how the caller lets a user give a local folder instead."""
    ident = str(model_id)
    if Path(ident).expanduser().exists() or not is_repo_id(ident) or is_cached(ident):
        return None
    why = "HF_HUB_OFFLINE" if offline() else "offline or no network"
    message = (f"{ident!r} is not in the local cache and cannot be downloaded ({why}): use "
               f"{option} DIR, or try `vslerp ui --tiny-random`")
    return ModelUnavailable(message, ident, option, message)


def load_failure(ident, option: str, what: str, err: BaseException) -> ModelLoadError:
    """The error for ``what`` of ``ident`` failing to load with ``err``: :class:`ModelUnavailable`
    for a hub id absent from the cache, else ``cannot load {what} {ident!r}: {err}``."""
    missing = unavailable_model(ident, option)
    if missing is not None:
        return missing
    return ModelLoadError(f"cannot load {what} {str(ident)!r}: {err}", ident, option, " ".join(str(err).split()))
