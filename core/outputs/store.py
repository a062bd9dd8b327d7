"""The case store: every analysis, its parameters, results and exported files, in a database.

SQLite (a file under the data folder) by default; any SQLAlchemy URL, e.g.
PostgreSQL, through ``TILSCOPE_DATABASE_URL``. The data folder is
``TILSCOPE_DATA_DIR``, by default ``data/`` in the repository root.

Concurrency: on SQLite the store uses write-ahead logging (readers never block the
writer), a 30 s busy timeout, and ``BEGIN IMMEDIATE`` for writes, so two app
sessions or processes writing at once wait for each other instead of failing or
corrupting the file. Each write is one short transaction.

Files (report.pdf, cells.csv, ...) are kept as bytes in the database, not in the
data folder: an analysis and its files can be saved in one transaction (no orphan
files after a crash, no dangling rows after a manual clean-up), deleting cascades,
one backup of the database holds everything, and it works unchanged when the
database is a PostgreSQL server that the app's disk does not share. Exports are
small (a PDF of a few hundred kB, a cells table of some MB).

A save is complete or absent. :meth:`CaseStore.save_analysis` writes the case (when new),
the analysis, its files, its originals and its audit entry in one transaction. A caller
that needs the analysis id before that (the report carries it, :func:`core.outputs.exports.save_result`)
reserves it first (:meth:`CaseStore.reserve_analysis_id`, a counter in its own short
transaction), draws the files outside any transaction, then saves with that id. A process
killed anywhere in between leaves nothing but an unused id; the database itself rolls back
a transaction that never committed. Analyses left unfinished by the older two-transaction
protocol of schema 5 are removed by migration 6.

Who may do what: a store opened for a signed-in user (:meth:`CaseStore.for_actor`, a
:class:`core.auth.User`) shows them the cases they own, those of their groups, and
(admin) all; refuses viewers every write; and lets only an admin, or the analyst who
owns it, delete an analysis or case (:mod:`core.auth`). An analysis they may not see
reads as absent. Without an actor (the command line, batch jobs, tests, the app in local
single-user mode) nothing is restricted.

Schema changes are ordered migration steps (:data:`core.outputs.store_schema.MIGRATIONS`)
applied when the store opens, recorded in the ``schema_version`` table; nothing is
dropped. The models, migrations and engine set-up are in :mod:`core.outputs.store_schema`.
"""

from __future__ import annotations

import copy
import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, selectinload

import core
from core import auth
from core.auth import AccessError, User
from core.errors import InputError
from core.outputs import records as rec
from core.outputs.media import media_type
from core.outputs.store_schema import (
    MIGRATIONS,
    SCHEMA_VERSION,
    SQLITE_BUSY_TIMEOUT_S,
    Analysis,
    AnalysisFile,
    AnalysisOriginal,
    AuditEvent,
    Case,
    IdCounter,
    StoreError,
    utcnow,
    writer,
    create_engine,
    current_schema_version,
    migrate,
)

__all__ = ["CaseStore", "StoreError", "AccessError", "DB_FILENAME", "SOURCE_IMAGE", "AUDIT_ACTIONS", "check_user", "SQLITE_BUSY_TIMEOUT_S", "SCHEMA_VERSION", "MIGRATIONS",
           "current_schema_version", "migrate", "create_engine", "database_url", "data_dir", "repo_root"]

#: Default SQLite file name inside the data folder.
DB_FILENAME = "tilscope.sqlite3"
#: Name of the analysed image (8-bit RGB PNG) among an analysis's originals.
SOURCE_IMAGE = "source-image.png"
#: Actions the audit log records.
AUDIT_ACTIONS = ("analysis saved", "add", "delete", "relabel", "undo", "region added", "region removed",
                 "review saved", "note", "analysis deleted")
#: Longest user name, in characters.
USER_MAX_CHARS = 80


def repo_root() -> Path:
    """The repository root (the folder holding ``core/``)."""
    return Path(core.__file__).resolve().parents[1]


def data_dir() -> Path:
    """The data folder: ``TILSCOPE_DATA_DIR``, else ``<repo root>/data``."""
    value = os.environ.get("TILSCOPE_DATA_DIR")
    return Path(value).expanduser() if value else repo_root() / "data"


def database_url() -> str:
    """``TILSCOPE_DATABASE_URL``, else a SQLite file in :func:`data_dir`."""
    value = os.environ.get("TILSCOPE_DATABASE_URL")
    if value:
        return value
    return f"sqlite:///{data_dir() / DB_FILENAME}"


# --------------------------------------------------------------------------- store


