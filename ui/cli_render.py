"""The render layer as the CLI uses it: its errors as one line naming the option to change.

Loading (:func:`load_pipeline_for_cli`): a model that cannot be loaded names ``--model`` or
``--prior`` and why (offline, not a folder), statistics that do not fit name ``--stats``.
Rendering (:func:`render_for_cli`): an out-of-memory names the batch (``--batch-size``) and size.
"""

from __future__ import annotations

from vslerp.ui.cli import CLIError

__all__ = ["load_pipeline_for_cli", "render_for_cli"]


def load_pipeline_for_cli(spec, stats=None, progress: bool = True):
    """:func:`vslerp.ui.render.load_pipeline`, its errors one line naming ``--model``,
    ``--prior`` or ``--stats`` and why (by the loader's error types)."""
    from vslerp.stats.hub import ModelLoadError, ModelUnavailable
    from vslerp.stats.models import UnsupportedModel
    from vslerp.ui.render import load_pipeline

    try:
        return load_pipeline(spec, stats=stats, progress=progress)
    except (ModelUnavailable, UnsupportedModel) as err:
        raise CLIError(str(err)) from err
    except ModelLoadError as err:
        raise CLIError(f"cannot load {err.option} {err.ident!r}: {err.reason}") from err
    except (OSError, ValueError) as err:
        if spec.stats is not None:
            raise CLIError(f"--stats {spec.stats}: {' '.join(str(err).split())}") from err
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
