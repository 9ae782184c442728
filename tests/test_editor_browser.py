"""The editor in a real browser: headless Chromium (Debian package) driven by Playwright.

Uploads a source image, types a prompt, renders, moves the α slider, changes the size, switches
the target to an image, and saves a screenshot (to the test's tmp dir, and to
$VSLERP_SCREENSHOT_DIR when set). A second test closes the page during a long render and checks
that the render stops between denoising steps.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
from helpers import free_port as _free_port

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TIMEOUT_MS = 60_000

if not CHROMIUM.is_file():
    pytest.skip(f"{CHROMIUM} is absent (apt-get install chromium)", allow_module_level=True)
pytest.importorskip("gradio")
sync_api = pytest.importorskip("playwright.sync_api")
pytestmark = pytest.mark.browser


def _wait_until(condition, timeout_s: float = 60.0, what: str = "condition") -> None:
    """Poll ``condition()`` until it is true; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


@pytest.fixture(scope="module")
def served(tiny_kandinsky):
    """(the editor's callbacks, its page launched on a free port)."""
    from vslerp.pipelines import VSlerpPipeline
    from vslerp.ui.editor import Editor, build_page, launch_kwargs

    prior_dir, decoder_dir = tiny_kandinsky
    pipe = VSlerpPipeline.from_pretrained(decoder_dir, prior=prior_dir, device="cpu")
    editor = Editor(pipe, tiny_random=True)
    demo = build_page(editor)
    kwargs = launch_kwargs("127.0.0.1", _free_port(), False) | {"quiet": True}
    demo.launch(prevent_thread_lock=True, **kwargs)
    yield editor, demo
    demo.close()


@pytest.fixture()
def browser():
    with sync_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


def _result_src(page) -> str | None:
    img = page.locator("#vslerp-result img")
    return img.first.get_attribute("src") if img.count() else None


def _wait_new_result(page, previous) -> str:
    page.wait_for_function(
        "prev => { const i = document.querySelector('#vslerp-result img');"
        " return i && i.getAttribute('src') !== prev; }", arg=previous)
    return _result_src(page)


def _set_number(page, elem_id: str, value) -> None:
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")


def _toasts(page) -> list[str]:
    return [t.inner_text() for t in page.locator(".toast-body").all()]


