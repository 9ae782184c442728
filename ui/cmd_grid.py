"""`vslerp grid`, `vslerp animate`, `vslerp batch`: θ × α grids and interpolation paths.

A grid has one row per θ (how far from SOURCE towards TARGET) and one column per α (how far
the interpolation is pulled towards the image mean: vSLERP, paper Eq. 12), like paper Fig. 12.
Every output carries what it takes to render it again (a ``.json`` sidecar and a PNG text
chunk); ``vslerp grid --from grid.json`` renders the same image again.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
from pathlib import Path

from vslerp.ui.cli import CLIError

__all__ = ["register", "run_animate", "run_batch", "run_grid"]

_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
_DTYPES = {"float16": "float16", "fp16": "float16", "bfloat16": "bfloat16", "bf16": "bfloat16",
           "float32": "float32", "fp32": "float32"}
_DEFAULT_MODEL = "kandinsky-community/kandinsky-2-2-decoder"
_DEFAULT_PRIOR = "kandinsky-community/kandinsky-2-2-prior"


# -- argument helpers ---------------------------------------------------------------------
def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be ≥ 1, got {value}")
    return value


def _size(text: str) -> int:
    value = _positive(text)
    if value % 8:
        raise argparse.ArgumentTypeError(f"must be a multiple of 8, got {value}")
    return value


def _add_model_options(p) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", default=None, metavar="DIR|ID",
                   help=f"Kandinsky 2.2 decoder repo or folder (default {_DEFAULT_MODEL}) or a "
                   "folder saved by VSlerpPipeline.save_pretrained")
    g.add_argument("--prior", default=None, metavar="DIR|ID",
                   help=f"Kandinsky 2.2 prior repo or folder (default {_DEFAULT_PRIOR})")
    g.add_argument("--stats", type=Path, default=None, metavar="FILE.safetensors",
                   help="statistics file from `vslerp stats compute` for the image mean "
                   "(default: the prior's own clip_mean)")
    g.add_argument("--dtype", choices=sorted(_DTYPES), default=None,
                   help="model dtype (default: float16 on CUDA, else float32)")
    g.add_argument("--device", default=None,
                   help="cuda, cuda:1, mps or cpu (default: automatic; per process under "
                   "accelerate launch)")
    g.add_argument("--batch-size", type=_positive, default=8,
                   help="cells denoised together (8); lower it if memory runs out")


def _add_render_options(p, steps_default=50, size_default=512) -> None:
    g = p.add_argument_group("rendering")
    g.add_argument("--steps", type=_positive, default=None,
                   help=f"denoising steps ({steps_default})")
    g.add_argument("--size", type=_size, default=None,
                   help=f"image side in pixels, a multiple of 8 ({size_default})")
    g.add_argument("--seed", type=int, default=None,
                   help="noise seed shared by every cell (0)")
    g.add_argument("--guidance", type=float, default=None, help="guidance scale (4.0)")
    g.add_argument("--allow-extrapolation", action="store_true",
                   help="allow θ outside [0, 1]")


# Value lists and ranges that start with a minus ("-2:2:5", "-1,0,1") are values, not options.
_NEGATIVE_VALUES = re.compile(r"^-\.?\d[\d.,:eE+-]*$")


def register(subparsers) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    p = subparsers.add_parser(
        "grid", help="render a labelled θ × α grid (paper Fig. 12)", formatter_class=fmt,
        description=__doc__ + "\nexample:\n  vslerp grid cat.png 'a watercolor painting' "
        "--thetas 0,0.25,0.5 --alphas -2:2:5 --out grid.png\n  vslerp grid --from grid.json "
        "--out again.png")
    p.add_argument("source", nargs="?", metavar="SOURCE", help="source image path")
    p.add_argument("target", nargs="?", metavar="TARGET",
                   help="target image path (if the file exists or the text looks like an image "
                   "path) or a prompt")
    p.add_argument("--thetas", default=None,
                   help="θ values: '0,0.25,0.5' or start:stop:count (default 0:1:5)")
    p.add_argument("--alphas", default=None,
                   help="α values: '-2,0,2' or start:stop:count (default -2:2:5)")
    p.add_argument("--out", type=Path, required=True, metavar="FILE.png",
                   help="grid PNG to write (its .json sidecar goes beside it)")
    p.add_argument("--cells-dir", type=Path, default=None, metavar="DIR",
                   help="also write each cell as DIR/rRR_cCC.png")
    p.add_argument("--no-labels", action="store_true", help="no θ/α labels on the axes")
    p.add_argument("--from", dest="from_", type=Path, default=None, metavar="SIDECAR",
                   help="re-render from a sidecar .json (or a grid PNG): every parameter comes "
                   "from it (options given here override it); needs --out")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    _add_render_options(p)
    _add_model_options(p)
    p._negative_number_matcher = _NEGATIVE_VALUES
    p.set_defaults(func=run_grid)

    p = subparsers.add_parser(
        "animate", help="render an interpolation path θ = 0 → 1 as GIF or MP4",
        formatter_class=fmt,
        description="Frames along θ from 0 to 1 at a fixed α (vSLERP, paper Eq. 12), written "
        "as a looping GIF or an H.264 MP4 (imageio-ffmpeg's bundled ffmpeg), plus a .json "
        "sidecar.\n\nexample:\n  vslerp animate cat.png dog.png --alpha 1 --frames 24 --out "
        "path.gif --pingpong")
    p.add_argument("source", metavar="SOURCE", help="source image path")
    p.add_argument("target", metavar="TARGET", help="target image path or a prompt")
    p.add_argument("--alpha", type=float, default=0.0, help="α of every frame (0: plain SLERP)")
    p.add_argument("--frames", type=_positive, default=24, help="frames from θ=0 to θ=1 (24)")
    p.add_argument("--fps", type=float, default=8.0, help="frames per second (8)")
    p.add_argument("--pingpong", action="store_true", help="loop back and forth")
    p.add_argument("--out", type=Path, required=True, metavar="FILE.gif|FILE.mp4")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    _add_render_options(p)
    _add_model_options(p)
    p._negative_number_matcher = _NEGATIVE_VALUES
    p.set_defaults(func=run_animate)

    p = subparsers.add_parser(
        "batch", help="render many grids from a JSONL file, models loaded once",
        formatter_class=fmt,
        description="One job a line of JOBS.jsonl: {\"source\": \"a.png\", \"target\": \"a "
        "prompt or b.png\", \"thetas\": \"0:1:3\", \"alphas\": [-1, 0, 1], \"seed\": 0} with "
        "optional \"name\", \"steps\", \"size\", \"guidance\". Relative paths are relative to the "
        "JSONL file. Each job writes OUT_DIR/NAME.png + NAME.json (NAME defaults to jobNNNN); "
        "jobs whose outputs exist are skipped, so a stopped batch resumes. Under `accelerate "
        "launch --num_processes N` the jobs are split across the processes.\n\nexample:\n"
        "  vslerp batch jobs.jsonl --out-dir grids/\n"
        "  accelerate launch --num_processes 4 $(which vslerp) batch jobs.jsonl --out-dir grids/")
    p.add_argument("jobs", type=Path, metavar="JOBS.jsonl")
    p.add_argument("--out-dir", type=Path, required=True, metavar="DIR")
    p.add_argument("--no-labels", action="store_true", help="no θ/α labels on the axes")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    _add_render_options(p)
    _add_model_options(p)
    p.set_defaults(func=run_batch)


# -- checks (cheap, before any model is loaded) ---------------------------------------------
def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _image_ref(name: str, text: str, allow_prompt: bool, base: Path | None = None) -> dict:
    """SOURCE/TARGET → {"kind": "image", "path", "sha256"} or {"kind": "prompt", "prompt"}."""
    from PIL import Image

    if text is None or not str(text).strip():
        raise CLIError(f"{name} is missing or empty")
    path = Path(text).expanduser()
    if base is not None and not path.is_absolute():
        path = base / path
    looks_like_path = str(text).lower().endswith(_IMAGE_SUFFIXES) and " " not in str(text).strip()
    if path.is_file():
        try:
            with Image.open(path) as im:
                im.verify()
        except Exception as err:  # PIL raises many kinds on broken files
            raise CLIError(f"{name} image {path} cannot be read ({err})") from None
        return {"kind": "image", "path": str(path.resolve()), "sha256": _sha256(path)}
    if path.exists():
        raise CLIError(f"{name} {path} is not a file")
    if looks_like_path or not allow_prompt:
        raise CLIError(f"{name} image not found: {path}")
    return {"kind": "prompt", "prompt": str(text)}


def _check_new(path: Path, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise CLIError(f"output {path} exists (pass --overwrite to replace it)")
    if path.is_dir():
        raise CLIError(f"output {path} is a folder")


def _values(text, name: str, default: str) -> list[float]:
    from vslerp.ui.outputs import parse_values

    if text is None:
        text = default
    if isinstance(text, (list, tuple)):
        try:
            values = [float(v) for v in text]
        except (TypeError, ValueError):
            raise CLIError(f"{name} must be numbers, got {text!r}") from None
        if not values:
            raise CLIError(f"{name}: empty list of values")
        return values
    try:
        return parse_values(str(text), name)
    except ValueError as err:
        raise CLIError(f"--{err}" if not str(err).startswith("--") else str(err)) from None


def _check_thetas(thetas, allow_extrapolation: bool, where: str = "--thetas") -> None:
    outside = [t for t in thetas if not 0.0 <= t <= 1.0]
    if outside and not allow_extrapolation:
        raise CLIError(f"{where}: θ={outside[0]:g} is outside [0, 1] "
                       "(pass --allow-extrapolation to extrapolate)")


def _load_stats(path: Path | None):
    if path is None:
        return None
    import vslerp.stats

    if not path.is_file():
        raise CLIError(f"--stats file not found: {path}")
    try:
        return vslerp.stats.load(path)
    except (OSError, ValueError) as err:
        raise CLIError(f"--stats {path} cannot be read ({err})") from None


def _offline_hint() -> str:
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return ("no such local folder, and HF_HUB_OFFLINE is set (no downloads): not in the "
                "Hugging Face cache either")
    return "not a local folder, not in the Hugging Face cache, and the hub could not be reached"


# -- the pipeline ---------------------------------------------------------------------------
def _load_pipeline(model, prior, stats, stats_path, dtype, device):
    """VSlerpPipeline with one-line errors naming what could not be loaded."""
    import warnings

    import torch
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    if not os.environ.get("VSLERP_LOG"):  # stderr is for errors: keep the loaders quiet
        for lib in (diffusers_logging, transformers_logging):
            lib.set_verbosity_error()
            lib.disable_progress_bar()
    from vslerp.pipelines import VSlerpPipeline

    torch_dtype = getattr(torch, _DTYPES[dtype]) if dtype else None
    for name, ident in (("--model", model), ("--prior", prior)):
        if ident and Path(ident).expanduser().is_file():
            raise CLIError(f"{name} {ident} is a file, not a model folder")
    try:
        with warnings.catch_warnings(record=True) as caught:  # shown only if loading works
            warnings.simplefilter("always")
            pipe = VSlerpPipeline.from_pretrained(model, prior=prior, stats=stats,
                                                  torch_dtype=torch_dtype,
                                                  device=device if device else "auto")
    except (OSError, ValueError) as err:
        text = " ".join(str(err).split())
        if text.startswith("cannot load the Kandinsky 2.2 prior"):
            raise CLIError(f"cannot load --prior {prior or _DEFAULT_PRIOR!r}: {_offline_hint()}"
                           ) from err
        if text.startswith("cannot load the Kandinsky 2.2 decoder"):
            raise CLIError(f"cannot load --model {model or _DEFAULT_MODEL!r}: {_offline_hint()}"
                           ) from err
        if stats_path is not None:
            raise CLIError(f"--stats {stats_path}: {text}") from err
        raise
    for warning in caught:
        warnings.warn_explicit(warning.message, warning.category, warning.filename,
                               warning.lineno)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _render(pipe, source: dict, target: dict, thetas, alphas, *, seed, steps, size, guidance,
            batch_size, allow_extrapolation, callback=None):
    import torch

    def arg(ref):
        return Path(ref["path"]) if ref["kind"] == "image" else ref["prompt"]

    for ref, name in ((source, "SOURCE"), (target, "TARGET")):
        if ref["kind"] == "image" and _sha256(Path(ref["path"])) != ref["sha256"]:
            raise CLIError(f"{name} image {ref['path']} changed since the sidecar was written "
                           "(sha256 differs)")
    generator = torch.Generator().manual_seed(int(seed))
    out = pipe(arg(source), arg(target), thetas=list(thetas), alphas=list(alphas),
               num_inference_steps=int(steps), guidance_scale=float(guidance),
               height=int(size), width=int(size), generator=generator,
               max_batch_size=int(batch_size), allow_extrapolation=bool(allow_extrapolation),
               callback_on_step_end=callback)
    return out


def _model_ref(ident):
    """A local folder as an absolute path (so a sidecar works from anywhere), else the hub id."""
    if ident and Path(ident).expanduser().is_dir():
        return str(Path(ident).expanduser().resolve())
    return ident


def _metadata(command, pipe, args_like: dict, source, target, thetas, alphas, out) -> dict:
    from vslerp._version import __version__

    describe = pipe.describe()
    stats_path = args_like.get("stats")
    return {
        "command": command,
        "vslerp_version": __version__,
        "model": _model_ref(args_like.get("model") or describe.get("decoder")),
        "prior": _model_ref(args_like.get("prior") or describe.get("prior")),
        "stats": {"path": str(Path(stats_path).resolve()) if stats_path else None,
                  "fingerprint": describe.get("stats_fingerprint"),
                  "mean_source": describe.get("mean_source")},
        "dtype": args_like.get("dtype"),
        "source": source, "target": target,
        "thetas": [float(t) for t in out.thetas], "alphas": [float(a) for a in out.alphas],
        "seed": int(args_like["seed"]), "steps": int(args_like["steps"]),
        "size": int(args_like["size"]), "guidance": float(args_like["guidance"]),
        "batch_size": int(args_like["batch_size"]),
        "allow_extrapolation": bool(args_like.get("allow_extrapolation")),
        "labels": bool(args_like.get("labels", True)),
        "conformity": [[float(c) for c in row] for row in out.conformity.tolist()],
        "pipeline": describe,
    }


def _render_settings(args, from_meta: dict | None = None) -> dict:
    """The rendering parameters: explicit options, else the sidecar's, else the defaults."""
    meta = from_meta or {}
    pick = {
        "model": args.model or meta.get("model"), "prior": args.prior or meta.get("prior"),
        "stats": args.stats or ((meta.get("stats") or {}).get("path")),
        "dtype": args.dtype or meta.get("dtype"),
        "steps": args.steps or meta.get("steps") or 50,
        "size": args.size or meta.get("size") or 512,
        "seed": args.seed if args.seed is not None else meta.get("seed", 0),
        "guidance": args.guidance if args.guidance is not None else meta.get("guidance", 4.0),
        "batch_size": meta.get("batch_size", args.batch_size) if from_meta else args.batch_size,
        "allow_extrapolation": args.allow_extrapolation or meta.get("allow_extrapolation", False),
    }
    if pick["dtype"] is not None and pick["dtype"] not in _DTYPES:
        raise CLIError(f"dtype {pick['dtype']!r} is not one of {sorted(_DTYPES)}")
    if pick["stats"] is not None:
        pick["stats"] = Path(pick["stats"])
    return pick


