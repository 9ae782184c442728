"""Loading a pipeline: the backend from the table (:mod:`vslerp.stats.models`), then its parts.

The backend comes from ``model_index.json``'s ``_class_name`` (as diffusers' ``AutoPipeline``
reads it; one no record claims is :class:`~vslerp.stats.models.UnsupportedModel`); a hub id
whose index cannot be read (offline and not cached) is told by its name. Kandinsky 2.2 loads
from its two repos (prior + decoder), unCLIP/Karlo class by class, the others through their
class's ``_load_backend``; a failed load is :class:`~vslerp.stats.hub.ModelLoadError`. Models
are imported only when a pipeline loads (reading an index imports no diffusers).
"""

from __future__ import annotations

from pathlib import Path

from vslerp.defaults import DEFAULT_DECODER, DEFAULT_PRIOR, DEFAULT_UNCLIP, STATISTICS_FILE
from vslerp.stats.hub import load_failure, local_folder, unavailable_model
from vslerp.stats.models import (
    BACKENDS,
    KANDINSKY,
    TABLE,
    UNCLIP,
    backend_by_name,
    backend_of,
    backend_record,
    read_model_index,
)

__all__ = ["BACKENDS", "DEFAULT_KARLO_PRIOR", "KANDINSKY", "UNCLIP", "auto_device", "backend_by_name", "backend_of",
           "checkpoint_mean", "load_karlo_prior", "load_parts", "load_pipeline", "load_unclip_components",
           "pipeline_class", "read_model_index", "saved_stats"]  # (the table's names re-exported: docs/pipeline.md imports them here)

DEFAULT_KARLO_PRIOR = "kakaobrain/karlo-v1-alpha"  # Karlo's text-to-image repo: prior/ (clip_mean) for unCLIP

_BACKEND_ARGS = {"auto": None, "kandinsky": KANDINSKY, **{record.name: record.name for record in TABLE}}
IP_ADAPTER_ARGS = ("ip_adapter", "ip_adapter_subfolder", "ip_adapter_weight_name", "ip_adapter_image_encoder")  # from_pretrained's

_UNCLIP_PARTS = {  # component → (library, class) in the Karlo image-variations layout
    "decoder": ("diffusers", "UNet2DConditionModel"),
    "text_encoder": ("transformers", "CLIPTextModelWithProjection"),
    "tokenizer": ("transformers", "CLIPTokenizer"),
    "text_proj": ("unclip", "UnCLIPTextProjModel"),
    "feature_extractor": ("transformers", "CLIPImageProcessor"),
    "image_encoder": ("transformers", "CLIPVisionModelWithProjection"),
    "super_res_first": ("diffusers", "UNet2DModel"),
    "super_res_last": ("diffusers", "UNet2DModel"),
    "decoder_scheduler": ("diffusers", "UnCLIPScheduler"),
    "super_res_scheduler": ("diffusers", "UnCLIPScheduler"),
}
_KARLO_PRIOR_PARTS = {  # component → class in kakaobrain/karlo-v1-alpha (as diffusers' UnCLIPPipeline loads it)
    "prior": "PriorTransformer",
    "prior_scheduler": "UnCLIPScheduler",
}
_WEIGHTED = ("decoder", "text_proj", "super_res_first", "super_res_last", "text_encoder", "image_encoder", "prior")


def pipeline_class(backend: str):
    """The pipeline class of a backend name."""
    return backend_record(backend).pipeline_class()


def auto_device():
    """cuda, then mps, then cpu (with a warning: rendering on a CPU is slow); ``ACCELERATE_USE_CPU``
    set → cpu (:func:`vslerp.stats.encode.default_device`)."""
    import warnings

    from vslerp.stats.encode import default_device

    device = default_device()
    if device.type == "cpu":
        warnings.warn("no CUDA or MPS device found: VSlerpPipeline runs on the CPU (slow)", stacklevel=4)
    return device


