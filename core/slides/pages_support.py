"""How the Cases, Review and Tumour board pages present a saved whole-slide analysis (no Streamlit here).

A slide analysis (:func:`core.slides.records.save_slide_analysis`, summary ``kind`` = "slide") is
saved like a field analysis, with its own files (:data:`core.slides.run.SLIDE_FILES`: no source
image, no ``cells.csv``, no report, but a thumbnail overlay and an immune-density heat map).
The pages show it beside field analyses and label it as a whole slide:

* :func:`kind_label`, :func:`is_slide`: which kind an analysis is, from its summary;
* :func:`area_label`: the area metric's name (per mm² of *tissue* for a slide);
* :func:`pictures`: the stored pictures to show and their captions, by kind;
* :func:`slide_facts`: the slide's provenance (size, format, pyramid, tiles, tissue) as table rows;
* :func:`review_notice` and :func:`slides_page_query`: the Review page reviews fields cell by
  cell; a slide is explored on the Slides page, opened on its run while that run is kept;
* :func:`board_note`: what the tumour board says when slides and fields are compared.
"""

from __future__ import annotations

from typing import Any, Iterable

from core.io import MPP_SOURCE_WORDS
from core.outputs.key_figures import format_figure

__all__ = ["SLIDE", "FIELD", "is_slide", "kind_label", "area_label", "pictures", "slide_facts", "review_notice",
           "slides_page_query", "board_note"]

#: The words for the two kinds of analysis.
SLIDE, FIELD = "whole slide", "field"


def is_slide(summary: dict[str, Any] | None) -> bool:
    """Whether an analysis summary is a whole slide's (``kind`` = "slide", :func:`core.slides.run.slide_summary`).

    Parameters
    ----------
    summary : dict or None, an analysis summary (the case store's ``summary``, or a record's)

    Returns
    -------
    bool, False for a field analysis, an older summary without ``kind``, or anything not a dict
    """
    return isinstance(summary, dict) and summary.get("kind") == "slide"


def kind_label(summary: dict[str, Any] | None) -> str:
    """:data:`SLIDE` ("whole slide") or :data:`FIELD` ("field"), as the pages label an analysis."""
    return SLIDE if is_slide(summary) else FIELD


def area_label(summary: dict[str, Any] | None) -> str:
    """The name of the area metric: "Tissue area (mm²)" for a slide (the densities' denominator), else "Area (mm²)"."""
    return "Tissue area (mm²)" if is_slide(summary) else "Area (mm²)"


def pictures(summary: dict[str, Any] | None, file_names: Iterable[str]) -> list[tuple[str, str]]:
    """The stored pictures a page shows for an analysis, with their captions, in order.

    Parameters
    ----------
    summary : dict, the analysis summary
    file_names : iterable of str, the names of its stored files

    Returns
    -------
    list of (file name, caption)
        A field: ``overlay.png`` (the detections over the image). A slide: ``overlay.png``
        (the thumbnail with the tissue outline and the cells) and ``immune_density.png``
        (immune cells per mm² of tissue per bin, with its hot-spot summary). Only files
        that are stored; empty when none is.
    """
    names = set(file_names)
    if not is_slide(summary):
        return [("overlay.png", "Detections over the image")] if "overlay.png" in names else []
    out = []
    if "overlay.png" in names:
        out.append(("overlay.png", "The slide (thumbnail) with the analysed tissue outlined and the cells in their "
                                   "class colours"))
    if "immune_density.png" in names:
        heat, hot = summary.get("heatmap") or {}, summary.get("hot_spots") or {}
        caption = (f"Immune cells per mm² of tissue in {float(heat.get('bin_um') or 100.0):g} µm squares "
                   "(squares under 25 % tissue left blank)")
        if hot.get("n_tissue_bins") is not None:
            caption += (f"; Getis-Ord Gi* hot spots: {hot.get('n_hot_bins', 0)} hot and {hot.get('n_cold_bins', 0)} "
                        f"cold of {hot['n_tissue_bins']} squares, hot area "
                        f"{format_figure(hot.get('hot_area_mm2'), 'mm²', with_unit=True)}")
        out.append(("immune_density.png", caption))
    return out


