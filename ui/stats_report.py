"""Runs ``vslerp stats report`` (parsed by :mod:`vslerp.ui.cmd_stats`): the paper's §4–6
geometry report from saved embeddings (:func:`vslerp.stats.report.geometry_report`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from vslerp.ui.cli import CLIError
from vslerp.ui.stats_run import check_output, input_folder

__all__ = ["run_report"]


def run_report(args: argparse.Namespace) -> int:
    from vslerp.stats import forget_inputs, output_lock
    from vslerp.ui.checks import refuse_inputs

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
    from vslerp.ui.checks import looks_like_folder

    if looks_like_folder(model) and not Path(model).expanduser().is_dir():
        raise CLIError(f"--compare-mean {model}: no such folder")
    try:
        return checkpoint_mean(model)
    except ValueError as err:
        text = " ".join(str(err).split())
        raise CLIError(text if "--compare-mean" in text else f"--compare-mean {text}") from None
