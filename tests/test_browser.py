"""The real app in headless Debian Chromium: upload an image, run, see the count."""

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]

pytestmark = pytest.mark.browser


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian chromium is not installed (make test installs it)")
    port = _free_port()
    env = {**os.environ, "TILSCOPE_DATA_DIR": str(tmp_path_factory.mktemp("data"))}
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port), "--server.headless", "true",
         "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false"],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).status == 200:
                    break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("streamlit did not start within 60 s")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=20)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


def test_upload_run_and_see_the_count(app_url, browser, tmp_path):
    from core.samples import get_sample

    page = browser.new_page(viewport={"width": 1400, "height": 1800})
    page.goto(f"{app_url}/analyze", wait_until="networkidle")
    page.get_by_text("Analyze an image").first.wait_for(timeout=60_000)
    page.locator("input[type=file]").set_input_files(str(get_sample("cd3-mosaic").path))
    page.get_by_text("cd3-ihc-mosaic.tif: 980 x 700 px").wait_for(timeout=60_000)
    page.get_by_role("button", name="Run").click()
    label = page.get_by_test_id("stMetricLabel").get_by_text("Cells", exact=True)
    metric = page.get_by_test_id("stMetric").filter(has=label)
    metric.wait_for(timeout=180_000)
    count = int(metric.locator("[data-testid=stMetricValue]").inner_text().replace(",", ""))
    assert count > 20
    assert page.get_by_test_id("stMetricLabel").get_by_text("Density (cells/mm²)").count() == 1
    page.locator(".js-plotly-plot").first.wait_for(timeout=60_000)
    page.screenshot(path=str(tmp_path / "analyze.png"), full_page=True)
    shutil.copy(tmp_path / "analyze.png", os.environ.get("TILSCOPE_SCREENSHOT", tmp_path / "analyze-copy.png"))


def test_bad_upload_shows_an_error_and_the_app_stays_usable(app_url, browser, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    page = browser.new_page()
    page.goto(f"{app_url}/analyze", wait_until="networkidle")
    page.locator("input[type=file]").set_input_files(str(bad))
    alert = page.locator("[data-testid=stAlert]").filter(has_text="broken.png")
    alert.wait_for(timeout=60_000)
    assert "Traceback" not in page.content()
    page.get_by_text("Bundled sample").click()
    page.get_by_role("button", name="Run").wait_for(timeout=60_000)
