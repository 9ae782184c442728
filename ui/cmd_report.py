"""`vslerp stats report` (the paper's §4–6 geometry report) and `vslerp conformity` (§7.1).

``stats report`` reads embeddings saved by ``vslerp stats compute --save-embeddings DIR``
and writes report.md, report.json and figures. ``conformity`` encodes a folder of images
or a caption file with a prior's CLIP and scores each item's estimated conformity against
a statistics file: CSV, histogram, and the KL divergence to a reference distribution.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from vslerp.defaults import DEFAULT_PRIOR
from vslerp.ui.cli import CLIError
from vslerp.ui.options import (
    add_loader_limits,
    allow_negative_values,
    int_at_least,
    positive_float,
    value_list,
)

__all__ = ["input_file", "input_folder", "refuse_listed_inputs", "register", "register_stats_subcommands",
           "run_conformity", "run_report"]


_REPORT_DESCRIPTION = """\
Geometry report (paper §4–6) from embeddings saved by `vslerp stats compute
--save-embeddings DIR`: modality tags and a 2-feature SVM, thin shell, variance tail, ODD,
offsets, conformity exact vs estimated, CLIP loss and conformity KL vs the image-mean shift
α. Writes report.md, report.json and PNG figures; nothing is re-encoded.

example:
  vslerp stats report --embeddings coco_emb/ --out-dir coco_report/ --alphas -2:2:41
  vslerp stats report --embeddings coco_emb/ --out-dir coco_report/ \\
      --compare-mean kandinsky-community/kandinsky-2-2-prior
"""

_CONFORMITY_DESCRIPTION = f"""\
Estimated conformity (paper §7.1, Eq. 10–11) of each image of a folder or each caption of a
file against a statistics file: a CSV, an optional histogram and the KL divergence to a
reference distribution. Estimator: C = a·cos(v, μ̂) + b with μ̂ the statistics' mean of
unit vectors, a = N‖μ̂‖/(N−1), b = −1/(N−1) (exact for an item of the reference set);
cos(v, m) for mean-only statistics. Items stream through the encoder in batches.

example:
  vslerp conformity --stats coco.safetensors --images generated/ \\
      --prior {DEFAULT_PRIOR} --out scores.csv --hist hist.png \\
      --reference-embeddings coco_emb/
  vslerp conformity --stats vit_h.safetensors --images generated/ \\
      --model stabilityai/stable-diffusion-2-1-unclip --out scores.csv
