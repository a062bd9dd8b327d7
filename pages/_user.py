"""Who is working: sign-in, the signed-in user's box in the sidebar, and their rights (not a page: no UI of its own).

How users sign in depends on the server (:func:`core.auth.auth_mode`):

- **oidc**: ``.streamlit/secrets.toml`` has an ``[auth]`` section: "Sign in with ..." uses
  Streamlit's ``st.login`` (OpenID Connect); the user file gives the signed-in address its
  role and groups (not listed: a viewer of no group). Password users may sign in too.
- **users**: a user file exists (``TILSCOPE_USERS_FILE``, default ``<data folder>/users.json``):
  name and password in the sidebar. Failed sign-ins are rate-limited per name and per client
  address (:class:`core.auth.LoginLimiter`). A signed-in browser keeps a signed cookie
  (:data:`SESSION_COOKIE`, 12 hours) so a reload does not ask again; a changed password or
  role, or a removed user, ends it.
- **local**: no user file, no provider, and the server listens on this machine only
  (``server.address = "127.0.0.1"``, as ``make run`` starts it): one trusted user at the
  machine. The browser is asked once for a name (kept in a cookie, :data:`COOKIE`); it is
  recorded with every analysis, correction and note, not checked. Nothing is restricted.
- **refused**: no user file or provider but the server listens beyond this machine: every
  page says how to add users and shows nothing else.

Every page calls :func:`gate` first (it stops the page until someone is signed in), then
:func:`user_box` where it draws the sidebar. :func:`current_actor` is the signed-in
:class:`core.auth.User` (None in local mode: no restriction); the case store of
:func:`pages._resources.case_store` acts for them.
"""

from __future__ import annotations

import json
import logging
import urllib.parse
from typing import Any

import streamlit as st

from core import auth
from core.auth import User, UserFile
from core.errors import InputError, TILscopeError
from core.outputs.store import check_user
from pages._text import md_escape

log = logging.getLogger("tilscope.auth")

#: Cookie that keeps the typed name in this browser (local mode).
COOKIE = "tilscope_user"
#: Cookie that keeps a signed sign-in (users mode).
SESSION_COOKIE = "tilscope_session"
#: ``st.session_state`` key of the name; of the signed-in :class:`core.auth.User`.
KEY = "user_name"
AUTH_KEY = "auth_user"
_MAX_AGE_S = 365 * 24 * 3600


@st.cache_resource(show_spinner=False)
def _limiters() -> tuple[auth.LoginLimiter, auth.LoginLimiter]:
    """The server's failed-sign-in counters: per name (5 in 15 minutes, then 30 s doubling up to
    15 minutes) and per client address (20: behind a reverse proxy every user shares one)."""
    return auth.LoginLimiter(max_failures=5), auth.LoginLimiter(max_failures=20)


def _secrets_auth() -> Any:
    try:
        return st.secrets.get("auth") or None
    except Exception:  # no secrets.toml, or one that does not parse: no provider
        return None


def mode() -> str:
    """This server's sign-in mode: ``"oidc"``, ``"users"``, ``"local"`` or ``"refused"`` (module docstring).

    Raises
    ------
    core.auth.AuthError
        If the user file exists but cannot be read.
    """
    return auth.auth_mode(st.get_option("server.address"), _secrets_auth() is not None)


def _cookie(name: str) -> str | None:
    try:
        raw = st.context.cookies.get(name)
    except Exception:  # no browser behind this run (bare mode, some tests)
        return None
    return urllib.parse.unquote(raw) if isinstance(raw, str) and raw else None


def _set_cookie(name: str, value: str | None, max_age_s: int) -> None:
    """Set (or, with None, delete) a cookie of this site, sent with the next visit's connection."""
    encoded = json.dumps(urllib.parse.quote(value or "", safe=""))
    age = max_age_s if value is not None else 0
    st.html(f"<script>document.cookie = '{name}=' + {encoded} + '; path=/; max-age={age}; SameSite=Strict';</script>",
            unsafe_allow_javascript=True)


def _client() -> str:
    ip = getattr(st.context, "ip_address", None)
    return ip if isinstance(ip, str) and ip else "unknown"


# --------------------------------------------------------------------------- signed-in users


def _oidc_user() -> User | None:
    info = st.user
    if not info.get("is_logged_in"):
        return None
    ident = info.get("email") or info.get("preferred_username") or info.get("name") or info.get("sub")
    try:
        name = auth.check_name(str(ident).strip().lower() if info.get("email") else ident)
    except InputError:
        return None
    record = UserFile().get(name)
    return record.user() if record is not None else User(name, "viewer", ())


def _signed_in(m: str) -> User | None:
    """The signed-in user of this session: the password sign-in, its cookie, or the OIDC provider's."""
    user = st.session_state.get(AUTH_KEY)
    if isinstance(user, User):  # checked again at every run: a removed user or changed role takes effect at once
        if st.session_state.get("auth_via") == "oidc":
            fresh = _oidc_user()
        else:
            record = UserFile().get(user.name)
            fresh = record.user() if record is not None and record.password else None
        if fresh is None:
            st.session_state.pop(AUTH_KEY, None)
            return None
        if fresh != user:
            _remember_user(fresh, st.session_state.get("auth_via", "password"))
        return fresh
    if not st.session_state.get("signed_out"):
        token = _cookie(SESSION_COOKIE)
        if token:
            user = auth.verify_session_token(token, UserFile(), auth.session_secret())
            if user is not None:
                _remember_user(user, "password")
                return user
        if m == "oidc":
            user = _oidc_user()
            if user is not None:
                _remember_user(user, "oidc")
                return user
    return None


