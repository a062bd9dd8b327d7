"""Review: open any analysis (the Analyze page's run or a saved one from Cases), correct cells and
draw regions on a zoomable view, see the numbers change, save the reviewed state back.

A whole-slide analysis is not reviewed here (this page works on one field image): asked for one,
the page says that slides are reviewed on the Slides page and links there."""

from __future__ import annotations

import html
import io
import json
import logging
import re
import time

import pandas as pd
import streamlit as st
from PIL import Image
from streamlit.errors import StreamlitAPIException

from core import review as rv
from core.errors import InputError, TILscopeError
from core.outputs.exports import cells_csv
from core.outputs.plots import density_heatmap, distance_figure, region_density_figure, ripley_figure
from core.scenarios.registry import get_scenario
from core.slides import pages_support as slide_view
from core.spatial import SpatialParams, cell_spatial_table
from core.spatial.regions import KIND_COLORS, REGION_KINDS, cells_to_geojson, regions_to_geojson
from pages._resources import case_store
from pages._router import through_app_router
from pages._text import md_escape
from pages._user import can_save, current_actor, gate, require_user, user_box

through_app_router()
gate()  # before anything is read from the case store

log = logging.getLogger("tilscope.review")

TOOLS = {"Polygon": "polygon", "Rectangle": "rect", "Freehand": "freedraw"}
TOOL_HELP = {
    "polygon": "Click the vertices; click the first vertex again to close the polygon.",
    "rect": "Press and drag over the area.",
    "freedraw": "Trace the outline with the mouse held down; the end is joined to the start.",
}
ACTIONS = ("Add a missed cell", "Delete a cell", "Relabel a cell")
VIEW_W, VIEW_H = 800, 600  # the view's largest size on screen, display pixels (shrunk to the column when narrower)
NAV_W, NAV_H = 300, 240  # the navigator's largest size
PICK_SCREEN_PX = 9  # a click picks the nearest cell within this many screen pixels
AUTO_STATISTICS_S = 0.1  # the slow statistics follow every edit only while they take less than this
#: A coloured square per region kind in Markdown (Streamlit's named colours, nearest to KIND_COLORS): the region
#: list shows it beside the region's escaped name, with no HTML.
REGION_SWATCH = {"tumour": ":red[■]", "stroma": ":green[■]", "exclude": ":gray[■]", "margin": ":orange[■]"}


# ----------------------------------------------------------------------------- messages


def flash(kind: str, text: str) -> None:
    """A message about the latest action; it stays until the next one (reruns would wipe a plain one).

    ``text`` is Markdown: the user's text in it (case labels, names, file and region names, errors) goes
    through :func:`md_escape` first.
    """
    st.session_state.setdefault("review_flash", []).append((kind, text))


def clear_flash() -> None:
    st.session_state["review_flash"] = []


def show_flash() -> None:
    for kind, text in st.session_state.get("review_flash", []):
        {"success": st.success, "warning": st.warning, "error": st.error}.get(kind, st.info)(text)


# ----------------------------------------------------------------------------- which analysis


def start(session: rv.ReviewSession, greeting: str) -> rv.ReviewSession:
    """Make ``session`` the one under review: fresh view, messages, URL."""
    st.session_state["review_session"] = session
    st.session_state["review_zoom"] = None  # fit
    st.session_state["review_centre"] = None
    st.session_state["canvas_nonce"] = st.session_state.get("canvas_nonce", 0) + 1
    for k in ("review_import_id", "view_click_t", "nav_click_t"):
        st.session_state.pop(k, None)
    clear_flash()
    flash("info", greeting)
    if session.analysis_id is not None:
        st.query_params["analysis"] = str(session.analysis_id)
    return session


def greeting(session: rv.ReviewSession, fresh_run: bool) -> str:
    where = f"analysis #{session.analysis_id} (case {md_escape(session.case_label)})" if session.analysis_id is not None \
        else "the analysis just run (not in the case history: saving it failed)"
    s = session.log.summary()
    if session.regions or s["n_edits"]:
        by = f" by {md_escape(session.saved_by)}" if session.saved_by else ""
        when = f" on {session.saved_at[:16].replace('T', ' ')} UTC" if session.saved_at else ""
        return (f"Opened {where} with its saved review{by}{when}: {len(session.regions)} region(s), "
                f"{s['n_corrections']} cell(s) corrected by hand.")
    just = ", just analysed" if fresh_run and session.analysis_id is not None else ""
    return f"Reviewing {where}{just}: no regions or corrections yet."


def slide_elsewhere(saved: dict) -> None:
    """Say that whole-slide analysis ``saved`` is reviewed on the Slides page, with a link there (on its run when kept)."""
    query = slide_view.slides_page_query(saved, current_actor())
    st.info(slide_view.review_notice(saved["id"], run_kept=query is not None), icon=":material/gallery_thumbnail:")
    try:
        st.page_link("pages/slides.py", label="Open on the Slides page", icon=":material/gallery_thumbnail:",
                     query_params=query)
    except StreamlitAPIException:  # this page run on its own (tests): no router to link with
        pass


