"""Review of one analysis: regions drawn on the image, manual corrections, statistics again.

Pure helpers for the Review page (no Streamlit here, so they are unit-tested and usable
from notebooks), one module per job:

- :mod:`core.review.canvas`: the canvas the page draws on. :class:`CanvasFrame` maps a
  zoomed and panned view's pixels to image pixels (and µm with the image's mpp); fabric.js
  objects become regions in µm or clicks in image pixels; the view shows regions and cell
  markers, the navigator the whole image with the view's outline.
- :mod:`core.review.session`: :class:`ReviewSession`, one analysis under review: the
  reviewed cells and their counts kept up to date edit by edit, figures that move with
  every edit, full statistics on demand, the reviewed summary and result, the audit log.
- :mod:`core.review.saved`: open a saved analysis for review, save the review back,
  import regions from QuPath listing what was skipped.
- :mod:`core.review.corrections`: the :class:`CorrectionLog` of manual edits (add, delete,
  relabel, undo), saved with the analysis; the detections themselves are never modified.
- :mod:`core.review.cells`: the cell table under review: the cell under a click, the log
  replayed on the detections, counts and densities of the corrected cells.
- :mod:`core.review.statistics`: spatial statistics of the corrected cells in the drawn
  regions, and the key figures the page shows with their units and thresholds.

Coordinates: canvas and image pixels are (x, y) with x = column, origin at the top-left
corner; µm = image pixels × mpp.
"""

from core.review.canvas import (
    KIND_LABELS,
    MIN_SHAPE_SIDE_PX,
    ZOOM_STEPS,
    CanvasFrame,
    canvas_click_points,
    canvas_object_points,
    canvas_objects_to_regions,
    display_frame,
    downscale,
    fit_zoom,
    marker_radius_px,
    render_navigator,
    render_review_image,
    render_view,
    view_frame,
    zoom_steps,
)
from core.review.cells import (
    MANUAL_CLASSES,
    correction_classes,
    nearest_cell,
    reviewed_cells,
    reviewed_result,
    reviewed_summary,
)
from core.review.corrections import EDIT_OPS, CorrectionLog, Edit
from core.review.saved import (
    RegionImport,
    import_regions,
    is_same_run,
    open_saved_analysis,
    result_from_store,
    save_review,
)
from core.review.session import HEAVY_SECTIONS, EditOutcome, ReviewSession, cell_name
from core.review.statistics import (
    format_figure,
    key_figures,
    review_key,
    review_params,
    review_statistics,
    state_fingerprint,
)

__all__ = [
    "EDIT_OPS",
    "HEAVY_SECTIONS",
    "KIND_LABELS",
    "MANUAL_CLASSES",
    "MIN_SHAPE_SIDE_PX",
    "ZOOM_STEPS",
    "CanvasFrame",
    "CorrectionLog",
    "Edit",
    "EditOutcome",
    "RegionImport",
    "ReviewSession",
    "canvas_click_points",
    "cell_name",
    "fit_zoom",
    "import_regions",
    "is_same_run",
    "marker_radius_px",
    "open_saved_analysis",
    "render_navigator",
    "render_view",
    "result_from_store",
    "save_review",
    "view_frame",
    "zoom_steps",
    "canvas_object_points",
    "canvas_objects_to_regions",
    "correction_classes",
    "display_frame",
    "downscale",
    "format_figure",
    "key_figures",
    "nearest_cell",
    "render_review_image",
    "review_key",
    "review_params",
    "review_statistics",
    "reviewed_cells",
    "reviewed_result",
    "reviewed_summary",
    "state_fingerprint",
]
