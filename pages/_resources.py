"""Resources the pages share, cached once per server (not a page: no UI here)."""

from __future__ import annotations

import logging

import streamlit as st

from core.pipeline import load_model
from core.errors import TILscopeError
from core.outputs.store import CaseStore, database_url
from pages._text import md_escape

log = logging.getLogger("tilscope.pages")


@st.cache_resource(show_spinner="Loading the model…")
def cached_model(key: str, device: str, precision: str = "float32"):
    """One model per scenario key, device and numeric precision, shared by every session and page."""
    return load_model(key, device, precision)


@st.cache_resource(show_spinner=False)
def _store(url: str) -> CaseStore:
    return CaseStore(url)


def case_store() -> CaseStore:
    """The case store of ``TILSCOPE_DATABASE_URL`` / ``TILSCOPE_DATA_DIR`` (one pool per URL)."""
    return _store(database_url())


def list_analyses_or_stop(search: str | None = None) -> list[dict]:
    """The saved analyses (newest first); on a database error, show it and stop the page."""
    try:
        return case_store().list_analyses(search=search or None)
    except TILscopeError as err:
        st.error(md_escape(err))
    except Exception:  # the browser gets a message, the log gets the traceback
        log.exception("listing analyses failed")
        st.error("The case database could not be read; the details are in the server log.")
    st.stop()