def _read_sidecar(path: Path) -> dict:
    from vslerp.ui.outputs import read_png_metadata

    if not path.is_file():
        raise CLIError(f"--from file not found: {path}")
    try:
        if path.suffix.lower() == ".png":
            meta = read_png_metadata(path)
        else:
            meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise CLIError(f"--from {path} cannot be read ({' '.join(str(err).split())})") from None
    missing = [k for k in ("source", "target", "thetas", "alphas", "seed", "steps", "size")
               if k not in meta]
    if not isinstance(meta, dict) or missing:
        raise CLIError(f"--from {path} is not a vslerp grid sidecar (missing {missing})")
    return meta


# -- grid -----------------------------------------------------------------------------------
def run_grid(args) -> int:
    from vslerp.ui.outputs import make_grid, save_png

    meta = None
    if args.from_ is not None:
        meta = _read_sidecar(args.from_)
        if args.source or args.target or args.thetas or args.alphas:
            raise CLIError("--from takes every parameter from the sidecar: drop SOURCE, TARGET, "
                           "--thetas and --alphas")
        source, target = meta["source"], meta["target"]
        for ref, name in ((source, "SOURCE"), (target, "TARGET")):
            if ref.get("kind") == "image":
                if not Path(ref["path"]).is_file():
                    raise CLIError(f"{name} image not found: {ref['path']} (from {args.from_})")
            elif ref.get("kind") != "prompt":
                raise CLIError(f"--from {args.from_}: {name} has no kind image/prompt")
        thetas = _values(meta["thetas"], "thetas", "")
        alphas = _values(meta["alphas"], "alphas", "")
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
    if args.out.suffix.lower() != ".png":
        raise CLIError(f"--out must be a .png file, got {args.out}")
    _check_new(args.out, args.overwrite)
    _check_new(args.out.with_suffix(".json"), args.overwrite)
    cells = []
    if args.cells_dir is not None:
        cells = [args.cells_dir / f"r{r:02d}_c{c:02d}.png"
                 for r in range(len(thetas)) for c in range(len(alphas))]
        for path in cells:
            _check_new(path, args.overwrite)
    stats = _load_stats(settings["stats"])
    pipe = _load_pipeline(settings["model"], settings["prior"], stats, settings["stats"],
                          settings["dtype"], args.device)
    expected = ((meta or {}).get("stats") or {}).get("fingerprint")
    if expected and pipe.describe().get("stats_fingerprint") != expected:
        raise CLIError(f"--from {args.from_}: the image-mean statistics differ from the ones it "
                       f"was rendered with (fingerprint {expected[:12]}…)")
    out = _render(pipe, source, target, thetas, alphas, seed=settings["seed"],
                  steps=settings["steps"], size=settings["size"], guidance=settings["guidance"],
                  batch_size=settings["batch_size"],
                  allow_extrapolation=settings["allow_extrapolation"])
    metadata = _metadata("grid", pipe, {**settings, "labels": labels}, source, target,
                         thetas, alphas, out)
    for i, path in enumerate(cells):
        r, c = divmod(i, len(alphas))
        save_png(out.images[i], path, {**metadata, "cell": {"row": r, "col": c,
                                                           "theta": out.thetas[r],
                                                           "alpha": out.alphas[c]}},
                 overwrite=args.overwrite, sidecar=False)
    grid = make_grid(out.images, out.thetas, out.alphas, labels=labels)
    save_png(grid, args.out, metadata, overwrite=args.overwrite)
    print(f"wrote {args.out} ({len(thetas)}×{len(alphas)} cells, {grid.size[0]}×{grid.size[1]} px)"
          f" and {args.out.with_suffix('.json')}")
    return 0


