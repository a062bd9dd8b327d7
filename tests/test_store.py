"""Case store: round trip, search, delete, migrations, two concurrent writers, on SQLite
and on a throwaway PostgreSQL server started here (skipped, with the reason, where it cannot)."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
from datetime import datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from core.errors import InputError
from core.outputs import store as store_mod
from core.outputs.store import CaseStore, StoreError

REPO = Path(__file__).resolve().parents[1]


def summary(n_pos: int = 12, name: str = "field-7.tif", sha: str = "ab" * 32) -> dict:
    return {
        "scenario": "cd3-ihc",
        "weights_sha256": "9f" * 32,
        "weights_version": "1.0.0",
        "mpp": 0.5,
        "image": {"name": name, "sha256": sha, "width_px": 640, "height_px": 480},
        "counts": {"cd3-positive": n_pos},
        "density_per_mm2": {"cd3-positive": n_pos / 0.0768},
        "area_mm2": 0.0768,
    }


# --------------------------------------------------------------------------- PostgreSQL server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_postgres_user(cmd: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: drop to the 'postgres' (or 'nobody') user."""
    if os.geteuid() != 0:
        return cmd
    import pwd

    for user in ("postgres", "nobody"):
        try:
            pw = pwd.getpwnam(user)
        except KeyError:
            continue
        return ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--clear-groups", *cmd]
    pytest.skip("running as root and there is no 'postgres' or 'nobody' user to run PostgreSQL as")


@pytest.fixture(scope="session")
def pg_server():
    """Start a PostgreSQL server on a free localhost port in a temp dir; yield its base URL."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.fail("PostgreSQL driver psycopg (3) is not installed: pip install -r requirements.txt")
    bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    initdb = bins[-1] if bins else shutil.which("initdb")
    if not initdb:
        pytest.fail("PostgreSQL server binaries (initdb, pg_ctl) not found: make test installs postgresql")
    pg_ctl = str(Path(initdb).with_name("pg_ctl"))
    if os.geteuid() == 0 and shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: cannot start PostgreSQL as a non-root user")
    root = Path(tempfile.mkdtemp(prefix="tilscope-pg-"))
    root.chmod(0o777)
    data = root / "data"
    port = _free_port()
    try:
        run = lambda cmd: subprocess.run(_as_postgres_user(cmd), capture_output=True, text=True, timeout=120)  # noqa: E731
        res = run([initdb, "-D", str(data), "-U", "tilscope", "--auth=trust", "-E", "UTF8", "--no-sync"])
        if res.returncode != 0:
            pytest.skip(f"initdb failed, cannot start a test PostgreSQL server: {res.stderr.strip()[-300:]}")
        opts = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
        res = run([pg_ctl, "-D", str(data), "-o", opts, "-l", str(root / "log"), "-w", "-t", "60", "start"])
        if res.returncode != 0:
            log = (root / "log").read_text(errors="replace")[-300:] if (root / "log").exists() else ""
            pytest.skip(f"pg_ctl start failed, cannot start a test PostgreSQL server: {res.stderr.strip()[-300:]} {log}")
        yield f"postgresql+psycopg://tilscope@127.0.0.1:{port}"
        run([pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"])
    finally:
        shutil.rmtree(root, ignore_errors=True)


_db_counter = iter(range(10_000))


def _new_pg_database(base_url: str) -> str:
    name = f"t{os.getpid()}_{next(_db_counter)}"
    engine = sa.create_engine(f"{base_url}/postgres", isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    engine.dispose()
    return f"{base_url}/{name}"


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    """A fresh, empty database URL of each backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'cases.sqlite3'}"
    return _new_pg_database(request.getfixturevalue("pg_server"))


# --------------------------------------------------------------------------- behaviour


