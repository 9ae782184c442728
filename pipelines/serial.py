"""One call at a time on one pipeline: the lock that makes calls from several threads correct.

diffusers pipelines are not re-entrant: a call sets the scheduler's timesteps, the guidance
scale and the step count on the pipeline (and its components) and reads them back while it
denoises, so two threads calling one pipeline at once get each other's images. Every public
call that touches that state (``__call__``, ``render_batch``, ``encode_image``, ``encode_text``,
``prompt_to_image_embedding``) is :func:`serialised` on the pipeline's own re-entrant lock (a
call encodes its inputs with the same pipeline). For parallel throughput, batch requests
(``render_batch``, the editor's queue) instead of calling from many threads.
"""

from __future__ import annotations

import functools
import threading

__all__ = ["CallLock", "call_lock", "serialised"]

_CREATING = threading.Lock()  # guards the first creation of a pipeline's lock


class CallLock:
    """A re-entrant lock that copies (``copy.deepcopy``) and pickles as a new, unheld lock:
    a copied or saved pipeline never shares, nor inherits the state of, the original's lock."""

    def __init__(self) -> None:
        self._lock = threading.RLock()

    def acquire(self, blocking: bool = True) -> bool:
        """Take the lock (re-entrant: the holding thread may take it again); False if not blocking
        and another thread holds it."""
        return self._lock.acquire(blocking)

    def release(self) -> None:
        self._lock.release()

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def __reduce__(self):
        return (CallLock, ())

    def __deepcopy__(self, memo):
        return CallLock()


def call_lock(pipe) -> CallLock:
    """The pipeline's own :class:`CallLock`, created on first use (kept in ``pipe.__dict__``: not
    a diffusers component, so ``save_pretrained`` and ``components`` never see it)."""
    lock = pipe.__dict__.get("_call_lock")
    if lock is None:
        with _CREATING:
            lock = pipe.__dict__.setdefault("_call_lock", CallLock())
    return lock


def serialised(method):
    """Decorate a pipeline method so that calls on one pipeline run one at a time."""

    @functools.wraps(method)
    def locked(self, *args, **kwargs):
        with call_lock(self):
            return method(self, *args, **kwargs)

    return locked