def open_saved(analysis_id: int, run=None) -> rv.ReviewSession | None:
    try:
        with st.spinner(f"Opening analysis #{analysis_id}…"):
            saved = case_store().get_analysis(int(analysis_id))
            slide = slide_view.is_slide(saved["summary"])
            session = None if slide else rv.open_saved_analysis(case_store(), int(analysis_id), run)
    except TILscopeError as err:
        st.error(f"Analysis #{analysis_id} cannot be reviewed: {md_escape(err)}")
        return None
    if session is None:  # a whole slide: said here, or by the picker when nothing else is under review
        if st.session_state.get("review_session") is None:
            st.session_state["review_pick"] = saved["id"]
            if st.query_params.get("analysis") == str(saved["id"]):
                del st.query_params["analysis"]  # a reload shows the picker, not this notice again
        else:
            slide_elsewhere(saved)
        return None
    return start(session, greeting(session, fresh_run=run is not None and session.result is run))


def saved_as(analysis_id: int, run) -> bool:
    """Whether the Analyze page's run is saved as ``analysis_id`` (and not another analysis)."""
    try:
        return rv.is_same_run(case_store().get_analysis(analysis_id), run)
    except TILscopeError:
        return False


def pick_session() -> rv.ReviewSession | None:
    """The analysis to review, in order: one asked for from Cases; a run new since the last visit
    (the Analyze page's); the one under review; the one in the URL (after a reload)."""
    request = st.session_state.pop("review_request", None)
    run = st.session_state.get("analysis")
    run_key = rv.review_key(run) if run is not None else None
    new_run = run is not None and run_key != st.session_state.get("review_seen_run")
    st.session_state["review_seen_run"] = run_key
    current = st.session_state.get("review_session")
    if request is not None:
        same = st.session_state.get("analysis_id") == request
        opened = open_saved(int(request), run if same else None)
        return opened or current
    if new_run:
        aid = st.session_state.get("analysis_id")
        if aid is not None and saved_as(int(aid), run):
            opened = open_saved(int(aid), run)
            if opened is not None:
                return opened
        if run.review is None:
            fresh = rv.ReviewSession(run)
            return start(fresh, greeting(fresh, True))
    if current is not None:
        aid = st.session_state.get("analysis_id")
        if current.analysis_id is None and aid is not None and run is not None and \
                rv.review_key(run) == rv.review_key(current.result) and saved_as(int(aid), run):  # saved meanwhile
            try:
                current.analysis_id, current.case_label = int(aid), case_store().get_analysis(int(aid))["case_label"]
                st.query_params["analysis"] = str(aid)
            except TILscopeError:
                current.analysis_id = None
        return current
    wanted = st.query_params.get("analysis")
    if wanted and str(wanted).isdigit():
        return open_saved(int(wanted))
    return None


def nothing_to_review() -> None:
    st.info("No analysis to review yet: run one on the Analyze page, or open a saved analysis from Cases "
            "(or pick one here).")
    try:
        rows = case_store().list_analyses(limit=200)
    except TILscopeError as err:
        st.error(md_escape(err))
        return
    if not rows:
        return
    by_id = {r["id"]: r for r in rows}
    if st.session_state.get("review_pick") not in by_id:
        st.session_state.pop("review_pick", None)
    c1, c2 = st.columns([4, 1], vertical_alignment="bottom")
    chosen = c1.selectbox("Saved analysis", list(by_id), key="review_pick",
                          format_func=lambda i: f"#{i} · {by_id[i]['case_label']} · {by_id[i]['image_name']} · "
                                                f"{(by_id[i]['created_at'] or '')[:10]}"
                                                + (" · whole slide" if by_id[i].get("kind") == "slide" else ""))
    saved = None
    if by_id[chosen].get("kind") == "slide":  # its run and notice need the whole record
        try:
            saved = case_store().get_analysis(chosen)
        except TILscopeError:  # deleted meanwhile: "Review it" says so
            saved = None
    slide = saved is not None and slide_view.is_slide(saved["summary"])
    if c2.button("Review it", type="primary", disabled=slide, key="review_pick_open",
                 help="Whole-slide analyses are reviewed on the Slides page." if slide else None):
        st.session_state["review_request"] = chosen
        st.rerun()
    if slide:
        slide_elsewhere(saved)


# ----------------------------------------------------------------------------- the view


def current_frame(session: rv.ReviewSession) -> rv.CanvasFrame:
    shape = session.result.image.shape
    fit = rv.fit_zoom(shape, VIEW_W, VIEW_H)
    zoom = st.session_state.get("review_zoom") or fit
    return rv.view_frame(shape, zoom, st.session_state.get("review_centre"), VIEW_W, VIEW_H)


def set_view(zoom: float | None = None, centre=None) -> None:
    if zoom is not None:
        st.session_state["review_zoom"] = zoom
    if centre is not None:
        st.session_state["review_centre"] = (float(centre[0]), float(centre[1]))


