"""Shared fixtures: small synthetic images, the real CD3 data set when present, and the
running app with headless Debian Chromium for the browser tests."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from core.evaluation.datasets import CD3_DATA_DIR


@pytest.fixture(autouse=True)
def _own_case_store(tmp_path_factory, monkeypatch):
    """Every test gets its own case store folder: nothing is written into the checkout's ./data."""
    monkeypatch.delenv("TILSCOPE_DATABASE_URL", raising=False)
    monkeypatch.setenv("TILSCOPE_DATA_DIR", str(tmp_path_factory.mktemp("case-store")))


@pytest.fixture(scope="session")
def cd3_table():
    """The CD3 patch table with its split (../shared/data beside the checkout; a missing set fails the test)."""
    if not CD3_DATA_DIR.is_dir():
        pytest.fail(f"CD3 data set not found at {CD3_DATA_DIR} (it lives in ../shared/data beside the checkout)")
    from core.evaluation.datasets import cd3_patch_table

    return cd3_patch_table()


@pytest.fixture(scope="session")
def cd3_model():
    """The shipped cd3-ihc model on CPU."""
    from core.pipeline import load_model

    return load_model("cd3-ihc", "cpu")


@pytest.fixture
def rgb_image():
    """(64, 80, 3) uint8 RGB with a gradient, for I/O tests."""
    y, x = np.mgrid[0:64, 0:80]
    return np.stack([x * 3, y * 4, (x + y) * 2], axis=-1).astype(np.uint8)


REPO = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve_app(data_dir: Path, env: dict | None = None):
    """``streamlit run app.py`` on a free port with ``TILSCOPE_DATA_DIR=data_dir`` (and ``env``); yields its URL."""
    if not Path(CHROMIUM).exists():
        pytest.fail("Debian chromium is not installed (make test installs it)")
    port = _free_port()
    env = {**os.environ, "TILSCOPE_DATA_DIR": str(data_dir), **(env or {})}
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
        try:
            proc.wait(timeout=60)  # a loaded machine can take a while to stop the server and its workers
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=60)


@pytest.fixture(scope="session")
def app_url(tmp_path_factory):
    """URL of the app served by ``streamlit run app.py`` on a free port, with its own data folder."""
    with serve_app(tmp_path_factory.mktemp("data")) as url:
        yield url


@pytest.fixture(scope="session")
def browser():
    """Headless Debian Chromium driven by Playwright (never a downloaded browser)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


#: How long a browser action (click, fill, ...) waits for its element, ms.
BROWSER_ACTION_TIMEOUT_MS = 90_000


def open_page(browser, app_url: str, title: str, viewport=(1400, 1800)):
    """Open the app at its root (the router) and go to the page called ``title`` in the sidebar.

    Entering through the root, as a user does, runs ``app.py``'s navigation (deep links
    are tested on their own, in tests/test_browser_deeplink.py).
    """
    page = browser.new_page(viewport={"width": viewport[0], "height": viewport[1]})
    # Clicks and fills wait for their element up to 90 s (Playwright's default is 30 s): on a CI
    # machine busy with the rest of the suite a rerun can take longer than that to redraw a page.
    page.set_default_timeout(BROWSER_ACTION_TIMEOUT_MS)
    page.goto(app_url, wait_until="networkidle")
    page.get_by_test_id("stSidebarNav").get_by_text(title, exact=True).click()
    return page


def wait_idle(page, timeout_ms: int = 120_000) -> None:
    """Wait until the script run a widget change started has finished ("Running..." gone).

    On a loaded machine a click or keystroke sent while Streamlit redraws the page can land on
    an element being replaced; the browser tests wait for each rerun as a user would.
    """
    page.wait_for_timeout(400)  # let the rerun start
    page.get_by_test_id("stStatusWidget").wait_for(state="hidden", timeout=timeout_ms)


def open_expander(page, label: str, timeout_ms: int = 120_000) -> None:
    """Open the expander whose header reads ``label`` and wait until its content is shown.

    On a loaded machine the first click can land while the page is being redrawn and be lost;
    the header is clicked again only while the content is still closed (``inert``), so a late
    first click is never undone by a second one.
    """
    expander = page.get_by_test_id("stExpander").filter(has=page.locator("summary", has_text=label)).first
    expander.wait_for(timeout=timeout_ms)
    content = expander.get_by_test_id("stExpanderDetails")
    for _ in range(6):
        wait_idle(page, timeout_ms)
        if content.get_attribute("inert") is None:
            break
        expander.locator("summary").first.click()
        for _ in range(30):  # up to 15 s for the click to take
            page.wait_for_timeout(500)
            if content.get_attribute("inert") is None:
                break
    assert content.get_attribute("inert") is None, f"the expander {label!r} did not open"
    wait_idle(page, timeout_ms)


def give_name(page, name: str = "Dr Test") -> None:
    """Enter the user's name in the sidebar form (asked once per browser) when the page asks for it."""
    box = page.get_by_test_id("stSidebar").get_by_role("textbox", name="Your name")
    box.wait_for(timeout=60_000)
    box.fill(name)
    page.get_by_test_id("stSidebar").get_by_role("button", name="Save name").click()
    wait_idle(page)
