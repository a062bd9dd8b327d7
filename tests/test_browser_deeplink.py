"""A bookmarked page URL on a freshly started server is served through app.py's navigation."""

import pytest

from tests.conftest import serve_app

pytestmark = pytest.mark.browser


def test_deep_link_on_a_fresh_server_gets_the_router_menu(browser, tmp_path):
    with serve_app(tmp_path) as url:  # a server of its own: no earlier visit to the root
        page = browser.new_page(viewport={"width": 1300, "height": 900})
        page.goto(f"{url}/review", wait_until="networkidle")
        page.get_by_role("heading", name="Review: regions & corrections").wait_for(timeout=60_000)
        nav = page.get_by_test_id("stSidebarNav")
        nav.get_by_text("Tumour board", exact=True).wait_for(timeout=30_000)
        entries = nav.inner_text()
        # Streamlit's pages/ fallback would list the files (app, resources, tumour board...)
        assert "Tumour board" in entries and "resources" not in entries and "router" not in entries
        assert page.title() == "TILscope"
        page.close()
