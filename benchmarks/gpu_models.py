"""The GPU suite's models: configs (full-size or tiny), components built on the device, FLOPs.

Full size (``--device cuda``): the JSON configs of ``gpu_configs/`` (copies of the checkout's
``../shared/gpu/``, so a machine that receives only the repository has them), one per
component, ``_class_name`` + the config fields. Tiny (``--dry-run``): the same layout, read from
the folders that the tests' builders (:mod:`vslerp.pipelines.testing`, ``testing_sd``) write,
plus a tiny FLUX transformer. Either way every component is constructed from its config
directly on the target device in the target dtype (never on the CPU first: a 1.2 B-parameter
model with default init takes tens of seconds there), with random weights.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import torch

__all__ = ["TINY_FLUX", "build", "config_dir", "count_flops", "denoiser_inputs", "load_configs",
           "matmul_rate", "on_device", "tiny_configs", "write_ip_adapter"]

HERE = Path(__file__).resolve().parent
KANDINSKY = ("unet", "movq", "prior", "image_encoder", "text_encoder")
SDXL = ("unet", "vae", "text_encoder", "text_encoder_2")
# diffusers' own fast-test FLUX transformer (tests/pipelines/flux/test_pipeline_flux.py)
TINY_FLUX = {"_class_name": "FluxTransformer2DModel", "patch_size": 1, "in_channels": 4, "num_layers": 1,
             "num_single_layers": 1, "attention_head_dim": 16, "num_attention_heads": 2,
             "joint_attention_dim": 32, "pooled_projection_dim": 32, "axes_dims_rope": [4, 4, 8],
             "guidance_embeds": True}  # guidance as FLUX.1-dev (the fast test has none)
_TRANSFORMERS = {"CLIPVisionModelWithProjection": "CLIPVisionConfig", "CLIPTextModelWithProjection": "CLIPTextConfig",
                 "CLIPTextModel": "CLIPTextConfig"}


def config_dir(given: str | None) -> Path:
    """``--configs``, else ``benchmarks/gpu_configs`` (committed copies), else ``../shared/gpu``."""
    candidates = [Path(given)] if given else [HERE / "gpu_configs", HERE.parent.parent / "shared" / "gpu"]
    for folder in candidates:
        if (folder / "kandinsky-2-2" / "unet.json").is_file():
            return folder
    raise FileNotFoundError(f"no full-size configs (kandinsky-2-2/unet.json) in {', '.join(map(str, candidates))}")


def load_configs(folder: Path) -> dict[str, dict]:
    """{"kandinsky/unet": {...}, "sdxl/vae": {...}, "flux/transformer": {...}, ...} from ``folder``."""
    out = {}
    for family, sub, names in (("kandinsky", "kandinsky-2-2", KANDINSKY), ("sdxl", "sdxl", SDXL),
                               ("flux", "flux", ("transformer",))):
        for name in names:
            out[f"{family}/{name}"] = json.loads((folder / sub / f"{name}.json").read_text(encoding="utf-8"))
    return out


def tiny_configs(root: Path) -> dict[str, dict]:
    """The tests' tiny models' configs in ``load_configs``' layout (their folders under ``root``)."""
    from vslerp.pipelines.testing import make_tiny_kandinsky
    from vslerp.pipelines.testing_sd import make_tiny_sdxl

    prior_dir, decoder_dir = make_tiny_kandinsky(root)
    sdxl_dir = make_tiny_sdxl(root)

    def read(folder: Path, cls: str) -> dict:
        cfg = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        return {**cfg, "_class_name": cls}

    return {"kandinsky/unet": read(decoder_dir / "unet", "UNet2DConditionModel"),
            "kandinsky/movq": read(decoder_dir / "movq", "VQModel"),
            "kandinsky/prior": read(prior_dir / "prior", "PriorTransformer"),
            "kandinsky/image_encoder": read(prior_dir / "image_encoder", "CLIPVisionModelWithProjection"),
            "kandinsky/text_encoder": read(prior_dir / "text_encoder", "CLIPTextModelWithProjection"),
            "sdxl/unet": read(sdxl_dir / "unet", "UNet2DConditionModel"),
            "sdxl/vae": read(sdxl_dir / "vae", "AutoencoderKL"),
            "sdxl/text_encoder": read(sdxl_dir / "text_encoder", "CLIPTextModel"),
            "sdxl/text_encoder_2": read(sdxl_dir / "text_encoder_2", "CLIPTextModelWithProjection"),
            "flux/transformer": dict(TINY_FLUX)}