def slide_facts(summary: dict[str, Any] | None) -> list[dict[str, str]]:
    """The provenance of a slide analysis as table rows ``{"item", "value"}`` (all text).

    Rows: the slide (size in px and mm, format and reader, pyramid levels, objective power),
    the microns per pixel (where they came from, and those the model read), the tissue (area,
    fraction of the slide, pen marks left out, region of interest and exclusions), the tiles
    and the run (time, device, numeric precision, resumed). A value the summary lacks reads
    "n/a".

    Parameters
    ----------
    summary : dict, a slide analysis summary (:func:`core.slides.run.slide_summary`)

    Returns
    -------
    list of dict; empty for a field analysis
    """
    if not is_slide(summary):
        return []
    s = summary
    image = s.get("image") if isinstance(s.get("image"), dict) else {}
    tiles = s.get("tiles") or {}
    mpp, w, h = s.get("mpp"), image.get("width_px"), image.get("height_px")
    power = image.get("objective_power")
    # the Cases page is read by others than the user who gave the mpp: not "entered by you"
    words = {**MPP_SOURCE_WORDS, "user": "entered by the user who ran it"}
    source = words.get(s.get("mpp_source"), s.get("mpp_source") or "source not recorded")

    def num(value: Any, unit: str = "", digits: int | None = None) -> str:
        return format_figure(value, unit, digits=digits, with_unit=True)

    size = "n/a"
    if w and h:
        size = f"{int(w):,} x {int(h):,} px"
        if mpp:
            size += f" ({w * mpp / 1000:.2f} x {h * mpp / 1000:.2f} mm)"
    levels = image.get("levels") or []
    pyramid = (f"{len(levels)} level(s): " + ", ".join(f"{lv[0]:,} x {lv[1]:,} px" for lv in levels[:6])
               + (" …" if len(levels) > 6 else "")) if levels else "n/a"
    limits = (("a region of interest", s.get("roi")), ("exclusions", s.get("exclusions")))
    region = ", ".join(part for part, on in limits if on) or "all the tissue"
    resumed = ", resumed after a stop" if s.get("resumed") else ""
    device = str(s["device"]).upper() if s.get("device") else "a device not recorded"
    rows = [
        ("analysis", "whole slide: all of its tissue, tile by tile"),
        ("slide", size),
        ("format", " · ".join(str(v) for v in (image.get("format"), image.get("reader")) if v) or "n/a"),
        ("pyramid", pyramid),
        ("objective power", f"{num(power, digits=0)}x" if power else "n/a"),
        ("mpp (µm/px)", f"{num(mpp, digits=4)} ({source})"),
        ("mpp read by the model (µm/px)", num(s.get("mpp_used"), digits=4)),
        ("tissue area", f"{num(s.get('tissue_area_mm2'), 'mm²')}, {num(s.get('tissue_fraction'), 'fraction')} of the "
                        f"slide's {num(s.get('image_area_mm2'), 'mm²')}; every density is per mm² of it"),
        ("tissue detection", str(s.get("analysed_area") or "n/a")),
        ("pen marks left out", num(s.get("pen_area_mm2"), "mm²")),
        ("analysed", region),
        ("tiles", f"{tiles.get('with_tissue', 'n/a')} with tissue of {tiles.get('on_grid', 'n/a')}, "
                  f"{num(tiles.get('tile_um'), 'µm')} with {num(tiles.get('context_um'), 'µm')} of context, "
                  f"read from pyramid level {tiles.get('level_read', 'n/a')}" if tiles else "n/a"),
        ("run", f"{num(s.get('runtime_s'), digits=0)} s on {device}, "
                f"{s.get('inference_precision') or 'float32'}{resumed}"),
    ]
    return [{"item": item, "value": value} for item, value in rows]


