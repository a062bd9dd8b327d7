"""Resources the pages share, cached once per server (not a page: no UI here)."""

from __future__ import annotations

import streamlit as st

from core.analysis import load_model
from core.store import CaseStore, database_url


@st.cache_resource(show_spinner="Loading the model…")
def cached_model(key: str, device: str):
    """One model per scenario key and device, shared by every session and page."""
    return load_model(key, device)


@st.cache_resource(show_spinner=False)
def _store(url: str) -> CaseStore:
    return CaseStore(url)


def case_store() -> CaseStore:
    """The case store of ``TILSCOPE_DATABASE_URL`` / ``TILSCOPE_DATA_DIR`` (one pool per URL)."""
    return _store(database_url())
