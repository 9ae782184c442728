"""Runs ``vslerp stats compute`` (parsed by :mod:`vslerp.ui.cmd_stats`): an image folder and/or
captions (:func:`vslerp.stats.compute.compute_statistics`), webdataset / parquet shards
(:func:`vslerp.stats.shard_stats.compute_shard_statistics`) or a prior's clip_mean; the output
checks, the locks, the encoders, the embeddings folder and the statistics file are one path.
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
    metadata_of,
    model_inputs,
    model_label,
    own_outputs,
    print_skipped,
    refuse_listed_inputs,
)

__all__ = ["run_compute"]


def run_compute(args: argparse.Namespace, *, on_shard=None) -> int:
    """Run ``stats compute``; ``on_shard(modality or "shard", k)`` is a hook for tests."""
    from vslerp.stats import forget_inputs, refuse_overwriting_inputs
    from vslerp.ui.checks import check_device, check_loader
    from vslerp.ui.runtime import accelerate_run

    check_model_args(args)  # a malformed --ip-adapter: one line, nothing read
    check_loader(args)  # --num-workers 10000 would fork until the machine stalls
    forget_inputs()  # a new run: what earlier runs in this process read is not its input
    check_output("--out", args.out, args.overwrite, suffix=".safetensors")
    check_device(args.device)
    if args.save_embeddings is not None:
        check_output("--save-embeddings", args.save_embeddings, True, folder=True)
    _check_paths(args)
    source = None
    if args.webdataset or args.parquet or args.image_column or args.caption_column:
        source = _read_source(args)
        option = "--webdataset" if args.webdataset else "--parquet"
        refuse_overwriting_inputs({"--out": args.out, "--save-embeddings": args.save_embeddings},
                                  {f"{option} shard {p}": p for p in source.paths})
    elif args.from_prior_mean:
        if args.images is not None or args.captions is not None:
            raise CLIError("--from-prior-mean uses no data: drop --images/--captions")
        with own_outputs(args, None):
            return _write_prior_mean(args)
    else:
        args.shard_size = args.shard_size or 1024
    with accelerate_run(args.device) as state, own_outputs(args, state):  # one run per output
        return _compute_owned(args, state, source, on_shard)


def _compute_owned(args, state, source, on_shard) -> int:
    import torch

    from vslerp.stats.compute import compute_statistics, dataset_digest
    from vslerp.stats.embeddings import INPUT_SHARD, EmbeddingStore
    from vslerp.stats.shard_stats import compute_shard_statistics

    if source is None:
        images, captions, name = _read_dataset(args)
        refuse_listed_inputs({"--out": args.out}, (i.path for i in images), "--images files")
    else:
        given = args.webdataset or args.parquet
        # default name: the one pattern given, else the folder of the first shard
        name = args.dataset_name or (given[0] if len(given) == 1 else
                                     source.paths[0].resolve().parent.name)
    main = state.is_main_process
    device = args.device or (str(state.device) if state.num_processes > 1 else None)
    dtype = getattr(torch, args.dtype) if args.dtype else None
    loaded = load_run_encoders(args, device=device, dtype=dtype, text=source is not None or bool(captions))
    encoders = loaded.encoders
    has_text = encoders.text_encoder is not None  # else image statistics only (the note said so)
    if source is None and captions and not has_text:
        captions = []
        if not images:
            raise CLIError(f"--captions only, and {model_label(args)} has no text encoder to encode "
                           "them with: give --clip, or --images")
    shard_size = INPUT_SHARD if source is not None else args.shard_size
    metadata = {"dataset": name, **metadata_of(loaded), "shard_size": shard_size}
    if source is not None and source.kind == "parquet":
        metadata["parquet_columns"] = {"image": source.columns[0], "caption": source.columns[1]}
    store = None
    if args.save_embeddings is not None:
        if source is not None:
            digest = source.digest()
            planned = {m: {"shards": len(source), "source": source.kind, "digest": digest}
                       for m in ("image", "text")}
        else:
            planned = {"image": {"items": len(images), "digest": dataset_digest([i.name for i in images])},
                       "text": {"items": len(captions), "digest": dataset_digest([c.text for c in captions])}}
        store = EmbeddingStore(args.save_embeddings, {
            "metadata": {**metadata, "model_id": encoders.model_id,
                         "encoder_fingerprint": encoders.fingerprint, "dim": encoders.dim},
            "shard_size": shard_size, "modalities": planned})
        if main:
            store.prepare(overwrite=args.overwrite)
        state.wait_for_everyone()
    if main:
        what = (f"{len(source)} {source.kind} shard(s)" if source is not None else
                " and ".join(f"{n} {w}" for n, w in ((len(images), "images"), (len(captions), "captions")) if n))
        print(f"encoding {what} of {name!r} with {model_label(args)} on {encoders.device} "
              f"({str(encoders.dtype).replace('torch.', '')}"
              + (f", {state.num_processes} processes" if state.num_processes > 1 else "")
              + ")", flush=True)
    common = dict(batch_size=args.batch_size, num_workers=args.num_workers, store=store, state=state,
                  progress=not args.no_progress, metadata=metadata, on_shard=on_shard,
                  max_workers=args.max_workers, max_batch_size=args.max_batch_size)
    if source is not None:
        result = compute_shard_statistics(encoders, source, captions=has_text, **common)
    else:
        result = compute_statistics(encoders, images, captions, shard_size=args.shard_size, **common)
    if main:
        if store is not None:
            store.write_manifest(complete=True)
        result.statistics.save(args.out)
        counts = result.statistics.metadata["counts"]
        resumed = sum(result.resumed.values())
        print(f"wrote {args.out}: " + ", ".join(f"{v} {k}" for k, v in counts.items())
              + (f" from {len(source)} shard(s)" if source is not None else "") + f" (dim {encoders.dim}"
              + (f", {resumed} resumed from {'embeddings ' if source is not None else ''}shards"
                 if resumed else "") + ")")
        if source is not None:
            print_skipped(result.skipped, "all named in the file's metadata, up to 1000",
                          "item(s) (images or captions)")
        else:
            print_skipped(result.skipped, "all named in the file's metadata, up to 1000")
        if store is not None:
            print(f"embeddings in {args.save_embeddings} (manifest.json)"
                  + (", one shard per input shard" if source is not None else ""))
    state.wait_for_everyone()
    return 0


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


def _read_source(args: argparse.Namespace):
    """The :class:`~vslerp.stats.shard_readers.ShardSource` the options name (checked: files exist,
    parquet columns resolved), or a one-line ``CLIError`` — before any model loads."""
    from vslerp.stats.shard_readers import ParquetSource, WebDatasetSource

    if args.webdataset and args.parquet:
        raise CLIError("give --webdataset or --parquet, not both")
    if not (args.webdataset or args.parquet):
        raise CLIError("--image-column/--caption-column name columns of --parquet files")
    given = [o for o, v in (("--images", args.images), ("--captions", args.captions),
                            ("--from-prior-mean", args.from_prior_mean),
                            ("--limit", args.limit), ("--shard-size", args.shard_size)) if v]
    option = "--webdataset" if args.webdataset else "--parquet"
    if given:
        hint = (" (to use fewer items, name fewer shards)" if "--limit" in given else
                " (the input's shards are the shards)" if "--shard-size" in given else "")
        raise CLIError(f"{option} does not go with {', '.join(given)}{hint}")
    if args.webdataset and (args.image_column or args.caption_column):
        raise CLIError("--image-column/--caption-column are for --parquet (webdataset samples "
                       "name their parts by extension: jpg/png/webp, txt/json)")
    try:
        if args.webdataset:
            return WebDatasetSource(args.webdataset)
        return ParquetSource(args.parquet, image_column=args.image_column,
                             caption_column=args.caption_column)
    except (ImportError, ModuleNotFoundError) as err:
        raise CLIError(f"{option} needs the {err.name} package: pip install 'vslerp[stats]'"
                       ) from None


def _write_prior_mean(args) -> int:
    import torch
    from diffusers import PriorTransformer

    from vslerp.stats import Statistics, load_encoders
    from vslerp.stats.encode import first_line
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
            raise CLIError(f"cannot load the prior transformer of {args.prior!r}: {first_line(err)}") from None
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
