"""`vslerp stats compute`'s model options: --model / --prior / --ip-adapter / --clip.

Which generator's CLIP encoders a run uses (:func:`vslerp.stats.generators.load_generator_encoders`),
checked before any loading (a malformed --ip-adapter is one line, nothing read), and the
statistics' metadata naming them. Shared by the folder and the shard (webdataset/parquet) runs.
"""

from __future__ import annotations

import argparse

from vslerp.defaults import DEFAULT_PRIOR, DEFAULT_UNCLIP
from vslerp.ui.cli import CLIError

__all__ = ["add_model_arguments", "check_model_args", "load_run_encoders", "metadata_of", "model_inputs",
           "model_label"]

_MODEL_HELP = ("the generator whose CLIP encoders to use (hub id or folder): a Kandinsky 2.2 prior "
               f"({DEFAULT_PRIOR}) or decoder (its prior's encoders: --prior), an unCLIP/Karlo "
               f"image-variations repo ({DEFAULT_UNCLIP}), Stable unCLIP "
               "(stabilityai/stable-diffusion-2-1-unclip[-small]), or a Stable Diffusion / SDXL base "
               "with --ip-adapter; statistics fit every model with the same image encoder "
               "(its fingerprint)")
_PRIOR_HELP = ("a Kandinsky 2.2 prior (hub id or folder), alone (as --model) or for a --model "
               f"decoder (default with a decoder: {DEFAULT_PRIOR}); an unCLIP/Karlo repo also "
               "works here, as before --model")
_IP_HELP = ("REPO_OR_DIR:SUBFOLDER/WEIGHT.safetensors, the IP-Adapter of a --model SD / SDXL base "
            "(e.g. h94/IP-Adapter:models/ip-adapter_sd15.safetensors): its SUBFOLDER/image_encoder/ "
            "is the image encoder (default: none)")
_CLIP_HELP = ("a transformers CLIPModel (hub id or folder): alone, both of its towers; with a --model "
              "without a projected text encoder (Stable unCLIP, IP-Adapter), the text side, only if "
              "its vision tower is that model's image encoder (default: none: image statistics only "
              "for those models)")


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, metavar="DIR|ID", help=_MODEL_HELP + " (default: none)")
    p.add_argument("--prior", default=None, metavar="DIR|ID", help=_PRIOR_HELP)
    p.add_argument("--ip-adapter", default=None, metavar="REPO_OR_DIR:SUBFOLDER/WEIGHT", help=_IP_HELP)
    p.add_argument("--clip", default=None, metavar="DIR|ID", help=_CLIP_HELP)


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
        raise CLIError("--ip-adapter needs --model (the Stable Diffusion / SDXL base it belongs to)")
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
             "--ip-adapter": args.ip_adapter_parts[0] if getattr(args, "ip_adapter_parts", None) else None}
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
                                         clip=args.clip, device=device, dtype=dtype, text=text)
    for note in loaded.notes:
        print(f"note: {note}", flush=True)
    return loaded


def metadata_of(loaded) -> dict:
    """The model part of a statistics file's metadata (only what is set)."""
    meta = {k: v for k, v in loaded.metadata.items() if v is not None}
    meta["layout"] = loaded.layout
    return meta