def test_upload_move_alpha_resize_target_image_screenshot(served, browser, tmp_path):
    editor, app = served
    source, target = tmp_path / "source.png", tmp_path / "target.png"
    yy, xx = np.mgrid[0:96, 0:96]
    rgb = np.stack([xx * 2.6, yy * 2.6, 255 - xx * 2.6], axis=-1).astype(np.uint8)  # a gradient
    PIL.Image.fromarray(rgb).save(source)
    PIL.Image.fromarray(rgb[::-1]).save(target)
    state = editor.state

    page = browser.new_page(viewport={"width": 1360, "height": 1000})
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(app.local_url)
    page.get_by_text("noise-only smoke test").first.wait_for()
    assert not page.locator("#vslerp-downloads").is_visible()  # no empty download boxes
    page.locator("#vslerp-source input[type=file]").set_input_files(str(source))
    page.locator("#vslerp-source img").first.wait_for()
    page.locator("#vslerp-run").click()  # a mistake first: no target prompt
    page.locator(".toast-body.error").first.wait_for()
    assert "No target" in _toasts(page)[0]
    page.locator("#vslerp-prompt textarea").fill("a photo of a cat")
    page.locator("#vslerp-run").click()
    page.locator("#vslerp-result img").first.wait_for()
    page.wait_for_function("() => document.querySelectorAll('#vslerp-gallery img').length >= 1")
    # the mistake is fixed: its toast goes with the successful render (it would stay 10 s otherwise)
    page.wait_for_function("() => !document.querySelector('.toast-body.error')", timeout=3000)
    first = _result_src(page)
    encodes = (state.encode_calls, state.prompt_calls)

    # drag the α slider from its middle (α = 0) to about three quarters (α ≈ 1)
    box = page.locator("#vslerp-alpha input[type=range]").bounding_box()
    y = box["y"] + box["height"] / 2
    page.mouse.move(box["x"] + box["width"] * 0.5, y)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.75, y, steps=5)
    page.mouse.up()
    latest = _wait_new_result(page, first)
    alpha = float(page.locator("#vslerp-alpha input[type=number]").input_value())
    # the follow-up (read-out, gallery, downloads) has run for both results
    page.wait_for_function("() => document.querySelectorAll('#vslerp-gallery img').length >= 2")
    page.wait_for_function("() => ['png', 'json', 'gif'].every(ext => new RegExp('vslerp-result\\\\s*\\\\.'"
                           " + ext).test(document.querySelector('#vslerp-downloads').innerText))")
    assert (state.encode_calls, state.prompt_calls) == encodes  # the α move only decoded

    # a new size: the read-out, downloads and gallery keep working
    _set_number(page, "vslerp-size", 128)
    page.locator("#vslerp-run").click()
    latest = _wait_new_result(page, latest)
    page.wait_for_function("() => document.querySelectorAll('#vslerp-gallery img').length >= 3")
    page.wait_for_function("() => /128px/.test(document.querySelector('#vslerp-gallery').innerText)")

    # the target is what the visible choice says: an image now, though the prompt is still typed
    page.locator("#vslerp-target-kind").get_by_text("image", exact=True).click()
    page.locator("#vslerp-target input[type=file]").set_input_files(str(target))
    page.locator("#vslerp-target img").first.wait_for()
    page.locator("#vslerp-run").click()
    _wait_new_result(page, latest)
    page.wait_for_function("() => /Target: image target\\.png/.test("
                           "document.querySelector('#vslerp-readout').innerText)")
    page.wait_for_function("() => document.querySelectorAll('#vslerp-gallery img').length >= 4")
    assert _toasts(page) == []  # no error anywhere along the way

    # a sweep: its grid at a display size, its own read-out, table and downloads beside it
    page.get_by_text("Advanced").first.click()
    page.get_by_text("Sweep (").first.click()
    page.locator("#vslerp-sweep").click()
    page.locator("#vslerp-sweep-img img").first.wait_for()
    page.wait_for_function("() => /θ = 1/.test((document.querySelector('#vslerp-sweep-table') || {}).innerText)")
    page.wait_for_function("() => /vslerp-sweep\\s*\\.png/.test("
                           "document.querySelector('#vslerp-sweep-downloads').innerText)")
    table = page.locator("#vslerp-sweep-table").inner_text()
    assert all(f"α = {a}" in table for a in ("-1", "0", "1")) and "θ = 0.5" in table
    shown = page.locator("#vslerp-sweep-img img").first.bounding_box()
    assert shown["width"] >= 2 * 3 * 64  # not the rendered 64 px a cell in a full-width box
    sizes = page.evaluate("""() => [...document.querySelectorAll('#vslerp-gallery .caption-label')]
        .map(c => [c.scrollWidth, c.clientWidth, c.innerText])""")
    assert sizes and all(scroll <= client + 1 for scroll, client, _ in sizes), sizes  # captions whole
    clipped = page.evaluate("""() => [...document.querySelectorAll('#vslerp-stats-file *')]
        .filter(e => e.scrollHeight > e.clientHeight + 1 && getComputedStyle(e).overflowY !== 'visible')
        .map(e => e.className)""")
    assert clipped == [], clipped  # the statistics drop zone shows all its text
    assert "Earlier settings" not in page.locator("#vslerp-sweep-readout").inner_text()
    page.locator("#vslerp-run").click()  # an Edit after the sweep marks the sweep as earlier settings
    page.wait_for_function("() => /Earlier settings/.test(document.querySelector('#vslerp-sweep-readout').innerText)")
    assert page.get_by_text("Sweep (earlier settings)").count() >= 1
    shot = tmp_path / "editor.png"
    page.screenshot(path=str(shot), full_page=True)

    assert alpha > 0.5  # the drag moved α
    with PIL.Image.open(shot) as im:
        assert im.size[0] >= 1000
    if os.environ.get("VSLERP_SCREENSHOT_DIR"):
        out = Path(os.environ["VSLERP_SCREENSHOT_DIR"])
        out.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, out / "editor.png")


def test_closing_the_page_stops_a_long_render(served, browser, tmp_path):
    editor, app = served
    source = tmp_path / "source.png"
    PIL.Image.fromarray(np.full((32, 32, 3), 90, dtype=np.uint8)).save(source)
    page = browser.new_page(viewport={"width": 1360, "height": 1000})
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(app.local_url)
    page.locator("#vslerp-source input[type=file]").set_input_files(str(source))
    page.locator("#vslerp-source img").first.wait_for()
    page.locator("#vslerp-prompt textarea").fill("a long render")
    _set_number(page, "vslerp-steps", 100)
    _set_number(page, "vslerp-size", 128)  # ~0.5 s a step here: 100 steps would take ~50 s
    start, cancelled = editor.steps_run, editor.cancelled
    page.locator("#vslerp-run").click()
    _wait_until(lambda: editor.steps_run > start, what="the render to start")
    page.close()
    _wait_until(lambda: editor.cancelled > cancelled, what="the render to stop")
    assert editor.steps_run - start < 50  # it stopped between steps, long before the end