def zoom_controls(session: rv.ReviewSession, frame: rv.CanvasFrame) -> None:
    fit = rv.fit_zoom(session.result.image.shape, VIEW_W, VIEW_H)
    steps = rv.zoom_steps(fit)
    z = frame.zoom
    idx = min(range(len(steps)), key=lambda k: abs(steps[k] - z))
    cols = st.columns(4)
    if cols[0].button("", icon=":material/zoom_out:", help="Zoom out", disabled=idx == 0, key="zoom_out"):
        set_view(steps[idx - 1], frame.centre_px)
        st.rerun()
    if cols[1].button("", icon=":material/zoom_in:", help="Zoom in", disabled=idx == len(steps) - 1, key="zoom_in"):
        set_view(steps[idx + 1], frame.centre_px)
        st.rerun()
    if cols[2].button("", icon=":material/fit_screen:", help="Fit: show the whole image", key="zoom_fit", disabled=idx == 0):
        st.session_state["review_zoom"], st.session_state["review_centre"] = None, None
        st.rerun()
    if cols[3].button("", icon=":material/center_focus_strong:", help="1:1, full resolution: one image pixel per screen pixel",
                      key="zoom_1", disabled=abs(z - 1) < 1e-6):
        set_view(1.0, frame.centre_px)
        st.rerun()
    p = st.columns(4)
    step_x, step_y = frame.view_w / 2, frame.view_h / 2
    cx, cy = frame.centre_px
    for col, (icon, dx, dy, name) in zip(p, ((":material/arrow_back:", -step_x, 0, "left"),
                                             (":material/arrow_upward:", 0, -step_y, "up"),
                                             (":material/arrow_downward:", 0, step_y, "down"),
                                             (":material/arrow_forward:", step_x, 0, "right"))):
        if col.button("", icon=icon, help=f"Move the view {name} by half its size", key=f"pan_{name}",
                      disabled=frame.is_whole_image):
            set_view(frame.zoom, (cx + dx, cy + dy))
            st.rerun()


@st.cache_data(show_spinner=False, max_entries=8)
def thumbnail(_rgb, key: str, shape: tuple[int, int]):
    frame = rv.display_frame(shape, NAV_W, NAV_H)
    return rv.downscale(_rgb, frame)


def navigator(session: rv.ReviewSession, frame: rv.CanvasFrame) -> None:
    from streamlit_image_coordinates import streamlit_image_coordinates

    image = session.result.image
    thumb = thumbnail(image.rgb, rv.review_key(session.result), image.shape)
    nav = rv.render_navigator(thumb, image.shape, frame, session.regions, image.mpp)
    st.caption("Navigator: click to move the view there.")
    streamlit_image_coordinates(nav, key="nav_click", width="content", image_format="JPEG", jpeg_quality=85,
                                cursor="pointer")


def pending_click(key: str, seen_key: str) -> dict | None:
    """A click of an image-coordinates component not handled yet (read before the component is drawn)."""
    value = st.session_state.get(key)
    if not isinstance(value, dict) or value.get("unix_time") is None:
        return None
    if value["unix_time"] == st.session_state.get(seen_key):
        return None
    st.session_state[seen_key] = value["unix_time"]
    return value


def handle_navigator_click(session: rv.ReviewSession, frame: rv.CanvasFrame) -> None:
    click = pending_click("nav_click", "nav_click_t")
    if click is None:
        return
    h, w = session.result.image.shape
    x = click["x"] / max(1, click.get("width") or 1) * w
    y = click["y"] / max(1, click.get("height") or 1) * h
    fit = rv.fit_zoom(session.result.image.shape, VIEW_W, VIEW_H)
    closer = [z for z in rv.zoom_steps(fit)[1:] if z >= 1.0] or rv.zoom_steps(fit)[-1:]
    set_view(frame.zoom if frame.zoom > fit * 1.05 else closer[0], (x, y))  # from the whole image: zoom in there


def handle_view_click(session: rv.ReviewSession, frame: rv.CanvasFrame, action: str, cls: dict | None, user: str,
                      comment: str) -> None:
    click = pending_click("view_click", "view_click_t")
    if click is None:
        return
    sx = frame.canvas_width_px / max(1, click.get("width") or frame.canvas_width_px)
    sy = frame.canvas_height_px / max(1, click.get("height") or frame.canvas_height_px)
    x_px, y_px = frame.to_image_px([[click["x"] * sx, click["y"] * sy]])[0]
    radius_px = PICK_SCREEN_PX * frame.scale_x
    clear_flash()
    t0 = time.perf_counter()
    try:
        if action == ACTIONS[0]:
            out = session.add_at(x_px, y_px, cls["name"], cls["role"], user=user, label=cls["label"], comment=comment)
        elif action == ACTIONS[1]:
            out = session.delete_at(x_px, y_px, radius_px, user=user, comment=comment)
        else:
            out = session.relabel_at(x_px, y_px, radius_px, cls["name"], cls["role"], user=user, label=cls["label"],
                                     comment=comment)
    except InputError as err:
        flash("warning", md_escape(str(err)[:1].upper() + str(err)[1:] + "."))
        return
    st.session_state["review_edit_s"] = time.perf_counter() - t0
    flash(out.kind, out.message)


