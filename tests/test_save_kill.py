"""kill -9 during a save leaves either the complete analysis or nothing (issue 17).

A child process saves an analysis through :func:`core.outputs.exports.save_result` (as the
Analyze page and the command line do) and pauses at step k of the save protocol; this test
then kills it with SIGKILL and opens the store again. Steps: (1) the id reserved, (2) in the
middle of drawing the report, (3) every file drawn, before the transaction, (4) inside the
one transaction, every row written but not committed, (5) just after the commit. Steps 1-4
must leave no case, analysis, file, original or audit entry; step 5 the whole analysis.
On SQLite (write-ahead log) and PostgreSQL.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from core.outputs.store import CaseStore
from tests.test_store import db_url, pg_server  # noqa: F401 - the fixtures: a fresh database of each backend

REPO = Path(__file__).resolve().parents[1]

CHILD = textwrap.dedent(
    """
    import os, sys, time
    sys.path.insert(0, {repo!r})
    from sqlalchemy import event
    from core.outputs import exports
    from core.outputs.store import CaseStore
    from tests.test_review import small_result

    step = {step}

    def pause(where):
        print("paused", where, flush=True)
        time.sleep(600)  # the test kills us here

    store = CaseStore({url!r})
    reserve, save = CaseStore.reserve_analysis_id, CaseStore.save_analysis
    report = exports.build_report_pdf
    armed = []

    def reserve_then(self):
        aid = reserve(self)
        if step == 1:
            pause("id %d reserved" % aid)
        return aid

    def report_midway(*args, **kwargs):
        if step == 2:
            pause("drawing the report")
        return report(*args, **kwargs)

    def save_then(self, *args, **kwargs):
        if step == 3:
            pause("files drawn: %s" % sorted(kwargs["files"]))
        armed.append(True)
        aid = save(self, *args, **kwargs)
        if step == 5:
            pause("committed %d" % aid)
        return aid

    @event.listens_for(store.engine, "commit")
    def before_commit(conn):
        if step == 4 and armed:
            rows = conn.exec_driver_sql("SELECT count(*) FROM analysis_files").scalar()
            pause("inside the transaction, %d file rows written" % rows)

    CaseStore.reserve_analysis_id, CaseStore.save_analysis = reserve_then, save_then
    exports.build_report_pdf = report_midway
    exports.save_result(small_result(), "K-1", store, created_by="Dr Kill")
    print("finished", flush=True)
    """
)


def _kill_at(url: str, step: int) -> str:
    """Run the child until it pauses at ``step``, SIGKILL it; return what it said when it paused."""
    proc = subprocess.Popen([sys.executable, "-c", CHILD.format(repo=str(REPO), url=url, step=step)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        line = ""
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if line.startswith("paused") or not line:
                break
        assert line.startswith("paused"), f"the child never reached step {step}: {line!r} {proc.stderr.read()[-2000:]}"
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=60) == -signal.SIGKILL
        return line.strip()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _rows(url: str) -> dict[str, int]:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        out = {t: conn.exec_driver_sql(f"SELECT count(*) FROM {t}").scalar()
               for t in ("cases", "analyses", "analysis_files", "analysis_originals", "audit_events")}
    engine.dispose()
    return out


@pytest.mark.timeout(900)
def test_sigkill_at_every_step_of_a_save_leaves_all_or_nothing(db_url):  # noqa: F811
    from tests.test_review import small_result

    store = CaseStore(db_url)
    from core.outputs.exports import save_result

    kept = save_result(small_result(), "EARLIER", store, created_by="Dr A")  # what was there before must stay
    store.close()
    before = _rows(db_url)

    said = {}
    for step in (1, 2, 3, 4):
        said[step] = _kill_at(db_url, step)
        store = CaseStore(db_url)  # opening the store after the crash
        assert [r["id"] for r in store.list_analyses()] == [kept], (step, said[step])
        assert [c["label"] for c in store.list_cases()] == ["EARLIER"], step
        assert not [e for e in store.audit_log() if e["case_label"] == "K-1"], step
        assert store.get_file(kept, "report.pdf").startswith(b"%PDF")
        store.close()
        assert _rows(db_url) == before, (step, said[step])  # not a row more, in any table
    assert "files drawn" in said[3] and "report.pdf" in said[3]
    assert "inside the transaction" in said[4] and " 0 file rows" not in said[4]  # killed with its rows written

    said[5] = _kill_at(db_url, 5)
    store = CaseStore(db_url)
    rows = {r["case_label"]: r for r in store.list_analyses()}
    assert set(rows) == {"EARLIER", "K-1"} and rows["K-1"]["complete"] is True
    a = store.get_analysis(rows["K-1"]["id"])
    assert {"report.pdf", "cells.csv", "overlay.png", "summary.json"} <= {f["name"] for f in a["files"]}
    assert [f["name"] for f in a["originals"]] == ["source-image.png"] and a["created_by"] == "Dr Kill"
    assert f"committed {a['id']}" in said[5]
    assert [e["action"] for e in store.audit_log(a["id"])] == ["analysis saved"]
    # The ids reserved by the killed saves were never used; the next save gets a fresh one.
    assert a["id"] > kept + 4
    store.close()
