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
def job_runner() -> bool:
    """Remove the job folders left over (:func:`core.jobs.cleanup`), once per server.

    Old finished jobs and those whose worker is gone (a restart, a kill) are removed; a job
    still running in another server process is left alone. The worker helper itself starts
    with the first job (its imports take seconds of CPU, which a page drawn at the same time
    would wait for).
    """
    from core import jobs

    try:
        removed = jobs.cleanup()
        if removed:
            log.info("removed %d old or orphaned job folders", len(removed))
    except (OSError, TILscopeError) as err:  # the page's own job will say what is wrong
        log.warning("old job folders could not be removed: %s", err)
    return True


@st.cache_resource(show_spinner=False)
def _store(url: str) -> CaseStore:
    return CaseStore(url)


def case_store() -> CaseStore:
    """The case store of ``TILSCOPE_DATABASE_URL`` / ``TILSCOPE_DATA_DIR`` (one pool per URL), acting for the
    signed-in user (:func:`pages._user.current_actor`): it shows and lets them change only what their role and
    groups allow."""
    from pages._user import current_actor

    return _store(database_url()).for_actor(current_actor())


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
