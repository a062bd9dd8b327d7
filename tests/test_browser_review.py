"""The Review page in headless Debian Chromium: draw a tumour rectangle on the canvas, delete
a cell, add a cell, and watch the numbers change."""

from __future__ import annotations

import io
import os
import shutil
import time
from pathlib import Path

import pandas as pd
import pytest

pytestmark = pytest.mark.browser


def metric_value(page, label: str, timeout: float = 60_000) -> str:
    lab = page.get_by_test_id("stMetricLabel").get_by_text(label, exact=True)
    metric = page.get_by_test_id("stMetric").filter(has=lab)
    metric.first.wait_for(timeout=timeout)
    return metric.first.locator("[data-testid=stMetricValue]").inner_text().strip()


def wait_metric_change(page, label: str, old: str | None, timeout_s: float = 90) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            value = metric_value(page, label, timeout=2_000)
        except Exception:  # not drawn yet (the page is rerunning)
            value = None
        if value is not None and value != old:
            return value
        time.sleep(0.5)
    raise AssertionError(f"metric {label!r} stayed {old!r}")


def canvas_box(page):
    canvas = page.locator("canvas.upper-canvas").first
    canvas.wait_for(timeout=60_000)
    box = canvas.bounding_box()
    assert box and box["width"] > 100
    return box


def to_page(box, x_px: float, y_px: float, w_px: int, h_px: int) -> tuple[float, float]:
    """Image pixels → page coordinates over the canvas (the canvas shows the whole image)."""
    return box["x"] + x_px / w_px * box["width"], box["y"] + y_px / h_px * box["height"]


def reviewed_cells(page, tries: int = 3) -> pd.DataFrame:
    """Download the reviewed cell table; a rerun landing during the click can cancel a
    download (Streamlit replaces the media file), so wait for the page to settle and retry."""
    from playwright.sync_api import Error as PlaywrightError

    for attempt in range(tries):
        time.sleep(1.5)
        try:
            with page.expect_download() as dl:
                page.get_by_role("button", name="Reviewed cells (CSV)").click()
            return pd.read_csv(io.BytesIO(Path(dl.value.path()).read_bytes()))
        except PlaywrightError:
            if attempt == tries - 1:
                raise
    raise AssertionError("unreachable")


def shot(page, tmp_path, name: str) -> None:
    path = tmp_path / name
    page.screenshot(path=str(path), full_page=True)
    target = os.environ.get("TILSCOPE_SCREENSHOT_DIR")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(target) / name)


def test_draw_tumour_delete_and_add_a_cell(app_url, browser, tmp_path):
    page = browser.new_page(viewport={"width": 1500, "height": 3200})
    try:
        _draw_delete_add(page, app_url, tmp_path)
    finally:
        shot(page, tmp_path, "review-last.png")
        page.close()


def _draw_delete_add(page, app_url, tmp_path):
    from core.samples import get_sample

    w_px, h_px = 980, 700  # the bundled CD3 mosaic
    assert get_sample("cd3-mosaic").load().shape == (h_px, w_px)
    # Enter through the router (a deep link to /analyze would run the page without app.py).
    page.goto(f"{app_url}/", wait_until="networkidle")
    page.locator("a[href$='/analyze']").first.click()
    page.get_by_text("Analyze an image").first.wait_for(timeout=60_000)
    page.get_by_text("Bundled sample").click()
    page.get_by_role("button", name="Run", exact=True).click()
    n_cells = int(metric_value(page, "Cells", timeout=300_000).replace(",", ""))
    assert n_cells > 20

    # Same session: navigate with the sidebar, not a new URL.
    page.locator("a[href$='/review']").first.click()
    page.get_by_text("Review: regions & corrections").first.wait_for(timeout=60_000)
    assert metric_value(page, "Cells") == f"{n_cells:,}"
    assert metric_value(page, "Cells corrected by hand") == "0"
    intratumoral = metric_value(page, "Intratumoral immune density (cells/mm²)")

    # 1. A tumour rectangle over the left half of the image.
    page.get_by_text("Rectangle", exact=True).click()
    time.sleep(3.0)  # the rerun redraws the canvas in the new mode
    box = canvas_box(page)
    x0, y0, x1, y1 = 60.0, 60.0, 480.0, 640.0  # image pixels
    page.mouse.move(*to_page(box, x0, y0, w_px, h_px))
    page.mouse.down()
    for k in range(1, 11):
        page.mouse.move(*to_page(box, x0 + (x1 - x0) * k / 10, y0 + (y1 - y0) * k / 10, w_px, h_px))
    page.mouse.up()
    in_tumour = int(wait_metric_change(page, "Immune cells in tumour regions", None))
    assert wait_metric_change(page, "Intratumoral immune density (cells/mm²)", intratumoral) != "n/a"
    page.get_by_text("Added Tumour 1").first.wait_for(timeout=30_000)
    cells = reviewed_cells(page)
    inside = cells[(cells.x_px > x0 + 20) & (cells.x_px < x1 - 20) & (cells.y_px > y0 + 20) & (cells.y_px < y1 - 20)]
    assert in_tumour >= len(inside) > 0
    shot(page, tmp_path, "review-1-tumour.png")

    # 2. Delete a detected cell inside the tumour.
    page.get_by_text("Correct cells", exact=True).click()
    time.sleep(2.0)
    page.get_by_text("Delete a cell", exact=True).click()
    time.sleep(3.0)
    target = inside.iloc[0]
    box = canvas_box(page)
    page.mouse.click(*to_page(box, target.x_px + 2, target.y_px - 2, w_px, h_px))
    assert int(wait_metric_change(page, "Immune cells in tumour regions", str(in_tumour))) == in_tumour - 1
    assert metric_value(page, "Cells corrected by hand") == "1"
    assert metric_value(page, "Cells") == f"{n_cells - 1:,}"

    # 3. Add a missed CD3+ cell inside the tumour, away from every detection.
    page.get_by_text("Add a missed cell", exact=True).click()
    time.sleep(3.0)
    cells = reviewed_cells(page)
    best, far = None, -1.0
    for x in range(int(x0) + 40, int(x1) - 40, 10):
        for y in range(int(y0) + 40, int(y1) - 40, 10):
            d = ((cells.x_px - x) ** 2 + (cells.y_px - y) ** 2).min() ** 0.5
            if d > far:
                best, far = (x, y), d
    box = canvas_box(page)
    page.mouse.click(*to_page(box, *best, w_px, h_px))
    assert int(wait_metric_change(page, "Immune cells in tumour regions", str(in_tumour - 1))) == in_tumour
    assert metric_value(page, "Cells corrected by hand") == "2"
    assert metric_value(page, "Cells") == f"{n_cells:,}"
    edited = reviewed_cells(page)
    assert (edited["edited"] == "added").sum() == 1
    assert "Traceback" not in page.content()
    shot(page, tmp_path, "review-2-corrected.png")
