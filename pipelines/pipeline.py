"""The former home of ``VSlerpPipeline``, kept as an import path for existing code.

The pipeline now lives in one module per job: :mod:`~vslerp.pipelines.grid` (the θ × α grid,
backend-free), :mod:`~vslerp.pipelines.base` (the call every backend shares),
:mod:`~vslerp.pipelines.kandinsky` and :mod:`~vslerp.pipelines.unclip` (the backends) and
:mod:`~vslerp.pipelines.loading` (which backend a model is, and loading it).
"""

from vslerp.defaults import DEFAULT_DECODER, DEFAULT_PRIOR, STATISTICS_FILE

from .grid import VSlerpPipelineOutput
from .kandinsky import VSlerpPipeline
from .loading import auto_device

__all__ = ["DEFAULT_DECODER", "DEFAULT_PRIOR", "STATISTICS_FILE", "VSlerpPipeline", "VSlerpPipelineOutput",
           "auto_device"]
