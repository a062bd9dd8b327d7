"""Cell tables written by TILscope or exported from QuPath, read into the table of :mod:`core.cells`.

:func:`read_cell_table_csv` reads a TILscope ``cells.csv`` or a QuPath detection
measurement export (tab- or comma-separated) and says which column became which field;
:func:`read_cell_table` reads the same tables, or TILscope's ``cells.parquet``, by suffix;
:func:`class_to_role` maps class names such as QuPath's ``"Tumor"``, ``"Immune cells"``
or ``"Tumor: Positive"`` to the roles of :data:`core.cells.ROLES` by
:data:`CLASS_ROLE_RULES`, so :func:`core.spatial.compute_spatial_stats` can run on
detections made elsewhere.

References
----------
.. [1] Bankhead P. et al. "QuPath: Open source software for digital pathology image
   analysis." Sci Rep 7, 16878 (2017); QuPath docs, "Exporting measurements"
   (``Centroid X µm``, ``Centroid Y µm``, ``Class`` columns).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from core.cells import ROLES
from core.errors import InputError

#: Most rows read from a Parquet cell table (checked from its footer before reading): 10
#: million cells, about what the 1 GiB limit on a CSV table (``core.cli.MAX_CELL_TABLE_BYTES``) lets in.
MAX_PARQUET_ROWS = 10_000_000

_IMMUNE_WORDS = {
    "til", "tils", "immune", "lymphocyte", "lymphocytes", "lymphoid", "cd3", "cd4", "cd8", "cd20", "cd45",
    "tcell", "bcell", "plasma", "inflammatory", "leukocyte", "leukocytes", "positive",
}
_TUMOUR_WORDS = {"tumor", "tumour", "neoplastic", "cancer", "carcinoma", "malignant"}
_STROMA_WORDS = {"stroma", "stromal", "fibroblast", "fibroblasts", "connective", "endothelial", "endothelium"}

#: How class names map to roles (checked in this order, case-insensitive, on the words
#: of the name, base class before ":" first): tumour words → "tumour"; stroma words →
#: "stroma"; a name containing "negative" → "other"; immune words (lymphocyte, immune,
#: TIL, CD3/CD4/CD8/CD20/CD45, T/B cell, plasma, inflammatory, and QuPath's bare
#: "Positive" of a positive-cell detection on a lymphocyte marker) → "immune";
#: anything else, including unclassified → "other".
CLASS_ROLE_RULES = (
    ("tumour", sorted(_TUMOUR_WORDS)),
    ("stroma", sorted(_STROMA_WORDS)),
    ("other", ["negative"]),
    ("immune", sorted(_IMMUNE_WORDS)),
)


def class_to_role(name: str) -> str:
    """Role of a class name by :data:`CLASS_ROLE_RULES` (unknown → ``"other"``).

    Parameters
    ----------
    name : str
        E.g. ``"Tumor"``, ``"Immune cells"``, ``"cd3-positive"``, ``"Tumor: Positive"``.

    Returns
    -------
    str
        One of :data:`core.cells.ROLES`.
    """
    s = str(name or "").strip().lower()
    if s in ("", "nan", "none", "unclassified"):
        return "other"
    s = s.replace("t cell", "tcell").replace("t-cell", "tcell").replace("b cell", "bcell").replace("b-cell", "bcell")
    parts = [s.split(":")[0], s] if ":" in s else [s]
    for part in parts:
        words = set("".join(c if c.isalnum() else " " for c in part).split())
        if words & _TUMOUR_WORDS:
            return "tumour"
        if words & _STROMA_WORDS:
            return "stroma"
        if "negative" in words:
            return "other"
        if words & _IMMUNE_WORDS or any(w.startswith(("lymph", "immun", "inflamm")) for w in words):
            return "immune"
    return "other"


def _norm_col(c: str) -> str:
    s = str(c).lower().replace("Âµ", "u").replace("µ", "u").replace("μ", "u")
    return "".join(ch for ch in s if ch.isalnum())


def read_cell_table_csv(path: str | Path, mpp: float | None = None) -> tuple[pd.DataFrame, dict]:
    """Read a TILscope ``cells.csv`` or a QuPath detection export into a cell table.

    Parameters
    ----------
    path : str or Path
        Comma- or tab-separated text. Recognised columns (case, spaces, brackets and
        µ/u spelling ignored): ``x_um``/``y_um`` or QuPath's ``Centroid X µm`` /
        ``Centroid Y µm``; ``x_px``/``y_px`` or ``Centroid X px`` / ``Centroid Y px``;
        ``cell_class`` or QuPath's ``Class`` / ``Classification``; ``role``;
        ``probability``.
    mpp : float, optional
        Microns per pixel, used only to fill the missing one of µm / pixel columns.

    Returns
    -------
    cells : pandas.DataFrame
        Cell table with :data:`core.cells.CELL_COLUMNS` (``x_um``/``y_um`` NaN when
        only pixels and no mpp are known; ``probability`` NaN when absent).
    info : dict
        ``format`` (``"tilscope"`` or ``"qupath"``), ``columns`` (which source column
        became each field), ``class_to_role`` (the mapping applied, by
        :data:`CLASS_ROLE_RULES`, when there was no role column), ``n_rows``,
        ``notes``.

    Raises
    ------
    InputError
        If the file is missing or unreadable, has no centroid columns, has non-numeric
        coordinates, or has a ``role`` column with unknown roles.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"cell table {str(p)!r} does not exist")
    try:
        with open(p, encoding="utf-8-sig", errors="replace") as fh:
            head = fh.readline()
        sep = "\t" if head.count("\t") > head.count(",") else ","
        df = pd.read_csv(p, sep=sep, encoding="utf-8-sig", encoding_errors="replace", low_memory=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, OSError, UnicodeDecodeError) as err:
        raise InputError(f"cannot read {p.name!r} as a CSV/TSV cell table: {err}") from err
    return _cell_table_from_frame(df, p, mpp, "tab" if sep == "\t" else "comma")


