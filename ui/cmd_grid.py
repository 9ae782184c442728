"""`vslerp grid`, `vslerp animate`: render vSLERP (paper Eq. 12) from the shell.

The checks, loading and metadata here are shared with `vslerp batch` (:mod:`vslerp.ui.cmd_batch`).

Every output carries what it takes to render it again (a ``.json`` sidecar, and for PNGs a
text chunk). The main file (the grid PNG, the animation) is written last: it is the commit
point, so an interrupted run leaves at most sidecars and cells without it, which are stale and
replaced by the next run. Everything cheap (paths, values, devices, model folders, output
folders) is checked before any model is loaded.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
from pathlib import Path

from vslerp.pipelines import limits
from vslerp.ui.cli import DTYPE_HELP, DTYPES, CLIError, dtype_arg
from vslerp.ui.outputs import NEGATIVE_VALUES, file_sha256

__all__ = ["register", "run_animate", "run_grid"]

_DEFAULT_MODEL = "kandinsky-community/kandinsky-2-2-decoder"
_DEFAULT_PRIOR = "kandinsky-community/kandinsky-2-2-prior"
# size and guidance None: the model's own (Kandinsky 2.2: 512 px, 4.0; unCLIP/Karlo: 256 px, 8.0)
_DEFAULTS = {"steps": 50, "size": None, "seed": 0, "guidance": None, "batch_size": 8,
             "prior_steps": 25}
_SEED_LIMIT = 2**63  # seeds are in [0, 2**63), as in the editor
# model_index.json classes each option accepts, and how to name the others
_DECODER_CLASSES = ("KandinskyV22Pipeline", "VSlerpPipeline", "UnCLIPImageVariationPipeline",
                    "VSlerpUnCLIPPipeline")
_PRIOR_CLASSES = ("KandinskyV22PriorPipeline",)
_CLASS_NAMES = {"KandinskyV22Pipeline": "a Kandinsky 2.2 decoder",
                "KandinskyV22PriorPipeline": "a Kandinsky 2.2 prior",
                "VSlerpPipeline": "a saved VSlerpPipeline",
                "UnCLIPImageVariationPipeline": "an unCLIP image-variation model",
                "VSlerpUnCLIPPipeline": "a saved VSlerpUnCLIPPipeline"}

GRID_DESCRIPTION = """\
Render a θ × α grid of vSLERP(SOURCE, TARGET, θ, α) (paper Eq. 12, Fig. 12):
one row per θ (0 = SOURCE, 1 = TARGET), one column per α (0 = plain SLERP;
α > 0 pulls the path towards the image mean). All cells share one noise seed.
The PNG and its .json sidecar hold every parameter: --from renders it again,
options given with it override the sidecar's.

examples:
  vslerp grid cat.png "a watercolor painting" --thetas 0,0.25,0.5 \\
      --alphas -2:2:5 --out grid.png
  vslerp grid --from grid.png --out again.png
  vslerp grid --from editor-download.png cat.png dog.png --out again.png
"""

ANIMATE_DESCRIPTION = """\
Render the path θ = 0 → 1 at one α (vSLERP, paper Eq. 12) as a looping GIF or
an H.264 MP4 (imageio-ffmpeg's bundled ffmpeg); the parameters go to
FILE.gif.json / FILE.mp4.json.

example:
  vslerp animate cat.png dog.png --alpha 1 --frames 24 --pingpong --out path.gif
"""



# -- argument types -----------------------------------------------------------------------
def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be ≥ 1, got {value}")
    return value


def _two_or_more(text: str) -> int:
    """The prior's steps: UnCLIPScheduler needs at least 2."""
    value = _positive(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"must be ≥ 2, got {value}")
    return value


def _size(text: str) -> int:
    """A positive int; the model's rule (multiple, limit) is checked by :func:`_check_size`."""
    return _positive(text)


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
    if not 0 <= value < _SEED_LIMIT:
        raise argparse.ArgumentTypeError(f"must be in [0, 2**63), got {value}")
    return value


def _finite(text: str) -> float:
    """A finite number of sane magnitude (``vslerp._checks.check_magnitude``: |x| ≤ 1e6)."""
    from vslerp._checks import check_magnitude

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be finite, got {text!r}")
    try:
        check_magnitude("value", value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value:g} is too large: at most 1e+06 in "
                                         "magnitude") from None
    return value


