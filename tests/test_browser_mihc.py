"""The Analyze page in headless Debian Chromium: the synthetic-trained multiplex IHC model, listed only on request,
runs on a real brightfield IHC image, shows its chromogen maps, and is saved only when the user confirms (issue 20)."""

import os
import shutil

import pytest

from tests.conftest import give_name, open_page, wait_idle

pytestmark = pytest.mark.browser


def test_mihc_on_a_real_ihc_image_shows_the_chromogen_maps_and_asks_before_saving(app_url, browser, tmp_path):
    from core.samples import get_sample

    page = open_page(browser, app_url, "Analyze", viewport=(1400, 2600))
    page.get_by_text("What is the slide stained with?").wait_for(timeout=60_000)
    give_name(page)
    page.get_by_text("Also list models trained on synthetic images").click()
    wait_idle(page)
    option = page.get_by_role("option").filter(has_text="T-cell phenotypes in multiplex IHC")
    for _ in range(10):  # the picker is redrawn with the longer list once the switch's rerun has finished
        page.get_by_test_id("stSelectbox").first.click()
        try:
            option.wait_for(timeout=3_000)
            break
        except Exception:  # noqa: BLE001 - the old list was open: close it and wait for the rerun
            page.keyboard.press("Escape")
            wait_idle(page)
    option.click()
    wait_idle(page)
    banner = page.get_by_text("Trained on synthetic images only; not validated on real tissue.")
    banner.wait_for(timeout=120_000)  # said before anything is run (drawn once the choice's rerun has finished)
    assert banner.count() == 1
    # a real brightfield IHC image (colon, DAB and hematoxylin; scikit-image's sample), at an assumed 0.5 µm/px
    page.locator("input[type=file]").set_input_files(str(get_sample("skimage-ihc").path))
    page.get_by_text("ihc.png: 512 x 512 px").wait_for(timeout=60_000)
    override = page.get_by_text("Run outside the validated use")
    if override.count():  # a panel the model has not seen may read outside its use; the run is then marked so
        override.click()
        wait_idle(page)
    page.get_by_role("button", name="Run", exact=True).click()
    page.get_by_text("Not saved in the case history:").wait_for(timeout=300_000)
    wait_idle(page)
    maps = page.get_by_test_id("stExpander").filter(has_text="Chromogen unmixing: why each cell got its phenotype")
    maps.get_by_text("Not explained by the panel").wait_for(timeout=120_000)
    assert maps.get_by_test_id("stImage").count() == 6  # five stains and the residual
    assert "Traceback" not in page.inner_text("body")
    save = page.get_by_role("button", name="Save in the case history as a teaching analysis")
    save.wait_for(timeout=120_000)
    assert save.is_disabled()
    maps.scroll_into_view_if_needed()
    page.screenshot(path=str(tmp_path / "mihc.png"), full_page=True)
    shutil.copy(tmp_path / "mihc.png", os.environ.get("TILSCOPE_SCREENSHOT", tmp_path / "mihc-copy.png"))
    page.get_by_text("I keep this as a teaching or method-development analysis").click()
    wait_idle(page)
    page.get_by_role("button", name="Save in the case history as a teaching analysis").click()
    page.get_by_text("marked as a teaching analysis").wait_for(timeout=120_000)
