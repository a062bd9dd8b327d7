"""Who is working: a user name asked once per browser and kept (not a page: no UI of its own).

Until the login of the security issue lands, each browser is asked once for a name. It is
kept in the session (``st.session_state["user_name"]``) and in a cookie of this site
(:data:`COOKIE`, one year, ``SameSite=Strict``), so a reload or a new tab knows it without
asking again. Never a random id: a page that records who did something asks for the name
(:func:`require_user`) before it lets anyone edit.

Call :func:`user_box` in every page (it shows the name in the sidebar with a way to
change it, and keeps it in the browser); read the name with :func:`current_user`. A page that
needs the name calls :func:`require_user` first (it asks in the page, not in the sidebar).
"""

from __future__ import annotations

import json
import urllib.parse

import streamlit as st

from core.errors import InputError
from core.outputs.store import check_user
from pages._text import md_escape

#: Cookie that keeps the name in this browser.
COOKIE = "tilscope_user"
#: ``st.session_state`` key of the name.
KEY = "user_name"
_MAX_AGE_S = 365 * 24 * 3600


def current_user() -> str | None:
    """The user's name: from this session, else from this browser's cookie; None until one is given."""
    name = st.session_state.get(KEY)
    if name:
        return str(name)
    try:
        raw = st.context.cookies.get(COOKIE)
    except Exception:  # no browser behind this run (bare mode, some tests)
        raw = None
    if raw:
        try:
            name = check_user(urllib.parse.unquote(raw))
        except InputError:
            return None
        st.session_state[KEY] = name
        return name
    return None


def _remember(name: str) -> None:
    """Keep the name in this browser (a cookie, sent with the next visit's connection)."""
    value = json.dumps(urllib.parse.quote(name, safe=""))
    st.html(
        f"<script>document.cookie = '{COOKIE}=' + {value} + '; path=/; max-age={_MAX_AGE_S}; SameSite=Strict';</script>",
        unsafe_allow_javascript=True,
    )


def _stored_cookie() -> str | None:
    try:
        raw = st.context.cookies.get(COOKIE)
    except Exception:
        return None
    return urllib.parse.unquote(raw) if raw else None


def _name_form(key: str, label: str = "Your name") -> str | None:
    """A small form asking for the name; returns it once submitted and valid."""
    with st.form(key, border=False):
        typed = st.text_input(label, value=current_user() or "", max_chars=80, placeholder="e.g. Dr Ana Silva",
                              help="Recorded with every analysis, correction and note you make. Asked once in this "
                                   "browser (kept in a cookie of this site).")
        if not st.form_submit_button("Save name"):
            return None
    try:
        name = check_user(typed)
    except InputError as err:
        st.error(md_escape(str(err)[:1].upper() + str(err)[1:] + "."))
        return None
    st.session_state[KEY] = name
    st.session_state["user_editing"] = False
    return name


def user_box() -> str | None:
    """Show who is working in the sidebar, with a form to give or change the name.

    Returns
    -------
    str or None
        The name, or None while none has been given in this browser.
    """
    name = current_user()
    with st.sidebar:
        if name and not st.session_state.get("user_editing"):
            st.caption("Working as")
            st.text(name)  # a typed name is shown as text, never as Markdown
            if st.button("Change name", key="user_change", type="tertiary"):
                st.session_state["user_editing"] = True
                st.rerun()
        else:
            name = _name_form("user_form_sidebar") or name
        if name and _stored_cookie() != name:
            _remember(name)
    return name


def require_user(why: str) -> str:
    """The user's name; without one, ask for it in the page and stop the run until it is given.

    Parameters
    ----------
    why : str
        What the name will be recorded with, e.g. "every correction and the saved review".
    """
    name = current_user()
    if name:
        return name
    st.info(f"Enter your name to continue: it is recorded with {why}. It is asked once in this browser.")
    with st.columns([2, 3])[0]:
        given = _name_form("user_form_page")
    if given:
        st.rerun()  # the page runs again with the name; user_box() keeps it in the browser
    st.stop()
    raise AssertionError("unreachable")  # st.stop() raises
