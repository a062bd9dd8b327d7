"""The export files of one analysis: one writer for each, whichever door the analysis came in by.

:func:`build_exports` makes every file as bytes (the CLI writes them with
:func:`write_exports` through :func:`core.pipeline.write_analysis`; the app stores them with
:func:`save_result`), so the same result gives the same bytes in both:

- ``cells.csv``: the cell table (:func:`cells_csv`);
- ``cells.parquet``: the same table as Apache Parquet (:func:`cells_parquet`), full float64
  precision and typed columns, about half the CSV's size and written 10 times faster: for
  slide-scale tables (millions of cells) in pandas, pyarrow, R ``arrow`` or DuckDB;
- ``summary.json``: the record's summary with statistics and provenance (:func:`summary_json`);
- ``overlay.png``: the image with every cell ringed in its class colour, full resolution
  up to :data:`core.outputs.figures.OVERLAY_MAX_SIDE_PX` on the longest side, and the
  regions (tumour, stroma, exclusion, margin) outlined in their kind's colour with their
  names when the analysis has any (:func:`draw_regions`);
- ``<name>.png`` for each dense output (:func:`core.outputs.figures.dense_to_image`: 8-bit
  grey = value x 255 for a probability or a mask; the arg-max in its class colours for
  class probabilities) and each restored image ((H, W, 3) uint8 as it is);
- ``compartments.png`` and ``regions.geojson`` when the result has predicted tissue
  compartments (:attr:`core.results.AnalysisResult.compartments`): the 8-bit label image of the
  input's size (0 background, 1 tumour, 2 stroma, 3 necrosis) and the tumour / stroma / necrosis
  polygons as QuPath annotations (:class:`core.scenarios.compartments.CompartmentMap`);
- ``cells.geojson`` when the mpp is known (QuPath: cells as detections, regions as annotations:
  the regions drawn or given, else the predicted compartments);
- ``report.pdf`` (:func:`core.outputs.report_pdf.build_report_pdf`), which shows the same
  pictures smaller, and the compartments with their areas when there are any.

Outputs are rendered by kind (cells, dense, restored), never by scenario or output name.
Media types follow the file suffix (:func:`media_type`). A reviewed analysis goes through the
same writer with its reviewed cells, regions and record (:func:`core.review.saved.save_review`).

:func:`save_result` also keeps the analysed image's 8-bit RGB (:func:`source_image_png`) as
an original of the analysis, not an export, so that a saved analysis can be opened for
review later.
"""

from __future__ import annotations

import io
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from core.cells import CELL_COLUMNS
from core.errors import TILscopeError
from core.outputs import records as rec
from core.outputs.figures import (
    class_palette,
    dense_over_image,
    dense_to_image,
    downscale,
    plane_colors,
    png_bytes,
    render_overlay,
)
from core.outputs.media import MEDIA_TYPES, media_type
from core.outputs.report_pdf import ReportImage, build_report_pdf

__all__ = ["build_exports", "write_exports", "save_result", "summary_json", "cells_csv", "cells_parquet", "cells_geojson",
           "draw_regions", "source_image_png", "media_type", "MEDIA_TYPES", "REPORT_FILES", "COMPARTMENT_FILES",
           "REPORT_IMAGE_MAX_SIDE_PX"]

#: Files the CLI writes only with ``--report`` (:func:`core.pipeline.write_analysis`).
REPORT_FILES = ("report.pdf", "cells.geojson")
#: Files of predicted tissue compartments (:meth:`core.scenarios.compartments.CompartmentMap.exports`).
COMPARTMENT_FILES = ("compartments.png", "regions.geojson")
#: Longest side, in pixels, of the pictures inside report.pdf.
REPORT_IMAGE_MAX_SIDE_PX = 1600