def load_pipeline(cls, decoder_id_or_dir=None, prior=None, stats=None, dtype=None, backend: str = "auto",
                  device="auto", **kwargs):
    """``from_pretrained`` of every VSlerp pipeline class.

    decoder_id_or_dir: the generator — a Kandinsky 2.2 decoder (default
        ``kandinsky-community/kandinsky-2-2-decoder``), an unCLIP/Karlo image-variations repo, or
        a folder written by ``save_pretrained`` (then ``prior`` is not needed).
    prior: the Kandinsky 2.2 prior (default ``kandinsky-community/kandinsky-2-2-prior``), or for
        unCLIP/Karlo the text-to-image repo whose ``prior/`` and ``prior_scheduler/`` are loaded
        (default ``kakaobrain/karlo-v1-alpha``: its ``clip_mean`` and prompt targets).
    stats: a statistics file path, a :class:`~vslerp.stats.Statistics`, a (D,) raw image-mean
        tensor, or None (the saved folder's statistics, else the mean the checkpoint holds: the
        Kandinsky or Karlo prior's ``clip_mean``, Stable unCLIP's ``image_normalizer`` mean).
    dtype: default :func:`vslerp.stats.encode.default_dtype` of the device (float16 on CUDA).
    backend: "auto" (``VSlerpPipeline``: from ``model_index.json``) or a backend's name
        ("kandinsky2.2", "unclip", "stable-unclip", "ip-adapter-sd", "ip-adapter-sdxl", "flux"); a
        backend's own class (``VSlerpUnCLIPPipeline``, ...) loads its backend.
    ip_adapter, ip_adapter_subfolder, ip_adapter_weight_name: the IP-Adapter an SD / SDXL / FLUX.1
        base renders through (as diffusers' ``load_ip_adapter``), e.g. ``"h94/IP-Adapter"``,
        ``"models"``, ``"ip-adapter_sd15.safetensors"``, or ``"XLabs-AI/flux-ip-adapter"`` with
        ``"ip_adapter.safetensors"`` (no subfolder); only for those backends.
    ip_adapter_image_encoder: the adapter's image encoder, a repo id or folder (default: the
        adapter's ``SUBFOLDER/image_encoder``; FLUX: ``openai/clip-vit-large-patch14``).
    device: "auto" (cuda, then mps, then cpu with a warning), a device, or None (stay on the
        CPU). ``pipe.enable_model_cpu_offload()`` after loading moves every component back to
        the CPU and onto the GPU only while it runs (diffusers' own offload).
    """
    import torch

    from vslerp.stats.encode import clip_image_processor_class, default_dtype, parse_device

    if backend not in _BACKEND_ARGS:
        raise ValueError(f"backend must be 'auto' or one of {sorted(_BACKEND_ARGS)[1:]}, got {backend!r}")
    wanted = _BACKEND_ARGS[backend]
    if cls is not pipeline_class(KANDINSKY):  # a backend's own class (or a subclass): its backend
        if wanted not in (None, cls.backend):
            raise ValueError(f"{cls.__name__} loads the {cls.backend} backend, got backend={backend!r}")
        wanted = cls.backend
    elif wanted is None:
        wanted = (backend_of(decoder_id_or_dir, strict=True) if decoder_id_or_dir is not None else None) or KANDINSKY
        cls = pipeline_class(wanted)
    else:
        cls = pipeline_class(wanted)
    target = auto_device() if device == "auto" else (parse_device(device) if device is not None else None)
    dtype = dtype or (default_dtype(target) if target is not None else torch.float32)
    clip_image_processor_class()  # the class without torchvision, resolved without a warning
    adapter = {k: kwargs.pop(k) for k in IP_ADAPTER_ARGS if kwargs.get(k) is not None}
    if backend_record(wanted).encoder == "ip-adapter":
        kwargs.update(adapter)
    elif adapter:
        raise ValueError(f"{', '.join(sorted(adapter))}: an IP-Adapter renders through a Stable Diffusion / "
                         f"SDXL / FLUX.1 base, and {decoder_id_or_dir or 'the default model'} is a {wanted} model")
    load = {KANDINSKY: _load_kandinsky, UNCLIP: _load_unclip}.get(wanted)
    if load is None:  # a backend that loads itself: its class's ``_load_backend`` classmethod
        pipe = cls._load_backend(decoder_id_or_dir, prior, stats, dtype, **kwargs)
    else:
        pipe = load(cls, decoder_id_or_dir, prior, stats, dtype, **kwargs)
    if target is not None:
        pipe.to(target)
    return pipe


def saved_stats(folder: Path | None, stats):
    """``stats``, else the statistics file a saved folder holds (or None)."""
    if stats is None and folder is not None and (folder / STATISTICS_FILE).is_file():
        return folder / STATISTICS_FILE
    return stats


