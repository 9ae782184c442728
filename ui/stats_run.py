"""What the statistics commands' runs share: their output and input checks, the output locks,
and the model options (--model / --prior / --ip-adapter / --clip) checked before any loading
and loaded into a generator's CLIP encoders (:func:`vslerp.stats.load_generator_encoders`).
"""

from __future__ import annotations

from pathlib import Path

from vslerp.defaults import DEFAULT_PRIOR
from vslerp.ui.cli import CLIError

__all__ = ["check_model_args", "check_output", "input_file", "input_folder", "load_run_encoders",
           "metadata_of", "model_inputs", "model_label", "own_outputs", "print_skipped",
           "refuse_listed_inputs"]


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


def own_outputs(args, state):
    """Hold the outputs' locks for the whole run (the main process's: :func:`~vslerp.ui.runtime.main_process_owns`)."""
    from vslerp.stats import output_lock
    from vslerp.ui.runtime import main_process_owns

    folders = () if args.save_embeddings is None else (args.save_embeddings,)
    return main_process_owns(state, lambda: output_lock(args.out, folders=folders, what="statistics output"))


def check_model_args(args) -> None:
    """Before anything is read: one of --model/--prior/--clip, a well-formed --ip-adapter
    (parsed into ``args.ip_adapter_parts``), and --from-prior-mean with a Kandinsky model only."""
    from vslerp.stats.models import parse_ip_adapter

    args.ip_adapter_parts = None
    if args.ip_adapter is not None:
        try:
            args.ip_adapter_parts = parse_ip_adapter(args.ip_adapter)
        except ValueError as err:
            raise CLIError(str(err)) from None
    if args.model is None and args.prior is None and args.clip is None:
        raise CLIError("give --model (a generator; or --prior, a Kandinsky 2.2 prior) or --clip (a CLIP model)")
    if args.ip_adapter is not None and args.model is None:
        raise CLIError("--ip-adapter needs --model (the Stable Diffusion / SDXL / FLUX.1 base it belongs to)")
    if getattr(args, "from_prior_mean", False):
        _check_prior_mean(args)


def _check_prior_mean(args) -> None:
    from vslerp.stats.generators import KANDINSKY_DECODER, KANDINSKY_PRIOR, generator_layout

    if args.clip is not None or args.ip_adapter is not None:
        raise CLIError("--from-prior-mean reads a Kandinsky 2.2 prior's clip_mean: drop --clip/--ip-adapter")
    if args.model is None:
        return
    layout = generator_layout(args.model)
    if layout == KANDINSKY_DECODER:
        args.prior = args.prior or DEFAULT_PRIOR
        print(f"note: {args.model} is a Kandinsky 2.2 decoder: the clip_mean is its prior's, {args.prior}")
    elif layout in (KANDINSKY_PRIOR, None):
        if args.prior is not None:
            raise CLIError(f"--prior is for a Kandinsky 2.2 decoder; {args.model} is a prior: give it alone")
        args.prior = args.model
    else:
        raise CLIError(f"--from-prior-mean is Kandinsky 2.2 only (a prior transformer's clip_mean); "
                       f"{args.model} is a {layout or 'prior-less'} model: compute statistics from data "
                       f"(--images/--captions) instead")


def model_inputs(args) -> dict:
    """The local folders this run reads models from (no output may be one of them)."""
    from vslerp.stats.hub import local_folder

    named = {"--model": args.model, "--prior": args.prior, "--clip": args.clip,
             "--ip-adapter": args.ip_adapter_parts[0] if getattr(args, "ip_adapter_parts", None) else None,
             "--ip-adapter-image-encoder": getattr(args, "ip_adapter_image_encoder", None)}
    return {option: folder for option, value in named.items() if (folder := local_folder(value)) is not None}


def model_label(args) -> str:
    """How the run names its model in the lines it prints."""
    return str(args.model or args.prior or args.clip)


def load_run_encoders(args, *, device, dtype, text: bool):
    """:class:`~vslerp.stats.generators.LoadedEncoders` of the run's model options; prints their notes."""
    from vslerp.stats.generators import load_generator_encoders
    from vslerp.ui.runtime import quiet_model_logs

    model = args.model if args.model is not None else args.prior
    prior = args.prior if args.model is not None else None
    with quiet_model_logs():
        loaded = load_generator_encoders(model, prior=prior, ip_adapter=args.ip_adapter_parts,
                                         clip=args.clip, device=device, dtype=dtype, text=text,
                                         ip_adapter_image_encoder=getattr(args, "ip_adapter_image_encoder", None))
    for note in loaded.notes:
        print(f"note: {note}", flush=True)
    return loaded


def metadata_of(loaded) -> dict:
    """The model part of a statistics file's metadata (only what is set)."""
    meta = {k: v for k, v in loaded.metadata.items() if v is not None}
    meta["layout"] = loaded.layout
    return meta
