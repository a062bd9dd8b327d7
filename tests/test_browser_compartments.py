"""The Analyze page in headless Debian Chromium: an H&E field with "Tissue compartments from CD-UNET" switched on
shows the compartment map over the image, its legend and areas, and the files to download (issue 18)."""

import os
import shutil

import numpy as np
import pytest
from PIL import Image

from tests.conftest import give_name, open_page, wait_idle

pytestmark = pytest.mark.browser


def _he_field(path):
    """A 600 x 600 px synthetic H&E section at 0.5 µm/px (TIFF resolution tags), tumour nests in stroma."""
    import tifffile

    from core.generator.compartments import generate_compartments

    sec = generate_compartments((300, 300), seed=5, stain="he")
    rgb = np.asarray(Image.fromarray(sec.image).resize((600, 600), Image.Resampling.BILINEAR))
    tifffile.imwrite(path, rgb, resolution=(1e4 / 0.5, 1e4 / 0.5), resolutionunit="CENTIMETER", photometric="rgb")
    return path


def test_cell_scenario_with_tissue_compartments_shows_the_map_legend_and_areas(app_url, browser, tmp_path):
    page = open_page(browser, app_url, "Analyze", viewport=(1400, 2400))
    page.get_by_text("What is the slide stained with?").wait_for(timeout=60_000)
    give_name(page)
    page.get_by_test_id("stSelectbox").first.click()
    page.get_by_role("option").filter(has_text="Tumour, immune and stromal cells in H&E").click()
    wait_idle(page)
    page.locator("input[type=file]").set_input_files(str(_he_field(tmp_path / "section.tif")))
    page.get_by_text("section.tif: 600 x 600 px").wait_for(timeout=60_000)
    page.get_by_text("Tissue compartments from CD-UNET").click()
    wait_idle(page)
    override = page.get_by_text("Run outside the validated use")
    if override.count():  # a synthetic field may read outside the validated use; the run is then marked so
        override.click()
        wait_idle(page)
    page.get_by_role("button", name="Run", exact=True).click()
    page.get_by_text("Saved as analysis").wait_for(timeout=300_000)
    wait_idle(page)
    page.get_by_text("Tissue compartments", exact=True).wait_for(timeout=60_000)
    assert "Traceback" not in page.inner_text("body")
    caption = page.get_by_text("Tumour, stroma, necrosis and background predicted for every pixel")
    caption.wait_for(timeout=60_000)  # the heading can be drawn a moment before the picture and its caption
    assert caption.count() == 1
    table = page.get_by_test_id("stDataFrame").filter(has_text="area, share of the image, cells")
    table.wait_for(timeout=120_000)  # drawn after the map; late on a loaded machine
    for label in ("compartments.png", "regions.geojson", "report.pdf"):  # the downloads are drawn last
        page.get_by_role("button", name=label, exact=True).wait_for(timeout=120_000)
        assert page.get_by_role("button", name=label, exact=True).count() == 1, label
    caption.scroll_into_view_if_needed()
    page.screenshot(path=str(tmp_path / "compartments.png"), full_page=True)
    shutil.copy(tmp_path / "compartments.png",
                os.environ.get("TILSCOPE_SCREENSHOT", tmp_path / "compartments-copy.png"))
