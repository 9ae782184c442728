"""`vslerp stats compute`: modality statistics of a dataset through a generator's own CLIP.

Reads an MS-COCO set (--images val2017 --captions annotations/captions_val2017.json), a
plain image folder and/or a text file of captions (one a line), encodes them with the
image and text encoders of a generator (--model: a Kandinsky 2.2 prior or decoder, an
unCLIP/Karlo repo, Stable unCLIP, an SD / SDXL base with --ip-adapter; --prior as before) or
of a CLIP model (--clip), and writes the per-modality moment sums (mean, mean of unit
vectors, covariance and the §4 measures follow from them) to one safetensors file. Works under `accelerate launch
--num_processes N` (rank 0 writes). --from-prior-mean writes a Kandinsky prior's own
clip_mean instead (zero data). A generator without a projected text encoder (Stable unCLIP,
IP-Adapter) takes its text side from --clip, only if that CLIP's vision tower is its image
encoder; without --clip its statistics have the image modality only.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

from vslerp.defaults import DEFAULT_PRIOR, DEFAULT_UNCLIP
from vslerp.ui.cli import CLIError
from vslerp.ui.cmd_stats_models import (
    add_model_arguments,
    check_model_args,
    load_run_encoders,
    metadata_of,
    model_inputs,
    model_label,
)
from vslerp.ui.options import DTYPE_HELP, add_loader_limits, dtype_arg, int_at_least, positive_int

__all__ = ["check_output", "print_skipped", "register", "run_compute"]


_PRIOR_HELP = ("generator repo (hub id) or local folder whose CLIP encoders to use: a Kandinsky 2.2 "
               "prior (image_encoder/, image_processor/, text_encoder/, tokenizer/; e.g. "
               f"{DEFAULT_PRIOR}) or an unCLIP/Karlo image-variations "
               "repo (feature_extractor/ instead of image_processor/; e.g. "
               f"{DEFAULT_UNCLIP})")  # `stats conformity` / `conformity` --prior (vslerp.ui.cmd_report)

_EXAMPLES = f"""
examples:
  vslerp stats compute --images val2017 --captions annotations/captions_val2017.json \\
      --model {DEFAULT_PRIOR} --out coco.safetensors
  vslerp stats compute --images val2017 --captions annotations/captions_val2017.json \\
      --model {DEFAULT_UNCLIP} --out coco_karlo.safetensors
  vslerp stats compute --images val2017 --captions annotations/captions_val2017.json \\
      --model stabilityai/stable-diffusion-2-1-unclip \\
      --clip laion/CLIP-ViT-H-14-laion2B-s32B-b79K --out coco_sd21_unclip.safetensors
  vslerp stats compute --images val2017 --model stable-diffusion-v1-5/stable-diffusion-v1-5 \\
      --ip-adapter h94/IP-Adapter:models/ip-adapter_sd15.safetensors --out coco_vit_h.safetensors
  vslerp stats compute --prior {DEFAULT_PRIOR} --from-prior-mean \\
      --out prior_mean.safetensors
  vslerp stats compute --webdataset "laion/{{00000..00999}}.tar" --save-embeddings laion_emb/ \\
      --prior {DEFAULT_PRIOR} --out laion.safetensors