# -- parsers --------------------------------------------------------------------------------
def _add_model_options(p) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", default=None, metavar="DIR|ID",
                   help="Kandinsky 2.2 decoder repo or folder, or a folder saved by "
                   f"VSlerpPipeline.save_pretrained (default: {_DEFAULT_MODEL})")
    g.add_argument("--prior", default=None, metavar="DIR|ID",
                   help=f"Kandinsky 2.2 prior repo or folder (default: {_DEFAULT_PRIOR})")
    g.add_argument("--stats", type=Path, default=None, metavar="FILE.safetensors",
                   help="statistics file from `vslerp stats compute` giving the image mean "
                   "(default: the prior's own clip_mean)")
    g.add_argument("--dtype", type=dtype_arg, default=None, metavar="DTYPE",
                   help=f"{DTYPE_HELP} "
                   "(default: float16 on CUDA, else float32)")
    g.add_argument("--device", default=None,
                   help="cuda, cuda:1, mps or cpu (default: cuda, then mps, then cpu; one per "
                   "process under accelerate launch)")
    g.add_argument("--batch-size", type=_positive, default=None, metavar="N",
                   help="cells denoised together; lower it if memory runs out "
                   f"(default: {_DEFAULTS['batch_size']})")


def _add_render_options(p) -> None:
    g = p.add_argument_group("rendering")
    g.add_argument("--steps", type=_positive, default=None, metavar="N",
                   help=f"denoising steps (default: {_DEFAULTS['steps']})")
    g.add_argument("--size", type=_size, default=None, metavar="PX",
                   help="image side in pixels, a multiple of 8 (default: the model's, 512 for Kandinsky "
                   "2.2; unCLIP/Karlo renders 256 only)")
    g.add_argument("--seed", type=_seed, default=None, metavar="N",
                   help=f"noise seed shared by every cell (default: {_DEFAULTS['seed']})")
    g.add_argument("--guidance", type=_finite, default=None, metavar="G",
                   help="guidance scale (default: the model's, 4.0 for Kandinsky 2.2, 8.0 for unCLIP)")
    g.add_argument("--prior-steps", type=_two_or_more, default=None, metavar="N",
                   help="prior steps turning a prompt TARGET into an image embedding "
                   f"(default: {_DEFAULTS['prior_steps']})")
    g.add_argument("--allow-extrapolation", action="store_true",
                   help="allow θ outside [0, 1] (default: refused)")
    g.add_argument("--no-progress", action="store_true",
                   help="no progress bars on stderr (default: shown)")
    g = p.add_argument_group("limits (against typos that would run for hours or exhaust memory)")
    g.add_argument("--max-size", type=_positive, default=limits.MAX_SIZE, metavar="PX",
                   help=f"largest --size accepted (default: {limits.MAX_SIZE})")
    g.add_argument("--max-cells", type=_positive, default=limits.MAX_CELLS, metavar="N",
                   help=f"most cells (θ × α) of one grid (default: {limits.MAX_CELLS})")




def register(subparsers) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    p = subparsers.add_parser("grid", help="render a labelled θ × α grid (paper Fig. 12)",
                              formatter_class=fmt, description=GRID_DESCRIPTION)
    p.add_argument("source", nargs="?", metavar="SOURCE",
                   help="source image (with --from: the image the sidecar names, when it was "
                   "an upload or has moved)")
    p.add_argument("target", nargs="?", metavar="TARGET",
                   help="target image (if the file exists or the text looks like an image path) "
                   "or a prompt (with --from: as SOURCE)")
    p.add_argument("--thetas", default=None, metavar="VALUES",
                   help="θ values, a comma list 0,0.25,0.5 or start:stop:count, inclusive "
                   "(default: 0:1:5)")
    p.add_argument("--alphas", default=None, metavar="VALUES",
                   help="α values, as --thetas (default: -2:2:5)")
    p.add_argument("--out", type=Path, required=True, metavar="FILE.png",
                   help="grid PNG to write; its sidecar FILE.json goes beside it")
    p.add_argument("--cells-dir", type=Path, default=None, metavar="DIR",
                   help="also write each cell as DIR/rRR_cCC.png (default: not written)")
    p.add_argument("--no-labels", action="store_true",
                   help="no θ/α labels: exactly the tiling of the cells (default: labelled)")
    p.add_argument("--from", dest="from_", type=Path, default=None, metavar="SIDECAR",
                   help="render again from a sidecar .json or a PNG with vslerp metadata (the "
                   "editor's downloads too): its parameters, overridden by options given here")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing --out and its cells (default: refused)")
    _add_render_options(p)
    _add_model_options(p)
    p._negative_number_matcher = NEGATIVE_VALUES
    p.set_defaults(func=run_grid)

    p = subparsers.add_parser("animate", help="render the path θ = 0 → 1 as a GIF or an MP4",
                              formatter_class=fmt, description=ANIMATE_DESCRIPTION)
    p.add_argument("source", metavar="SOURCE", help="source image")
    p.add_argument("target", metavar="TARGET", help="target image or a prompt")
    p.add_argument("--alpha", type=_finite, default=0.0, metavar="A",
                   help="α of every frame; 0 is plain SLERP (default: 0)")
    p.add_argument("--frames", type=_positive, default=24, metavar="N",
                   help="frames from θ=0 to θ=1, both included: at least 2 (default: 24)")
    p.add_argument("--max-frames", type=_positive, default=limits.MAX_FRAMES, metavar="N",
                   help=f"most --frames accepted (default: {limits.MAX_FRAMES})")
    p.add_argument("--fps", type=_finite, default=8.0, metavar="FPS",
                   help="frames per second: GIF stores delays in 1/100 s, so 0.01 < FPS ≤ 50 "
                   "(exact where 100/FPS is an integer); MP4 0.1 ≤ FPS ≤ 240 (default: 8)")
    p.add_argument("--pingpong", action="store_true",
                   help="append the way back, without repeating the ends (default: one way)")
    p.add_argument("--out", type=Path, required=True, metavar="FILE.gif|FILE.mp4",
                   help="animation to write: .gif (loops) or .mp4 (needs vslerp[video]); its "
                   "sidecar FILE.gif.json / FILE.mp4.json goes beside it")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing --out (default: refused)")
    _add_render_options(p)
    _add_model_options(p)
    p._negative_number_matcher = NEGATIVE_VALUES
    p.set_defaults(func=run_animate)


