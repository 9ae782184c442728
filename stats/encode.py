"""The generator's own CLIP encoders, used exactly as diffusers' Kandinsky prior and unCLIP
pipelines do.

Images: ``image_processor(images, return_tensors="pt").pixel_values`` →
``image_encoder(pixel_values).image_embeds``. Captions: ``tokenizer(padding="max_length",
max_length=tokenizer.model_max_length, truncation=True)`` → ``text_encoder(input_ids,
attention_mask).text_embeds``. Both return *raw* embeddings (before L2 normalisation).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from pathlib import Path

import torch

from .data import open_image
from .hub import ModelUnavailable, is_repo_id, unavailable_model

__all__ = ["PROCESSOR_SUBFOLDERS", "ClipEncoders", "check_tokenizer", "clip_image_processor_class",
           "default_device", "dtype_kwarg", "encoder_fingerprint", "first_line", "load_encoders",
           "parse_device", "part_loader", "quiet_torchvision_fallback"]

# Config fields that define the function an image encoder computes (not bookkeeping fields
# such as dtype or transformers version, which differ between loads of the same weights).
_ARCH_KEYS = ("model_type", "hidden_size", "projection_dim", "intermediate_size",
              "num_hidden_layers", "num_attention_heads", "image_size", "patch_size",
              "num_channels", "hidden_act", "layer_norm_eps")


def dtype_kwarg() -> str:
    """transformers ≥ 4.56 names the load dtype ``dtype`` (``torch_dtype`` is deprecated)."""
    import transformers

    major, minor = (int(x) for x in re.findall(r"\d+", transformers.__version__)[:2])
    return "dtype" if (major, minor) >= (4, 56) else "torch_dtype"


def _mps_available() -> bool:
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def default_device() -> torch.device:
    """The device rule of every room: cpu when ``ACCELERATE_USE_CPU`` is set (1/true/yes, as
    ``accelerate launch --cpu`` sets it), else cuda if available, else mps, else cpu."""
    if os.environ.get("ACCELERATE_USE_CPU", "").strip().lower() in ("1", "true", "yes"):
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda")
    if _mps_available():
        return torch.device("mps")
    return torch.device("cpu")


def parse_device(device) -> torch.device:
    """A device string or ``torch.device`` → ``torch.device`` that exists on this machine.

    Raises ``ValueError`` naming the device for a malformed name (``"banana"``), CUDA on a
    build or machine without it, a CUDA index past the device count, or MPS where it is absent.
    """
    if isinstance(device, torch.device):
        parsed = device
    elif isinstance(device, str):
        try:
            parsed = torch.device(device.strip())
        except RuntimeError:
            raise ValueError(f"device {device!r} is not a device name: use cuda, cuda:N, mps or cpu") from None
    else:
        raise TypeError(f"device must be a string or torch.device, got {type(device).__name__}")
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} is not available: this PyTorch build or machine has no CUDA")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r} is not available: {torch.cuda.device_count()} CUDA device(s)")
    elif parsed.type == "mps" and not _mps_available():
        raise ValueError(f"device {device!r} is not available on this machine (no MPS)")
    elif parsed.type not in ("cuda", "mps", "cpu"):
        raise ValueError(f"device {device!r} is not supported: use cuda, cuda:N, mps or cpu")
    return parsed


def default_dtype(device: torch.device) -> torch.dtype:
    """The dtype rule of every room: float16 on CUDA, float32 elsewhere."""
    return torch.float16 if torch.device(device).type == "cuda" else torch.float32


@torch.no_grad()
def encoder_fingerprint(image_encoder: torch.nn.Module) -> str:
    """sha256 (hex) identifying an image encoder's architecture and weights.

    Hashes the architecture fields of its config, every parameter's name and shape, and a
    fixed sample of each parameter's values rounded to float16 — so one model loaded in
    float32 or float16, on any device, has one fingerprint (bfloat16 copies differ).
    Cheap: it reads a few values per tensor, never the whole model.
    """
    if not isinstance(image_encoder, torch.nn.Module):
        raise TypeError(f"image_encoder must be a torch.nn.Module, got {type(image_encoder).__name__}")
    digest = hashlib.sha256()
    config = getattr(image_encoder, "config", None)
    digest.update(type(image_encoder).__name__.encode())
    if config is not None:
        for key in _ARCH_KEYS:
            digest.update(f"|{key}={getattr(config, key, None)!r}".encode())
    for name, param in sorted(image_encoder.named_parameters(), key=lambda kv: kv[0]):
        flat = param.detach().reshape(-1)
        stride = max(1, flat.numel() // 16)
        sample = torch.cat([flat[:8], flat[::stride][:16]]).to(device="cpu", dtype=torch.float16)
        digest.update(f"|{name}{tuple(param.shape)}".encode())
        digest.update(sample.view(torch.int16).numpy().tobytes())
    return digest.hexdigest()


class ClipEncoders:
    """A CLIP image encoder + processor and (optionally) text encoder + tokenizer.

    ``encode_images(list[PIL.Image]) -> (N, D)`` and ``encode_texts(list[str]) -> (N, D)``
    return raw float32 embeddings on the CPU. ``dim``, ``fingerprint`` (of the image
    encoder), ``model_id``, ``device``, ``dtype``. Device and dtype default to the image
    encoder's own, and then nothing is moved (components of a pipeline are used where they
    are, offload hooks included); given explicitly, both encoders are moved there.
    The one CLIP encoding of the project: statistics, scoring and the pipelines use it.
    """

    def __init__(self, image_encoder, image_processor, text_encoder=None, tokenizer=None, *,
                 model_id: str | None = None, device=None, dtype: torch.dtype | None = None):
        if (text_encoder is None) != (tokenizer is None):
            raise ValueError("text_encoder and tokenizer must be given together")
        # Device and dtype come from the components unless given (then they are moved).
        first = next(image_encoder.parameters())
        self.device = torch.device(device) if device is not None else first.device
        self.dtype = dtype or first.dtype
        if (first.device, first.dtype) != (self.device, self.dtype):
            image_encoder = image_encoder.to(device=self.device, dtype=self.dtype)
        if text_encoder is not None and (device is not None or dtype is not None):
            text_encoder = text_encoder.to(device=self.device, dtype=self.dtype)
        self.image_encoder = image_encoder.eval()
        self.image_processor = image_processor
        self.text_encoder = text_encoder.eval() if text_encoder is not None else None
        self.tokenizer = tokenizer
        self.model_id = model_id
        self.dim = int(image_encoder.config.projection_dim)
        if text_encoder is not None and int(text_encoder.config.projection_dim) != self.dim:
            raise ValueError(f"image and text encoders project to different dims "
                             f"({self.dim} vs {text_encoder.config.projection_dim})")
        self._fingerprint: str | None = None

    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = encoder_fingerprint(self.image_encoder)
        return self._fingerprint

    # -- images -------------------------------------------------------------------------
    def preprocess_images(self, images) -> torch.Tensor:
        """PIL images (RGB) → pixel values (N, 3, H, W) float32, as the prior pipeline does."""
        return self.image_processor(images, return_tensors="pt").pixel_values

    @torch.no_grad()
    def encode_pixels(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) pixels → raw ``image_embeds`` (N, D), float32, on the encoder's device."""
        pixels = pixel_values.to(device=self.device, dtype=self.dtype, non_blocking=True)
        return self.image_encoder(pixel_values=pixels).image_embeds.float()

    def encode_images(self, images) -> torch.Tensor:
        """Images (PIL, paths or numpy arrays) → raw image embeddings (N, D) float32 on the CPU.

        Every image goes through :func:`vslerp.stats.open_image` (EXIF upright, alpha on white,
        16-bit and palette rules), so a file and its PIL image or array give one embedding."""
        images = list(images)
        if not images:
            raise ValueError("encode_images needs at least one image")
        rgb = [open_image(im) for im in images]
        return self.encode_pixels(self.preprocess_images(rgb)).cpu()

    # -- texts --------------------------------------------------------------------------
    def tokenize(self, texts) -> dict[str, torch.Tensor]:
        """Captions → ``input_ids`` and ``attention_mask`` (N, L), padded to max length."""
        if self.tokenizer is None:
            raise ValueError("these encoders were loaded without the text encoder")
        tokens = self.tokenizer(list(texts), padding="max_length",
                                max_length=self.tokenizer.model_max_length, truncation=True,
                                return_tensors="pt")
        return {"input_ids": tokens.input_ids, "attention_mask": tokens.attention_mask}

    @torch.no_grad()
    def encode_tokens(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(N, L) token ids and mask → raw ``text_embeds`` (N, D), float32, on the device."""
        if self.text_encoder is None:
            raise ValueError("these encoders were loaded without the text encoder")
        device = next(self.text_encoder.parameters()).device  # self.device unless used in place
        out = self.text_encoder(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device))
        return out.text_embeds.float()

    def encode_texts(self, texts) -> torch.Tensor:
        """list[str] → raw text embeddings (N, D) float32 on the CPU."""
        texts = list(texts)
        if not texts:
            raise ValueError("encode_texts needs at least one caption")
        bad = [type(t).__name__ for t in texts if not isinstance(t, str)]
        if bad:
            raise TypeError(f"texts must be strings, got {bad[0]}")
        return self.encode_tokens(**self.tokenize(texts)).cpu()


# The image processor's subfolder: Kandinsky 2.2 priors name it ``image_processor``, unCLIP
# image-variation repos (kakaobrain/karlo-v1-alpha-image-variations) ``feature_extractor``.
PROCESSOR_SUBFOLDERS = ("image_processor", "feature_extractor")
# A tokenizer loaded without its config gets transformers' "very large" model_max_length
# (~1e30) and a vocab of its special tokens only; a real CLIP BPE has ≥ 256 byte symbols.
_MAX_TOKENIZER_LENGTH = 100_000
_MIN_TOKENIZER_VOCAB = 256


def clip_image_processor_class():
    """transformers' CLIP image processor class that works without torchvision.

    transformers 5 made ``CLIPImageProcessor`` the torchvision backend; without torchvision
    (vslerp never installs it: it replaces the CPU torch) the first lookup of that name falls
    back to ``CLIPImageProcessorPil`` and logs a warning on every run. This does that lookup
    once, quietly, so diffusers' loaders (which look the class up by the name in
    ``model_index.json``) find it resolved, and returns the class to load processors with.
    """
    import transformers

    try:
        from transformers.utils import is_torchvision_available
    except ImportError:  # pragma: no cover - older transformers: one processor class
        return transformers.CLIPImageProcessor
    if is_torchvision_available() or not hasattr(transformers, "CLIPImageProcessorPil"):
        return transformers.CLIPImageProcessor
    with quiet_torchvision_fallback():
        transformers.CLIPImageProcessor  # noqa: B018 - resolves the name to the PIL class
    return transformers.CLIPImageProcessorPil


@contextlib.contextmanager
def quiet_torchvision_fallback():
    """Within: transformers' "``XImageProcessor`` requires torchvision ... falling back to
    ``XImageProcessorPil``" warnings are not logged (the logger of exactly that fallback, raised
    to ERROR). For code that resolves processor names itself — e.g. diffusers'
    ``load_ip_adapter`` (``CLIPImageProcessor``, ``SiglipImageProcessor``)."""
    import logging

    logger = logging.getLogger("transformers.utils.import_utils")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def first_line(err: BaseException) -> str:
    """The first line of an error's message (its type name when it has none)."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def check_tokenizer(tokenizer, text_encoder, source: str) -> None:
    """Refuse an empty or incomplete tokenizer before it fails deep inside encoding."""
    length, vocab = tokenizer.model_max_length, len(tokenizer)
    if length is None or length > _MAX_TOKENIZER_LENGTH or vocab < _MIN_TOKENIZER_VOCAB:
        raise ValueError(f"cannot load the tokenizer of prior {source!r}: it is empty or "
                         f"incomplete (vocab {vocab}, model_max_length {length}); the "
                         "tokenizer/ folder needs its vocab and tokenizer_config.json")
    positions = getattr(text_encoder.config, "max_position_embeddings", None)
    if positions is not None and length > positions:
        raise ValueError(f"the tokenizer of prior {source!r} pads to {length} tokens but its "
                         f"text_encoder takes at most {positions}")


