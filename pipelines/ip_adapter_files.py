"""IP-Adapter weight files for :mod:`vslerp.pipelines.ip_adapter`: naming, checking, saving.

- ``"REPO_OR_DIR:SUBFOLDER/WEIGHT"`` is how an adapter is named (``describe()``, the CLI's
  ``--ip-adapter``): :func:`split_adapter_id`.
- :func:`check_adapter_file` refuses a "plus" or FaceID adapter from its safetensors keys
  (read with ``safetensors.safe_open``, no pickle) before any weight is loaded.
- :func:`adapter_state_dict` re-exports an adapted UNet's adapter weights with the keys of the
  hub file, and :func:`without_adapter` shows the UNet as before ``load_ip_adapter`` for the
  duration of a save — the two halves of ``save_pretrained``.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from vslerp.stats.hub import local_folder, unavailable_model
from vslerp.stats.models import WEIGHT_SUFFIXES, parse_ip_adapter

__all__ = ["ADAPTER_WHY", "SAVED_FOLDER", "SAVED_JSON", "SAVED_WEIGHT", "adapter_state_dict", "check_adapter_file",
           "check_adapter_keys", "split_adapter_id", "without_adapter"]

SAVED_FOLDER, SAVED_WEIGHT, SAVED_JSON = "ip_adapter", "ip-adapter.safetensors", "vslerp_ip_adapter.json"
_XLABS_PROJ, _XLABS_KV = "ip_adapter_proj_model.", "double_blocks.{}.processor.ip_adapter_double_stream_{}_proj"
_PLAIN_KEYS = {"image_proj.proj.weight", "image_proj.proj.bias", "image_proj.norm.weight", "image_proj.norm.bias"}
ADAPTER_WHY = ("vSLERP edits the projected CLIP image embedding, which only the non-plus adapters "
               "(ip-adapter_sd15, ip-adapter_sdxl, ip-adapter_sdxl_vit-h) read; plus adapters consume the "
               "encoder's hidden states, FaceID adapters face embeddings")


def split_adapter_id(ip_adapter: str, subfolder: str | None = None, weight_name: str | None = None):
    """``"h94/IP-Adapter:models/ip-adapter_sd15.safetensors"`` → ``("h94/IP-Adapter", "models",
    "ip-adapter_sd15.safetensors")`` (:func:`vslerp.stats.models.parse_ip_adapter`, the CLI's
    parser too); a plain repo id or folder comes back with the given ``subfolder`` and
    ``weight_name`` (None where not given). Both forms at once is an error."""
    repo, sep, rest = ip_adapter.rpartition(":")
    if not sep or not rest.endswith(WEIGHT_SUFFIXES) or not repo:
        return ip_adapter, subfolder, weight_name
    if subfolder is not None or weight_name is not None:
        raise ValueError(f"ip_adapter={ip_adapter!r} names its weight file already: give no ip_adapter_subfolder "
                         "or ip_adapter_weight_name")
    return parse_ip_adapter(ip_adapter, "ip_adapter")


def check_adapter_keys(keys, name: str) -> None:
    """Refuse an adapter file whose ``image_proj`` (XLabs: ``ip_adapter_proj_model``) is not diffusers'
    ``ImageProjection`` (a plain IP-Adapter: ``proj`` + ``norm``) or that carries LoRA weights (FaceID)."""
    keys = [k.replace(_XLABS_PROJ, "image_proj.", 1) if k.startswith(_XLABS_PROJ) else k for k in keys]
    proj = {k for k in keys if k.startswith("image_proj.")}
    lora = any("lora" in k for k in keys)
    if proj != _PLAIN_KEYS or lora:
        if any(".latents" in k or "proj_in" in k for k in proj):
            kind = "a plus (resampler)"
        elif lora or any("perceiver" in k or k.startswith("image_proj.proj.0") for k in proj):
            kind = "a FaceID"
        else:
            kind = "an unknown"
        raise ValueError(f"{name} is {kind} IP-Adapter: {ADAPTER_WHY}")


def _adapter_file(source: str, subfolder: str, weight_name: str, **kwargs) -> Path:
    """The adapter's weight file: in a local folder, else from the hub (cache first)."""
    folder = local_folder(source)
    if folder is not None:
        path = folder / subfolder / weight_name
        if not path.is_file():
            raise ValueError(f"IP-Adapter weights not found: {path}")
        return path
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(source, weight_name, subfolder=subfolder or None,
                                    cache_dir=kwargs.get("cache_dir"), token=kwargs.get("token")))
    except Exception as err:  # noqa: BLE001 - offline, no such repo / file
        raise unavailable_model(source, "--ip-adapter") or ValueError(
            f"cannot load the IP-Adapter {source}:{subfolder}/{weight_name}: {err}") from None