# -- checks (cheap, before any model is loaded) ---------------------------------------------
def _image_ref(name: str, text: str, allow_prompt: bool, base: Path | None = None) -> dict:
    """SOURCE/TARGET → {"kind": "image", "path", "sha256"} or {"kind": "prompt", "prompt"}."""
    from PIL import Image

    from vslerp.pipelines.inputs import check_prompt, image_path_or_prompt

    if text is None or not str(text).strip():
        raise CLIError(f"{name} is missing or empty")
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
        shown = path if path is not None else _short(str(text))
        raise CLIError(f"{name} image not found: {shown}")
    try:
        check_prompt(name, str(text))
    except ValueError as err:
        raise CLIError(str(err)) from None
    return {"kind": "prompt", "prompt": str(text)}


def _short(text: str, limit: int = 60) -> str:
    """``text`` for a one-line message: repr'd (newlines, NULs visible), at most ``limit``."""
    shown = repr(text)
    return shown if len(shown) <= limit else f"{shown[:limit - 1]}…"


def _check_place(path: Path, what: str, folder: bool = False) -> None:
    """``vslerp.stats.check_writable`` (probed before any model loads), as one CLI line."""
    from vslerp.stats import check_writable

    try:
        check_writable(Path(path).expanduser(), folder=folder)
    except ValueError as err:
        raise CLIError(f"{what}: {err}") from None


def _check_main_output(path: Path, overwrite: bool, what: str = "--out") -> None:
    """The commit point of a render: refused if it exists (unless ``overwrite``)."""
    _check_place(path, what)
    if path.exists() and not overwrite:
        raise CLIError(f"output {path} exists (pass --overwrite to replace it)")


def _refuse_inputs(outputs: dict, inputs: dict) -> None:
    """An output never replaces a file the run reads (``vslerp.stats.refuse_overwriting_inputs``)."""
    from vslerp.stats import refuse_overwriting_inputs

    try:
        refuse_overwriting_inputs(outputs, inputs)
    except ValueError as err:
        raise CLIError(str(err)) from None


def _own(*files, folders=()):
    """Hold ``vslerp.stats.output_lock`` on the outputs for the whole run (a second run on them
    fails at once, naming the output) and remove what a killed run left of the files after
    the first (its sidecar): the lock's own cleanup covers the first file and the folders.
    One lock per output: the first file stands for the files written beside it."""
    import contextlib

    from vslerp.stats import output_lock
    from vslerp.stats.outputs import remove_stale_temporaries

    @contextlib.contextmanager
    def owned():
        with output_lock(*files[:1], folders=tuple(f for f in folders if f is not None)):
            for other in files[1:]:
                remove_stale_temporaries(other)
            yield

    return owned()


