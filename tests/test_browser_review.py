"""The Review page in headless Debian Chromium, as a pathologist uses it: open a saved analysis
from Cases, give a name once, draw a tumour region, zoom in, delete, add and relabel cells, save
the review, and find the reviewed state (numbers, overlay with the region, audit log, the
original kept) on the Cases page; the name is kept through a reload.

The analysis is saved beforehand through the pipeline, as the Analyze page saves a run (that
page's own browser test runs it there), so this test is about the review."""

from __future__ import annotations

import io
import os
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import open_expander, open_page, serve_app, wait_idle

pytestmark = pytest.mark.browser

W_PX, H_PX = 980, 700  # the bundled CD3 mosaic
ALERTS = "() => [...document.querySelectorAll('[data-testid^=stAlertContent]')].map(e => e.innerText).join('|')"


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
        time.sleep(0.3)
    raise AssertionError(f"metric {label!r} stayed {old!r}")


def shot(page, tmp_path, name: str) -> None:
    path = tmp_path / name
    page.screenshot(path=str(path), full_page=True)
    target = os.environ.get("TILSCOPE_SCREENSHOT_DIR")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(target) / name)


def view_image(page):
    """The bounding box of the review view (the larger of the two clickable images; the other is the navigator)."""
    frames = page.locator("iframe[title*='streamlit_image_coordinates']")
    frames.first.wait_for(timeout=60_000)
    boxes = []
    for k in range(frames.count()):
        img = page.frame_locator("iframe[title*='streamlit_image_coordinates']").nth(k).locator("img")
        img.wait_for(timeout=60_000)
        boxes.append(img.bounding_box())
    return max(boxes, key=lambda b: b["width"]), min(boxes, key=lambda b: b["width"])


def view_frame(page) -> tuple[int, int, int, int]:
    """(x0, x1, y0, y1) image pixels shown, read from the caption under the view."""
    text = page.get_by_text(re.compile(r"Zoom \d+ % · showing")).first.inner_text()
    return tuple(int(v) for v in re.search(r"showing x (\d+)–(\d+), y (\d+)–(\d+)", text).groups())


def click_cell(page, x_px: float, y_px: float) -> tuple[str, float]:
    """Click image pixel (x_px, y_px) on the view; return the page's new message and the seconds it took."""
    x0, x1, y0, y1 = view_frame(page)
    box, _ = view_image(page)
    pt = (box["x"] + (x_px - x0) / (x1 - x0) * box["width"], box["y"] + (y_px - y0) / (y1 - y0) * box["height"])
    before = page.evaluate(ALERTS)
    t0 = time.monotonic()
    page.mouse.click(*pt)
    page.wait_for_function(f"(b) => ({ALERTS[6:]}) !== b", arg=before, timeout=60_000)
    seconds = time.monotonic() - t0
    wait_idle(page)
    return page.evaluate(ALERTS).split("|")[0], seconds


def test_review_a_saved_analysis_and_find_it_reviewed_under_cases(browser, tmp_path, monkeypatch):
    data_dir = tmp_path / "data"
    monkeypatch.setenv("TILSCOPE_DATA_DIR", str(data_dir))  # this test reads the app's case store
    aid = _saved_analysis()
    with serve_app(data_dir) as app_url:
        page = open_page(browser, app_url, "Cases", viewport=(1500, 2000))
        try:
            _flow(page, tmp_path, app_url, aid)
        finally:
            shot(page, tmp_path, "review-last.png")
            page.close()


def _saved_analysis() -> int:
    """The CD3 mosaic analysed and saved by "Dr Analyst", as the Analyze page does."""
    from core.outputs.exports import save_result
    from core.pipeline import analyze, spatial_statistics
    from core.samples import get_sample

    image = get_sample("cd3-mosaic").load()
    assert image.shape == (H_PX, W_PX)
    result = analyze(image, "cd3-ihc", device="cpu")
    result.spatial = spatial_statistics(result)
    return save_result(result, "REV-1", _store(), created_by="Dr Analyst")