def _load_kandinsky(cls, decoder_id_or_dir, prior, stats, dtype, **kwargs):
    decoder_src = str(decoder_id_or_dir or DEFAULT_DECODER)
    folder = local_folder(decoder_src)
    index = read_model_index(folder) if folder is not None else None
    if index is not None and index.get("_class_name") in (*backend_record(KANDINSKY).class_names[1:], cls.__name__):
        pipe = cls._load_saved(folder, dtype, **kwargs)
        pipe.model_ids = {"decoder": decoder_src, "prior": str(prior) if prior else decoder_src}
        pipe.set_statistics(saved_stats(folder, stats))
        return pipe
    from diffusers import KandinskyV22Pipeline, KandinskyV22PriorPipeline

    prior_src = str(prior or DEFAULT_PRIOR)
    pc = load_parts(KandinskyV22PriorPipeline, prior_src, "--prior", "the Kandinsky 2.2 prior", dtype, **kwargs)
    dc = load_parts(KandinskyV22Pipeline, decoder_src, "--model", "the Kandinsky 2.2 decoder", dtype, **kwargs)
    pipe = cls(prior=pc["prior"], image_encoder=pc["image_encoder"], text_encoder=pc["text_encoder"],
               tokenizer=pc["tokenizer"], image_processor=pc["image_processor"], prior_scheduler=pc["scheduler"],
               unet=dc["unet"], scheduler=dc["scheduler"], movq=dc["movq"])
    pipe.model_ids = {"decoder": decoder_src, "prior": prior_src}
    pipe.set_statistics(stats)
    return pipe


def load_parts(pipeline_class, source: str, option: str, what: str, dtype, **kwargs) -> dict:
    """The components of ``source`` as diffusers' ``pipeline_class.from_pretrained`` loads them:
    each part its ``model_index.json`` names, by the class it names, from its subfolder — the
    index read once (:func:`read_model_index`), not again by diffusers. A source whose index
    cannot be read (a hub id not cached) goes through diffusers' loader; a failure is
    :class:`~vslerp.stats.hub.ModelLoadError` naming ``option`` and ``what``."""
    import importlib

    import torch

    index = read_model_index(source)
    try:
        if index is None:
            return pipeline_class.from_pretrained(source, dtype=dtype, **kwargs).components
        parts = {}
        for name, entry in index.items():
            if name.startswith("_") or not isinstance(entry, list) or len(entry) != 2 or None in entry:
                continue  # the index's own fields, and components saved as absent ([null, null])
            part = getattr(importlib.import_module(str(entry[0])), str(entry[1]))
            extra = {"dtype": dtype} if issubclass(part, torch.nn.Module) else {}
            parts[name] = part.from_pretrained(source, subfolder=name, **extra, **kwargs)
        expected, optional = pipeline_class._get_signature_keys(pipeline_class)
        missing = sorted(set(expected) - set(parts) - set(optional))
        if missing:
            raise ValueError(f"its model_index.json names no {', '.join(missing)}")
        return parts
    except (OSError, ValueError, ImportError, AttributeError, TypeError) as err:
        raise load_failure(source, option, what, err) from None


def load_unclip_components(source: str, dtype, **kwargs) -> dict:
    """Load every component of an unCLIP image-variation repo/folder, class by class.

    (diffusers 0.42's ``DiffusionPipeline.from_pretrained`` cannot resolve the deprecated
    ``UnCLIPTextProjModel`` from ``model_index.json``, so each subfolder is loaded directly.)
    """
    import diffusers
    import transformers
    from diffusers.pipelines.deprecated.unclip.text_proj import UnCLIPTextProjModel

    from vslerp.stats.encode import clip_image_processor_class

    clip_image_processor_class()  # the class without torchvision, resolved without a warning
    out = {}
    for name, (library, class_name) in _UNCLIP_PARTS.items():
        part = UnCLIPTextProjModel if library == "unclip" else getattr(
            diffusers if library == "diffusers" else transformers, class_name)
        extra = {"dtype": dtype} if name in _WEIGHTED else {}
        try:
            out[name] = part.from_pretrained(source, subfolder=name, **extra, **kwargs)
        except (OSError, ValueError) as err:
            raise load_failure(source, "--model", f"the {name} of unCLIP model", err) from None
    return out


