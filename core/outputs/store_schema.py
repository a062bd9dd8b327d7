"""The case store's database schema: SQLAlchemy models, ordered migrations, the engine.

Schema changes are ordered migration steps (:data:`MIGRATIONS`) applied when the store
opens, recorded in the ``schema_version`` table; nothing is dropped. :func:`create_engine`
sets SQLite up for concurrent sessions (write-ahead logging, a busy timeout,
``BEGIN IMMEDIATE`` for writes); :class:`core.outputs.store.CaseStore` reads and writes
through these models.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

import core
from core.errors import TILscopeError
from core.outputs import records as rec

#: Seconds a SQLite writer waits for another before giving up.
SQLITE_BUSY_TIMEOUT_S = 30.0


class StoreError(TILscopeError):
    """The case store cannot be opened, or an analysis or case is not there."""


def utcnow() -> datetime:
    """Now in UTC, naive: the database stores naive times, always UTC."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


# --------------------------------------------------------------------------- ORM


class Base(DeclarativeBase):
    pass


class Case(Base):
    """A patient case (a specimen, a block), identified by a free-text label."""

    __tablename__ = "cases"

    id: Mapped[int] = mapped_column(primary_key=True)
    label: Mapped[str] = mapped_column(sa.String(200), unique=True)
    created_at: Mapped[datetime] = mapped_column(sa.DateTime, default=utcnow)
    # Added by migration 6: who owns the case, and the group it is shared with (both may be NULL:
    # a case saved before users existed, or from the command line; only admins see those).
    owner: Mapped[str | None] = mapped_column(sa.String(200), nullable=True, index=True)
    group_name: Mapped[str | None] = mapped_column(sa.String(200), nullable=True, index=True)
    analyses: Mapped[list["Analysis"]] = relationship(
        back_populates="case", cascade="all, delete-orphan", passive_deletes=True
    )


class Analysis(Base):
    """One run of a scenario on one image, with everything needed to report it again."""

    __tablename__ = "analyses"

    id: Mapped[int] = mapped_column(primary_key=True)
    case_id: Mapped[int] = mapped_column(sa.ForeignKey("cases.id", ondelete="CASCADE"), index=True)
    image_sha256: Mapped[str | None] = mapped_column(sa.String(64), index=True)
    image_name: Mapped[str | None] = mapped_column(sa.String(500))
    scenario_key: Mapped[str | None] = mapped_column(sa.String(100))
    weights_sha256: Mapped[str | None] = mapped_column(sa.String(64))
    params: Mapped[dict | None] = mapped_column(sa.JSON)
    summary: Mapped[dict] = mapped_column(sa.JSON)
    regions: Mapped[Any] = mapped_column(sa.JSON, nullable=True)
    corrections: Mapped[Any] = mapped_column(sa.JSON, nullable=True)
    app_version: Mapped[str | None] = mapped_column(sa.String(50))
    created_at: Mapped[datetime] = mapped_column(sa.DateTime, default=utcnow, index=True)
    # Added by migration 2.
    spatial: Mapped[dict | None] = mapped_column(sa.JSON, nullable=True)
    n_corrections: Mapped[int | None] = mapped_column(sa.Integer, nullable=True)
    note: Mapped[str | None] = mapped_column(sa.Text, nullable=True)
    # Added by migration 3.
    model_card: Mapped[dict | None] = mapped_column(sa.JSON, nullable=True)
    # Added by migration 4.
    created_by: Mapped[str | None] = mapped_column(sa.String(200), nullable=True)
    reviewed_by: Mapped[str | None] = mapped_column(sa.String(200), nullable=True)
    reviewed_at: Mapped[datetime | None] = mapped_column(sa.DateTime, nullable=True)
    detected_summary: Mapped[dict | None] = mapped_column(sa.JSON, nullable=True)
    detected_spatial: Mapped[dict | None] = mapped_column(sa.JSON, nullable=True)
    # schema 5: False while a save of the old two-transaction protocol was unfinished. Since schema 6 an
    # analysis is written in one transaction (always True); migration 6 removed the unfinished ones.
    complete: Mapped[bool | None] = mapped_column(sa.Boolean, nullable=True, default=True)

    case: Mapped[Case] = relationship(back_populates="analyses")
    files: Mapped[list["AnalysisFile"]] = relationship(
        back_populates="analysis", cascade="all, delete-orphan", passive_deletes=True
    )
    originals: Mapped[list["AnalysisOriginal"]] = relationship(
        back_populates="analysis", cascade="all, delete-orphan", passive_deletes=True
    )


