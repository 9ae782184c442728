"""A call's inputs: is a string an image path or a prompt (the one decision, for the pipeline
and the CLI), opening a named image, and the checks of embeddings and numbers at the boundary.

A target may be either; users give prompts of any length and content (hundreds of bytes,
newlines, NUL bytes, text pasted with broken encodings), and asking the file system about
such a string raises (``OSError: [Errno 36] File name too long``, ``ValueError: embedded
null byte``, ``UnicodeEncodeError``). :func:`image_path_or_prompt` never raises.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from vslerp.defaults import IMAGE_SUFFIXES  # torch-free: the CLI's parser imports this module

__all__ = ["IMAGE_SUFFIXES", "MIX_REQUEST_KEYS", "OPTION_NAMES", "ImageOrPrompt", "check_embedding", "check_generator", "check_input", "check_prompt", "check_request",
           "first_prompt", "first_refused", "image_path_or_prompt", "init_photo", "is_image", "open_named_image", "options_given",
           "refused_option"]


@dataclass(frozen=True)
class ImageOrPrompt:
    """What a string names.

    kind: "image" (an existing file), "directory" (an existing folder), "missing" (looks like
        an image path — an image suffix and no spaces — but no such file) or "prompt".
    path: the path for "image"/"directory"/"missing" (``~`` expanded, joined to ``base``).
    """

    kind: str
    path: Path | None = None


def _as_path(text: str, base) -> Path | None:
    """``text`` as a path the OS can be asked about, or None when it cannot name a file."""
    if "\x00" in text or not text.strip():
        return None
    try:
        os.fsencode(text)  # lone surrogates that are not surrogateescape'd bytes
        path = Path(text).expanduser()
        if base is not None and not path.is_absolute():
            path = Path(base) / path
        encoded = os.fsencode(str(path))
    except (ValueError, RuntimeError, UnicodeError, OSError):
        return None
    if len(encoded) > 4096 or any(len(part) > 255 for part in encoded.split(b"/")):
        return None  # longer than any file name the OS accepts (ENAMETOOLONG)
    return path


def image_path_or_prompt(text, base=None) -> ImageOrPrompt:
    """Decide whether ``text`` names an image file or is a prompt; never raises.

    An existing file is an "image" (read and checked by the caller), an existing folder a
    "directory" (an error for the caller to name), a string ending in an image suffix with
    no spaces that is not there "missing"; anything else — a sentence, a 2,000-byte prompt,
    text with NUL bytes or newlines — a "prompt". ``base``: folder of relative paths
    (a jobs file's folder)."""
    if not isinstance(text, str):
        text = os.fspath(text) if isinstance(text, os.PathLike) else str(text)
        if isinstance(text, bytes):
            text = os.fsdecode(text)
    path = _as_path(text, base)
    if path is not None:
        try:
            if path.is_file():
                return ImageOrPrompt("image", path)
            if path.is_dir():
                return ImageOrPrompt("directory", path)
        except (OSError, ValueError):  # EACCES, ELOOP, ...: not a file we can read
            pass
        stripped = text.strip()
        if stripped.lower().endswith(IMAGE_SUFFIXES) and " " not in stripped:
            return ImageOrPrompt("missing", path)
    return ImageOrPrompt("prompt")


def first_prompt(values):
    """The first prompt among ``values`` (a string naming no file), else their first string, else
    None: the target a backend's ``_check_backend`` refuses a prompt by."""
    texts = [value for value in values if isinstance(value, str)]
    return next((text for text in texts if image_path_or_prompt(text).kind == "prompt"), texts[0] if texts else None)


def check_prompt(name: str, text: str) -> str:
    """``text`` if a tokenizer can read it, else ``ValueError`` naming ``name``: not empty,
    and valid Unicode (no unpaired surrogates, which text decoded with errors carries and
    which the tokenizers library rejects with an unrelated TypeError)."""
    if not text.strip():
        raise ValueError(f"{name} prompt is empty")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        char = text[err.start]
        raise ValueError(f"{name} prompt is not valid text: it holds an unpaired surrogate "
                         f"U+{ord(char):04X} at character {err.start}") from None
    return text


def is_image(value) -> bool:
    """Whether ``value`` is a decoded image :func:`open_named_image` takes: a PIL image or a
    numpy array (a path is a string: :func:`image_path_or_prompt` decides)."""
    import numpy as np
    import PIL.Image

    return isinstance(value, (PIL.Image.Image, np.ndarray))


def open_named_image(name: str, image):
    """An image — a file path, a PIL image or a numpy array — as RGB by
    :func:`vslerp.stats.data.open_image`, the one normalisation of every image the pipelines
    take (EXIF-upright, alpha composited on white, 16-bit/palette/odd modes converted, empty
    images and bombs refused), every failure one ``ValueError`` naming ``name``: not found, a
    directory, or unreadable (and why)."""
    from vslerp.stats import UnreadableImage, note_input, open_image

    if is_image(image):
        try:
            return open_image(image)
        except UnreadableImage as err:
            raise ValueError(f"{name} image cannot be used: {err}") from None
    found = image_path_or_prompt(image)
    path = found.path or Path(str(image))
    if found.kind == "directory":
        raise ValueError(f"{name} image {path} is a directory, not an image file")
    if found.kind != "image":
        raise ValueError(f"{name} image not found: {path}")
    note_input(path, f"{name} image")
    try:
        return open_image(path)
    except UnreadableImage as err:
        raise ValueError(f"{name} image {path} cannot be read: {err}") from None


REQUEST_KEYS = ("source", "target", "thetas", "alphas", "generator")  # of a render_batch request
MIX_REQUEST_KEYS = ("inputs", "weights", "alphas", "generator")  # of a render_batch mix request
REQUEST_OPTIONAL_KEYS = ("statistics", "image")


def check_request(index: int, request) -> dict:
    """A ``render_batch`` request checked: a grid (every key of ``REQUEST_KEYS``, raw source and
    target) or, with ``"inputs"``, a mix (every key of ``MIX_REQUEST_KEYS``: 2 to ``MAX_INPUTS``
    raw inputs, weights by :func:`.request.check_weights`), no key but those and
    ``REQUEST_OPTIONAL_KEYS``, one ``torch.Generator``; else ``TypeError``/``ValueError`` naming
    ``requests[index]`` and the key (a typo is named). Returns it (a mix's inputs as a list, its
    weights normalised)."""
    import torch

    from .request import MAX_INPUTS, RequestError, check_weights  # request.py imports this module

    name = f"requests[{index}]"
    if not isinstance(request, dict):
        raise TypeError(f"{name} must be a dict with keys {', '.join(REQUEST_KEYS)} (a mix: "
                        f"{', '.join(MIX_REQUEST_KEYS)}), got {type(request).__name__}")
    mix = "inputs" in request
    keys, kind = (MIX_REQUEST_KEYS, "a mix request") if mix else (REQUEST_KEYS, "a request")
    missing = [key for key in keys if key not in request]
    if missing:
        raise ValueError(f"{name} has no {missing[0]!r}: {kind} needs {', '.join(keys)}")
    unknown = [key for key in request if key not in keys + REQUEST_OPTIONAL_KEYS]
    if unknown:
        raise ValueError(f"{name} has an unknown key {unknown[0]!r}: {kind} takes "
                         f"{', '.join(keys + REQUEST_OPTIONAL_KEYS)}")
    if not mix:
        raws = [request["source"], request["target"]]
    else:
        raws = list(request["inputs"]) if isinstance(request["inputs"], (torch.Tensor, list, tuple)) else [None]
    if not all(isinstance(raw, torch.Tensor) for raw in raws):
        raise TypeError(f"{name}: " + ("inputs must be raw embeddings, an (N, D) tensor or a list of (D,)" if mix
                                       else "source and target must be raw (D,) embeddings"))
    if request["generator"] is None:
        raise TypeError(f"{name}: give each request its own torch.Generator")
    check_generator(f"{name}: generator", request["generator"])
    if not mix:
        return request
    if not 2 <= len(raws) <= MAX_INPUTS:
        raise ValueError(f"{name} inputs: a mix takes 2 to {MAX_INPUTS} inputs, got {len(raws)}")
    try:
        return {**request, "inputs": raws, "weights": check_weights(request["weights"], len(raws))}
    except RequestError as err:
        raise type(err)(err.field, f"{name}: {err}") from None


OPTION_NAMES = {"strength": "strength < 1 (img2img)", "prompt": "a text prompt=",  # API names of the
                "negative_prompt": "negative_prompt=", "noise_level": "noise_level",  # backend options
                "ip_adapter_scale": "ip_adapter_scale", "true_cfg_scale": "true_cfg_scale"}


def options_given(strength, prompt, negative_prompt, noise_level, ip_adapter_scale,
                  true_cfg_scale=1.0) -> dict[str, bool]:
    """Which backend options a call sets away from their defaults."""
    return {"strength": strength < 1.0, "prompt": prompt is not None, "negative_prompt": negative_prompt is not None,
            "noise_level": noise_level != 0, "ip_adapter_scale": ip_adapter_scale is not None,
            "true_cfg_scale": true_cfg_scale != 1.0}


def first_refused(accepted, given: dict[str, bool]) -> str | None:
    """The first option set in ``given`` (:func:`options_given`) that a backend does not take
    (``accepted``: its ``_backend_options``), or None. The one rule of the pipeline's, the CLI's
    and the editor's checks; each names the option in its own words."""
    return next((name for name, is_given in given.items() if is_given and name not in accepted), None)


def refused_option(backend: str, accepted, given: dict[str, bool], names: dict[str, str] = OPTION_NAMES) -> str | None:
    """The message for :func:`first_refused`'s option, named as ``names`` says (the API's, or the
    CLI's flags); None if ``backend`` takes them all."""
    name = first_refused(accepted, given)
    if name is None:
        return None
    hint = " (a prompt as target goes through the prior)" if name == "prompt" and backend == "kandinsky2.2" else ""
    return f"{names[name]} is not supported by the {backend} backend{hint}"


def init_photo(name: str, image, source, strength: float):
    """The photo an img2img render (``strength`` < 1) starts from, as RGB: ``image`` (a PIL
    image, numpy array or path, by :func:`open_named_image`), else ``source`` when it is one;
    None at strength 1. ``ValueError`` naming ``name`` when there is no photo to start from,
    or ``image`` is given at strength 1."""
    if strength >= 1.0:
        if image is not None:
            raise ValueError(f"{name}image is the photo an img2img render starts from: give it with strength < 1")
        return None
    photo = image if image is not None else source
    if is_image(photo) or isinstance(photo, (str, Path)):
        return open_named_image(f"{name}image" if image is not None else f"{name}source", photo)
    raise ValueError(f"{name}strength < 1 starts from a photo: give the source as an image (or image=), "
                     f"not {'a ' + type(photo).__name__ if photo is not None else 'nothing'}")


def check_input(name: str, value, prompt: bool) -> None:
    """A source or target of a type the pipeline reads (``TypeError`` naming ``name``)."""
    import torch

    if not (is_image(value) or isinstance(value, (torch.Tensor, str, Path))):
        what = "a PIL image, a numpy image, an image path" + (", a prompt" if prompt else "")
        raise TypeError(f"{name} must be {what} or a (D,) tensor, got {type(value).__name__}")


def check_generator(name: str, generator) -> None:
    """One torch.Generator (or None): every cell shares its noise."""
    import torch

    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"{name} must be one torch.Generator (every cell shares its noise), "
                        f"got {type(generator).__name__}")


def check_embedding(name: str, raw, dim: int):
    """A raw image embedding given as (D,) or (1, D) → (D,) float32 on the CPU; ``ValueError``
    naming ``name`` for another shape, non-finite values, entries too large to render
    (:data:`vslerp.checks.MAX_EMBEDDING_VALUE`) or the zero vector."""
    import torch

    from vslerp.checks import check_embedding_values

    raw = raw.detach()
    if raw.ndim == 2 and raw.shape[0] == 1:
        raw = raw[0]
    if raw.ndim != 1 or raw.shape[0] != dim:
        raise ValueError(f"{name} embedding must have shape ({dim},), got {tuple(raw.shape)}")
    if raw.is_complex():
        raise TypeError(f"{name} embedding must be real, got a {raw.dtype} tensor")
    if raw.is_floating_point() and not bool(torch.isfinite(raw).all()):  # before a cast makes 1e300 inf
        raise ValueError(f"{name} embedding contains non-finite values")
    check_embedding_values(f"{name} embedding", raw)
    raw = raw.to("cpu", torch.float32)
    if not bool((raw != 0).any()):
        raise ValueError(f"{name} embedding is the zero vector")
    return raw
