"""The web UI in a real browser: Debian's chromium (installed by .ci/run with apt-get) driven by Playwright through
its executable_path. Text-to-Video: type a prompt, Generate, the video element plays; Image-to-Video: upload a PNG,
Generate, the video plays; a screenshot of each tab (to $TURBO_APP_SCREENSHOTS when set, e.g. docs/)."""

import os
import shutil
from pathlib import Path

import pytest

from tests.app.conftest import PROMPT_I2V, PROMPT_T2V, SEED, STEPS, first_frame_png

playwright = pytest.importorskip("playwright.sync_api")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]
TIMEOUT_MS = 150_000


@pytest.fixture(scope="module")
def page(app_server):
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(app_server.url)
        yield page
        browser.close()


def _screenshot_dir(tmp_path) -> Path:
    folder = Path(os.environ.get("TURBO_APP_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _set_number(page, elem_id: str, value: int) -> None:
    box = page.locator(f"#{elem_id} input")
    box.fill(str(value))
    box.press("Tab")


def _generate_and_check_it_plays(page, kind: str) -> None:
    page.locator(f"#{kind}-generate").click()
    video = page.locator(f"#{kind}-video video")
    video.wait_for(state="attached", timeout=TIMEOUT_MS)
    page.wait_for_function("sel => { const v = document.querySelector(sel); return v && v.readyState >= 1 "
                           "&& v.duration > 0; }", arg=f"#{kind}-video video", timeout=30_000)
    start = video.evaluate("v => { v.muted = true; v.play(); return v.currentTime; }")
    page.wait_for_timeout(700)
    later = video.evaluate("v => v.currentTime")
    duration = video.evaluate("v => v.duration")
    assert duration > 0 and later != start, (duration, start, later)
    page.locator(f"#{kind}-summary").get_by_text("transformer").first.wait_for(timeout=30_000)


def test_text_to_video_in_the_browser(page, tmp_path):
    page.locator("#t2v-prompt textarea").fill(PROMPT_T2V)
    _set_number(page, "t2v-steps", STEPS)
    _set_number(page, "t2v-seed", SEED)
    _generate_and_check_it_plays(page, "t2v")
    page.locator("#t2v-gallery").get_by_role("button").first.wait_for(timeout=30_000)
    page.screenshot(path=str(_screenshot_dir(tmp_path) / "app-text-to-video.png"), full_page=True)


def test_image_to_video_in_the_browser(page, tmp_path):
    page.get_by_role("tab", name="Image-to-Video").click()
    page.locator("#i2v-prompt textarea").fill(PROMPT_I2V)
    image = first_frame_png(PROMPT_I2V, tmp_path / "first-frame.png")
    page.locator("#i2v-image input[type=file]").set_input_files(image)
    page.locator("#i2v-image img").first.wait_for(timeout=30_000)
    _set_number(page, "i2v-steps", STEPS)
    _set_number(page, "i2v-seed", SEED)
    _generate_and_check_it_plays(page, "i2v")
    page.screenshot(path=str(_screenshot_dir(tmp_path) / "app-image-to-video.png"), full_page=True)