def test_save_list_open_delete(db_url):
    store = CaseStore(db_url)
    assert store.schema_version == store_mod.SCHEMA_VERSION
    first = store.save_analysis(
        "B-2024-0113", summary(12), params={"min_probability": 0.5}, spatial={"immune_phenotype": "inflamed"},
        regions={"type": "FeatureCollection", "features": []}, corrections={"edits": [{"op": "add"}, {"op": "delete"}]},
        files={"report.pdf": b"%PDF-1.4 x", "cells.csv": b"x_px,y_px\n1,2\n"},
    )
    second = store.save_analysis("C-7", summary(30, name="other.png", sha="cd" * 32))
    third = store.save_analysis("B-2024-0113", summary(5, name="third.png"))

    rows = store.list_analyses()
    assert [r["id"] for r in rows] == [third, second, first]  # newest first
    assert [r["id"] for r in store.list_analyses(search="b-2024")] == [third, first]
    assert [r["id"] for r in store.list_analyses(search="OTHER")] == [second]
    assert [r["id"] for r in store.list_analyses(search="cdcdcd")] == [second]
    assert store.list_analyses(search="%") == []  # LIKE wildcards are literal
    assert {c["label"]: c["n_analyses"] for c in store.list_cases()} == {"B-2024-0113": 2, "C-7": 1}

    a = store.get_analysis(first)
    assert a["case_label"] == "B-2024-0113"
    assert a["image_sha256"] == "ab" * 32 and a["scenario_key"] == "cd3-ihc" and a["weights_sha256"] == "9f" * 32
    assert a["summary"]["counts"] == {"cd3-positive": 12}
    assert a["params"] == {"min_probability": 0.5}
    assert a["n_corrections"] == 2
    assert {f["name"]: f["media_type"] for f in a["files"]} == {"cells.csv": "text/csv", "report.pdf": "application/pdf"}
    assert store.get_file(first, "report.pdf") == b"%PDF-1.4 x"

    record = store.get_record(first)
    assert record["analysis_id"] == first and record["spatial"] == {"immune_phenotype": "inflamed"}
    assert record["case_label"] == "B-2024-0113" and record["created_at"].endswith("+00:00")

    store.add_files(first, {"report.pdf": b"%PDF-1.4 new"})
    assert store.get_file(first, "report.pdf") == b"%PDF-1.4 new"

    store.delete_analysis(first)
    with pytest.raises(StoreError, match="does not exist"):
        store.get_analysis(first)
    with pytest.raises(StoreError, match="does not exist"):
        store.get_file(first, "report.pdf")
    with pytest.raises(StoreError):
        store.delete_analysis(first)
    assert [r["id"] for r in store.list_analyses()] == [third, second]
    store.close()
    # Nothing lives in memory only: a new store on the same URL sees the same rows.
    again = CaseStore(db_url)
    assert [r["id"] for r in again.list_analyses()] == [third, second]
    again.close()


def test_cases_and_bad_input(db_url):
    store = CaseStore(db_url)
    cid = store.get_or_create_case("  A-1 ")
    assert store.get_or_create_case("A-1") == cid
    with pytest.raises(InputError, match="exists already"):
        store.create_case("A-1")
    with pytest.raises(InputError, match="empty"):
        store.save_analysis("   ", summary())
    with pytest.raises(InputError, match="JSON"):
        store.save_analysis("A-1", summary(), params={"bad": object()})
    store.save_analysis("A-1", summary())
    store.delete_case(cid)
    assert store.list_cases() == [] and store.list_analyses() == []
    store.close()


