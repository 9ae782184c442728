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


def _toggle_details(page) -> None:
    """Open (or close) the Details accordion that holds the read-out."""
    page.locator("#vslerp-details").get_by_text("Details", exact=True).click()


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
    _toggle_details(page)  # the read-out

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
    page.wait_for_function("() => ['png', 'json', 'gif'].every(ext => new RegExp('vslerp-seed0-theta\\\\S*\\\\s*\\\\.'"
                           " + ext).test(document.querySelector('#vslerp-downloads')?.innerText))")
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
                           "document.querySelector('#vslerp-readout').textContent)")
    page.wait_for_function("() => document.querySelectorAll('#vslerp-gallery img').length >= 4")
    assert _toasts(page) == []  # no error anywhere along the way

    # a sweep: its grid at a display size, its own read-out, table and downloads beside it
    page.get_by_text("Advanced").first.click()
    page.get_by_text("Sweep: a grid").first.click()
    page.locator("#vslerp-sweep").click()
    page.locator("#vslerp-sweep-img img").first.wait_for()
    page.wait_for_function("() => /θ = 1/.test((document.querySelector('#vslerp-sweep-table') || {}).innerText)")
    page.wait_for_function("() => /vslerp-sweep-seed0\\S*\\s*\\.png/.test("
                           "document.querySelector('#vslerp-sweep-downloads')?.innerText)")
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


FIGURES = Path(__file__).resolve().parents[1] / "docs" / "figures"  # docs/editor.md's screenshots


def _save_shot(page, tmp_path, name: str) -> Path:
    """A full-page screenshot in the test's folder (and in $VSLERP_SCREENSHOT_DIR when set). Where
    docs/editor.md shows this page (docs/figures/NAME.png), the figure must show today's layout: the
    same size to 5 % (regenerate it with VSLERP_SCREENSHOT_DIR=docs/figures)."""
    shot = tmp_path / f"{name}.png"
    page.screenshot(path=str(shot), full_page=True)
    if os.environ.get("VSLERP_SCREENSHOT_DIR"):
        out = Path(os.environ["VSLERP_SCREENSHOT_DIR"])
        out.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, out / f"{name}.png")
    figure = FIGURES / f"{name}.png"
    if f"figures/{name}.png" in (FIGURES.parent / "editor.md").read_text(encoding="utf-8"):
        with PIL.Image.open(shot) as now, PIL.Image.open(figure) as shown:
            assert now.size[0] == shown.size[0] and abs(now.size[1] - shown.size[1]) <= 0.05 * now.size[1], (
                f"{figure} is out of date ({shown.size} vs {now.size}): regenerate it")
    return shot


def _luminance(css: str) -> float:
    """The relative luminance of a CSS ``rgb(...)``/``rgba(...)`` colour."""
    r, g, b = (float(v) / 255 for v in css[css.index("(") + 1:css.index(")")].split(",")[:3])
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


@pytest.mark.parametrize(("name", "width", "height", "scheme"), [
    ("editor-1280", 1280, 900, "light"), ("editor-phone", 390, 844, "light"), ("editor-dark", 1280, 900, "dark")])
