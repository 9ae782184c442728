"""`vslerp stats compute --webdataset PATTERN... | --parquet FILE...`: sharded datasets.

The options are registered by :mod:`vslerp.ui.cmd_stats`; this runs them. Input shards are
the unit of work and of resuming (:mod:`vslerp.stats.shard_stats`); the output checks, the
encoders, the embeddings folder and the statistics file are those of a folder run.
"""

from __future__ import annotations

import argparse

from vslerp.ui.cli import CLIError

__all__ = ["read_source", "run_shard_compute"]


def read_source(args: argparse.Namespace):
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


def run_shard_compute(args: argparse.Namespace, *, on_shard=None) -> int:
    """``stats compute`` over webdataset / parquet shards (the output checks already ran;
    the outputs are owned, as a folder run's, and never one of the shards)."""
    import torch

    from vslerp.stats import refuse_overwriting_inputs
    from vslerp.stats.embeddings import INPUT_SHARD, EmbeddingStore
    from vslerp.stats.shard_stats import compute_shard_statistics
    from vslerp.ui.cmd_stats import _own_outputs, print_skipped
    from vslerp.ui.cmd_stats_models import load_run_encoders, metadata_of, model_label
    from vslerp.ui.runtime import accelerate_state

    source = read_source(args)
    option = "--webdataset" if args.webdataset else "--parquet"
    refuse_overwriting_inputs({"--out": args.out, "--save-embeddings": args.save_embeddings},
                              {f"{option} shard {p}": p for p in source.paths})
    given = args.webdataset or args.parquet
    # default name: the one pattern given, else the folder of the first shard
    name = args.dataset_name or (given[0] if len(given) == 1 else
                                 source.paths[0].resolve().parent.name)
    state = accelerate_state(args.device)
    with _own_outputs(args, state):  # one run per output, as a folder run
        main = state.is_main_process
        device = args.device or (str(state.device) if state.num_processes > 1 else None)
        dtype = getattr(torch, args.dtype) if args.dtype else None
        loaded = load_run_encoders(args, device=device, dtype=dtype, text=True)
        encoders = loaded.encoders
        captions = encoders.text_encoder is not None  # else image statistics only (the note said so)
        metadata = {"dataset": name, **metadata_of(loaded), "shard_size": INPUT_SHARD}
        if source.kind == "parquet":
            metadata["parquet_columns"] = {"image": source.columns[0], "caption": source.columns[1]}
        store = None
        if args.save_embeddings is not None:
            digest = source.digest()
            plan = {"metadata": {**metadata, "model_id": encoders.model_id,
                                 "encoder_fingerprint": encoders.fingerprint, "dim": encoders.dim},
                    "shard_size": INPUT_SHARD,
                    "modalities": {m: {"shards": len(source), "source": source.kind,
                                       "digest": digest} for m in ("image", "text")}}
            store = EmbeddingStore(args.save_embeddings, plan)
            if main:
                store.prepare(overwrite=args.overwrite)
            state.wait_for_everyone()
        if main:
            print(f"encoding {len(source)} {source.kind} shard(s) of {name!r} with {model_label(args)} on "
                  f"{encoders.device} ({str(encoders.dtype).replace('torch.', '')}"
                  + (f", {state.num_processes} processes" if state.num_processes > 1 else "")
                  + ")", flush=True)
        result = compute_shard_statistics(encoders, source, captions=captions, batch_size=args.batch_size,
                                          num_workers=args.num_workers, store=store, state=state,
                                          progress=not args.no_progress, metadata=metadata,
                                          on_shard=on_shard, max_workers=args.max_workers,
                                          max_batch_size=args.max_batch_size)
        if main:
            if store is not None:
                store.write_manifest(complete=True)
            result.statistics.save(args.out)
            counts = result.statistics.metadata["counts"]
            resumed = sum(result.resumed.values())
            print(f"wrote {args.out}: " + ", ".join(f"{v} {k}" for k, v in counts.items())
                  + f" from {len(source)} shard(s) (dim {encoders.dim}"
                  + (f", {resumed} resumed from embeddings shards" if resumed else "") + ")")
            print_skipped(result.skipped, "all named in the file's metadata, up to 1000",
                          "item(s) (images or captions)")
            if store is not None:
                print(f"embeddings in {args.save_embeddings} (manifest.json), one shard per input "
                      "shard")
        state.wait_for_everyone()
        return 0