def test_migration_from_version_1_keeps_data(db_url):
    old = CaseStore(db_url, migrate_to=1)
    assert old.schema_version == 1
    created = datetime(2024, 5, 1, 12, 0)
    with old.engine.begin() as conn:
        insp = sa.inspect(conn)
        assert "spatial" not in {c["name"] for c in insp.get_columns("analyses")}
        md = sa.MetaData()
        cases = sa.Table("cases", md, autoload_with=conn)
        analyses = sa.Table("analyses", md, autoload_with=conn)
        files = sa.Table("analysis_files", md, autoload_with=conn)
        case_id = conn.execute(cases.insert().values(label="OLD-1", created_at=created)).inserted_primary_key[0]
        aid = conn.execute(
            analyses.insert().values(
                case_id=case_id, image_sha256="ef" * 32, image_name="old.tif", scenario_key="cd3-ihc",
                weights_sha256="00" * 32, params={"a": 1}, summary=summary(9, name="old.tif"),
                regions=None, corrections={"edits": [1, 2, 3]}, app_version="0.0.9", created_at=created,
            )
        ).inserted_primary_key[0]
        conn.execute(files.insert().values(analysis_id=aid, name="report.pdf", media_type="application/pdf",
                                           size_bytes=4, data=b"%PDF"))
    old.close()

    new = CaseStore(db_url)
    assert new.schema_version == store_mod.SCHEMA_VERSION == 6
    assert store_mod.current_schema_version(new.engine) == 6
    a = new.get_analysis(aid)
    assert a["case_label"] == "OLD-1" and a["image_name"] == "old.tif" and a["app_version"] == "0.0.9"
    assert a["summary"]["counts"] == {"cd3-positive": 9} and a["params"] == {"a": 1}
    assert a["n_corrections"] == 3  # back-filled from the corrections JSON by migration 2
    assert a["spatial"] is None and a["model_card"] is None and a["created_at"] == "2024-05-01T12:00:00+00:00"
    assert new.get_file(aid, "report.pdf") == b"%PDF"
    new.set_note(aid, "discussed 2024-05-03")  # a column added by migration 2 is writable
    assert new.get_analysis(aid)["note"] == "discussed 2024-05-03"
    assert a["created_by"] is None and a["reviewed_by"] is None and a["originals"] == []  # unknown, not invented
    assert a["complete"] is True and new.list_analyses()[0]["complete"] is True  # saved whole before schema 5
    assert a["owner"] is None and a["group"] is None  # no user was recorded: an admin's case
    later = new.save_analysis("OLD-1", summary(4))  # ids go on after the old ones (migration 6's counter)
    assert later > aid and new.get_analysis(later)["case_label"] == "OLD-1"
    new.close()


def test_migration_from_version_3_adds_users_originals_and_the_audit_log(db_url):
    old = CaseStore(db_url, migrate_to=3)
    with old.engine.begin() as conn:  # rows as TILscope at schema 3 wrote them
        md = sa.MetaData()
        cases, analyses, files = (sa.Table(t, md, autoload_with=conn) for t in ("cases", "analyses", "analysis_files"))
        case_id = conn.execute(cases.insert().values(label="OLD-3", created_at=datetime(2025, 1, 1))).inserted_primary_key[0]
        aid = conn.execute(analyses.insert().values(
            case_id=case_id, image_sha256="ab" * 32, image_name="field-7.tif", scenario_key="cd3-ihc", params={},
            summary=summary(7), corrections={"edits": [1]}, n_corrections=1, app_version="0.1.0",
            created_at=datetime(2025, 1, 1))).inserted_primary_key[0]
        conn.execute(files.insert().values(analysis_id=aid, name="cells.csv", media_type="text/csv", size_bytes=9,
                                           data=b"x_px\n1\n"))
    old.close()
    new = CaseStore(db_url)
    assert new.schema_version == 6
    with new.engine.connect() as conn:
        insp = sa.inspect(conn)
        cols = {c["name"] for c in insp.get_columns("analyses")}
        assert {"created_by", "reviewed_by", "reviewed_at", "detected_summary", "detected_spatial"} <= cols
        assert {"analysis_originals", "audit_events"} <= set(insp.get_table_names())
    a = new.get_analysis(aid)
    assert a["summary"]["counts"] == {"cd3-positive": 7} and a["n_corrections"] == 1 and a["detected_summary"] is None
    # the old analysis can be reviewed now: its files become the originals on the first review
    new.update_review(aid, regions=None, corrections={"edits": []}, summary=summary(6), files={"cells.csv": b"new"},
                      user="Dr B")
    assert new.get_original(aid, "cells.csv") == b"x_px\n1\n" and new.get_file(aid, "cells.csv") == b"new"
    assert new.get_analysis(aid)["detected_summary"]["counts"] == {"cd3-positive": 7}
    new.close()


