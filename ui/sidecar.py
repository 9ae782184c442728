"""The sidecar: what a render was, as JSON beside its image (and in a PNG's text chunk).

One schema for grid, animate, batch and the editor's downloads (:func:`sidecar`): the fields of
:class:`~vslerp.ui.render.RenderSpec` with the pipeline's defaults filled in, plus the command,
the version, the statistics' fingerprint and mean source, each cell's conformity and
``pipe.describe()``. ``vslerp grid --from`` reads it back (:func:`read_sidecar`,
:func:`spec_from_options`, :func:`recorded_inputs`).
"""

from __future__ import annotations

import json
import math
from dataclasses import fields
from pathlib import Path

from vslerp.ui.cli import CLIError
from vslerp.ui.render import RenderSpec

__all__ = ["FIELD_KINDS", "REQUIRED_KEYS", "check_fields", "read_sidecar", "recorded_inputs",
           "recorded_options", "sidecar", "spec_from_options"]

REQUIRED_KEYS = ("source", "target", "thetas", "alphas", "seed", "steps")  # what --from needs
_REQUIRED = {"grid": REQUIRED_KEYS, "mix": ("inputs", "weights", "alphas", "seed", "steps")}  # by command
_NUMBERS = ("steps", "size", "seed", "batch_size", "prior_steps")  # integers of the schema


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


# kind → (what it must be, in a message; the test of a JSON value): bools are JSON true/false
# only, never "no" or 0; numbers are never strings
FIELD_KINDS = {
    "int": ("an integer", _is_int),
    "number": ("a finite number", _is_number),
    "bool": ("true or false", lambda v: isinstance(v, bool)),
    "str": ("text", lambda v: isinstance(v, str)),
    "path": ("a path (text)", lambda v: isinstance(v, str)),
    "object": ("a JSON object", lambda v: isinstance(v, dict)),
    "numbers": ("a list of finite numbers", lambda v: isinstance(v, list) and all(map(_is_number, v))),
    "objects": ("a list of JSON objects", lambda v: isinstance(v, list) and all(isinstance(x, dict) for x in v)),
    "rows": ("a list of lists of finite numbers", lambda v: isinstance(v, list) and all(
        isinstance(row, list) and all(map(_is_number, row)) for row in v)),
}

# the fields of the schema that --from reads besides the backend options (recorded_options),
# each with its kind; null (or absent) means the default
_SIDECAR_FIELDS = {
    "source": "object", "target": "object", "thetas": "numbers", "alphas": "numbers",
    "seed": "int", "steps": "int", "size": "int", "prior_steps": "int", "batch_size": "int",
    "guidance": "number", "allow_extrapolation": "bool", "labels": "bool",
    "model": "path", "prior": "path", "dtype": "str", "stats": "object", "inputs": "objects", "weights": "rows",
}


def check_fields(record: dict, kinds: dict, where: str) -> None:
    """Each ``record[key]`` (absent or null: skipped) of its kind in :data:`FIELD_KINDS`, else one
    CLI line naming ``where``, the field and what it holds; a path never holds a NUL byte."""
    from vslerp.stats.jsonfile import json_type
    from vslerp.ui.checks import short

    for key, kind in kinds.items():
        value = record.get(key)
        if value is None:
            continue
        what, ok = FIELD_KINDS[kind]
        if not ok(value):
            shown = json.dumps(value, ensure_ascii=False)
            shown = shown if len(shown) <= 40 else f"{shown[:39]}…"
            raise CLIError(f"{where}: {key} must be {what}, got {shown} ({json_type(value)})")
        if kind == "path" and "\0" in value:
            raise CLIError(f"{where}: {key} {short(value)} is not a path (it holds a NUL byte)")


