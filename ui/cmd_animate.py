"""`vslerp animate`: a path through keyframes (vSLERP segments, paper Eq. 12) as a GIF or an MP4.

The frames are one batched render of their cells (:func:`vslerp.ui.render.render_path`); the
animation is written first and its sidecar (``FILE.gif.json`` / ``FILE.mp4.json``,
:mod:`vslerp.ui.sidecar`) last, as a grid's: a failed write (a full disk) leaves neither.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import replace
from pathlib import Path

from vslerp.defaults import MAX_FRAMES
from vslerp.ui.cli import CLIError
from vslerp.ui.options import (
    add_backend_options,
    add_model_options,
    add_render_options,
    finite_float,
    positive_int,
)

__all__ = ["ANIMATE_DESCRIPTION", "register", "run_animate"]

ANIMATE_DESCRIPTION = """\
Render the path SOURCE → TARGET (→ MORE …) as a looping GIF or an H.264 MP4
(imageio-ffmpeg's bundled ffmpeg): one vSLERP segment (paper Eq. 12) from each
keyframe to the next, --frames per segment evenly spaced in θ (--ease cosine
slows down at the keyframes), --loop back to SOURCE; α fixed or ramped across
the animation (--alpha 0:1). A frame at a keyframe is that keyframe's own render.
The parameters go to FILE.gif.json / FILE.mp4.json.

examples:
  vslerp animate cat.png dog.png --alpha 1 --frames 24 --pingpong --out path.gif
  vslerp animate cat.png dog.png "a red flower" --loop --ease cosine --alpha 0:1 --out tour.gif
"""


def register(subparsers) -> None:
    p = subparsers.add_parser("animate", help="render the path θ = 0 → 1 as a GIF or an MP4",
                              formatter_class=argparse.RawDescriptionHelpFormatter,
                              description=ANIMATE_DESCRIPTION)
    p.add_argument("source", metavar="SOURCE", help="source image")
    p.add_argument("target", metavar="TARGET", help="target image or a prompt")
    p.add_argument("more", nargs="*", metavar="MORE", help="further keyframes, images or prompts, in order")
    p.add_argument("--alpha", type=alpha_ramp, default=(0.0, 0.0), metavar="A[:B]",
                   help="α of every frame, or A:B ramped from the first frame to the last; 0 is plain "
                   "SLERP (default: 0)")
    p.add_argument("--frames", type=positive_int, default=24, metavar="N",
                   help="frames of each segment from θ=0 to θ=1, both included (neighbouring "
                   "segments share their keyframe): at least 2 (default: 24)")
    p.add_argument("--loop", action="store_true",
                   help="a last segment back to SOURCE (its final frame, SOURCE again, left out)")
    p.add_argument("--ease", choices=("linear", "cosine"), default="linear",
                   help="θ of a segment's frames: evenly spaced, or (1 − cos πθ)/2 (default: linear)")
    p.add_argument("--max-frames", type=positive_int, default=None, metavar="N",
                   help=f"most --frames accepted (default: {MAX_FRAMES})")
    p.add_argument("--fps", type=finite_float, default=8.0, metavar="FPS",
                   help="frames per second: GIF stores delays in 1/100 s, so 0.01 < FPS ≤ 50 "
                   "(exact where 100/FPS is an integer); MP4 0.1 ≤ FPS ≤ 240 (default: 8)")
    p.add_argument("--pingpong", action="store_true",
                   help="append the way back, without repeating the ends (default: one way)")
    p.add_argument("--out", type=Path, required=True, metavar="FILE.gif|FILE.mp4",
                   help="animation to write: .gif (loops) or .mp4 (needs vslerp[video]); its "
                   "sidecar FILE.gif.json / FILE.mp4.json goes beside it")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing --out (default: refused)")
    add_render_options(p)
    add_model_options(p)
    add_backend_options(p)
    p.set_defaults(func=run_animate)


def alpha_ramp(text: str) -> tuple[float, float]:
    """argparse type of --alpha: ``A`` (constant) or ``A:B`` (from the first frame to the last)."""
    parts = str(text).split(":")
    if len(parts) > 2:
        raise argparse.ArgumentTypeError(f"must be A or A:B, got {text!r}")
    values = tuple(finite_float(part) for part in parts)
    return values if len(values) == 2 else (values[0], values[0])


def path_frames(keyframes: int, frames: int, loop: bool, ease: str, alphas: tuple[float, float]) -> list:
    """The frames ``(k, θ, α)`` of a path through ``keyframes`` (segment k from keyframe k to k + 1,
    the last one back to 0 with ``loop``): ``frames`` per segment including both ends, a keyframe
    shared by its two segments, α from ``alphas[0]`` at the first frame to ``alphas[1]`` at the last."""
    segments = keyframes if loop else keyframes - 1
    steps = [j / (frames - 1) for j in range(frames - 1)]
    if ease == "cosine":
        steps = [(1 - math.cos(math.pi * t)) / 2 for t in steps]
    path = [(k, t) for k in range(segments) for t in steps] + ([] if loop else [(segments - 1, 1.0)])
    last = max(len(path) - 1, 1)
    start, stop = alphas
    return [(k, t, start + (stop - start) * i / last if start != stop else start) for i, (k, t) in enumerate(path)]


def run_animate(args) -> int:
    from vslerp.pipelines import limits
    from vslerp.ui.checks import (
        FLAGS,
        check_main_output,
        check_outputs_of,
        check_request,
        image_ref,
        own,
        preflight,
    )
    from vslerp.ui.images import check_fps, sidecar_path
    from vslerp.ui.render import tiny_random_args
    from vslerp.ui.sidecar import spec_from_options

    if args.out.suffix.lower() not in (".gif", ".mp4"):
        raise CLIError(f"--out must end in .gif or .mp4, got {args.out}")
    try:
        check_fps(args.fps, args.out.suffix, name="--fps")
        n = limits.check_frames(args.frames, max_frames=args.max_frames or limits.MAX_FRAMES)
    except ValueError as err:
        raise CLIError(str(err)) from None
    tiny_random_args(args)
    source = image_ref("SOURCE", args.source, allow_prompt=False)
    keyframes = [source, image_ref("TARGET", args.target, allow_prompt=True),
                 *(image_ref(f"MORE {k + 1}", text, allow_prompt=True) for k, text in enumerate(args.more))]
    frames = path_frames(len(keyframes), n, args.loop, args.ease, args.alpha)
    try:
        limits.check_frames(len(frames), max_frames=args.max_frames or limits.MAX_FRAMES, name="the path's frames")
    except ValueError as err:
        raise CLIError(str(err)) from None
    target = next((ref for ref in keyframes if ref["kind"] == "prompt"), keyframes[1])  # for the checks
    spec = replace(spec_from_options(args), source=source, target=target, inputs=tuple(keyframes),
                   thetas=tuple(t for _, t, _ in frames), alphas=tuple(dict.fromkeys(args.alpha)))
    max_cells = max(args.max_cells or limits.MAX_CELLS, len(frames) * len(spec.alphas))  # the frames' own limit
    check_request(spec, args.max_size, max_cells, flags={**FLAGS, "alphas": "--alpha"})
    sidecar = sidecar_path(args.out)

    def check_outputs():
        check_outputs_of(args.out, sidecar, args.overwrite)
        if args.out.suffix.lower() == ".mp4":
            try:
                import imageio_ffmpeg

                imageio_ffmpeg.get_ffmpeg_exe()
            except (ImportError, RuntimeError) as err:
                raise CLIError(f"MP4 needs imageio-ffmpeg (pip install 'vslerp[video]'): {err}") from None

    names = ["SOURCE", "TARGET", *(f"MORE {k + 1}" for k in range(len(args.more)))]
    stats = preflight([spec], {"--out": args.out, "the sidecar": sidecar},
                      {**{name: ref.get("path") for name, ref in zip(names, keyframes, strict=True)},
                       "--stats": spec.stats}, check_outputs)
    with own(args.out, sidecar):
        check_main_output(args.out, args.overwrite)  # owned now: checked again
        return _animate(args, spec, stats, frames, sidecar)


def _animate(args, spec, stats, frames, sidecar_file) -> int:
    import torch

    from vslerp.pipelines import VSlerpPipelineOutput
    from vslerp.ui.images import save_animation
    from vslerp.ui.render import cli_pipeline, render_path, tiny_random_record
    from vslerp.ui.sidecar import sidecar

    with cli_pipeline(args, spec, stats) as pipe:
        cells = render_path(pipe, spec, frames)
    ramp = len(spec.alphas) > 1
    out = VSlerpPipelineOutput(  # the frames as one column: θ (and α) per frame
        images=[cell.images[0] for cell in cells], embeddings=torch.cat([cell.embeddings[0] for cell in cells]),
        thetas=[t for _, t, _ in frames], alphas=[a for _, _, a in frames] if ramp else list(spec.alphas),
        conformity=torch.stack([cell.conformity[0, 0] for cell in cells])[:, None])
    metadata = sidecar(spec, pipe, out, "animate", frames=len(frames), fps=args.fps, pingpong=bool(args.pingpong),
                       segments=[k for k, _, _ in frames], loop=bool(args.loop), ease=args.ease,
                       **tiny_random_record(args))
    save_animation(out.images, args.out, fps=args.fps, pingpong=args.pingpong,  # then the sidecar
                   overwrite=args.overwrite, metadata=metadata)
    print(f"wrote {args.out} ({len(frames)} frames{' ping-pong' if args.pingpong else ''}) "
          f"and {sidecar_file}")
    return 0