def part_loader(source: str, option: str, what: str):
    """``part(cls, sub=None, **kwargs)``: ``cls.from_pretrained(source, subfolder=sub)``, any failure
    one ``ValueError`` naming the part and ``what`` (or :class:`ModelUnavailable` for ``option``)."""
    def part(cls, sub: str | None = None, **kwargs):
        where = {"subfolder": sub} if sub else {}
        try:
            return cls.from_pretrained(source, **where, **kwargs)
        except Exception as err:  # noqa: BLE001 - OSError, SafetensorError, ...: one message
            unavailable = unavailable_model(source, option)
            if unavailable is not None:
                raise unavailable from None
            name = sub or cls.__name__
            raise ValueError(f"cannot load the {name} of {what} {source!r}: {first_line(err)}") from None
    return part


def load_encoders(prior: str | Path, *, device=None, dtype: torch.dtype | None = None,
                  text: bool = True) -> ClipEncoders:
    """Load the CLIP encoders of a generator repo (hub id or local folder).

    Two layouts: a Kandinsky 2.2 prior (``image_processor/``) and an unCLIP/Karlo
    image-variations repo (``feature_extractor/``). Reads the ``image_encoder``
    (CLIPVisionModelWithProjection) and the image processor, and with ``text=True`` the
    ``text_encoder`` (CLIPTextModelWithProjection) and ``tokenizer`` (CLIPTokenizer).
    ``device`` defaults to cuda/mps/cpu, ``dtype`` to float16 on CUDA else float32. Any
    failure — a bad device, a missing part, truncated weights, an empty tokenizer — raises
    one ``ValueError`` naming the prior and the part.
    """
    from transformers import (
        CLIPTextModelWithProjection,
        CLIPTokenizer,
        CLIPVisionModelWithProjection,
    )

    if not isinstance(prior, (str, Path)) or not str(prior):
        raise TypeError(f"prior must be a hub id or a folder, got {prior!r}")
    device = parse_device(device) if device is not None else default_device()
    dtype = dtype or default_dtype(device)
    dtype_key = dtype_kwarg()
    source = str(prior)
    local = Path(source).expanduser()
    if local.exists() and not local.is_dir():
        raise ValueError(f"prior {source!r} is a file, not a folder or hub id")
    if not local.exists() and not is_repo_id(source):
        raise ValueError(f"prior folder not found: {source}")
    processors = PROCESSOR_SUBFOLDERS
    if local.is_dir():
        source = str(local)
        needed = ["image_encoder"] + (["text_encoder", "tokenizer"] if text else [])
        for sub in needed:
            if not (local / sub).is_dir():
                raise ValueError(f"cannot load the {sub} of prior {source!r}: it has no {sub}/ "
                                 "folder (expected a Kandinsky 2.2 prior or an unCLIP/Karlo "
                                 "image-variations repo)")
        processors = tuple(p for p in PROCESSOR_SUBFOLDERS if (local / p).is_dir())
        if not processors:
            raise ValueError(f"cannot load the image processor of prior {source!r}: it has "
                             f"neither {PROCESSOR_SUBFOLDERS[0]}/ nor {PROCESSOR_SUBFOLDERS[1]}/")

    part = part_loader(source, "--prior", "prior")
    image_encoder = part(CLIPVisionModelWithProjection, "image_encoder", **{dtype_key: dtype})
    image_processor, errors = None, []
    for sub in processors:  # a hub id: try both layouts
        try:
            image_processor = part(clip_image_processor_class(), sub)
            break
        except ModelUnavailable:
            raise
        except ValueError as err:
            errors.append(str(err))
    if image_processor is None:
        raise ValueError(errors[0] if len(errors) == 1 else
                         f"cannot load the image processor of prior {source!r} from "
                         f"{' or '.join(f'{p}/' for p in processors)}")
    text_encoder = tokenizer = None
    if text:
        text_encoder = part(CLIPTextModelWithProjection, "text_encoder", **{dtype_key: dtype})
        tokenizer = part(CLIPTokenizer, "tokenizer")
        check_tokenizer(tokenizer, text_encoder, source)
    try:
        return ClipEncoders(image_encoder, image_processor, text_encoder, tokenizer,
                            model_id=source, device=device, dtype=dtype)
    except (AttributeError, StopIteration) as err:  # a config without projection_dim, no weights
        raise ValueError(f"the encoders of prior {source!r} are not CLIP encoders with a "
                         f"projection ({first_line(err)})") from None

