"""The app server survives any upload (issue 17), in headless Debian Chromium.

Uploaded one after another on the Analyze page: a multi-page TIFF whose every page is over
the pixel limit (a few hundred kB that would decode to gigabytes), a small TIFF whose pixel
size (20 µm/px) would resample it to 30 000 x 30 000 px, a 2 GB sparse file named .png, and
a 100-megapixel PNG that is within every file limit but needs more memory than the worker
may use (the server runs with ``TILSCOPE_JOB_MEMORY_MB=2048``: the CD3 sample needs less than 2 GiB, the fitness checks of 100 megapixels more). Each gets a one-line error
and no traceback; the server keeps answering, and then analyses the CD3 sample as usual.
"""

from __future__ import annotations

import urllib.request

import numpy as np
import pytest
import tifffile
from PIL import Image

from tests.conftest import give_name, open_page, serve_app, wait_idle

pytestmark = [pytest.mark.browser, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def hostile(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("hostile")
    bomb = tmp / "stack-bomb.tif"
    page = np.zeros((10_240, 10_240), np.uint8)  # 105 megapixels a page, 0.1 MB compressed
    with tifffile.TiffWriter(bomb) as w:
        for _ in range(5):
            w.write(page, compression="zlib", tile=(1024, 1024), metadata=None)
    del page
    rng = np.random.default_rng(3)
    field = rng.integers(60, 220, (300, 300, 3), dtype=np.uint8)
    mpp_trick = tmp / "mpp-trick.tif"
    tifffile.imwrite(mpp_trick, field, photometric="rgb", resolution=(500.0, 500.0), resolutionunit="CENTIMETER")
    sparse = tmp / "huge.png"
    with open(sparse, "wb") as fh:
        fh.truncate(2 * 1024**3)
    big = tmp / "big-field.png"
    pixels = np.empty((10_000, 10_000, 3), np.uint8)
    pixels[...] = (200, 150, 190)
    pixels[::7, ::5] = 40
    Image.fromarray(pixels).save(big, compress_level=1)
    del pixels
    return {"bomb": bomb, "mpp": mpp_trick, "sparse": sparse, "big": big}


def alive(url: str) -> bool:
    return urllib.request.urlopen(f"{url}/_stcore/health", timeout=10).status == 200


def one_line_error(page, has_text: str, timeout_ms: int = 240_000) -> str:
    alert = page.locator("[data-testid=stAlert]").filter(has_text=has_text)
    alert.first.wait_for(timeout=timeout_ms)
    text = alert.first.inner_text().replace("\u2060", "").strip()
    assert "\n" not in text, text
    assert "Traceback" not in page.content() and "Error:" not in text, text
    return text


def test_hostile_uploads_leave_the_server_serving(browser, tmp_path, hostile):
    from core.samples import get_sample

    with serve_app(tmp_path / "data", env={"TILSCOPE_JOB_MEMORY_MB": "2048"}) as url:
        page = open_page(browser, url, "Analyze", viewport=(1400, 1600))
        try:
            page.get_by_text("Analyze an image").first.wait_for(timeout=60_000)
            give_name(page)
            upload = page.locator("input[type=file]")

            upload.set_input_files(str(hostile["bomb"]))
            text = one_line_error(page, "stack-bomb.tif")
            assert "megapixels" in text, text
            assert alive(url)

            upload.set_input_files(str(hostile["mpp"]))
            text = one_line_error(page, "becomes 30000 x 30000 px")
            assert "mpp-trick.tif" in text
            assert page.get_by_role("button", name="Run", exact=True).count() == 0 or \
                page.get_by_role("button", name="Run", exact=True).is_disabled()
            assert alive(url)

            upload.set_input_files(str(hostile["sparse"]))  # refused by the uploader (500 MB), never sent
            page.get_by_text("File must be 500.0MB or smaller").first.wait_for(timeout=60_000)
            assert alive(url)

            upload.set_input_files(str(hostile["big"]))
            text = one_line_error(page, "more memory than a job may use")
            assert "2.0 GiB" in text, text
            assert alive(url)

            upload.set_input_files(str(get_sample("cd3-mosaic").path))  # and a normal analysis still runs
            page.get_by_text("cd3-ihc-mosaic.tif: 980 x 700 px").wait_for(timeout=120_000)
            page.get_by_text("This section is stained for CD3").click()
            wait_idle(page)
            page.get_by_role("button", name="Run", exact=True).click()
            label = page.get_by_test_id("stMetricLabel").get_by_text("Cells", exact=True)
            metric = page.get_by_test_id("stMetric").filter(has=label)
            metric.wait_for(timeout=300_000)
            assert int(metric.locator("[data-testid=stMetricValue]").inner_text().replace(",", "")) > 20
            page.get_by_text("Saved as analysis").first.wait_for(timeout=120_000)
            assert "Traceback" not in page.content()
            assert alive(url)
        finally:
            page.close()