def check_adapter_file(source: str, subfolder: str, weight_name: str, name: str, **kwargs) -> None:
    """:func:`check_adapter_keys` of a safetensors adapter file (a ``.bin`` is checked after
    loading, by the UNet's image projection: its keys cannot be read without unpickling)."""
    if not weight_name.endswith(".safetensors"):
        return
    from safetensors import safe_open

    with safe_open(str(_adapter_file(source, subfolder, weight_name, **kwargs)), "pt") as f:
        check_adapter_keys(list(f.keys()), name)


def adapter_state_dict(unet) -> dict[str, torch.Tensor]:
    """The adapter's weights from an adapted UNet, with the keys of the hub file
    (``image_proj.proj`` / ``.norm``, ``ip_adapter.N.to_{k,v}_ip.weight`` with N = 1, 3, 5, …
    over the cross-attention processors, the numbering diffusers' loader reads); from a FLUX
    transformer, XLabs' keys (``ip_adapter_proj_model.*``, ``double_blocks.N.processor.*``)."""
    proj = unet.encoder_hid_proj.image_projection_layers[0]
    flux = hasattr(unet, "single_transformer_blocks")
    prefix = _XLABS_PROJ if flux else "image_proj."
    out = {f"{prefix}{k.replace('image_embeds', 'proj')}": v for k, v in proj.state_dict().items()}
    if flux:
        procs = [p for n, p in unet.attn_processors.items() if n.startswith("transformer_blocks")]
        for block, proc in enumerate(procs):
            for kind, layer in (("k", proc.to_k_ip[0]), ("v", proc.to_v_ip[0])):
                out |= {f"{_XLABS_KV.format(block, kind)}.{k}": v for k, v in layer.state_dict().items()}
        return {k: v.detach().cpu().contiguous() for k, v in out.items()}
    key_id = 1
    for name, proc in unet.attn_processors.items():
        if name.endswith("attn1.processor") or "motion_modules" in name:
            continue
        out[f"ip_adapter.{key_id}.to_k_ip.weight"] = proc.to_k_ip[0].weight
        out[f"ip_adapter.{key_id}.to_v_ip.weight"] = proc.to_v_ip[0].weight
        key_id += 2
    return {k: v.detach().cpu().contiguous() for k, v in out.items()}


@contextlib.contextmanager
def without_adapter(unet):
    """The UNet as before ``load_ip_adapter`` — plain attention processors, no image projection,
    its config's ``encoder_hid_dim_type`` as saved — and everything put back on exit."""
    from diffusers.models.attention_processor import AttnProcessor2_0
    from diffusers.models.transformers.transformer_flux import FluxAttnProcessor

    plain = FluxAttnProcessor if hasattr(unet, "single_transformer_blocks") else AttnProcessor2_0
    procs, hid = unet.attn_processors, unet.encoder_hid_proj
    hid_type = getattr(unet.config, "encoder_hid_dim_type", None)
    unet.set_attn_processor({name: plain() if hasattr(proc, "to_k_ip") else proc for name, proc in procs.items()})
    unet.encoder_hid_proj = None
    unet.config.encoder_hid_dim_type = unet.config.get("encoder_hid_dim_type")  # diffusers sets the attribute only
    try:
        yield
    finally:
        unet.set_attn_processor(procs)
        unet.encoder_hid_proj = hid
        unet.config.encoder_hid_dim_type = hid_type
