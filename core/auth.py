"""Who may use TILscope and what each user may do: users, roles, groups, passwords, sign-in modes.

No Streamlit here: the pages (``pages/_user.py``) draw the sign-in and call these functions;
the case store (:mod:`core.outputs.store`) applies :func:`can_see`, :func:`can_write` and
:func:`can_delete`; ``python -m core users ...`` (:func:`users_main`) keeps the user file.

Sign-in modes (:func:`auth_mode`), decided when a page runs:

``"oidc"``
    An OpenID Connect provider is configured in ``.streamlit/secrets.toml`` (``[auth]``):
    users sign in with it (Streamlit's ``st.login``); the user file, when there is one,
    gives each signed-in e-mail address its role and groups (an address not in it is a
    ``viewer`` of no group). Password users of the user file may sign in as well.
``"users"``
    A user file exists (:func:`users_file`): users sign in with name and password.
``"local"``
    Neither, and the server listens on this machine only (``server.address`` a loopback
    address): one trusted user at the machine types a name, which is recorded but not
    checked (TILscope as before logins). Everything is allowed.
``"refused"``
    Neither, and the server listens beyond this machine: every page refuses to serve and
    says how to add users (:func:`refusal_message`).

Roles, in increasing order of rights: ``viewer`` (sees the cases shared with them, saves
nothing), ``analyst`` (runs, saves and reviews analyses; deletes what they own) and
``admin`` (sees and deletes everything). A case belongs to its owner and, optionally, to
one group; a user sees the cases they own, those of their groups, and (admin) all.
"""

from __future__ import annotations

import base64
import contextlib
import getpass
import hashlib
import hmac
import ipaddress
import json
import os
import secrets
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

from core.errors import InputError, TILscopeError

__all__ = ["ROLES", "User", "UserRecord", "UserFile", "AuthError", "AccessError", "LoginLimiter", "users_file",
           "auth_mode", "is_loopback", "refusal_message", "can_see", "can_write", "can_delete", "check_write",
           "hash_password", "verify_password", "session_token", "verify_session_token", "session_secret",
           "users_main", "USERS_FILE_ENV", "MIN_PASSWORD_CHARS"]

#: Roles, from fewest to most rights.
ROLES = ("viewer", "analyst", "admin")
#: Environment variable naming the user file (default ``<data folder>/users.json``).
USERS_FILE_ENV = "TILSCOPE_USERS_FILE"
#: Default user file name in the data folder.
USERS_FILENAME = "users.json"
#: Shortest password accepted; longest.
MIN_PASSWORD_CHARS = 10
MAX_PASSWORD_CHARS = 1024
#: Longest user or group name, in characters (the case store's limit for user names).
NAME_MAX_CHARS = 80
#: How long a sign-in lasts in a browser (its signed cookie), in seconds.
SESSION_TTL_S = 12 * 3600
#: scrypt cost (RFC 7914): N = 2**15, r = 8, p = 1 uses 32 MiB and about 0.1 s per check.
_SCRYPT_LOG2_N, _SCRYPT_R, _SCRYPT_P = 15, 8, 1
_FILE_FORMAT = "tilscope-users"


class AuthError(TILscopeError):
    """A sign-in failed (wrong name or password, too many attempts) or the user file is unusable."""


class AccessError(TILscopeError):
    """The signed-in user's role or groups do not allow what was asked."""


# --------------------------------------------------------------------------- users


@dataclass(frozen=True)
class User:
    """The acting user: who is signed in, with their role and groups.

    Attributes
    ----------
    name : str
        The name recorded with everything they do (a user file name, or an e-mail address
        signed in through the OIDC provider).
    role : str
        One of :data:`ROLES`.
    groups : tuple of str
        Groups whose cases they see (and may save into).
    """

    name: str
    role: str
    groups: tuple[str, ...] = ()

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    @property
    def can_save(self) -> bool:
        """Whether they may save analyses, reviews and notes (analyst or admin)."""
        return self.role in ("analyst", "admin")