# -- animate --------------------------------------------------------------------------------
def run_animate(args) -> int:
    from vslerp.ui.outputs import save_animation, save_json

    if args.out.suffix.lower() not in (".gif", ".mp4"):
        raise CLIError(f"--out must end in .gif or .mp4, got {args.out}")
    if not args.fps > 0:
        raise CLIError(f"--fps must be > 0, got {args.fps}")
    source = _image_ref("SOURCE", args.source, allow_prompt=False)
    target = _image_ref("TARGET", args.target, allow_prompt=True)
    settings = _render_settings(args)
    n = args.frames
    thetas = [i / (n - 1) for i in range(n)] if n > 1 else [0.0]
    sidecar = args.out.with_suffix(".json")
    _check_new(args.out, args.overwrite)
    _check_new(sidecar, args.overwrite)
    if args.out.suffix.lower() == ".mp4":
        try:
            import imageio_ffmpeg

            imageio_ffmpeg.get_ffmpeg_exe()
        except (ImportError, RuntimeError) as err:
            raise CLIError(f"MP4 needs imageio-ffmpeg (pip install 'vslerp[video]'): {err}"
                           ) from None
    stats = _load_stats(settings["stats"])
    pipe = _load_pipeline(settings["model"], settings["prior"], stats, settings["stats"],
                          settings["dtype"], args.device)
    out = _render(pipe, source, target, thetas, [args.alpha], seed=settings["seed"],
                  steps=settings["steps"], size=settings["size"], guidance=settings["guidance"],
                  batch_size=settings["batch_size"],
                  allow_extrapolation=settings["allow_extrapolation"])
    metadata = _metadata("animate", pipe, settings, source, target, thetas, [args.alpha], out)
    metadata.update(frames=n, fps=args.fps, pingpong=bool(args.pingpong))
    save_animation(out.images, args.out, fps=args.fps, pingpong=args.pingpong, overwrite=True)
    save_json(metadata, sidecar, overwrite=True)
    print(f"wrote {args.out} ({n} frames{' ping-pong' if args.pingpong else ''}) and {sidecar}")
    return 0