def build_exports(
    result: Any,
    *,
    spatial: Any = None,
    regions: Any = None,
    corrections: Any = None,
    params: dict | None = None,
    model_card: dict | None = None,
    case_label: str | None = None,
    record: dict | None = None,
    sections: Any = (),
) -> dict[str, bytes]:
    """All export files of one analysis, as ``{file name: bytes}``.

    Deterministic: the same result (and record) gives byte-identical files; nothing reads
    the clock (the PDF's creation date is the record's ``created_at``).

    Parameters
    ----------
    result : core.results.AnalysisResult
        The analysis (image, cell table, dense outputs, restored images, run, statistics).
    spatial, regions, corrections, params, model_card, case_label
        As for :func:`core.outputs.records.record_from_result`; ``regions`` (a list of
        :class:`core.spatial.Region` in µm, or their GeoJSON) are outlined on the overlays
        and (as Regions) go into cells.geojson as annotations.
    record : dict, optional
        A record already built (e.g. with the store's ``analysis_id``); built here if absent.
    sections : iterable of core.outputs.report_pdf.ReportSection
        Sections computed on demand for report.pdf (e.g. saliency maps); none by default.

    Returns
    -------
    dict of str to bytes
        In this order: ``cells.csv``, ``summary.json``, ``overlay.png``, one
        ``<name>.png`` per entry of ``result.dense`` then of ``result.restored``,
        ``compartments.png`` and ``regions.geojson`` (predicted compartments),
        ``cells.parquet``, ``cells.geojson`` (mpp known), ``report.pdf``. Media types: :func:`media_type`.

    Raises
    ------
    TILscopeError
        If an output's name would overwrite another export (e.g. a dense output named "overlay").
    """
    if regions is None:
        regions = result.regions or None
    if record is None:
        record = rec.record_from_result(
            result, spatial=spatial, regions=regions, corrections=corrections, params=params,
            model_card=model_card, case_label=case_label,
        )
    class_colors = dict(result.scenario.class_colors)
    rgb, mpp, cells = result.image.rgb, result.image.mpp, result.cells
    outlined = _region_list(regions, mpp)
    files = {
        "cells.csv": cells_csv(cells),
        "summary.json": summary_json(record),
        "overlay.png": png_bytes(draw_regions(render_overlay(rgb, cells, class_colors, mpp), outlined, mpp, rgb.shape[:2])),
    }
    small_rgb, scale = downscale(rgb, REPORT_IMAGE_MAX_SIDE_PX)
    pictures = []
    for name, out in result.dense.items():
        _add(files, f"{name}.png", png_bytes(dense_to_image(out, class_colors)))
        small = replace(out, values=_downscale_values(out.values, small_rgb.shape[:2])) if scale < 1 else out
        pictures.append(ReportImage(f"{_title(name)} ({out.meaning.replace('_', ' ')})",
                                    png_bytes(dense_over_image(small_rgb, small, class_colors)),
                                    _dense_caption(out, class_colors)))
    descriptions = {o.name: o.description for o in result.scenario.outputs_of("restored")}
    for name, image in result.restored.items():
        _add(files, f"{name}.png", png_bytes(image))
        pictures.append(ReportImage(f"{_title(name)} (restored image)", png_bytes(downscale(image, REPORT_IMAGE_MAX_SIDE_PX)[0]),
                                    descriptions.get(name, "")))
    cmap = getattr(result, "compartments", None)
    compartments_png = None
    if cmap is not None:
        for name, data in cmap.exports().items():
            _add(files, name, data)
        compartments_png = png_bytes(cmap.picture(rgb, REPORT_IMAGE_MAX_SIDE_PX))
    files["cells.parquet"] = cells_parquet(cells)
    geo_regions = regions if regions or cmap is None or not mpp else cmap.regions()
    geojson = cells_geojson(result, geo_regions, class_palette(sorted(set(cells["cell_class"].astype(str))), class_colors))
    if geojson is not None:
        files["cells.geojson"] = geojson
    overlay_small = png_bytes(draw_regions(render_overlay(rgb, cells, class_colors, mpp, REPORT_IMAGE_MAX_SIDE_PX),
                                           outlined, mpp, rgb.shape[:2]))
    files["report.pdf"] = build_report_pdf(record, overlay_png=overlay_small, images=pictures,
                                           compartments_png=compartments_png, sections=sections)
    return files


def _region_list(regions: Any, mpp: float | None) -> list:
    """Regions as a list of :class:`core.spatial.Region` (from a list, or GeoJSON with the mpp)."""
    if not regions or not mpp:
        return []
    if isinstance(regions, (dict, str, bytes)):
        from core.spatial.regions import read_regions_geojson

        try:
            return read_regions_geojson(regions, mpp, on_unknown="skip")
        except TILscopeError:
            return []
    return list(regions)


