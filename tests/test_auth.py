"""Users, passwords, roles and sign-in modes (core.auth) and ``python -m core users``."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from core import auth
from core.auth import AccessError, AuthError, LoginLimiter, User, UserFile
from core.errors import InputError

REPO = Path(__file__).resolve().parents[1]


def users_cli(*args: str, stdin: str = "", env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "core", "users", *args], cwd=REPO, input=stdin, text=True,
                          capture_output=True, timeout=120, env={**os.environ, **(env or {})})


def test_passwords_are_salted_scrypt_hashes_checked_in_constant_time():
    h1, h2 = auth.hash_password("correct horse battery"), auth.hash_password("correct horse battery")
    assert h1 != h2 and h1.startswith("scrypt$15$8$1$")  # a fresh salt each time
    assert auth.verify_password("correct horse battery", h1) and not auth.verify_password("correct horse batterY", h1)
    for broken in (None, "", "md5$abc", "scrypt$40$8$1$AA$AA", "scrypt$x"):
        assert not auth.verify_password("correct horse battery", broken)
    with pytest.raises(InputError, match="at least 10"):
        auth.hash_password("short")


def test_the_user_file(tmp_path):
    users = UserFile(tmp_path / "users.json")
    assert not users.exists() and users.records() == []
    users.add("  Dr  Ana ", "analyst", ["path", "path", "onco"], password="correct horse battery")
    users.add("a@b.org", "viewer", [], password=None)
    assert stat.S_IMODE((tmp_path / "users.json").stat().st_mode) == 0o600
    data = json.loads((tmp_path / "users.json").read_text())
    assert "correct horse" not in json.dumps(data)  # only the hash is kept
    ana = users.get("dr ana")
    assert (ana.name, ana.role, ana.groups) == ("Dr Ana", "analyst", ["onco", "path"])
    assert users.authenticate("DR ANA", "correct horse battery") == User("Dr Ana", "analyst", ("onco", "path"))
    for name, password in (("Dr Ana", "wrong password"), ("nobody", "correct horse battery"), ("a@b.org", "")):
        with pytest.raises(AuthError, match="^wrong name or password$"):
            users.authenticate(name, password)
    with pytest.raises(InputError, match="exists already"):
        users.add("dr ana", "admin")
    with pytest.raises(InputError, match="role 'boss'"):
        users.add("x", "boss")
    users.set_password("Dr Ana", "another long password")
    with pytest.raises(AuthError):
        users.authenticate("Dr Ana", "correct horse battery")
    users.remove("a@b.org")
    assert [r.name for r in users.records()] == ["Dr Ana"]
    (tmp_path / "users.json").write_text("{not json")
    with pytest.raises(AuthError, match="damaged"):
        users.records()


def test_failed_sign_ins_are_slowed_down():
    now = [0.0]
    lim = LoginLimiter(max_failures=3, lockout_s=30, max_lockout_s=120, clock=lambda: now[0])
    key = ["name:ana"]
    for _ in range(2):
        lim.failed(key)
    assert lim.wait_s(key) == 0
    lim.failed(key)
    assert lim.wait_s(key) == 30 and lim.wait_s(["name:ben"]) == 0
    now[0] = 31
    assert lim.wait_s(key) == 0
    lim.failed(key)  # the fourth failure doubles the wait
    assert lim.wait_s(key) == 60
    for _ in range(5):
        lim.failed(key)
    assert lim.wait_s(key) == 120  # capped
    lim.succeeded(key)
    assert lim.wait_s(key) == 0
    now[0] = 10_000  # old failures are forgotten
    lim.failed(key)
    assert lim.wait_s(key) == 0


def test_sign_in_tokens(tmp_path):
    users = UserFile(tmp_path / "users.json")
    users.add("ana", "analyst", [], password="correct horse battery")
    secret = auth.session_secret(tmp_path / ".session-secret")
    assert auth.session_secret(tmp_path / ".session-secret") == secret and len(secret) == 32
    token = auth.session_token(users.get("ana"), secret, now=1000.0)
    assert auth.verify_session_token(token, users, secret, now=1001.0) == User("ana", "analyst", ())
    assert auth.verify_session_token(token, users, secret, now=1000.0 + auth.SESSION_TTL_S) is None  # expired
    assert auth.verify_session_token(token, users, b"x" * 32, now=1001.0) is None  # another server's secret
    payload, sig = token.split(".")
    forged = auth._b64(json.dumps({"n": "root", "e": 9e9, "f": "0"}).encode())
    assert auth.verify_session_token(f"{forged}.{sig}", users, secret, now=1001.0) is None
    users.set_password("ana", "a brand new password")  # a changed password signs browsers out
    assert auth.verify_session_token(token, users, secret, now=1001.0) is None
    for junk in (None, "", "a.b.c", "x.y"):
        assert auth.verify_session_token(junk, users, secret) is None


def test_modes_and_rights(tmp_path):
    none = UserFile(tmp_path / "none.json")
    assert auth.auth_mode("127.0.0.1", False, none) == "local"
    assert auth.auth_mode("::1", False, none) == "local" and auth.auth_mode("localhost", False, none) == "local"
    for everywhere in ("0.0.0.0", "", None, "192.168.1.20", "::"):
        assert auth.auth_mode(everywhere, False, none) == "refused"
    assert "python -m core users add NAME --role admin" in auth.refusal_message("0.0.0.0", none)
    some = UserFile(tmp_path / "users.json")
    some.add("ana", "admin", password="correct horse battery")
    assert auth.auth_mode("0.0.0.0", False, some) == "users" and auth.auth_mode("127.0.0.1", True, some) == "oidc"

    ana, vic, root = User("ana", "analyst", ("path",)), User("vic", "viewer", ("path",)), User("root", "admin")
    assert auth.can_see(ana, "ana", None) and auth.can_see(vic, "ben", "path") and not auth.can_see(vic, "ben", "onco")
    assert auth.can_see(root, None, None) and not auth.can_see(ana, None, None) and auth.can_see(None, None, None)
    assert auth.can_delete(ana, "ana") and auth.can_delete(ana, "ben", created_by="ana")
    assert not auth.can_delete(ana, "ben", "ben") and not auth.can_delete(vic, "vic") and auth.can_delete(root, "x")
    with pytest.raises(AccessError, match="vic is a viewer"):
        auth.check_write(vic, "save")
    auth.check_write(ana)
    auth.check_write(None)


def test_users_command(tmp_path):
    env = {"TILSCOPE_USERS_FILE": str(tmp_path / "team" / "users.json")}
    out = users_cli("add", "Dr Ana", "--role", "analyst", "--group", "path", "--password-stdin",
                    stdin="correct horse battery\n", env=env)
    assert out.returncode == 0 and "added Dr Ana (analyst; groups: path; signs in with: password)" in out.stdout, out.stderr
    out = users_cli("add", "ana@example.org", "--role", "viewer", "--no-password", env=env)
    assert out.returncode == 0 and "OIDC provider only" in out.stdout
    listed = json.loads(users_cli("list", "--json", env=env).stdout)
    assert listed == [{"name": "Dr Ana", "role": "analyst", "groups": ["path"], "password": True},
                      {"name": "ana@example.org", "role": "viewer", "groups": [], "password": False}]
    for args, stdin, match in ((("add", "x", "--role", "boss"), "", "invalid choice: 'boss'"),
                               (("add", "Dr Ana", "--role", "admin", "--password-stdin"), "long enough pw\n", "exists already"),
                               (("add", "y", "--role", "admin", "--password-stdin"), "short\n", "at least 10"),
                               (("add", "z", "--role", "admin", "--password-stdin"), "", "at least 10"),
                               (("remove", "nobody"), "", "no user called 'nobody'")):
        out = users_cli(*args, stdin=stdin, env=env)
        lines = out.stderr.strip().splitlines()
        assert out.returncode == 2 and len(lines) == 1 and lines[0].startswith("error:") and match in lines[0], out.stderr
    assert users_cli("passwd", "Dr Ana", "--password-stdin", stdin="another long password\n", env=env).returncode == 0
    assert UserFile(tmp_path / "team" / "users.json").authenticate("Dr Ana", "another long password").role == "analyst"
    assert users_cli("remove", "ana@example.org", env=env).returncode == 0
    assert [r.name for r in UserFile(tmp_path / "team" / "users.json").records()] == ["Dr Ana"]


def test_users_command_is_listed_in_the_cli_and_reached_through_it(tmp_path, monkeypatch, capsys):
    from core.cli import build_parser, main

    assert "users" in build_parser().format_help()
    monkeypatch.setenv("TILSCOPE_USERS_FILE", str(tmp_path / "users.json"))
    assert main(["users", "list"]) == 0
    assert "no users in" in capsys.readouterr().out