# -- batch ----------------------------------------------------------------------------------
def _read_jobs(path: Path, args) -> list[dict]:
    """Parse and check every job (paths, ranges, names) before any model is loaded."""
    if not path.is_file():
        raise CLIError(f"jobs file not found: {path}")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise CLIError(f"jobs file {path} cannot be read ({err})") from None
    jobs, names = [], {}
    known = {"source", "target", "thetas", "alphas", "seed", "name", "steps", "size", "guidance"}
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        where = f"{path}:{number}"
        try:
            job = json.loads(line)
        except ValueError as err:
            raise CLIError(f"{where}: not valid JSON ({err})") from None
        if not isinstance(job, dict):
            raise CLIError(f"{where}: a job must be a JSON object")
        unknown = sorted(set(job) - known)
        if unknown:
            raise CLIError(f"{where}: unknown keys {unknown} (known: {sorted(known)})")
        for key in ("source", "target"):
            if key not in job:
                raise CLIError(f"{where}: missing {key!r}")
        try:
            thetas = _values(job.get("thetas"), "thetas", "0:1:5")
            alphas = _values(job.get("alphas"), "alphas", "-2:2:5")
            source = _image_ref("source", str(job["source"]), False, base=path.parent)
            target = _image_ref("target", str(job["target"]), True, base=path.parent)
            _check_thetas(thetas, args.allow_extrapolation, "thetas")
        except CLIError as err:
            raise CLIError(f"{where}: {str(err).lstrip('-')}") from None
        name = str(job.get("name") or f"job{number:04d}")
        if not name or "/" in name or "\\" in name or name.startswith("."):
            raise CLIError(f"{where}: name {name!r} must be a plain file name")
        if name in names:
            raise CLIError(f"{where}: name {name!r} already used on line {names[name]}")
        names[name] = number
        settings = {}
        for key, default, kind in (("seed", args.seed if args.seed is not None else 0, int),
                                   ("steps", args.steps or 50, int),
                                   ("size", args.size or 512, int),
                                   ("guidance", 4.0 if args.guidance is None else args.guidance,
                                    float)):
            value = job.get(key, default)
            try:
                value = kind(value)
            except (TypeError, ValueError):
                raise CLIError(f"{where}: {key} must be a number, got {value!r}") from None
            if key in ("steps", "size") and value < 1 or key == "size" and value % 8:
                raise CLIError(f"{where}: {key} must be a positive{' multiple of 8' if key == 'size' else ''}, got {value}")
            settings[key] = value
        jobs.append({"line": number, "name": name, "source": source, "target": target,
                     "thetas": thetas, "alphas": alphas, **settings})
    if not jobs:
        raise CLIError(f"jobs file {path} has no jobs")
    return jobs