def draw_regions(picture: np.ndarray, regions: Any, mpp: float | None, image_shape: tuple[int, int]) -> np.ndarray:
    """Outline regions on a picture of the image, each in its kind's colour, with its name.

    Parameters
    ----------
    picture : (h, w, 3) uint8 ndarray
        The image (or the overlay) at any scale of the analysed image.
    regions : list of core.spatial.Region
        Polygons in µm; nothing is drawn without regions or an mpp.
    mpp : float or None
        Microns per pixel of the analysed image.
    image_shape : (H, W)
        Size of the analysed image in pixels (sets the scale of ``picture``).

    Returns
    -------
    (h, w, 3) uint8 ndarray
        A new picture; ``picture`` itself when there is nothing to draw (byte-identical
        exports for analyses without regions). Outline width grows with the picture
        (about 1/400 of its longest side, at least 2 px); exclusions are hatched.
    """
    regions = list(regions or [])
    if not regions or not mpp:
        return picture
    from PIL import Image, ImageDraw

    from core.spatial.regions import KIND_COLORS

    h, w = picture.shape[:2]
    sx, sy = w / float(image_shape[1]), h / float(image_shape[0])
    img = Image.fromarray(np.ascontiguousarray(picture[..., :3], dtype=np.uint8))
    draw = ImageDraw.Draw(img, "RGBA")
    width = max(2, round(max(h, w) / 400))
    for reg in regions:
        col = KIND_COLORS.get(reg.kind, (255, 255, 0))
        for k, ring in enumerate(reg.rings()):
            pts = [(float(x) / mpp * sx, float(y) / mpp * sy) for x, y in np.asarray(ring)]
            if k == 0:
                draw.polygon(pts, fill=(*col, 70 if reg.kind == "exclude" else 28))
            draw.line(pts + [pts[0]], fill=(0, 0, 0, 160), width=width + 2)
            draw.line(pts + [pts[0]], fill=(*col, 255), width=width)
        x0, y0 = (np.asarray(reg.polygon_um).min(axis=0) / mpp) * np.array([sx, sy])
        draw.text((float(x0) + width + 3, float(y0) + width + 2), reg.name, fill=(0, 0, 0, 255), stroke_width=2,
                  stroke_fill=(255, 255, 255, 255), font_size=max(11, round(max(h, w) / 90)))
    return np.asarray(img)


def source_image_png(result: Any) -> bytes:
    """The analysed image's 8-bit RGB (:attr:`core.io.ImageData.rgb`) as PNG bytes, kept to review it later."""
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(result.image.rgb, dtype=np.uint8)).save(out, format="PNG", compress_level=3)
    return out.getvalue()


def _add(files: dict[str, bytes], name: str, data: bytes) -> None:
    if name in files:
        raise TILscopeError(f"the output {name!r} would overwrite another export; rename the output in the registry")
    files[name] = data


def _title(name: str) -> str:
    return name.replace("_", " ").capitalize()


def _dense_caption(out: Any, class_colors: dict[str, str]) -> str:
    if np.ndim(out.values) == 3:
        legend = ", ".join(f"{k} {c}" for k, c in plane_colors(out, class_colors).items())
        return f"{out.description}. Each pixel in the colour of its most probable class ({legend}), over the image."
    return f"{out.description}. Drawn in {out.color} over the image, opacity proportional to the value (0 to 1)."


