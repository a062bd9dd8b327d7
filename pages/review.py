"""Review: draw regions on the analysed image, correct cells by hand, see the statistics change."""

from __future__ import annotations

import json
import logging
import uuid

import numpy as np
import pandas as pd
import streamlit as st
from PIL import Image

from core import review as rv
from core.errors import InputError, TILscopeError
from core.outputs.plots import density_heatmap, distance_figure, region_density_figure, ripley_figure
from core.review import CorrectionLog
from core.scenarios.registry import get_scenario
from core.spatial import SpatialParams, cell_spatial_table
from core.spatial.regions import KIND_COLORS, REGION_KINDS, cells_to_geojson, read_regions_geojson, regions_to_geojson
from pages._resources import case_store
from pages._router import through_app_router

through_app_router()

log = logging.getLogger("tilscope.review")

TOOLS = {"Polygon": "polygon", "Rectangle": "rect", "Freehand": "freedraw"}
TOOL_HELP = {
    "polygon": "Click the vertices; click the first vertex again to close the polygon.",
    "rect": "Press and drag over the area.",
    "freedraw": "Trace the outline with the mouse held down; the end is joined to the start.",
}
ACTIONS = ("Add a missed cell", "Delete a cell", "Relabel a cell")


def flash(kind: str, text: str) -> None:
    """A message about the latest edit; it stays until the next edit (reruns would wipe a plain one)."""
    st.session_state.setdefault("review_flash", []).append((kind, text))


def clear_flash() -> None:
    st.session_state["review_flash"] = []


def show_flash() -> None:
    for kind, text in st.session_state.get("review_flash", []):
        {"success": st.success, "warning": st.warning, "error": st.error}.get(kind, st.info)(text)


def reset_review(result, key: str) -> None:
    """Fresh regions and corrections for a newly loaded analysis (restored if saved before)."""
    st.session_state["review_key"] = key
    clear_flash()
    st.session_state["regions"] = []
    st.session_state["corrections"] = CorrectionLog()
    st.session_state["canvas_nonce"] = st.session_state.get("canvas_nonce", 0) + 1
    st.session_state.pop("review_stats", None)
    st.session_state.pop("review_import_id", None)
    saved = saved_analysis(result)
    if saved is None:
        return
    if saved.get("regions") and result.image.mpp:
        st.session_state["regions"] = read_regions_geojson(saved["regions"], result.image.mpp, on_unknown="skip")
    if saved.get("corrections"):
        st.session_state["corrections"] = CorrectionLog.from_json(saved["corrections"])
    flash("info", f"Restored the saved review of analysis #{saved['id']}.")


def saved_analysis(result) -> dict | None:
    """The stored analysis of this run (``st.session_state["analysis_id"]``), if it is this run."""
    aid = st.session_state.get("analysis_id")
    if aid is None:
        return None
    try:
        a = case_store().get_analysis(int(aid))
    except TILscopeError:
        return None
    same = a.get("image_sha256") == result.image.sha256 and (a.get("summary") or {}).get("created_at") == result.summary.get(
        "created_at"
    )
    return a if same else None


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
        st.error(f"Radii {radii_text!r} are not numbers: enter µm values like 10, 20, 30, 50. Using the defaults.")
        radii = d.radii_um
    params = SpatialParams(
        radii_um=radii or d.radii_um, margin_half_width_um=float(half), n_simulations=int(n_sim), grid_cell_um=float(grid),
        inflamed_min_intratumoral_per_mm2=float(inflamed), excluded_min_stromal_per_mm2=float(excluded),
    )
    try:
        return params.validate()
    except InputError as err:
        st.error(f"{err}. Using the default thresholds.")
        return d


def deleted_positions(result, log: CorrectionLog) -> np.ndarray:
    """(N, 2) image pixels of detections deleted by hand."""
    gone = {e.cell_id for e in log.edits if e.op == "delete" and not e.undone and e.cell_id >= 0}
    if not gone:
        return np.zeros((0, 2))
    ids = result.cells["cell_id"].to_numpy() if "cell_id" in result.cells.columns else np.arange(len(result.cells))
    sel = np.isin(ids, list(gone))
    return result.cells.loc[sel, ["x_px", "y_px"]].to_numpy(dtype=np.float64)


