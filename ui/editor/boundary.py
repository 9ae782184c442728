"""The Gradio boundary: where the editor's errors become ``gr.Error`` and notes ``gr.Warning``.

Every page and API event calls the editor through :func:`run_client_event` (or :func:`call`): an
:class:`~vslerp.ui.editor.messages.EditorError` reaches the page as it is, with no traceback
on the server; any other exception is a server error, logged with its traceback and shown as a
short message. An HTTP event's files become uploads first (``Editor.client_files``: never a
server path). :func:`client_gone_probe` lets a render stop once its page is closed, the Stop
button (``Editor.stop``) once pressed; :func:`progress_reporter` shows a render's progress.
"""

from __future__ import annotations

import contextvars
import logging

from vslerp.ui.editor.messages import EditorError

__all__ = ["call", "client_gone_probe", "event_session", "progress_reporter", "run_client_event", "run_event",
           "warn"]

log = logging.getLogger("vslerp.ui.editor")


def call(fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` with its errors as ``gr.Error`` (the one place they are made)."""
    import gradio as gr

    try:
        return fn(*args, **kwargs)
    except EditorError as err:  # a user's mistake: a red toast, no server traceback
        raise gr.Error(str(err), print_exception=False) from None
    except gr.Error:
        raise
    except Exception as err:  # not a user's mistake: say so on the page, log the traceback
        log.error("vslerp editor: unexpected error", exc_info=err)
        raise gr.Error(f"Unexpected error ({type(err).__name__}: {' '.join(str(err).split())[:300]}); "
                       "the server log has the details.", print_exception=False) from None


def run_event(method, *args, target_kind: str = "auto", stop=None, **kwargs):
    """Call an editor render callback (``Editor.edit`` / ``sweep``) for a page or API event,
    stopping between denoising steps once the page that asked for it is gone (or ``stop()``)."""
    gone = client_gone_probe()
    probes = [probe for probe in (gone, stop) if probe is not None]
    should_stop = (lambda: any(probe() for probe in probes)) if probes else None
    return call(method, *args, target_kind=target_kind, should_stop=should_stop, **kwargs)


def run_client_event(editor, method, source, target_image, *args, stats_file=None, progress=None, **kwargs):
    """:func:`run_event` of an HTTP event (the page's or the API's): its file values (source,
    target image, statistics file) are taken as uploads only (``editor.client_files``), and the
    files it wrote from data URLs are deleted once the event is over. The page's Stop button
    stops it; ``progress`` (the event's ``gr.Progress``) shows its steps."""
    def event(*rest, **options):
        with editor.client_files(source, target_image, stats_file) as (source_file, target_file, stats):
            return method(source_file, target_file, *rest, stats_file=stats, **options)

    return run_event(event, *args, stop=editor.stop_probe(event_session()), report=progress_reporter(progress),
                     **kwargs)


def event_session() -> str | None:
    """The Gradio session (page) of the running event, or None outside one."""
    from gradio.context import LocalContext

    request = LocalContext.request.get(None)
    return getattr(request, "session_hash", None)


def progress_reporter(progress):
    """``report(text, fraction)`` showing on the event's ``gr.Progress`` from any thread (the
    thread that renders a batch reports for every request in it), or None without one."""
    if progress is None:
        return None
    context = contextvars.copy_context()  # this event's (gradio finds the event through it)

    def report(text: str, fraction: float | None) -> None:
        context.copy().run(progress, fraction or 0.0, desc=text)  # (gradio shows no text without a bar)

    return report


def warn(message: str) -> None:
    """A yellow toast on the page (a Python warning outside an event)."""
    import gradio as gr

    gr.Warning(message)


def client_gone_probe():
    """A callable telling whether the page (session) that started this event has disconnected.

    Gradio keeps running a synchronous function after its page is closed; it only marks the
    queue's event as not ``alive``, and has no public API to ask. This looks that event up in
    gradio's internals (``LocalContext``, ``blocks._queue.active_jobs``), here only; None when
    not inside a queued event or when those internals are not there (another gradio: no early
    stop, nothing else changes). Tested by tests/test_editor_browser.py (closing a page stops
    its render) and tests/test_editor.py (outside an event: None).
    """
    try:
        from gradio.context import LocalContext

        blocks = LocalContext.blocks.get(None)
        event_id = LocalContext.event_id.get(None)
        if blocks is None or event_id is None:
            return None
        for job in list(blocks._queue.active_jobs):
            for event in job or []:
                if getattr(event, "_id", None) == event_id and hasattr(event, "alive"):
                    return lambda: not event.alive
    except Exception:  # another gradio's internals
        return None
    return None