def show_view(session: rv.ReviewSession, frame: rv.CanvasFrame, colors: dict, mode: str, draw: dict | None) -> list[dict]:
    image = session.result.image
    cells = session.cells()
    view = rv.render_view(image.rgb, frame, cells, colors, session.regions, image.mpp, session.deleted_xy_px())
    if mode == "Correct cells":
        from streamlit_image_coordinates import streamlit_image_coordinates

        streamlit_image_coordinates(view, key="view_click", width="content", image_format="JPEG",
                                    jpeg_quality=90, cursor="crosshair")
        return []
    from streamlit_drawable_canvas import st_canvas  # only inside a running app (see STYLE.md)

    buf = io.BytesIO()
    Image.fromarray(view).save(buf, format="JPEG", quality=90)
    canvas = st_canvas(
        fill_color=draw["fill"], stroke_width=2, stroke_color=draw["stroke"], background_image=buf.getvalue(),
        update_streamlit=True, height=frame.canvas_height_px, width=frame.canvas_width_px, drawing_mode=draw["tool"],
        key=f"review_canvas_{st.session_state.get('canvas_nonce', 0)}",
    )
    return list((canvas.json_data or {}).get("objects") or [])


def legend(session: rv.ReviewSession, classes: list[dict]) -> None:
    counts = session.class_counts()
    shown = [c for c in classes if counts.get(c["name"], 0) or c["name"] in dict(session.result.scenario.class_colors)]
    items = []
    for c in shown:  # class names and colours come from a registry or a model card: escaped, colours checked
        color = c["color"] if re.fullmatch(r"#[0-9a-fA-F]{3,8}|[a-zA-Z]{1,30}", str(c["color"])) else "gray"
        items.append(
            f"<span><span style='display:inline-block;width:11px;height:11px;border-radius:50%;border:2.5px solid "
            f"{color};vertical-align:middle'></span> {html.escape(str(c['label']))} "
            f"<span style='opacity:.7'>({html.escape(str(c['role']))}, {counts.get(c['name'], 0):,})</span></span>")
    shapes = ("<span>○ detected</span><span>□ added by hand</span><span>◉ relabelled</span>"
              "<span>✕ deleted</span>")
    regions = "".join(
        f"<span><span style='display:inline-block;width:12px;height:12px;border:2px solid rgb{KIND_COLORS[k]};"
        f"background:rgba{(*KIND_COLORS[k], 0.25)};vertical-align:middle'></span> {rv.KIND_LABELS[k].split(' (')[0]}</span>"
        for k in REGION_KINDS)
    st.html(
        "<div style='display:flex;flex-wrap:wrap;gap:4px 16px;font-size:0.85rem;line-height:1.6'>"
        f"<b>Cells:</b>{''.join(items)}</div>"
        f"<div style='display:flex;flex-wrap:wrap;gap:4px 16px;font-size:0.85rem'><b>Markers:</b>{shapes}"
        f"<b>Regions:</b>{regions}</div>"
    )


# ----------------------------------------------------------------------------- controls


def region_list(session: rv.ReviewSession, user: str) -> None:
    if not session.regions:
        if session.uses_predicted_compartments:
            st.caption("No regions drawn: the statistics use the predicted tissue compartments (tumour, stroma; "
                       "necrosis and background left out). A region drawn here replaces them.")
        else:
            st.caption("No regions yet. Without a tumour region, compartments come from a grid of cells.")
        return
    for i, r in enumerate(list(session.regions)):
        c1, c2 = st.columns([4, 1])
        c1.markdown(f"{REGION_SWATCH.get(r.kind, '■')} **{md_escape(r.name)}** · {r.area_mm2:.4f} mm²")
        if c2.button("", icon=":material/delete:", key=f"rm_region_{i}_{r.name}", help=f"Remove {md_escape(r.name)}"):
            session.remove_region(i, user=user)
            clear_flash()
            flash("info", f"Removed {md_escape(r.name)}.")
            st.rerun()


def import_regions(session: rv.ReviewSession, user: str) -> None:
    up = st.file_uploader("Import regions (GeoJSON from TILscope or QuPath)", type=["geojson", "json"], key="region_upload")
    if up is None or st.session_state.get("review_import_id") == up.file_id:
        return
    st.session_state["review_import_id"] = up.file_id
    clear_flash()
    try:
        got = rv.import_regions(up.getvalue(), session.mpp)
    except InputError as err:
        flash("error", f"{md_escape(up.name)}: {md_escape(err)}.")
        st.rerun()
    session.add_regions(got.regions, user=user)
    flash("success" if not got.skipped else "warning", f"{md_escape(up.name)}: {md_escape(got.message())}")
    st.rerun()


def handle_regions(session: rv.ReviewSession, objects: list[dict], frame: rv.CanvasFrame, kind: str, user: str) -> None:
    clear_flash()
    try:
        new, skipped = rv.canvas_objects_to_regions(objects, frame, session.mpp, kind, existing=session.regions)
    except InputError as err:
        flash("warning", f"The shape could not be read: {md_escape(err)}.")
        return
    session.add_regions(new, user=user)
    for r in new:
        flash("success", f"Added {md_escape(r.name)}: {r.area_um2:,.0f} µm² ({r.area_mm2:.4f} mm²).")
    for why in skipped:
        flash("warning", f"Not added: {md_escape(why)}.")


