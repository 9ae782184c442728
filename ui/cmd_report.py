"""`vslerp stats report` (the paper's §4–6 geometry report) and `vslerp conformity` (§7.1).

``stats report`` reads embeddings saved by ``vslerp stats compute --save-embeddings DIR``
and writes report.md, report.json and figures. ``conformity`` encodes a folder of images
or a caption file with a prior's CLIP and scores each item's estimated conformity against
a statistics file: CSV, histogram, and the KL divergence to a reference distribution.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from vslerp.ui.cli import CLIError

__all__ = ["register", "register_stats_subcommands", "run_conformity", "run_report"]


def _alphas(text: str) -> list[float]:
    """"a,b,c" or "start:stop:count" → floats (the CLI's value syntax)."""
    try:
        from vslerp.ui.outputs import parse_values
    except ModuleNotFoundError:
        parse_values = None
    if parse_values is not None:
        try:
            return parse_values(text, "--alphas")
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None
    try:
        if ":" in text:
            start, stop, count = text.split(":")
            count = int(count)
            if count < 1:
                raise ValueError
            if count == 1:
                return [float(start)]
            step = (float(stop) - float(start)) / (count - 1)
            return [round(float(start) + i * step, 12) for i in range(count)]
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'a,b,c' or 'start:stop:count', got {text!r}") \
            from None
    if not values or not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"expected finite numbers, got {text!r}")
    return values


def _positive_float(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _pairs_count(text: str) -> int:
    value = int(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"must be ≥ 2, got {value}")
    return value


def register_stats_subcommands(stats_subparsers) -> None:
    """Add ``report`` under ``vslerp stats`` (called by ``vslerp.ui.cmd_stats``)."""
    p = stats_subparsers.add_parser(
        "report", help="the paper's §4–6 geometry report from saved embeddings",
        description="Geometry report (paper §4–6) from embeddings saved by `vslerp stats "
        "compute --save-embeddings DIR`: modality tags, 2-feature SVM, thin shell, variance "
        "tail, ODD, offsets, conformity exact vs estimated, CLIP loss and conformity KL vs the "
        "image-mean shift α. Writes report.md, report.json and PNG figures.")
    p.add_argument("--embeddings", required=True, type=Path, metavar="DIR",
                   help="folder written by `stats compute --save-embeddings` (manifest.json)")
    p.add_argument("--out-dir", required=True, type=Path, metavar="DIR",
                   help="folder for report.md, report.json and the figures")
    p.add_argument("--alphas", type=_alphas, default=None, metavar="LIST",
                   help="image-mean shifts α of Eq. 9: 'a,b,c' or 'start:stop:count' "
                   "(default -1:1:21; write --alphas=-1:1:21 for a leading minus)")
    p.add_argument("--logit-scale", type=_positive_float, default=100.0,
                   help="1/τ of the CLIP loss (default 100, CLIP's trained value; the "
                   "Kandinsky prior repo ships none)")
    p.add_argument("--max-pairs", type=_pairs_count, default=None, metavar="N",
                   help="subsample the loss batch to N image–caption pairs (default: all, one "
                   "caption per image)")
    p.add_argument("--chunk-size", type=_pairs_count, default=1024, metavar="N",
                   help="image rows per logits chunk of the loss (1024)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing report")
    p.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS,
                   help="show full tracebacks (for bug reports)")
    p.set_defaults(func=run_report)


