"""The editor's progress: a bar per request that reads, who is ahead while waiting, and Stop."""

from __future__ import annotations

import re
import threading

import pytest
from helpers import save_random_image

pytest.importorskip("gradio")


def test_a_waiting_job_is_told_who_is_ahead_and_leaves_the_queue_on_stop():
    from vslerp.ui.editor import RenderCancelled, RenderQueue

    running, release, told = threading.Event(), threading.Event(), threading.Event()

    def run_batch(payloads):
        running.set()
        assert release.wait(60)
        return payloads

    queue, ahead, stop = RenderQueue(run_batch), [], threading.Event()
    first = threading.Thread(target=queue.submit, args=(("a",), 1, "first"))
    first.start()
    assert running.wait(60)
    errors = []

    def second():
        try:
            queue.submit(("b",), 1, "second", lambda n: (ahead.append(n), told.set()), stop.is_set)
        except RenderCancelled as err:
            errors.append(err)

    waiter = threading.Thread(target=second)
    waiter.start()
    assert told.wait(60) and ahead == [1]  # the render of "first" is ahead of it
    stop.set()
    queue.wake()  # as Editor.stop does
    waiter.join(60)
    assert len(errors) == 1 and queue.ahead() == 1  # it left the queue; "first" still renders
    release.set()
    first.join(60)
    assert queue.batches == 1 and queue.ahead() == 0  # "second" never rendered


def test_each_step_reports_denoising_with_the_time_left(pipe, tmp_path):
    from vslerp.ui.editor import Editor

    editor = Editor(pipe, tiny_random=True, out_dir=tmp_path / "out")
    seen = []
    editor.edit(str(save_random_image(tmp_path / "s.png", 0)), None, "a cat", 0.5, 0.0, 0, 3, 4.0, 64,
                report=lambda text, fraction: seen.append((text, fraction)))
    assert [fraction for _, fraction in seen] == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert all(re.fullmatch(rf"Denoising {k + 1}/3 · about \d+ s left", text) for k, (text, _) in enumerate(seen))
    assert seen[-1][0].endswith("about 0 s left")


def test_stop_ends_a_sessions_render_between_steps_and_not_anothers(pipe, tmp_path):
    from vslerp.ui.editor import Editor, EditorError

    editor = Editor(pipe, tiny_random=True, out_dir=tmp_path / "out")
    source = str(save_random_image(tmp_path / "s.png", 1))
    mine, other = editor.stop_probe("mine"), editor.stop_probe("other")
    steps = editor.steps_run

    def press_stop(text, fraction):
        editor.stop("mine")

    with pytest.raises(EditorError, match="Render stopped"):
        editor.edit(source, None, "a cat", 0.5, 0.0, 0, 10, 4.0, 64, should_stop=mine, report=press_stop)
    assert editor.steps_run == steps + 1 and mine() and not other()
    editor.edit(source, None, "a cat", 0.5, 0.0, 0, 2, 4.0, 64, should_stop=other)  # not stopped
