"""The CLIP encoders of any generator (``vslerp stats compute --model``), one layout at a time.

Which layout a model is comes from its ``model_index.json`` and the backend table
(:mod:`vslerp.stats.models`: each record's ``layout``; a class no record claims is refused by
name); the encoders are the ones the generator itself conditions on:

- a Kandinsky 2.2 prior → its ``image_encoder`` / ``image_processor`` / ``text_encoder`` / ``tokenizer``;
  a Kandinsky 2.2 decoder → those of its prior (``prior=``, default ``DEFAULT_PRIOR``);
- an unCLIP/Karlo image-variations repo → the same parts, ``feature_extractor`` for the processor;
- Stable unCLIP → ``image_encoder`` + ``feature_extractor``; its text encoder has no projection;
- a Stable Diffusion / SDXL / FLUX.1 base → the IP-Adapter's image encoder
  (:func:`~vslerp.stats.models.ip_adapter_encoder`: ``SUBFOLDER/image_encoder``, FLUX's
  ``openai/clip-vit-large-patch14``, or the one given) and a ``CLIPImageProcessor`` sized to it,
  as diffusers' ``load_ip_adapter`` builds them; no text encoder;
- a transformers ``CLIPModel`` (``clip=`` alone) → both of its towers.

Where the generator has no projected text encoder, the text side comes from ``clip=`` — only if
that CLIP's vision tower has the generator's image-encoder fingerprint (the same embedding
space) — or is left out (image statistics only; a note says so).
"""

from __future__ import annotations

from pathlib import Path

import torch

from vslerp.defaults import DEFAULT_PRIOR

from .encode import (
    ClipEncoders,
    check_tokenizer,
    clip_image_processor_class,
    default_device,
    default_dtype,
    dtype_kwarg,
    encoder_fingerprint,
    first_line,
    load_encoders,
    parse_device,
    part_loader,
)
from .hub import is_repo_id, local_folder
from .models import (
    BACKENDS,
    FLUX,
    FLUX_IMAGE_ENCODER,
    IP_ADAPTER_SD,
    IP_ADAPTER_SDXL,
    KANDINSKY,
    KANDINSKY_PRIOR_LAYOUT,
    PRIORS,
    STABLE_UNCLIP,
    UNCLIP,
    UnsupportedModel,
    backend_by_name,
    backend_record,
    ip_adapter_encoder,
    read_model_index,
)

__all__ = ["KANDINSKY_PRIOR", "LoadedEncoders", "generator_layout", "load_generator_encoders"]

KANDINSKY_PRIOR, KANDINSKY_DECODER = KANDINSKY_PRIOR_LAYOUT, backend_record(KANDINSKY).layout
SD, SDXL = backend_record(IP_ADAPTER_SD).layout, backend_record(IP_ADAPTER_SDXL).layout
_ADAPTED = {SD: IP_ADAPTER_SD, SDXL: IP_ADAPTER_SDXL, backend_record(FLUX).layout: FLUX}  # layout → backend
CLIP = "clip"  # a transformers CLIPModel folder: both towers
_OWN_TEXT = (KANDINSKY_PRIOR, KANDINSKY_DECODER, UNCLIP)  # a projected text encoder of their own
_DEFAULT_CLIPS = {  # layout → the CLIP whose vision tower is the generator's (for the messages)
    STABLE_UNCLIP: "laion/CLIP-ViT-H-14-laion2B-s32B-b79K (openai/clip-vit-large-patch14 for -small)",
    SD: "laion/CLIP-ViT-H-14-laion2B-s32B-b79K",
    SDXL: "laion/CLIP-ViT-bigG-14-laion2B-39B-b160k (ViT-H/14 for the _vit-h adapters)",
    FLUX: FLUX_IMAGE_ENCODER,
}


class LoadedEncoders:
    """:class:`ClipEncoders` with what they were read from: ``layout``, ``metadata`` (for the
    statistics file: model, prior, ip_adapter, clip, text_source) and ``notes`` (lines to print)."""

    def __init__(self, encoders: ClipEncoders, layout: str, metadata: dict, notes: list[str]):
        self.encoders, self.layout, self.metadata, self.notes = encoders, layout, metadata, notes


