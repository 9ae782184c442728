"""`vslerp animate`: the path θ = 0 → 1 at one α (vSLERP, paper Eq. 12) as a GIF or an MP4.

The frames are one render (:mod:`vslerp.ui.render`) of a one-column grid; the animation is
written first and its sidecar (``FILE.gif.json`` / ``FILE.mp4.json``, :mod:`vslerp.ui.sidecar`)
last, as a grid's: a failed write (a full disk) leaves neither.
"""

from __future__ import annotations

import argparse
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
Render the path θ = 0 → 1 at one α (vSLERP, paper Eq. 12) as a looping GIF or
an H.264 MP4 (imageio-ffmpeg's bundled ffmpeg); the parameters go to
FILE.gif.json / FILE.mp4.json.

example:
  vslerp animate cat.png dog.png --alpha 1 --frames 24 --pingpong --out path.gif
"""


def register(subparsers) -> None:
    p = subparsers.add_parser("animate", help="render the path θ = 0 → 1 as a GIF or an MP4",
                              formatter_class=argparse.RawDescriptionHelpFormatter,
                              description=ANIMATE_DESCRIPTION)
    p.add_argument("source", metavar="SOURCE", help="source image")
    p.add_argument("target", metavar="TARGET", help="target image or a prompt")
    p.add_argument("--alpha", type=finite_float, default=0.0, metavar="A",
                   help="α of every frame; 0 is plain SLERP (default: 0)")
    p.add_argument("--frames", type=positive_int, default=24, metavar="N",
                   help="frames from θ=0 to θ=1, both included: at least 2 (default: 24)")
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


def run_animate(args) -> int:
    from vslerp.pipelines import limits
    from vslerp.ui.checks import (
        FLAGS,
        check_main_output,
        check_place,
        check_request,
        check_stale_sidecar,
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
    target = image_ref("TARGET", args.target, allow_prompt=True)
    spec = replace(spec_from_options(args), source=source, target=target,
                   thetas=tuple(i / (n - 1) for i in range(n)), alphas=(float(args.alpha),))
    max_cells = max(args.max_cells or limits.MAX_CELLS, n)  # the frames' own limit applies
    check_request(spec, args.max_size, max_cells, flags={**FLAGS, "alphas": "--alpha"})
    sidecar = sidecar_path(args.out)

    def check_outputs():
        check_main_output(args.out, args.overwrite)
        check_place(sidecar, "the sidecar")  # a FIFO there is refused, never read
        if not args.overwrite:
            check_stale_sidecar(sidecar)
        if args.out.suffix.lower() == ".mp4":
            try:
                import imageio_ffmpeg

                imageio_ffmpeg.get_ffmpeg_exe()
            except (ImportError, RuntimeError) as err:
                raise CLIError(f"MP4 needs imageio-ffmpeg (pip install 'vslerp[video]'): {err}") from None

    stats = preflight([spec], {"--out": args.out, "the sidecar": sidecar},
                      {"SOURCE": source.get("path"), "TARGET": target.get("path"), "--stats": spec.stats},
                      check_outputs)
    with own(args.out, sidecar):
        check_main_output(args.out, args.overwrite)  # owned now: checked again
        return _animate(args, spec, stats, max_cells, sidecar)


def _animate(args, spec, stats, max_cells: int, sidecar_file) -> int:
    from vslerp.ui.images import save_animation
    from vslerp.ui.render import cli_pipeline, render_for_cli, tiny_random_record
    from vslerp.ui.sidecar import sidecar

    with cli_pipeline(args, spec, stats) as pipe:
        out = render_for_cli(pipe, spec, max_size=args.max_size, max_cells=max_cells)
    metadata = sidecar(spec, pipe, out, "animate", frames=len(spec.thetas), fps=args.fps,
                       pingpong=bool(args.pingpong), **tiny_random_record(args))
    save_animation(out.images, args.out, fps=args.fps, pingpong=args.pingpong,  # then the sidecar
                   overwrite=args.overwrite, metadata=metadata)
    print(f"wrote {args.out} ({len(spec.thetas)} frames{' ping-pong' if args.pingpong else ''}) "
          f"and {sidecar_file}")
    return 0