def sidecar(spec: RenderSpec, pipe, out, command: str, statistics=None, **extra) -> dict:
    """The sidecar of ``out`` (the pipeline's output for ``spec``); ``statistics``: the call's
    image mean (None: the pipeline's). ``extra``: a command's own keys (frames, job, cell, …)."""
    from vslerp._version import __version__
    from vslerp.ui.checks import model_ref

    spec = spec.resolved(pipe)
    describe = pipe.describe(statistics)
    mix = spec.weights is not None
    return {
        "command": command,
        "vslerp_version": __version__,
        "model": model_ref(spec.model or describe.get("decoder")),
        "prior": model_ref(spec.prior or describe.get("prior")),
        "stats": {"path": spec.stats, "fingerprint": describe.get("stats_fingerprint"),
                  "mean_source": describe.get("mean_source")},
        "dtype": spec.dtype,  # as asked; None: the device's default rule
        # a grid's source, target and θ rows, or a mix's weight rows (normalised)
        "source": None if mix else spec.source, "target": None if mix else spec.target,
        "thetas": None if mix else [float(t) for t in out.thetas],
        "inputs": list(spec.inputs) if spec.inputs else None,  # a mix's, or an animation's keyframes
        "weights": [[float(w) for w in row] for row in out.weights.tolist()] if mix else None,
        "alphas": [float(a) for a in out.alphas],
        "seed": int(spec.seed), "steps": int(spec.steps), "size": int(spec.size),
        "guidance": float(spec.guidance), "prior_steps": int(spec.prior_steps),
        "batch_size": int(spec.batch_size), "allow_extrapolation": bool(spec.allow_extrapolation),
        "labels": bool(spec.labels),
        "strength": float(spec.strength), "prompt": spec.prompt, "negative_prompt": spec.negative_prompt,
        "noise_level": int(spec.noise_level), "ip_adapter": _adapter_record(spec.ip_adapter),
        "ip_adapter_scale": None if spec.ip_adapter_scale is None else float(spec.ip_adapter_scale),
        "ip_adapter_image_encoder": model_ref(spec.ip_adapter_image_encoder) if spec.ip_adapter_image_encoder else None,
        "true_cfg_scale": float(spec.true_cfg_scale),
        "conformity": [[float(c) for c in row] for row in out.conformity.tolist()],
        "pipeline": describe,
        **extra,
    }


def _adapter_record(adapter) -> dict | None:
    """The spec's IP-Adapter as the sidecar records it (a local folder as an absolute path)."""
    from vslerp.ui.checks import model_ref

    if adapter is None:
        return None
    repo, subfolder, weight = adapter
    return {"source": model_ref(repo), "subfolder": subfolder or "", "weight_name": weight}


# the backend options, as a refusal says what each must be (the rule: vslerp.pipelines.request)
_OPTIONS = {"strength": "a number in (0, 1]", "prompt": "text", "negative_prompt": "text",
            "noise_level": "an integer ≥ 0", "ip_adapter_scale": "a number ≥ 0", "true_cfg_scale": "a number ≥ 0"}


def recorded_options(meta: dict, where: str) -> dict:
    """The backend options a sidecar records (an older sidecar without them: the defaults),
    each checked: one CLI line naming the bad one."""
    from vslerp.pipelines.request import RequestError, check_options

    given = {"strength": 1.0, "noise_level": 0, "true_cfg_scale": 1.0, **{key: meta.get(key) for key in _OPTIONS if meta.get(key) is not None}}
    given |= {key: meta.get(key) for key in ("prompt", "negative_prompt", "ip_adapter_scale")}
    try:
        out = check_options(**given)
    except RequestError as err:
        raise CLIError(f"{where}: {err.field} {given[err.field]!r} is not {_OPTIONS[err.field]}") from None
    adapter = meta.get("ip_adapter")
    if adapter is not None:
        parts = [adapter.get(k) if isinstance(adapter, dict) else None
                 for k in ("source", "subfolder", "weight_name")]
        if not all(isinstance(v, str) for v in parts) or not parts[0] or not parts[2]:
            raise CLIError(f"{where}: ip_adapter {adapter!r} is not {{source, subfolder, weight_name}}")
        out["ip_adapter"] = tuple(parts)
    if isinstance(meta.get("ip_adapter_image_encoder"), str):
        out["ip_adapter_image_encoder"] = meta["ip_adapter_image_encoder"]
    return out


