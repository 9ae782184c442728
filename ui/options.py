"""The CLI's shared argparse pieces: value types, the model and rendering option groups.

Torch-free (``vslerp --help`` imports this): the defaults come from :class:`RenderSpec`
(:mod:`vslerp.ui.render`) and :mod:`vslerp.defaults`; the limits are read when a command runs.
"""

from __future__ import annotations

import argparse
import math
import re

from vslerp.defaults import (
    DEFAULT_DECODER,
    DEFAULT_PRIOR,
    MAX_CELLS,
    MAX_ENCODE_BATCH,
    MAX_SIZE,
    WORKERS_PER_CPU,
)

__all__ = ["DTYPES", "DTYPE_HELP", "add_backend_options", "add_loader_limits", "add_ip_adapter_option", "add_model_options", "add_render_options",
           "add_tiny_random_option", "allow_negative_values", "dtype_arg", "finite_float", "int_at_least", "ip_adapter_arg", "port_arg",
           "positive_float", "positive_int", "scale_arg", "parse_values", "seed_arg", "strength_arg", "value_list"]

# --dtype of every command: the canonical torch name for each accepted spelling
DTYPES = {"float16": "float16", "fp16": "float16", "bfloat16": "bfloat16", "bf16": "bfloat16",
          "float32": "float32", "fp32": "float32"}
DTYPE_HELP = "float16, bfloat16 or float32; fp16, bf16, fp32 also accepted"

# Value lists and ranges that start with a minus ("-2:2:5", "-1,0,1") are values, not options.
_NEGATIVE_VALUES = re.compile(r"^-\.?\d[\d.,:eE+-]*$")



_MAX_VALUES = 1000  # more values than this on one axis is a typo, not a grid


def parse_values(text: str, name: str) -> list[float]:
    """Parse ``"0,0.5,1"`` or ``"start:stop:count"`` (inclusive, like ``numpy.linspace``).

    Raises ValueError naming ``name`` and the text received.
    """
    raw = str(text).strip()
    if not raw:
        raise ValueError(f"{name}: empty list of values")
    if ":" in raw:
        parts = raw.split(":")
        if len(parts) != 3:
            raise ValueError(f"{name}: range must be start:stop:count, got {raw!r}")
        try:
            start, stop = float(parts[0]), float(parts[1])
            count = int(parts[2])
        except ValueError:
            raise ValueError(f"{name}: range must be start:stop:count with numbers and an "
                             f"integer count, got {raw!r}") from None
        if count < 1 or count > _MAX_VALUES:
            raise ValueError(f"{name}: count must be 1..{_MAX_VALUES}, got {count} in {raw!r}")
        if count == 1:
            values = [start]
        else:
            step = (stop - start) / (count - 1)
            values = [start + i * step for i in range(count - 1)] + [stop]
        values = [round(v, 12) + 0.0 for v in values]  # 0.30000000000000004 → 0.3; -0.0 → 0.0
    else:
        values = []
        for item in raw.split(","):
            item = item.strip()
            try:
                values.append(float(item))
            except ValueError:
                raise ValueError(f"{name}: {item!r} is not a number in {raw!r} (use "
                                 "comma-separated numbers or start:stop:count)") from None
        if len(values) > _MAX_VALUES:
            raise ValueError(f"{name}: at most {_MAX_VALUES} values, got {len(values)}")
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"{name}: values must be finite, got {raw!r}")
    return values


def allow_negative_values(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Let ``parser`` take ``--alphas -2:2:5`` (a value starting with a minus) without ``=``.

    argparse has no public way to say which dash-strings are values: it reads them with the
    parser's private ``_negative_number_matcher`` (default: plain numbers like ``-2`` only).
    This replaces it, here only (tests/test_cli_grid.py::test_negative_value_lists_need_no_equals).
    """
    parser._negative_number_matcher = _NEGATIVE_VALUES
    return parser


def int_at_least(low: int):
    """argparse type: an integer ≥ ``low``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be ≥ {low}, got {value}")
        return value

    parse.__name__ = f"int ≥ {low}"
    return parse


positive_int = int_at_least(1)


def seed_arg(text: str) -> int:
    """argparse type of ``--seed``: an integer in [0, SEED_LIMIT) (:func:`~vslerp.ui.render.check_seed`)."""
    from vslerp.ui.render import check_seed

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
    try:
        return check_seed(value)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def finite_float(text: str) -> float:
    """argparse type: a finite number of sane magnitude (|x| ≤ 1e6, ``vslerp.checks``)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be finite, got {text!r}")
    from vslerp.checks import check_magnitude  # imports torch: only once a value is given

    try:
        check_magnitude("value", value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value:g} is too large: at most 1e+06 in magnitude") from None
    return value


def _float_where(ok, rule: str, number: str = "a number"):
    """An argparse type: a finite float for which ``ok(value)``; else "must be ``rule``"."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {number}, got {text!r}") from None
        if not (math.isfinite(value) and ok(value)):
            raise argparse.ArgumentTypeError(f"must be {rule}, got {text}")
        return value
    return parse