def handle_regions(objects: list[dict], frame: rv.CanvasFrame, mpp: float, kind: str) -> None:
    regions = st.session_state["regions"]
    new, skipped = rv.canvas_objects_to_regions(objects, frame, mpp, kind, existing=regions)
    regions.extend(new)
    for r in new:
        flash("success", f"Added {r.name}: {r.area_um2:,.0f} µm² ({r.area_mm2:.4f} mm²).")
    for why in skipped:
        flash("warning", f"Not added: {why}.")


def handle_clicks(objects, frame, result, log: CorrectionLog, action: str, cls: dict, radius: float, user: str) -> None:
    mpp = result.image.mpp
    for x_px, y_px in rv.canvas_click_points(objects, frame).tolist():
        if action == ACTIONS[0]:
            cid = log.add_cell(x_px, y_px, cls["name"], cls["role"], mpp, user=user)
            flash("success", f"Added cell {cid} ({cls['label']}) at x {x_px:.0f}, y {y_px:.0f} px.")
            continue
        cells = rv.reviewed_cells(result, log)
        if mpp:
            hit = rv.nearest_cell(cells, x_px * mpp, y_px * mpp, radius, units="um")
        else:
            hit = rv.nearest_cell(cells, x_px, y_px, radius, units="px")
        unit = "µm" if mpp else "px"
        if hit is None:
            flash("warning", f"No cell within {radius:g} {unit} of the click: click closer to a marker.")
            continue
        cid, dist = hit
        row = cells.loc[cells["cell_id"] == cid].iloc[0]
        if action == ACTIONS[1]:
            log.delete_cell(cid, user=user)
            flash("success", f"Deleted cell {cid} ({row['cell_class']}, {dist:.1f} {unit} from the click).")
        elif row["cell_class"] == cls["name"]:
            flash("info", f"Cell {cid} is already {cls['label']}: choose another class to relabel it.")
        else:
            log.relabel_cell(cid, cls["name"], cls["role"], user=user)
            flash("success", f"Relabelled cell {cid}: {row['cell_class']} → {cls['name']}.")


def region_list(mpp: float | None) -> None:
    regions = st.session_state["regions"]
    if not regions:
        st.caption("No regions yet. Without a tumour region, compartments come from a grid of cells.")
        return
    for i, r in enumerate(list(regions)):
        c1, c2 = st.columns([4, 1])
        col = "#%02x%02x%02x" % KIND_COLORS[r.kind]
        c1.markdown(f"<span style='color:{col}'>■</span> **{r.name}** · {r.area_mm2:.4f} mm²", unsafe_allow_html=True)
        if c2.button("Remove", key=f"rm_region_{i}_{r.name}", help=f"Remove {r.name}"):
            regions.pop(i)
            clear_flash()
            flash("info", f"Removed {r.name}.")
            st.rerun()


def import_regions(mpp: float) -> None:
    up = st.file_uploader("Import regions (GeoJSON from TILscope or QuPath)", type=["geojson", "json"], key="region_upload")
    if up is None or st.session_state.get("review_import_id") == up.file_id:
        return
    st.session_state["review_import_id"] = up.file_id
    try:
        new = read_regions_geojson(up.getvalue(), mpp, on_unknown="skip")
    except InputError as err:
        st.error(f"{up.name}: {err}")
        return
    st.session_state["regions"].extend(new)
    clear_flash()
    flash("success", f"Imported {len(new)} region(s) from {up.name}.")
    st.rerun()


def show_canvas(result, frame, shown, cells, colors, mode: str, stroke: str, fill: str, point: bool) -> list[dict]:
    from streamlit_drawable_canvas import st_canvas  # only inside a running app (see STYLE.md)

    bg = rv.render_review_image(
        shown, frame, cells, colors, st.session_state["regions"], result.image.mpp,
        deleted_positions(result, st.session_state["corrections"]),
    )
    canvas = st_canvas(
        fill_color=fill, stroke_width=1 if point else 2, stroke_color=stroke, background_image=Image.fromarray(bg),
        update_streamlit=True, height=frame.canvas_height_px, width=frame.canvas_width_px, drawing_mode=mode,
        point_display_radius=3, key=f"review_canvas_{st.session_state['canvas_nonce']}",
    )
    return list((canvas.json_data or {}).get("objects") or [])