def register(subparsers) -> None:
    """Add the top-level ``vslerp conformity`` command."""
    p = subparsers.add_parser(
        "conformity", help="score images or captions by estimated conformity (§7.1)",
        description="Estimated conformity (paper §7.1, Eq. 10–11) of each image of a folder "
        "or each caption of a file, against a statistics file: CSV, histogram and KL "
        "divergence to a reference distribution. Estimator: C = a·cos(v, μ̂) + b with μ̂ the "
        "statistics' mean of unit vectors, a = N‖μ̂‖/(N−1), b = −1/(N−1) (exact for an item "
        "of the reference set); cos(v, m) for mean-only statistics.")
    p.add_argument("--stats", required=True, type=Path, metavar="FILE",
                   help="statistics file from `vslerp stats compute`")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--images", type=Path, metavar="DIR", help="folder of images to score")
    what.add_argument("--captions", type=Path, metavar="FILE",
                      help="captions to score: .txt (one a line) or COCO .json")
    p.add_argument("--prior", required=True, metavar="DIR|ID",
                   help="prior repo or folder whose CLIP encoders made the statistics")
    p.add_argument("--out", required=True, type=Path, metavar="scores.csv", help="CSV to write")
    p.add_argument("--hist", type=Path, default=None, metavar="hist.png",
                   help="also write a histogram PNG")
    p.add_argument("--reference-embeddings", type=Path, default=None, metavar="DIR",
                   help="embeddings folder of the statistics' dataset: reference distribution "
                   "(exact conformity) for the histogram and the KL divergence")
    p.add_argument("--batch-size", type=_pairs_count, default=32, help="items per batch (32)")
    p.add_argument("--device", default=None, help="cuda, mps or cpu (default: automatic)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.set_defaults(func=run_conformity)


def run_report(args: argparse.Namespace) -> int:
    from vslerp.stats import read_embeddings
    from vslerp.stats.report import DEFAULT_ALPHAS, geometry_report, write_report

    if not args.embeddings.is_dir():
        raise CLIError(f"--embeddings {args.embeddings} is not a folder")
    if args.out_dir.exists() and not args.out_dir.is_dir():
        raise CLIError(f"--out-dir {args.out_dir} exists and is not a folder")
    if not args.overwrite and any((args.out_dir / n).exists() for n in ("report.json", "report.md")):
        raise CLIError(f"--out-dir {args.out_dir} already holds a report; pass --overwrite")
    emb = read_embeddings(args.embeddings)
    for name in ("image", "text"):
        if getattr(emb, name).shape[0] < 2:
            raise CLIError(f"--embeddings {args.embeddings} holds {getattr(emb, name).shape[0]} "
                           f"{name} embedding(s); the report needs at least 2 of each")
    report = geometry_report(emb, alphas=args.alphas or DEFAULT_ALPHAS,
                             logit_scale=args.logit_scale, max_pairs=args.max_pairs,
                             chunk_size=args.chunk_size)
    written = write_report(report, args.out_dir, overwrite=args.overwrite)
    img = report["modalities"]["image"]
    kl0 = min(report["kl_vs_alpha"], key=lambda r: abs(r["alpha"]))
    print(f"wrote {len(written)} files to {args.out_dir}: SVM {100 * report['svm']['accuracy']:.1f} %, "
          f"thin shell rel. error {100 * img['thin_shell']['rel_error']:.2f} %, offsets "
          f"{img['offset']:.2f} image / {report['modalities']['text']['offset']:.2f} text, "
          f"KL(α={kl0['alpha']:g}) {kl0['kl']:.3f}")
    return 0


def _read_items(args):
    """(names, loader) of the items to score: images (list of PIL) or captions (list of str)."""
    from vslerp.stats import iter_images, read_captions

    if args.images is not None:
        if not args.images.is_dir():
            raise CLIError(f"--images {args.images} is not a folder")
        skipped: list = []
        items = list(iter_images(args.images, skipped=skipped))
        if not items:
            raise CLIError(f"no readable images in {args.images}")
        return "image", [i.name for i, _ in items], [im for _, im in items], skipped
    if not args.captions.is_file():
        raise CLIError(f"--captions file not found: {args.captions}")
    captions = read_captions(args.captions)
    if not captions:
        raise CLIError(f"no captions in {args.captions}")
    return "text", [c.text for c in captions], [c.text for c in captions], []


def run_conformity(args: argparse.Namespace) -> int:
    import torch
    from vslerp.stats import check_compatible, load, load_encoders, read_embeddings
    from vslerp.stats.files import atomic_write
    from vslerp.stats.plots import conformity_histogram, save
    from vslerp.stats.scoring import (
        ESTIMATORS,
        estimated_conformity,
        reference_conformity,
        score_kl,
        write_scores_csv,
    )
    from vslerp.ui.cmd_stats import _quiet_transformers

    if args.out.suffix.lower() != ".csv":
        raise CLIError(f"--out must name a .csv file, got {args.out}")
    if args.hist is not None and args.hist.suffix.lower() != ".png":
        raise CLIError(f"--hist must name a .png file, got {args.hist}")
    for path in (args.out, args.hist):
        if path is not None and path.exists() and not args.overwrite:
            raise CLIError(f"{path} exists; pass --overwrite to replace it")
    if not args.stats.is_file():
        raise CLIError(f"--stats file not found: {args.stats}")
    stats = load(args.stats)
    modality, names, items, skipped = _read_items(args)
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
    with _quiet_transformers():
        encoders = load_encoders(args.prior, device=args.device, text=modality == "text")
    check_compatible(stats, dim=encoders.dim, fingerprint=encoders.fingerprint)
    encode = encoders.encode_images if modality == "image" else encoders.encode_texts
    raw = torch.cat([encode(items[i:i + args.batch_size])
                     for i in range(0, len(items), args.batch_size)])  # (N, D) raw
    scores, estimator, coef = estimated_conformity(raw, mod_stats)
    kl = None
    if args.reference_embeddings is not None:
        reference = reference_conformity(ref_raw)
        kl = score_kl(scores, reference)
    header = {"vslerp": "conformity scores (paper §7.1)", "modality": modality,
              "statistics": f"{args.stats} ({stats.fingerprint[:12]}, count "
                            f"{mod_stats.count})",
              "estimator": f"{estimator}: {ESTIMATORS[estimator]}",
              "a": f"{coef['a']:.6f}", "b": f"{coef['b']:.6f}",
              "kl_to_reference": "not computed (no --reference-embeddings)" if kl is None
              else f"{kl:.6f}"}
    write_scores_csv(args.out, names, scores, header=header)
    if args.hist is not None:
        args.hist.parent.mkdir(parents=True, exist_ok=True)
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
    if skipped:
        line += f"; skipped {len(skipped)} unreadable image(s)"
    print(line + f" → {args.out}")
    return 0