@dataclass
class UserRecord:
    """One entry of the user file: name, role, groups and scrypt password hash (None: signs in through OIDC only)."""

    name: str
    role: str
    groups: list[str] = field(default_factory=list)
    password: str | None = None
    created_at: str | None = None

    def user(self) -> User:
        return User(self.name, self.role, tuple(self.groups))


def check_name(name: Any, what: str = "user name") -> str:
    """A user or group name as kept: spaces collapsed, 1 to :data:`NAME_MAX_CHARS` printable characters.

    Raises
    ------
    InputError
        If it is blank, too long or holds control characters.
    """
    text = " ".join(str(name or "").split())
    if not text:
        raise InputError(f"the {what} is empty: give a name, e.g. 'ana.silva' or 'Dr Ana Silva'")
    if len(text) > NAME_MAX_CHARS:
        raise InputError(f"the {what} has {len(text)} characters; use at most {NAME_MAX_CHARS}")
    if not text.isprintable():
        raise InputError(f"the {what} holds control characters: use letters, digits, spaces and punctuation")
    return text


def check_role(role: Any) -> str:
    """``role`` if it is one of :data:`ROLES`.

    Raises
    ------
    InputError
        Naming the roles.
    """
    if role not in ROLES:
        raise InputError(f"role {role!r} is not one of {', '.join(ROLES)}")
    return str(role)


# --------------------------------------------------------------------------- passwords


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _scrypt(password: str, salt: bytes, log2_n: int, r: int, p: int) -> bytes:
    n = 1 << log2_n
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p, maxmem=256 * n * r * p, dklen=32)


def check_password(password: Any) -> str:
    """A new password: :data:`MIN_PASSWORD_CHARS` to :data:`MAX_PASSWORD_CHARS` characters.

    Raises
    ------
    InputError
        If it is shorter or longer.
    """
    text = str(password or "")
    if len(text) < MIN_PASSWORD_CHARS:
        raise InputError(f"the password has {len(text)} characters; use at least {MIN_PASSWORD_CHARS} "
                         "(a few words make a good one)")
    if len(text) > MAX_PASSWORD_CHARS:
        raise InputError(f"the password has {len(text)} characters; use at most {MAX_PASSWORD_CHARS}")
    return text


def hash_password(password: str) -> str:
    """The scrypt hash of ``password`` (standard library, RFC 7914), with a random 16-byte salt.

    Returns
    -------
    str
        ``"scrypt$15$8$1$<salt>$<hash>"`` (log2 N, r, p, base64url salt and 32-byte key).

    Raises
    ------
    InputError
        If the password is too short or too long (:func:`check_password`).
    """
    password = check_password(password)
    salt = secrets.token_bytes(16)
    key = _scrypt(password, salt, _SCRYPT_LOG2_N, _SCRYPT_R, _SCRYPT_P)
    return f"scrypt${_SCRYPT_LOG2_N}${_SCRYPT_R}${_SCRYPT_P}${_b64(salt)}${_b64(key)}"


#: Checked against when the name is unknown, so a wrong name takes as long as a wrong password.
_DUMMY_HASH = f"scrypt${_SCRYPT_LOG2_N}${_SCRYPT_R}${_SCRYPT_P}${_b64(b'tilscope-no-user')}${_b64(bytes(32))}"


def verify_password(password: str, stored: str | None) -> bool:
    """Whether ``password`` matches the stored hash (constant-time comparison); False for a malformed or absent hash."""
    try:
        scheme, log2_n, r, p, salt, key = str(stored or _DUMMY_HASH).split("$")
        if scheme != "scrypt" or not (10 <= int(log2_n) <= 20 and 1 <= int(r) <= 32 and 1 <= int(p) <= 16):
            return False
        got = _scrypt(str(password or "")[:MAX_PASSWORD_CHARS], _unb64(salt), int(log2_n), int(r), int(p))
        return hmac.compare_digest(got, _unb64(key)) and stored is not None
    except (ValueError, TypeError):
        return False


# --------------------------------------------------------------------------- the user file