def review_notice(analysis_id: int, *, run_kept: bool) -> str:
    """Why a slide analysis is not reviewed cell by cell on the Review page, and where to look at it (Markdown).

    Parameters
    ----------
    analysis_id : int
    run_kept : bool, whether the slide run that made it can still be opened on the Slides page
        (:func:`slides_page_query` is not None)
    """
    from core.slides.app_support import RUN_KEEP_S

    text = (f"Analysis #{int(analysis_id)} is a whole-slide analysis. The Review page corrects cells and draws "
            "regions on one field image; whole-slide analyses are reviewed on the Slides page, which shows the "
            "slide with its cells and heat maps and any field of it at full resolution with its cells. ")
    if run_kept:
        return text + "The link below opens this analysis there."
    return text + (f"Its slide run is no longer kept there (runs are kept {RUN_KEEP_S // 86400} days, and analyses "
                   "run from the command line or in a batch have none): analyse the slide again on the Slides page "
                   "to explore it. Its numbers, pictures and files stay on the Cases page.")


def slides_page_query(analysis: dict[str, Any], actor: Any = None) -> dict[str, str] | None:
    """The Slides page's query parameters that open the run of a saved slide analysis, if it is still kept.

    Parameters
    ----------
    analysis : dict, :meth:`core.outputs.store.CaseStore.get_analysis` of the analysis (the Slides
        page records its run id in ``params["slide_run"]``)
    actor : core.auth.User or None, the signed-in user (None: local mode, every run)

    Returns
    -------
    ``{"run": run id}``, or None: not a slide analysis, run from the command line or a batch
    (no run), its run folder removed (:func:`core.slides.app_support.cleanup_runs`) or
    unfinished, or started by another user whom ``actor`` may not follow.
    """
    from core.errors import TILscopeError
    from core.slides import app_support as sa

    if not isinstance(analysis, dict) or not is_slide(analysis.get("summary")):
        return None
    run_id = (analysis.get("params") or {}).get("slide_run")
    if not isinstance(run_id, str):
        return None
    try:
        run = sa.load_run(run_id, actor)
    except (TILscopeError, OSError):
        return None
    if not (run.out_dir / "summary.json").is_file() or not (run.view_dir / "view.json").is_file():
        return None
    return {"run": run.id}


def board_note(records: list[dict[str, Any]]) -> str | None:
    """What the tumour board says when it compares whole slides (None when none of ``records`` is one).

    Parameters
    ----------
    records : list of dict, analysis records (:meth:`core.outputs.store.CaseStore.get_record`), in the
        board's order (the note numbers them from 1)

    Returns
    -------
    str or None
    """
    slides = [i + 1 for i, r in enumerate(records) if is_slide((r or {}).get("summary"))]
    if not slides:
        return None
    whole_image = [i + 1 for i, r in enumerate(records)
                   if i + 1 not in slides and ((r or {}).get("summary") or {}).get("tissue_area_mm2") is None]
    text = (f"Analysis {_numbers(slides)} {'is a whole slide' if len(slides) == 1 else 'are whole slides'}: cells "
            "counted over all the tissue of the slide, densities per mm² of that tissue (glass excluded), area = "
            "tissue area")
    if len(slides) == len(records):
        return text + "."
    if not whole_image:
        return text + ", as for the fields beside them (densities per mm² of the tissue in the field)."
    return (text + f". Analysis {_numbers(whole_image)} (field) {'was' if len(whole_image) == 1 else 'were'} "
            "analysed before TILscope detected tissue: its densities are per mm² of the whole image, glass included, "
            "so they are lower than per mm² of tissue where the image holds glass.")


def _numbers(ids: list[int]) -> str:
    return ", ".join(str(i) for i in ids)