def _flow(page, tmp_path, app_url, aid):
    n_cells = len(_stored_cells(aid, "cells.csv"))
    page.get_by_role("heading", name=re.compile(rf"#{aid} · REV-1")).wait_for(timeout=60_000)
    wait_idle(page)
    page.get_by_text("Analysed by Dr Analyst").first.wait_for(timeout=30_000)
    page.get_by_role("button", name="Review this analysis").click()

    # The Review page opens that analysis; a name is asked once.
    page.get_by_text("Enter your name to continue").wait_for(timeout=60_000)
    wait_idle(page)
    page.get_by_role("textbox", name="Your name").fill("Dr Test Reviewer")
    page.get_by_role("button", name="Save name").click()
    page.get_by_text(f"Reviewing analysis #{aid} (case REV-1): no regions or corrections yet.").wait_for(timeout=60_000)
    wait_idle(page)
    assert "Restored" not in page.content()
    assert metric_value(page, "Cells") == f"{n_cells:,}"
    assert "Working as\n\nDr Test Reviewer" in page.get_by_test_id("stSidebar").inner_text()
    legend = page.get_by_test_id("stHtml").filter(has_text="Markers:").first.inner_text()
    assert "CD3" in legend and "added by hand" in legend and "deleted" in legend

    # 1. A tumour rectangle over the left half of the image (whole image at fit zoom).
    page.get_by_text("Draw regions", exact=True).click()
    wait_idle(page)
    page.get_by_text("Rectangle", exact=True).click()
    wait_idle(page)
    canvas = page.locator("canvas.upper-canvas").first
    canvas.wait_for(timeout=60_000)
    time.sleep(1.0)
    box = canvas.bounding_box()
    to_page = lambda x, y: (box["x"] + x / W_PX * box["width"], box["y"] + y / H_PX * box["height"])  # noqa: E731
    x0, y0, x1, y1 = 60.0, 60.0, 480.0, 640.0
    page.mouse.move(*to_page(x0, y0))
    page.mouse.down()
    for k in range(1, 11):
        page.mouse.move(*to_page(x0 + (x1 - x0) * k / 10, y0 + (y1 - y0) * k / 10))
    page.mouse.up()
    page.get_by_text("Added Tumour 1").first.wait_for(timeout=60_000)
    wait_idle(page)
    in_tumour = int(metric_value(page, "Immune cells in tumour regions"))
    assert in_tumour > 0

    store_cells = _stored_cells(aid, "cells.csv")
    inside = store_cells[(store_cells.x_px > x0 + 30) & (store_cells.x_px < x1 - 30)
                         & (store_cells.y_px > y0 + 30) & (store_cells.y_px < y1 - 30)]
    assert len(inside) >= 3

    # 2. Zoom in around a cell inside the tumour with the navigator, then delete it.
    page.get_by_text("Correct cells", exact=True).click()
    wait_idle(page)
    target = inside.iloc[0]
    _, nav = view_image(page)
    page.mouse.click(nav["x"] + target.x_px / W_PX * nav["width"], nav["y"] + target.y_px / H_PX * nav["height"])
    deadline = time.monotonic() + 60
    while view_frame(page) == (0, W_PX, 0, H_PX) and time.monotonic() < deadline:
        time.sleep(0.3)
    wait_idle(page)
    fx0, fx1, fy0, fy1 = view_frame(page)
    assert fx1 - fx0 < W_PX and fx0 <= target.x_px <= fx1 and fy0 <= target.y_px <= fy1
    page.get_by_text("Delete a cell", exact=True).click()
    wait_idle(page)
    message, seconds = click_cell(page, target.x_px + 1, target.y_px - 1)
    assert re.fullmatch(rf"Deleted cell {target.name} \(cd3-positive\), \d\.\d µm from the click\.", message), message
    print(f"delete applied and shown in {seconds:.2f} s")
    assert int(wait_metric_change(page, "Immune cells in tumour regions", str(in_tumour))) == in_tumour - 1
    assert metric_value(page, "Cells corrected by hand") == "1"
    shot(page, tmp_path, "review-1-zoomed-delete.png")

    # 3. A click far from any marker says so and changes nothing.
    fx0, fx1, fy0, fy1 = view_frame(page)
    grid = [(x, y) for x in range(max(fx0, int(x0)) + 10, min(fx1, int(x1)) - 10, 4)
            for y in range(max(fy0, int(y0)) + 10, min(fy1, int(y1)) - 10, 4)]  # in the view and the tumour
    far = max(grid, key=lambda p: float(np.min(np.hypot(store_cells.x_px - p[0], store_cells.y_px - p[1]))))
    message, _ = click_cell(page, *far)
    assert message.startswith("No cell within") and "nothing deleted" in message

    # 4. Add the missed CD3+ cell there; relabel another one as a tumour cell, saying why.
    page.get_by_text("Add a missed cell", exact=True).click()
    wait_idle(page)
    message, seconds = click_cell(page, *far)
    assert message.startswith("Added hand-added cell 1 (") and "-1" not in message, message
    print(f"add applied and shown in {seconds:.2f} s")
    assert int(wait_metric_change(page, "Immune cells in tumour regions", str(in_tumour - 1))) == in_tumour
    page.get_by_text("Relabel a cell", exact=True).click()
    wait_idle(page)
    page.get_by_test_id("stSelectbox").filter(has_text="Class").click()
    page.get_by_role("option", name="Tumour cell (marked by hand)").click()
    wait_idle(page)
    page.get_by_role("textbox", name="Why (optional)").fill("tumour nucleus, DAB from the stroma")
    page.get_by_role("textbox", name="Why (optional)").press("Enter")
    wait_idle(page)
    other = next(c for _, c in inside.iloc[1:].iterrows() if fx0 < c.x_px < fx1 and fy0 < c.y_px < fy1) \
        if any(fx0 < c.x_px < fx1 and fy0 < c.y_px < fy1 for _, c in inside.iloc[1:].iterrows()) else None
    if other is None:  # no second cell in this view: go back to the whole image
        page.locator(".st-key-zoom_fit button").first.click()
        wait_idle(page)
        other = inside.iloc[1]
    message, _ = click_cell(page, other.x_px, other.y_px)
    assert re.fullmatch(rf"Relabelled cell {other.name}: cd3-positive → tumour-cell\.", message), message
    assert metric_value(page, "Cells corrected by hand") == "3"
    shot(page, tmp_path, "review-2-corrected.png")

    # 5. Save, with why.
    page.get_by_role("textbox", name="Why (optional, recorded in the audit log)").fill("second read")
    page.get_by_role("textbox", name="Why (optional, recorded in the audit log)").press("Enter")
    wait_idle(page)
    page.get_by_role("button", name="Save review").click()
    page.get_by_text(re.compile(rf"Review saved in analysis #{aid} \(case REV-1\) by Dr Test Reviewer")).wait_for(
        timeout=240_000)
    reviewed_cells = metric_value(page, "Cells")
    assert "Traceback" not in page.content()

    # 6. Cases: the reviewed numbers, who did what, the overlay with the region.
    page.get_by_test_id("stSidebarNav").get_by_text("Cases", exact=True).click()
    page.get_by_role("heading", name=re.compile(rf"#{aid} · REV-1")).wait_for(timeout=60_000)
    wait_idle(page)
    assert metric_value(page, "Cells") == reviewed_cells and metric_value(page, "Manual corrections") == "3"
    page.get_by_text(re.compile("Analysed by Dr Analyst .* reviewed by Dr Test Reviewer")).first.wait_for(timeout=30_000)
    open_expander(page, "Before review: the analysis as detected")
    page.get_by_role("button", name="report.pdf (before review)").wait_for(timeout=30_000)
    open_expander(page, "Audit log: who did what, when and why")
    audit = page.get_by_test_id("stDataFrame").last
    audit.wait_for(timeout=30_000)
    overlay = _stored_file(aid, "overlay.png")
    from PIL import Image

    rgb = np.asarray(Image.open(io.BytesIO(overlay)).convert("RGB"))
    red = (rgb[..., 0] == 200) & (rgb[..., 1] == 0) & (rgb[..., 2] == 0)  # the tumour region's outline
    top_edge = red[int(y0) - 5: int(y0) + 6, int(x0) + 20: int(x1) - 20].any(axis=0)  # drawn by hand: ± a few px
    assert top_edge.mean() > 0.9
    log = _store().audit_log(aid)
    assert [(e["user"], e["action"]) for e in log][:1] == [("Dr Test Reviewer", "review saved")]
    assert log[0]["comment"] == "second read" and log[-1]["user"] == "Dr Analyst"
    assert {"region added", "delete", "add", "relabel"} <= {e["action"] for e in log}
    assert next(e for e in log if e["action"] == "relabel")["comment"] == "tumour nucleus, DAB from the stroma"
    assert _store().get_analysis(aid)["detected_summary"]["n_cells"] == n_cells
    assert len(_stored_cells(aid, "cells.csv")) == int(reviewed_cells.replace(",", ""))
    shot(page, tmp_path, "review-3-cases.png")

    # 7. A reload keeps the name (this browser's cookie), and the Review page reopens the analysis from its URL.
    page.goto(f"{app_url}/review?analysis={aid}", wait_until="networkidle")
    page.get_by_text(f"Opened analysis #{aid} (case REV-1) with its saved review by Dr Test Reviewer").wait_for(
        timeout=60_000)
    assert page.get_by_role("textbox", name="Your name").count() == 0


def _store():
    from core.outputs.store import CaseStore

    return CaseStore()


def _stored_file(aid: int, name: str) -> bytes:
    return _store().get_file(aid, name)


def _stored_cells(aid: int, name: str):
    import pandas as pd

    return pd.read_csv(io.BytesIO(_stored_file(aid, name)))