def show_key_figures(stats: dict, params: SpatialParams) -> None:
    rows = rv.key_figures(stats)
    metric_rows = [r for r in rows if r["label"] != "Immune phenotype"]
    for start in range(0, len(metric_rows), 3):
        cols = st.columns(3)
        for col, r in zip(cols, metric_rows[start : start + 3]):
            unit = f" ({r['unit']})" if r["unit"] and r["unit"] not in ("cells", "fraction") else ""
            col.metric(r["label"] + unit, rv.format_figure(r["value"], r["unit"]), help=r["note"] or None)
    ph = stats.get("phenotype") or {}
    if stats.get("available"):
        call = ph.get("call") or "not determined"
        st.markdown(f"**Immune phenotype: {call}** — {ph.get('rule', '')}.")
        st.caption((ph.get("reason") + ". " if ph.get("reason") else "") + ph.get("note", ""))
    st.caption(
        f"Thresholds: r = {', '.join(f'{r:g}' for r in params.radii_um)} µm · invasive margin ±{params.margin_half_width_um:g} µm · "
        f"inflamed ≥ {params.inflamed_min_intratumoral_per_mm2:g}, excluded ≥ {params.excluded_min_stromal_per_mm2:g} cells/mm² · "
        f"study window: the whole image ({(stats.get('window') or {}).get('area_mm2', 0) or 0:.4f} mm²)."
    )


def show_plots(stats, cells, shown, frame, result, params: SpatialParams) -> None:
    t1, t2, t3, t4 = st.tabs(["Density per region", "Density heatmap", "Distances", "Cross-K / L"])
    with t1:
        st.plotly_chart(region_density_figure(stats), width="stretch")
        st.caption(f"Immune cells/mm² per region, exclusions subtracted; CT = > {params.margin_half_width_um:g} µm inside "
                   f"the border, IM = ±{params.margin_half_width_um:g} µm.")
    with t2:
        mpp = result.image.mpp
        if mpp:
            h, w = result.image.shape
            fig = density_heatmap(cells, params.grid_cell_um, "immune", extent_um=(0.0, 0.0, w * mpp, h * mpp),
                                  image=shown, mpp=mpp * frame.scale_x)
            st.plotly_chart(fig, width="stretch")
        st.caption(f"Grid of {params.grid_cell_um:g} µm squares; colour = immune cells/mm².")
    with t3:
        st.plotly_chart(distance_figure(stats), width="stretch")
        st.caption(f"Marked thresholds r = {', '.join(f'{r:g}' for r in params.radii_um)} µm; bins "
                   f"{params.histogram_bin_um:g} µm up to {params.histogram_max_um:g} µm.")
    with t4:
        st.plotly_chart(ripley_figure(stats, "L"), width="stretch")
        st.plotly_chart(ripley_figure(stats, "K"), width="stretch")
        st.caption(f"Envelopes from {params.n_simulations} random relabellings of the tumour/immune labels; global envelope "
                   f"α = {params.envelope_alpha:g}; r from {params.ripley_radii_um[0]:g} to {params.ripley_radii_um[-1]:g} µm "
                   "(radii above half the image's shorter side are dropped).")


def save_review(result, stats: dict, params: SpatialParams) -> None:
    from core.outputs.exports import build_exports, save_result

    regions = st.session_state["regions"]
    log_: CorrectionLog = st.session_state["corrections"]
    mpp = result.image.mpp
    store = case_store()
    saved = saved_analysis(result)
    reviewed = rv.reviewed_result(result, log_, spatial=stats)
    if saved is not None:
        st.caption(f"Saves into analysis #{saved['id']} ({saved['case_label']}).")
        if st.button("Save review", type="primary"):
            with st.spinner("Saving the review and its report…"):
                store.update_review(
                    saved["id"], regions=regions_to_geojson(regions, mpp) if regions and mpp else None,
                    corrections=json.loads(log_.to_json()), n_corrections=log_.n_corrections, spatial=stats,
                    summary=reviewed.summary,
                )
                files = build_exports(reviewed, regions=regions or None, record=store.get_record(saved["id"]))
                store.add_files(saved["id"], files)
            st.success(f"Review saved in analysis #{saved['id']}: {len(regions)} region(s), "
                       f"{log_.n_corrections} cell(s) corrected by hand.")
        return
    label = st.text_input("Case label", placeholder="e.g. B-2024-0113", help="The case this analysis belongs to.")
    if st.button("Save review", type="primary"):
        if not label.strip():
            st.error("Enter a case label to save the review, e.g. the specimen or block number.")
            return
        with st.spinner("Saving the analysis, its review and report…"):
            aid = save_result(reviewed, label, store, spatial=stats, regions=regions or None, corrections=log_,
                              params=params.to_dict())
        st.session_state["analysis_id"] = aid
        st.success(f"Saved as analysis #{aid} in case {label.strip()!r}.")


