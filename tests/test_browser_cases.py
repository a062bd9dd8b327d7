"""Case history in headless Debian Chromium: analyse two images, reload, find them under
Cases, compare them on the Tumour board, and send one to the Review page."""

import os
import re
import shutil
import time

import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from tests.conftest import give_name, open_page, wait_idle

pytestmark = pytest.mark.browser


def _run_sample(page, sample_title: str, case_label: str, previous: int | None = None) -> int:
    if previous is None:  # the name is asked once in this browser, before a first run
        give_name(page, "Dr Board")
    page.get_by_text("Bundled sample").click()
    wait_idle(page)
    sample_box = page.get_by_test_id("stSelectbox").filter(has_text="Sample").first
    sample_box.wait_for(timeout=120_000)  # a loaded machine draws the sample picker late
    sample_box.scroll_into_view_if_needed()
    sample_box.click()
    page.get_by_role("option", name=sample_title).click()
    wait_idle(page)
    _confirm_what_the_page_asks(page)
    page.get_by_role("textbox", name="Case label").fill(case_label)
    page.get_by_role("textbox", name="Case label").press("Enter")
    wait_idle(page)
    page.get_by_role("button", name="Run", exact=True).click()
    not_previous = "" if previous is None else rf"(?!{previous}\b)"
    saved = page.get_by_text(re.compile(rf"Saved as analysis {not_previous}\d+"))
    saved.wait_for(timeout=240_000)
    return int(re.search(r"analysis (\d+)", saved.inner_text()).group(1))


def _confirm_what_the_page_asks(page) -> None:
    """Tick the antibody confirmation and, for a sample outside the validated use, the override.

    On a loaded machine a box can be drawn after the first look or a click can be lost in a
    redraw, so the boxes are looked at again until the Run button is enabled (up to a minute).
    """
    run = page.get_by_role("button", name="Run", exact=True)
    for _ in range(30):
        for text in ("This section is stained for", "Run outside the validated use"):
            box = page.get_by_test_id("stCheckbox").filter(has_text=text)
            if box.count() and not box.first.locator("input[type=checkbox]").is_checked():
                box.first.get_by_text(text).click()
                wait_idle(page)
        if run.count() and run.first.is_enabled():
            return
        page.wait_for_timeout(2000)


def test_analyse_reload_find_under_cases_and_compare(app_url, browser, tmp_path):
    page = open_page(browser, app_url, "Analyze", viewport=(1400, 2400))
    try:
        _flow(page, tmp_path)
    finally:
        target = os.environ.get("TILSCOPE_SCREENSHOT_DIR")
        if target:
            page.screenshot(path=os.path.join(target, "board-last.png"), full_page=True)


def _flow(page, tmp_path):
    first = _run_sample(page, "CD3 IHC, gastric cancer: mosaic of held-out patches", "board-case-A")
    second = _run_sample(page, "CD3 IHC, gastric cancer: mosaic of held-out patches", "board-case-B", previous=first)
    assert second != first

    page.reload(wait_until="networkidle")  # a closed or reloaded tab loses nothing
    page.get_by_test_id("stSidebarNav").get_by_text("Cases", exact=True).click()
    page.get_by_text("Open analysis").first.wait_for(timeout=60_000)
    for analysis_id, case in ((first, "board-case-A"), (second, "board-case-B")):
        box = page.get_by_test_id("stSelectbox").filter(has_text="Open analysis")
        box.click()
        page.get_by_role("option", name=re.compile(rf"#{analysis_id} · {case}")).click()
        page.get_by_role("heading", name=re.compile(rf"#{analysis_id} · {case}")).wait_for(timeout=60_000)
        added = page.get_by_text(f"Analysis #{analysis_id} is on the tumour board")
        for attempt in range(3):  # a click landing while the selection's rerun runs can be dropped
            time.sleep(2)
            page.get_by_role("button", name="Add to tumour board").click()
            try:
                added.wait_for(timeout=30_000)
                break
            except PlaywrightTimeout:
                if attempt == 2:
                    raise

    page.get_by_test_id("stSidebarNav").get_by_text("Tumour board", exact=True).click()
    page.get_by_role("heading", name="Side by side").wait_for(timeout=60_000)
    picks = page.get_by_test_id("stMultiSelect").filter(has_text="Analyses to compare")
    assert f"#{first} · board-case-A" in picks.inner_text()
    assert f"#{second} · board-case-B" in picks.inner_text()
    page.screenshot(path=str(tmp_path / "board.png"), full_page=True)
    target = os.environ.get("TILSCOPE_SCREENSHOT_DIR")
    if target:
        shutil.copy(tmp_path / "board.png", os.path.join(target, "board.png"))

    # Back to Cases: "Review this analysis" opens it on the Review page (not the last Analyze run).
    page.get_by_test_id("stSidebarNav").get_by_text("Cases", exact=True).click()
    box = page.get_by_test_id("stSelectbox").filter(has_text="Open analysis")
    box.wait_for(timeout=60_000)
    box.click()
    page.get_by_role("option", name=re.compile(rf"#{first} · board-case-A")).click()
    page.get_by_role("heading", name=re.compile(rf"#{first} · board-case-A")).wait_for(timeout=60_000)
    wait_idle(page)
    page.get_by_role("button", name="Review this analysis").click()
    page.get_by_text(f"Reviewing analysis #{first} (case board-case-A)").wait_for(timeout=60_000)
    assert f"analysis={first}" in page.url
