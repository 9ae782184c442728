"""The CLI's cheap checks, each a one-line :class:`~vslerp.ui.cli.CLIError`, before any model loads:
inputs, outputs, the device, ``--stats``, the model folders and backend options, and the render
commands' pre-flight (each spec checked as the pipeline's ``RenderRequest``, fields named by flag).
"""

from __future__ import annotations

import contextlib
import json
import re
from pathlib import Path

from vslerp.ui.cli import CLIError

__all__ = ["FLAGS", "JOB_KEYS", "check_backend_options", "check_cells", "check_device", "check_loader",
           "check_main_output", "check_model_source", "check_outputs_of", "check_place", "check_png_render",
           "check_request", "check_stale_sidecar", "image_ref", "load_stats", "looks_like_folder", "model_ref",
           "own", "preflight", "preflight_one", "refuse_inputs", "short", "values"]


# -- inputs ---------------------------------------------------------------------------------
def image_ref(name: str, text: str, allow_prompt: bool, base: Path | None = None) -> dict:
    """SOURCE/TARGET → {"kind": "image", "path", "sha256"} or {"kind": "prompt", "prompt"}
    (``vslerp.pipelines.inputs.image_path_or_prompt`` decides which; ``base``: relative paths';
    ``example:cat``: a bundled example image)."""
    from PIL import Image

    from vslerp.pipelines.inputs import check_prompt, image_path_or_prompt
    from vslerp.ui.examples import example_path
    from vslerp.ui.images import file_sha256

    if text is None or not str(text).strip():
        raise CLIError(f"{name} is missing or empty")
    try:
        text = example_path(str(text)) or text  # example:cat, a bundled image
    except ValueError as err:
        raise CLIError(f"{name}: {err}") from None
    found = image_path_or_prompt(str(text), base=base)
    path = found.path
    if found.kind == "image":
        try:
            with Image.open(path) as im:
                im.verify()
        except Exception as err:  # PIL raises many kinds on broken files
            raise CLIError(f"{name} image {path} cannot be read ({err})") from None
        return {"kind": "image", "path": str(path.resolve()), "sha256": file_sha256(path)}
    if found.kind == "directory":
        raise CLIError(f"{name} {path} is a directory, not an image file")
    if found.kind == "missing" or not allow_prompt:
        shown = path if path is not None else short(str(text))
        raise CLIError(f"{name} image not found: {shown}")
    try:
        check_prompt(name, str(text))
    except ValueError as err:
        raise CLIError(str(err)) from None
    return {"kind": "prompt", "prompt": str(text)}


def short(text: str, limit: int = 60) -> str:
    """``text`` for a one-line message: repr'd (newlines, NULs visible), at most ``limit``."""
    shown = repr(text)
    return shown if len(shown) <= limit else f"{shown[:limit - 1]}…"


def values(given, name: str, default) -> tuple[float, ...]:
    """θ or α values from an option's text, a JSON list (a job, a sidecar) or, when None, ``default``."""
    from vslerp.ui.options import parse_values

    if given is None:
        given = list(default)
    if isinstance(given, (list, tuple)):
        if not given:
            raise CLIError(f"{name}: empty list of values")
        bad = [v for v in given if isinstance(v, bool) or not isinstance(v, (int, float))]
        if bad:
            raise CLIError(f"{name} must be numbers, got {json.dumps(bad[0])}")
        return tuple(float(v) for v in given)
    if not isinstance(given, str):  # a job's or sidecar's 5, true, {...}
        from vslerp.stats.jsonfile import json_type

        shown = json.dumps(given)
        raise CLIError(f"{name} must be a list of numbers (or a start:stop:count text), got "
                       f"{shown if len(shown) <= 40 else shown[:39] + '…'} ({json_type(given)})")
    try:
        return tuple(parse_values(str(given), name))
    except ValueError as err:
        raise CLIError(f"--{err}" if not str(err).startswith("--") else str(err)) from None


def check_device(device) -> None:
    """A bad ``--device`` (``banana``; ``cuda`` without CUDA) is one line: ``vslerp.stats.parse_device``."""
    if device is None:
        return
    from vslerp.stats.encode import parse_device

    try:
        parse_device(device)
    except (ValueError, TypeError) as err:
        raise CLIError(f"--{err}") from None


