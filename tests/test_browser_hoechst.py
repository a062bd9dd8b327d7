"""hoechst-lymphocytes in headless Chromium: a 16-bit multi-channel OME-TIFF, the channel picker, a run with its
cells, densities and statistics, the plain statement that the model is research only, and HiPe saliency on demand."""

import json
import os
import re
import shutil
import subprocess

import numpy as np
import pytest

from tests.conftest import give_name, open_expander, open_page, wait_idle

pytestmark = pytest.mark.browser

CHANNELS = ("CD8", "Hoechst 33342", "CD3")


def _panel(path, side: int = 64, seed: int = 0) -> None:
    """A synthetic 16-bit 3-channel OME-TIFF at 1 µm/px with channel names: round bright nuclei (about 7 µm across,
    a lymphocyte's size) in the Hoechst plane on a dim background, noise in the two marker planes."""
    import tifffile

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:side, :side]
    hoechst = rng.normal(400, 60, (side, side))
    for _ in range(side * side // 300):
        cx, cy = rng.uniform(4, side - 4, 2)
        radius = rng.uniform(3.0, 4.0)
        hoechst += 7000 * np.clip(radius + 0.5 - np.hypot(xx - cx, yy - cy), 0, 1) * rng.uniform(0.8, 1.2)
    markers = rng.normal(500, 80, (2, side, side))
    data = np.clip(np.stack([markers[0], hoechst, markers[1]]), 0, 65535).astype(np.uint16)
    tifffile.imwrite(path, data, ome=True, metadata={"axes": "CYX", "Channel": {"Name": list(CHANNELS)},
                                                  "PhysicalSizeX": 1.0, "PhysicalSizeY": 1.0})


def shot(page, tmp_path, name: str) -> None:
    """Full-page screenshot; copied to $TILSCOPE_SCREENSHOT_DIR when set, to look at."""
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    if os.environ.get("TILSCOPE_SCREENSHOT_DIR"):
        shutil.copy(path, os.path.join(os.environ["TILSCOPE_SCREENSHOT_DIR"], path.name))


def _text(page) -> str:
    """The page's text without the invisible word joiners of escaped text (pages/_text.md_escape)."""
    return page.inner_text("body").replace("\u2060", "")


def _download(page, name: str, tmp_path) -> bytes:
    with page.expect_download(timeout=120_000) as info:
        page.get_by_test_id("stDownloadButton").get_by_role("button", name=name, exact=True).click()
    path = tmp_path / f"download-{name}"
    info.value.save_as(str(path))
    return path.read_bytes()


def test_hoechst_panel_picker_run_research_only_and_saliency(app_url, browser, tmp_path):
    from core.io import load_image

    panel = tmp_path / "panel.ome.tif"
    _panel(panel)
    assert load_image(panel).channel_names == CHANNELS  # the file carries its channel names

    page = open_page(browser, app_url, "Analyze", viewport=(1280, 1800))
    page.get_by_text("What is the slide stained with?").wait_for(timeout=60_000)
    give_name(page, "Dr Hoechst")
    # Where the scenario is chosen: its title and a plain statement say it is research only.
    page.get_by_test_id("stSelectbox").first.click()
    page.get_by_role("option", name=re.compile(r"Hoechst.*\(research only\)")).click()
    wait_idle(page)
    chosen = page.locator("[data-testid=stAlert]").filter(has_text="Research only: not for counting on patient cases")
    chosen.wait_for(timeout=60_000)
    assert "NOT better than the simple baselines" in chosen.inner_text() and "CD3 F1 0.20" in chosen.inner_text()

    # A 3-channel 16-bit OME-TIFF: the picker lists the file's channel names; pick the Hoechst one.
    page.locator("input[type=file]").set_input_files(str(panel))
    picker = page.get_by_test_id("stSelectbox").filter(has_text="Channel of the file that holds the Hoechst stain")
    picker.wait_for(timeout=120_000)
    wait_idle(page)
    picker.click()
    options = page.get_by_role("option").all_inner_texts()
    assert options == [f"{i}: {n}" for i, n in enumerate(CHANNELS)], options
    page.get_by_role("option", name="1: Hoechst 33342").click()
    wait_idle(page)
    page.get_by_text("panel.ome.tif: 64 x 64 px").wait_for(timeout=120_000)
    shot(page, tmp_path, "hoechst-picker")
    page.get_by_role("textbox", name="Case label").fill("HOECHST-1")
    page.get_by_role("textbox", name="Case label").press("Enter")
    wait_idle(page)
    page.get_by_role("button", name="Run", exact=True).click()
    page.get_by_text("Saved as analysis").wait_for(timeout=600_000)
    wait_idle(page)

    # The result: cells, densities, statistics, and the research-only statement on it.
    page.get_by_test_id("stMetricLabel").get_by_text("Density (cells/mm² of tissue)").wait_for(timeout=120_000)
    labels = page.get_by_test_id("stMetricLabel").all_inner_texts()
    assert "Cells" in labels and "Density (cells/mm² of tissue)" in labels, labels
    n_cells = int(page.get_by_test_id("stMetric").filter(has_text="Cells").first
                  .get_by_test_id("stMetricValue").inner_text().replace(",", ""))
    assert n_cells > 0
    results_alert = page.locator("[data-testid=stAlert]").filter(has_text="did not pass its validation")
    assert results_alert.count() >= 1 and "not counts for a patient case" in results_alert.last.inner_text()
    assert page.get_by_text("Spatial statistics").first.is_visible()
    assert "channels picked: Hoechst 33342 as Hoechst" in _text(page)
    summary = json.loads(_download(page, "summary.json", tmp_path))
    assert summary["scenario"] == "hoechst-lymphocytes" and summary["n_cells"] == n_cells
    assert set(summary["counts"]) == {"cd3", "cd8", "cd20"} and summary["density_per_mm2"]["cd3"] > 0
    distances = summary["spatial"]["distances"]  # immune-to-tumour proximity: reported, with why it is not available
    assert distances["available"] is False and "tumour" in distances["reason"]
    assert any("NOT better than the simple baselines" in w for w in summary["warnings"])
    shot(page, tmp_path, "hoechst-result")

    # HiPe saliency on demand, one class at the smallest budget (each perturbed image is a network pass).
    open_expander(page, "Saliency (HiPe): which parts of the image")
    page.get_by_role("combobox", name="Classes", exact=True).click()
    for _ in range(2):  # leave CD3 only
        page.keyboard.press("Backspace")
        wait_idle(page)
    page.keyboard.press("Escape")
    page.get_by_test_id("stSlider").filter(has_text="Perturbed images per class").get_by_role("slider").focus()
    page.keyboard.press("Home")  # 81: HiPe's first level
    wait_idle(page)
    assert "81" in page.get_by_test_id("stSlider").filter(has_text="Perturbed images per class").inner_text()
    page.get_by_role("button", name="Compute saliency maps").click()
    page.get_by_text(re.compile(r"Perturbed image \d+ of at most \d+")).first.wait_for(timeout=300_000)
    shot(page, tmp_path, "hoechst-saliency-progress")
    page.get_by_text(re.compile(r"Saliency \(HiPe\): CD3\+ T cell")).first.wait_for(timeout=900_000)
    wait_idle(page)
    body = _text(page)
    assert "At most 81 perturbed images per class" in body and "the whole image (64 x 64 px" in body
    assert "Saliency (HiPe): CD8+ T cell" not in body  # only the class asked for
    shot(page, tmp_path, "hoechst-saliency")
    page.get_by_text("report.pdf below includes the saliency maps").wait_for(timeout=120_000)
    pdf = tmp_path / "report.pdf"
    pdf.write_bytes(_download(page, "report.pdf", tmp_path))
    text = " ".join(subprocess.run(["pdftotext", str(pdf), "-"], capture_output=True, text=True, check=True)
                    .stdout.split())
    assert "Saliency (HiPe)" in text and "CD3+ T cell" in text and "Research only" in text
    content = page.content()
    assert "Traceback" not in content and "Error:" not in content
