"""Hostile text in headless Debian Chromium: a case label, image name and user name holding
Markdown, HTML and links, and region names holding HTML (saved with the analysis and imported
from GeoJSON), are shown as the text they are on the Cases and Review pages: no image fetched,
no link drawn, no request to the hosts they name.

The analysis is saved beforehand through the pipeline in this process, as the Analyze page
saves a run, so the test is about what the pages draw."""

from __future__ import annotations

import json
import re
from dataclasses import replace

import numpy as np
import pytest

from tests.conftest import open_page, serve_app, wait_idle

pytestmark = pytest.mark.browser

HOSTS = ("127.0.0.1:9", "evil.example")
LABEL = "**bold** <img src=http://127.0.0.1:9/x.png> [Re-login here](http://evil.example)"
IMAGE_NAME = "![scan](http://127.0.0.1:9/name.png) _field_.png"
USER = "Dr <b>Mallory</b> [x](http://evil.example)"
SAVED_REGION = "<img src=http://127.0.0.1:9/r.png> <b>Tumour</b> [nest](http://evil.example)"
IMPORTED_REGION = "<img src=\"http://127.0.0.1:9/q.png\" onerror=alert(1)> **stroma**"
#: Elements that a rendered injection would create: an image or a link to one of HOSTS.
INJECTED = """(hosts) => [...document.querySelectorAll('img[src], a[href], [style*="url("]')]
    .map(e => e.getAttribute('src') || e.getAttribute('href') || e.getAttribute('style'))
    .filter(v => hosts.some(h => v.includes(h)))"""


def visible_text(page) -> str:
    """The page's text as a reader sees it (word joiners, invisible, left out)."""
    return page.locator("body").inner_text().replace("\u2060", "")


def test_hostile_text_is_shown_as_text_on_cases_and_review(browser, tmp_path, monkeypatch):
    data_dir = tmp_path / "data"
    monkeypatch.setenv("TILSCOPE_DATA_DIR", str(data_dir))  # this test writes the app's case store
    aid = _saved_analysis()
    geojson = tmp_path / "regions <b>x<b> [y](z).geojson"
    geojson.write_text(json.dumps(_imported_regions()))
    with serve_app(data_dir) as app_url:
        page = open_page(browser, app_url, "Cases", viewport=(1500, 2000))
        requests: list[str] = []
        page.on("request", lambda r: requests.append(r.url))
        try:
            _flow(page, aid, geojson)
        finally:
            page.close()
    assert not [u for u in requests if any(h in u for h in HOSTS)], "a hostile URL was fetched"


def _saved_analysis() -> int:
    from core.outputs.exports import save_result
    from core.outputs.store import CaseStore
    from core.spatial.regions import Region
    from tests.test_review import small_result

    result = small_result()
    result.image = replace(result.image, name=IMAGE_NAME)
    region = Region(SAVED_REGION, "tumour", np.array([[10.0, 10.0], [70.0, 10.0], [70.0, 45.0], [10.0, 45.0]]))
    store = CaseStore()
    try:
        aid = save_result(result, LABEL, store, regions=[region], created_by=USER)
        assert store.get_analysis(aid)["case_label"] == LABEL  # the store keeps every character
        return aid
    finally:
        store.close()


def _imported_regions() -> dict:
    from core.spatial.regions import Region, regions_to_geojson

    square = np.array([[80.0, 50.0], [140.0, 50.0], [140.0, 95.0], [80.0, 95.0]])
    return regions_to_geojson([Region(IMPORTED_REGION, "stroma", square)], 0.5)


def _flow(page, aid: int, geojson) -> None:
    # Cases: the label, image name and user name are text in the heading and the byline.
    heading = page.get_by_role("heading", name=re.compile(rf"#{aid} · "))
    heading.wait_for(timeout=60_000)
    wait_idle(page)
    assert heading.inner_text().replace("\u2060", "") == f"#{aid} · {LABEL} · {IMAGE_NAME} · field"
    text = visible_text(page)
    assert f"Analysed by {USER}" in text
    assert page.get_by_role("link", name="Re-login here").count() == 0
    assert page.evaluate(INJECTED, list(HOSTS)) == []
    assert page.locator("strong", has_text="bold").count() == 0 and page.locator("b", has_text="Mallory").count() == 0

    # Review: the greeting, the caption, the region saved with the analysis and one imported from GeoJSON.
    page.get_by_role("button", name="Review this analysis").click()
    page.get_by_text("Enter your name to continue").wait_for(timeout=60_000)
    wait_idle(page)
    page.get_by_role("textbox", name="Your name").fill("Dr Test")
    page.get_by_role("button", name="Save name").click()
    page.get_by_text(re.compile(rf"Opened analysis #{aid} \(case ")).wait_for(timeout=60_000)
    wait_idle(page)
    text = visible_text(page)
    assert f"Opened analysis #{aid} (case {LABEL}) with its saved review" in text
    assert f"#{aid} · {LABEL} · {IMAGE_NAME} · " in text
    page.get_by_text("Draw regions", exact=True).click()
    wait_idle(page)
    page.get_by_text("Import regions (GeoJSON from TILscope or QuPath)").wait_for(timeout=60_000)
    assert f"{SAVED_REGION} · " in visible_text(page)
    page.locator("input[type=file]").last.set_input_files(str(geojson))
    page.get_by_text(re.compile(r"Imported 1 region")).first.wait_for(timeout=60_000)
    wait_idle(page)
    text = visible_text(page)
    assert f"{geojson.name}: Imported 1 region(s)" in text
    assert f"{IMPORTED_REGION} · " in text and f"{SAVED_REGION} · " in text
    assert page.get_by_role("link", name="Re-login here").count() == 0 and page.get_by_role("link", name="nest").count() == 0
    assert page.evaluate(INJECTED, list(HOSTS)) == []
    # The names are in the region list's own bold, with their asterisks and tags as text: no element of their own.
    assert page.locator("b", has_text=re.compile(r"^Tumour$")).count() == 0
    assert page.locator("strong", has_text=re.compile(r"^stroma$")).count() == 0
    assert "Traceback" not in page.content()