def load_karlo_prior(source: str, dtype, **kwargs) -> dict:
    """``{"prior": PriorTransformer, "prior_scheduler": UnCLIPScheduler}`` of a Karlo text-to-image
    repo/folder (``kakaobrain/karlo-v1-alpha``'s ``prior/`` and ``prior_scheduler/``, as diffusers'
    ``UnCLIPPipeline`` loads them); a hub id that is not available is :class:`ModelUnavailable`."""
    import diffusers

    out = {}
    for name, class_name in _KARLO_PRIOR_PARTS.items():
        extra = {"dtype": dtype} if name in _WEIGHTED else {}
        try:
            out[name] = getattr(diffusers, class_name).from_pretrained(source, subfolder=name, **extra, **kwargs)
        except (OSError, ValueError) as err:
            raise load_failure(source, "--prior", f"the {name} of the Karlo prior", err) from None
    return out


def _load_unclip(cls, decoder_id_or_dir, prior, stats, dtype, **kwargs):
    """The image-variations components, plus Karlo's prior: ``prior``, else a saved folder's own
    ``prior/``, else :data:`DEFAULT_KARLO_PRIOR`. Only the default may be missing (not cached
    offline), and only when ``stats`` are given: the pipeline then renders without prompt targets."""
    from vslerp.stats.hub import ModelUnavailable

    source = str(decoder_id_or_dir or DEFAULT_UNCLIP)
    folder = local_folder(source)
    stats = saved_stats(folder, stats)
    if prior is None and folder is not None and (folder / "prior").is_dir():
        prior = folder  # save_pretrained of a pipeline with a prior: prior/ and prior_scheduler/ inside
    prior_src = str(prior or DEFAULT_KARLO_PRIOR)
    prior_folder = local_folder(prior_src)
    try:
        prior_parts = load_karlo_prior(str(prior_folder or prior_src), dtype, **kwargs)
    except ModelUnavailable as err:
        if prior is not None:
            raise
        if stats is None:
            raise ValueError(f"the unCLIP backend needs stats= (a statistics file, Statistics or a (D,) mean "
                             f"tensor) or Karlo's prior for its clip_mean: {err}") from None
        prior_parts, prior_src = {"prior": None, "prior_scheduler": None}, None
    parts = load_unclip_components(str(folder) if folder is not None else source, dtype, **kwargs)
    pipe = cls(**parts, **prior_parts)
    pipe.model_ids = {"decoder": source, "prior": prior_src}
    pipe.set_statistics(stats)
    return pipe


def checkpoint_mean(model: str):
    """The image mean a checkpoint holds, as :class:`~vslerp.stats.Statistics` (no data): a
    Kandinsky 2.2 or Karlo prior's ``clip_mean`` (a repo/folder with ``prior/``), or a Stable
    unCLIP model's ``image_normalizer`` mean; ``ValueError`` (one line) when it holds none —
    an identity normaliser (mean 0, std 1, Stable unCLIP-H), a decoder, another model."""
    import torch

    from vslerp.stats import Statistics

    source = str(model)
    folder = local_folder(source)
    index = read_model_index(folder or source)
    if index is None:
        missing = unavailable_model(source, "--compare-mean")
        if missing is not None:
            raise missing
        index = {}

    def holds(name: str) -> bool:  # a component of model_index.json that was saved (not [null, null])
        return bool(index.get(name)) and index[name][0] is not None

    if holds("prior"):
        from diffusers import PriorTransformer

        try:
            prior = PriorTransformer.from_pretrained(str(folder or source), subfolder="prior", dtype=torch.float32)
        except (OSError, ValueError) as err:
            raise load_failure(source, "--compare-mean", "the prior of", err) from None
        return Statistics.from_prior(prior, model_id=source)
    if holds("image_normalizer"):
        from diffusers.pipelines.stable_diffusion.stable_unclip_image_normalizer import (
            StableUnCLIPImageNormalizer,
        )

        from .stable_unclip import image_normalizer_statistics

        try:
            normalizer = StableUnCLIPImageNormalizer.from_pretrained(str(folder or source),
                                                                     subfolder="image_normalizer")
        except (OSError, ValueError) as err:
            raise load_failure(source, "--compare-mean", "the image_normalizer of", err) from None
        stats = image_normalizer_statistics(normalizer, model_id=source)
        if stats is None:
            raise ValueError(f"{source}: its image_normalizer is the identity (mean 0, std 1): it holds no "
                             "image mean (Stable unCLIP-H's has none; -small's is Karlo's ViT-L/14 mean)")
        return stats
    hint = f" (its prior, {DEFAULT_KARLO_PRIOR}, does)" if backend_of(folder or source) == UNCLIP else ""
    raise ValueError(f"{source} holds no image mean{hint}: give a Kandinsky 2.2 or Karlo prior, or a Stable "
                     "unCLIP model")