def test_an_example_is_one_click_and_the_page_fits(served, browser, tmp_path, name, width, height, scheme):
    page = browser.new_page(viewport={"width": width, "height": height}, color_scheme=scheme)
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(app_url(served) + ("?__theme=dark" if scheme == "dark" else ""))
    banner = page.locator("#vslerp-banner")
    banner.wait_for()
    colours = banner.evaluate("e => [getComputedStyle(e).color, getComputedStyle(e).backgroundColor]")
    assert abs(_luminance(colours[0]) - _luminance(colours[1])) > 0.4, colours  # readable in either theme
    page.locator("#vslerp-examples tbody tr").first.wait_for()
    assert page.locator("#vslerp-examples tbody tr").count() == 3  # cat, mountains, flower
    page.locator("#vslerp-examples tbody tr").first.click()  # one click: filled in and rendered
    page.locator("#vslerp-result img").first.wait_for()
    page.wait_for_function("() => /watercolour painting of a fox/.test("
                           "document.querySelector('#vslerp-gallery .caption-label')?.innerText)")
    page.wait_for_function("() => /vslerp-seed0-theta/.test(document.querySelector('#vslerp-downloads')?.innerText)")
    assert "cat.png" in page.locator("#vslerp-source img").first.get_attribute("src")
    _toggle_details(page)
    page.wait_for_function("() => /conformity/.test(document.querySelector('#vslerp-readout')?.innerText)")
    clipped = page.evaluate("""() => [...document.querySelectorAll('#vslerp-readout table, #vslerp-readout td')]
        .filter(e => e.getBoundingClientRect().right > document.querySelector('#vslerp-readout')
                     .getBoundingClientRect().right + 1).length""")
    assert clipped == 0  # the conformity table shows its last column
    caption, thumb = (page.locator(f"#vslerp-gallery {sel}").first.bounding_box()
                      for sel in (".caption-label", ".thumbnail-item img"))
    assert caption["y"] >= thumb["y"] + thumb["height"] - 1  # the caption is under the thumbnail, not over it
    steps, guidance = (page.locator(f"#{i} input").first.bounding_box() for i in ("vslerp-steps", "vslerp-guidance"))
    assert abs(steps["y"] - guidance["y"]) < 2  # side by side, aligned
    _toggle_details(page)  # closed again, as the page starts
    page.locator("#vslerp-alpha input[type=range]").scroll_into_view_if_needed()
    shown = page.locator("#vslerp-result img").first.bounding_box()
    view = page.evaluate("() => [window.scrollY, window.innerHeight]")
    if width < 500:  # the phone: the result stays in view while the α slider moves
        assert shown["y"] + shown["height"] / 2 >= 0 and shown["y"] + shown["height"] / 2 <= view[1]
    shot = _save_shot(page, tmp_path, name)
    with PIL.Image.open(shot) as im:
        assert im.size[0] == width


def app_url(served) -> str:
    return served[1].local_url


def _start_long_render(page, url, source, prompt: str) -> None:
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(url)
    page.locator("#vslerp-source input[type=file]").set_input_files(str(source))
    page.locator("#vslerp-source img").first.wait_for()
    page.locator("#vslerp-prompt textarea").fill(prompt)
    _set_number(page, "vslerp-steps", 100)
    _set_number(page, "vslerp-size", 128)  # ~0.5 s a step here: 100 steps would take ~50 s
    page.locator("#vslerp-run").click()


def test_progress_reads_the_queue_shows_who_is_ahead_and_stop_ends_the_render(served, browser, tmp_path):
    editor, app = served
    source = tmp_path / "source.png"
    PIL.Image.fromarray(np.full((32, 32, 3), 90, dtype=np.uint8)).save(source)
    first, second = (browser.new_page(viewport={"width": 1280, "height": 900}) for _ in range(2))
    start, cancelled = editor.steps_run, editor.cancelled
    _start_long_render(first, app.local_url, source, "a long render")
    first.wait_for_function("() => /Denoising \\d+\\/100 · about \\d+ s left/.test("
                            "document.querySelector('#vslerp-result').innerText)")
    _start_long_render(second, app.local_url, source, "another long render")
    second.wait_for_function("() => /Waiting: 1 render ahead of you/.test("
                             "document.querySelector('#vslerp-result').innerText)")
    _save_shot(second, tmp_path, "editor-queue")
    first.locator("#vslerp-stop").click()
    _wait_until(lambda: editor.cancelled > cancelled, what="the first render to stop")
    second.wait_for_function("() => /Denoising \\d+\\/100/.test(document.querySelector('#vslerp-result').innerText)")
    second.locator("#vslerp-stop").click()  # the second one got the pipeline, and stops too
    _wait_until(lambda: editor.cancelled > cancelled + 1, what="the second render to stop")
    assert editor.steps_run - start < 100  # both stopped between steps, long before their ends
    assert _result_src(first) is None and _toasts(first) == []  # stopped, not failed


