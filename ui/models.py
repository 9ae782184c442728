"""Which models ``--model`` / ``--prior`` name: a local folder of the right kind, or a hub id.

A local folder must hold ``model_index.json`` of the right pipeline class
(:func:`check_model_source`, the one place that reads it here); anything else shaped like a
hub id (``org/name``) is left to the loader (:mod:`vslerp.ui.cli_render` names its errors).
"""

from __future__ import annotations

from pathlib import Path

from vslerp.ui.cli import CLIError

__all__ = ["check_model_source", "looks_like_folder", "model_ref"]

_PRIOR_CLASSES = ("KandinskyV22PriorPipeline",)  # what --prior accepts (--model: loading.BACKENDS)
_CLASS_NAMES = {"KandinskyV22Pipeline": "a Kandinsky 2.2 decoder",
                "KandinskyV22PriorPipeline": "a Kandinsky 2.2 prior",
                "VSlerpPipeline": "a saved VSlerpPipeline",
                "UnCLIPImageVariationPipeline": "an unCLIP image-variation model",
                "VSlerpUnCLIPPipeline": "a saved VSlerpUnCLIPPipeline"}


def looks_like_folder(ident: str) -> bool:
    """A path rather than a hub id (``org/name``): :func:`vslerp.stats.hub.is_repo_id`'s rule."""
    from vslerp.stats.hub import is_repo_id

    return not is_repo_id(str(ident))


def model_ref(ident):
    """A local folder as an absolute path (so a sidecar works from anywhere), else the hub id."""
    if ident and Path(ident).expanduser().is_dir():
        return str(Path(ident).expanduser().resolve())
    return ident


def check_model_source(ident, option: str, origin: str = "") -> None:
    """A local --model/--prior folder must exist and hold the right kind of pipeline (its
    ``model_index.json`` ``_class_name``, read by :func:`vslerp.pipelines.loading.read_model_index`,
    which also decides the backend); a hub id is found (or not) when loading."""
    if ident is None:
        return
    from vslerp.pipelines.loading import BACKENDS, read_model_index

    accepted, what = ((_PRIOR_CLASSES, "Kandinsky 2.2 prior") if option == "--prior" else
                      (tuple(BACKENDS), "Kandinsky 2.2 decoder (or unCLIP)"))
    path = Path(str(ident)).expanduser()
    if path.is_file():
        raise CLIError(f"{option} {ident} is a file, not a model folder{origin}")
    if path.is_dir():
        try:
            index = read_model_index(path)
        except ValueError:
            raise CLIError(f"{option} {ident}: {path / 'model_index.json'} cannot be read{origin}") from None
        if index is None:
            raise CLIError(f"{option} {ident}: the folder exists but is not a {what} folder "
                           f"(no model_index.json){origin}")
        name = index.get("_class_name")
        if name not in accepted:
            raise CLIError(f"{option} {ident}: the folder holds {_CLASS_NAMES.get(name, name)} "
                           f"({name}), not a {what}{origin}")
        return
    if looks_like_folder(str(ident)):
        raise CLIError(f"{option} {ident}: no such folder{origin}")