def check_loader(args) -> None:
    """``--num-workers`` and ``--batch-size`` within ``--max-workers`` / ``--max-batch-size``
    (``vslerp.stats.stream.check_loader_limits``), as one CLI line, before anything loads."""
    from vslerp.stats.stream import check_loader_limits

    try:
        check_loader_limits(args.num_workers, args.batch_size, max_workers=args.max_workers,
                            max_batch_size=args.max_batch_size,
                            names={"num_workers": "--num-workers", "max_workers": "--max-workers ",
                                   "batch_size": "--batch-size", "max_batch_size": "--max-batch-size "})
    except ValueError as err:
        raise CLIError(str(err)) from None


def load_stats(path: Path | None, origin: str = ""):
    """The ``--stats`` file, loaded (None: none given); ``origin`` says where it was named."""
    if path is None:
        return None
    import vslerp.stats

    path = Path(path)
    if path.is_dir():
        raise CLIError(f"--stats {path} is a directory, not a statistics file{origin}")
    if not path.is_file():
        raise CLIError(f"--stats file not found: {path}{origin}")
    try:
        return vslerp.stats.load(path)
    except (OSError, ValueError) as err:
        raise CLIError(f"--stats {path} cannot be read ({err})") from None


# -- outputs --------------------------------------------------------------------------------
def check_place(path: Path, what: str, folder: bool = False) -> None:
    """``vslerp.stats.check_writable`` (probed before any model loads), as one CLI line."""
    from vslerp.stats import check_writable

    try:
        check_writable(Path(path).expanduser(), folder=folder)
    except ValueError as err:
        raise CLIError(f"{what}: {err}") from None


def check_main_output(path: Path, overwrite: bool, what: str = "--out") -> None:
    """The commit point of a render: refused if it exists (unless ``overwrite``)."""
    check_place(path, what)
    if path.exists() and not overwrite:
        raise CLIError(f"output {path} exists (pass --overwrite to replace it)")


def refuse_inputs(outputs: dict, inputs: dict) -> None:
    """An output never replaces a file the run reads (``vslerp.stats.refuse_overwriting_inputs``)."""
    from vslerp.stats import refuse_overwriting_inputs

    try:
        refuse_overwriting_inputs(outputs, inputs)
    except ValueError as err:
        raise CLIError(str(err)) from None


def own(*files, folders=()):
    """Hold ``vslerp.stats.output_lock`` on the outputs for the whole run (a second run on them
    fails at once, naming the output) and remove what a killed run left of the files after
    the first (its sidecar): the lock's own cleanup covers the first file and the folders.
    One lock per output: the first file stands for the files written beside it."""
    from vslerp.stats import output_lock
    from vslerp.stats.outputs import remove_stale_temporaries

    @contextlib.contextmanager
    def owned():
        with output_lock(*files[:1], folders=tuple(f for f in folders if f is not None)):
            for other in files[1:]:
                remove_stale_temporaries(other)
            yield

    return owned()


def check_png_render(args, spec) -> Path:
    """A PNG render's spec (as the pipeline's request) and ``--out`` (a .png); the sidecar's path."""
    from vslerp.ui.images import sidecar_path

    check_request(spec, args.max_size, args.max_cells)
    if args.out.suffix.lower() != ".png":
        raise CLIError(f"--out must be a .png file, got {args.out}")
    return sidecar_path(args.out)


def check_outputs_of(out: Path, sidecar: Path, overwrite: bool) -> None:
    """A render's ``--out`` and its sidecar: each writable, a stale sidecar replaced."""
    check_main_output(out, overwrite)
    check_place(sidecar, "the sidecar")  # a FIFO there is refused, never read
    if not overwrite:
        check_stale_sidecar(sidecar)


def check_stale_sidecar(path: Path) -> None:
    """A sidecar whose main output does not exist is left by an interrupted render: it is
    replaced. Refused only if it is not a JSON object (not a sidecar at all)."""
    if path.is_dir():
        raise CLIError(f"sidecar {path} is a folder")
    if not path.exists():
        return
    from vslerp.stats.jsonfile import read_json

    try:
        ok = isinstance(read_json(path, "sidecar"), dict)
    except (OSError, ValueError):  # not JSON, not a regular file, nested too deeply
        ok = False
    if not ok:
        raise CLIError(f"{path} exists and is not a vslerp sidecar (pass --overwrite to replace it)")