def _downscale_values(values: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(H, W) or (H, W, K) float values area-averaged to ``shape`` (h, w)."""
    from PIL import Image

    planes = values[..., None] if values.ndim == 2 else values
    size = (shape[1], shape[0])
    out = np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(planes[..., k], dtype=np.float32), mode="F")
                               .resize(size, Image.Resampling.BOX)) for k in range(planes.shape[-1])], axis=-1)
    return out[..., 0] if values.ndim == 2 else out


def cells_csv(cells: pd.DataFrame) -> bytes:
    """``cells.csv``: :data:`core.cells.CELL_COLUMNS` first, then the scenario's extra columns, floats to 3 decimals."""
    columns = list(CELL_COLUMNS) + [c for c in cells.columns if c not in CELL_COLUMNS]
    return cells.to_csv(index=False, columns=columns, float_format="%.3f").encode("utf-8")


def cells_parquet(cells: pd.DataFrame) -> bytes:
    """``cells.parquet``: the rows and columns of :func:`cells_csv` as Apache Parquet (pyarrow).

    Same column order as the CSV; floats kept at full float64 precision (the CSV rounds
    to 3 decimals), class and role as strings, no index. Compressed with zstd; the key-value
    metadata ``tilscope.units`` names the units of the coordinates. Deterministic: the same
    table gives the same bytes (no timestamps in the file).

    Parameters
    ----------
    cells : pandas.DataFrame
        A cell table (:data:`core.cells.CELL_COLUMNS` and the scenario's extra columns).

    Returns
    -------
    bytes
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = list(CELL_COLUMNS) + [c for c in cells.columns if c not in CELL_COLUMNS]
    table = pa.Table.from_pandas(cells[columns], preserve_index=False)
    for name in ("cell_class", "role"):  # an empty table's text columns would be typed null
        i = table.schema.get_field_index(name)
        if i >= 0 and pa.types.is_null(table.schema.field(i).type):
            table = table.set_column(i, name, table.column(i).cast(pa.string()))
    meta = dict(table.schema.metadata or {})
    meta[b"tilscope.units"] = b"x_px, y_px: pixels of the analysed image; x_um, y_um: micrometres; probability: 0-1"
    table = table.replace_schema_metadata(meta)
    out = io.BytesIO()
    pq.write_table(table, out, compression="zstd")
    return out.getvalue()


def summary_json(record: dict[str, Any]) -> bytes:
    """``summary.json``: the summary plus spatial statistics, corrections count and provenance."""
    data = dict(record.get("summary") or {})
    data["spatial"] = rec.spatial(record) or None
    data["n_corrections"] = record.get("n_corrections")
    data["case_label"] = record.get("case_label")
    data["created_at"] = record.get("created_at") or data.get("created_at")
    data["app_version"] = record.get("app_version") or data.get("app_version")
    data["params"] = record.get("params") or {}
    return json.dumps(data, indent=2, ensure_ascii=False, default=rec.json_default).encode("utf-8")


def cells_geojson(result: Any, regions: Any, colors: dict[str, str]) -> bytes | None:
    """``cells.geojson`` (QuPath): cells as detections with class name and colour, regions as annotations.

    ``None`` without an mpp (QuPath coordinates are pixels, regions are in µm).
    """
    from core.spatial.regions import cells_to_geojson

    if not result.image.mpp:
        return None
    region_list = None if regions is None or isinstance(regions, (dict, str, bytes)) else list(regions)
    data = cells_to_geojson(result.cells, colors, result.image.mpp, regions=region_list)
    if isinstance(data, (dict, list)):
        data = json.dumps(data, ensure_ascii=False, default=rec.json_default)
    return data.encode("utf-8") if isinstance(data, str) else bytes(data)


def write_exports(files: dict[str, bytes], out_dir: str | Path) -> list[Path]:
    """Write ``{name: bytes}`` into ``out_dir`` (created if needed); return the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, data in files.items():
        path = out / Path(name).name
        path.write_bytes(data)
        paths.append(path)
    return paths


def save_result(
    result: Any,
    case_label: str,
    store: Any = None,
    *,
    spatial: Any = None,
    regions: Any = None,
    corrections: Any = None,
    params: dict | None = None,
    model_card: dict | None = None,
    created_by: str | None = None,
    group: str | None = None,
) -> int:
    """Save an analysis with all its exports in the case store, complete or not at all; return its id.

    The files saved are those of :func:`build_exports`. The save protocol:

    1. reserve the analysis id (:meth:`core.outputs.store.CaseStore.reserve_analysis_id`:
       a counter, nothing visible), so the report can carry it;
    2. draw every file in memory, outside any transaction (the database's write lock is not
       held while the PDF is drawn);
    3. write the case (if new), the analysis, its files, its originals and its audit entry
       in one transaction (:meth:`core.outputs.store.CaseStore.save_analysis`).

    A failure or a killed process before step 3 commits leaves nothing in the store but an
    unused id (tested by SIGKILL at each step, ``tests/test_save_kill.py``).

    Parameters
    ----------
    result : core.results.AnalysisResult
        The finished analysis.
    case_label : str
        The case it belongs to (created if new).
    store : core.outputs.store.CaseStore, optional
        Default: a store on :func:`core.outputs.store.database_url`. A store acting for a
        user (:meth:`~core.outputs.store.CaseStore.for_actor`) records them as its owner
        and refuses a viewer.
    spatial, regions, corrections, params, model_card
        As for :func:`core.outputs.records.record_from_result`; ``spatial`` defaults to
        ``result.spatial``.
    created_by : str, optional
        Who ran the analysis (the user name): recorded with it and in the audit log.
    group : str, optional
        The group a new case is shared with.

    The analysed image's 8-bit RGB is kept beside the analysis as an original
    (:data:`core.outputs.store.SOURCE_IMAGE`, not an export), so it can be reviewed later.

    Returns
    -------
    int
        The analysis id.

    Raises
    ------
    InputError
        If the case label is empty, or the user name blank or too long.
    core.auth.AccessError
        If the store's user may not save into this case.
    StoreError
        If the database cannot be opened or written.
    """
    from core.outputs.store import SOURCE_IMAGE, CaseStore

    own = store is None
    store = store or CaseStore()
    try:
        if regions is None:
            regions = result.regions or None
        record = rec.record_from_result(
            result, spatial=spatial, regions=regions, corrections=corrections, params=params,
            model_card=model_card, case_label=case_label,
        )
        analysis_id = store.reserve_analysis_id()
        record["analysis_id"] = analysis_id
        record["created_by"] = store.actor.name if getattr(store, "actor", None) is not None else created_by
        record["case_label"] = " ".join([str(case_label or "").strip()]) or case_label
        files = build_exports(result, regions=regions, record=record)
        originals = {SOURCE_IMAGE: source_image_png(result)}
        return store.save_analysis(
            case_label,
            record["summary"],
            params=record["params"],
            spatial=record["spatial"],
            regions=record["regions"],
            corrections=record["corrections"],
            n_corrections=record["n_corrections"],
            model_card=record["model_card"],
            app_version=record["app_version"],
            created_by=created_by,
            originals=originals,
            files=files,
            analysis_id=analysis_id,
            group=group,
        )
    finally:
        if own:
            store.close()
