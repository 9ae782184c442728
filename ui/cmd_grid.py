"""`vslerp grid`: render a labelled θ × α grid of vSLERP (paper Eq. 12, Fig. 12) from the shell.

Every output carries what it takes to render it again (a ``.json`` sidecar and the PNG's text
chunk, :mod:`vslerp.ui.sidecar`). The cells are written first, then the grid PNG, then its
sidecar: an interrupted run leaves at most cells without their grid, which are stale and
replaced by the next run, and a failed write leaves no sidecar. Everything cheap (paths, values,
devices, model folders, output folders; outputs that are special files or one another) is
checked before any model is loaded (:mod:`vslerp.ui.checks`, :mod:`vslerp.ui.checks`).
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from vslerp.ui.cli import CLIError
from vslerp.ui.options import add_backend_options, add_model_options, add_render_options

__all__ = ["GRID_DESCRIPTION", "register", "run_grid"]

GRID_DESCRIPTION = """\
Render a θ × α grid of vSLERP(SOURCE, TARGET, θ, α) (paper Eq. 12, Fig. 12):
one row per θ (0 = SOURCE, 1 = TARGET), one column per α (0 = plain SLERP;
α > 0 pulls the path towards the image mean). All cells share one noise seed.
The PNG and its .json sidecar hold every parameter: --from renders it again,
options given with it override the sidecar's.

examples:
  vslerp grid example:cat "a watercolor painting" --tiny-random --out try.png
  vslerp grid cat.png "a watercolor painting" --thetas 0,0.25,0.5 \\
      --alphas -2:2:5 --out grid.png
  vslerp grid --from grid.png --out again.png
  vslerp grid --from editor-download.png cat.png dog.png --out again.png
  vslerp grid cat.png dog.png --strength 0.6 --out layout.png   # keeps cat.png's layout
"""


def register(subparsers) -> None:
    p = subparsers.add_parser("grid", help="render a labelled θ × α grid (paper Fig. 12)",
                              formatter_class=argparse.RawDescriptionHelpFormatter,
                              description=GRID_DESCRIPTION)
    p.add_argument("source", nargs="?", metavar="SOURCE",
                   help="source image, or a bundled example: example:cat, example:mountains, example:flower (with --from: the image the sidecar names, when it was "
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
    add_render_options(p)
    add_model_options(p)
    add_backend_options(p)
    p.set_defaults(func=run_grid)


def _spec(args):
    """(spec, the sidecar it renders again or None, where its settings were recorded)."""
    from vslerp.ui.checks import image_ref, values
    from vslerp.ui.render import RenderSpec, tiny_random_args
    from vslerp.ui.sidecar import read_sidecar, recorded_inputs, spec_from_options

    if args.from_ is not None:
        meta = read_sidecar(args.from_)
        tiny_random_args(args, meta)
        source, target = recorded_inputs(meta, args.from_, args)
        thetas = values(args.thetas if args.thetas is not None else meta["thetas"], "thetas", ())
        alphas = values(args.alphas if args.alphas is not None else meta["alphas"], "alphas", ())
        labels = bool(meta.get("labels", True)) and not args.no_labels
        origin = f" (recorded in {args.from_.name})"
    else:
        if args.source is None or args.target is None:
            raise CLIError("grid needs SOURCE and TARGET (or --from SIDECAR)")
        tiny_random_args(args)
        thetas = values(args.thetas, "thetas", RenderSpec.thetas)
        alphas = values(args.alphas, "alphas", RenderSpec.alphas)
        source = image_ref("SOURCE", args.source, allow_prompt=False)
        target = image_ref("TARGET", args.target, allow_prompt=True)
        meta, labels, origin = None, not args.no_labels, ""
    spec = replace(spec_from_options(args, meta), source=source, target=target, thetas=thetas,
                   alphas=alphas, labels=labels)
    return spec, meta, origin


def run_grid(args) -> int:
    from vslerp.ui.checks import (
        check_cells,
        check_main_output,
        check_outputs_of,
        check_place,
        check_png_render,
        own,
        preflight_one,
    )

    spec, meta, origin = _spec(args)
    sidecar = check_png_render(args, spec)
    cells = []
    if args.cells_dir is not None:
        cells = [args.cells_dir / f"r{r:02d}_c{c:02d}.png"
                 for r in range(len(spec.thetas)) for c in range(len(spec.alphas))]

    def check_outputs():
        check_outputs_of(args.out, sidecar, args.overwrite)
        if args.cells_dir is not None:
            check_place(args.cells_dir, "--cells-dir", folder=True)
            _regular_cells(cells)
            if not args.overwrite:
                check_cells(cells, args.out)

    stats = preflight_one(args, spec, origin, {"--out": args.out, "the sidecar": sidecar,
                                               **{f"--cells-dir cell {path.name}": path for path in cells}},
                          {"SOURCE": spec.source.get("path"), "TARGET": spec.target.get("path"),
                           "--from": args.from_, "--stats": spec.stats}, check_outputs)
    with own(args.out, sidecar, folders=(args.cells_dir,)):
        # owned now: checked again, as another run may have finished in between
        check_main_output(args.out, args.overwrite)
        if cells and not args.overwrite:
            check_cells(cells, args.out)
        return _grid(args, spec, meta, stats, sidecar, cells)


def _regular_cells(cells) -> None:
    """Each existing cell is a regular file (``vslerp.stats.outputs.check_regular_output``)."""
    from vslerp.stats.outputs import check_regular_output

    try:
        for path in cells:
            check_regular_output(path)
    except ValueError as err:
        raise CLIError(f"--cells-dir: {err}") from None


def _grid(args, spec, meta, stats, sidecar_file, cells) -> int:
    from vslerp.ui.images import GRID_GAP, grid_caption, make_grid, save_png
    from vslerp.ui.render import render_command, tiny_random_record
    from vslerp.ui.sidecar import sidecar

    pipe, out = render_command(args, spec, meta, stats)
    metadata = sidecar(spec, pipe, out, "grid", **tiny_random_record(args))
    grid = make_grid(out.images, out.thetas, out.alphas, labels=spec.labels, gap=GRID_GAP,
                     caption=grid_caption(metadata))
    owner = str(args.out.resolve())
    for i, path in enumerate(cells):  # cells first, then the grid, its sidecar last
        r, c = divmod(i, len(spec.alphas))
        cell = {"row": r, "col": c, "theta": out.thetas[r], "alpha": out.alphas[c]}
        save_png(out.images[i], path, {**metadata, "grid": owner, "cell": cell}, overwrite=True,
                 sidecar=False)
    save_png(grid, args.out, metadata, overwrite=args.overwrite)
    print(f"wrote {args.out} ({len(spec.thetas)}×{len(spec.alphas)} cells, {grid.size[0]}×{grid.size[1]}"
          f" px) and {sidecar_file}" + (f", cells in {args.cells_dir}" if cells else ""))
    return 0