class AnalysisFile(Base):
    """An exported file of an analysis (report.pdf, cells.csv, overlay.png, ...)."""

    __tablename__ = "analysis_files"
    __table_args__ = (sa.UniqueConstraint("analysis_id", "name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    analysis_id: Mapped[int] = mapped_column(sa.ForeignKey("analyses.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(sa.String(200))
    media_type: Mapped[str] = mapped_column(sa.String(100))
    size_bytes: Mapped[int] = mapped_column(sa.Integer)
    data: Mapped[bytes] = mapped_column(sa.LargeBinary, deferred=True)

    analysis: Mapped[Analysis] = relationship(back_populates="files")


class AnalysisOriginal(Base):
    """What an analysis was before any review (migration 4): the analysed image and the exports as first saved.

    Not offered as exports of the analysis; :meth:`core.outputs.store.CaseStore.get_original`
    reads them (the Review page opens a saved analysis from them, the Cases page offers
    the files "before review").
    """

    __tablename__ = "analysis_originals"
    __table_args__ = (sa.UniqueConstraint("analysis_id", "name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    analysis_id: Mapped[int] = mapped_column(sa.ForeignKey("analyses.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(sa.String(200))
    media_type: Mapped[str] = mapped_column(sa.String(100))
    size_bytes: Mapped[int] = mapped_column(sa.Integer)
    data: Mapped[bytes] = mapped_column(sa.LargeBinary, deferred=True)
    created_at: Mapped[datetime] = mapped_column(sa.DateTime, default=utcnow)

    analysis: Mapped[Analysis] = relationship(back_populates="originals")


class IdCounter(Base):
    """Next ids handed out before their rows exist (migration 6).

    ``"analyses"``: the id a save reserves (:meth:`core.outputs.store.CaseStore.reserve_analysis_id`)
    so the report drawn before the one transaction that writes the analysis can carry it.
    A reserved id whose save never commits is a gap, nothing else.
    """

    __tablename__ = "id_counters"

    name: Mapped[str] = mapped_column(sa.String(50), primary_key=True)
    next_value: Mapped[int] = mapped_column(sa.BigInteger)


class AuditEvent(Base):
    """One entry of the audit log (migration 4): who did what to which analysis, when and why.

    ``analysis_id`` is not a foreign key, so the record of an analysis's history
    (its deletion included) outlives the analysis.
    """

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    analysis_id: Mapped[int | None] = mapped_column(sa.Integer, index=True, nullable=True)
    case_label: Mapped[str | None] = mapped_column(sa.String(200), nullable=True)
    user: Mapped[str] = mapped_column(sa.String(200))
    time: Mapped[datetime] = mapped_column(sa.DateTime, index=True)
    action: Mapped[str] = mapped_column(sa.String(50))
    detail: Mapped[dict | None] = mapped_column(sa.JSON, nullable=True)
    comment: Mapped[str | None] = mapped_column(sa.Text, nullable=True)


# --------------------------------------------------------------------------- migrations
#
# Each step takes a Connection inside the migration transaction. Steps are frozen:
# never edit one that has shipped; add a new one. They use SQLAlchemy Core with
# their own MetaData (not the ORM classes above, which follow the newest schema).


def _migration_1(conn: sa.Connection) -> None:
    md = sa.MetaData()
    sa.Table(
        "cases", md,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("label", sa.String(200), nullable=False, unique=True),
        sa.Column("created_at", sa.DateTime, nullable=False),
    )
    sa.Table(
        "analyses", md,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("case_id", sa.Integer, sa.ForeignKey("cases.id", ondelete="CASCADE"), nullable=False, index=True),
        sa.Column("image_sha256", sa.String(64)),
        sa.Column("image_name", sa.String(500)),
        sa.Column("scenario_key", sa.String(100)),
        sa.Column("weights_sha256", sa.String(64)),
        sa.Column("params", sa.JSON),
        sa.Column("summary", sa.JSON, nullable=False),
        sa.Column("regions", sa.JSON),
        sa.Column("corrections", sa.JSON),
        sa.Column("app_version", sa.String(50)),
        sa.Column("created_at", sa.DateTime, nullable=False, index=True),
    )
    sa.Table(
        "analysis_files", md,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("analysis_id", sa.Integer, sa.ForeignKey("analyses.id", ondelete="CASCADE"), nullable=False, index=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("media_type", sa.String(100), nullable=False),
        sa.Column("size_bytes", sa.Integer, nullable=False),
        sa.Column("data", sa.LargeBinary, nullable=False),
        sa.UniqueConstraint("analysis_id", "name"),
    )
    md.create_all(conn)


def _add_column(conn: sa.Connection, table: str, name: str, type_: sa.types.TypeEngine) -> None:
    ddl = type_.compile(dialect=conn.dialect)
    preparer = conn.dialect.identifier_preparer
    conn.exec_driver_sql(f"ALTER TABLE {preparer.quote(table)} ADD COLUMN {preparer.quote(name)} {ddl}")


def _migration_2(conn: sa.Connection) -> None:
    """Spatial statistics, the corrections count and a board note become columns.

    The corrections count is filled in from the stored corrections JSON.
    """
    _add_column(conn, "analyses", "spatial", sa.JSON())
    _add_column(conn, "analyses", "n_corrections", sa.Integer())
    _add_column(conn, "analyses", "note", sa.Text())
    analyses = sa.table("analyses", sa.column("id"), sa.column("corrections", sa.JSON), sa.column("n_corrections"))
    for row in conn.execute(sa.select(analyses.c.id, analyses.c.corrections)).all():
        count = rec.count_corrections(row.corrections)
        if count is not None:
            conn.execute(analyses.update().where(analyses.c.id == row.id).values(n_corrections=count))


def _migration_3(conn: sa.Connection) -> None:
    """The model card in force when the analysis ran, so old reports keep its intended use."""
    _add_column(conn, "analyses", "model_card", sa.JSON())


def _migration_4(conn: sa.Connection) -> None:
    """Who ran and who reviewed an analysis, what it was before review, and the audit log.

    New columns of ``analyses``: ``created_by``, ``reviewed_by``, ``reviewed_at``,
    ``detected_summary`` and ``detected_spatial`` (the summary and statistics before the
    first review). New tables: ``analysis_originals`` (the analysed image and the exports
    as first saved) and ``audit_events``. Existing analyses keep every value; their users
    are unknown (NULL), and an analysis reviewed before this step has no originals.
    """
    for name, type_ in (("created_by", sa.String(200)), ("reviewed_by", sa.String(200)), ("reviewed_at", sa.DateTime()),
                        ("detected_summary", sa.JSON()), ("detected_spatial", sa.JSON())):
        _add_column(conn, "analyses", name, type_)
    md = sa.MetaData()
    sa.Table("analyses", md, sa.Column("id", sa.Integer, primary_key=True))  # for the foreign key only
    sa.Table(
        "analysis_originals", md,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("analysis_id", sa.Integer, sa.ForeignKey("analyses.id", ondelete="CASCADE"), nullable=False, index=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("media_type", sa.String(100), nullable=False),
        sa.Column("size_bytes", sa.Integer, nullable=False),
        sa.Column("data", sa.LargeBinary, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.UniqueConstraint("analysis_id", "name"),
    )
    sa.Table(
        "audit_events", md,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("analysis_id", sa.Integer, nullable=True, index=True),
        sa.Column("case_label", sa.String(200), nullable=True),
        sa.Column("user", sa.String(200), nullable=False),
        sa.Column("time", sa.DateTime, nullable=False, index=True),
        sa.Column("action", sa.String(50), nullable=False),
        sa.Column("detail", sa.JSON, nullable=True),
        sa.Column("comment", sa.Text, nullable=True),
    )
    md.create_all(conn, tables=[md.tables["analysis_originals"], md.tables["audit_events"]])


def _migration_5(conn: sa.Connection) -> None:
    """``analyses.complete``: whether saving finished (the numbers and the files are both written).

    Every analysis saved before this step is complete (its numbers and files were written as
    they are); NULL reads as complete too.
    """
    _add_column(conn, "analyses", "complete", sa.Boolean())
    analyses = sa.table("analyses", sa.column("complete", sa.Boolean))
    conn.execute(analyses.update().values(complete=True))


def _migration_6(conn: sa.Connection) -> None:
    """Cases get an owner and a group; analyses ids can be reserved; unfinished saves are removed.

    ``cases.owner`` is filled in with the user who ran the case's first analysis (None when
    unknown: only admins see such a case); ``cases.group_name`` starts empty. Table
    ``id_counters`` starts the analysis ids after the highest one. Analyses whose saving
    never finished under the old two-transaction protocol (``complete`` False: numbers
    without files) are deleted with their rows, each with an audit entry saying so: from
    schema 6 on a save is complete or absent.
    """
    _add_column(conn, "cases", "owner", sa.String(200))
    _add_column(conn, "cases", "group_name", sa.String(200))
    md = sa.MetaData()
    cases = sa.Table("cases", md, sa.Column("id", sa.Integer), sa.Column("label", sa.String), sa.Column("owner", sa.String))
    analyses = sa.Table("analyses", md, sa.Column("id", sa.Integer), sa.Column("case_id", sa.Integer),
                        sa.Column("created_by", sa.String), sa.Column("created_at", sa.DateTime),
                        sa.Column("complete", sa.Boolean), sa.Column("image_name", sa.String),
                        sa.Column("scenario_key", sa.String))
    first = (sa.select(analyses.c.created_by).where(analyses.c.case_id == cases.c.id, analyses.c.created_by.is_not(None))
             .order_by(analyses.c.created_at, analyses.c.id).limit(1).scalar_subquery())
    conn.execute(cases.update().values(owner=first))
    counters = sa.Table(
        "id_counters", md,
        sa.Column("name", sa.String(50), primary_key=True),
        sa.Column("next_value", sa.BigInteger, nullable=False),
    )
    counters.create(conn)
    top = conn.execute(sa.select(sa.func.max(analyses.c.id))).scalar() or 0
    conn.execute(counters.insert().values(name="analyses", next_value=int(top) + 1))
    audit = sa.Table("audit_events", md, sa.Column("id", sa.Integer, primary_key=True),
                     sa.Column("analysis_id", sa.Integer), sa.Column("case_label", sa.String), sa.Column("user", sa.String),
                     sa.Column("time", sa.DateTime), sa.Column("action", sa.String), sa.Column("detail", sa.JSON),
                     sa.Column("comment", sa.Text))
    unfinished = conn.execute(
        sa.select(analyses.c.id, analyses.c.image_name, analyses.c.scenario_key, cases.c.label)
        .join(cases, cases.c.id == analyses.c.case_id).where(analyses.c.complete.is_(False))
    ).all()
    for row in unfinished:
        conn.execute(audit.insert().values(
            analysis_id=row.id, case_label=row.label, user="TILscope", time=utcnow(), action="analysis deleted",
            detail={"image": row.image_name, "scenario": row.scenario_key},
            comment="its saving never finished (numbers without files); removed when the case store was upgraded "
                    "to complete-or-nothing saves"))
        for table in ("analysis_files", "analysis_originals"):
            t = sa.table(table, sa.column("analysis_id"))
            conn.execute(t.delete().where(t.c.analysis_id == row.id))
        conn.execute(analyses.delete().where(analyses.c.id == row.id))


#: Ordered schema steps: (version reached, description, function).
MIGRATIONS: list[tuple[int, str, Callable[[sa.Connection], None]]] = [
    (1, "cases, analyses and their files", _migration_1),
    (2, "analyses.spatial, analyses.n_corrections, analyses.note", _migration_2),
    (3, "analyses.model_card", _migration_3),
    (4, "analyses.created_by/reviewed_by/reviewed_at/detected_summary/detected_spatial, analysis_originals, "
        "audit_events", _migration_4),
    (5, "analyses.complete (saving finished: numbers and files written)", _migration_5),
    (6, "cases.owner/group_name, id_counters; unfinished saves removed", _migration_6),
]
#: The schema version this code reads and writes.
SCHEMA_VERSION = MIGRATIONS[-1][0]

_schema_version = sa.Table(
    "schema_version", sa.MetaData(),
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("updated_at", sa.DateTime, nullable=False),
)


def current_schema_version(engine: sa.Engine) -> int:
    """The schema version recorded in the database; 0 for an empty database."""
    with engine.connect() as conn:
        if not sa.inspect(conn).has_table("schema_version"):
            return 0
        value = conn.execute(sa.select(_schema_version.c.version).where(_schema_version.c.id == 1)).scalar()
    return int(value or 0)


def migrate(engine: sa.Engine, target: int | None = None) -> int:
    """Apply the pending :data:`MIGRATIONS` steps up to ``target`` (default: newest).

    All steps run in one transaction holding the database's write lock (SQLite
    ``BEGIN IMMEDIATE``, a PostgreSQL advisory lock), so two processes opening the
    store at once migrate it once.

    Returns
    -------
    int
        The schema version after migrating.

    Raises
    ------
    StoreError
        If the database is newer than this code (downgrades are not supported).
    """
    target = SCHEMA_VERSION if target is None else target
    with writer(engine).begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql("SELECT pg_advisory_xact_lock(7410663)")  # any fixed key
        _schema_version.create(conn, checkfirst=True)
        row = conn.execute(sa.select(_schema_version.c.version).where(_schema_version.c.id == 1)).scalar()
        version = int(row or 0)
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"the case database is at schema version {version}, newer than this TILscope "
                f"({core.__version__}, schema {SCHEMA_VERSION}); update TILscope to open it"
            )
        for step, _description, apply in MIGRATIONS:
            if version < step <= target:
                apply(conn)
                version = step
        if row is None:
            conn.execute(_schema_version.insert().values(id=1, version=version, updated_at=utcnow()))
        else:
            conn.execute(
                _schema_version.update().where(_schema_version.c.id == 1).values(version=version, updated_at=utcnow())
            )
    return version


# --------------------------------------------------------------------------- engine


def writer(engine: sa.Engine) -> sa.Engine:
    """``engine`` whose transactions begin with ``BEGIN IMMEDIATE`` (take the write lock up front)."""
    return engine.execution_options(tilscope_begin="IMMEDIATE")


def create_engine(url: str) -> sa.Engine:
    """A SQLAlchemy engine; for SQLite with WAL, busy timeout, foreign keys and ``BEGIN IMMEDIATE`` writes.

    Raises
    ------
    StoreError
        If the URL is malformed or its driver is not installed.
    """
    try:
        parsed = sa.make_url(url)
    except sa.exc.ArgumentError as err:
        raise StoreError(f"TILSCOPE_DATABASE_URL {url!r} is not a database URL (e.g. sqlite:///path or postgresql+psycopg://user@host/db)") from err
    if parsed.get_backend_name() != "sqlite":
        try:
            return sa.create_engine(parsed, pool_pre_ping=True)
        except ImportError as err:
            raise StoreError(
                f"the database driver for {parsed.drivername!r} is not installed ({err}); for PostgreSQL "
                "install psycopg[binary] and use a postgresql+psycopg:// URL"
            ) from err
    database = parsed.database
    if database and database != ":memory:" and not database.startswith("file:"):
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(parsed, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):
        # The driver must not open transactions itself: we emit BEGIN below.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout = {int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
        if database and database != ":memory:":
            _enable_wal(cur)
            cur.execute("PRAGMA synchronous = NORMAL")
        cur.execute("PRAGMA foreign_keys = ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):
        # Writers take the write lock up front: a deferred transaction that later
        # upgrades to writing fails at once with SQLITE_BUSY in WAL mode.
        mode = conn.get_execution_options().get("tilscope_begin", "DEFERRED")
        conn.exec_driver_sql(f"BEGIN {mode}")

    return engine


def _enable_wal(cur) -> None:
    """Switch a SQLite database to write-ahead logging (persistent, done once per file).

    Changing the journal mode needs an exclusive lock and SQLite answers "database
    is locked" at once, without its busy handler, while another connection (e.g. a
    second session creating the same new file) holds one: retry until the busy timeout.
    """
    import sqlite3

    if str(cur.execute("PRAGMA journal_mode").fetchone()[0]).lower() == "wal":
        return
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_S
    while True:
        try:
            cur.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as err:
            if "locked" not in str(err) and "busy" not in str(err) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)