def _remember_user(user: User, via: str) -> None:
    st.session_state[AUTH_KEY] = user
    st.session_state["auth_via"] = via
    st.session_state[KEY] = user.name


def _password_form(users: UserFile) -> None:
    with st.form("sign_in", border=False):
        name = st.text_input("Name", max_chars=auth.NAME_MAX_CHARS, autocomplete="username")
        password = st.text_input("Password", type="password", max_chars=auth.MAX_PASSWORD_CHARS,
                                 autocomplete="current-password")
        if not st.form_submit_button("Sign in", type="primary"):
            return
    by_name, by_client = _limiters()
    name_key, client_key = [f"name:{' '.join(name.split()).casefold()}"], [f"client:{_client()}"]
    wait = max(by_name.wait_s(name_key), by_client.wait_s(client_key))
    if wait > 0:
        st.error(f"Too many failed sign-ins: wait {wait:.0f} s and try again.")
        return
    try:
        user = users.authenticate(name, password)
    except auth.AuthError as err:
        by_name.failed(name_key)
        by_client.failed(client_key)
        st.error(md_escape(str(err)[:1].upper() + str(err)[1:] + "."))
        return
    by_name.succeeded(name_key)
    st.session_state.pop("signed_out", None)
    _remember_user(user, "password")
    _set_cookie(SESSION_COOKIE, auth.session_token(users.get(user.name), auth.session_secret()), auth.SESSION_TTL_S)
    st.rerun()


def _providers(section: Any) -> list[str | None]:
    """``[None]`` for a single provider in ``[auth]``, else the names of its ``[auth.NAME]`` sections."""
    if section.get("client_id") or section.get("server_metadata_url"):
        return [None]
    return [k for k, v in section.items() if hasattr(v, "get")] or [None]


def _sign_in_box(m: str) -> None:
    users = UserFile()
    with st.sidebar:
        st.subheader("Sign in")
        if m == "oidc":
            for provider in _providers(_secrets_auth()):
                label = f"Sign in with {provider}" if provider else "Sign in with your organisation's account"
                if st.button(label, key=f"oidc-{provider}", type="primary"):
                    st.login(provider) if provider else st.login()
        if m == "users" or any(r.password for r in users.records()):
            if m == "oidc":
                st.caption("or with a TILscope name and password")
            _password_form(users)


# --------------------------------------------------------------------------- what pages call


def gate() -> None:
    """Serve the page only to a signed-in user (any user in local mode); call it first in every page.

    Refused mode: says how to add users and stops. Users and OIDC modes: until someone is
    signed in, shows the sign-in in the sidebar and stops the page.
    """
    try:
        m = mode()
    except TILscopeError as err:
        st.error(md_escape(err))
        st.stop()
    if m == "refused":
        st.error(md_escape(auth.refusal_message(st.get_option("server.address"))), icon="🔒")
        st.stop()
    if m == "local":
        return
    try:
        user = _signed_in(m)
    except TILscopeError as err:
        st.error(md_escape(err))
        st.stop()
    if user is None:
        _sign_in_box(m)
        st.info("Sign in (in the sidebar) to use TILscope. Ask your TILscope administrator for an account.")
        st.stop()


def current_actor() -> User | None:
    """The signed-in user, whose rights the case store applies; None in local mode (nothing restricted)."""
    user = st.session_state.get(AUTH_KEY)
    if isinstance(user, User):
        return user
    try:
        m = mode()
    except TILscopeError:
        m = "users"
    if m == "local":
        return None
    # Not signed in outside local mode: the page's gate() stops it before; refuse everything anyway.
    return User("nobody", "viewer", ())


def can_save() -> bool:
    """Whether this user may save analyses, reviews and notes."""
    return auth.can_write(current_actor())


def current_user() -> str | None:
    """The user's name: the signed-in user's; in local mode the name typed in this browser (None until given)."""
    actor = st.session_state.get(AUTH_KEY)
    if isinstance(actor, User):
        return actor.name
    try:
        if mode() != "local":
            return None
    except TILscopeError:
        return None
    name = st.session_state.get(KEY)
    if name:
        return str(name)
    raw = _cookie(COOKIE)
    if raw:
        try:
            name = check_user(raw)
        except InputError:
            return None
        st.session_state[KEY] = name
        return name
    return None


def _name_form(key: str, label: str = "Your name") -> str | None:
    """A small form asking for the name (local mode); returns it once submitted and valid."""
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
    """Show who is working in the sidebar; in local mode with a form to give or change the name.

    Returns
    -------
    str or None
        The name, or None while none has been given in this browser (local mode).
    """
    actor = st.session_state.get(AUTH_KEY)
    if isinstance(actor, User):
        with st.sidebar:
            st.caption("Signed in as")
            st.text(actor.name)
            st.caption(f"{actor.role}" + (f" · groups: {md_escape(', '.join(actor.groups))}" if actor.groups else ""))
            if st.button("Sign out", key="sign_out", type="tertiary"):
                for k in (AUTH_KEY, KEY, "auth_via"):
                    st.session_state.pop(k, None)
                st.session_state["signed_out"] = True
                _set_cookie(SESSION_COOKIE, None, 0)
                if st.user.get("is_logged_in"):
                    st.logout()
                st.rerun()
        return actor.name
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
        if name and _cookie(COOKIE) != name:
            _set_cookie(COOKIE, name, _MAX_AGE_S)
    return name


def require_user(why: str) -> str:
    """The user's name; without one (local mode), ask for it in the page and stop the run until it is given.

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