def _check_limits(settings: dict, cells: int, where: str = "") -> None:
    """``--size`` by the model's rule and the caps of :mod:`vslerp.pipelines.limits`, before
    any model loads (``--max-size``/``--max-cells`` lift them)."""
    factor, fixed = limits.size_rule(settings["model"])
    try:
        if settings["size"] is not None:
            limits.check_size("size", settings["size"], factor=factor, fixed=fixed,
                              max_size=settings["max_size"], lift="--max-size ")
        limits.check_cells(cells, max_cells=settings["max_cells"], lift="--max-cells ",
                           what="cells (θ × α)")
    except ValueError as err:
        raise CLIError(f"{where}{err}" if where else f"--{err}" if str(err).startswith("size")
                       else str(err)) from None


def _check_stale_sidecar(path: Path) -> None:
    """A sidecar whose main output does not exist is left by an interrupted render: it is
    replaced. Refused only if it is not a JSON object (not a sidecar at all)."""
    if path.is_dir():
        raise CLIError(f"sidecar {path} is a folder")
    if not path.exists():
        return
    try:
        ok = isinstance(json.loads(path.read_text(encoding="utf-8")), dict)
    except (OSError, ValueError):
        ok = False
    if not ok:
        raise CLIError(f"{path} exists and is not a vslerp sidecar (pass --overwrite to replace "
                       "it)")


def _check_cells(cells: list[Path], out: Path) -> None:
    """Existing cells are replaced when they are stale: written by an interrupted render
    whose grid PNG does not exist. Cells of another grid that exists are refused."""
    from vslerp.ui.outputs import read_png_metadata

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


def _values(text, name: str, default: str) -> list[float]:
    from vslerp.ui.outputs import parse_values

    if text is None:
        text = default
    if isinstance(text, (list, tuple)):
        if not text:
            raise CLIError(f"{name}: empty list of values")
        bad = [v for v in text if isinstance(v, bool) or not isinstance(v, (int, float))
               or not math.isfinite(v)]
        if bad:
            raise CLIError(f"{name} must be finite numbers, got {json.dumps(bad[0])}")
        from vslerp._checks import check_magnitude

        try:
            check_magnitude(name.rstrip("s"), text)
        except ValueError as err:
            raise CLIError(f"{name}: {err}") from None
        return [float(v) for v in text]
    if isinstance(text, bool):
        raise CLIError(f"{name} must be numbers, got {json.dumps(text)}")
    try:
        return parse_values(str(text), name)
    except ValueError as err:
        raise CLIError(f"--{err}" if not str(err).startswith("--") else str(err)) from None


def _check_thetas(thetas, allow_extrapolation: bool, where: str = "--thetas") -> None:
    outside = [t for t in thetas if not 0.0 <= t <= 1.0]
    if outside and not allow_extrapolation:
        raise CLIError(f"{where}: θ={outside[0]:g} is outside [0, 1] "
                       "(pass --allow-extrapolation to extrapolate)")


def _check_device(device):
    """``--device`` → torch.device (or None: automatic); a one-line error for a bad or absent one."""
    if device is None:
        return None
    from vslerp.stats.encode import parse_device

    try:
        return parse_device(device)
    except (ValueError, TypeError) as err:
        raise CLIError(f"--{err}") from None