def check_cells(cells: list[Path], out: Path) -> None:
    """Existing cells are replaced when they are stale: written by an interrupted render
    whose grid PNG does not exist. Cells of another grid that exists are refused."""
    from vslerp.ui.images import read_png_metadata

    for path in cells:
        if path.is_dir():
            raise CLIError(f"cell {path} is a folder")
        if not path.exists():
            continue
        try:
            owner = read_png_metadata(path).get("grid")
        except (OSError, ValueError, AttributeError):
            owner = None
        if not owner:
            raise CLIError(f"cell {path} exists (pass --overwrite to replace it)")
        if Path(owner) != out.resolve() and Path(owner).exists():
            raise CLIError(f"cell {path} belongs to the grid {owner} (pass --overwrite to "
                           "replace it, or use another --cells-dir)")


# -- the render commands' pre-flight ----------------------------------------------------------
# a request's field -> the flag that sets it
FLAGS = {"thetas": "--thetas", "alphas": "--alphas", "num_inference_steps": "--steps", "guidance_scale": "--guidance",
         "height": "--size", "width": "--size", "max_batch_size": "--batch-size",
         "prior_num_inference_steps": "--prior-steps", "seed": "--seed", "strength": "--strength",
         "prompt": "--prompt", "negative_prompt": "--negative-prompt", "noise_level": "--noise-level",
         "ip_adapter_scale": "--ip-adapter-scale", "true_cfg_scale": "--true-cfg-scale", "max_cells": "--max-cells", "max_size": "--max-size",
         "allow_extrapolation": "--allow-extrapolation", "weights": "--weights"}
# ... and the key of a jobs file's line
JOB_KEYS = {**{field: field for field in FLAGS}, "num_inference_steps": "steps", "guidance_scale": "guidance",
            "height": "size", "width": "size"}


def check_request(spec, max_size: int | None, max_cells: int | None, where: str = "", flags: dict = FLAGS):
    """``spec`` as a checked ``RenderRequest`` (size by the model folder's rule); a refusal names the
    field by ``flags``, after ``where`` (a jobs file's line)."""
    from vslerp.pipelines import limits
    from vslerp.pipelines.request import RenderRequest, RequestError, check_weights

    fields = {"thetas": spec.thetas, "weights": spec.weights, "alphas": spec.alphas, "num_inference_steps": spec.steps,
              "guidance_scale": spec.guidance, "height": spec.size, "width": spec.size,
              "max_batch_size": spec.batch_size, "prior_num_inference_steps": spec.prior_steps, "seed": spec.seed,
              "allow_extrapolation": bool(spec.allow_extrapolation), "max_size": max_size or limits.MAX_SIZE,
              "max_cells": max_cells or limits.MAX_CELLS, **spec.options}
    try:
        if spec.weights is not None:  # one weight per input: the count the request cannot know
            check_weights(spec.weights, len(spec.inputs))
        request = RenderRequest.from_fields(fields)
        if spec.size is not None:
            factor, fixed = limits.size_rule(spec.model)
            limits.check_size("size", spec.size, factor=factor, fixed=fixed, max_size=request.max_size,
                              lift="--max-size ")
    except RequestError as err:
        text = str(err).replace("allow_extrapolation=True", "--allow-extrapolation").replace(
            "max_cells=", "--max-cells ")
        # "strength 0.2 with num_inference_steps 2" -> "--strength 0.2 with --steps 2"
        text = re.sub(r"(?<![\w-])([a-z_]+) (?=-?[\d.])", lambda m: flags.get(m.group(1), m.group(1)) + " ", text)
        flag = flags.get(err.field, err.field)
        if err.field == "max_cells":  # "25 cells in one call is more than the limit 24 (raise it with ...)"
            said = text
        elif text.startswith((err.field, flag)):
            said = text if text.startswith(flag) else flag + text[len(err.field):]
        else:
            said = f"{flag}: {text}"
        raise CLIError(where + said) from None
    except ValueError as err:  # the size rule
        raise CLIError(f"{where}{err}" if where else f"--{err}") from None
    return request


