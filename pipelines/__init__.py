"""VSlerpPipeline: vertical-SLERP editing with diffusers generators (Kandinsky 2.2, unCLIP/Karlo,
Stable unCLIP, IP-Adapter on SD / SDXL / FLUX.1).

Modules: ``grid`` (the θ × α grid, backend-free), ``base`` (the call every backend shares), ``mixing`` (``pipe.mix``),
``kandinsky`` / ``unclip`` / ``stable_unclip`` / ``ip_adapter`` / ``flux`` (the backends: adapters over
diffusers' own pipelines, each one record of :mod:`vslerp.stats.models`'s table), ``loading``
(loading the backend that table names), ``inputs`` and
``limits`` (the checks of a call's inputs), ``tiling`` (tiled MoVQ decode), ``testing`` (tiny
random models). The names below are imported on first use (PEP 562): ``vslerp.pipelines.limits``
or ``.inputs`` import no torch.
"""

from __future__ import annotations

import importlib

# public name -> the module that defines it
_EXPORTS = {
    "DEFAULT_DECODER": "vslerp.defaults", "DEFAULT_PRIOR": "vslerp.defaults",
    "DEFAULT_UNCLIP": "vslerp.defaults", "STATISTICS_FILE": "vslerp.defaults",
    "VSlerpPipeline": "vslerp.pipelines.kandinsky", "VSlerpUnCLIPPipeline": "vslerp.pipelines.unclip",
    "VSlerpStableUnCLIPPipeline": "vslerp.pipelines.stable_unclip",
    "VSlerpPipelineOutput": "vslerp.pipelines.grid", "VSlerpMixOutput": "vslerp.pipelines.grid",
    "VSlerpIPAdapterPipeline": "vslerp.pipelines.ip_adapter", "VSlerpIPAdapterXLPipeline": "vslerp.pipelines.ip_adapter",
    "VSlerpFluxPipeline": "vslerp.pipelines.flux",
    "auto_device": "vslerp.pipelines.loading", "backend_of": "vslerp.pipelines.loading",
    "read_model_index": "vslerp.pipelines.loading",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'vslerp.pipelines' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
