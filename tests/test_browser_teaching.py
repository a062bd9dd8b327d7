"""The Teaching page in headless Debian Chromium: a synthetic multiplex IHC section, its true phenotypes beside the
model's calls, and each chromogen true and unmixed (issue 20: the scenario offered for teaching)."""

import os
import shutil

import pytest

from tests.conftest import give_name, open_page, wait_idle

pytestmark = pytest.mark.browser


def test_teaching_shows_a_synthetic_mihc_section_with_true_and_called_phenotypes(app_url, browser, tmp_path):
    page = open_page(browser, app_url, "Teaching", viewport=(1400, 2400))
    page.get_by_text("Teaching: synthetic sections").wait_for(timeout=60_000)
    give_name(page)
    option = page.get_by_role("option").filter(has_text="T-cell phenotypes in multiplex IHC")
    for _ in range(10):
        page.get_by_test_id("stSelectbox").first.click()
        try:
            option.wait_for(timeout=3_000)
            break
        except Exception:  # noqa: BLE001 - the list was not open yet: close it and wait for the rerun
            page.keyboard.press("Escape")
            wait_idle(page)
    option.click()
    wait_idle(page)
    page.get_by_text("Trained on synthetic images only; not validated on real mIHC.").wait_for(timeout=120_000)
    page.get_by_role("button", name="Generate and run").click()
    page.get_by_text("Ground truth: each T cell ringed in its phenotype's colour").wait_for(timeout=300_000)
    wait_idle(page)
    for label in ("Detection F1", "Weighted phenotype F1", "T cells (truth)", "T cells (model)"):
        page.get_by_test_id("stMetric").filter(has_text=label).first.wait_for(timeout=60_000)
    chromogens = page.get_by_test_id("stExpander").filter(has_text="Chromogens: true and unmixed")
    chromogens.click()
    chromogens.get_by_text("PD1 (teal chromogen, membrane): unmixed").wait_for(timeout=60_000)
    assert chromogens.get_by_test_id("stImage").count() == 10  # five chromogens, true and unmixed
    assert "Traceback" not in page.inner_text("body")
    page.screenshot(path=str(tmp_path / "teaching.png"), full_page=True)
    shutil.copy(tmp_path / "teaching.png", os.environ.get("TILSCOPE_SCREENSHOT", tmp_path / "teaching-copy.png"))