def generator_layout(model) -> str | None:
    """The encoder layout of a generator (hub id or folder): its record's ``layout``
    (``"kandinsky2.2-decoder"``, ``"unclip"``, ...), ``"kandinsky2.2-prior"``, ``"clip"`` (a
    transformers CLIPModel folder) or None (nothing tells); :class:`UnsupportedModel` for a
    ``model_index.json`` of a pipeline vslerp does not render."""
    index = read_model_index(model)
    if index is not None:
        name = index.get("_class_name")
        if name in PRIORS:
            return PRIORS[name][1]
        if name not in BACKENDS:
            raise UnsupportedModel(name, model)
        return backend_record(BACKENDS[name]).layout
    folder = local_folder(model)
    if folder is not None and (folder / "config.json").is_file():
        import json

        try:
            config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return CLIP if isinstance(config, dict) and config.get("model_type") == "clip" else None
    if str(model) == DEFAULT_PRIOR:
        return KANDINSKY_PRIOR
    backend = backend_by_name(model)
    return backend_record(backend).layout if backend is not None else None


def _check_source(source: str, option: str) -> str:
    folder = local_folder(source)
    if folder is not None:
        return str(folder)
    if Path(source).expanduser().exists():
        raise ValueError(f"{option} {source!r} is a file, not a folder or hub id")
    if not is_repo_id(source):
        raise ValueError(f"{option} folder not found: {source}")
    return source


def _clip_towers(clip: str, dtype, *, text: bool, processor: bool):
    """(source, vision, processor, text_encoder, tokenizer) of a CLIPModel id/folder (the
    processor None unless ``processor``, the text parts None unless ``text``)."""
    from transformers import (
        CLIPConfig,
        CLIPTextModelWithProjection,
        CLIPTokenizer,
        CLIPVisionModelWithProjection,
    )

    clip = _check_source(clip, "--clip")
    part = part_loader(clip, "--clip", "CLIP model")
    # Each tower projects to the CLIPModel's projection_dim (a sub-config saved without one
    # would get transformers' default of 512 and not fit the projection's weights).
    try:
        model_type = CLIPConfig.get_config_dict(clip)[0].get("model_type")
    except Exception:  # noqa: BLE001 - no config.json, not cached: part() says it in one line
        model_type = "clip"
    if model_type != "clip":
        raise ValueError(f"--clip {clip}: not a transformers CLIPModel (its config.json is a "
                         f"{model_type!r}); give a CLIP repo with both towers, e.g. "
                         "laion/CLIP-ViT-H-14-laion2B-s32B-b79K")
    config = part(CLIPConfig)
    towers = {}
    for name, sub in (("vision", config.vision_config), ("text", config.text_config)):
        sub.projection_dim = config.projection_dim
        towers[name] = {"config": sub, dtype_kwarg(): dtype}
    vision = part(CLIPVisionModelWithProjection, **towers["vision"])
    processor = part(clip_image_processor_class()) if processor else None
    text_encoder = tokenizer = None
    if text:
        text_encoder = part(CLIPTextModelWithProjection, **towers["text"])
        tokenizer = part(CLIPTokenizer)
        check_tokenizer(tokenizer, text_encoder, clip)
    return clip, vision, processor, text_encoder, tokenizer