def users_file() -> Path:
    """The user file: ``TILSCOPE_USERS_FILE``, else ``users.json`` in the data folder (``TILSCOPE_DATA_DIR``)."""
    value = os.environ.get(USERS_FILE_ENV)
    if value:
        return Path(value).expanduser()
    from core.outputs.store import data_dir  # not at import: the store imports this module

    return data_dir() / USERS_FILENAME


class UserFile:
    """The users of this TILscope: a JSON file, readable by its owner only (mode 0600).

    ``{"format": "tilscope-users", "version": 1, "users": [{"name", "role", "groups",
    "password" (scrypt hash or null), "created_at"}]}``. Names are unique regardless of
    case. Every change is a read-modify-write under a lock file, written to a temporary
    file and moved into place, so the file is always whole.

    Parameters
    ----------
    path : path, optional
        Default :func:`users_file`.
    """

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else users_file()

    def exists(self) -> bool:
        """Whether the file exists (it may hold no users: then nobody can sign in with a password)."""
        return self.path.is_file()

    def records(self) -> list[UserRecord]:
        """Every user, in the file's order (an absent file: none).

        Raises
        ------
        AuthError
            If the file cannot be read or is not a TILscope user file.
        """
        try:
            raw = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        except OSError as err:
            raise AuthError(f"the user file {self.path} cannot be read ({err.strerror or err}); check its permissions") from err
        try:
            data = json.loads(raw)
            if not isinstance(data, dict) or data.get("format") != _FILE_FORMAT:
                raise ValueError("not a TILscope user file")
            out = []
            for item in data.get("users") or []:
                out.append(UserRecord(check_name(item["name"]), check_role(item["role"]),
                                      [check_name(g, "group name") for g in item.get("groups") or []],
                                      item.get("password"), item.get("created_at")))
            return out
        except (ValueError, KeyError, TypeError, InputError) as err:
            raise AuthError(f"the user file {self.path} is damaged ({err}); restore it from a backup or "
                            "move it away and add the users again (python -m core users add)") from err

    def get(self, name: str) -> UserRecord | None:
        """The user called ``name`` (case-insensitive), or None."""
        key = " ".join(str(name or "").split()).casefold()
        return next((r for r in self.records() if r.name.casefold() == key), None)

    def add(self, name: str, role: str, groups: Iterable[str] = (), password: str | None = None) -> UserRecord:
        """Add a user; ``password`` None makes a user who signs in through the OIDC provider only.

        Raises
        ------
        InputError
            If the name, role, a group or the password is not acceptable, or the name is taken.
        AuthError
            If the file cannot be read or written.
        """
        record = UserRecord(check_name(name), check_role(role), sorted({check_name(g, "group name") for g in groups}),
                            None if password is None else hash_password(password),
                            datetime.now(timezone.utc).isoformat(timespec="seconds"))
        with self._locked():
            records = self.records()
            if any(r.name.casefold() == record.name.casefold() for r in records):
                raise InputError(f"a user called {record.name!r} exists already; remove it first "
                                 "(python -m core users remove) or choose another name")
            self._write([*records, record])
        return record

    def remove(self, name: str) -> None:
        """Remove a user (their cases stay, owned by the same name).

        Raises
        ------
        InputError
            If there is no such user.
        """
        with self._locked():
            records = self.records()
            kept = [r for r in records if r.name.casefold() != " ".join(str(name).split()).casefold()]
            if len(kept) == len(records):
                raise InputError(f"there is no user called {name!r}; see python -m core users list")
            self._write(kept)

    def set_password(self, name: str, password: str | None) -> None:
        """Set (or, with None, remove) a user's password; their signed-in browsers must sign in again.

        Raises
        ------
        InputError
            If there is no such user or the password is not acceptable.
        """
        hashed = None if password is None else hash_password(password)
        with self._locked():
            records = self.records()
            record = next((r for r in records if r.name.casefold() == " ".join(str(name).split()).casefold()), None)
            if record is None:
                raise InputError(f"there is no user called {name!r}; see python -m core users list")
            record.password = hashed
            self._write(records)

    def authenticate(self, name: str, password: str) -> User:
        """The user if ``password`` is theirs.

        Raises
        ------
        AuthError
            "wrong name or password" (the same words whether the name exists or not, and
            about the same time: an unknown name is checked against a dummy hash).
        """
        record = self.get(name)
        ok = verify_password(password, record.password if record is not None else None)
        if record is None or not ok:
            raise AuthError("wrong name or password")
        return record.user()

    @contextlib.contextmanager
    def _locked(self):
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(self.path.name + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _write(self, records: list[UserRecord]) -> None:
        data = {"format": _FILE_FORMAT, "version": 1,
                "users": [{"name": r.name, "role": r.role, "groups": list(r.groups), "password": r.password,
                           "created_at": r.created_at} for r in records]}
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(data, fh, indent=1)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except OSError as err:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise AuthError(f"the user file {self.path} cannot be written ({err.strerror or err}); check the "
                            "permissions and free space of its folder") from err


# --------------------------------------------------------------------------- failed sign-ins


class LoginLimiter:
    """Slows down password guessing: after ``max_failures`` failed sign-ins within ``window_s``
    for one key (a user name, a client address), that key must wait ``lockout_s``, doubled
    for each further failure up to ``max_lockout_s``. A success clears its keys.

    Thread-safe; kept in the server's memory (a restart forgets it).

    Examples
    --------
    >>> t = [0.0]
    >>> lim = LoginLimiter(max_failures=2, lockout_s=30, clock=lambda: t[0])
    >>> lim.failed(["name:ana"]); lim.failed(["name:ana"]); lim.wait_s(["name:ana"])
    30.0
    """

    def __init__(self, max_failures: int = 5, window_s: float = 900.0, lockout_s: float = 30.0,
                 max_lockout_s: float = 900.0, clock=time.monotonic) -> None:
        self.max_failures, self.window_s = int(max_failures), float(window_s)
        self.lockout_s, self.max_lockout_s = float(lockout_s), float(max_lockout_s)
        self._clock = clock
        self._lock = threading.Lock()
        self._failures: dict[str, list[float]] = {}

    def wait_s(self, keys: Iterable[str]) -> float:
        """Seconds until any of ``keys`` may try again (0: now)."""
        now = self._clock()
        with self._lock:
            wait = 0.0
            for key in keys:
                times = [t for t in self._failures.get(key, []) if now - t < max(self.window_s, self.max_lockout_s)]
                self._failures[key] = times
                recent = [t for t in times if now - t < self.window_s]
                excess = len(recent) - self.max_failures
                if excess >= 0 and times:
                    lock = min(self.lockout_s * 2 ** excess, self.max_lockout_s)
                    wait = max(wait, times[-1] + lock - now)
            return max(0.0, wait)

    def failed(self, keys: Iterable[str]) -> None:
        """Record a failed sign-in for each key."""
        now = self._clock()
        with self._lock:
            for key in keys:
                self._failures.setdefault(key, []).append(now)

    def succeeded(self, keys: Iterable[str]) -> None:
        """Forget the failures of ``keys``."""
        with self._lock:
            for key in keys:
                self._failures.pop(key, None)


# --------------------------------------------------------------------------- signed-in browsers


def session_secret(path: str | Path | None = None) -> bytes:
    """The server's secret for signing sign-in cookies: 32 random bytes in ``<data folder>/.session-secret`` (0600).

    Created on first use; delete the file to sign every browser out.

    Raises
    ------
    AuthError
        If it cannot be read or created.
    """
    if path is None:
        from core.outputs.store import data_dir

        path = data_dir() / ".session-secret"
    path = Path(path)
    try:
        data = path.read_bytes()
        if len(data) >= 32:
            return data
    except FileNotFoundError:
        pass
    except OSError as err:
        raise AuthError(f"{path} cannot be read ({err.strerror or err}); check its permissions") from err
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(secrets.token_bytes(32))
    except FileExistsError:
        pass  # another session created it first
    except OSError as err:
        raise AuthError(f"{path} cannot be created ({err.strerror or err}); check the data folder's permissions") from err
    return path.read_bytes()


def _fingerprint(record: UserRecord) -> str:
    return hashlib.sha256(f"{record.name}\0{record.role}\0{record.password}".encode()).hexdigest()[:16]


def session_token(record: UserRecord, secret: bytes, now: float | None = None, ttl_s: float = SESSION_TTL_S) -> str:
    """A signed token saying that ``record`` signed in, valid ``ttl_s`` seconds (the sign-in cookie's value).

    It names the user and carries a fingerprint of their role and password hash, so a
    changed password or role, or a removed user, invalidates it (:func:`verify_session_token`).
    """
    now = time.time() if now is None else now
    payload = _b64(json.dumps({"n": record.name, "e": int(now + ttl_s), "f": _fingerprint(record)}).encode())
    sig = _b64(hmac.new(secret, payload.encode(), hashlib.sha256).digest())
    return f"{payload}.{sig}"


def verify_session_token(token: str | None, users: UserFile, secret: bytes, now: float | None = None) -> User | None:
    """The user a token from :func:`session_token` names, if it is genuine, unexpired and still matches the user file; else None."""
    if not token or token.count(".") != 1:
        return None
    payload, sig = token.split(".")
    want = _b64(hmac.new(secret, payload.encode(), hashlib.sha256).digest())
    if not hmac.compare_digest(want, sig):
        return None
    try:
        data = json.loads(_unb64(payload))
        name, expires, fingerprint = str(data["n"]), float(data["e"]), str(data["f"])
    except (ValueError, KeyError, TypeError):
        return None
    if (time.time() if now is None else now) >= expires:
        return None
    record = users.get(name)
    if record is None or record.password is None or not hmac.compare_digest(_fingerprint(record), fingerprint):
        return None
    return record.user()


# --------------------------------------------------------------------------- modes and rights


def is_loopback(address: str | None) -> bool:
    """Whether a server bound to ``address`` can be reached from this machine only.

    ``None`` or ``""`` (Streamlit's default: every interface) and ``0.0.0.0`` / ``::`` are
    not; ``127.0.0.1``, ``::1`` and ``localhost`` are.
    """
    text = str(address or "").strip().strip("[]")
    if not text:
        return False
    if text.casefold() == "localhost":
        return True
    try:
        return ipaddress.ip_address(text).is_loopback
    except ValueError:
        return False


def auth_mode(server_address: str | None, oidc_configured: bool, users: UserFile | None = None) -> str:
    """How users sign in: ``"oidc"``, ``"users"``, ``"local"`` or ``"refused"`` (see the module docstring).

    Raises
    ------
    AuthError
        If the user file exists but cannot be read.
    """
    if oidc_configured:
        return "oidc"
    users = users or UserFile()
    if users.exists():
        users.records()  # a damaged file is said, not ignored
        return "users"
    return "local" if is_loopback(server_address) else "refused"


def refusal_message(server_address: str | None, users: UserFile | None = None) -> str:
    """Why a server listening beyond this machine without users refuses to serve, and what to do."""
    where = f"on {server_address}" if server_address else "on every network interface"
    path = (users or UserFile()).path
    return (f"TILscope is listening {where} for other machines but has no users, so it serves nobody. Add a user "
            f"on the server (python -m core users add NAME --role admin; the user file is {path}), or configure a "
            "sign-in provider in .streamlit/secrets.toml ([auth]), or set server.address = \"127.0.0.1\" in "
            ".streamlit/config.toml for use on this machine only; then reload this page.")


def can_write(actor: User | None) -> bool:
    """Whether ``actor`` may save analyses, reviews and notes (None, a trusted caller or local mode: yes)."""
    return actor is None or actor.can_save


def can_see(actor: User | None, owner: str | None, group: str | None) -> bool:
    """Whether ``actor`` sees a case owned by ``owner`` and shared with ``group`` (None: everyone sees everything).

    Names compare exactly: the user file and the sign-in give each user one spelling.
    """
    if actor is None or actor.is_admin:
        return True
    return (owner is not None and owner == actor.name) or (group is not None and group in actor.groups)


def can_delete(actor: User | None, owner: str | None, created_by: str | None = None) -> bool:
    """Whether ``actor`` may delete a case owned by ``owner`` (or an analysis of it that ``created_by`` ran).

    An admin may delete anything; an analyst what they own: their cases and the analyses they ran.
    """
    if actor is None or actor.is_admin:
        return True
    if actor.role != "analyst":
        return False
    return actor.name in (owner, created_by)


def check_write(actor: User | None, what: str = "save") -> None:
    """Refuse a viewer.

    Raises
    ------
    AccessError
        If ``actor`` is a viewer.
    """
    if not can_write(actor):
        raise AccessError(f"{actor.name} is a viewer and cannot {what}: viewers look at the cases shared with them; "
                          "ask an admin for the analyst role")


# --------------------------------------------------------------------------- python -m core users


def _password_from(args) -> str | None:
    if getattr(args, "no_password", False):
        return None
    if args.password_stdin:
        line = sys.stdin.readline()
        return check_password(line.rstrip("\r\n"))
    first = getpass.getpass(f"Password for {args.name}: ")
    check_password(first)
    if getpass.getpass("Again: ") != first:
        raise InputError("the two passwords differ; run the command again")
    return first


def _users_parser():
    import argparse

    class Parser(argparse.ArgumentParser):
        def error(self, message):  # one line and status 2, as python -m core does
            self.exit(2, f"error: {message} (python -m core users --help)\n")

    p = Parser(prog="python -m core users", description="Users of TILscope: who may sign in, their role and groups. "
               f"The file is ${USERS_FILE_ENV}, else users.json in the data folder ($TILSCOPE_DATA_DIR).")
    sub = p.add_subparsers(dest="action", required=True)
    a = sub.add_parser("add", help="add a user (the password is asked for, or read from standard input)")
    a.add_argument("name")
    a.add_argument("--role", required=True, choices=ROLES)
    a.add_argument("--group", action="append", default=[], help="a group whose cases the user sees (repeatable)")
    how = a.add_mutually_exclusive_group()
    how.add_argument("--password-stdin", action="store_true", help="read the password from the first line of standard input")
    how.add_argument("--no-password", action="store_true",
                     help="no password: the user signs in through the OIDC provider only (name = their e-mail address)")
    pw = sub.add_parser("passwd", help="set a user's password (signs their browsers out)")
    pw.add_argument("name")
    pw.add_argument("--password-stdin", action="store_true")
    r = sub.add_parser("remove", help="remove a user (their cases stay)")
    r.add_argument("name")
    ls = sub.add_parser("list", help="list the users")
    ls.add_argument("--json", action="store_true")
    return p


def users_main(argv: list[str] | None = None) -> int:
    """``python -m core users add|passwd|remove|list``; returns the exit status (0, or 2 with one line ``error: ...``)."""
    args = _users_parser().parse_args(argv)
    users = UserFile()
    try:
        if args.action == "add":
            record = users.add(args.name, args.role, args.group, _password_from(args))
            groups = ", ".join(record.groups) or "none"
            sign_in = "password" if record.password else "OIDC provider only"
            print(f"added {record.name} ({record.role}; groups: {groups}; signs in with: {sign_in}) to {users.path}")
        elif args.action == "passwd":
            users.set_password(args.name, _password_from(args))
            print(f"password of {args.name} changed in {users.path}")
        elif args.action == "remove":
            users.remove(args.name)
            print(f"removed {args.name} from {users.path} (their cases stay)")
        else:
            records = users.records()
            if args.json:
                print(json.dumps([{"name": r.name, "role": r.role, "groups": r.groups, "password": r.password is not None}
                                  for r in records], indent=1))
            elif not records:
                print(f"no users in {users.path}" + ("" if users.exists() else " (the file does not exist)"))
            for r in records if not args.json else []:
                print(f"{r.name}\t{r.role}\tgroups: {', '.join(r.groups) or 'none'}\t"
                      f"{'password' if r.password else 'OIDC only'}")
        return 0
    except TILscopeError as err:
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    except (EOFError, KeyboardInterrupt):
        print("error: no password given; nothing changed", file=sys.stderr)
        return 2
