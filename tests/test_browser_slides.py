"""The Slides page in headless Debian Chromium: a slide folder holding a slide without mpp (the TCGA sample, linked)
and a small synthetic pyramidal OME-TIFF; the mpp-less slide is refused until the mpp is given; a small region of
the synthetic slide is analysed as a background job, the page is reloaded while it runs, and the result view comes.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest

from core.slides.synthetic import GLASS_RGB, write_pyramid_tiff
from tests.conftest import give_name, open_page, serve_app, wait_idle

pytestmark = pytest.mark.browser

WSI = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "wsi-samples"
TCGA = WSI / "tcga-cr-7395-01a-01-ts1.svs"
SAMPLES = Path(__file__).resolve().parent.parent / "samples"
MPP = 0.5
W, H = 2400, 1800
CENTRE, RADIUS = (1200, 900), 700  # the tissue: a disc of H&E texture, level-0 px


def _texture() -> np.ndarray:
    from core.io import load_image

    return load_image(SAMPLES / "he-crc-img7.tif").rgb  # (500, 500, 3) H&E


def _render_with(texture: np.ndarray):
    th, tw = texture.shape[:2]

    def render(d, x0, y0, w, h):
        xx = ((np.arange(x0, x0 + w) + 0.5) * d)[None, :]
        yy = ((np.arange(y0, y0 + h) + 0.5) * d)[:, None]
        inside = (xx - CENTRE[0]) ** 2 + (yy - CENTRE[1]) ** 2 < RADIUS**2
        if not inside.any():
            return None
        tile = np.empty((h, w, 3), np.uint8)
        tile[:] = GLASS_RGB
        tex = texture[(yy.astype(np.int64) % th), (xx.astype(np.int64) % tw)]
        return np.where(inside[..., None], tex, tile)

    return render


@pytest.fixture(scope="module")
def slide_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("slide-folder")
    write_pyramid_tiff(folder / "synthetic.ome.tif", W, H, MPP, _render_with(_texture()), tile_px=256,
                       downsamples=(1, 4, 16))
    os.symlink(TCGA, folder / "tcga.svs")
    return folder


def _pick(page, label: str, option: str) -> None:
    box = page.get_by_test_id("stSelectbox").filter(has_text=label).first
    box.scroll_into_view_if_needed()
    box.click()
    page.get_by_role("option", name=option).click()
    wait_idle(page)


def _fill(page, label: str, value: str) -> None:
    """Type into the number box labelled ``label`` and wait for the rerun it starts."""
    field = page.get_by_test_id("stNumberInput").filter(has_text=label).locator("input").first
    field.wait_for(timeout=120_000)
    field.fill(value)
    field.press("Enter")
    page.wait_for_timeout(600)
    wait_idle(page)


def test_slide_folder_mpp_refusal_background_run_reload_and_result(slide_folder, browser, tmp_path):
    shots = os.environ.get("TILSCOPE_SCREENSHOT_DIR")
    with serve_app(tmp_path / "data", env={"TILSCOPE_SLIDE_DIR": str(slide_folder)}) as url:
        page = open_page(browser, url, "Slides", viewport=(1400, 2600))
        try:
            give_name(page, "Dr Slide")
            # 1. The TCGA slide records no mpp: refused until given.
            _pick(page, "Slide file", "tcga.svs")
            page.get_by_text("not recorded in the file").first.wait_for(timeout=120_000)
            page.get_by_text("cannot be analysed without them").wait_for(timeout=60_000)
            assert page.get_by_role("button", name="Start the analysis").count() == 0
            _fill(page, "Microns per pixel (mpp)", "0.25")
            page.get_by_text("Tissue analysed (mm²)").wait_for(timeout=120_000)
            page.get_by_role("button", name="Start the analysis").wait_for(timeout=60_000)
            assert page.get_by_text("cannot be analysed without them").count() == 0
            if shots:
                page.screenshot(path=os.path.join(shots, "slides-tcga.png"), full_page=True)

            # 2. The synthetic slide: a 250 µm square inside the tissue (one he-til tile).
            _pick(page, "Slide file", "synthetic.ome.tif")
            page.get_by_text("Tissue analysed (mm²)").wait_for(timeout=120_000)
            page.get_by_text("A rectangle (µm)").click()
            wait_idle(page)
            for label, value in (("x (µm)", "500"), ("y (µm)", "350"), ("width (µm)", "250"), ("height (µm)", "250")):
                _fill(page, label, value)
            # the blue square drawn and the tissue within it measured: at most 250 µm x 250 µm (lumens are not tissue)
            metric = page.get_by_test_id("stMetric").filter(has_text="Tissue analysed").filter(
                has_text=re.compile(r"\b0\.0[3-6]\d\b"))
            metric.wait_for(timeout=60_000)
            assert 0.03 <= float(re.search(r"0\.0\d+", metric.inner_text()).group()) <= 0.0625
            page.get_by_role("textbox", name="Case label").fill("slide-case-1")
            page.get_by_role("textbox", name="Case label").press("Enter")
            page.wait_for_timeout(600)
            wait_idle(page)
            start = page.get_by_role("button", name="Start the analysis")
            start.wait_for(timeout=60_000)
            assert start.is_enabled(), page.get_by_test_id("stCaption").all_inner_texts()
            start.click()
            page.wait_for_url(re.compile(r"[?&]run=[0-9a-f]{32}"), timeout=120_000)
            run_url = page.url

            # 3. Reload while it runs: the run is found again from the URL.
            page.reload(wait_until="networkidle")
            assert page.url == run_url
            # the scenario offered first is the one for the stain read on the tissue (H&E)
            page.get_by_text("synthetic.ome.tif · Tumour, immune and stromal cells in H&E").wait_for(timeout=60_000)
            saved = page.get_by_text(re.compile(r"Saved as analysis \d+"))
            saved.wait_for(timeout=600_000)

            # 4. The result view: figures, numbers, spatial statistics, downloads.
            page.get_by_text("Density (cells/mm² of tissue)").wait_for(timeout=60_000)
            legend = page.locator(".js-plotly-plot .legend").first
            legend.wait_for(timeout=120_000)
            assert "Immune density" in legend.text_content() and "hot and cold spots" in legend.text_content()
            page.get_by_text("Spatial statistics").wait_for(timeout=60_000)
            for name in ("cells.parquet", "cells.csv", "summary.json", "tissue.geojson", "cells.geojson"):
                page.get_by_test_id("stDownloadButton").filter(has_text=name).first.wait_for(timeout=60_000)
            page.wait_for_timeout(1500)  # let the plot finish drawing before the screenshot
            if shots:
                page.screenshot(path=os.path.join(shots, "slides-result.png"), full_page=True)
            errors = page.get_by_test_id("stException").count()
            assert errors == 0
        finally:
            if shots:
                page.screenshot(path=os.path.join(shots, "slides-last.png"), full_page=True)