def read_cell_table(path: str | Path, mpp: float | None = None) -> tuple[pd.DataFrame, dict]:
    """Read a cell table from CSV/TSV (:func:`read_cell_table_csv`) or Apache Parquet, by the file's suffix.

    A ``.parquet`` file (TILscope's ``cells.parquet``, or any Parquet table with the
    columns :func:`read_cell_table_csv` recognises) is read with pyarrow and mapped to the
    cell table the same way; every other suffix is read as CSV/TSV.

    Parameters
    ----------
    path : str or Path
    mpp : float, optional
        As for :func:`read_cell_table_csv`.

    Returns
    -------
    cells, info
        As :func:`read_cell_table_csv`; ``info["separator"]`` is ``"parquet"`` for Parquet.

    Raises
    ------
    InputError
        If the file is missing, is not a readable Parquet file (e.g. a CSV named
        ``.parquet``), holds more than :data:`MAX_PARQUET_ROWS` rows, or its columns are not
        a cell table (see :func:`read_cell_table_csv`).
    """
    p = Path(path)
    if p.suffix.lower() != ".parquet":
        return read_cell_table_csv(p, mpp)
    if not p.is_file():
        raise InputError(f"cell table {str(p)!r} does not exist")
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        n_rows = pq.ParquetFile(p).metadata.num_rows
        if n_rows > MAX_PARQUET_ROWS:
            raise InputError(f"{p.name!r} holds {n_rows:,} cells, more than the {MAX_PARQUET_ROWS:,} read at once; "
                             "split the table by region or slide")
        df = pq.read_table(p).to_pandas()
    except (pa.ArrowException, OSError, ValueError) as err:
        raise InputError(f"cannot read {p.name!r} as a Parquet cell table ({_one_line(err)}); give a Parquet "
                         "file such as TILscope's cells.parquet, or the table as CSV") from err
    return _cell_table_from_frame(df, p, mpp, "parquet")


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())[:200]


