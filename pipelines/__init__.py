"""VSlerpPipeline: vertical-SLERP editing with diffusers generators (Kandinsky 2.2)."""

from .pipeline import (
    DEFAULT_DECODER,
    DEFAULT_PRIOR,
    STATISTICS_FILE,
    VSlerpPipeline,
    VSlerpPipelineOutput,
    auto_device,
)

__all__ = [
    "DEFAULT_DECODER",
    "DEFAULT_PRIOR",
    "STATISTICS_FILE",
    "VSlerpPipeline",
    "VSlerpPipelineOutput",
    "auto_device",
]