class CaseStore:
    """Cases and their analyses in a SQL database.

    Parameters
    ----------
    url : str, optional
        SQLAlchemy URL; default :func:`database_url` (``TILSCOPE_DATABASE_URL`` or
        ``<TILSCOPE_DATA_DIR>/tilscope.sqlite3``).
    migrate_to : int, optional
        Apply migrations only up to this schema version (for tests of migrations).

    Attributes
    ----------
    actor : core.auth.User or None
        The user this store acts for (:meth:`for_actor`); None: no restriction.

    Raises
    ------
    StoreError
        If the database cannot be opened or migrated.

    Examples
    --------
    >>> store = CaseStore("sqlite://")
    >>> aid = store.save_analysis("B-1", {"counts": {"cd3-positive": 4}})
    >>> store.get_record(aid)["summary"]["counts"]
    {'cd3-positive': 4}
    """

    actor: User | None = None

    def __init__(self, url: str | None = None, migrate_to: int | None = None) -> None:
        self.url = url or database_url()
        self.engine = create_engine(self.url)
        try:
            self.schema_version = migrate(self.engine, migrate_to)
        except OperationalError as err:
            raise StoreError(f"cannot open the case database {self._safe_url()}: {err.orig}") from err
        except SQLAlchemyError as err:
            raise StoreError(f"cannot migrate the case database {self._safe_url()}: {err}") from err

    def for_actor(self, actor: User | None) -> "CaseStore":
        """This store (same connections) acting for ``actor``: every read and write is checked against their rights.

        Parameters
        ----------
        actor : core.auth.User or None
            The signed-in user; None gives an unrestricted store (local single-user mode).

        Returns
        -------
        CaseStore
            A view sharing this store's engine: closing either closes both.
        """
        view = copy.copy(self)
        view.actor = actor
        return view

    def _safe_url(self) -> str:
        return sa.make_url(self.url).render_as_string(hide_password=True)

    def close(self) -> None:
        """Release the database connections."""
        self.engine.dispose()

    def _read(self) -> Session:
        return Session(self.engine, expire_on_commit=False)

    def _write(self) -> Session:
        return Session(writer(self.engine), expire_on_commit=False)

    # ---------------------------------------------------------------- rights

    def _visible(self, q: sa.Select) -> sa.Select:
        """``q`` (which joins ``Case``) limited to the cases the actor sees."""
        a = self.actor
        if a is None or a.is_admin:
            return q
        conds = [Case.owner == a.name]
        if a.groups:
            conds.append(Case.group_name.in_(list(a.groups)))
        return q.where(sa.or_(*conds))

    def _sees(self, case: Case) -> bool:
        return auth.can_see(self.actor, case.owner, case.group_name)

    def _analysis(self, session: Session, analysis_id: int, *options) -> Analysis:
        """The analysis if it exists and the actor sees it; else "does not exist" (an unshared one is not revealed)."""
        a = session.get(Analysis, analysis_id, options=[selectinload(Analysis.case), *options])
        if a is None or not self._sees(a.case):
            raise StoreError(f"analysis {analysis_id} does not exist (it may have been deleted in another session)")
        return a

    def _check_write(self, what: str) -> None:
        auth.check_write(self.actor, what)

    def _audit_user(self, user: str | None) -> str | None:
        """The name the audit log records: the actor's when one is signed in (a page cannot pass another)."""
        if self.actor is not None:
            return self.actor.name
        return None if user is None else check_user(user)

    # ---------------------------------------------------------------- cases

    def _new_case(self, session: Session, label: str, group: str | None, owner: str | None) -> Case:
        case = Case(label=label, created_at=utcnow(), owner=self.actor.name if self.actor else owner,
                    group_name=self._check_group(group))
        session.add(case)
        session.flush()
        return case

    def _check_group(self, group: str | None) -> str | None:
        if group is None or not str(group).strip():
            return None
        group = auth.check_name(group, "group name")
        a = self.actor
        if a is not None and not a.is_admin and group not in a.groups:
            raise AccessError(f"{a.name} is not in group {group!r}: share the case with one of your groups "
                              f"({', '.join(a.groups) or 'none'})")
        return group

    def _case_for_write(self, session: Session, label: str) -> Case | None:
        case = session.scalars(sa.select(Case).where(Case.label == label)).first()
        if case is not None and not self._sees(case):
            raise AccessError(f"the case label {label!r} is taken by a case that is not shared with you: "
                              "choose another label, or ask its owner to share it with your group")
        return case

    def get_or_create_case(self, label: str, group: str | None = None) -> int:
        """Return the id of the case with ``label`` (stripped), creating it if needed (owned by the actor, shared with ``group``).

        Raises
        ------
        InputError
            If the label is empty or longer than 200 characters.
        AccessError
            If the actor is a viewer, is not in ``group``, or the label is taken by a case not shared with them.
        """
        label = _check_label(label)
        self._check_write("create cases")
        for _attempt in range(2):  # a concurrent writer may create the same label
            with self._write() as session, session.begin():
                case = self._case_for_write(session, label)
                if case is not None:
                    return case.id
                try:
                    return self._new_case(session, label, group, None).id
                except IntegrityError:
                    session.rollback()
                    continue
        raise StoreError(f"could not create case {label!r}: it was created and deleted concurrently; try again")

    def create_case(self, label: str, group: str | None = None) -> int:
        """Create a case (owned by the actor, shared with ``group``) and return its id.

        Raises
        ------
        InputError
            If the label is empty, too long, or a case with it exists already.
        AccessError
            If the actor is a viewer or not in ``group``.
        """
        label = _check_label(label)
        self._check_write("create cases")
        with self._write() as session, session.begin():
            if session.scalars(sa.select(Case.id).where(Case.label == label)).first() is not None:
                raise InputError(f"a case labelled {label!r} exists already; open it or pick another label")
            return self._new_case(session, label, group, None).id

    def list_cases(self, search: str | None = None) -> list[dict[str, Any]]:
        """Cases the actor sees as ``[{"id", "label", "created_at", "n_analyses", "owner", "group"}]``, newest first."""
        with self._read() as session:
            q = (
                sa.select(Case.id, Case.label, Case.created_at, Case.owner, Case.group_name, sa.func.count(Analysis.id))
                .outerjoin(Analysis, Analysis.case_id == Case.id)
                .group_by(Case.id, Case.label, Case.created_at, Case.owner, Case.group_name)
                .order_by(Case.created_at.desc(), Case.id.desc())
            )
            q = self._visible(q)
            if search:
                q = q.where(Case.label.ilike(f"%{_escape_like(search)}%", escape="\\"))
            return [
                {"id": i, "label": lab, "created_at": _iso(c), "n_analyses": n, "owner": owner, "group": group}
                for i, lab, c, owner, group, n in session.execute(q).all()
            ]

    def set_case_group(self, case_id: int, group: str | None) -> None:
        """Share a case with ``group`` (None: with nobody but its owner and the admins).

        Raises
        ------
        StoreError
            If there is no such case (or it is not shared with the actor).
        AccessError
            If the actor neither owns the case nor is an admin, or is not in ``group``.
        """
        with self._write() as session, session.begin():
            case = session.get(Case, case_id)
            if case is None or not self._sees(case):
                raise StoreError(f"case {case_id} does not exist (it may have been deleted in another session)")
            a = self.actor
            if a is not None and not a.is_admin and case.owner != a.name:
                raise AccessError(f"only the owner of case {case.label!r} ({case.owner or 'unknown'}) or an admin can "
                                  "change whom it is shared with")
            case.group_name = self._check_group(group)

    def delete_case(self, case_id: int) -> None:
        """Delete a case with all its analyses and files.

        Raises
        ------
        StoreError
            If there is no such case (or it is not shared with the actor).
        AccessError
            If the actor is neither an admin nor the analyst who owns the case.
        """
        with self._write() as session, session.begin():
            case = session.get(Case, case_id)
            if case is None or not self._sees(case):
                raise StoreError(f"case {case_id} does not exist (it may have been deleted in another session)")
            if not auth.can_delete(self.actor, case.owner):
                raise AccessError(f"only an admin or the analyst who owns case {case.label!r} can delete it")
            session.delete(case)

    # ---------------------------------------------------------------- analyses

    def reserve_analysis_id(self) -> int:
        """Hand out the id the next analysis saved with it (:meth:`save_analysis` ``analysis_id``) will have.

        One short transaction on a counter; nothing is visible until that save commits, and
        an id whose save never happens is simply never used.

        Raises
        ------
        AccessError
            If the actor is a viewer.
        """
        self._check_write("save analyses")
        with self._write() as session, session.begin():
            return self._next_analysis_id(session)

    @staticmethod
    def _next_analysis_id(session: Session) -> int:
        counter = session.execute(sa.select(IdCounter).where(IdCounter.name == "analyses").with_for_update()).scalar()
        top = session.scalar(sa.select(sa.func.max(Analysis.id))) or 0
        value = max(int(counter.next_value) if counter is not None else 1, int(top) + 1)
        if counter is None:
            session.add(IdCounter(name="analyses", next_value=value + 1))
        else:
            counter.next_value = value + 1
        session.flush()
        return value

    def save_analysis(
        self,
        case_label: str,
        summary: dict[str, Any],
        *,
        params: dict[str, Any] | None = None,
        spatial: dict[str, Any] | None = None,
        regions: Any = None,
        corrections: Any = None,
        n_corrections: int | None = None,
        model_card: dict[str, Any] | None = None,
        files: dict[str, bytes] | None = None,
        media_types: dict[str, str] | None = None,
        app_version: str | None = None,
        created_at: datetime | None = None,
        created_by: str | None = None,
        originals: dict[str, bytes] | None = None,
        analysis_id: int | None = None,
        group: str | None = None,
    ) -> int:
        """Save one analysis with its files under a case, creating the case if needed: all in one transaction.

        Parameters
        ----------
        case_label : str
            The case's label.
        summary : dict
            JSON-ready run summary (:mod:`core.outputs.records`); image name and SHA-256,
            scenario and weights SHA-256 are indexed from it.
        params, spatial : dict, optional
            Analysis parameters and thresholds; spatial statistics.
        regions : dict, optional
            Regions as a GeoJSON FeatureCollection.
        corrections : dict or list, optional
            The correction log as JSON data (``CorrectionLog.to_json()``).
        n_corrections : int, optional
            Number of manual corrections; counted from ``corrections`` if absent.
        model_card : dict, optional
            The scenario's model card at the time of the run (its intended use and
            limitations go into reports made later).
        files : dict of str to bytes, optional
            Exports, ``{file name: content}``.
        media_types : dict of str to str, optional
            Media type per file name; guessed from the extension otherwise.
        app_version : str, optional
            Default ``core.__version__``.
        created_at : datetime, optional
            Default now (UTC).
        created_by : str, optional
            Who ran the analysis (the user name; the actor's name when the store acts for
            one); recorded with it and in the audit log (action ``"analysis saved"``).
        originals : dict of str to bytes, optional
            Files kept as they are through any review, e.g. ``{SOURCE_IMAGE: png}``
            (:meth:`get_original`).
        analysis_id : int, optional
            An id from :meth:`reserve_analysis_id` (when the files name it); default a new one.
        group : str, optional
            The group a new case is shared with (one of the actor's groups; any, for an admin).

        Returns
        -------
        int
            The new analysis id.

        Raises
        ------
        InputError
            If the case label is empty, the user name is blank or too long, or a value is
            not JSON serialisable.
        AccessError
            If the actor is a viewer, is not in ``group``, or the case is not shared with them.
        StoreError
            If ``analysis_id`` is taken already.
        """
        self._check_write("save analyses")
        created_by = self._audit_user(created_by)
        if not isinstance(summary, dict):
            raise InputError(f"summary must be a dict (AnalysisResult.summary), got {type(summary).__name__}")
        payload = {
            "summary": summary, "params": params or {}, "spatial": spatial,
            "regions": regions, "corrections": corrections, "model_card": model_card,
        }
        try:
            payload = json.loads(json.dumps(payload, default=rec.json_default))
        except (TypeError, ValueError) as err:
            raise InputError(f"the analysis cannot be saved: {err}; pass JSON-ready dicts") from err
        if n_corrections is None:
            n_corrections = rec.count_corrections(payload["corrections"])
        label = _check_label(case_label)
        image = rec.image_info(summary)
        if created_at is not None and created_at.tzinfo is not None:
            created_at = created_at.astimezone(timezone.utc).replace(tzinfo=None)
        file_rows = [(name, data) for name, data in (files or {}).items()]
        for _attempt in range(2):  # a concurrent writer may create the same case label
            try:
                with self._write() as session, session.begin():
                    case = self._case_for_write(session, label) or self._new_case(session, label, group, created_by)
                    if analysis_id is not None and session.get(Analysis, analysis_id) is not None:
                        raise StoreError(f"analysis id {analysis_id} is taken already; reserve a new one")
                    aid = analysis_id if analysis_id is not None else self._next_analysis_id(session)
                    analysis = Analysis(
                        id=aid,
                        case_id=case.id,
                        image_sha256=image["sha256"],
                        image_name=image["name"],
                        scenario_key=rec.scenario_key(summary),
                        weights_sha256=summary.get("weights_sha256"),
                        params=payload["params"],
                        summary=payload["summary"],
                        spatial=payload["spatial"],
                        regions=payload["regions"],
                        corrections=payload["corrections"],
                        n_corrections=n_corrections,
                        model_card=payload["model_card"],
                        app_version=app_version or core.__version__,
                        created_at=created_at or utcnow(),
                        created_by=created_by,
                        complete=True,
                    )
                    session.add(analysis)
                    session.flush()
                    for name, data in file_rows:
                        session.add(_file_row(aid, name, data, media_types))
                    for name, data in (originals or {}).items():
                        session.add(_original_row(aid, name, data, media_types))
                    counts = rec.counts(summary)
                    session.add(AuditEvent(
                        analysis_id=aid, case_label=label, user=created_by or "unknown",
                        time=utcnow(), action="analysis saved",
                        detail={"scenario": analysis.scenario_key, "image": image["name"], "n_cells": sum(counts.values()),
                                "counts": counts},
                    ))
                    session.flush()
                return aid
            except IntegrityError:
                if _attempt:
                    raise
        raise AssertionError("unreachable")

    def add_files(self, analysis_id: int, files: dict[str, bytes], media_types: dict[str, str] | None = None) -> None:
        """Add or replace exported files of an analysis (one transaction).

        Raises
        ------
        StoreError
            If the analysis does not exist (or is not shared with the actor).
        AccessError
            If the actor is a viewer.
        """
        self._check_write("change analyses")
        with self._write() as session, session.begin():
            self._analysis(session, analysis_id)
            names = list(files)
            session.execute(
                sa.delete(AnalysisFile).where(AnalysisFile.analysis_id == analysis_id, AnalysisFile.name.in_(names))
            )
            for name, data in files.items():
                session.add(_file_row(analysis_id, name, data, media_types))

    def save_originals(self, analysis_id: int, files: dict[str, bytes], media_types: dict[str, str] | None = None) -> None:
        """Add or replace files kept as the analysis was before review (e.g. the analysed image).

        Raises
        ------
        StoreError
            If the analysis does not exist (or is not shared with the actor).
        AccessError
            If the actor is a viewer.
        """
        self._check_write("change analyses")
        with self._write() as session, session.begin():
            self._analysis(session, analysis_id)
            session.execute(sa.delete(AnalysisOriginal).where(
                AnalysisOriginal.analysis_id == analysis_id, AnalysisOriginal.name.in_(list(files))))
            for name, data in files.items():
                session.add(_original_row(analysis_id, name, data, media_types))

    def get_original(self, analysis_id: int, name: str) -> bytes:
        """The bytes of one original (:data:`SOURCE_IMAGE`, or an export as it was before review).

        Raises
        ------
        StoreError
            If the analysis has no original of that name (e.g. it was saved before
            TILscope kept originals, or has not been reviewed), or is not shared with the actor.
        """
        with self._read() as session:
            self._analysis(session, analysis_id)
            data = session.scalars(sa.select(AnalysisOriginal.data).where(
                AnalysisOriginal.analysis_id == analysis_id, AnalysisOriginal.name == name)).first()
        if data is None:
            raise StoreError(f"analysis {analysis_id} has no original {name!r}")
        return bytes(data)

    def update_review(
        self,
        analysis_id: int,
        *,
        regions: Any,
        corrections: Any,
        n_corrections: int | None = None,
        spatial: dict[str, Any] | None = None,
        summary: dict[str, Any] | None = None,
        files: dict[str, bytes] | None = None,
        user: str | None = None,
        comment: str | None = None,
        events: list[dict[str, Any]] | None = None,
        params: dict[str, Any] | None = None,
    ) -> None:
        """Save the review of an analysis: its regions, manual corrections, numbers and files again.

        One transaction. The first time an analysis is reviewed, its summary and
        statistics are kept as ``detected_summary`` / ``detected_spatial`` and its export
        files as originals (:meth:`get_original`), so the analysis as detected is never
        lost; later reviews replace only the reviewed state.

        Parameters
        ----------
        analysis_id : int
        regions : dict or None
            Regions as a GeoJSON FeatureCollection (``core.spatial.regions.regions_to_geojson``).
        corrections : dict or None
            The correction log as JSON data (``json.loads(CorrectionLog.to_json())``).
        n_corrections : int, optional
            Cells corrected by hand; counted from ``corrections`` if absent.
        spatial : dict, optional
            Spatial statistics recomputed on the corrected cells; None keeps the stored ones.
        summary : dict, optional
            The run summary with corrected counts; None keeps the stored one.
        files : dict of str to bytes, optional
            Exports of the reviewed analysis, replacing those of the same name.
        user : str, optional
            The reviewer; recorded as ``reviewed_by`` with ``reviewed_at`` (now, UTC) and in
            the audit log (action ``"review saved"``, with ``comment``).
        comment : str, optional
            Why the review was made or changed (free text, kept in the audit log).
        events : list of dict, optional
            Audit entries of the edits saved with this review, each ``{"user", "time" (ISO
            8601 or datetime), "action" (one of :data:`AUDIT_ACTIONS`), "detail" (dict),
            "comment"}``.
        params : dict, optional
            The analysis parameters and thresholds (e.g. with the review's spatial
            thresholds); None keeps the stored ones.

        Raises
        ------
        StoreError
            If there is no such analysis (or it is not shared with the actor).
        InputError
            If a value is not JSON serialisable, the user name is blank or too long, or an
            event's action is unknown.
        AccessError
            If the actor is a viewer.
        """
        self._check_write("save reviews")
        payload = {"regions": regions, "corrections": corrections, "spatial": spatial, "summary": summary,
                   "events": events or [], "params": params}
        try:
            payload = json.loads(json.dumps(payload, default=rec.json_default))
        except (TypeError, ValueError) as err:
            raise InputError(f"the review cannot be saved: {err}; pass JSON-ready dicts") from err
        if n_corrections is None:
            n_corrections = rec.count_corrections(payload["corrections"])
        user = self._audit_user(user)
        rows = [_event_row(analysis_id, None, e) for e in payload["events"]]
        now = utcnow()
        with self._write() as session, session.begin():
            a = self._analysis(session, analysis_id)
            if a.detected_summary is None:  # first review: keep the analysis as detected
                a.detected_summary = a.summary
                a.detected_spatial = a.spatial
                kept = set(session.scalars(sa.select(AnalysisOriginal.name).where(
                    AnalysisOriginal.analysis_id == analysis_id)).all())
                for f in session.scalars(sa.select(AnalysisFile).where(AnalysisFile.analysis_id == analysis_id)
                                         .options(sa.orm.undefer(AnalysisFile.data))).all():
                    if f.name not in kept:
                        session.add(AnalysisOriginal(analysis_id=analysis_id, name=f.name, media_type=f.media_type,
                                                     size_bytes=f.size_bytes, data=f.data, created_at=now))
            a.regions = payload["regions"]
            a.corrections = payload["corrections"]
            a.n_corrections = n_corrections
            if payload["spatial"] is not None:
                a.spatial = payload["spatial"]
            if payload["summary"] is not None:
                a.summary = payload["summary"]
            if payload["params"] is not None:
                a.params = payload["params"]
            if user is not None:
                a.reviewed_by, a.reviewed_at = user, now
            if files:
                session.execute(sa.delete(AnalysisFile).where(
                    AnalysisFile.analysis_id == analysis_id, AnalysisFile.name.in_(list(files))))
                session.flush()
                for name, data in files.items():
                    session.add(_file_row(analysis_id, name, data, None))
            for row in rows:
                row.case_label = a.case.label
                session.add(row)
            if user is not None:
                session.add(AuditEvent(
                    analysis_id=analysis_id, case_label=a.case.label, user=user, time=now, action="review saved",
                    detail={"n_corrections": n_corrections, "n_cells": (a.summary or {}).get("n_cells"),
                            "n_regions": len((payload["regions"] or {}).get("features") or [])},
                    comment=(comment or "").strip() or None,
                ))

    def add_audit_events(self, analysis_id: int | None, events: list[dict[str, Any]], case_label: str | None = None) -> None:
        """Append entries to the audit log (see :meth:`update_review` for their keys).

        Raises
        ------
        InputError
            If an entry has no user, an unknown action or an unreadable time.
        AccessError
            If the actor is a viewer.
        """
        self._check_write("change analyses")
        rows = [_event_row(analysis_id, case_label, e) for e in json.loads(json.dumps(events, default=rec.json_default))]
        with self._write() as session, session.begin():
            if analysis_id is not None:
                self._analysis(session, analysis_id)
            for row in rows:
                session.add(row)

    def audit_log(self, analysis_id: int | None = None, limit: int = 1000) -> list[dict[str, Any]]:
        """The audit log, newest first (in the order written, which is the order things happened).

        Returns
        -------
        list of dict
            ``{"id", "analysis_id", "case_label", "user", "time" (ISO 8601, UTC), "action",
            "detail", "comment"}``; only one analysis's entries when ``analysis_id`` is given;
            for a user who is not an admin, only the entries of cases shared with them.
        """
        with self._read() as session:
            # Entries are written in the order things happened (an edit's time has whole seconds only).
            q = sa.select(AuditEvent).order_by(AuditEvent.id.desc()).limit(limit)
            if analysis_id is not None:
                q = q.where(AuditEvent.analysis_id == analysis_id)
            if self.actor is not None and not self.actor.is_admin:
                q = q.where(AuditEvent.case_label.in_(self._visible(sa.select(Case.label))))
            return [
                {"id": e.id, "analysis_id": e.analysis_id, "case_label": e.case_label, "user": e.user,
                 "time": _iso(e.time), "action": e.action, "detail": e.detail, "comment": e.comment}
                for e in session.scalars(q).all()
            ]

    def list_analyses(self, search: str | None = None, case_id: int | None = None, limit: int = 500) -> list[dict[str, Any]]:
        """Analyses, newest first, as rows for a table.

        Parameters
        ----------
        search : str, optional
            Case-insensitive substring of the case label, image name, image SHA-256
            or scenario key.
        case_id : int, optional
            Only this case's analyses.
        limit : int
            At most this many rows.

        Returns
        -------
        list of dict
            ``{"id", "case_id", "case_label", "image_name", "image_sha256",
            "scenario_key", "created_at" (ISO 8601, UTC), "counts", "kind" ("field" or "slide"), "n_corrections",
            "created_by", "reviewed_by", "reviewed_at", "complete" (always True: a save is
            complete or absent), "owner", "group"}`` (users None when unknown), of the cases the
            actor sees.
        """
        with self._read() as session:
            q = self._visible(
                sa.select(Analysis, Case.label, Case.owner, Case.group_name)
                .join(Case, Case.id == Analysis.case_id)
                .where(Analysis.complete.is_not(False))
                .order_by(Analysis.created_at.desc(), Analysis.id.desc())
                .limit(limit)
            )
            if case_id is not None:
                q = q.where(Analysis.case_id == case_id)
            if search:
                pattern = f"%{_escape_like(search.strip())}%"
                q = q.where(
                    sa.or_(
                        Case.label.ilike(pattern, escape="\\"),
                        Analysis.image_name.ilike(pattern, escape="\\"),
                        Analysis.image_sha256.ilike(pattern, escape="\\"),
                        Analysis.scenario_key.ilike(pattern, escape="\\"),
                    )
                )
            return [
                {
                    "id": a.id,
                    "case_id": a.case_id,
                    "case_label": label,
                    "image_name": a.image_name,
                    "image_sha256": a.image_sha256,
                    "scenario_key": a.scenario_key,
                    "created_at": _iso(a.created_at),
                    "counts": rec.counts(a.summary or {}),
                    "kind": (a.summary or {}).get("kind") or "field",
                    "n_corrections": a.n_corrections,
                    "created_by": a.created_by,
                    "reviewed_by": a.reviewed_by,
                    "reviewed_at": _iso(a.reviewed_at),
                    "complete": a.complete is not False,
                    "owner": owner,
                    "group": group,
                }
                for a, label, owner, group in session.execute(q).all()
            ]

    def get_analysis(self, analysis_id: int) -> dict[str, Any]:
        """All stored fields of one analysis, plus ``case_label``, ``files`` and ``originals`` (names and sizes).

        ``summary`` / ``spatial`` are the current (reviewed, once reviewed) ones;
        ``detected_summary`` / ``detected_spatial`` those before the first review (None
        until then); ``originals`` lists what :meth:`get_original` reads; ``complete`` is
        always True (a save is complete or absent); ``owner`` and ``group`` are its case's.

        Raises
        ------
        StoreError
            If there is no such analysis, or it is not shared with the actor.
        """
        with self._read() as session:
            a = self._analysis(session, analysis_id, selectinload(Analysis.files), selectinload(Analysis.originals))
            return {
                "id": a.id,
                "case_id": a.case_id,
                "case_label": a.case.label,
                "image_sha256": a.image_sha256,
                "image_name": a.image_name,
                "scenario_key": a.scenario_key,
                "weights_sha256": a.weights_sha256,
                "params": a.params or {},
                "summary": a.summary or {},
                "spatial": a.spatial,
                "regions": a.regions,
                "corrections": a.corrections,
                "n_corrections": a.n_corrections,
                "note": a.note,
                "model_card": a.model_card,
                "app_version": a.app_version,
                "created_at": _iso(a.created_at),
                "created_by": a.created_by,
                "reviewed_by": a.reviewed_by,
                "reviewed_at": _iso(a.reviewed_at),
                "detected_summary": a.detected_summary,
                "detected_spatial": a.detected_spatial,
                "complete": a.complete is not False,
                "owner": a.case.owner,
                "group": a.case.group_name,
                "files": [
                    {"name": f.name, "media_type": f.media_type, "size_bytes": f.size_bytes}
                    for f in sorted(a.files, key=lambda f: f.name)
                ],
                "originals": [
                    {"name": f.name, "media_type": f.media_type, "size_bytes": f.size_bytes}
                    for f in sorted(a.originals, key=lambda f: f.name)
                ],
            }

    def get_record(self, analysis_id: int) -> dict[str, Any]:
        """The analysis as a record (:mod:`core.outputs.records`) for the reports (:mod:`core.outputs`).

        Raises
        ------
        StoreError
            If there is no such analysis.
        """
        a = self.get_analysis(analysis_id)
        return {
            "summary": a["summary"],
            "spatial": a["spatial"],
            "n_corrections": a["n_corrections"],
            "corrections": a["corrections"],
            "case_label": a["case_label"],
            "created_at": a["created_at"],
            "analysis_id": a["id"],
            "app_version": a["app_version"],
            "params": a["params"],
            "regions": a["regions"],
            "model_card": a["model_card"],
            "created_by": a["created_by"],
            "reviewed_by": a["reviewed_by"],
            "reviewed_at": a["reviewed_at"],
        }

    def get_file(self, analysis_id: int, name: str) -> bytes:
        """The bytes of one stored file.

        Raises
        ------
        StoreError
            If the analysis has no file of that name, or is not shared with the actor.
        """
        with self._read() as session:
            self._analysis(session, analysis_id)
            data = session.scalars(
                sa.select(AnalysisFile.data).where(AnalysisFile.analysis_id == analysis_id, AnalysisFile.name == name)
            ).first()
        if data is None:
            raise StoreError(f"analysis {analysis_id} has no file {name!r}")
        return bytes(data)

    def set_note(self, analysis_id: int, note: str | None, user: str | None = None) -> None:
        """Set the tumour-board note of an analysis (with ``user``, an audit entry ``"note"``).

        Raises
        ------
        StoreError
            If there is no such analysis (or it is not shared with the actor).
        AccessError
            If the actor is a viewer.
        """
        self._check_write("write notes")
        user = self._audit_user(user)
        with self._write() as session, session.begin():
            a = self._analysis(session, analysis_id)
            a.note = note
            if user is not None:
                session.add(AuditEvent(analysis_id=analysis_id, case_label=a.case.label, user=user, time=utcnow(),
                                       action="note", detail={"note": note}))

    def delete_analysis(self, analysis_id: int, user: str | None = None, comment: str | None = None) -> None:
        """Delete an analysis and its files (the case stays); the audit log keeps an entry saying who and why.

        Raises
        ------
        StoreError
            If there is no such analysis (or it is not shared with the actor).
        AccessError
            If the actor is neither an admin nor the analyst who owns the analysis (ran it, or owns its case).
        """
        user = self._audit_user(user)
        with self._write() as session, session.begin():
            a = self._analysis(session, analysis_id)
            if not auth.can_delete(self.actor, a.case.owner, a.created_by):
                raise AccessError(f"only an admin, or the analyst who ran analysis {analysis_id} or owns its case, "
                                  "can delete it")
            session.add(AuditEvent(analysis_id=analysis_id, case_label=a.case.label, user=user or "unknown",
                                   time=utcnow(), action="analysis deleted",
                                   detail={"image": a.image_name, "scenario": a.scenario_key},
                                   comment=(comment or "").strip() or None))
            session.delete(a)