def test_a_bad_upload_is_refused_on_upload_and_stale_state_is_cleared(served, browser, tmp_path):
    editor, app = served
    text, source = tmp_path / "notes.png", tmp_path / "source.png"
    text.write_text("not an image")
    PIL.Image.fromarray(np.full((32, 32, 3), 140, dtype=np.uint8)).save(source)
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(app.local_url)
    page.locator("#vslerp-source input[type=file]").set_input_files(str(text))
    page.locator(".toast-body.error").first.wait_for()  # on upload, before any Edit
    assert "not an image file" in _toasts(page)[0]
    page.wait_for_function("() => !document.querySelector('#vslerp-source img')")  # and the upload is gone
    page.locator("#vslerp-source input[type=file]").set_input_files(str(source))
    page.locator("#vslerp-source img").first.wait_for()
    page.wait_for_function("() => !document.querySelector('.toast-body.error')")  # a changed input clears it
    page.locator("#vslerp-prompt textarea").fill("a cat")
    page.locator("#vslerp-prompt textarea").press("Control+Enter")  # Ctrl+Enter runs Edit
    page.locator("#vslerp-result img").first.wait_for()
    page.wait_for_function("() => /vslerp-seed0/.test(document.querySelector('#vslerp-downloads')?.innerText)")
    first = _result_src(page)
    _toggle_details(page)

    page.locator("#vslerp-theta input[type=range]").focus()
    page.keyboard.press("ArrowRight")  # a keyboard move re-renders as a drag does
    latest = _wait_new_result(page, first)
    assert float(page.locator("#vslerp-theta input[type=number]").input_value()) == pytest.approx(0.55)
    page.wait_for_function("() => /theta0\\.55/.test(document.querySelector('#vslerp-downloads')?.innerText)")

    _set_number(page, "vslerp-steps", 0)  # refused, not clamped to 1
    page.locator("#vslerp-run").click()
    page.locator(".toast-body.error").first.wait_for()
    assert "Steps must be a whole number from 1" in _toasts(page)[0]
    assert page.locator("#vslerp-steps input").input_value() == "0"
    page.wait_for_function("() => /did not finish/.test(document.querySelector('#vslerp-readout').textContent)")
    assert not page.locator("#vslerp-downloads").is_visible()  # no downloads of another result
    assert page.get_by_text("Result (earlier settings)").count() >= 1
    assert _result_src(page) == latest
    _set_number(page, "vslerp-steps", 2)  # the mistake is fixed: its toast goes at once
    page.wait_for_function("() => !document.querySelector('.toast-body.error')", timeout=5000)


def test_the_mix_panel_mixes_images_and_a_prompt(served, browser, tmp_path):
    from vslerp.ui.editor.layout import example_images

    editor, app = served
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(app.local_url)
    page.get_by_role("tab", name="Mix").click()
    cat, mountains, _ = example_images()
    for k, image in enumerate((cat, mountains)):
        page.locator(f"#vslerp-mix-image-{k} input[type=file]").set_input_files(image)
        page.locator(f"#vslerp-mix-image-{k} img").first.wait_for()
    page.locator("#vslerp-mix-prompt-2 textarea").fill("a red fox")
    _set_number(page, "vslerp-mix-weight-2", 0.5)
    page.wait_for_function("() => /input 1: 40 % · input 2: 40 % · input 3: 20 %/.test("
                           "document.querySelector('#vslerp-mix-weights').innerText)")
    page.locator("#vslerp-mix-run").click()
    page.locator("#vslerp-mix-result img").first.wait_for()
    page.wait_for_function("() => /vslerp-mix-seed0/.test(document.querySelector('#vslerp-mix-downloads')?.innerText)")
    page.locator("#vslerp-mix-details").get_by_text("Details", exact=True).click()
    page.wait_for_function("() => /mix/.test(document.querySelector('#vslerp-mix-readout')?.innerText)")
    readout = page.locator("#vslerp-mix-readout").inner_text()
    assert "cat.png" in readout and "a red fox" in readout and "20 %" in readout
    assert _toasts(page) == []
    _save_shot(page, tmp_path, "editor-mix")