def statistics_settings() -> SpatialParams:
    """The thresholds the user can change (every one is printed next to its figure)."""
    d = SpatialParams()
    with st.expander("Statistics settings (thresholds)", expanded=False):
        c1, c2, c3 = st.columns(3)
        radii_text = c1.text_input("Radii r (µm, comma-separated)", ", ".join(f"{r:g}" for r in d.radii_um),
                                   help="Fraction of immune cells within r µm of a tumour cell.")
        half = c1.number_input("Invasive-margin half-width (µm)", 10.0, 5000.0, d.margin_half_width_um, 10.0,
                               help="The IM is the band within ± this distance of the tumour border (Galon 2006: 500 µm).")
        n_sim = c2.number_input("Random relabellings (envelopes)", 0, 999, d.n_simulations, 10,
                                help="Monte-Carlo simulations for the cross-K/L envelopes; 0 skips the envelopes.")
        grid = c2.number_input("Grid square (µm)", 10.0, 2000.0, d.grid_cell_um, 10.0,
                               help="Density heatmap and Morisita-Horn squares.")
        inflamed = c3.number_input("Inflamed if intratumoral density ≥ (cells/mm²)", 0.0, 1e6,
                                   d.inflamed_min_intratumoral_per_mm2, 10.0)
        excluded = c3.number_input("Excluded if stromal density ≥ (cells/mm²)", 0.0, 1e6, d.excluded_min_stromal_per_mm2, 10.0)
    try:
        radii = tuple(sorted({float(v) for v in radii_text.replace(";", ",").split(",") if v.strip()}))
    except ValueError:
        st.error(f"Radii {md_escape(repr(radii_text))} are not numbers: enter µm values like 10, 20, 30, 50. Using the defaults.")
        radii = d.radii_um
    params = SpatialParams(
        radii_um=radii or d.radii_um, margin_half_width_um=float(half), n_simulations=int(n_sim), grid_cell_um=float(grid),
        inflamed_min_intratumoral_per_mm2=float(inflamed), excluded_min_stromal_per_mm2=float(excluded),
    )
    try:
        return params.validate()
    except InputError as err:
        st.error(f"{md_escape(err)}. Using the default thresholds.")
        return d


# ----------------------------------------------------------------------------- numbers


def is_heavy(key: str) -> bool:
    """Key figures of the statistics too slow to follow every edit (invasive margin, cross-K/L)."""
    return key.startswith(("invasive_margin", "ripley"))


def figures(stats: dict, heavy: bool) -> list:
    from core.outputs.key_figures import key_figures

    return [f for f in key_figures(stats) if is_heavy(f.key) == heavy and f.key not in ("spatial", "phenotype")]


def metric_grid(rows: list, per_row: int = 4) -> None:
    for start in range(0, len(rows), per_row):
        cols = st.columns(per_row)
        for col, f in zip(cols, rows[start: start + per_row]):
            unit = f" ({f.unit})" if f.unit and f.unit not in ("cells", "fraction") else ""
            col.metric(f.measure[:1].upper() + f.measure[1:] + unit, rv.format_figure(f.value, f.unit),
                       help=f.setting or None)


def show_numbers(session: rv.ReviewSession, params: SpatialParams, classes: list[dict]) -> dict:
    """The figures that follow every edit; returns the live statistics."""
    live = session.live_statistics(params)
    metric_grid(figures(live, heavy=False))
    ph = live.get("phenotype") or {}
    if live.get("available"):
        call = ph.get("call") or "not determined"
        st.markdown(f"**Immune phenotype: {call}** — {ph.get('rule', '')}.")
        st.caption((ph.get("reason") + ". " if ph.get("reason") else "") + ph.get("note", ""))
    summary = session.reviewed_summary()
    labels = {c["name"]: c["label"] for c in classes}
    dens = summary.get("density_per_mm2") or {}
    table = pd.DataFrame({
        "class": [labels.get(k, k) for k in summary["counts"]],
        "count": [f"{v:,}" for v in summary["counts"].values()],
        "density (cells/mm²)": ["n/a" if not dens else f"{dens[k]:,.0f}" for k in summary["counts"]],
    }).set_index("class")
    st.table(table)
    st.caption(f"Analysed area: {summary['analysed_area']}"
               + (f", {summary['area_mm2']:.4f} mm²" if summary.get("area_mm2") else "")
               + f" · {summary['review']['detected_n_cells']:,} cells as detected · thresholds: r = "
               + ", ".join(f"{r:g}" for r in params.radii_um) + f" µm, inflamed ≥ {params.inflamed_min_intratumoral_per_mm2:g}, "
               f"excluded ≥ {params.excluded_min_stromal_per_mm2:g} cells/mm².")
    for wmsg in live.get("warnings") or []:
        st.caption(f"Note: {md_escape(wmsg)}")
    return live


