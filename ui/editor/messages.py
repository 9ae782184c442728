"""The editor's own errors, and how a message reads on the page.

Callbacks raise :class:`EditorError` for a user's mistake; the Gradio boundary
(:mod:`vslerp.ui.editor.boundary`) turns it into ``gr.Error``, in one place.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["EditorError", "RenderCancelled", "display_name", "mentioning", "sentence"]


class EditorError(Exception):
    """A user's mistake, said in words the page's user can act on (no server traceback)."""


class RenderCancelled(Exception):
    """Raised between denoising steps when whoever asked for the render has gone."""


def sentence(err: Exception | str) -> str:
    """A message as a sentence for the page: one line, capitalised (not θ, α), full stop."""
    text = " ".join(str(err).split()) or type(err).__name__
    text = (text[0].upper() if text[0].isascii() else text[0]) + text[1:]
    return text if text.endswith((".", "!", "?", ")")) else text + "."


def display_name(upload) -> str | None:
    """What the user calls an uploaded file: its original name, else the file's own name."""
    if upload is None or not isinstance(upload, (str, Path)):
        return None
    return getattr(upload, "orig_name", None) or Path(str(upload)).name


def mentioning(text, path, name: str | None) -> str:
    """``text`` with a server path replaced by the file's name (users never see temp paths)."""
    text = " ".join(str(text).split())
    return text.replace(str(path), repr(name or Path(str(path)).name)) if path else text