def test_users_originals_and_the_audit_log(db_url):
    store = CaseStore(db_url)
    aid = store.save_analysis("B-1", summary(12), created_by="  Dr  Ana Silva ", files={"report.pdf": b"%PDF a"},
                              originals={store_mod.SOURCE_IMAGE: b"\x89PNG image"})
    a = store.get_analysis(aid)
    assert a["created_by"] == "Dr Ana Silva"
    assert [f["name"] for f in a["originals"]] == [store_mod.SOURCE_IMAGE] and store.get_original(aid, "source-image.png")
    assert [f["name"] for f in a["files"]] == ["report.pdf"]  # the image is not an export
    with pytest.raises(StoreError, match="no original"):
        store.get_original(aid, "cells.csv")
    events = [{"user": "Dr B", "time": "2026-01-02T10:00:00+00:00", "action": "delete",
               "detail": {"cell_id": 4, "from_class": "cd3-positive"}, "comment": "debris"}]
    store.update_review(aid, regions=None, corrections={"edits": [{"op": "delete"}]}, summary=summary(11),
                        files={"report.pdf": b"%PDF b"}, user="Dr B", comment="second read", events=events,
                        params={"spatial": {"radii_um": [10]}})
    store.update_review(aid, regions=None, corrections={"edits": []}, summary=summary(12), files={"report.pdf": b"%PDF c"},
                        user="Dr C")
    a = store.get_analysis(aid)
    assert a["reviewed_by"] == "Dr C" and a["reviewed_at"].endswith("+00:00") and a["params"] == {"spatial": {"radii_um": [10]}}
    assert store.get_original(aid, "report.pdf") == b"%PDF a"  # kept from the first review on
    assert a["detected_summary"]["counts"] == {"cd3-positive": 12} and store.get_file(aid, "report.pdf") == b"%PDF c"
    record = store.get_record(aid)
    assert (record["created_by"], record["reviewed_by"]) == ("Dr Ana Silva", "Dr C")
    row = store.list_analyses()[0]
    assert (row["created_by"], row["reviewed_by"]) == ("Dr Ana Silva", "Dr C")
    store.set_note(aid, "for the board", user="Dr B")
    store.delete_analysis(aid, user="Dr D", comment="duplicate run")
    log = store.audit_log(aid)
    assert [(e["user"], e["action"]) for e in log] == [
        ("Dr D", "analysis deleted"), ("Dr B", "note"), ("Dr C", "review saved"), ("Dr B", "review saved"),
        ("Dr B", "delete"), ("Dr Ana Silva", "analysis saved")]
    assert log[0]["comment"] == "duplicate run" and log[3]["comment"] == "second read" and log[4]["comment"] == "debris"
    assert log[4]["time"] == "2026-01-02T10:00:00+00:00" and log[4]["detail"]["from_class"] == "cd3-positive"
    assert all(e["case_label"] == "B-1" for e in log)  # the history outlives the analysis
    store.close()


def _small_result():
    from tests.test_review import small_result

    return small_result()