def _effective_dtype(dtype: str | None, device) -> str:
    """The dtype a pipeline loaded with these options gets (the pipeline's default rule)."""
    if dtype:
        return dtype
    from vslerp.stats.encode import default_device

    return "float16" if (device or default_device()).type == "cuda" else "float32"


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def _looks_like_folder(ident: str) -> bool:
    """A path rather than a hub id (``org/name``)."""
    return (ident.startswith(("/", "./", "../", "~", ".\\")) or ident.count("/") > 1
            or "\\" in ident or not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", ident))


def _check_model_source(ident, option: str, origin: str = "") -> None:
    """A local --model/--prior folder must exist and hold the right kind of pipeline."""
    if ident is None:
        return
    accepted, what = ((_PRIOR_CLASSES, "Kandinsky 2.2 prior") if option == "--prior" else
                      (_DECODER_CLASSES, "Kandinsky 2.2 decoder (or unCLIP)"))
    path = Path(str(ident)).expanduser()
    if path.is_file():
        raise CLIError(f"{option} {ident} is a file, not a model folder{origin}")
    if path.is_dir():
        index = path / "model_index.json"
        if not index.is_file():
            raise CLIError(f"{option} {ident}: the folder exists but is not a {what} folder "
                           f"(no model_index.json){origin}")
        try:
            name = json.loads(index.read_text(encoding="utf-8")).get("_class_name")
        except (OSError, ValueError, AttributeError):
            raise CLIError(f"{option} {ident}: {index} cannot be read{origin}") from None
        if name not in accepted:
            raise CLIError(f"{option} {ident}: the folder holds {_CLASS_NAMES.get(name, name)} "
                           f"({name}), not a {what}{origin}")
        return
    if _looks_like_folder(str(ident)):
        raise CLIError(f"{option} {ident}: no such folder{origin}")
    # else a hub id: found (or not) when loading


def _load_failure(ident: str, detail: str) -> str:
    """Why loading ``ident`` failed, in words (it passed :func:`_check_model_source`)."""
    if Path(ident).expanduser().is_dir():
        return detail  # a folder of the right kind that the loader refused: its own reason
    if _offline():
        return ("not a local folder, and not in the Hugging Face cache (HF_HUB_OFFLINE is set: "
                "no downloads)")
    return f"not a local folder, and the Hugging Face hub could not provide it ({detail})"


def _load_stats(path: Path | None, origin: str = ""):
    if path is None:
        return None
    import vslerp.stats

    if path.is_dir():
        raise CLIError(f"--stats {path} is a directory, not a statistics file{origin}")
    if not path.is_file():
        raise CLIError(f"--stats file not found: {path}{origin}")
    try:
        return vslerp.stats.load(path)
    except (OSError, ValueError) as err:
        raise CLIError(f"--stats {path} cannot be read ({err})") from None


# -- the pipeline ---------------------------------------------------------------------------
def _load_pipeline(settings: dict, stats, device, progress: bool):
    """VSlerpPipeline with one-line errors naming what could not be loaded, and why."""
    import warnings

    import torch
    from diffusers.utils import logging as diffusers_logging
    from huggingface_hub.utils import logging as hub_logging
    from transformers.utils import logging as transformers_logging

    if not os.environ.get("VSLERP_LOG"):  # stderr is for errors: keep the loaders quiet
        for lib in (diffusers_logging, transformers_logging):
            lib.set_verbosity_error()
            lib.disable_progress_bar()
        hub_logging.set_verbosity_error()  # "Could not reach the Hub ... using cached" offline
    from vslerp.pipelines import VSlerpPipeline
    from vslerp.stats.hub import ModelUnavailable

    model, prior, dtype = settings["model"], settings["prior"], settings["dtype"]
    try:
        with warnings.catch_warnings(record=True) as caught:  # shown only if loading works
            warnings.simplefilter("always")
            pipe = VSlerpPipeline.from_pretrained(
                model, prior=prior, stats=stats, torch_dtype=getattr(torch, dtype) if dtype else None,
                device=device if device is not None else "auto")
    except ModelUnavailable as err:
        raise CLIError(str(err)) from err
    except (OSError, ValueError) as err:
        text = " ".join(str(err).split())
        for option, ident, kind in (("--prior", prior or _DEFAULT_PRIOR, "prior"),
                                    ("--model", model or _DEFAULT_MODEL, "decoder")):
            prefix = f"cannot load the Kandinsky 2.2 {kind} "
            if text.startswith(prefix):
                detail = text[len(prefix):].split(": ", 1)[-1]
                raise CLIError(f"cannot load {option} {ident!r}: {_load_failure(ident, detail)}"
                               ) from err
        if settings["stats"] is not None:
            raise CLIError(f"--stats {settings['stats']}: {text}") from err
        raise
    for warning in caught:
        warnings.warn_explicit(warning.message, warning.category, warning.filename,
                               warning.lineno)
    pipe.set_progress_bar_config(disable=not progress, desc="denoising")
    return pipe


def _render(pipe, source: dict, target: dict, thetas, alphas, settings: dict, callback=None):
    import torch

    def arg(ref):
        return Path(ref["path"]) if ref["kind"] == "image" else ref["prompt"]

    extra = {"callback_on_step_end": callback} if callback is not None else {}
    size = _or(settings["size"], pipe.default_size, int)
    try:
        return pipe(arg(source), arg(target), thetas=list(thetas), alphas=list(alphas),
                    num_inference_steps=int(settings["steps"]),
                    guidance_scale=_or(settings["guidance"], pipe.default_guidance_scale, float),
                    height=size, width=size,
                    generator=torch.Generator().manual_seed(int(settings["seed"])),
                    max_batch_size=int(settings["batch_size"]),
                    allow_extrapolation=bool(settings["allow_extrapolation"]),
                    prior_num_inference_steps=int(settings["prior_steps"]),
                    max_size=int(settings.get("max_size", limits.MAX_SIZE)),
                    max_cells=int(settings.get("max_cells", limits.MAX_CELLS)), **extra)
    except limits.RenderOutOfMemory as err:
        lower = limits.out_of_memory(err.height, err.width, err.batch, lower="--batch-size ",
                                     tiling=None)
        raise CLIError(str(lower)) from err


def _or(value, default, kind):
    """``value`` as ``kind``, or the model's ``default`` when not given (None)."""
    return kind(default if value is None else value)


def _model_ref(ident):
    """A local folder as an absolute path (so a sidecar works from anywhere), else the hub id."""
    if ident and Path(ident).expanduser().is_dir():
        return str(Path(ident).expanduser().resolve())
    return ident


def _metadata(command, pipe, settings: dict, source, target, out) -> dict:
    from vslerp._version import __version__

    describe = pipe.describe()
    stats_path = settings.get("stats")
    return {
        "command": command,
        "vslerp_version": __version__,
        "model": _model_ref(settings.get("model") or describe.get("decoder")),
        "prior": _model_ref(settings.get("prior") or describe.get("prior")),
        "stats": {"path": str(Path(stats_path).resolve()) if stats_path else None,
                  "fingerprint": describe.get("stats_fingerprint"),
                  "mean_source": describe.get("mean_source")},
        "dtype": settings.get("dtype"),
        "source": source, "target": target,
        "thetas": [float(t) for t in out.thetas], "alphas": [float(a) for a in out.alphas],
        "seed": int(settings["seed"]), "steps": int(settings["steps"]),
        "size": _or(settings["size"], pipe.default_size, int),
        "guidance": _or(settings["guidance"], pipe.default_guidance_scale, float),
        "prior_steps": int(settings["prior_steps"]),
        "batch_size": int(settings["batch_size"]),
        "allow_extrapolation": bool(settings.get("allow_extrapolation")),
        "labels": bool(settings.get("labels", True)),
        "conformity": [[float(c) for c in row] for row in out.conformity.tolist()],
        "pipeline": describe,
    }


def _render_settings(args, from_meta: dict | None = None) -> dict:
    """The rendering parameters: options given, else the sidecar's, else the defaults."""
    meta = from_meta or {}

    def pick(key):
        given = getattr(args, key, None)
        if given is not None:
            return given
        value = meta.get(key)
        return _DEFAULTS[key] if value is None else value

    dtype = args.dtype or meta.get("dtype")
    if dtype is not None:
        if str(dtype).lower() not in DTYPES:
            raise CLIError(f"dtype {dtype!r} is not one of float16, bfloat16, float32")
        dtype = DTYPES[str(dtype).lower()]
    stats = args.stats
    recorded = (meta.get("stats") or {}).get("path")
    if stats is None and recorded:
        stats = Path(recorded).expanduser()
        beside = Path(getattr(args, "from_", None) or ".").parent / stats
        if not stats.is_absolute() and beside.is_file():  # as the sidecar's images: beside it
            stats = beside
    settings = {
        "model": args.model or meta.get("model"), "prior": args.prior or meta.get("prior"),
        "stats": Path(stats) if stats else None, "dtype": dtype,
        "allow_extrapolation": args.allow_extrapolation or bool(meta.get("allow_extrapolation")),
        "max_size": getattr(args, "max_size", limits.MAX_SIZE),
        "max_cells": getattr(args, "max_cells", limits.MAX_CELLS),
        **{key: pick(key) for key in ("steps", "size", "seed", "guidance", "batch_size",
                                      "prior_steps")},
    }
    for key in ("steps", "size", "seed", "batch_size", "prior_steps"):
        value = settings[key]
        if value is None and key == "size":  # the model's own size
            continue
        low = 2 if key == "prior_steps" else int(key != "seed")
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise CLIError(f"--from {getattr(args, 'from_', None)}: {key} {value!r} is not a "
                           "valid integer")
    return settings


def _read_sidecar(path: Path) -> dict:
    from vslerp.ui.outputs import read_png_metadata

    if path.is_dir():
        raise CLIError(f"--from {path} is a directory, not a sidecar or PNG")
    if not path.is_file():
        raise CLIError(f"--from file not found: {path}")
    try:
        if path.suffix.lower() == ".png":
            meta = read_png_metadata(path)
        else:
            meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise CLIError(f"--from {path} cannot be read ({' '.join(str(err).split())})") from None
    if not isinstance(meta, dict):
        raise CLIError(f"--from {path} is not a vslerp sidecar (not a JSON object)")
    missing = [k for k in ("source", "target", "thetas", "alphas", "seed", "steps")
               if k not in meta]
    if missing:
        raise CLIError(f"--from {path} is not a vslerp grid sidecar (missing {missing})")
    return meta


def _from_inputs(meta: dict, from_path: Path, args) -> tuple[dict, dict]:
    """SOURCE/TARGET of a sidecar (or the files given instead), checked against its sha256."""
    from vslerp.pipelines.inputs import image_path_or_prompt

    refs, missing = {}, []
    for name, key, given in (("SOURCE", "source", args.source), ("TARGET", "target", args.target)):
        ref = meta[key]
        kind = ref.get("kind") if isinstance(ref, dict) else None
        if kind == "prompt":
            prompt = ref.get("prompt")
            if not isinstance(prompt, str) or not prompt.strip():
                raise CLIError(f"--from {from_path}: {key} prompt is missing or empty")
            if given is not None and given != prompt:
                raise CLIError(f"--from {from_path}: the {key} was the prompt {prompt!r}: drop "
                               f"{name} (for another {key}, render without --from)")
            refs[key] = {"kind": "prompt", "prompt": prompt}
            continue
        if kind != "image":
            raise CLIError(f"--from {from_path}: {key} has no kind image/prompt")
        recorded = ref.get("sha256")
        if given is None:
            recorded_path = ref.get("path")
            found = None
            if isinstance(recorded_path, str) and recorded_path:
                # relative: the editor records the upload's own file name, beside the sidecar
                found = image_path_or_prompt(recorded_path, base=from_path.parent)
            if found is None or found.kind != "image":
                missing.append((key, ref))
                continue
            given = str(found.path)
        new = _image_ref(name, given, allow_prompt=False)
        if recorded and new["sha256"] != recorded:
            raise CLIError(f"{name} image {new['path']} is not the one {from_path.name} was "
                           f"rendered with (sha256 {new['sha256'][:12]}…, recorded "
                           f"{recorded[:12]}…)")
        refs[key] = new
    if missing:
        give = "SOURCE and TARGET" if any(key == "target" for key, _ in missing) else "SOURCE"
        parts = []
        for key, ref in missing:
            path = ref.get("path")
            label = path or ref.get("name") or "no file name"
            digest = f", sha256 {ref['sha256'][:12]}…" if ref.get("sha256") else ""
            if path and Path(path).is_absolute():
                parts.append(f"{key} image not found: {path}{digest}")
            else:
                parts.append(f"{key} was an upload ({label}{digest})")
        raise CLIError(f"{from_path.name}'s {'; '.join(parts)}: give {give}")
    return refs["source"], refs["target"]


# -- grid -----------------------------------------------------------------------------------
def run_grid(args) -> int:
    from vslerp.ui.outputs import sidecar_path

    meta, origin = None, ""
    if args.from_ is not None:
        meta = _read_sidecar(args.from_)
        origin = f" (recorded in {args.from_.name})"
        source, target = _from_inputs(meta, args.from_, args)
        thetas = _values(args.thetas if args.thetas is not None else meta["thetas"], "thetas", "")
        alphas = _values(args.alphas if args.alphas is not None else meta["alphas"], "alphas", "")
        labels = bool(meta.get("labels", True)) and not args.no_labels
    else:
        if args.source is None or args.target is None:
            raise CLIError("grid needs SOURCE and TARGET (or --from SIDECAR)")
        thetas = _values(args.thetas, "thetas", "0:1:5")
        alphas = _values(args.alphas, "alphas", "-2:2:5")
        source = _image_ref("SOURCE", args.source, allow_prompt=False)
        target = _image_ref("TARGET", args.target, allow_prompt=True)
        labels = not args.no_labels
    settings = _render_settings(args, meta)
    _check_thetas(thetas, settings["allow_extrapolation"])
    _check_limits(settings, len(thetas) * len(alphas))
    if args.out.suffix.lower() != ".png":
        raise CLIError(f"--out must be a .png file, got {args.out}")
    sidecar = sidecar_path(args.out)
    cells = []
    if args.cells_dir is not None:
        cells = [args.cells_dir / f"r{r:02d}_c{c:02d}.png"
                 for r in range(len(thetas)) for c in range(len(alphas))]
    _refuse_inputs({"--out": args.out, "the sidecar": sidecar,
                    **{f"--cells-dir cell {path.name}": path for path in cells}},
                   {"SOURCE": source.get("path"), "TARGET": target.get("path"),
                    "--from": args.from_, "--stats": settings["stats"]})
    _check_main_output(args.out, args.overwrite)
    if not args.overwrite:
        _check_stale_sidecar(sidecar)
    if args.cells_dir is not None:
        _check_place(args.cells_dir, "--cells-dir", folder=True)
        if not args.overwrite:
            _check_cells(cells, args.out)
    device = _check_device(args.device)
    model_origin = origin if args.model is None else ""
    _check_model_source(settings["model"], "--model", model_origin)
    _check_model_source(settings["prior"], "--prior", origin if args.prior is None else "")
    stats = _load_stats(settings["stats"], origin if args.stats is None else "")
    with _own(args.out, sidecar, folders=(args.cells_dir,)):
        # owned now: checked again, as another run may have finished in between
        _check_main_output(args.out, args.overwrite)
        if cells and not args.overwrite:
            _check_cells(cells, args.out)
        return _grid(args, meta, settings, stats, device, source, target, thetas, alphas,
                     labels, sidecar, cells)


def _grid(args, meta, settings, stats, device, source, target, thetas, alphas, labels, sidecar,
          cells) -> int:
    from vslerp.ui.outputs import make_grid, save_png

    pipe = _load_pipeline(settings, stats, device, progress=not args.no_progress)
    expected = ((meta or {}).get("stats") or {}).get("fingerprint")
    if expected and pipe.describe().get("stats_fingerprint") != expected:
        raise CLIError(f"--from {args.from_}: the image-mean statistics differ from the ones it "
                       f"was rendered with (fingerprint {expected[:12]}…)")
    out = _render(pipe, source, target, thetas, alphas, settings)
    metadata = _metadata("grid", pipe, {**settings, "labels": labels}, source, target, out)
    grid = make_grid(out.images, out.thetas, out.alphas, labels=labels)
    owner = str(args.out.resolve())
    for i, path in enumerate(cells):  # cells first, the sidecar, then the grid: the commit point
        r, c = divmod(i, len(alphas))
        cell = {"row": r, "col": c, "theta": out.thetas[r], "alpha": out.alphas[c]}
        save_png(out.images[i], path, {**metadata, "grid": owner, "cell": cell}, overwrite=True,
                 sidecar=False)
    save_png(grid, args.out, metadata, overwrite=args.overwrite)
    print(f"wrote {args.out} ({len(thetas)}×{len(alphas)} cells, {grid.size[0]}×{grid.size[1]} px)"
          f" and {sidecar}" + (f", cells in {args.cells_dir}" if cells else ""))
    return 0


# -- animate --------------------------------------------------------------------------------
def run_animate(args) -> int:
    from vslerp.ui.outputs import check_fps, sidecar_path

    if args.out.suffix.lower() not in (".gif", ".mp4"):
        raise CLIError(f"--out must end in .gif or .mp4, got {args.out}")
    try:
        check_fps(args.fps, args.out.suffix, name="--fps")
        n = limits.check_frames(args.frames, max_frames=args.max_frames)
    except ValueError as err:
        raise CLIError(str(err)) from None
    source = _image_ref("SOURCE", args.source, allow_prompt=False)
    target = _image_ref("TARGET", args.target, allow_prompt=True)
    settings = _render_settings(args)
    settings["max_cells"] = max(settings["max_cells"], n)  # the frames' own limit applies
    _check_limits(settings, n)
    thetas = [i / (n - 1) for i in range(n)]
    sidecar = sidecar_path(args.out)
    _refuse_inputs({"--out": args.out, "the sidecar": sidecar},
                   {"SOURCE": source.get("path"), "TARGET": target.get("path"),
                    "--stats": settings["stats"]})
    _check_main_output(args.out, args.overwrite)
    if not args.overwrite:
        _check_stale_sidecar(sidecar)
    if args.out.suffix.lower() == ".mp4":
        try:
            import imageio_ffmpeg

            imageio_ffmpeg.get_ffmpeg_exe()
        except (ImportError, RuntimeError) as err:
            raise CLIError(f"MP4 needs imageio-ffmpeg (pip install 'vslerp[video]'): {err}"
                           ) from None
    device = _check_device(args.device)
    _check_model_source(settings["model"], "--model")
    _check_model_source(settings["prior"], "--prior")
    stats = _load_stats(settings["stats"])
    with _own(args.out, sidecar):
        _check_main_output(args.out, args.overwrite)  # owned now: checked again
        return _animate(args, settings, stats, device, source, target, thetas, sidecar)


def _animate(args, settings, stats, device, source, target, thetas, sidecar) -> int:
    from vslerp.ui.outputs import save_animation, save_json

    n = len(thetas)
    pipe = _load_pipeline(settings, stats, device, progress=not args.no_progress)
    out = _render(pipe, source, target, thetas, [args.alpha], settings)
    metadata = _metadata("animate", pipe, settings, source, target, out)
    metadata.update(frames=n, fps=args.fps, pingpong=bool(args.pingpong))
    save_json(metadata, sidecar, overwrite=True)  # the sidecar first, the animation last
    save_animation(out.images, args.out, fps=args.fps, pingpong=args.pingpong,
                   overwrite=args.overwrite)
    print(f"wrote {args.out} ({n} frames{' ping-pong' if args.pingpong else ''}) and {sidecar}")
    return 0