def _ip_adapter_encoder(ip_adapter, dtype, layout: str, image_encoder=None):
    """The IP-Adapter's image encoder and the processor ``load_ip_adapter`` builds for it."""
    from transformers import CLIPVisionModelWithProjection

    repo, subfolder, weight = ip_adapter
    repo = _check_source(repo, "--ip-adapter")
    folder = local_folder(repo)
    if folder is not None and not (folder / subfolder / weight).is_file():
        raise ValueError(f"--ip-adapter: {folder / subfolder / weight} is not a file")
    source, encoder_sub = ip_adapter_encoder(_ADAPTED[layout], repo, subfolder, weight, image_encoder)  # the pipeline's rule
    note = None
    if source == repo and encoder_sub != f"{subfolder}/image_encoder".lstrip("/"):  # h94's SDXL _vit-h adapters
        note = (f"{weight} is an SDXL adapter on the ViT-H/14 encoder: image encoder {encoder_sub} "
                "(as h94/IP-Adapter documents it)")
    if source == repo:
        part = part_loader(repo, "--ip-adapter", "IP-Adapter")
    else:
        source = _check_source(source, "--ip-adapter-image-encoder")
        part = part_loader(source, "--ip-adapter-image-encoder", "the IP-Adapter's image encoder")
    encoder = part(CLIPVisionModelWithProjection, encoder_sub or None, **{dtype_kwarg(): dtype})
    size = int(encoder.config.image_size)  # as load_ip_adapter: CLIPImageProcessor(size, crop_size)
    processor = clip_image_processor_class()(size=size, crop_size=size)
    return f"{source}:{encoder_sub}" if encoder_sub else source, encoder, processor, note


def _refuse_options(layout: str, model: str, prior, ip_adapter, clip) -> None:
    what = f"a {layout} model" if layout != "unknown" else "not a model vslerp knows"
    if prior is not None and layout != KANDINSKY_DECODER:
        raise ValueError(f"--prior is for a Kandinsky 2.2 decoder; {model} is {what} "
                         "(give it alone as --model)")
    if ip_adapter is not None and layout not in _ADAPTED:
        raise ValueError(f"--ip-adapter is for a Stable Diffusion / SDXL / FLUX.1 base; {model} is {what}")
    if ip_adapter is None and layout in _ADAPTED:
        example = ("XLabs-AI/flux-ip-adapter:ip_adapter.safetensors" if _ADAPTED[layout] == FLUX
                   else "h94/IP-Adapter:models/ip-adapter_sd15.safetensors")
        raise ValueError(f"{model} is {backend_record(_ADAPTED[layout]).label}: its image encoder is an "
                         f"IP-Adapter's; give --ip-adapter REPO_OR_DIR:[SUBFOLDER/]WEIGHT.safetensors (e.g. {example})")
    if clip is not None and layout in _OWN_TEXT:
        raise ValueError(f"--clip is for a generator without a projected text encoder; {model} "
                         f"({layout}) has its own: drop --clip")


