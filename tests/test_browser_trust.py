"""A clinician's first hour in headless Chromium: wrong stain refused, synthetic models kept out, one case one result."""

import os
import shutil

import pytest

from tests.conftest import give_name, open_page, wait_idle

pytestmark = pytest.mark.browser


def shot(page, tmp_path, name: str) -> None:
    """Full-page screenshot; copied to $TILSCOPE_SCREENSHOT_DIR when set, to look at."""
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    if os.environ.get("TILSCOPE_SCREENSHOT_DIR"):
        shutil.copy(path, os.path.join(os.environ["TILSCOPE_SCREENSHOT_DIR"], path.name))


def test_home_says_what_to_do_and_keeps_synthetic_models_apart(app_url, browser, tmp_path):
    page = open_page(browser, app_url, "Home", viewport=(1280, 1400))
    page.get_by_role("button", name="Analyze an image").wait_for(timeout=60_000)
    text = page.inner_text("body")
    assert "Research use only" in text and "For teaching and method development" in text
    assert "§" not in text and "eq. 3" not in text
    shot(page, tmp_path, "trust-home")
    page.get_by_role("button", name="Analyze an image").click()
    page.get_by_text("What is the slide stained with?").wait_for(timeout=60_000)
    page.get_by_test_id("stSelectbox").first.click()
    options = page.get_by_role("option").all_inner_texts()
    assert options and not any("TNRD" in o for o in options), options  # synthetic-only: Teaching page only
    page.keyboard.press("Escape")


def test_wrong_stain_is_stopped_and_a_new_image_clears_the_old_result(app_url, browser, tmp_path):
    from core.samples import get_sample

    page = open_page(browser, app_url, "Analyze", viewport=(1280, 1600))
    page.get_by_text("What is the slide stained with?").wait_for(timeout=60_000)
    give_name(page, "Dr Trust")
    # An H&E field offered to the CD3 IHC model: stopped before Run, in plain words.
    page.locator("input[type=file]").set_input_files(str(get_sample("he-crc").path))
    alert = page.locator("[data-testid=stAlert]").filter(has_text="Outside the validated use")
    alert.wait_for(timeout=60_000)
    assert "looks like H&E" in alert.inner_text()
    assert page.get_by_role("button", name="Run", exact=True).is_disabled()
    shot(page, tmp_path, "trust-wrong-stain")
    # The right image, confirmed as CD3: a result under the case label.
    page.locator("input[type=file]").set_input_files(str(get_sample("cd3-mosaic").path))
    page.get_by_text("cd3-ihc-mosaic.tif: 980 x 700 px").wait_for(timeout=60_000)
    page.get_by_text("This section is stained for CD3").click()
    page.get_by_role("textbox", name="Case label").fill("TRUST-1")
    page.get_by_role("textbox", name="Case label").press("Enter")
    wait_idle(page)
    page.get_by_role("button", name="Run", exact=True).click()
    page.get_by_text("Saved as analysis").wait_for(timeout=180_000)
    wait_idle(page)
    page.get_by_test_id("stMetricLabel").get_by_text("Density (cells/mm² of tissue)").wait_for(timeout=60_000)
    shot(page, tmp_path, "trust-saved")
    # The same run again in the same case asks before saving a copy.
    page.get_by_role("button", name="Run", exact=True).click()
    page.get_by_text("Save a second copy?").wait_for(timeout=180_000)
    shot(page, tmp_path, "trust-duplicate")
    page.get_by_role("button", name="Don't save").click()
    page.get_by_text("Not saved again").wait_for(timeout=60_000)
    # A new image: the previous result and case label are gone.
    page.locator("input[type=file]").set_input_files(str(get_sample("he-crc").path))
    page.locator("[data-testid=stAlert]").filter(has_text="Outside the validated use").wait_for(timeout=60_000)
    wait_idle(page)
    assert page.get_by_text("Result:").count() == 0
    assert page.get_by_role("textbox", name="Case label").input_value() == ""
    assert "Traceback" not in page.content()