positive_float = _float_where(lambda v: v > 0, "a positive number")  # argparse type: a finite number > 0
# --strength: in (0, 1] (1: every cell from pure noise)
strength_arg = _float_where(lambda v: 0.0 < v <= 1.0, "in (0, 1] (1: from pure noise; below 1 keeps the "
                            "photo's layout)", number="a number in (0, 1]")
scale_arg = _float_where(lambda v: 0.0 <= v <= 1e6, "a finite number ≥ 0")  # --ip-adapter-scale


def ip_adapter_arg(text: str) -> tuple[str, str, str]:
    """argparse type of ``--ip-adapter``: :func:`vslerp.stats.models.parse_ip_adapter`."""
    from vslerp.stats.models import parse_ip_adapter

    try:
        return parse_ip_adapter(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err).removeprefix("--ip-adapter ")) from None


def value_list(name: str):
    """argparse type: ``a,b,c`` or ``start:stop:count`` → floats (:func:`parse_values`)."""
    def parse(text: str) -> list[float]:

        try:
            return parse_values(text, name)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    parse.__name__ = "values"
    return parse


def dtype_arg(text: str) -> str:
    """argparse type of ``--dtype``: any spelling in :data:`DTYPES` → its torch name."""
    key = str(text).strip().lower()
    if key not in DTYPES:
        raise argparse.ArgumentTypeError(
            f"must be float16, bfloat16 or float32 (or fp16, bf16, fp32), got {text!r}")
    return DTYPES[key]


