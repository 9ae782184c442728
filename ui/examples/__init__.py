"""The example images bundled with vslerp (``make_examples.py`` draws them); the CLI reads ``example:NAME``."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

__all__ = ["EXAMPLES", "PREFIX", "example_path"]

EXAMPLES = ("cat", "mountains", "flower")
PREFIX = "example:"  # SOURCE/TARGET `example:cat` names ui/examples/cat.png


def example_path(text: str) -> Path | None:
    """The bundled image ``example:NAME`` names (None: not ``example:...``; ValueError: no such example)."""
    if not text.startswith(PREFIX):
        return None
    name = text[len(PREFIX):].strip().removesuffix(".png")
    if name not in EXAMPLES:
        raise ValueError(f"no bundled example {name!r}: the examples are "
                         + ", ".join(PREFIX + e for e in EXAMPLES))
    return Path(str(files(__name__) / f"{name}.png"))