def load_generator_encoders(model=None, *, prior=None, ip_adapter=None, clip=None, device=None,
                            dtype: torch.dtype | None = None, text: bool = True,
                            ip_adapter_image_encoder=None) -> LoadedEncoders:
    """The CLIP encoders of generator ``model`` (see the module doc), on ``device`` in ``dtype``.

    model: hub id or folder (None: ``clip`` alone, a CLIPModel's two towers); prior: the
    Kandinsky 2.2 prior of a decoder (default ``DEFAULT_PRIOR``); ip_adapter:
    ``(repo_or_dir, subfolder, weight_name)`` for an SD / SDXL base
    (:func:`vslerp.stats.models.parse_ip_adapter`); clip: a CLIPModel id/folder for the text
    side of a generator without a projected text encoder; text: load a text side at all;
    ip_adapter_image_encoder: the adapter's image encoder (repo id or folder; default the adapter's).
    Raises ``ValueError`` with one line naming what is wrong, before any encoding.
    """
    device = parse_device(device) if device is not None else default_device()
    dtype = dtype or default_dtype(device)
    notes: list[str] = []
    if model is None:
        if clip is None:
            raise ValueError("give --model (a generator) or --clip (a CLIP model)")
        if ip_adapter is not None or prior is not None:
            raise ValueError("--ip-adapter and --prior need --model")
        source, vision, processor, text_encoder, tokenizer = _clip_towers(clip, dtype, text=text,
                                                                          processor=True)
        encoders = _encoders(vision, processor, text_encoder, tokenizer, source, device, dtype)
        return LoadedEncoders(encoders, CLIP, {"clip": source, "text_source": source if text else None}, notes)
    model = str(model)
    layout = generator_layout(model)
    if ip_adapter is None and ip_adapter_image_encoder is not None:
        raise ValueError("--ip-adapter-image-encoder is the image encoder of --ip-adapter: give --ip-adapter too")
    if layout is None and ip_adapter is not None:  # the base is not read: only the adapter's encoder
        layout = SDXL if "xl" in model.lower() else SD
    _refuse_options(layout or "unknown", model, prior, ip_adapter, clip)
    if layout == CLIP:
        return load_generator_encoders(None, clip=model, device=device, dtype=dtype, text=text)
    if layout in (None, KANDINSKY_PRIOR, KANDINSKY_DECODER, UNCLIP):
        if clip is not None:  # a folder of its own layout (no model_index.json): its own text side
            raise ValueError(f"--clip is for a generator without a projected text encoder; {model} "
                             "is read as a Kandinsky 2.2 prior / unCLIP folder: drop --clip")
        source = model
        if layout == KANDINSKY_DECODER:
            source = str(prior or DEFAULT_PRIOR)
            notes.append(f"{model} is a Kandinsky 2.2 decoder: its CLIP encoders are its prior's, "
                         f"{source}" + ("" if prior else " (the default; --prior to choose another)"))
        encoders = load_encoders(source, device=device, dtype=dtype, text=text)
        meta = {"model": model, "prior": source if layout != UNCLIP else None,
                "text_source": encoders.model_id if text else None}
        return LoadedEncoders(encoders, layout or KANDINSKY_PRIOR, meta, notes)
    if layout == STABLE_UNCLIP:
        source = _check_source(model, "--model")
        part = part_loader(source, "--model", "Stable unCLIP model")
        from transformers import CLIPVisionModelWithProjection

        image_encoder = part(CLIPVisionModelWithProjection, "image_encoder", **{dtype_kwarg(): dtype})
        processor = part(clip_image_processor_class(), "feature_extractor")
        image_source = source
    elif layout in _ADAPTED:
        image_source, image_encoder, processor, note = _ip_adapter_encoder(ip_adapter, dtype, layout,
                                                                           ip_adapter_image_encoder)
        notes += [note] if note else []
    else:
        raise ValueError(f"--model {model}: a {layout} model has no CLIP image encoder vslerp reads")
    meta = {"model": model, "ip_adapter": (f"{ip_adapter[0]}:{ip_adapter[1]}/{ip_adapter[2]}" if ip_adapter[1]
                                           else f"{ip_adapter[0]}:{ip_adapter[2]}") if ip_adapter else None, "image_encoder": image_source, "clip": None, "text_source": None}
    text_encoder = tokenizer = None
    if text and clip is None:
        notes.append(f"{model} has no projected text encoder: text side skipped, image statistics "
                     f"only (give --clip {_DEFAULT_CLIPS[layout]} for captions)")
    elif text:
        clip_source, vision, _, text_encoder, tokenizer = _clip_towers(clip, dtype, text=True, processor=False)
        theirs, ours = encoder_fingerprint(vision), encoder_fingerprint(image_encoder)
        del vision
        if theirs != ours:
            raise ValueError(f"--clip {clip_source}: its vision tower (fingerprint {theirs[:12]}) is not the "
                             f"image encoder of {model} ({image_source}, fingerprint {ours[:12]}): its text "
                             f"embeddings are in another space; use the CLIP that encoder comes from "
                             f"({_DEFAULT_CLIPS[layout]})")
        meta.update(clip=clip_source, text_source=clip_source)
    encoders = _encoders(image_encoder, processor, text_encoder, tokenizer, image_source, device, dtype)
    return LoadedEncoders(encoders, layout, meta, notes)


def _encoders(image_encoder, processor, text_encoder, tokenizer, source, device, dtype) -> ClipEncoders:
    try:
        return ClipEncoders(image_encoder, processor, text_encoder, tokenizer, model_id=source,
                            device=device, dtype=dtype)
    except (AttributeError, StopIteration) as err:  # a config without projection_dim, no weights
        raise ValueError(f"the encoders of {source!r} are not CLIP encoders with a projection "
                         f"({first_line(err)})") from None
