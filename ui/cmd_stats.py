"""`vslerp stats compute`: modality statistics of a dataset through a prior's own CLIP.

Reads an MS-COCO set (``--images val2017 --captions annotations/captions_val2017.json``),
a plain image folder and/or a text file of captions (one a line), encodes them with the
prior's image processor + image encoder and tokenizer + text encoder, and writes the
per-modality moment sums (mean, unit mean, covariance follow from them) to one safetensors
file. Works under ``accelerate launch --num_processes N`` (rank 0 writes). With
``--from-prior-mean`` it writes the prior's own ``clip_mean`` instead (zero data).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

from vslerp.ui.cli import CLIError

__all__ = ["register", "run_compute"]

_DTYPES = {"float16": "float16", "fp16": "float16", "bfloat16": "bfloat16", "bf16": "bfloat16",
           "float32": "float32", "fp32": "float32"}


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be ≥ 1, got {value}")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be ≥ 0, got {value}")
    return value


def register(subparsers) -> None:
    stats = subparsers.add_parser("stats", help="compute and report modality statistics",
                                  description="Modality statistics of CLIP embeddings "
                                  "(paper §4–6).")
    stats_sub = stats.add_subparsers(dest="stats_command", metavar="SUBCOMMAND",
                                     parser_class=subparsers._parser_class)
    stats.set_defaults(func=lambda args: _no_subcommand(stats))

    p = stats_sub.add_parser("compute", help="encode a dataset and write its statistics file",
                             description=__doc__,
                             formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=Path, metavar="DIR",
                   help="image folder (for COCO: val2017/); the captions json selects its files")
    p.add_argument("--captions", type=Path, metavar="FILE",
                   help="COCO captions .json (annotations/captions_val2017.json) or a .txt, "
                   "one caption a line")
    p.add_argument("--prior", required=True, metavar="DIR|ID",
                   help="prior repo or folder holding image_encoder/, text_encoder/, "
                   "tokenizer/, image_processor/ (e.g. kandinsky-community/kandinsky-2-2-prior)")
    p.add_argument("--out", required=True, type=Path, metavar="FILE.safetensors",
                   help="statistics file to write")
    p.add_argument("--batch-size", type=_positive, default=32, help="items per encoder batch (32)")
    p.add_argument("--num-workers", type=_non_negative, default=2,
                   help="DataLoader worker processes decoding images (2; 0 = in-process)")
    p.add_argument("--device", default=None,
                   help="cuda, cuda:1, mps or cpu (default: automatic; per-process under "
                   "accelerate launch)")
    p.add_argument("--dtype", choices=sorted(_DTYPES), default=None,
                   help="encoder dtype (default: float16 on CUDA, else float32)")
    p.add_argument("--limit", type=_positive, default=None,
                   help="use only the first N images (and their captions) / N captions")
    p.add_argument("--dataset-name", default=None,
                   help="name stored in the metadata (default: the folder or file name)")
    p.add_argument("--save-embeddings", type=Path, default=None, metavar="DIR",
                   help="also keep the raw embeddings as safetensors shards + manifest.json "
                   "(for `stats report`); a killed run started again resumes from them")
    p.add_argument("--shard-size", type=_positive, default=1024,
                   help="items per chunk / shard (1024); fixed for a resumable run")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing --out file and a --save-embeddings folder of "
                   "another run")
    p.add_argument("--from-prior-mean", action="store_true",
                   help="no data: write the prior transformer's clip_mean/clip_std buffers "
                   "as the image statistics (source=prior_clip_mean)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS,
                   help="show full tracebacks (for bug reports)")
    p.set_defaults(func=run_compute)
    try:
        from vslerp.ui.cmd_report import register_stats_subcommands
    except ModuleNotFoundError as err:
        if err.name != "vslerp.ui.cmd_report":
            raise
    else:
        register_stats_subcommands(stats_sub)


def _no_subcommand(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


@contextlib.contextmanager
def _quiet_transformers():
    """Silence transformers' info/warning logs and progress bars while loading."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # pragma: no cover
        yield
        return
    level = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def _check_out(out: Path, overwrite: bool) -> None:
    if out.suffix != ".safetensors":
        raise CLIError(f"--out must name a .safetensors file, got {out}")
    if out.exists() and not overwrite:
        raise CLIError(f"--out {out} exists; pass --overwrite to replace it")
    if out.exists() and out.is_dir():
        raise CLIError(f"--out {out} is a folder")


