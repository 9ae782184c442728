"""What a model id or folder is, without loading it (no torch, no diffusers): the one home.

- :func:`read_model_index` — its ``model_index.json`` (a folder's, or a hub id's from the cache
  or downloaded); :data:`BACKENDS` — which vslerp backend a ``_class_name`` is (as diffusers'
  ``AutoPipeline`` reads it); :func:`backend_of` / :func:`backend_by_name`.
- An IP-Adapter's name ``REPO_OR_DIR:SUBFOLDER/WEIGHT`` (:func:`parse_ip_adapter`: the CLI's
  ``--ip-adapter``, the API's one-string ``ip_adapter=``) and where its image encoder is
  (:func:`ip_adapter_encoder_subfolder`: what the pipeline renders with is what the statistics
  are computed with).

Used by ``vslerp.pipelines.loading`` (dispatch), ``vslerp.stats.generators`` (which encoders)
and the CLI's checks before any model loads.
"""

from __future__ import annotations

import json
from pathlib import Path

from vslerp.defaults import DEFAULT_DECODER, DEFAULT_PRIOR

from .hub import is_repo_id, local_folder, offline

__all__ = ["BACKENDS", "IP_ADAPTER_FORMAT", "IP_ADAPTER_SD", "IP_ADAPTER_SDXL", "KANDINSKY", "STABLE_UNCLIP",
           "UNCLIP", "WEIGHT_SUFFIXES", "backend_by_name", "backend_of", "ip_adapter_encoder_subfolder", "parse_ip_adapter",
           "read_model_index"]

KANDINSKY, UNCLIP = "kandinsky2.2", "unclip"  # the backends' names (describe(), sidecars)
STABLE_UNCLIP, IP_ADAPTER_SD, IP_ADAPTER_SDXL = "stable-unclip", "ip-adapter-sd", "ip-adapter-sdxl"
BACKENDS = {  # model_index.json _class_name → backend (diffusers' own pipelines and ours, saved)
    "KandinskyV22Pipeline": KANDINSKY,
    "VSlerpPipeline": KANDINSKY,
    "UnCLIPImageVariationPipeline": UNCLIP,
    "VSlerpUnCLIPPipeline": UNCLIP,
    "StableUnCLIPImg2ImgPipeline": STABLE_UNCLIP,
    "VSlerpStableUnCLIPPipeline": STABLE_UNCLIP,
    "StableDiffusionPipeline": IP_ADAPTER_SD,
    "VSlerpIPAdapterPipeline": IP_ADAPTER_SD,
    "StableDiffusionXLPipeline": IP_ADAPTER_SDXL,
    "VSlerpIPAdapterXLPipeline": IP_ADAPTER_SDXL,
}
IP_ADAPTER_FORMAT = "REPO_OR_DIR:SUBFOLDER/WEIGHT.safetensors"
WEIGHT_SUFFIXES = (".safetensors", ".bin")  # the adapter weight files diffusers loads


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


def read_model_index(id_or_dir) -> dict | None:
    """The ``model_index.json`` of a local folder or hub id, as a dict; None when there is none
    (a folder without one, a hub id neither cached nor downloadable). A file that is there but
    not a JSON object raises ``ValueError`` naming it."""
    folder = local_folder(id_or_dir)
    if folder is not None:
        path = folder / "model_index.json"
        if not path.is_file():
            return None
    elif id_or_dir is not None and is_repo_id(str(id_or_dir)):
        path = _hub_index(str(id_or_dir))
        if path is None:
            return None
    else:
        return None
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ValueError(f"{path} cannot be read as JSON: {err}") from None
    if not isinstance(index, dict):
        raise ValueError(f"{path} is not a JSON object")
    return index


def backend_by_name(id_or_dir) -> str | None:
    """The backend a model id names without reading it: "unclip" for Karlo ids, "stable-unclip"
    for Stable unCLIP ids, "kandinsky2.2" for the default Kandinsky ids, else None."""
    name = str(id_or_dir).lower() if id_or_dir is not None else ""
    if "karlo" in name:
        return UNCLIP
    if "unclip" in name and "stable-diffusion" in name:
        return STABLE_UNCLIP
    return KANDINSKY if name in (DEFAULT_DECODER, DEFAULT_PRIOR) else None


def backend_of(id_or_dir) -> str | None:
    """The backend of a model (hub id or folder): a name of :data:`BACKENDS` (``"kandinsky2.2"``,
    ``"unclip"``, ``"stable-unclip"``, ``"ip-adapter-sd"``, ``"ip-adapter-sdxl"``) or None (a
    model_index of another pipeline, or nothing that tells). From ``model_index.json``'s
    ``_class_name``, else :func:`backend_by_name`."""
    index = read_model_index(id_or_dir)
    if index is not None:
        return BACKENDS.get(index.get("_class_name"))
    return backend_by_name(id_or_dir)


def parse_ip_adapter(text, name: str = "--ip-adapter") -> tuple[str, str, str]:
    """``"REPO_OR_DIR:SUBFOLDER/WEIGHT"`` → ``(repo_or_dir, subfolder, weight_name)``.

    Raises ``ValueError`` with one line (``--ip-adapter must be REPO_OR_DIR:SUBFOLDER/WEIGHT.safetensors,
    got ...``, and what is missing) for anything else: no ``:``, an empty part, no subfolder,
    a weight file that is not ``.safetensors`` / ``.bin``. ``name``: the option or argument
    the message names (the CLI's ``--ip-adapter``, the API's ``ip_adapter``).
    The split is at the last ``:`` before the ``SUBFOLDER/WEIGHT`` part, so a Windows drive
    (``C:\\adapters:models/...``) stays in the folder; the subfolder may be nested
    (``a/b/w.safetensors`` → ``"a/b"``).
    """
    if not isinstance(text, str):
        raise TypeError(f"{name} must be a string, got {type(text).__name__}")
    value = text.strip()

    def bad(why: str) -> ValueError:
        return ValueError(f"{name} must be {IP_ADAPTER_FORMAT}, got {text!r} ({why}); "
                          "e.g. h94/IP-Adapter:models/ip-adapter_sd15.safetensors")

    repo, sep, rest = value.rpartition(":")
    if not sep:
        raise bad("no ':' between the repo or folder and SUBFOLDER/WEIGHT")
    repo, rest = repo.strip(), rest.strip().replace("\\", "/")
    if not repo:
        raise bad("no repo or folder before ':'")
    subfolder, slash, weight = rest.rpartition("/")
    subfolder = subfolder.strip("/")
    if not slash or not subfolder:
        raise bad("no SUBFOLDER/ before the weight file")
    if not weight or not weight.lower().endswith(WEIGHT_SUFFIXES):
        raise bad("the weight file must end in .safetensors or .bin")
    if any(part in ("", ".", "..") for part in subfolder.split("/")):
        raise bad("the subfolder must be a plain relative path")
    return repo, subfolder, weight


def ip_adapter_encoder_subfolder(subfolder: str, weight_name: str) -> str:
    """Where an adapter's image encoder is, relative to its repo or folder:
    ``SUBFOLDER/image_encoder``, except h94's SDXL adapters trained on ViT-H/14
    (``sdxl_models/ip-adapter_sdxl_vit-h``, ``..._plus_vit-h``), whose encoder is the
    ``models/image_encoder`` beside that subfolder (as diffusers' docs load them)."""
    parent, _, last = subfolder.strip("/").rpartition("/")
    if "vit-h" in weight_name.lower() and last != "models":
        return f"{parent}/models/image_encoder".lstrip("/")
    return f"{subfolder.strip('/')}/image_encoder".lstrip("/")