@contextlib.contextmanager
def on_device(device: str | torch.device, dtype: torch.dtype):
    """Construct tensors on ``device`` in ``dtype`` (parameters are born there: no CPU init)."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(before)


def build(config: dict, device, dtype: torch.dtype, tokenizer=None) -> torch.nn.Module:
    """The module of ``config`` (``_class_name`` + fields), random weights, on ``device`` in ``dtype``.
    tokenizer: a text encoder's; its special-token ids replace the config's (the suite's tokenizer
    is the tests' character-level one, whose ids all lie inside the real vocabulary)."""
    import diffusers
    import transformers

    fields = {k: v for k, v in config.items() if not k.startswith("_")}
    cls_name = config["_class_name"]
    with on_device(device, dtype):
        if cls_name in _TRANSFORMERS:
            if tokenizer is not None:
                fields.update(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                              pad_token_id=tokenizer.pad_token_id)
            cfg = getattr(transformers, _TRANSFORMERS[cls_name]).from_dict(fields)
            module = getattr(transformers, cls_name)(cfg)
        else:
            module = getattr(diffusers, cls_name).from_config(fields)
    if cls_name == "PriorTransformer":  # its clip_mean / clip_std are zeros at init; the tests' prior's
        with torch.no_grad():
            module.clip_std.fill_(1.0)
            module.clip_mean.normal_(0.25, 0.5)
    return module.to(device=device, dtype=dtype).eval().requires_grad_(False)


def denoiser_inputs(kind: str, config: dict, size: int, batch: int, device, dtype) -> dict:
    """Keyword inputs of one denoiser call as the pipelines make them (``batch`` rows: 2 per image
    with classifier-free guidance). kind: kandinsky-unet, sdxl-unet, flux, prior, image-encoder."""
    def rand(*shape):
        return torch.randn(*shape, device=device, dtype=dtype)

    t = torch.tensor([500] * batch, device=device)
    if kind == "kandinsky-unet":
        side = size // 8  # MoVQ factor 8
        return {"sample": rand(batch, config["in_channels"], side, side), "timestep": t,
                "encoder_hidden_states": None, "added_cond_kwargs": {"image_embeds": rand(batch, config["encoder_hid_dim"])}}
    if kind == "sdxl-unet":
        side = size // 8
        text = config["projection_class_embeddings_input_dim"] - 6 * config["addition_time_embed_dim"]
        return {"sample": rand(batch, config["in_channels"], side, side), "timestep": t,
                "encoder_hidden_states": rand(batch, 77, config["cross_attention_dim"]),
                "added_cond_kwargs": {"text_embeds": rand(batch, text), "time_ids": rand(batch, 6)}}
    if kind == "flux":
        tokens = (size // 16) ** 2  # VAE factor 8, then 2×2 patches
        return {"hidden_states": rand(batch, tokens, config["in_channels"]),
                "encoder_hidden_states": rand(batch, 512, config["joint_attention_dim"]),
                "pooled_projections": rand(batch, config["pooled_projection_dim"]),
                "timestep": torch.full((batch,), 0.5, device=device, dtype=dtype),
                "img_ids": rand(tokens, 3), "txt_ids": rand(512, 3),
                "guidance": torch.full((batch,), 3.5, device=device, dtype=dtype), "return_dict": False}
    if kind == "prior":
        dim = config["embedding_dim"]
        return {"hidden_states": rand(batch, dim), "timestep": t[0], "proj_embedding": rand(batch, dim),
                "encoder_hidden_states": rand(batch, config.get("num_embeddings", 77), dim),
                "attention_mask": torch.ones(batch, config.get("num_embeddings", 77), dtype=torch.bool, device=device)}
    if kind == "image-encoder":
        side = config["image_size"]
        return {"pixel_values": rand(batch, config.get("num_channels", 3), side, side)}
    raise ValueError(f"unknown denoiser kind {kind!r}")


def count_flops(config: dict, kind: str, size: int, batch: int) -> float:
    """FLOPs of one call (``FlopCounterMode``), the model and its inputs on the meta device."""
    from torch.utils.flop_counter import FlopCounterMode

    module = build(config, "meta", torch.float32)
    inputs = denoiser_inputs(kind, config, size, batch, "meta", torch.float32)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        module(**inputs)
    return float(counter.get_total_flops())


def matmul_rate(device, dtype: torch.dtype, n: int, repeats: int = 50) -> float:
    """Measured FLOP/s of an n×n @ n×n matmul on ``device`` (the floor's denominator)."""
    import time

    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    sync(device)
    return 2 * n**3 * repeats / (time.perf_counter() - start)


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def write_ip_adapter(unet, image_dim: int, folder: Path, weight_name: str, dtype) -> None:
    """A random non-plus IP-Adapter for ``unet`` in ``h94/IP-Adapter``'s file layout: the keys
    diffusers' ``load_ip_adapter`` reads (``image_proj.*``, ``ip_adapter.N.to_{k,v}_ip.weight``,
    N = 1, 3, 5, … in the order of the UNet's cross-attention processors), 4 image tokens.
    Enumerates the built UNet's processors (``testing_sd.make_tiny_ip_adapter`` builds its own
    UNet from the config on the CPU, too slow at full size)."""
    from safetensors.torch import save_file

    cross = int(unet.config.cross_attention_dim)
    blocks = list(unet.config.block_out_channels)
    dev = unet.device
    gen = torch.Generator(dev).manual_seed(0)

    def rand(*shape, scale=0.02):
        return (torch.randn(*shape, generator=gen, device=dev) * scale).to(dtype)

    tensors = {"image_proj.proj.weight": rand(4 * cross, image_dim), "image_proj.proj.bias": rand(4 * cross, scale=0),
               "image_proj.norm.weight": torch.ones(cross, dtype=dtype, device=dev),
               "image_proj.norm.bias": torch.zeros(cross, dtype=dtype, device=dev)}
    from vslerp.pipelines.testing_sd import ip_adapter_layers

    for key, hidden in ip_adapter_layers(unet, blocks):
        for part in ("to_k_ip", "to_v_ip"):
            tensors[f"ip_adapter.{key}.{part}.weight"] = rand(hidden, cross, scale=0.05)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous().cpu() for k, v in tensors.items()}, str(folder / weight_name))
