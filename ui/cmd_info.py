"""`vslerp info`: the versions and compute device of this install, to paste into a bug report."""

from __future__ import annotations

import argparse
import json
import platform
import sys
from importlib import metadata

__all__ = ["PACKAGES", "collect", "format_report", "register"]

# the distributions a bug report needs, in the order the report lists them
PACKAGES = ("torch", "diffusers", "transformers", "accelerate", "safetensors", "gradio")
NOT_INSTALLED = "not installed"


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return NOT_INSTALLED


def _device() -> str:
    """The device vslerp would pick (``vslerp.stats.encode.default_device``): CUDA (name,
    count), MPS, or CPU (and why)."""
    try:
        import torch
    except ImportError:
        return f"unknown (torch {NOT_INSTALLED})"
    from vslerp.stats.encode import default_device

    device = default_device()
    if device.type == "cuda":
        count = torch.cuda.device_count()
        return f"cuda: {torch.cuda.get_device_name(0)} (x{count}, CUDA {torch.version.cuda})"
    if device.type == "mps":
        return "mps"
    if torch.cuda.is_available():  # there is a GPU, and the rule says cpu
        return "cpu (ACCELERATE_USE_CPU is set)"
    return "cpu (no GPU found: rendering will be slow)"


def collect() -> dict[str, str]:
    """Every line of the report as {name: value}: vslerp, python, platform, packages, device."""
    from vslerp._version import __version__

    info = {"vslerp": __version__, "python": platform.python_version(),
            "platform": platform.platform()}
    info.update({name: _version(name) for name in PACKAGES})
    info["device"] = _device()
    return info


def format_report(info: dict[str, str]) -> str:
    """A plain text block, one ``name: value`` per line, aligned."""
    width = max(map(len, info))
    return "\n".join(f"{name + ':':<{width + 1}} {value}" for name, value in info.items())


def register(subparsers) -> None:
    p = subparsers.add_parser("info", help="print versions and the device, for a bug report",
                              description=__doc__)
    p.add_argument("--json", action="store_true", help="one JSON object instead of text")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    info = collect()
    print(json.dumps(info, indent=2) if args.json else format_report(info), file=sys.stdout)
    return 0
