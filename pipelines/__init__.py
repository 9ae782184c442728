"""VSlerpPipeline: vertical-SLERP editing with diffusers generators (Kandinsky 2.2, unCLIP/Karlo)."""

from .pipeline import (
    DEFAULT_DECODER,
    DEFAULT_PRIOR,
    STATISTICS_FILE,
    VSlerpPipeline,
    VSlerpPipelineOutput,
    auto_device,
)
from .unclip import VSlerpUnCLIPPipeline

__all__ = [
    "DEFAULT_DECODER",
    "DEFAULT_PRIOR",
    "STATISTICS_FILE",
    "VSlerpPipeline",
    "VSlerpPipelineOutput",
    "VSlerpUnCLIPPipeline",
    "auto_device",
]