def main(result) -> None:
    scenario = get_scenario(result.scenario_key)
    key = rv.review_key(result)
    if st.session_state.get("review_key") != key:
        reset_review(result, key)
    st.session_state.setdefault("reviewer", f"session-{uuid.uuid4().hex[:8]}")
    mpp = result.image.mpp
    h, w = result.image.shape
    st.caption(
        f"{result.image.name} · {w} x {h} px · "
        + (f"{mpp:g} µm/px ({w * mpp:,.0f} x {h * mpp:,.0f} µm)" if mpp else "pixel size unknown")
        + f" · {scenario.title} · run {result.summary.get('created_at', '')}"
    )
    show_flash()
    log_: CorrectionLog = st.session_state["corrections"]
    classes = rv.correction_classes(scenario.classes)
    colors = {c["name"]: c["color"] for c in classes}
    frame = rv.display_frame(result.image.shape, max_width_px=1000, max_height_px=720)
    shown_key = (key, frame)
    if st.session_state.get("review_shown_key") != shown_key:
        st.session_state["review_shown"] = rv.downscale(result.image.rgb, frame)
        st.session_state["review_shown_key"] = shown_key
    shown = st.session_state["review_shown"]
    cells = rv.reviewed_cells(result, log_)

    modes = ["Draw regions", "Correct cells"] if mpp else ["Correct cells"]
    if not mpp:
        st.warning("The pixel size is unknown, so regions, densities and distances cannot be measured: analyse again with "
                   "the microns per pixel. Cells can still be corrected.")
    top1, top2 = st.columns([3, 1])
    mode = top1.radio("Mode", modes, horizontal=True, key="review_mode")
    top2.text_input("Reviewer", key="reviewer", help="Recorded with every correction, with the time (UTC).")
    c1, c2, c3 = st.columns([1.2, 1.2, 2])
    if mode == "Draw regions":
        with c1:
            kind = st.radio("Region kind", REGION_KINDS, format_func=rv.KIND_LABELS.get, key="region_kind")
        with c2:
            tool = TOOLS[st.radio("Tool", list(TOOLS), horizontal=True, key="region_tool")]
            st.caption(TOOL_HELP[tool])
        with c3:
            st.markdown("**Regions**")
            region_list(mpp)
        rgb = KIND_COLORS[kind]
        stroke, fill, drawing_mode = "#%02x%02x%02x" % rgb, f"rgba({rgb[0]}, {rgb[1]}, {rgb[2]}, 0.25)", tool
    else:
        with c1:
            action = st.radio("Click to", ACTIONS, key="correct_action")
        with c2:
            cls = None
            if action != ACTIONS[1]:
                chosen = st.selectbox("Class", [c["name"] for c in classes], key="correct_class",
                                      format_func=lambda n: next(c["label"] for c in classes if c["name"] == n))
                cls = next(c for c in classes if c["name"] == chosen)
            radius = 0.0
            if action != ACTIONS[0]:
                default_r = max(8.0, 8 * frame.scale_x * mpp) if mpp else max(16.0, 8 * frame.scale_x)
                radius = st.number_input(f"Pick radius ({'µm' if mpp else 'px'})", 1.0, 200.0, float(round(default_r, 1)),
                                         1.0, key="pick_radius", help="A click picks the nearest cell within this distance.")
        with c3:
            s = log_.summary()
            if st.button("Undo last correction", disabled=not log_.can_undo, icon=":material/undo:"):
                clear_flash()
                undone = log_.undo(user=st.session_state["reviewer"])
                flash("info", f"Undone: {undone.op} of cell {undone.cell_id}.")
                st.rerun()
            st.caption(f"{s['n_corrections']} cell(s) corrected by hand: {s['n_added']} added, {s['n_deleted']} deleted, "
                       f"{s['n_relabelled']} relabelled ({s['n_edits']} edits recorded, {s['n_undone']} undone).")
        stroke, fill, drawing_mode = "#00b7ff", "#00b7ff", "point"
    objects = show_canvas(result, frame, shown, cells, colors, drawing_mode, stroke, fill, point=mode != "Draw regions")
    st.caption("Markers: ○ detected · □ added by hand · ◉ relabelled · × deleted. Region outlines in the colour of "
               "their kind: tumour red, stroma green, exclude grey, margin yellow."
               + (f" Shown at {100 / frame.scale_x:.0f} % of full resolution." if frame.scale_x > 1.001 else ""))
    if mode == "Draw regions":
        import_regions(mpp)
    if objects:
        clear_flash()
        if mode == "Draw regions":
            handle_regions(objects, frame, mpp, kind)
        else:
            handle_clicks(objects, frame, result, log_, action, cls, radius, st.session_state["reviewer"])
        st.session_state["canvas_nonce"] += 1
        st.rerun()

    st.divider()
    st.subheader("Key numbers")
    params = rv.review_params(result, statistics_settings())
    regions = st.session_state["regions"]
    fp = (key, rv.state_fingerprint(log_, regions, params))
    cached = st.session_state.get("review_stats")
    if cached is None or cached[0] != fp:
        with st.spinner("Computing the statistics…"):
            cached = (fp, rv.review_statistics(result, log_, regions, params))
        st.session_state["review_stats"] = cached
    stats = cached[1]
    show_key_figures(stats, params)
    for wmsg in stats.get("warnings") or []:
        st.caption(f"Note: {wmsg}")
    if stats.get("available"):
        show_plots(stats, cells, shown, frame, result, params)

    st.subheader("Cells")
    table = cell_spatial_table(cells, regions, params) if mpp else cells
    only = st.checkbox("Only cells edited by hand", key="only_edited")
    shown_table = table[table["edited"] != ""] if only else table
    first = [c for c in ("cell_id", "edited", "cell_class", "role", "x_um", "y_um", "x_px", "y_px", "probability",
                         "compartment", "zone", "border_distance_um", "nearest_tumour_um") if c in shown_table.columns]
    st.dataframe(shown_table[first], hide_index=True, width="stretch", height=300)
    n_del = log_.summary()["n_deleted"]
    st.caption(f"{len(table)} cells; the 'edited' column marks cells added or relabelled by hand; "
               f"{n_del} deleted detection(s) are in the correction log.")
    with st.expander(f"Correction log ({len(log_.edits)} edits)"):
        if log_.edits:
            st.dataframe(pd.DataFrame([vars(e) for e in log_.edits]), hide_index=True, width="stretch")
        else:
            st.caption("No corrections yet.")

    st.subheader("Export and save")
    stem = result.image.name.rsplit(".", 1)[0]
    d1, d2, d3, d4 = st.columns(4)
    if mpp:
        d1.download_button("Regions + cells (GeoJSON)", json.dumps(cells_to_geojson(cells, colors, mpp, regions)),
                           f"{stem}-review.geojson", "application/geo+json", help="Opens in QuPath.")
        d2.download_button("Regions only (GeoJSON)", json.dumps(regions_to_geojson(regions, mpp)),
                           f"{stem}-regions.geojson", "application/geo+json", disabled=not regions)
    d3.download_button("Reviewed cells (CSV)", cells.to_csv(index=False, float_format="%.3f"), f"{stem}-cells-reviewed.csv",
                       "text/csv")
    d4.download_button("Correction log (JSON)", log_.to_json(), f"{stem}-corrections.json", "application/json")
    save_review(result, stats, params)


st.title("Review: regions & corrections")
analysis = st.session_state.get("analysis")
if analysis is None:
    st.info("No analysis to review yet: run one on the Analyze page, or open a saved analysis from Cases.")
    st.stop()
try:
    main(analysis)
except TILscopeError as err:
    st.error(str(err))
except Exception:  # the browser gets a message, the log gets the traceback
    log.exception("review page failed")
    st.error("Something went wrong on this page; the details are in the server log. Your regions and corrections are kept.")