def show_heavy(session: rv.ReviewSession, params: SpatialParams) -> dict | None:
    """Invasive margin (CT / IM) and the cross-K/L test: computed on demand when they are slow."""
    stats = session.statistics_if_current(params)
    if stats is None:
        cheap = session.last_statistics_s is None or session.last_statistics_s < AUTO_STATISTICS_S
        if cheap or st.session_state.pop("review_compute", False):
            with st.spinner("Computing the invasive margin and cross-K/L…"):
                stats = session.statistics(params)
    if stats is None:
        stats = session.last_statistics()
        c1, c2 = st.columns([3, 1], vertical_alignment="center")
        c1.warning(f"Computed before the latest changes: these take {session.last_statistics_s:.1f} s on this field, "
                   "so they do not follow every edit (the figures above do). Saving the review recomputes them.")
        if c2.button("Update now", type="primary", key="review_update_stats"):
            st.session_state["review_compute"] = True
            st.rerun()
    else:
        st.caption(f"Up to date ({session.last_statistics_s or 0:.2f} s to compute).")
    if stats is None:
        return None
    metric_grid(figures(stats, heavy=True), per_row=3)
    st.caption(f"Invasive margin ±{params.margin_half_width_um:g} µm around the tumour border; cross-K/L envelopes from "
               f"{params.n_simulations} random relabellings; study window: the whole image minus exclusions "
               f"({(stats.get('window') or {}).get('area_mm2', 0) or 0:.4f} mm²).")
    return stats


def show_plots(live: dict, stats: dict | None, session: rv.ReviewSession, params: SpatialParams) -> None:
    if not st.toggle("Show plots", key="review_plots", help="Densities per region, heatmap, distances, cross-K/L."):
        return
    t1, t2, t3, t4 = st.tabs(["Density per region", "Density heatmap", "Distances", "Cross-K / L"])
    with t1:
        st.plotly_chart(region_density_figure({**(stats or {}), **live}), width="stretch")
        st.caption(f"Immune cells/mm² per region, exclusions subtracted; CT = > {params.margin_half_width_um:g} µm inside "
                   f"the border, IM = ±{params.margin_half_width_um:g} µm.")
    with t2:
        from core.spatial.heatmaps import HEATMAP_MIN_TISSUE_FRACTION, immune_density_map

        image = session.result.image
        per = (f"the tissue in each square (exclusion regions cut out), as on a whole slide's heat map; squares with "
               f"less than {HEATMAP_MIN_TISSUE_FRACTION:.0%} tissue are left empty")
        if image.mpp:
            h, w = image.shape
            thumb = thumbnail(image.rgb, rv.review_key(session.result), image.shape)
            reviewed = session.reviewed_result()  # cells outside exclusions; its tissue has the exclusions cut out
            tissue = getattr(reviewed, "tissue_mask", None)
            if tissue is None:
                per = "the whole image in each square (no tissue mask: glass counts as analysed)"
            dmap = immune_density_map(reviewed.cells, bin_um=params.grid_cell_um,
                                      window_um=(0.0, 0.0, w * image.mpp, h * image.mpp),
                                      tissue_px=None if tissue is None else tissue.mask,
                                      tissue_mpp=None if tissue is None else tissue.scale * image.mpp,
                                      whole_window=tissue is None, min_tissue_fraction=HEATMAP_MIN_TISSUE_FRACTION)
            st.plotly_chart(density_heatmap(dmap, role="immune", image=thumb, mpp=image.mpp * w / thumb.shape[1],
                                            analysed_area="the whole image" if tissue is None else "tissue"),
                            width="stretch")
        st.caption(f"Grid of {params.grid_cell_um:g} µm squares; colour = immune cells per mm² of {per}.")
    with t3:
        st.plotly_chart(distance_figure(live), width="stretch")
        st.caption(f"Marked thresholds r = {', '.join(f'{r:g}' for r in params.radii_um)} µm; bins "
                   f"{params.histogram_bin_um:g} µm up to {params.histogram_max_um:g} µm.")
    with t4:
        if stats is None:
            st.info("Cross-K/L needs the full statistics: press Update now above.")
            return
        st.plotly_chart(ripley_figure(stats, "L"), width="stretch")
        st.plotly_chart(ripley_figure(stats, "K"), width="stretch")
        st.caption(f"Envelopes from {params.n_simulations} random relabellings of the tumour/immune labels; global envelope "
                   f"α = {params.envelope_alpha:g}; r from {params.ripley_radii_um[0]:g} to {params.ripley_radii_um[-1]:g} µm "
                   "(radii above half the image's shorter side are dropped).")