def _read_dataset(args) -> tuple[list, list, str]:
    from vslerp.stats import list_images, read_captions

    if args.images is None and args.captions is None:
        raise CLIError("give --images DIR and/or --captions FILE (or --from-prior-mean)")
    if args.images is not None and not args.images.is_dir():
        raise CLIError(f"--images {args.images} is not a folder")
    if args.captions is not None and not args.captions.is_file():
        raise CLIError(f"--captions file not found: {args.captions}")
    images = list_images(args.images, args.captions) if args.images is not None else []
    captions = read_captions(args.captions) if args.captions is not None else []
    if args.images is not None and not images:
        raise CLIError(f"no images found in {args.images}")
    if args.captions is not None and not captions:
        raise CLIError(f"no captions in {args.captions}")
    if args.limit is not None:
        images = images[: args.limit]
        paired = images and captions and any(c.image_id >= 0 for c in captions)
        if paired:
            keep = {i.image_id for i in images}
            captions = [c for c in captions if c.image_id in keep]
        else:
            captions = captions[: args.limit]
    name = args.dataset_name or (args.images.name if args.images is not None
                                 else args.captions.stem)
    return images, captions, name


def _write_prior_mean(args) -> int:
    if args.images is not None or args.captions is not None:
        raise CLIError("--from-prior-mean uses no data: drop --images/--captions")
    from diffusers import PriorTransformer
    from vslerp.stats import Statistics

    with _quiet_transformers():
        try:
            prior = PriorTransformer.from_pretrained(args.prior, subfolder="prior")
        except (OSError, ValueError) as err:
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise CLIError(f"cannot load the prior transformer of {args.prior!r}: {first}") from None
    stats = Statistics.from_prior(prior, model_id=str(args.prior))
    stats.metadata["dataset"] = None
    stats.save(args.out)
    print(f"wrote {args.out}: image mean from the prior's clip_mean (source=prior_clip_mean, "
          f"dim {stats.dim}, no data)")
    return 0


def _wants_cpu(device: str | None) -> bool:
    """Processes run on the CPU (gloo) when asked to or when there is no CUDA device."""
    import os

    import torch

    if device is not None:
        return device.startswith("cpu")
    flag = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
    return flag or not torch.cuda.is_available()


def run_compute(args: argparse.Namespace, *, on_shard=None) -> int:
    """Run ``stats compute``; ``on_shard(modality, chunk)`` is a hook for tests."""
    import torch

    _check_out(args.out, args.overwrite)
    if args.from_prior_mean:
        return _write_prior_mean(args)
    images, captions, dataset_name = _read_dataset(args)

    from accelerate import PartialState
    from vslerp.stats import load_encoders
    from vslerp.stats.compute import compute_statistics, dataset_digest
    from vslerp.stats.embeddings import EmbeddingStore

    state = PartialState(cpu=_wants_cpu(args.device))
    main = state.is_main_process
    device = args.device or (str(state.device) if state.num_processes > 1 else None)
    dtype = getattr(torch, _DTYPES[args.dtype]) if args.dtype else None
    with _quiet_transformers():
        encoders = load_encoders(args.prior, device=device, dtype=dtype, text=bool(captions))
    metadata = {"dataset": dataset_name, "prior": str(args.prior),
                "shard_size": args.shard_size}
    store = None
    if args.save_embeddings is not None:
        plan = {"metadata": {**metadata, "model_id": encoders.model_id,
                             "encoder_fingerprint": encoders.fingerprint, "dim": encoders.dim},
                "shard_size": args.shard_size,
                "modalities": {
                    "image": {"items": len(images),
                              "digest": dataset_digest([i.name for i in images])},
                    "text": {"items": len(captions),
                             "digest": dataset_digest([c.text for c in captions])}}}
        store = EmbeddingStore(args.save_embeddings, plan)
        if main:
            store.prepare(overwrite=args.overwrite)
        state.wait_for_everyone()
    if main:
        what = " and ".join(f"{n} {w}" for n, w in ((len(images), "images"),
                                                    (len(captions), "captions")) if n)
        print(f"encoding {what} of {dataset_name!r} with {args.prior} on {encoders.device} "
              f"({str(encoders.dtype).replace('torch.', '')}"
              + (f", {state.num_processes} processes" if state.num_processes > 1 else "")
              + ")", flush=True)
    result = compute_statistics(encoders, images, captions, batch_size=args.batch_size,
                                num_workers=args.num_workers, shard_size=args.shard_size,
                                store=store, state=state, progress=not args.no_progress,
                                metadata=metadata, on_shard=on_shard)
    if main:
        if store is not None:
            store.write_manifest(complete=True)
        result.statistics.save(args.out)
        counts = result.statistics.metadata["counts"]
        resumed = sum(result.resumed.values())
        print(f"wrote {args.out}: " + ", ".join(f"{v} {k}" for k, v in counts.items())
              + f" (dim {encoders.dim}" + (f", {resumed} resumed from shards" if resumed else "")
              + ")")
        if result.skipped:
            print(f"skipped {len(result.skipped)} unreadable image(s):")
            for name, reason in result.skipped[:20]:
                print(f"  {name}: {reason}")
            if len(result.skipped) > 20:
                print(f"  ... and {len(result.skipped) - 20} more (all named in the file's "
                      "metadata, up to 1000)")
        if store is not None:
            print(f"embeddings in {args.save_embeddings} (manifest.json)")
    state.wait_for_everyone()
    return 0