def port_arg(text: str) -> int:
    """argparse type of ``--port``: 1..65535."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
    if not 0 < value < 65536:
        raise argparse.ArgumentTypeError(f"port must be in 1..65535, got {value}")
    return value


# -- option groups of grid, animate and batch -------------------------------------------------
def add_model_options(p: argparse.ArgumentParser) -> None:
    """--model, --prior, --stats, --dtype, --device, --batch-size."""
    from pathlib import Path

    from vslerp.ui.render import RenderSpec

    g = p.add_argument_group("model")
    g.add_argument("--model", default=None, metavar="DIR|ID",
                   help="Kandinsky 2.2 decoder repo or folder, an unCLIP/Karlo or Stable unCLIP repo or "
                   "folder, a Stable Diffusion 1.5 / SDXL base (with --ip-adapter), or a folder saved by "
                   f"save_pretrained (default: {DEFAULT_DECODER})")
    g.add_argument("--prior", default=None, metavar="DIR|ID",
                   help=f"Kandinsky 2.2 prior repo or folder (default: {DEFAULT_PRIOR}); with an "
                   "unCLIP/Karlo --model, Karlo's text-to-image repo (default: kakaobrain/karlo-v1-alpha)")
    g.add_argument("--stats", type=Path, default=None, metavar="FILE.safetensors",
                   help="statistics file from `vslerp stats compute` giving the image mean "
                   "(default: the mean the checkpoint holds: the prior's clip_mean, Stable unCLIP's "
                   "image_normalizer)")
    g.add_argument("--dtype", type=dtype_arg, default=None, metavar="DTYPE",
                   help=f"{DTYPE_HELP} (default: float16 on CUDA, else float32)")
    g.add_argument("--device", default=None,
                   help="cuda, cuda:1, mps or cpu (default: cuda, then mps, then cpu, or cpu where "
                   "ACCELERATE_USE_CPU is set; one per process under accelerate launch)")
    g.add_argument("--batch-size", type=positive_int, default=None, metavar="N",
                   help="cells denoised together; lower it if memory runs out "
                   f"(default: {RenderSpec.batch_size})")
    add_tiny_random_option(g)


def add_tiny_random_option(g) -> None:
    """--tiny-random: a tiny random Kandinsky 2.2 built on the fly (``vslerp.ui.render.tiny_random_args``)."""
    g.add_argument("--tiny-random", action="store_true",
                   help="try it without weights: a tiny random model built on the fly (no download; 64 px, "
                   "2 steps, on the CPU; the images are noise, and labelled so in the sidecar)")


def add_backend_options(p: argparse.ArgumentParser, ip_adapter: bool = True) -> None:
    """--strength, --prompt, --negative-prompt, --noise-level, --ip-adapter-scale (and --ip-adapter,
    a model option, unless ``ip_adapter`` is False): each backend takes some of them."""
    g = p.add_argument_group(
        "backend options",
        "Each backend takes some of these; the others are refused, by name. --prompt is text "
        "conditioning of the UNet (Stable unCLIP, IP-Adapter), not the TARGET: a prompt TARGET "
        "is turned into an image embedding by the prior (Kandinsky 2.2, Karlo).")
    g.add_argument("--strength", type=strength_arg, default=None, metavar="S",
                   help="img2img strength in (0, 1]: below 1 every cell starts from the SOURCE photo "
                   "noised to S, so the grid keeps the photo's layout (default: 1, from pure noise)")
    g.add_argument("--prompt", default=None, metavar="TEXT",
                   help="text conditioning of the UNet besides the image embedding (Stable unCLIP, "
                   "IP-Adapter; not Kandinsky 2.2, whose TARGET may be a prompt)")
    g.add_argument("--negative-prompt", default=None, metavar="TEXT",
                   help="negative text conditioning (Stable unCLIP, IP-Adapter)")
    g.add_argument("--noise-level", type=int_at_least(0), default=None, metavar="N",
                   help="noise added to the image embedding (Stable unCLIP; default: 0)")
    if ip_adapter:
        add_ip_adapter_option(g)
    g.add_argument("--ip-adapter-scale", type=scale_arg, default=None, metavar="X",
                   help="how strongly the IP-Adapter's image embedding conditions the UNet "
                   "(IP-Adapter; default: 1.0)")
    g.add_argument("--true-cfg-scale", type=scale_arg, default=None, metavar="X",
                   help="FLUX's true classifier-free guidance, on above 1 with --negative-prompt "
                   "(default: 1, off; --guidance is FLUX's distilled guidance)")


def add_ip_adapter_option(g) -> None:
    """--ip-adapter, --ip-adapter-image-encoder: the adapter an SD 1.5 / SDXL / FLUX.1 --model renders through."""
    g.add_argument("--ip-adapter", type=ip_adapter_arg, default=None, metavar="REPO_OR_DIR:[SUBFOLDER/]WEIGHT",
                   help="IP-Adapter weights for a Stable Diffusion 1.5 / SDXL / FLUX.1 --model, e.g. "
                   "h94/IP-Adapter:models/ip-adapter_sd15.safetensors or "
                   "XLabs-AI/flux-ip-adapter:ip_adapter.safetensors (needed with such a model)")
    g.add_argument("--ip-adapter-image-encoder", default=None, metavar="REPO_OR_DIR",
                   help="the IP-Adapter's CLIP image encoder (default: the adapter's SUBFOLDER/image_encoder; "
                   "FLUX.1: openai/clip-vit-large-patch14)")


def add_render_options(p: argparse.ArgumentParser) -> None:
    """--steps, --size, --seed, --guidance, --prior-steps, ..., and the limits that lift caps."""
    from vslerp.ui.render import RenderSpec

    g = p.add_argument_group("rendering")
    g.add_argument("--steps", type=positive_int, default=None, metavar="N",
                   help=f"denoising steps (default: {RenderSpec.steps})")
    g.add_argument("--size", type=positive_int, default=None, metavar="PX",
                   help="image side in pixels, a multiple of the model's factor (default: the "
                   "model's, 512 for Kandinsky 2.2; unCLIP/Karlo renders 256 only)")
    g.add_argument("--seed", type=seed_arg, default=None, metavar="N",
                   help=f"noise seed shared by every cell (default: {RenderSpec.seed})")
    g.add_argument("--guidance", type=finite_float, default=None, metavar="G",
                   help="guidance scale (default: the model's, 4.0 for Kandinsky 2.2, 8.0 for unCLIP)")
    g.add_argument("--prior-steps", type=int_at_least(2), default=None, metavar="N",
                   help="prior steps turning a prompt TARGET into an image embedding "
                   f"(default: {RenderSpec.prior_steps})")
    g.add_argument("--allow-extrapolation", action="store_true",
                   help="allow θ outside [0, 1] (default: refused)")
    g.add_argument("--no-progress", action="store_true",
                   help="no progress bars on stderr (default: shown)")
    g = p.add_argument_group("limits (against typos that would run for hours or exhaust memory)")
    g.add_argument("--max-size", type=positive_int, default=None, metavar="PX",
                   help=f"largest --size accepted (default: {MAX_SIZE})")
    g.add_argument("--max-cells", type=positive_int, default=None, metavar="N",
                   help=f"most cells (θ × α) of one grid (default: {MAX_CELLS})")
    allow_negative_values(p)


def add_loader_limits(p: argparse.ArgumentParser) -> None:
    """--max-workers, --max-batch-size: the caps on --num-workers and --batch-size of the commands
    that encode a dataset (``vslerp.ui.checks.check_loader``)."""
    g = p.add_argument_group("limits (against typos that would exhaust memory)")
    g.add_argument("--max-workers", type=positive_int, default=None, metavar="N",
                   help=f"most --num-workers accepted (default: {WORKERS_PER_CPU} per CPU of this "
                   "machine)")
    g.add_argument("--max-batch-size", type=positive_int, default=None, metavar="N",
                   help=f"largest --batch-size accepted (default: {MAX_ENCODE_BATCH})")