def show_cells(session: rv.ReviewSession, stats: dict | None, params: SpatialParams) -> None:
    """The reviewed cell table and the correction log, drawn only when asked for (they are long)."""
    cells = session.cells()
    n_del = session.log.summary()["n_deleted"]
    st.caption(f"{len(cells):,} reviewed cells ({n_del} deleted detection(s) are in the correction log); "
               f"{len(session.log.edits)} edit(s) recorded.")
    c1, c2 = st.columns(2)
    if c1.toggle("Show the cell table", key="show_cell_table"):
        table = cells
        if session.mpp and stats is not None and session.statistics_if_current(params) is not None:
            key = session.fingerprint(params)
            cached = st.session_state.get("review_cell_table")
            if cached is None or cached[0] != key:
                cached = (key, cell_spatial_table(cells, session.regions, session.params(params)))
                st.session_state["review_cell_table"] = cached
            table = cached[1]
        only = st.checkbox("Only cells edited by hand", key="only_edited")
        shown = table[table["edited"] != ""] if only else table
        first = [c for c in ("cell_id", "edited", "cell_class", "role", "x_um", "y_um", "x_px", "y_px", "probability",
                             "compartment", "zone", "border_distance_um", "nearest_tumour_um") if c in shown.columns]
        st.dataframe(shown[first], hide_index=True, width="stretch", height=260)
        st.caption("'edited' marks cells added or relabelled by hand; negative ids are cells added by hand.")
    if c2.toggle("Show the correction log", key="show_log") and session.log.edits:
        st.dataframe(pd.DataFrame([{
            "time (UTC)": e.time[:19].replace("T", " "), "user": e.user, "edit": e.op, "cell": rv.cell_name(e.cell_id),
            "from": e.from_class or "", "to": e.cell_class or "", "why": e.comment or "",
            "undone": f"by {e.undone_by} {(e.undone_time or '')[:19].replace('T', ' ')}" if e.undone else "",
        } for e in session.log.edits]), hide_index=True, width="stretch")


# ----------------------------------------------------------------------------- saving


def downloads(session: rv.ReviewSession, colors: dict) -> None:
    stem = session.result.image.name.rsplit(".", 1)[0]
    mpp = session.mpp
    d1, d2, d3, d4 = st.columns(4)
    if mpp:
        d1.download_button("Regions + cells (GeoJSON)",
                           lambda: json.dumps(cells_to_geojson(session.reviewed_result().cells, colors, mpp, session.regions)),
                           f"{stem}-review.geojson", "application/geo+json", help="Opens in QuPath.")
        d2.download_button("Regions only (GeoJSON)", lambda: json.dumps(regions_to_geojson(session.regions, mpp)),
                           f"{stem}-regions.geojson", "application/geo+json", disabled=not session.regions)
    d3.download_button("Reviewed cells (CSV)", lambda: cells_csv(session.reviewed_result().cells),
                       f"{stem}-cells-reviewed.csv", "text/csv",
                       help="As the saved cells.csv will be: cells inside exclusion regions are left out.")
    d4.download_button("Correction log (JSON)", lambda: session.log.to_json(), f"{stem}-corrections.json",
                       "application/json")


def save_box(session: rv.ReviewSession, params: SpatialParams, user: str) -> None:
    pending = session.audit_events()
    if session.analysis_id is not None:
        st.caption(f"Saves into analysis #{session.analysis_id} (case {md_escape(session.case_label)}): its overlay, numbers, "
                   "tables and report become the reviewed ones; the analysis as detected is kept."
                   + (f" {len(pending)} change(s) not saved yet." if pending else " No unsaved changes."))
        label = None
    else:
        label = st.text_input("Case label", placeholder="e.g. B-2024-0113", help="The case this analysis belongs to.")
    comment = st.text_input("Why (optional, recorded in the audit log)", key="review_save_comment",
                            placeholder="e.g. second read after the tumour board")
    writer = can_save()
    if not writer:
        st.caption("You are a viewer: you can correct and look here, but saving a review needs the analyst role "
                   "(ask an admin).")
    if not st.button("Save review", type="primary", disabled=not writer):
        return
    if label is not None and not label.strip():
        st.error("Enter a case label to save the review, e.g. the specimen or block number.")
        return
    try:
        with st.spinner("Saving the review, its overlay and report…"):
            aid = rv.save_review(case_store(), session, user=user, comment=comment or None, params=params,
                                 case_label=label)
    except TILscopeError as err:
        st.error(f"The review was not saved: {md_escape(err)}")
        return
    stats = session.statistics(params)
    if st.session_state.get("analysis_id") in (aid, None) and st.session_state.get("analysis") is not None and \
            rv.review_key(st.session_state["analysis"]) == rv.review_key(session.result):
        # The Analyze page shows this analysis: give it the reviewed state.
        st.session_state["analysis"] = session.reviewed_result(stats)
        st.session_state["analysis_id"] = aid
    st.query_params["analysis"] = str(aid)
    s = session.log.summary()
    clear_flash()
    flash("success", f"Review saved in analysis #{aid} (case {md_escape(session.case_label)}) by {md_escape(user)}: {len(session.regions)} "
                     f"region(s), {s['n_corrections']} cell(s) corrected by hand. Cases, Analyze and the downloads "
                     "now show the reviewed state.")
    st.rerun()


# ----------------------------------------------------------------------------- page