def test_a_save_is_complete_or_absent(db_url, monkeypatch):
    """save_result reserves the id, draws the files, then writes everything in one transaction:
    a failure before that commit leaves no case, no analysis, no file and no audit entry."""
    from core.outputs import exports
    from core.outputs.exports import save_result

    store = CaseStore(db_url)
    aid = save_result(_small_result(), "B-1", store, created_by="Dr A")
    a = store.get_analysis(aid)
    assert a["complete"] is True and {"report.pdf", "cells.csv", "overlay.png"} <= {f["name"] for f in a["files"]}
    assert a["owner"] == "Dr A"  # saved without a signed-in user: the case belongs to who ran it

    def broken(*_args, **_kwargs):
        raise StoreError("disk I/O error")

    for where in ("build_exports", "save_analysis"):  # drawing the files fails; the one write fails
        with monkeypatch.context() as m:
            if where == "build_exports":
                m.setattr(exports, "build_exports", broken)
            else:
                m.setattr(CaseStore, "save_analysis", broken)
            with pytest.raises(StoreError, match="disk I/O"):
                save_result(_small_result(), "B-2", store, created_by="Dr A")
        assert [r["id"] for r in store.list_analyses()] == [aid]
        assert [c["label"] for c in store.list_cases()] == ["B-1"]
        assert not [e for e in store.audit_log() if e["case_label"] == "B-2"]
    # The ids reserved by the failed saves are gaps; the next save gets a new one.
    again = save_result(_small_result(), "B-2", store, created_by="Dr A")
    assert again > aid + 2 and store.get_analysis(again)["case_label"] == "B-2"
    store.close()


def test_reserved_ids_are_unique_and_taken_once(db_url):
    store = CaseStore(db_url)
    first, second = store.reserve_analysis_id(), store.reserve_analysis_id()
    assert second == first + 1
    assert store.save_analysis("B-1", summary(), analysis_id=second) == second
    with pytest.raises(StoreError, match="taken already"):
        store.save_analysis("B-1", summary(), analysis_id=second)
    assert store.save_analysis("B-1", summary()) == second + 1  # never an id handed out before
    store.close()


def test_migration_6_removes_saves_that_never_finished(db_url):
    """Schema 5 saved numbers, then files: an analysis left ``complete`` False was cut in between."""
    old = CaseStore(db_url, migrate_to=5)
    with old.engine.begin() as conn:
        md = sa.MetaData()
        cases, analyses, files = (sa.Table(t, md, autoload_with=conn) for t in ("cases", "analyses", "analysis_originals"))
        case_id = conn.execute(cases.insert().values(label="OLD-5", created_at=datetime(2026, 1, 1))).inserted_primary_key[0]
        ids = {}
        for name, complete in (("done.tif", True), ("cut.tif", False)):
            ids[name] = conn.execute(analyses.insert().values(
                case_id=case_id, image_name=name, scenario_key="cd3-ihc", params={}, summary=summary(3, name=name),
                created_at=datetime(2026, 1, 1), created_by="Dr Old", complete=complete)).inserted_primary_key[0]
        conn.execute(files.insert().values(analysis_id=ids["cut.tif"], name="source-image.png", media_type="image/png",
                                           size_bytes=3, data=b"png", created_at=datetime(2026, 1, 1)))
    old.close()
    new = CaseStore(db_url)
    assert [r["image_name"] for r in new.list_analyses()] == ["done.tif"]
    with pytest.raises(StoreError, match="does not exist"):
        new.get_analysis(ids["cut.tif"])
    gone = new.audit_log(ids["cut.tif"])
    assert [e["action"] for e in gone] == ["analysis deleted"] and "never finished" in gone[0]["comment"]
    assert new.list_cases()[0]["owner"] == "Dr Old"  # the case's owner: who ran its first analysis
    with new.engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM analysis_originals").scalar() == 0
    new.close()


