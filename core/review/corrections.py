"""Manual correction of detected cells: an edit log that is saved with the analysis.

The detections are never modified. A :class:`CorrectionLog` records edits (add a
missed cell, delete a detection, relabel a cell), each with who made it (the user name),
when (UTC, ISO 8601) and optionally why (a comment); :meth:`CorrectionLog.apply` replays the active
edits on the original cell table. Undo marks the latest active edit as undone (it stays
in the log, so the record of what happened is complete).

Cell ids: a detected cell's ``cell_id`` is its row position in the original table
(0, 1, 2, ...) unless the table already has a ``cell_id`` column; cells added by hand
get negative ids (-1, -2, ...) so they never collide with detections.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pandas as pd

from core.cells import CELL_COLUMNS, ROLES
from core.errors import InputError

EDIT_OPS = ("add", "delete", "relabel")
_SCHEMA = "tilscope.corrections/1"


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _time_iso(time: datetime | str | None) -> str:
    if time is None:
        return _now_iso()
    if isinstance(time, datetime):
        return (time if time.tzinfo else time.replace(tzinfo=timezone.utc)).isoformat(timespec="seconds")
    if isinstance(time, str):
        try:
            datetime.fromisoformat(time)
        except ValueError as err:
            raise InputError(f"edit time {time!r} is not ISO 8601 (e.g. 2026-01-31T14:05:00+00:00)") from err
        return time
    raise InputError(f"edit time must be a datetime or an ISO 8601 string, got {type(time).__name__}")


def _comment(text: str | None) -> str | None:
    text = " ".join(str(text or "").split())
    return text or None


def _check_role(role: str) -> str:
    if role not in ROLES:
        raise InputError(f"role {role!r} is not allowed: choose one of {list(ROLES)}")
    return role


@dataclass
class Edit:
    """One manual edit.

    Attributes
    ----------
    op : str
        ``"add"``, ``"delete"`` or ``"relabel"``.
    cell_id : int
        The edited cell (negative for cells added by hand).
    user : str
        User who made the edit.
    time : str
        When, ISO 8601 (UTC unless the caller gave a zone).
    x_px, y_px, x_um, y_um : float or None
        Position of an added cell (µm None/NaN when the image has no mpp).
    cell_class, role : str or None
        Class and role of an added or relabelled cell.
    undone : bool
        True once undone; ``undone_by`` and ``undone_time`` say by whom and when.
    comment : str or None
        Why the edit was made (free text, optional).
    from_class, from_role : str or None
        The class and role a deleted or relabelled cell had before the edit, when the
        caller knew them (for the audit log).
    """

    op: str
    cell_id: int
    user: str
    time: str
    x_px: float | None = None
    y_px: float | None = None
    x_um: float | None = None
    y_um: float | None = None
    cell_class: str | None = None
    role: str | None = None
    undone: bool = False
    undone_by: str | None = None
    undone_time: str | None = None
    comment: str | None = None
    from_class: str | None = None
    from_role: str | None = None


@dataclass
class CorrectionLog:
    """Every manual correction of one analysis, in order.

    Attributes
    ----------
    edits : list of Edit
        All edits, undone ones included (``undone=True``).

    Examples
    --------
    >>> log = CorrectionLog()
    >>> new_id = log.add_cell(120.0, 80.5, "cd3-positive", "immune", mpp=0.5, user="Dr Ana Silva")
    >>> log.relabel_cell(3, "cd3-negative", "other", user="Dr Ana Silva", comment="DAB in the stroma, not a cell")
    >>> log.undo(user="Dr Ana Silva")  # the relabel is undone
    >>> corrected = log.apply(cells)  # doctest: +SKIP
    """

    edits: list[Edit] = field(default_factory=list)

    # -- recording
    def _active(self) -> list[Edit]:
        return [e for e in self.edits if not e.undone]

    def _next_added_id(self) -> int:
        used = [e.cell_id for e in self.edits if e.op == "add"]
        return min(used, default=0) - 1

    def add_cell(
        self,
        x_px: float,
        y_px: float,
        cell_class: str,
        role: str,
        mpp: float | None,
        user: str = "unknown",
        time: datetime | str | None = None,
        comment: str | None = None,
    ) -> int:
        """Record a cell the detector missed.

        Parameters
        ----------
        x_px, y_px : float
            Centroid in pixels of the analysed image (x = column), finite.
        cell_class : str
            Class name, e.g. ``"cd3-positive"``.
        role : str
            One of :data:`core.cells.ROLES`.
        mpp : float > 0 or None
            Microns per pixel; None leaves the µm position NaN.
        user : str
            User making the edit.
        time : datetime or ISO 8601 str, optional
            When; default now (UTC).
        comment : str, optional
            Why (kept in the log and the audit log).

        Returns
        -------
        int
            The new cell's id (negative).

        Raises
        ------
        InputError
            If coordinates are not finite, the role is unknown or mpp is not positive.
        """
        try:
            x, y = float(x_px), float(y_px)
        except (TypeError, ValueError) as err:
            raise InputError(f"cell position must be numbers in pixels, got ({x_px!r}, {y_px!r})") from err
        if not (math.isfinite(x) and math.isfinite(y)):
            raise InputError(f"cell position must be finite pixels, got ({x_px!r}, {y_px!r})")
        _check_role(role)
        if mpp is not None and not (isinstance(mpp, (int, float)) and math.isfinite(mpp) and mpp > 0):
            raise InputError(f"mpp must be a positive number of microns per pixel or None, got {mpp!r}")
        cid = self._next_added_id()
        self.edits.append(
            Edit(
                op="add", cell_id=cid, user=str(user), time=_time_iso(time), x_px=x, y_px=y,
                x_um=None if mpp is None else x * float(mpp), y_um=None if mpp is None else y * float(mpp),
                cell_class=str(cell_class), role=role, comment=_comment(comment),
            )
        )
        return cid

    def delete_cell(
        self, cell_id: int, user: str = "unknown", time: datetime | str | None = None, comment: str | None = None,
        from_class: str | None = None, from_role: str | None = None,
    ) -> None:
        """Record that a detected (or added) cell is not a cell.

        ``comment`` says why; ``from_class`` / ``from_role`` the cell's class and role
        before the deletion (for the audit log).

        Raises
        ------
        InputError
            If ``cell_id`` is not an integer or is already deleted.
        """
        cid = self._check_id(cell_id)
        if any(e.op == "delete" and e.cell_id == cid for e in self._active()):
            raise InputError(f"cell {cid} is already deleted")
        self.edits.append(Edit(op="delete", cell_id=cid, user=str(user), time=_time_iso(time), comment=_comment(comment),
                               from_class=from_class, from_role=from_role))

    def relabel_cell(
        self, cell_id: int, new_class: str, new_role: str, user: str = "unknown", time: datetime | str | None = None,
        comment: str | None = None, from_class: str | None = None, from_role: str | None = None,
    ) -> None:
        """Record a new class and role for a cell.

        ``comment`` says why; ``from_class`` / ``from_role`` the class and role before
        (for the audit log).

        Raises
        ------
        InputError
            If ``cell_id`` is not an integer or deleted, or ``new_role`` is unknown.
        """
        cid = self._check_id(cell_id)
        _check_role(new_role)
        if any(e.op == "delete" and e.cell_id == cid for e in self._active()):
            raise InputError(f"cell {cid} is deleted: undo the deletion before relabelling it")
        self.edits.append(
            Edit(op="relabel", cell_id=cid, user=str(user), time=_time_iso(time), cell_class=str(new_class), role=new_role,
                 comment=_comment(comment), from_class=from_class, from_role=from_role)
        )

    def undo(self, user: str = "unknown", time: datetime | str | None = None) -> Edit | None:
        """Undo the latest active edit (it stays in the log, marked undone).

        Returns
        -------
        Edit or None
            The edit undone, or None when there is nothing to undo.
        """
        for e in reversed(self.edits):
            if not e.undone:
                e.undone, e.undone_by, e.undone_time = True, str(user), _time_iso(time)
                return e
        return None

    @staticmethod
    def _check_id(cell_id: Any) -> int:
        if isinstance(cell_id, (bool, np.bool_)) or not isinstance(cell_id, (int, np.integer)):
            raise InputError(f"cell_id must be an integer, got {cell_id!r}")
        return int(cell_id)

    # -- replay
    def apply(self, cells: pd.DataFrame) -> pd.DataFrame:
        """Return the corrected cell table.

        Parameters
        ----------
        cells : pandas.DataFrame
            The original detections (:data:`core.cells.CELL_COLUMNS`), as the scenario
            produced them.

        Returns
        -------
        pandas.DataFrame
            A new table: deleted cells removed, relabelled cells with their new
            ``cell_class``/``role``, added cells appended (``probability`` 1.0), plus
            ``cell_id`` (int64) and ``edited`` (str: ``""``, ``"added"`` or
            ``"relabelled"``). The input is not modified.

        Raises
        ------
        InputError
            If an edit refers to a cell id that is not in the table.
        """
        out = cells.copy()
        if "cell_id" not in out.columns:
            out["cell_id"] = np.arange(len(out), dtype=np.int64)
        out["cell_id"] = out["cell_id"].astype(np.int64)
        out["edited"] = ""
        out = out.reset_index(drop=True)
        if out["cell_id"].duplicated().any():
            raise InputError("the cell table has duplicate cell_id values: ids must be unique")
        pos = {int(c): i for i, c in enumerate(out["cell_id"].to_numpy())}
        added_rows: dict[int, dict] = {}
        deleted: set[int] = set()
        for e in self._active():
            if e.op == "add":
                added_rows[e.cell_id] = {
                    "x_px": e.x_px, "y_px": e.y_px,
                    "x_um": np.nan if e.x_um is None else e.x_um, "y_um": np.nan if e.y_um is None else e.y_um,
                    "cell_class": e.cell_class, "role": e.role, "probability": 1.0,
                    "cell_id": e.cell_id, "edited": "added",
                }
                continue
            if e.cell_id in added_rows:
                if e.op == "delete":
                    del added_rows[e.cell_id]
                else:
                    added_rows[e.cell_id].update(cell_class=e.cell_class, role=e.role)
                continue
            if e.cell_id not in pos:
                raise InputError(
                    f"correction {e.op} refers to cell {e.cell_id}, which is not in this cell table "
                    "(was the log saved with another analysis?)"
                )
            i = pos[e.cell_id]
            if e.op == "delete":
                deleted.add(i)
            else:
                out.at[i, "cell_class"] = e.cell_class
                out.at[i, "role"] = e.role
                out.at[i, "edited"] = "relabelled"
        if deleted:
            out = out.drop(index=sorted(deleted))
        if added_rows:
            extra = pd.DataFrame(list(added_rows.values()))
            out = pd.concat([out, extra], ignore_index=True)
        out = out.reset_index(drop=True)
        out["cell_id"] = out["cell_id"].astype(np.int64)
        out["edited"] = out["edited"].astype(object)
        cols = [c for c in CELL_COLUMNS if c in out.columns] + [c for c in out.columns if c not in CELL_COLUMNS]
        return out[cols]

    # -- summaries
    def summary(self) -> dict:
        """Counts of the net effect of the active edits (JSON-ready).

        Returns
        -------
        dict
            ``n_added`` (added and not deleted), ``n_deleted`` (detections removed),
            ``n_relabelled`` (detections relabelled, not deleted), ``n_corrections``
            (their sum: cells corrected by hand), ``n_edits`` (all recorded edits,
            undone included), ``n_undone``, ``users``, ``first_time``, ``last_time``.
        """
        added: set[int] = set()
        deleted: set[int] = set()
        relabelled: set[int] = set()
        for e in self._active():
            if e.op == "add":
                added.add(e.cell_id)
            elif e.op == "delete":
                if e.cell_id in added:
                    added.discard(e.cell_id)
                else:
                    deleted.add(e.cell_id)
                    relabelled.discard(e.cell_id)
            elif e.cell_id not in added:
                relabelled.add(e.cell_id)
        times = [e.time for e in self.edits]
        return {
            "n_added": len(added),
            "n_deleted": len(deleted),
            "n_relabelled": len(relabelled),
            "n_corrections": len(added) + len(deleted) + len(relabelled),
            "n_edits": len(self.edits),
            "n_undone": sum(e.undone for e in self.edits),
            "users": sorted({e.user for e in self.edits}),
            "first_time": min(times) if times else None,
            "last_time": max(times) if times else None,
        }

    @property
    def n_corrections(self) -> int:
        """Cells corrected by hand: added + deleted + relabelled, net of undo."""
        return self.summary()["n_corrections"]

    @property
    def can_undo(self) -> bool:
        """True when there is an active edit to undo."""
        return any(not e.undone for e in self.edits)

    # -- persistence
    def to_dict(self) -> dict:
        """JSON-ready dict: ``{"schema": ..., "edits": [...], "summary": {...}}``."""
        edits = []
        for e in self.edits:
            d = asdict(e)
            for k in ("x_px", "y_px", "x_um", "y_um"):
                if isinstance(d[k], float) and not math.isfinite(d[k]):
                    d[k] = None
            edits.append(d)
        return {"schema": _SCHEMA, "edits": edits, "summary": self.summary()}

    def to_json(self) -> str:
        """The log as JSON text (UTF-8 safe), to save beside the analysis."""
        return json.dumps(self.to_dict(), ensure_ascii=False, allow_nan=False)

    @classmethod
    def from_json(cls, source: str | bytes | dict) -> "CorrectionLog":
        """Rebuild a log from :meth:`to_json` text (or its dict).

        Raises
        ------
        InputError
            If the text is not JSON or an edit is malformed.
        """
        if isinstance(source, bytes):
            source = source.decode("utf-8")
        if isinstance(source, str):
            try:
                data = json.loads(source)
            except json.JSONDecodeError as err:
                raise InputError(f"correction log is not valid JSON: {err}") from err
        else:
            data = source
        if not isinstance(data, dict) or not isinstance(data.get("edits"), list):
            raise InputError("correction log must be a JSON object with an 'edits' list (as CorrectionLog.to_json writes)")
        known = set(Edit.__dataclass_fields__)
        edits = []
        for k, d in enumerate(data["edits"]):
            if not isinstance(d, dict) or d.get("op") not in EDIT_OPS or "cell_id" not in d:
                raise InputError(f"correction {k} is malformed: needs 'op' in {list(EDIT_OPS)} and 'cell_id'")
            if d.get("role") is not None:
                _check_role(d["role"])
            e = Edit(**{key: v for key, v in d.items() if key in known})
            e.cell_id = int(e.cell_id)
            edits.append(e)
        return cls(edits=edits)