def _cell_table_from_frame(df: pd.DataFrame, p: Path, mpp: float | None, separator: str) -> tuple[pd.DataFrame, dict]:
    """The cell table and reading notes of a table read from ``p`` (see :func:`read_cell_table_csv`)."""
    cols = {_norm_col(c): c for c in df.columns}

    def pick(*names: str) -> str | None:
        for n in names:
            if n in cols:
                return cols[n]
        return None

    src = {
        "x_um": pick("xum", "centroidxum"),
        "y_um": pick("yum", "centroidyum"),
        "x_px": pick("xpx", "centroidxpx"),
        "y_px": pick("ypx", "centroidypx"),
        "cell_class": pick("cellclass", "class", "classification"),
        "role": pick("role"),
        "probability": pick("probability", "detectionprobability"),
    }
    notes = []
    fmt = "tilscope" if src["role"] is not None and src["x_um"] == cols.get("xum") else "qupath"
    has_um = src["x_um"] is not None and src["y_um"] is not None
    has_px = src["x_px"] is not None and src["y_px"] is not None
    if not has_um and not has_px:
        raise InputError(
            f"{p.name!r} has no centroid columns: expected x_um/y_um (TILscope cells.csv) or "
            f"'Centroid X µm'/'Centroid Y µm' (QuPath detection export); found {list(df.columns)[:12]}"
        )

    def num(col: str) -> np.ndarray:
        v = pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=np.float64)
        bad = int((~np.isfinite(v) & df[col].notna().to_numpy()).sum())
        if bad:
            raise InputError(f"column {col!r} of {p.name!r} has {bad} non-numeric value(s): coordinates must be numbers")
        return v

    n = len(df)
    m = None
    if mpp is not None:
        try:
            m = float(mpp)
        except (TypeError, ValueError) as err:
            raise InputError(f"mpp must be a positive number, got {mpp!r}") from err
        if not (math.isfinite(m) and m > 0):
            raise InputError(f"mpp must be a positive number, got {mpp!r}")
    if has_um:
        x_um, y_um = num(src["x_um"]), num(src["y_um"])
    elif m is not None:
        x_um, y_um = num(src["x_px"]) * m, num(src["y_px"]) * m
        notes.append(f"µm computed from pixel centroids with mpp {m:g}")
    else:
        x_um = y_um = np.full(n, np.nan)
        notes.append("no µm columns and no mpp: spatial statistics need an mpp")
    if has_px:
        x_px, y_px = num(src["x_px"]), num(src["y_px"])
    elif m is not None:
        x_px, y_px = x_um / m, y_um / m
    else:
        x_px = y_px = np.full(n, np.nan)
    classes = (
        df[src["cell_class"]].fillna("").astype(str).to_numpy(dtype=object)
        if src["cell_class"] is not None
        else np.full(n, "", dtype=object)
    )
    mapping = None
    if src["role"] is not None:
        role = df[src["role"]].fillna("other").astype(str).str.strip().to_numpy(dtype=object)
        bad = sorted(set(role) - set(ROLES))
        if bad:
            raise InputError(f"column {src['role']!r} has unknown role(s) {bad[:5]}: allowed roles are {list(ROLES)}")
    else:
        uniq = sorted(set(classes))
        mapping = {c: class_to_role(c) for c in uniq}
        role = np.array([mapping[c] for c in classes], dtype=object)
        if src["cell_class"] is None:
            notes.append("no class column: every cell has role 'other'")
    prob = (
        pd.to_numeric(df[src["probability"]], errors="coerce").to_numpy(dtype=np.float64)
        if src["probability"] is not None
        else np.full(n, np.nan)
    )
    cells = pd.DataFrame(
        {
            "x_px": x_px,
            "y_px": y_px,
            "x_um": x_um,
            "y_um": y_um,
            "cell_class": pd.Series(classes, dtype=object),
            "role": pd.Series(role, dtype=object),
            "probability": prob,
        }
    )
    for extra in ("cell_id", "edited"):
        if extra in df.columns:
            cells[extra] = df[extra].to_numpy()
    info = {
        "format": fmt,
        "path": str(p),
        "separator": separator,
        "n_rows": n,
        "columns": {k: v for k, v in src.items() if v is not None},
        "class_to_role": mapping,
        "notes": notes,
    }
    return cells, info