"""


def register_stats_subcommands(stats_subparsers) -> None:
    """Add ``report`` under ``vslerp stats`` (called by ``vslerp.ui.cmd_stats``)."""
    p = stats_subparsers.add_parser(
        "report", help="the paper's §4–6 geometry report from saved embeddings",
        description=_REPORT_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--embeddings", required=True, type=Path, metavar="DIR",
                   help="folder written by `stats compute --save-embeddings` (required)")
    p.add_argument("--out-dir", required=True, type=Path, metavar="DIR",
                   help="folder for report.md, report.json and the figures (required)")
    p.add_argument("--alphas", type=value_list("--alphas"), default=None, metavar="LIST",
                   help="image-mean shifts α of Eq. 9: 'a,b,c' or 'start:stop:count', e.g. "
                   "-2:2:41 (default: -1:1:21)")
    p.add_argument("--logit-scale", type=positive_float, default=100.0, metavar="S",
                   help="1/τ of the CLIP loss; 100 is CLIP's trained value, and the Kandinsky "
                   "prior repo ships none (default: 100)")
    p.add_argument("--max-pairs", type=int_at_least(2), default=None, metavar="N",
                   help="subsample the loss batch to N image–caption pairs (default: all, one "
                   "caption per image)")
    p.add_argument("--chunk-size", type=int_at_least(1), default=1024, metavar="N",
                   help="image rows per logits chunk of the loss: memory grows with N × pairs, "
                   "never pairs² (default: 1024)")
    p.add_argument("--compare-mean", default=None, metavar="DIR|ID",
                   help="also compare the embeddings' image mean with the one a checkpoint holds "
                   "(‖Δ‖/‖m‖ and cosine): a Kandinsky 2.2 or Karlo prior (clip_mean) or a Stable "
                   "unCLIP model (image_normalizer) (default: none)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing report (default: refuse)")
    p.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS,
                   help="show full tracebacks (for bug reports) (default: one-line errors)")
    allow_negative_values(p)
    p.set_defaults(func=run_report, command="stats report")


def register(subparsers) -> None:
    """Add the top-level ``vslerp conformity`` command."""
    from vslerp.ui.cmd_stats_models import add_model_arguments

    p = subparsers.add_parser(
        "conformity", help="score images or captions by estimated conformity (§7.1)",
        description=_CONFORMITY_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stats", required=True, type=Path, metavar="FILE",
                   help="statistics file from `vslerp stats compute` (required)")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--images", type=Path, metavar="DIR",
                      help="folder of images to score (this or --captions)")
    what.add_argument("--captions", type=Path, metavar="FILE",
                      help="captions to score: .txt (one a line) or COCO .json (this or --images)")
    add_model_arguments(p)  # --model / --prior / --ip-adapter / --clip, as `stats compute` takes them
    p.add_argument("--out", required=True, type=Path, metavar="scores.csv",
                   help="CSV of name,conformity to write (required)")
    p.add_argument("--hist", type=Path, default=None, metavar="hist.png",
                   help="also write a histogram PNG (default: none)")
    p.add_argument("--reference-embeddings", type=Path, default=None, metavar="DIR",
                   help="embeddings folder of the statistics' dataset: reference distribution "
                   "(exact conformity) for the histogram and the KL divergence (default: none, "
                   "no KL)")
    p.add_argument("--batch-size", type=int_at_least(1), default=32, metavar="N",
                   help="items per encoder batch (default: 32)")
    p.add_argument("--num-workers", type=int_at_least(0), default=2, metavar="N",
                   help="DataLoader worker processes decoding images; 0 = in this process "
                   "(default: 2)")
    p.add_argument("--device", default=None,
                   help="cuda, cuda:1, mps or cpu (default: cuda, else mps, else cpu)")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bar (default: a bar with items/s)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace existing outputs (default: refuse)")
    add_loader_limits(p)
    p.set_defaults(func=run_conformity, command="conformity")


def input_file(option: str, path: Path | None) -> Path | None:
    """An input file option: one line when it is missing, a directory or unreadable."""
    from vslerp.stats.statistics_file import check_input_file

    if path is None:
        return None
    try:
        return check_input_file(path, option)
    except (OSError, ValueError) as err:
        raise CLIError(str(err)) from None


def input_folder(option: str, path: Path | None) -> Path | None:
    """An input folder option: one line when it is missing or a file."""
    if path is not None and not path.is_dir():
        raise CLIError(f"{option} {path} is not a folder ("
                       + ("it is a file" if path.exists() else "not found") + ")")
    return path


def refuse_listed_inputs(outputs: dict, files, what: str) -> None:
    """An existing output (``--overwrite``) that is one of ``files`` (an input folder's
    listed files, e.g. the images of ``--images``; symlinks and hard links too) is one line.
    One ``stat`` per listed file, and only when an output exists."""
    import os

    existing = {}
    for name, path in outputs.items():
        if path is not None and Path(path).is_file():
            st = os.stat(path)
            existing[(st.st_dev, st.st_ino)] = (name, path)
    if not existing:
        return
    for item in files:
        try:
            st = os.stat(item)
        except OSError:
            continue
        hit = existing.get((st.st_dev, st.st_ino))
        if hit is not None:
            raise CLIError(f"{hit[0]} {hit[1]} is {item}, one of the {what} this run reads: an "
                           "output never replaces an input; choose another output path")


def run_report(args: argparse.Namespace) -> int:
    from vslerp.stats import forget_inputs, output_lock
    from vslerp.ui.checks import refuse_inputs
    from vslerp.ui.cmd_stats import check_output

    forget_inputs()  # a new run: what earlier runs in this process read is not its input
    input_folder("--embeddings", args.embeddings)
    refuse_inputs({"--out-dir": args.out_dir},
                  {"--embeddings": args.embeddings,
                   "--embeddings manifest": args.embeddings / "manifest.json"})
    check_output("--out-dir", args.out_dir, True, folder=True)
    with output_lock(folders=(args.out_dir,), what="report"):
        return _report_locked(args)


def _report_locked(args) -> int:
    from vslerp.stats import read_embeddings
    from vslerp.stats.report import DEFAULT_ALPHAS, geometry_report, write_report

    if not args.overwrite and any((args.out_dir / n).exists() for n in ("report.json", "report.md")):
        raise CLIError(f"--out-dir {args.out_dir} already holds a report; pass --overwrite")
    reference = _checkpoint_mean(args.compare_mean) if args.compare_mean is not None else None
    emb = read_embeddings(args.embeddings)
    for name in ("image", "text"):
        if getattr(emb, name).shape[0] < 2:
            raise CLIError(f"--embeddings {args.embeddings} holds {getattr(emb, name).shape[0]} "
                           f"{name} embedding(s); the report needs at least 2 of each")
    if reference is not None and reference.dim != emb.image.shape[1]:
        raise CLIError(f"--compare-mean {args.compare_mean}: its image mean has dim {reference.dim}, the "
                       f"embeddings {emb.image.shape[1]}: another embedding space")
    report = geometry_report(emb, alphas=args.alphas or DEFAULT_ALPHAS,
                             logit_scale=args.logit_scale, max_pairs=args.max_pairs,
                             chunk_size=args.chunk_size, checkpoint_mean=reference)
    written = write_report(report, args.out_dir, overwrite=args.overwrite)
    img = report["modalities"]["image"]
    kl0 = min(report["kl_vs_alpha"], key=lambda r: abs(r["alpha"]))
    print(f"wrote {len(written)} files to {args.out_dir}: SVM {100 * report['svm']['accuracy']:.1f} %, "
          f"thin shell rel. error {100 * img['thin_shell']['rel_error']:.2f} %, offsets "
          f"{img['offset']:.2f} image / {report['modalities']['text']['offset']:.2f} text, "
          f"KL(α={kl0['alpha']:g}) {kl0['kl']:.3f}")
    cmp = report.get("mean_comparison")
    if cmp is not None and cmp["cosine"] is not None:
        print(f"image mean vs {args.compare_mean}'s {cmp['source']}: ‖Δ‖/‖m‖ {cmp['relative_difference']:.4f}, "
              f"cosine {cmp['cosine']:.4f}")
    for note in report.get("notes", []):
        print(f"note: {note}")
    return 0


def _checkpoint_mean(model: str):
    """``--compare-mean``'s image mean (:func:`vslerp.pipelines.loading.checkpoint_mean`), its
    refusals one line naming the option."""
    from vslerp.pipelines.loading import checkpoint_mean
    from vslerp.ui.models import looks_like_folder

    if looks_like_folder(model) and not Path(model).expanduser().is_dir():
        raise CLIError(f"--compare-mean {model}: no such folder")
    try:
        return checkpoint_mean(model)
    except ValueError as err:
        text = " ".join(str(err).split())
        raise CLIError(text if "--compare-mean" in text else f"--compare-mean {text}") from None


def _list_items(args) -> tuple[str, list, list]:
    """(modality, images, captions) to score; images are listed, not opened."""
    from vslerp.stats import list_images, read_captions

    if args.images is not None:
        input_folder("--images", args.images)
        images = list_images(args.images)
        if not images:
            raise CLIError(f"no images found in {args.images}")
        return "image", images, []
    input_file("--captions", args.captions)
    captions = read_captions(args.captions)
    if not captions:
        raise CLIError(f"no captions in {args.captions}")
    return "text", [], captions


def run_conformity(args: argparse.Namespace) -> int:
    from vslerp.stats import forget_inputs, output_lock
    from vslerp.ui.checks import check_device, check_loader, refuse_inputs
    from vslerp.ui.cmd_stats import check_output

    forget_inputs()  # a new run: what earlier runs in this process read is not its input
    input_file("--stats", args.stats)
    input_file("--captions", args.captions)
    input_folder("--reference-embeddings", args.reference_embeddings)
    refuse_inputs({"--out": args.out, "--hist": args.hist},
                  {"--stats": args.stats, "--captions": args.captions,
                   "--reference-embeddings manifest": None if args.reference_embeddings is None
                   else args.reference_embeddings / "manifest.json"})
    if args.hist is not None and _same_path(args.out, args.hist):
        raise CLIError(f"--out and --hist name one file ({args.out}): give two paths")
    check_output("--out", args.out, args.overwrite, suffix=".csv")
    if args.hist is not None:
        check_output("--hist", args.hist, args.overwrite, suffix=".png")
    check_device(args.device)
    check_loader(args)
    from vslerp.ui.cmd_stats_models import check_model_args

    check_model_args(args)  # one of --model/--prior/--clip, a well-formed --ip-adapter: nothing read yet
    with output_lock(args.out, args.hist, what="conformity output"):
        return _conformity_locked(args)


def _same_path(a: Path, b: Path) -> bool:
    return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()


def _conformity_locked(args) -> int:
    import torch

    import vslerp
    from vslerp.stats import check_compatible, load, read_embeddings
    from vslerp.stats.outputs import atomic_write
    from vslerp.stats.plots import conformity_histogram, save
    from vslerp.stats.scoring import (
        ESTIMATORS,
        estimated_conformity,
        write_scores_csv,
    )
    from vslerp.stats.stream import encode_stream
    from vslerp.ui.cmd_stats import print_skipped
    from vslerp.ui.cmd_stats_models import load_run_encoders, model_label

    stats = load(args.stats)
    modality, images, captions = _list_items(args)
    refuse_listed_inputs({"--out": args.out, "--hist": args.hist}, (i.path for i in images),
                         "--images files")
    mod_stats = getattr(stats, modality)
    if mod_stats is None:
        raise CLIError(f"--stats {args.stats} has no {modality} statistics (it has "
                       f"{', '.join(n for n in ('image', 'text') if getattr(stats, n))})")
    reference = None
    if args.reference_embeddings is not None:
        emb = read_embeddings(args.reference_embeddings)
        ref_raw = getattr(emb, modality)
        if ref_raw.shape[0] < 2:
            raise CLIError(f"--reference-embeddings {args.reference_embeddings} holds fewer than "
                           f"2 {modality} embeddings")
        check_compatible(stats, dim=int(ref_raw.shape[1]),
                         fingerprint=emb.metadata.get("encoder_fingerprint"))
    encoders = load_run_encoders(args, device=args.device, dtype=None, text=modality == "text").encoders
    if modality == "text" and encoders.text_encoder is None:
        raise CLIError(f"{model_label(args)} has no projected text encoder: give --clip (a CLIPModel whose "
                       "vision tower is its image encoder) to score captions")
    check_compatible(stats, dim=encoders.dim, fingerprint=encoders.fingerprint)
    # Stream: one chunk of embeddings at a time; only the names and one float per item stay.
    names: list[str] = []
    parts: list[torch.Tensor] = []
    skipped: list[tuple[str, str]] = []
    estimator, coef = None, None
    for chunk in encode_stream(encoders, images, captions, batch_size=args.batch_size,
                               num_workers=args.num_workers, chunk_size=1024,
                               progress=not args.no_progress, max_workers=args.max_workers,
                               max_batch_size=args.max_batch_size):
        skipped += chunk.skipped
        if not chunk.rows:
            continue
        scores, estimator, coef = estimated_conformity(chunk.embeddings, mod_stats)  # (n,)
        parts.append(scores)
        names += ([images[i].name for i in chunk.rows] if modality == "image"
                  else [captions[i].text for i in chunk.rows])
    if not parts:
        print_skipped(skipped, "none could be read")
        raise CLIError(f"none of the {len(images)} images in {args.images} could be read")
    scores = torch.cat(parts)  # (N,) float32
    kl = None
    if args.reference_embeddings is not None:
        reference = vslerp.conformity(ref_raw)  # exact (Eq. 10), (N,)
        kl = float(vslerp.kl_divergence(scores, reference))
    header = {"vslerp": "conformity scores (paper §7.1)", "modality": modality,
              "statistics": f"{args.stats} ({stats.fingerprint[:12]}, count "
                            f"{mod_stats.count})",
              "estimator": f"{estimator}: {ESTIMATORS[estimator]}",
              "a": f"{coef['a']:.6f}", "b": f"{coef['b']:.6f}",
              "kl_to_reference": "not computed (no --reference-embeddings)" if kl is None
              else f"{kl:.6f}"}
    if modality == "image":
        header["skipped"] = f"{len(skipped)} unreadable image(s)"
    write_scores_csv(args.out, names, scores, header=header)
    if args.hist is not None:
        fig = conformity_histogram(scores.numpy(), None if reference is None else reference.numpy(),
                                   title=f"{modality} conformity", kl=kl)
        atomic_write(args.hist, lambda tmp: save(fig, tmp))
    line = (f"scored {len(names)} {'images' if modality == 'image' else 'captions'}: mean "
            f"conformity {float(scores.mean()):.4f} (min {float(scores.min()):.4f}, max "
            f"{float(scores.max()):.4f}), ")
    line += (f"KL to reference {kl:.4f}" if kl is not None
             else "KL not computed (give --reference-embeddings)")
    if reference is not None:
        line += f", reference mean {float(reference.mean()):.4f}"
    print(line + f" → {args.out}")
    print_skipped(skipped, "see the CSV header for the count")
    return 0
