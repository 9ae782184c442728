"""`vslerp info`: versions and the compute device this install would use."""

from __future__ import annotations

import argparse

__all__ = ["register"]


def register(subparsers) -> None:
    p = subparsers.add_parser("info", help="print versions and the device vslerp would use",
                              description=__doc__)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import diffusers
    import torch
    import transformers

    from vslerp import __version__

    if torch.cuda.is_available():
        device = f"cuda ({torch.cuda.get_device_name(0)})"
    elif getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        device = "mps"
    else:
        device = "cpu (no GPU found: rendering will be slow)"
    print(f"vslerp {__version__}")
    print(f"torch {torch.__version__}, diffusers {diffusers.__version__}, "
          f"transformers {transformers.__version__}")
    print(f"device: {device}")
    return 0
