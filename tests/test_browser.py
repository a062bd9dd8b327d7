"""The real app in headless Debian Chromium: upload an image, run, see the count."""

import os
import shutil

import numpy as np
import pytest
from PIL import Image

from tests.conftest import give_name, open_page

pytestmark = pytest.mark.browser


def test_upload_run_and_see_the_count(app_url, browser, tmp_path):
    from core.samples import get_sample

    page = open_page(browser, app_url, "Analyze")
    page.get_by_text("Analyze an image").first.wait_for(timeout=60_000)
    give_name(page)
    page.locator("input[type=file]").set_input_files(str(get_sample("cd3-mosaic").path))
    page.get_by_text("cd3-ihc-mosaic.tif: 980 x 700 px").wait_for(timeout=60_000)
    assert page.get_by_role("button", name="Run", exact=True).is_disabled()  # the antibody is confirmed first
    page.get_by_text("This section is stained for CD3").click()
    page.get_by_role("button", name="Run", exact=True).click()
    label = page.get_by_test_id("stMetricLabel").get_by_text("Cells", exact=True)
    metric = page.get_by_test_id("stMetric").filter(has=label)
    metric.wait_for(timeout=180_000)
    count = int(metric.locator("[data-testid=stMetricValue]").inner_text().replace(",", ""))
    assert count > 20
    assert page.get_by_test_id("stMetricLabel").get_by_text("Density (cells/mm² of tissue)").count() == 1
    page.locator(".js-plotly-plot").first.wait_for(timeout=180_000)  # a loaded machine draws the charts last
    page.screenshot(path=str(tmp_path / "analyze.png"), full_page=True)
    shutil.copy(tmp_path / "analyze.png", os.environ.get("TILSCOPE_SCREENSHOT", tmp_path / "analyze-copy.png"))


def test_a_greyscale_upload_is_refused_before_run(app_url, browser, tmp_path):
    grey = tmp_path / "grey-scan.png"
    Image.fromarray(np.random.default_rng(1).integers(40, 230, (200, 240), dtype=np.uint8)).save(grey)
    page = open_page(browser, app_url, "Analyze", viewport=(1280, 900))
    page.locator("input[type=file]").set_input_files(str(grey))
    alert = page.locator("[data-testid=stAlert]").filter(has_text="the image has no colour")
    alert.wait_for(timeout=60_000)
    assert "grey-scan.png" in alert.inner_text() and "upload the colour (RGB) image" in alert.inner_text()
    assert page.get_by_role("button", name="Run", exact=True).count() == 0
    assert "Traceback" not in page.content()


def test_bad_upload_shows_an_error_and_the_app_stays_usable(app_url, browser, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    page = open_page(browser, app_url, "Analyze", viewport=(1280, 900))
    page.locator("input[type=file]").set_input_files(str(bad))
    alert = page.locator("[data-testid=stAlert]").filter(has_text="broken.png")
    alert.wait_for(timeout=60_000)
    assert "Traceback" not in page.content()
    page.get_by_text("Bundled sample").click()
    page.get_by_role("button", name="Run", exact=True).wait_for(timeout=60_000)