def read_sidecar(path: Path, command: str = "grid") -> dict:
    """A sidecar ``.json`` or a PNG with vslerp metadata, as a dict (one CLI line if it is not one);
    ``command``: the render it must describe (``"grid"``, or ``"mix"``: inputs and weights)."""
    from vslerp.stats.jsonfile import read_json
    from vslerp.ui.images import read_png_metadata

    if path.is_dir():
        raise CLIError(f"--from {path} is a directory, not a sidecar or PNG")
    if not path.is_file():
        raise CLIError(f"--from file not found: {path}")
    try:
        if path.suffix.lower() == ".png":
            meta = read_png_metadata(path)
        else:
            meta = read_json(path, "--from")
    except (OSError, ValueError) as err:
        message = " ".join(str(err).split())
        if message.startswith(f"--from {path}"):
            raise CLIError(message) from None
        raise CLIError(f"--from {path} cannot be read ({message})") from None
    if not isinstance(meta, dict):
        raise CLIError(f"--from {path} is not a vslerp sidecar (not a JSON object)")
    missing = [k for k in _REQUIRED[command] if meta.get(k) is None]
    if missing and meta.get("command") in _REQUIRED and meta["command"] != command:
        raise CLIError(f"--from {path} is a vslerp {meta['command']} sidecar: render it again with "
                       f"vslerp {meta['command']} --from")
    if missing:
        raise CLIError(f"--from {path} is not a vslerp {command} sidecar (missing {missing})")
    check_fields(meta, _SIDECAR_FIELDS, f"--from {path}")
    check_fields(meta.get("stats") or {}, {"path": "path"}, f"--from {path}: stats")
    return meta


def spec_from_options(args, recorded: dict | None = None) -> RenderSpec:
    """The settings of a render: the options given, else the sidecar's (``recorded``), else the
    defaults of :class:`RenderSpec` (a sidecar older than the backend options: strength 1, no
    text prompt, ...). Inputs and axes are the caller's (``dataclasses.replace``)."""
    from vslerp.ui.options import DTYPES

    meta = recorded or {}
    defaults = {f.name: f.default for f in fields(RenderSpec)}

    def pick(key):
        given = getattr(args, key, None)
        if given is not None:
            return given
        value = meta.get(key)
        return defaults[key] if value is None else value

    dtype = args.dtype or meta.get("dtype")
    if dtype is not None:
        if str(dtype).lower() not in DTYPES:
            raise CLIError(f"dtype {dtype!r} is not one of float16, bfloat16, float32")
        dtype = DTYPES[str(dtype).lower()]
    stats = args.stats
    recorded_stats = (meta.get("stats") or {}).get("path")
    if stats is None and recorded_stats:
        stats = Path(recorded_stats).expanduser()
        beside = Path(getattr(args, "from_", None) or ".").parent / stats
        if not stats.is_absolute() and beside.is_file():  # as the sidecar's images: beside it
            stats = beside
    recorded = recorded_options(meta, f"--from {getattr(args, 'from_', None)}") if meta else {}
    options = {}
    for key in ("strength", "prompt", "negative_prompt", "noise_level", "ip_adapter", "ip_adapter_scale",
                "ip_adapter_image_encoder", "true_cfg_scale"):
        given = getattr(args, key, None)
        value = given if given is not None else recorded.get(key)
        if value is not None:
            options[key] = value
    spec = RenderSpec(
        **options,
        # --tiny-random builds its model when it loads: no recorded folder
        **({"model": None, "prior": None} if getattr(args, "tiny_random", False) else
           {"model": args.model or meta.get("model"), "prior": args.prior or meta.get("prior")}),
        stats=str(Path(stats).expanduser().resolve()) if stats else None, dtype=dtype,
        device=getattr(args, "device", None),
        allow_extrapolation=bool(args.allow_extrapolation or meta.get("allow_extrapolation")),
        **{key: pick(key) for key in (*_NUMBERS, "guidance")})
    for key in _NUMBERS:
        value = getattr(spec, key)
        if value is None and key == "size":  # the model's own size
            continue
        low = 2 if key == "prior_steps" else int(key != "seed")
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise CLIError(f"--from {getattr(args, 'from_', None)}: {key} must be an integer ≥ "
                           f"{low}, got {value!r}")
    return spec