def test_cases_belong_to_users_and_groups(db_url):
    """Who sees, saves and deletes what (core.auth rules, enforced by the store)."""
    from core.auth import AccessError, User

    base = CaseStore(db_url)
    ana = base.for_actor(User("ana", "analyst", ("pathology",)))
    ben = base.for_actor(User("ben", "analyst", ()))
    vic = base.for_actor(User("vic", "viewer", ("pathology",)))
    root = base.for_actor(User("root", "admin", ()))
    a_own = ana.save_analysis("A-1", summary(1), files={"cells.csv": b"x"})
    a_group = ana.save_analysis("A-2", summary(2), group="pathology")
    b_own = ben.save_analysis("B-1", summary(3), created_by="someone else")  # the actor is recorded, not the claim
    assert ben.get_analysis(b_own)["created_by"] == "ben" and ben.get_analysis(b_own)["owner"] == "ben"

    assert {r["id"] for r in ana.list_analyses()} == {a_own, a_group}
    assert {r["id"] for r in ben.list_analyses()} == {b_own}
    assert {r["id"] for r in vic.list_analyses()} == {a_group}  # through the group
    assert {r["id"] for r in root.list_analyses()} == {a_own, a_group, b_own}
    assert [c["label"] for c in vic.list_cases()] == ["A-2"] and vic.list_cases()[0]["group"] == "pathology"
    for call in (lambda: ben.get_analysis(a_own), lambda: ben.get_file(a_own, "cells.csv"),
                 lambda: ben.get_record(a_own), lambda: ben.set_note(a_own, "x"), lambda: ben.delete_analysis(a_own)):
        with pytest.raises(StoreError, match="does not exist"):  # not shared: reads as absent
            call()
    assert ben.audit_log(a_own) == [] and len(root.audit_log(a_own)) == 1
    with pytest.raises(AccessError, match="not shared with you"):
        ben.save_analysis("A-1", summary())  # the label is taken by a case ben does not see
    with pytest.raises(AccessError, match="not in group"):
        ben.save_analysis("B-2", summary(), group="pathology")
    with pytest.raises(AccessError, match="viewer"):
        vic.save_analysis("V-1", summary())
    with pytest.raises(AccessError, match="viewer"):
        vic.set_note(a_group, "looks inflamed")
    with pytest.raises(AccessError, match="viewer"):
        vic.update_review(a_group, regions=None, corrections=None)
    with pytest.raises(AccessError, match="only an admin"):
        vic.delete_analysis(a_group)
    # An analyst of the group may add to the case and review it, but deletes only what they own.
    cleo = base.for_actor(User("cleo", "analyst", ("pathology",)))
    c_run = cleo.save_analysis("A-2", summary(5))
    cleo.set_note(a_group, "seen", user="ignored")
    assert cleo.audit_log(a_group)[0]["user"] == "cleo"
    with pytest.raises(AccessError, match="only an admin"):
        cleo.delete_analysis(a_group)
    cleo.delete_analysis(c_run)  # ran it
    ana.delete_analysis(a_group)  # owns the case
    with pytest.raises(AccessError, match="owner"):
        cleo.set_case_group(ana.list_cases()[0]["id"], None)
    with pytest.raises(AccessError, match="only an admin"):
        cleo.delete_case([c for c in root.list_cases() if c["label"] == "A-2"][0]["id"])
    root.delete_analysis(b_own)
    assert {r["id"] for r in root.list_analyses()} == {a_own}
    # Sharing a case later makes it visible to the group.
    a1 = [c for c in ana.list_cases() if c["label"] == "A-1"][0]["id"]
    ana.set_case_group(a1, "pathology")
    assert {r["id"] for r in vic.list_analyses()} == {a_own}
    base.close()


def test_user_names_and_audit_entries_are_checked():
    store = CaseStore("sqlite://")
    for bad, why in (("   ", "empty"), ("x" * 81, "at most 80"), ("Dr\x00A", "control characters")):
        with pytest.raises(InputError, match=why):
            store.save_analysis("B-1", summary(), created_by=bad)
    aid = store.save_analysis("B-1", summary())
    assert store.audit_log(aid)[0]["user"] == "unknown"  # no name given: said so, never invented
    with pytest.raises(InputError, match="audit action"):
        store.add_audit_events(aid, [{"user": "Dr A", "action": "explode"}])
    with pytest.raises(InputError, match="ISO 8601"):
        store.add_audit_events(aid, [{"user": "Dr A", "action": "add", "time": "yesterday"}])
    store.close()