def main(session: rv.ReviewSession, user: str) -> None:
    image = session.result.image
    scenario = get_scenario(session.result.scenario_key)
    mpp = image.mpp
    h, w = image.shape
    where = f"#{session.analysis_id} · {md_escape(session.case_label)} · " if session.analysis_id is not None \
        else "not saved · "
    st.caption(
        where + f"{md_escape(image.name)} · {w} x {h} px · "
        + (f"{mpp:g} µm/px ({w * mpp:,.0f} x {h * mpp:,.0f} µm)" if mpp else "pixel size unknown")
        + f" · {scenario.title} · run {session.result.summary.get('created_at', '')[:16].replace('T', ' ')}"
        + (f" · last review by {md_escape(session.saved_by)}" if session.saved_by else "")
    )
    for note in session.notes:
        st.info(md_escape(note))
    classes = rv.correction_classes(scenario.classes)
    colors = {c["name"]: c["color"] for c in classes}
    modes = ["Correct cells", "Draw regions"] if mpp else ["Correct cells"]
    if not mpp:
        st.warning("The pixel size is unknown, so regions, densities and distances cannot be measured: analyse again with "
                   "the microns per pixel. Cells can still be corrected.")
    mode = st.radio("Mode", modes, horizontal=True, key="review_mode")

    frame = current_frame(session)
    handle_navigator_click(session, frame)
    frame = current_frame(session)
    left, right = st.columns([1.25, 4], gap="medium")
    draw = None
    with left:
        if mode == "Draw regions":
            kind = st.radio("Region kind", REGION_KINDS, format_func=rv.KIND_LABELS.get, key="region_kind")
            tool = TOOLS[st.radio("Tool", list(TOOLS), horizontal=True, key="region_tool")]
            st.caption(TOOL_HELP[tool])
            rgb = KIND_COLORS[kind]
            draw = {"tool": tool, "stroke": "#%02x%02x%02x" % rgb, "fill": f"rgba({rgb[0]}, {rgb[1]}, {rgb[2]}, 0.25)",
                    "kind": kind}
        else:
            action = st.radio("Click on the image to", ACTIONS, key="correct_action")
            cls = None
            if action != ACTIONS[1]:
                chosen = st.selectbox("Class", [c["name"] for c in classes], key="correct_class",
                                      format_func=lambda n: next(c["label"] for c in classes if c["name"] == n))
                cls = next(c for c in classes if c["name"] == chosen)
            comment = st.text_input("Why (optional)", key="edit_comment", placeholder="e.g. mitosis, not a lymphocyte",
                                    help="Recorded with each edit you make while it is filled in.")
            handle_view_click(session, frame, action, cls, user, comment)
            if st.button("Undo last correction", disabled=not session.log.can_undo, icon=":material/undo:"):
                clear_flash()
                out = session.undo(user=user)
                flash(out.kind, out.message)
                st.rerun()
            s = session.log.summary()
            st.caption(f"{s['n_corrections']} cell(s) corrected by hand: {s['n_added']} added, {s['n_deleted']} deleted, "
                       f"{s['n_relabelled']} relabelled ({s['n_edits']} edits recorded, {s['n_undone']} undone).")
        zoom_controls(session, frame)
        navigator(session, frame)
    with right:
        show_flash()
        objects = show_view(session, frame, colors, mode, draw)
        pick_um = PICK_SCREEN_PX * frame.scale_x * mpp if mpp else None
        st.caption(
            f"Zoom {100 * frame.zoom:.0f} % · showing x {frame.x0_px}–{frame.x0_px + frame.view_w}, "
            f"y {frame.y0_px}–{frame.y0_px + frame.view_h} of {w} x {h} px"
            + (f" · a click picks the nearest cell within {pick_um:.1f} µm" if mode == "Correct cells" and pick_um else "")
            + (f" · last edit applied in {st.session_state['review_edit_s'] * 1000:.0f} ms"
               if st.session_state.get("review_edit_s") is not None and mode == "Correct cells" else "")
        )
        legend(session, classes)
        if mode == "Draw regions":
            st.markdown("**Regions**")
            region_list(session, user)
            import_regions(session, user)
    if objects and mode == "Draw regions":
        handle_regions(session, objects, frame, draw["kind"], user)
        st.session_state["canvas_nonce"] = st.session_state.get("canvas_nonce", 0) + 1
        st.rerun()

    st.divider()
    st.subheader("Key numbers")
    params = statistics_settings()
    live = show_numbers(session, params, classes)
    stats = None
    if live.get("available"):
        st.markdown("**Invasive margin and cross-K/L**")
        stats = show_heavy(session, params)
        show_plots(live, stats, session, params)
    show_cells(session, stats, params)

    st.subheader("Export and save")
    downloads(session, colors)
    save_box(session, params, user)


_t0 = time.perf_counter()
st.title("Review: regions & corrections")
try:
    current = pick_session()
except Exception:  # the browser gets a message, the log gets the traceback
    log.exception("opening an analysis for review failed")
    st.error("The analysis could not be opened; the details are in the server log.")
    current = None
if current is None:
    user_box()
    nothing_to_review()
    st.stop()
reviewer = require_user("every correction, region and saved review")
user_box()
try:
    main(current, reviewer)
except TILscopeError as err:
    st.error(md_escape(err))
except Exception:  # the browser gets a message, the log gets the traceback
    log.exception("review page failed")
    st.error("Something went wrong on this page; the details are in the server log. Your regions and corrections are kept.")
log.debug("review page ran in %.3f s", time.perf_counter() - _t0)