def run_batch(args) -> int:
    from tqdm.auto import tqdm
    from vslerp.ui.outputs import make_grid, save_png

    jobs = _read_jobs(args.jobs, args)
    if args.out_dir.exists() and not args.out_dir.is_dir():
        raise CLIError(f"--out-dir {args.out_dir} is not a folder")
    pending = [job for job in jobs if not ((args.out_dir / f"{job['name']}.png").is_file()
                                           and (args.out_dir / f"{job['name']}.json").is_file())]
    skipped = len(jobs) - len(pending)
    stats = _load_stats(args.stats)
    if not pending:
        print(f"all {len(jobs)} jobs already rendered in {args.out_dir}")
        return 0
    import torch
    from accelerate import PartialState

    # CPU processes (gloo) when asked for, or when there is no GPU to give each process
    cpu = (args.device or "").startswith("cpu") or not torch.cuda.is_available()
    state = PartialState(cpu=cpu)
    device = args.device
    if device is None and state.num_processes > 1:
        device = str(state.device)
    show = not args.no_progress and state.is_local_main_process
    with state.split_between_processes(pending) as mine:
        mine = list(mine)
        pipe = _load_pipeline(args.model, args.prior, stats, args.stats, args.dtype, device)
        base = {"model": args.model, "prior": args.prior, "stats": args.stats,
                "dtype": args.dtype, "batch_size": args.batch_size,
                "allow_extrapolation": args.allow_extrapolation, "labels": not args.no_labels}
        cells_bar = tqdm(total=sum(len(j["thetas"]) * len(j["alphas"]) for j in mine),
                         desc="cells", unit="cell", disable=not show, position=1, leave=False)
        for job in tqdm(mine, desc=f"jobs ({skipped} done before)" if skipped else "jobs",
                        unit="job", disable=not show, position=0):
            out = _render(pipe, job["source"], job["target"], job["thetas"], job["alphas"],
                          seed=job["seed"], steps=job["steps"], size=job["size"],
                          guidance=job["guidance"], batch_size=args.batch_size,
                          allow_extrapolation=args.allow_extrapolation)
            settings = {**base, **{k: job[k] for k in ("seed", "steps", "size", "guidance")}}
            metadata = _metadata("batch", pipe, settings, job["source"], job["target"],
                                 job["thetas"], job["alphas"], out)
            metadata["name"] = job["name"]
            grid = make_grid(out.images, out.thetas, out.alphas, labels=not args.no_labels)
            save_png(grid, args.out_dir / f"{job['name']}.png", metadata, overwrite=True)
            cells_bar.update(len(out.images))
        cells_bar.close()
    print(f"rendered {len(mine)} jobs into {args.out_dir}"
          + (f" (skipped {skipped} already there)" if skipped else "")
          + (f" [process {state.process_index}/{state.num_processes}]"
             if state.num_processes > 1 else ""))
    return 0