def recorded_inputs(meta: dict, from_path: Path, args) -> tuple[dict, dict]:
    """SOURCE/TARGET of a sidecar (or the files given instead), checked against its sha256."""
    return tuple(recorded_refs([("SOURCE", "source", meta["source"], args.source),
                                ("TARGET", "target", meta["target"], args.target)], from_path))


def recorded_refs(entries, from_path: Path) -> list[dict]:
    """Inputs a sidecar records, ``(name, key, recorded ref, the file or prompt given instead or
    None)`` each: a prompt as recorded, an image found beside the sidecar or given, checked against
    its sha256; one CLI line naming every image that must be given."""
    from vslerp.pipelines.inputs import image_path_or_prompt
    from vslerp.ui.checks import image_ref

    refs, missing = [], []
    for index, (name, key, ref, given) in enumerate(entries):
        kind = ref.get("kind") if isinstance(ref, dict) else None
        if kind == "prompt":
            prompt = ref.get("prompt")
            if not isinstance(prompt, str) or not prompt.strip():
                raise CLIError(f"--from {from_path}: {key} prompt is missing or empty")
            if given is not None and given != prompt:
                raise CLIError(f"--from {from_path}: the {key} was the prompt {prompt!r}: drop "
                               f"{name} (for another {key}, render without --from)")
            refs.append({"kind": "prompt", "prompt": prompt})
            continue
        if kind != "image":
            raise CLIError(f"--from {from_path}: {key} has no kind image/prompt")
        check_fields(ref, {"path": "path", "sha256": "str", "name": "str"}, f"--from {from_path}: {key}")
        recorded = ref.get("sha256")
        if given is None:
            recorded_path = ref.get("path")
            found = None
            if isinstance(recorded_path, str) and recorded_path:
                # relative: the editor records the upload's own file name, beside the sidecar
                found = image_path_or_prompt(recorded_path, base=from_path.parent)
            if found is None or found.kind != "image":
                missing.append((index, key, ref))
                continue
            given = str(found.path)
        new = image_ref(name, given, allow_prompt=False)
        if recorded and new["sha256"] != recorded:
            raise CLIError(f"{name} image {new['path']} is not the one {from_path.name} was "
                           f"rendered with (sha256 {new['sha256'][:12]}…, recorded "
                           f"{recorded[:12]}…)")
        refs.append(new)
    if missing:
        # inputs are given in order: to give one, give every one before it
        last = max(index for index, *_ in missing)
        needed = [entry[0] for entry in entries[:last + 1]]
        give = " and ".join(needed) if len(needed) <= 2 else f"{', '.join(needed[:-1])} and {needed[-1]}"
        parts = []
        for _, key, ref in missing:
            path = ref.get("path")
            label = path or ref.get("name") or "no file name"
            digest = f", sha256 {ref['sha256'][:12]}…" if ref.get("sha256") else ""
            if path and Path(path).is_absolute():
                parts.append(f"{key} image not found: {path}{digest}")
            else:
                parts.append(f"{key} was an upload ({label}{digest})")
        raise CLIError(f"{from_path.name}'s {'; '.join(parts)}: give {give}")
    return refs
