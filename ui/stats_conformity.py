"""Runs ``vslerp conformity`` (parsed by :mod:`vslerp.ui.cmd_stats`): each image of a folder or
caption of a file scored by estimated conformity (§7.1) against a statistics file; a CSV, a
histogram and the KL divergence to a reference set's exact conformity.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from vslerp.ui.cli import CLIError
from vslerp.ui.stats_run import (
    check_model_args,
    check_output,
    input_file,
    input_folder,
    load_run_encoders,
    model_label,
    print_skipped,
    refuse_listed_inputs,
)

__all__ = ["run_conformity"]


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