def test_newer_schema_is_refused(tmp_path):
    url = f"sqlite:///{tmp_path / 'future.sqlite3'}"
    CaseStore(url).close()
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE schema_version SET version = 99")
    engine.dispose()
    with pytest.raises(StoreError, match="newer than this TILscope"):
        CaseStore(url)


def test_default_location_follows_data_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("TILSCOPE_DATABASE_URL", raising=False)
    monkeypatch.setenv("TILSCOPE_DATA_DIR", str(tmp_path / "somewhere"))
    store = CaseStore()
    store.save_analysis("X", summary())
    store.close()
    db = tmp_path / "somewhere" / store_mod.DB_FILENAME
    assert db.is_file()
    monkeypatch.setenv("TILSCOPE_DATABASE_URL", f"sqlite:///{tmp_path / 'other.db'}")
    assert store_mod.database_url().endswith("other.db")
    with sa.create_engine(f"sqlite:///{db}").connect() as conn:  # WAL is on
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"


def test_bad_url_says_how_to_fix():
    with pytest.raises(StoreError, match="not a database URL"):
        CaseStore("not a url")


# --------------------------------------------------------------------------- concurrency

WRITER = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {repo!r})
    from core.outputs.store import CaseStore
    store = CaseStore({url!r})  # both writers also race to create and migrate the schema
    for i in range({n}):
        store.save_analysis(
            "shared case" if i % 2 else "writer {tag}",
            {{"scenario": "cd3-ihc", "image": {{"name": "w{tag}-%d.png" % i, "sha256": "00"}},
              "counts": {{"cd3-positive": i}}}},
            files={{"report.pdf": b"%PDF" * 2000, "cells.csv": b"x" * 5000}},
        )
    store.close()
    """
)


def test_two_writer_processes_sqlite(tmp_path):
    url = f"sqlite:///{tmp_path / 'shared.sqlite3'}"
    n = 15
    procs = [
        subprocess.Popen([sys.executable, "-c", WRITER.format(repo=str(REPO), url=url, n=n, tag=tag)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for tag in ("A", "B")
    ]
    for p in procs:
        _, err = p.communicate(timeout=240)
        assert p.returncode == 0, err.decode()[-2000:]
    store = CaseStore(url)
    rows = store.list_analyses()
    assert len(rows) == 2 * n
    assert sorted(r["image_name"] for r in rows) == sorted(f"w{t}-{i}" + ".png" for t in "AB" for i in range(n))
    odd, even = n // 2, n - n // 2
    assert {c["label"]: c["n_analyses"] for c in store.list_cases()} == {
        "shared case": 2 * odd, "writer A": even, "writer B": even,
    }
    assert all(len(store.get_file(r["id"], "report.pdf")) == 8000 for r in rows)
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA integrity_check").scalar() == "ok"
    store.close()


def test_two_writer_threads(db_url):
    """Two stores (as two app sessions would hold) writing at once, on each backend."""
    n = 10
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def writer(tag: str) -> None:
        try:
            s = CaseStore(db_url)
            start.wait(timeout=60)
            for i in range(n):
                s.save_analysis("shared", summary(i, name=f"{tag}-{i}.png"), files={"report.pdf": b"%PDF" * 100})
            s.close()
        except BaseException as err:  # reported below, in the test thread
            errors.append(err)

    threads = [threading.Thread(target=writer, args=(t,)) for t in ("A", "B")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=240)
    assert not errors, errors
    store = CaseStore(db_url)
    names = sorted(r["image_name"] for r in store.list_analyses())
    assert names == sorted(f"{t}-{i}.png" for t in "AB" for i in range(n))
    assert store.list_cases()[0]["n_analyses"] == 2 * n
    store.close()