# --------------------------------------------------------------------------- helpers


def _file_row(analysis_id: int, name: str, data: bytes, media_types: dict[str, str] | None) -> AnalysisFile:
    name = Path(str(name)).name
    if not name:
        raise InputError("a stored file needs a name, e.g. 'report.pdf'")
    media = (media_types or {}).get(name) or media_type(name)
    data = bytes(data)
    return AnalysisFile(analysis_id=analysis_id, name=name, media_type=media, size_bytes=len(data), data=data)


def _original_row(analysis_id: int, name: str, data: bytes, media_types: dict[str, str] | None) -> AnalysisOriginal:
    f = _file_row(analysis_id, name, data, media_types)
    return AnalysisOriginal(analysis_id=analysis_id, name=f.name, media_type=f.media_type, size_bytes=f.size_bytes,
                            data=f.data, created_at=utcnow())


def _event_row(analysis_id: int | None, case_label: str | None, event: dict[str, Any]) -> AuditEvent:
    if not isinstance(event, dict):
        raise InputError(f"an audit entry must be a dict, got {type(event).__name__}")
    action = event.get("action")
    if action not in AUDIT_ACTIONS:
        raise InputError(f"audit action {action!r} is not one of {list(AUDIT_ACTIONS)}")
    when = event.get("time")
    if when is None:
        t = utcnow()
    else:
        try:
            t = when if isinstance(when, datetime) else datetime.fromisoformat(str(when))
        except ValueError as err:
            raise InputError(f"audit time {when!r} is not ISO 8601 (e.g. 2026-01-31T14:05:00+00:00)") from err
        if t.tzinfo is not None:
            t = t.astimezone(timezone.utc).replace(tzinfo=None)
    detail = event.get("detail")
    return AuditEvent(analysis_id=analysis_id, case_label=case_label, user=check_user(event.get("user")), time=t,
                      action=action, detail=detail if isinstance(detail, dict) else None,
                      comment=(str(event.get("comment") or "").strip() or None))


def check_user(user: Any) -> str:
    """A user name as recorded: stripped, 1 to :data:`USER_MAX_CHARS` printable characters.

    Raises
    ------
    InputError
        If it is blank, too long or holds control characters.
    """
    text = " ".join(str(user or "").split())
    if not text:
        raise InputError("the user name is empty: enter your name (it is recorded with every analysis and correction)")
    if len(text) > USER_MAX_CHARS:
        raise InputError(f"the user name has {len(text)} characters; use at most {USER_MAX_CHARS}")
    if not text.isprintable():
        raise InputError("the user name holds control characters: type it again with letters, digits and spaces")
    return text


def _check_label(label: Any) -> str:
    text = str(label or "").strip()
    if not text:
        raise InputError("the case label is empty: enter a case or specimen label, e.g. 'B-2024-0113'")
    if len(text) > 200:
        raise InputError(f"the case label has {len(text)} characters; use at most 200")
    return text


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.isoformat(timespec="seconds")
