"""The render layer as the CLI uses it: its errors as one line naming the option to change.

Loading (:func:`load_pipeline_for_cli`): a model that cannot be loaded names ``--model`` or
``--prior`` and why (offline, not a folder), statistics that do not fit name ``--stats``.
Rendering (:func:`render_for_cli`): an out-of-memory names the batch (``--batch-size``) and size.
"""

from __future__ import annotations

import os
from pathlib import Path

from vslerp.defaults import DEFAULT_DECODER, DEFAULT_PRIOR
from vslerp.ui.cli import CLIError

__all__ = ["load_pipeline_for_cli", "render_for_cli"]
def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def _load_failure(ident: str, detail: str) -> str:
    """Why loading ``ident`` failed, in words (it passed :func:`check_model_source`)."""
    if Path(ident).expanduser().is_dir():
        return detail  # a folder of the right kind that the loader refused: its own reason
    if _offline():
        return ("not a local folder, and not in the Hugging Face cache (HF_HUB_OFFLINE is set: "
                "no downloads)")
    return f"not a local folder, and the Hugging Face hub could not provide it ({detail})"


def load_pipeline_for_cli(spec, stats=None, progress: bool = True):
    """:func:`vslerp.ui.render.load_pipeline`, its errors one line naming ``--model``,
    ``--prior`` or ``--stats`` and why."""
    from vslerp.stats.hub import ModelUnavailable
    from vslerp.ui.render import load_pipeline

    try:
        return load_pipeline(spec, stats=stats, progress=progress)
    except ModelUnavailable as err:
        raise CLIError(str(err)) from err
    except (OSError, ValueError) as err:
        text = " ".join(str(err).split())
        for option, ident, kind in (("--prior", spec.prior or DEFAULT_PRIOR, "prior"),
                                    ("--model", spec.model or DEFAULT_DECODER, "decoder")):
            prefix = f"cannot load the Kandinsky 2.2 {kind} "
            if text.startswith(prefix):
                detail = text[len(prefix):].split(": ", 1)[-1]
                raise CLIError(f"cannot load {option} {ident!r}: {_load_failure(ident, detail)}"
                               ) from err
        if spec.stats is not None:
            raise CLIError(f"--stats {spec.stats}: {text}") from err
        raise


def render_for_cli(pipe, spec, *, max_size: int | None = None, max_cells: int | None = None,
                   callback=None):
    """:func:`vslerp.ui.render.render` (``max_size``/``max_cells``: ``--max-size``/``--max-cells``);
    an out-of-memory is one line naming the size and a lower ``--batch-size``."""
    from vslerp.pipelines import limits
    from vslerp.ui.render import render

    try:
        return render(pipe, spec, callback=callback, max_size=max_size, max_cells=max_cells)
    except limits.RenderOutOfMemory as err:
        lower = limits.out_of_memory(err.height, err.width, err.batch, lower="--batch-size ",
                                     tiling=None)
        raise CLIError(str(lower)) from err
