"""What a model is, without loading it (no torch, no diffusers): the backend table.

One :class:`Backend` record per generator (:data:`TABLE`): the ``model_index.json``
``_class_name``s it claims, its pipeline class, its image encoder, its size rule, its
defaults, its options, its zero-data mean and its label. The loader, the statistics layer, the
size limits and the CLI's checks all read it; adding a backend is one adapter file and one
record. An unknown ``_class_name`` is :class:`UnsupportedModel`, naming the supported ones.

Also here: :func:`read_model_index` (read once per folder and version of the file), an
IP-Adapter's name ``REPO_OR_DIR:[SUBFOLDER/]WEIGHT`` (:func:`parse_ip_adapter`) and where its
image encoder is (:func:`ip_adapter_encoder`).
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass
from pathlib import Path

from vslerp.defaults import DEFAULT_DECODER, DEFAULT_PRIOR

from .hub import is_repo_id, local_folder, offline

__all__ = ["BACKENDS", "FLUX", "FLUX_IMAGE_ENCODER", "IP_ADAPTER_FORMAT", "IP_ADAPTER_SD", "IP_ADAPTER_SDXL", "KANDINSKY", "KANDINSKY_PRIOR_LAYOUT",
           "PRIORS", "STABLE_UNCLIP", "TABLE", "UNCLIP", "WEIGHT_SUFFIXES", "Backend", "UnsupportedModel",
           "backend_by_name", "backend_of", "backend_record", "ip_adapter_encoder", "ip_adapter_encoder_subfolder", "parse_ip_adapter",
           "read_model_index", "size_rule_of"]

KANDINSKY, UNCLIP = "kandinsky2.2", "unclip"  # the backends' names (describe(), sidecars, backend=)
STABLE_UNCLIP, IP_ADAPTER_SD, IP_ADAPTER_SDXL = "stable-unclip", "ip-adapter-sd", "ip-adapter-sdxl"
FLUX = "flux"
FLUX_IMAGE_ENCODER = "openai/clip-vit-large-patch14"  # XLabs' FLUX IP-Adapter's encoder (another repo)
KANDINSKY_PRIOR_LAYOUT = "kandinsky2.2-prior"  # a Kandinsky 2.2 prior given alone to `stats compute`


@dataclass(frozen=True)
class Backend:
    """One generator vslerp renders with.

    name: the backend's name; class_names: the ``_class_name``s it claims (diffusers' own
    pipeline first, then the ``VSlerp*Pipeline`` a saved folder names); pipeline: (module,
    class) of its adapter, imported on use; label: what the messages call it; layout: its
    image-encoder layout for ``vslerp stats compute --model`` (recorded in statistics files);
    encoder: where that encoder is ("prior": its Kandinsky prior's, "own": the repo's
    ``image_encoder/``, "ip-adapter": the adapter's); size_part / size_kind: the subfolder whose
    ``config.json`` gives the size rule and how (see :func:`size_rule_of`; "packed": FLUX's 2×2
    latent patches double the VAE's factor); hub_size: the rule
    when no config can be read; guidance, size: diffusers' defaults (size None: the model's
    config says it); options: the render options it takes beyond the defaults; mean: where its
    zero-data image mean is ("prior": the prior's ``clip_mean``, "image_normalizer", None);
    prompt_targets: a prompt target becomes an image embedding (through its prior).
    """

    name: str
    class_names: tuple[str, ...]
    pipeline: tuple[str, str]
    label: str
    layout: str
    encoder: str
    size_part: str
    size_kind: str
    hub_size: tuple[int, int | None]
    guidance: float
    size: int | None
    options: tuple[str, ...]
    mean: str | None
    prompt_targets: bool

    def pipeline_class(self):
        """The adapter class (imports torch and diffusers)."""
        import importlib

        module, name = self.pipeline
        return getattr(importlib.import_module(module), name)


TABLE: tuple[Backend, ...] = (
    Backend(KANDINSKY, ("KandinskyV22Pipeline", "VSlerpPipeline"), ("vslerp.pipelines.kandinsky", "VSlerpPipeline"),
            "a Kandinsky 2.2 decoder", "kandinsky2.2-decoder", "prior", "movq", "movq", (64, None),
            4.0, 512, ("strength",), "prior", True),
    Backend(UNCLIP, ("UnCLIPImageVariationPipeline", "VSlerpUnCLIPPipeline"),
            ("vslerp.pipelines.unclip", "VSlerpUnCLIPPipeline"), "an unCLIP image-variation model", "unclip",
            "own", "super_res_first", "fixed", (1, 256), 8.0, None, (), "prior", True),
    Backend(STABLE_UNCLIP, ("StableUnCLIPImg2ImgPipeline", "VSlerpStableUnCLIPPipeline"),
            ("vslerp.pipelines.stable_unclip", "VSlerpStableUnCLIPPipeline"), "a Stable unCLIP model",
            "stable-unclip", "own", "vae", "vae", (8, None), 10.0, None, ("prompt", "negative_prompt", "noise_level"),
            "image_normalizer", False),
    Backend(IP_ADAPTER_SD, ("StableDiffusionPipeline", "VSlerpIPAdapterPipeline"),
            ("vslerp.pipelines.ip_adapter", "VSlerpIPAdapterPipeline"), "a Stable Diffusion 1.5 base",
            "ip-adapter-sd", "ip-adapter", "vae", "vae", (8, None), 7.5, None,
            ("strength", "prompt", "negative_prompt", "ip_adapter_scale"), None, False),
    Backend(IP_ADAPTER_SDXL, ("StableDiffusionXLPipeline", "VSlerpIPAdapterXLPipeline"),
            ("vslerp.pipelines.ip_adapter", "VSlerpIPAdapterXLPipeline"), "an SDXL base", "ip-adapter-sdxl",
            "ip-adapter", "vae", "vae", (8, None), 5.0, None,
            ("strength", "prompt", "negative_prompt", "ip_adapter_scale"), None, False),
    Backend(FLUX, ("FluxPipeline", "VSlerpFluxPipeline"), ("vslerp.pipelines.flux", "VSlerpFluxPipeline"),
            "a FLUX.1 model", "flux", "ip-adapter", "vae", "packed", (16, None), 3.5, 1024,
            ("strength", "prompt", "negative_prompt", "ip_adapter_scale", "true_cfg_scale"), None, False),
)
BACKENDS = {name: record.name for record in TABLE for name in record.class_names}  # _class_name → backend
# the priors --prior takes (no generators of their own): _class_name → (label, stats compute layout,
# None: read as a prior folder by its parts)
PRIORS = {"KandinskyV22PriorPipeline": ("a Kandinsky 2.2 prior", KANDINSKY_PRIOR_LAYOUT),
          "UnCLIPPipeline": ("a Karlo text-to-image model (its prior)", None)}
IP_ADAPTER_FORMAT = "REPO_OR_DIR:[SUBFOLDER/]WEIGHT.safetensors"
WEIGHT_SUFFIXES = (".safetensors", ".bin")  # the adapter weight files diffusers loads
_BY_NAME = {record.name: record for record in TABLE}


class UnsupportedModel(ValueError):
    """A ``model_index.json`` of a pipeline vslerp does not render: ``.class_name``, ``.ident``."""

    def __init__(self, class_name, ident):
        renders = ", ".join(record.class_names[0] for record in TABLE)
        if class_name in PRIORS:
            message = (f"{ident} holds {PRIORS[class_name][0]} ({class_name}), not a generator: give it as "
                       f"the prior (--prior, prior=); vslerp renders {renders}")
        else:
            message = f"{ident}: {class_name} is not supported (yet): vslerp renders {renders}"
        super().__init__(message)
        self.class_name, self.ident = class_name, str(ident)


def backend_record(name: str) -> Backend:
    """The record of backend ``name`` (``"kandinsky2.2"``, ``"unclip"``, ...)."""
    return _BY_NAME[name]


def size_rule_of(record: Backend, config: dict) -> tuple[int, int | None]:
    """``(factor, fixed)`` of ``record`` from the ``config.json`` of its ``size_part``: a MoVQ's
    factor squared (Kandinsky 2.2, as ``downscale_height_and_width``), the one size of a
    super-resolution UNet (unCLIP), twice a VAE's factor (FLUX's packed latents), or multiples of 8
    and of a VAE's factor (diffusers' check)."""
    if record.size_kind == "fixed":
        return 1, int(config["sample_size"])
    factor = 2 ** (len(config["block_out_channels"]) - 1)
    if record.size_kind == "packed":
        return 2 * factor, None
    return (factor ** 2, None) if record.size_kind == "movq" else (math.lcm(8, factor), None)


def _hub_index(repo_id: str) -> Path | None:
    """model_index.json of a hub repo: from the local cache, else downloaded (unless offline)."""
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:  # pragma: no cover - a dependency of diffusers
        return None
    for local_only in (True, False) if not offline() else (True,):
        try:
            return Path(hf_hub_download(repo_id, "model_index.json", local_files_only=local_only))
        except Exception:  # noqa: BLE001 - not cached, no network, no such repo: no index
            continue
    return None


@functools.lru_cache(maxsize=64)
def _parsed_index(path: str, mtime_ns: int, size: int) -> dict:
    """One version of a ``model_index.json`` (the key changes when the file does), parsed once."""
    try:
        index = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ValueError(f"{path} cannot be read as JSON: {err}") from None
    if not isinstance(index, dict):
        raise ValueError(f"{path} is not a JSON object")
    return index


def read_model_index(id_or_dir) -> dict | None:
    """The ``model_index.json`` of a local folder or hub id, as a dict; None when there is none
    (a folder without one, a hub id neither cached nor downloadable). A file that is there but
    not a JSON object raises ``ValueError`` naming it. Each version of a file is read once."""
    folder = local_folder(id_or_dir)
    if folder is not None:
        path = folder / "model_index.json"
    elif id_or_dir is not None and is_repo_id(str(id_or_dir)):
        path = _hub_index(str(id_or_dir))
        if path is None:
            return None
    else:
        return None
    try:
        stat = path.stat()
    except OSError:
        return None
    if not path.is_file():
        return None
    return dict(_parsed_index(str(path.resolve()), stat.st_mtime_ns, stat.st_size))


def backend_by_name(id_or_dir) -> str | None:
    """The backend a model id names without reading it: "unclip" for Karlo ids, "stable-unclip"
    for Stable unCLIP ids, "flux" for FLUX.1 ids, "kandinsky2.2" for the default Kandinsky ids, else None."""
    name = str(id_or_dir).lower() if id_or_dir is not None else ""
    if "karlo" in name:
        return UNCLIP
    if "flux.1" in name:
        return FLUX
    if "unclip" in name and "stable-diffusion" in name:
        return STABLE_UNCLIP
    return KANDINSKY if name in (DEFAULT_DECODER, DEFAULT_PRIOR) else None


def backend_of(id_or_dir, *, strict: bool = False) -> str | None:
    """The backend of a model (hub id or folder): a record name of :data:`TABLE` or None
    (nothing tells, or a ``model_index.json`` of another pipeline). From ``_class_name``, else
    :func:`backend_by_name`. strict: a ``_class_name`` no record claims is
    :class:`UnsupportedModel` instead of None."""
    index = read_model_index(id_or_dir)
    if index is None:
        return backend_by_name(id_or_dir)
    name = index.get("_class_name")
    if strict and name not in BACKENDS:
        raise UnsupportedModel(name, id_or_dir)
    return BACKENDS.get(name)


def parse_ip_adapter(text, name: str = "--ip-adapter") -> tuple[str, str, str]:
    """``"REPO_OR_DIR:SUBFOLDER/WEIGHT"`` → ``(repo_or_dir, subfolder, weight_name)``, and
    ``"REPO_OR_DIR:WEIGHT"`` (a weight at the root, as XLabs' FLUX adapters) → ``(repo_or_dir, "", weight_name)``.

    Raises ``ValueError`` with one line (``--ip-adapter must be REPO_OR_DIR:[SUBFOLDER/]WEIGHT.safetensors,
    got ...``, and what is missing) for anything else: no ``:``, an empty part, a weight file
    that is not ``.safetensors`` / ``.bin``. ``name``: the option or argument the message names.
    The split is at the last ``:``, so a Windows drive (``C:\\adapters:models/...``) stays in the
    folder; the subfolder may be nested (``a/b/w.safetensors`` → ``"a/b"``).
    """
    if not isinstance(text, str):
        raise TypeError(f"{name} must be a string, got {type(text).__name__}")
    value = text.strip()

    def bad(why: str) -> ValueError:
        return ValueError(f"{name} must be {IP_ADAPTER_FORMAT}, got {text!r} ({why}); "
                          "e.g. h94/IP-Adapter:models/ip-adapter_sd15.safetensors or "
                          "XLabs-AI/flux-ip-adapter:ip_adapter.safetensors")

    repo, sep, rest = value.rpartition(":")
    if not sep:
        raise bad("no ':' between the repo or folder and the weight file")
    repo, rest = repo.strip(), rest.strip().replace("\\", "/")
    if not repo:
        raise bad("no repo or folder before ':'")
    subfolder, _, weight = rest.rpartition("/")
    subfolder = subfolder.strip("/")
    if not weight or not weight.lower().endswith(WEIGHT_SUFFIXES):
        raise bad("the weight file must end in .safetensors or .bin")
    if subfolder and any(part in ("", ".", "..") for part in subfolder.split("/")):
        raise bad("the subfolder must be a plain relative path")
    return repo, subfolder, weight


def ip_adapter_encoder(backend: str, repo: str, subfolder: str, weight_name: str,
                       image_encoder=None) -> tuple[str, str]:
    """``(repo_or_dir, subfolder)`` of an IP-Adapter's image encoder: ``image_encoder`` (a repo id or
    folder) when given; FLUX's :data:`FLUX_IMAGE_ENCODER` (XLabs keep it in another repo); else the
    adapter repo's :func:`ip_adapter_encoder_subfolder` (h94's layout)."""
    if image_encoder is not None:
        return str(image_encoder), ""
    if backend == FLUX:
        return FLUX_IMAGE_ENCODER, ""
    return repo, ip_adapter_encoder_subfolder(subfolder, weight_name)


def ip_adapter_encoder_subfolder(subfolder: str, weight_name: str) -> str:
    """Where an adapter's image encoder is, relative to its repo or folder:
    ``SUBFOLDER/image_encoder``, except h94's SDXL adapters trained on ViT-H/14
    (``sdxl_models/ip-adapter_sdxl_vit-h``, ``..._plus_vit-h``), whose encoder is the
    ``models/image_encoder`` beside that subfolder (as diffusers' docs load them)."""
    parent, _, last = subfolder.strip("/").rpartition("/")
    if "vit-h" in weight_name.lower() and last != "models":
        return f"{parent}/models/image_encoder".lstrip("/")
    return f"{subfolder.strip('/')}/image_encoder".lstrip("/")
