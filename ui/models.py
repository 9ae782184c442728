"""Which models ``--model`` / ``--prior`` name, checked against the backend table before loading.

A local folder must hold ``model_index.json`` of a class the table
(:mod:`vslerp.stats.models`) claims (:func:`check_model_source`); anything else shaped like a
hub id (``org/name``) is left to the loader (:mod:`vslerp.ui.cli_render` names its errors).
"""

from __future__ import annotations

from pathlib import Path

from vslerp.ui.cli import CLIError

__all__ = ["check_backend_options", "check_model_source", "looks_like_folder", "model_ref"]

# the flags of the backend options (RenderSpec.options), as the CLI names them in a refusal
_OPTION_FLAGS = {"strength": "--strength below 1 (img2img)", "prompt": "--prompt (text conditioning)",
                 "negative_prompt": "--negative-prompt", "noise_level": "--noise-level",
                 "ip_adapter_scale": "--ip-adapter-scale"}


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
    ``model_index.json`` ``_class_name``: a class no record of the table claims is refused by
    name, naming the supported ones); a hub id is found (or not) when loading."""
    if ident is None:
        return
    from vslerp.stats.models import BACKENDS, PRIORS, TABLE, UnsupportedModel, read_model_index

    accepted, what = ((PRIORS, "Kandinsky 2.2 prior (or Karlo's)") if option == "--prior" else
                      (BACKENDS, "Kandinsky 2.2 decoder (or unCLIP, Stable unCLIP, SD 1.5 / SDXL)"))
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
        if name not in BACKENDS and name not in PRIORS:
            raise CLIError(f"{option} {UnsupportedModel(name, ident)}{origin}")
        if name not in accepted:
            label = PRIORS[name][0] if name in PRIORS else next(r.label for r in TABLE if name in r.class_names)
            raise CLIError(f"{option} {ident}: the folder holds {label} ({name}), not a {what}{origin}")
        return
    if looks_like_folder(str(ident)):
        raise CLIError(f"{option} {ident}: no such folder{origin}")


def check_backend_options(spec, origin: str = "") -> None:
    """The backend options and ``--ip-adapter`` of ``spec`` against the backend its ``--model`` is
    (the table's :func:`~vslerp.stats.models.backend_of`: ``model_index.json``, else the id), before
    any model loads: an IP-Adapter only on an SD 1.5 / SDXL base and such a base only with one; only
    the options its record takes; ``--strength`` below 1 with a SOURCE photo and at least one
    denoising step. A backend that cannot be told (a hub id offline) is left to the pipeline."""
    from vslerp.pipelines.inputs import options_given, refused_option
    from vslerp.stats.models import KANDINSKY, backend_of, backend_record, read_model_index

    if spec.strength < 1:
        if (spec.source or {}).get("kind") != "image":
            raise CLIError(f"--strength {spec.strength:g} starts every cell from the SOURCE photo: "
                           f"give SOURCE as an image{origin}")
        if int(spec.steps * spec.strength) < 1:
            raise CLIError(f"--strength {spec.strength:g} with --steps {spec.steps} leaves no denoising step "
                           f"(int(steps × strength) must be ≥ 1): raise --steps or --strength{origin}")
    try:
        backend = backend_of(spec.model) if spec.model is not None else KANDINSKY
        index = read_model_index(spec.model) if spec.model is not None else None
    except ValueError:  # an unreadable model_index.json: check_model_source names it
        return
    if backend is None:  # nothing tells (a hub id offline), or not a generator: left to the loader
        return
    record = backend_record(backend)
    sd = record.encoder == "ip-adapter"
    saved = (index or {}).get("_class_name") in record.class_names[1:]  # save_pretrained's: adapter inside
    if spec.ip_adapter is not None and (not sd or saved):
        what = "a folder saved with its IP-Adapter" if saved else f"a {backend} model"
        raise CLIError(f"--ip-adapter needs a Stable Diffusion 1.5 / SDXL --model (the adapter conditions its "
                       f"UNet), and {spec.model or 'the default model'} is {what}{origin}")
    if sd and spec.ip_adapter is None and not saved:
        raise CLIError(f"--model {spec.model} is a Stable Diffusion base ({backend}): it renders image "
                       "embeddings through an IP-Adapter, give --ip-adapter REPO_OR_DIR:SUBFOLDER/WEIGHT "
                       f"(e.g. h94/IP-Adapter:models/ip-adapter_sd15.safetensors){origin}")
    given = options_given(spec.strength, spec.prompt, spec.negative_prompt, spec.noise_level, spec.ip_adapter_scale)
    refusal = refused_option(backend, record.options, given, _OPTION_FLAGS)
    if refusal is not None:
        raise CLIError(refusal.replace("a prompt as target goes through the prior", "a prompt as TARGET goes through its prior") + origin)
    if (spec.target or {}).get("kind") == "prompt" and not record.prompt_targets:
        raise CLIError(f"TARGET is a prompt, and the {backend} backend has no prior to turn it into an image "
                       f"embedding: give TARGET as an image (--prompt conditions the UNet instead){origin}")