def preflight(specs, outputs: dict, inputs: dict, check_outputs=None, *, origins=None, model_origin: str = "",
              prior_origin: str = "", stats_origin: str = ""):
    """What every render command checks once before loading: no output replaces an input, the
    command's own outputs (``check_outputs()``), the device, the model folders, each spec's
    backend options, and the ``--stats`` file, loaded (returned; None without one).
    origins: each spec's origin for its options' refusals."""

    base = specs[0]
    refuse_inputs(outputs, inputs)
    if check_outputs is not None:
        check_outputs()
    check_device(base.device)
    check_model_source(base.model, "--model", model_origin)
    check_model_source(base.prior, "--prior", prior_origin)
    for spec, origin in zip(specs, origins or [model_origin] * len(specs), strict=True):
        check_backend_options(spec, origin)
    return load_stats(base.stats, stats_origin)


def preflight_one(args, spec, origin: str, outputs: dict, inputs: dict, check_outputs):
    """:func:`preflight` of one spec, ``origin`` naming the ``--from`` sidecar's model, prior, stats."""
    return preflight([spec], outputs, inputs, check_outputs, model_origin=origin if args.model is None else "",
                     prior_origin=origin if args.prior is None else "",
                     stats_origin=origin if args.stats is None else "", origins=[origin])


# -- models (--model / --prior) and backend options ----------------------------------------
# the flags of the backend options (RenderSpec.options), as the CLI names them in a refusal
_OPTION_FLAGS = {"strength": "--strength below 1 (img2img)", "prompt": "--prompt (text conditioning)",
                 "negative_prompt": "--negative-prompt", "noise_level": "--noise-level",
                 "ip_adapter_scale": "--ip-adapter-scale", "true_cfg_scale": "--true-cfg-scale"}


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
    """A local --model/--prior folder exists and holds a class the backend table claims (else refused
    naming the supported ones); a hub id is found (or not) when loading."""
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
    """``spec``'s backend options and ``--ip-adapter`` against its ``--model``'s table record, before any
    model loads (a backend that cannot be told, a hub id offline, is left to the pipeline)."""
    from vslerp.pipelines.inputs import options_given, refused_option
    from vslerp.stats.models import KANDINSKY, backend_of, backend_record, read_model_index

    if spec.strength < 1:
        if (spec.source or {}).get("kind") != "image":
            raise CLIError(f"--strength {spec.strength:g} starts every cell from the SOURCE photo: "
                           f"give SOURCE as an image{origin}")
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
        raise CLIError(f"--ip-adapter needs a Stable Diffusion 1.5 / SDXL / FLUX.1 --model (the adapter "
                       f"conditions its denoiser), and {spec.model or 'the default model'} is {what}{origin}")
    if sd and spec.ip_adapter is None and not saved:
        base, example = (("a FLUX.1 base", "XLabs-AI/flux-ip-adapter:ip_adapter.safetensors") if backend == "flux"
                         else ("a Stable Diffusion base", "h94/IP-Adapter:models/ip-adapter_sd15.safetensors"))
        raise CLIError(f"--model {spec.model} is {base} ({backend}): it renders image embeddings "
                       f"through an IP-Adapter, give --ip-adapter REPO_OR_DIR:[SUBFOLDER/]WEIGHT (e.g. {example}){origin}")
    if spec.ip_adapter_image_encoder is not None and spec.ip_adapter is None:
        raise CLIError(f"--ip-adapter-image-encoder is the image encoder of --ip-adapter: give --ip-adapter too{origin}")
    given = options_given(spec.strength, spec.prompt, spec.negative_prompt, spec.noise_level, spec.ip_adapter_scale,
                          spec.true_cfg_scale)
    refusal = refused_option(backend, record.options, given, _OPTION_FLAGS)
    if refusal is not None:
        raise CLIError(refusal.replace("a prompt as target goes through the prior", "a prompt as TARGET goes through its prior") + origin)
    if (spec.target or {}).get("kind") == "prompt" and not record.prompt_targets:
        raise CLIError(f"TARGET is a prompt, and the {backend} backend has no prior to turn it into an image "
                       f"embedding: give TARGET as an image (--prompt conditions the UNet instead){origin}")
