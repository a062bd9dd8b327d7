"""Deep links on a fresh server go through ``app.py`` (not a page: no UI here).

Streamlit keeps a fallback for apps with a ``pages/`` folder: until the first run of
``app.py`` calls ``st.navigation``, a URL such as ``/review`` runs ``pages/review.py`` on
its own, with an automatic menu that lists every file of the folder and without the
router's page settings. :func:`through_app_router` ends that fallback and reruns, so the
same URL is served by ``app.py``'s navigation.
"""

from __future__ import annotations

import streamlit as st


def through_app_router() -> None:
    """Rerun through ``app.py`` when Streamlit ran this page by its ``pages/`` fallback.

    Call first thing in every page. A no-op once ``app.py`` has run in this server, and
    under ``streamlit.testing`` (a page run alone is its own main script there).
    """
    from streamlit.runtime.pages_manager import PagesManager  # Streamlit's own switch for the fallback

    if PagesManager.uses_pages_directory:
        PagesManager.uses_pages_directory = False
        st.rerun()
