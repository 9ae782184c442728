"""`vslerp mix`: render N-way vertical mixes of images and prompts (``pipe.mix``) from the shell.

One row per ``--weights`` row, one column per α, labelled; a sidecar beside the PNG (``--from``
renders it again). Everything cheap — inputs, weights, values, model folders, outputs — is
checked before any model loads (:func:`vslerp.ui.checks.check_request`, ``preflight``).
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from vslerp.ui.cli import CLIError
from vslerp.ui.options import add_backend_options, add_model_options, add_render_options

__all__ = ["MIX_DESCRIPTION", "register", "run_mix"]

MIX_DESCRIPTION = """\
Render vmix(IN1, …, INn; w, α): the weighted spherical mean of the inputs' raw CLIP
image embeddings about α × the image mean (paper Eq. 12 for n inputs; two inputs
with weights 1-θ,θ are vslerp's θ cell). Each input is an image or a prompt (through
the model's prior). One row per --weights (default: equal weights), one column per α.
All cells share one noise seed; the PNG and its .json sidecar hold every parameter.

examples:
  vslerp mix cat.png mountains.png flower.png --weights 1,1,1 --weights 2,1,0 \\
      --alphas 0,1 --out mix.png
  vslerp mix --from mix.png --alphas 0.5 --out again.png
"""


def register(subparsers) -> None:
    p = subparsers.add_parser("mix", help="render weighted mixes of 2 to 16 images or prompts",
                              formatter_class=argparse.RawDescriptionHelpFormatter,
                              description=MIX_DESCRIPTION)
    p.add_argument("inputs", nargs="*", metavar="IN",
                   help="an image (if the file exists or the text looks like an image path) or a "
                   "prompt; 2 to 16 of them (with --from: the images the sidecar names, in order)")
    p.add_argument("--weights", action="append", default=None, metavar="W1,W2,…",
                   help="one row of weights, one per input, normalised to sum 1; repeat for more "
                   "rows (default: one row of equal weights)")
    p.add_argument("--alphas", default=None, metavar="VALUES",
                   help="α values, a comma list or start:stop:count (default: 1)")
    p.add_argument("--out", type=Path, required=True, metavar="FILE.png",
                   help="mix PNG to write; its sidecar FILE.json goes beside it")
    p.add_argument("--no-labels", action="store_true", help="no weight/α labels (default: labelled)")
    p.add_argument("--from", dest="from_", type=Path, default=None, metavar="SIDECAR",
                   help="render again from a mix's sidecar .json or PNG: its parameters, "
                   "overridden by options given here")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out (default: refused)")
    add_render_options(p)
    add_model_options(p)
    add_backend_options(p)
    p.set_defaults(func=run_mix)


def _rows(given) -> tuple[tuple[float, ...], ...]:
    """``--weights`` texts (or a sidecar's rows) as rows of numbers (their rules: check_request)."""
    from vslerp.ui.options import parse_values

    if given and isinstance(given[0], str):
        try:
            return tuple(tuple(parse_values(text, "--weights")) for text in given)
        except ValueError as err:
            raise CLIError(str(err)) from None
    return tuple(tuple(row) for row in given)


def _spec(args):
    """(spec, the sidecar it renders again or None, where its settings were recorded)."""
    from vslerp.pipelines.request import MAX_INPUTS
    from vslerp.ui.checks import image_ref, values
    from vslerp.ui.render import tiny_random_args
    from vslerp.ui.sidecar import read_sidecar, recorded_refs, spec_from_options

    meta, origin, labels = None, "", not args.no_labels
    if args.from_ is not None:
        meta = read_sidecar(args.from_, "mix")
        tiny_random_args(args, meta)
        recorded = meta["inputs"]
        if len(args.inputs) > len(recorded):
            raise CLIError(f"--from {args.from_} mixes {len(recorded)} inputs, {len(args.inputs)} given")
        given = list(args.inputs) + [None] * (len(recorded) - len(args.inputs))
        inputs = recorded_refs([(f"IN{k + 1}", f"inputs[{k}]", ref, text)
                                for k, (ref, text) in enumerate(zip(recorded, given, strict=True))], args.from_)
        rows = _rows(args.weights or meta["weights"])
        alphas = values(args.alphas if args.alphas is not None else meta["alphas"], "alphas", ())
        labels = labels and bool(meta.get("labels", True))
        origin = f" (recorded in {args.from_.name})"
    else:
        if not 2 <= len(args.inputs) <= MAX_INPUTS:
            raise CLIError(f"mix takes 2 to {MAX_INPUTS} inputs IN1 IN2 … (or --from SIDECAR), "
                           f"got {len(args.inputs)}")
        tiny_random_args(args)
        inputs = [image_ref(f"IN{k + 1}", text, allow_prompt=True) for k, text in enumerate(args.inputs)]
        rows = _rows(args.weights or [[1.0] * len(inputs)])
        alphas = values(args.alphas, "alphas", (1.0,))
    # source and target for the shared checks: the photo strength < 1 starts from, a prompt if any
    target = next((ref for ref in inputs if ref["kind"] == "prompt"), inputs[1])
    spec = replace(spec_from_options(args, meta), inputs=tuple(inputs), weights=rows, alphas=alphas,
                   labels=labels, source=inputs[0], target=target)
    return spec, meta, origin


def run_mix(args) -> int:
    from vslerp.ui.checks import (
        check_main_output,
        check_outputs_of,
        check_png_render,
        own,
        preflight_one,
    )

    spec, meta, origin = _spec(args)
    sidecar = check_png_render(args, spec)
    inputs = {f"IN{k + 1}": ref.get("path") for k, ref in enumerate(spec.inputs)}
    stats = preflight_one(args, spec, origin, {"--out": args.out, "the sidecar": sidecar},
                          {**inputs, "--from": args.from_, "--stats": spec.stats},
                          lambda: check_outputs_of(args.out, sidecar, args.overwrite))
    with own(args.out, sidecar):
        check_main_output(args.out, args.overwrite)  # owned now: another run may have finished
        return _mix(args, spec, meta, stats, sidecar)


def _mix(args, spec, meta, stats, sidecar_file) -> int:
    from vslerp.ui.images import GRID_GAP, make_grid, save_png
    from vslerp.ui.render import render_command, tiny_random_record
    from vslerp.ui.sidecar import sidecar

    pipe, out = render_command(args, spec, meta, stats)
    weights = out.weights.tolist()
    grid = make_grid(out.images, range(len(weights)), out.alphas, labels=spec.labels, gap=GRID_GAP,
                     row_labels=["w = " + ", ".join(f"{w:.3g}" for w in row) for row in weights])
    save_png(grid, args.out, sidecar(spec, pipe, out, "mix", **tiny_random_record(args)), overwrite=args.overwrite)
    print(f"wrote {args.out} ({len(weights)}×{len(out.alphas)} mixes of {len(spec.inputs)} inputs, "
          f"{grid.size[0]}×{grid.size[1]} px) and {sidecar_file}")
    return 0
