"""The Gradio editor: vSLERP(source, target, θ, α) (paper Eq. 12) with a cache of embeddings.

Modules, one job each: :mod:`.uploads` (an event's file payload → a checked upload),
:mod:`.cache` (raw embeddings of images and prompts), :mod:`.batching` (concurrent requests in
one render), :mod:`.callbacks` (:class:`Editor`: checks, rendering through the render layer
``vslerp.ui.render``), :mod:`.results` (read-out, histogram, downloads), :mod:`.boundary`
(:class:`EditorError` → ``gr.Error``, in one place), :mod:`.api` (the ``/edit`` and ``/sweep``
endpoints, ``gr.api``) and :mod:`.layout` (the page). Nothing is launched here: ``vslerp ui``
(``vslerp.ui.cmd_ui``) launches it.
"""

from vslerp.ui.editor.batching import RenderQueue
from vslerp.ui.editor.boundary import run_client_event, run_event
from vslerp.ui.editor.cache import EditorState
from vslerp.ui.editor.callbacks import MAX_BATCH_CELLS, Editor
from vslerp.ui.editor.layout import build_editor, build_page, launch_kwargs
from vslerp.ui.editor.messages import EditorError, RenderCancelled
from vslerp.ui.editor.results import USEFUL_ALPHA
from vslerp.ui.editor.uploads import (
           MAX_PIXELS,
           MAX_UPLOAD_BYTES,
           Upload,
           as_upload,
           client_upload,
           open_upload,
)

__all__ = ["MAX_BATCH_CELLS", "MAX_PIXELS", "MAX_UPLOAD_BYTES", "USEFUL_ALPHA", "Editor", "EditorError",
           "EditorState", "RenderCancelled", "RenderQueue", "Upload", "as_upload", "build_editor", "build_page",
           "client_upload", "launch_kwargs", "open_upload", "run_client_event", "run_event"]