"""


def register(subparsers) -> None:
    stats = subparsers.add_parser("stats", help="compute and report modality statistics",
                                  description="Modality statistics of CLIP embeddings "
                                  "(paper §4–6): `vslerp stats compute` and `vslerp stats "
                                  "report`.")
    stats_sub = stats.add_subparsers(dest="stats_command", metavar="SUBCOMMAND",
                                     parser_class=type(stats))
    stats.set_defaults(func=lambda args: _no_subcommand(stats))

    p = stats_sub.add_parser("compute", help="encode a dataset and write its statistics file",
                             description=__doc__ + _EXAMPLES,
                             formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=Path, metavar="DIR",
                   help="image folder (for COCO: val2017/; the captions json then selects its "
                   "files) (default: none, captions only)")
    p.add_argument("--captions", type=Path, metavar="FILE",
                   help="COCO captions .json (annotations/captions_val2017.json) or a .txt, "
                   "one caption a line (default: none, images only)")
    p.add_argument("--webdataset", nargs="+", metavar="PATTERN",
                   help="webdataset tar shards, img2dataset layout (KEY.jpg/.png/.webp + KEY.txt "
                   "or KEY.json 'caption'): paths or brace patterns, e.g. "
                   "'shards/{00000..00099}.tar'; each shard is a unit of work and of resuming "
                   "(default: none)")
    p.add_argument("--parquet", nargs="+", metavar="FILE",
                   help="parquet files of image bytes (binary or a {bytes, path} struct) and "
                   "captions, one file a shard; brace patterns too (default: none)")
    p.add_argument("--image-column", default=None, metavar="NAME",
                   help="--parquet image column (default: auto: image, jpg, png, ... or the "
                   "only binary column)")
    p.add_argument("--caption-column", default=None, metavar="NAME",
                   help="--parquet caption column (default: auto: caption, text, txt, ... or "
                   "the only text column)")
    add_model_arguments(p)
    p.add_argument("--out", required=True, type=Path, metavar="FILE.safetensors",
                   help="statistics file to write (required)")
    p.add_argument("--batch-size", type=positive_int, default=32, metavar="N",
                   help="items per encoder batch (default: 32)")
    p.add_argument("--num-workers", type=int_at_least(0), default=2, metavar="N",
                   help="DataLoader worker processes decoding images; 0 = in this process "
                   "(default: 2)")
    p.add_argument("--device", default=None,
                   help="cuda, cuda:1, mps or cpu (default: cuda, else mps, else cpu; one "
                   "device per process under accelerate launch)")
    p.add_argument("--dtype", type=dtype_arg, default=None, metavar="DTYPE",
                   help=f"encoder dtype: {DTYPE_HELP} (default: float16 on CUDA, else float32)")
    p.add_argument("--limit", type=positive_int, default=None, metavar="N",
                   help="use only the first N images (and their captions) / N captions "
                   "(default: all)")
    p.add_argument("--dataset-name", default=None, metavar="NAME",
                   help="name stored in the metadata (default: the folder or file name)")
    p.add_argument("--save-embeddings", type=Path, default=None, metavar="DIR",
                   help="also keep the raw embeddings as safetensors shards + manifest.json "
                   "(for `stats report`); a killed run started again resumes from them "
                   "(default: off)")
    p.add_argument("--shard-size", type=positive_int, default=None, metavar="N",
                   help="items per chunk / shard; fixed for a resumable run; not with "
                   "--webdataset/--parquet, whose shards are the input's (default: 1024)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing --out file and a --save-embeddings folder of "
                   "another run (default: refuse)")
    p.add_argument("--from-prior-mean", action="store_true",
                   help="no data: write a Kandinsky prior transformer's clip_mean/clip_std "
                   "buffers as the image statistics, with the prior's image-encoder "
                   "fingerprint (source=prior_clip_mean; unCLIP/Karlo has none) (default: off)")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bar (default: a bar with items/s)")
    add_loader_limits(p)
    p.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS,
                   help="show full tracebacks (for bug reports) (default: one-line errors)")
    p.set_defaults(func=run_compute, command="stats compute")
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


def check_output(option: str, path: Path, overwrite: bool, *, suffix: str | None = None,
                 folder: bool = False) -> None:
    """Before any work: ``path`` has the right suffix, is not refused by an existing file,
    and its folder exists or can be created and is writable (one line naming it if not)."""
    from vslerp.stats import check_writable

    if suffix is not None and path.suffix.lower() != suffix:
        raise CLIError(f"{option} must name a {suffix} file, got {path}")
    if not folder and path.is_dir():
        raise CLIError(f"{option} {path} is a folder, not a file")
    if not folder and path.exists() and not overwrite:
        raise CLIError(f"{option} {path} exists; pass --overwrite to replace it")
    try:
        check_writable(path, folder=folder)
    except ValueError as err:
        raise CLIError(f"{option}: {err}") from None


def print_skipped(skipped, where: str, what: str = "image(s)") -> None:
    """Name the unreadable items at the end of a run (the first 20, then a count)."""
    if not skipped:
        return
    print(f"skipped {len(skipped)} unreadable {what}:")
    for name, reason in skipped[:20]:
        print(f"  {name}: {reason}")
    if len(skipped) > 20:
        print(f"  ... and {len(skipped) - 20} more ({where})")


def _read_dataset(args) -> tuple[list, list, str]:
    """The images and captions of the run, each file read once; with ``--limit`` a COCO json
    or a text file is streamed and only what the limit keeps is held (docs/statistics.md)."""
    from vslerp.stats import list_images, read_captions, read_coco

    if args.images is None and args.captions is None:
        raise CLIError("give --images DIR and/or --captions FILE, --webdataset PATTERN or "
                       "--parquet FILE (or --from-prior-mean)")
    coco = args.captions is not None and args.captions.suffix.lower() == ".json"
    if coco and args.images is not None:
        listed, captions = read_coco(args.captions, limit=args.limit)
        images = list_images(args.images, listed=listed)
    else:
        images = list_images(args.images) if args.images is not None else []
        captions = (read_captions(args.captions, limit=args.limit)
                    if args.captions is not None else [])
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
    import torch
    from diffusers import PriorTransformer

    from vslerp.stats import Statistics, load_encoders
    from vslerp.ui.runtime import quiet_model_logs

    local = Path(str(args.prior)).expanduser()
    if local.is_dir() and not (local / "prior").is_dir():
        raise CLIError(f"--from-prior-mean needs a Kandinsky 2.2 prior with a prior/ transformer "
                       f"(its clip_mean); {args.prior} has none (unCLIP/Karlo has no clip_mean): "
                       "compute statistics from data instead")
    with quiet_model_logs():
        try:
            prior = PriorTransformer.from_pretrained(args.prior, subfolder="prior")
        except Exception as err:  # noqa: BLE001 - OSError, SafetensorError, ...: one line
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise CLIError(f"cannot load the prior transformer of {args.prior!r}: {first}") from None
        # the image encoder these statistics belong to: float16 is enough for the fingerprint
        encoders = load_encoders(args.prior, device="cpu", dtype=torch.float16, text=False)
    stats = Statistics.from_prior(prior, model_id=str(args.prior),
                                  encoder_fingerprint=encoders.fingerprint)
    if stats.dim != encoders.dim:
        raise CLIError(f"the prior's clip_mean has dim {stats.dim} but its image_encoder "
                       f"projects to {encoders.dim}")
    stats.metadata["dataset"] = None
    stats.save(args.out)
    print(f"wrote {args.out}: image mean from the prior's clip_mean (source=prior_clip_mean, "
          f"dim {stats.dim}, image encoder {encoders.fingerprint[:12]}, no data)")
    return 0


def _check_paths(args) -> None:
    """Before any work: inputs exist and are of the right kind, and no output is an input
    (the captions file, the image folder, a local --prior folder or a file in it)."""
    from vslerp.ui.checks import refuse_inputs
    from vslerp.ui.cmd_report import input_file, input_folder

    input_file("--captions", args.captions)
    input_folder("--images", args.images)
    models = model_inputs(args)
    outputs = {"--out": args.out, "--save-embeddings": args.save_embeddings}
    refuse_inputs(outputs, {"--captions": args.captions, "--images": args.images, **models})
    if args.save_embeddings is not None and (
            args.out.expanduser().resolve() == args.save_embeddings.expanduser().resolve()):
        raise CLIError(f"--out and --save-embeddings name one path ({args.out}): give two")
    out = args.out.expanduser()
    for option, folder in models.items():
        if out.is_file() and folder.resolve() in out.resolve().parents:
            raise CLIError(f"--out {args.out} is a file of the {option} folder {folder} this run "
                           "reads: an output never replaces an input; choose another path")


@contextlib.contextmanager
def _own_outputs(args, state):
    """Hold the outputs' locks for the whole run (rank 0 takes them; under accelerate every
    process learns at once whether it could, so a busy output stops all of them)."""
    from vslerp.stats import OutputBusy, output_lock

    folders = () if args.save_embeddings is None else (args.save_embeddings,)
    with contextlib.ExitStack() as stack:
        busy = None
        if state is None or state.is_main_process:
            try:
                stack.enter_context(output_lock(args.out, folders=folders,
                                                what="statistics output"))
            except OutputBusy as err:
                busy = str(err)
        if state is not None and state.num_processes > 1:
            from accelerate.utils import broadcast_object_list

            box = broadcast_object_list([busy], from_process=0)
            busy = box[0]
        if busy is not None:
            raise OutputBusy(busy)
        yield


def run_compute(args: argparse.Namespace, *, on_shard=None) -> int:
    """Run ``stats compute``; ``on_shard(modality, chunk)`` is a hook for tests."""
    from vslerp.stats import forget_inputs
    from vslerp.ui.checks import check_device, check_loader

    check_model_args(args)  # a malformed --ip-adapter: one line, nothing read
    check_loader(args)  # --num-workers 10000 would fork until the machine stalls
    forget_inputs()  # a new run: what earlier runs in this process read is not its input
    check_output("--out", args.out, args.overwrite, suffix=".safetensors")
    check_device(args.device)
    if args.save_embeddings is not None:
        check_output("--save-embeddings", args.save_embeddings, True, folder=True)
    _check_paths(args)
    if args.webdataset or args.parquet or args.image_column or args.caption_column:
        from vslerp.ui.cmd_stats_shards import run_shard_compute

        return run_shard_compute(args, on_shard=on_shard)
    if args.from_prior_mean:
        if args.images is not None or args.captions is not None:
            raise CLIError("--from-prior-mean uses no data: drop --images/--captions")
        with _own_outputs(args, None):
            return _write_prior_mean(args)
    args.shard_size = args.shard_size or 1024
    from vslerp.ui.runtime import accelerate_state

    state = accelerate_state(args.device)
    with _own_outputs(args, state):
        return _compute_owned(args, state, on_shard)


def _compute_owned(args, state, on_shard) -> int:
    import torch

    from vslerp.stats.compute import compute_statistics, dataset_digest
    from vslerp.stats.embeddings import EmbeddingStore
    from vslerp.ui.cmd_report import refuse_listed_inputs

    images, captions, dataset_name = _read_dataset(args)
    refuse_listed_inputs({"--out": args.out}, (i.path for i in images), "--images files")
    main = state.is_main_process
    device = args.device or (str(state.device) if state.num_processes > 1 else None)
    dtype = getattr(torch, args.dtype) if args.dtype else None
    loaded = load_run_encoders(args, device=device, dtype=dtype, text=bool(captions))
    encoders = loaded.encoders
    if captions and encoders.text_encoder is None:
        captions = []  # the note said why: image statistics only
        if not images:
            raise CLIError(f"--captions only, and {model_label(args)} has no text encoder to encode "
                           "them with: give --clip, or --images")
    metadata = {"dataset": dataset_name, **metadata_of(loaded), "shard_size": args.shard_size}
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
        print(f"encoding {what} of {dataset_name!r} with {model_label(args)} on {encoders.device} "
              f"({str(encoders.dtype).replace('torch.', '')}"
              + (f", {state.num_processes} processes" if state.num_processes > 1 else "")
              + ")", flush=True)
    result = compute_statistics(encoders, images, captions, batch_size=args.batch_size,
                                num_workers=args.num_workers, shard_size=args.shard_size,
                                store=store, state=state, progress=not args.no_progress,
                                metadata=metadata, on_shard=on_shard, max_workers=args.max_workers,
                                max_batch_size=args.max_batch_size)
    if main:
        if store is not None:
            store.write_manifest(complete=True)
        result.statistics.save(args.out)
        counts = result.statistics.metadata["counts"]
        resumed = sum(result.resumed.values())
        print(f"wrote {args.out}: " + ", ".join(f"{v} {k}" for k, v in counts.items())
              + f" (dim {encoders.dim}" + (f", {resumed} resumed from shards" if resumed else "")
              + ")")
        print_skipped(result.skipped, "all named in the file's metadata, up to 1000")
        if store is not None:
            print(f"embeddings in {args.save_embeddings} (manifest.json)")
    state.wait_for_everyone()
    return 0
