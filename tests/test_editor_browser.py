"""The editor in a real browser: headless Chromium (Debian package) driven by Playwright.

Uploads a source image, types a prompt, renders, moves the α slider, waits for a new result and
saves a screenshot (to the test's tmp dir, and to $VSLERP_SCREENSHOT_DIR when set).
"""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TIMEOUT_MS = 60_000

if not CHROMIUM.is_file():
    pytest.skip(f"{CHROMIUM} is absent (apt-get install chromium)", allow_module_level=True)
pytest.importorskip("gradio")
sync_api = pytest.importorskip("playwright.sync_api")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app(tiny_kandinsky):
    from vslerp.pipelines import VSlerpPipeline
    from vslerp.ui.editor import build_editor, launch_kwargs

    prior_dir, decoder_dir = tiny_kandinsky
    pipe = VSlerpPipeline.from_pretrained(decoder_dir, prior=prior_dir, device="cpu")
    demo = build_editor(pipe, tiny_random=True)
    kwargs = launch_kwargs("127.0.0.1", _free_port(), False) | {"quiet": True}
    demo.launch(prevent_thread_lock=True, **kwargs)
    yield demo
    demo.close()


def _result_src(page) -> str | None:
    img = page.locator("#vslerp-result img")
    return img.first.get_attribute("src") if img.count() else None


def test_upload_move_alpha_new_result_screenshot(app, tmp_path):
    source = tmp_path / "source.png"
    yy, xx = np.mgrid[0:96, 0:96]
    rgb = np.stack([xx * 2.6, yy * 2.6, 255 - xx * 2.6], axis=-1).astype(np.uint8)  # a gradient
    PIL.Image.fromarray(rgb).save(source)
    state = app.vslerp_editor.state

    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1360, "height": 1000})
            page.set_default_timeout(TIMEOUT_MS)
            page.goto(app.local_url)
            page.get_by_text("noise-only smoke test").first.wait_for()
            page.locator("#vslerp-source input[type=file]").set_input_files(str(source))
            page.locator("#vslerp-source img").first.wait_for()
            page.locator("#vslerp-prompt textarea").fill("a photo of a cat")
            page.locator("#vslerp-run").click()
            page.locator("#vslerp-result img").first.wait_for()
            first = _result_src(page)
            encodes = (state.encode_calls, state.prompt_calls)

            # drag the α slider from its middle (α = 0) to about three quarters (α ≈ 1)
            box = page.locator("#vslerp-alpha input[type=range]").bounding_box()
            y = box["y"] + box["height"] / 2
            page.mouse.move(box["x"] + box["width"] * 0.5, y)
            page.mouse.down()
            page.mouse.move(box["x"] + box["width"] * 0.75, y, steps=5)
            page.mouse.up()
            page.wait_for_function(
                "prev => { const i = document.querySelector('#vslerp-result img');"
                " return i && i.getAttribute('src') !== prev; }", arg=first)
            alpha = float(page.locator("#vslerp-alpha input[type=number]").input_value())
            # the follow-up (read-out, gallery, downloads) has run for both results
            page.wait_for_function("() => document.querySelectorAll('#vslerp-gallery img').length >= 2")
            page.wait_for_function("() => ['#vslerp-png', '#vslerp-gif'].every(id =>"
                                   " /vslerp-result\\s*\\.(png|gif)/.test(document.querySelector(id).innerText))")
            shot = tmp_path / "editor.png"
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()

    assert alpha > 0.5  # the drag moved α
    assert (state.encode_calls, state.prompt_calls) == encodes  # the α move only decoded
    with PIL.Image.open(shot) as im:
        assert im.size[0] >= 1000
    if os.environ.get("VSLERP_SCREENSHOT_DIR"):
        out = Path(os.environ["VSLERP_SCREENSHOT_DIR"])
        out.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, out / "editor.png")
