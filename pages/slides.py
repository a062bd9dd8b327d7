"""Slides: analyse a whole slide in the background, then explore it (thin page: the logic is in core.slides.app_support).

Choose a slide (the server's slide folder, or an upload), see its metadata, thumbnail and tissue,
give the mpp when the file records none, limit the analysis to a region or leave regions out,
pick a scenario and start. The run is a job in a worker process; its id is in the page's URL
(``?run=...``), so a reload, or the link, finds it again. The slide is decoded only in workers.
"""

from __future__ import annotations

import io
import logging

import streamlit as st

from core import jobs
from core.errors import TILscopeError
from core.fitness import STAIN_LABELS
from core.io import MPP_SOURCE_WORDS, PLAUSIBLE_MPP_RANGE
from core.outputs.key_figures import key_figure_rows
from core.outputs.media import media_type
from core.pipeline import device_name, fast_mode
from core.scenarios.registry import get_scenario
from core.slides import app_support as sa
from core.slides import view as sv
from core.slides.reader import VENDOR_SUFFIXES
from core.slides.run import slide_scenarios
from pages._resources import job_runner
from pages._router import through_app_router
from pages._text import md_escape
from pages._user import can_save, current_actor, gate, user_box

through_app_router()
gate()
user = user_box()
actor = current_actor()
job_runner()  # old job folders cleaned up, once per server

log = logging.getLogger("tilscope.slides")

UPLOAD_TYPES = [s.lstrip(".") for s in VENDOR_SUFFIXES if s not in (".mrxs", ".vms", ".vmu")] + ["tif", "tiff"]


@st.cache_resource(show_spinner=False)
def _old_runs_removed() -> bool:
    """Remove slide runs that ended long ago (:func:`core.slides.app_support.cleanup_runs`), once per server."""
    try:
        sa.cleanup_runs()
    except OSError as err:
        log.warning("old slide runs could not be removed: %s", err)
    return True


def failed(what: str, err: BaseException) -> None:
    """One line in the page for a failure; a traceback (if any) goes to the server log only."""
    if isinstance(err, TILscopeError):
        text = str(err).rstrip()
        st.error(f"{what}: {md_escape(text)}" + ("" if text.endswith((".", "!", "?")) else "."))
    else:
        log.error("%s", what, exc_info=err)
        st.error(f"{what}: it failed unexpectedly; the details are in the server log.")


def in_worker(what: str, fn, *args, kind: str, **kwargs):
    """``fn(*args, **kwargs)`` in a worker process (the slide is decoded there), with a spinner."""
    with st.spinner(what):
        return jobs.wait(jobs.submit(fn, *args, kind=kind, **kwargs))


def go_to_run(run_id: str | None) -> None:
    if run_id:
        st.query_params["run"] = run_id
    else:
        st.query_params.pop("run", None)
    st.rerun()


# ----------------------------------------------------------------------------------------------- choosing


def chosen_slide() -> tuple[str, str, bool] | None:
    """(path, name, keep a copy with the run) of the slide chosen, or None."""
    try:
        folder = sa.slide_dir()
    except TILscopeError as err:
        st.error(md_escape(err))
        folder = None
    sources = (["From the slide folder"] if folder else []) + ["Upload a file"]
    source = st.radio("Slide", sources, horizontal=True,
                      help=f"Large slides belong in the server's slide folder ({sa.SLIDE_DIR_ENV}); uploads are "
                           f"limited to {sa.upload_max_bytes() / 1024**2:,.0f} MB.")
    if source == "From the slide folder":
        names, truncated = sa.list_slide_files(folder)
        if not names:
            st.info("The slide folder holds no slide files (.svs, .ndpi, .scn, .bif, .mrxs, .tif / .ome.tif).")
            return None
        if truncated:
            st.caption(f"The first {len(names)} files are listed.")
        name = st.selectbox("Slide file", names, index=None, placeholder="Choose a slide")
        if name is None:
            return None
        try:
            return str(sa.slide_in_folder(folder, name)), name.rsplit("/", 1)[-1], False
        except TILscopeError as err:
            st.error(md_escape(err))
            return None
    upload = st.file_uploader(f"Whole-slide file ({', '.join('.' + t for t in UPLOAD_TYPES)}; at most "
                              f"{sa.upload_max_bytes() / 1024**2:,.0f} MB)", type=UPLOAD_TYPES)
    if upload is None:
        return None
    try:
        sa.check_upload_size(upload.size, upload.name)
    except TILscopeError as err:
        st.error(md_escape(err))
        return None
    kept = st.session_state.get("slide_upload")
    if not kept or kept[0] != upload.file_id:
        kept = (upload.file_id, str(jobs.stage_input(upload.getvalue(), upload.name)))
        st.session_state["slide_upload"] = kept
    return kept[1], upload.name, True


def preview_of(path: str, name: str, mpp: float | None) -> sa.SlidePreview:
    """The slide's preview at ``mpp`` (None: the file's), read once per slide and mpp."""
    cache = st.session_state.setdefault("slide_previews", {})
    if not any(k[0] == path for k in cache):
        cache.clear()
    if (path, mpp) not in cache:
        cache[(path, mpp)] = in_worker("Reading the slide and finding its tissue…", sa.preview_slide, path, mpp, name,
                                       kind="slide preview")
    return cache[(path, mpp)]


def show_metadata(p: sa.SlidePreview) -> None:
    cols = st.columns(4)
    cols[0].metric("Size (px)", f"{p.width_px:,} x {p.height_px:,}")
    cols[1].metric("Pixel size (µm/px)", "not recorded" if p.mpp is None else f"{p.mpp:.4g}",
                   help=f"Microns per pixel at full resolution, {MPP_SOURCE_WORDS.get(p.mpp_source, p.mpp_source)}.")
    cols[2].metric("Objective", "not recorded" if not p.objective_power else f"{p.objective_power:g}x")
    cols[3].metric("Pyramid levels", len(p.levels))
    size = "" if p.size_um is None else f" · {p.size_um[0] / 1000:.2f} x {p.size_um[1] / 1000:.2f} mm"
    st.caption(f"{md_escape(p.name)} · {md_escape(p.vendor)} read with {p.reader}{size} · levels: "
               + ", ".join(f"{w:,} x {h:,} px (1/{d:g})" for w, h, d in p.levels))
    for note in p.notes:
        st.info(md_escape(note))


def drawn(p: sa.SlidePreview, what: str, key: str, picture) -> tuple[object, list[str]]:
    """Shapes drawn on the thumbnail (rectangles or polygons) as µm geometry."""
    from PIL import Image
    from streamlit_drawable_canvas import st_canvas  # only inside a running app (see STYLE.md)

    tool = st.radio(f"Draw {what} as", ["rectangles", "polygons (click the corners, right-click to close)"],
                    horizontal=True, key=f"{key}_tool")
    frame = sa.canvas_frame(p)
    buf = io.BytesIO()
    Image.fromarray(sa.canvas_background(picture, frame)).save(buf, format="JPEG", quality=90)
    colour = "rgba(30, 80, 220, 0.9)" if key == "roi_canvas" else "rgba(210, 30, 30, 0.9)"
    canvas = st_canvas(fill_color=colour.replace("0.9", "0.15"), stroke_width=2, stroke_color=colour,
                       background_image=buf.getvalue(), update_streamlit=True, height=frame.canvas_height_px,
                       width=frame.canvas_width_px, drawing_mode="rect" if tool == "rectangles" else "polygon",
                       key=f"{key}_{p.path}")
    objects = list((canvas.json_data or {}).get("objects") or [])
    return sa.drawn_geometry(objects, frame, p.mpp) if objects else (None, [])


def regions(p: sa.SlidePreview) -> tuple[object, object, bool]:
    """(roi, exclude, ok) in level-0 µm from the user's choices; ok False when a choice is unusable."""
    ok = True
    picture = sa.preview_picture(p)
    mode = st.radio("Analyse", ["All the tissue", "A rectangle (µm)", "Regions of a GeoJSON file",
                                "Shapes drawn on the thumbnail"], horizontal=True,
                    help="GeoJSON coordinates are level-0 pixels, as QuPath exports annotations; the rectangle is "
                         "in µm from the slide's top-left corner.")
    roi = None
    try:
        if mode == "A rectangle (µm)":
            x0, y0, x1, y1 = (p.tissue.bounds if not p.tissue.is_empty else (0.0, 0.0, *p.size_um))
            c = st.columns(4)
            x = c[0].number_input("x (µm)", value=float(round(x0)), step=100.0, key=f"roi_x_{p.path}")
            y = c[1].number_input("y (µm)", value=float(round(y0)), step=100.0, key=f"roi_y_{p.path}")
            w = c[2].number_input("width (µm)", value=float(round(x1 - x0)), min_value=0.0, step=100.0,
                                  key=f"roi_w_{p.path}")
            h = c[3].number_input("height (µm)", value=float(round(y1 - y0)), min_value=0.0, step=100.0,
                                  key=f"roi_h_{p.path}")
            roi = sa.rectangle_geometry(x, y, w, h, p.size_um)
        elif mode == "Regions of a GeoJSON file":
            f = st.file_uploader("Region(s) to analyse (GeoJSON, level-0 pixels)", type=["geojson", "json"], key="roi_file")
            roi = None if f is None else sa.geojson_geometry(f.getvalue(), p.mpp, f"{f.name} (region to analyse)")
            ok = f is not None
        elif mode == "Shapes drawn on the thumbnail":
            roi, skipped = drawn(p, "the region to analyse", "roi_canvas", picture)
            for s in skipped:
                st.caption(md_escape(s))
            ok = roi is not None
    except TILscopeError as err:
        st.error(md_escape(err))
        roi, ok = None, False
    exclude = None
    with st.expander("Regions to leave out (artefacts, folds, necrosis)"):
        try:
            f = st.file_uploader("From a GeoJSON file (level-0 pixels)", type=["geojson", "json"], key="exclude_file")
            parts = [] if f is None else [sa.geojson_geometry(f.getvalue(), p.mpp, f"{f.name} (regions to leave out)")]
            if st.toggle("Draw them on the thumbnail", key="exclude_draw"):
                geom, skipped = drawn(p, "the regions to leave out", "exclude_canvas", picture)
                parts += [geom] if geom is not None else []
                for s in skipped:
                    st.caption(md_escape(s))
            if parts:
                import shapely

                exclude = shapely.union_all(parts)
        except TILscopeError as err:
            st.error(md_escape(err))
            ok = False
    return roi, exclude, ok


def setup() -> None:
    """Choose, check and start."""
    chosen = chosen_slide()
    if chosen is None:
        return
    path, name, keep = chosen
    try:
        p = preview_of(path, name, None)
        if p.missing_mpp and st.session_state.get(f"mpp_{path}") is None:
            st.warning(md_escape(p.missing_mpp), icon=":material/straighten:")
        given = st.number_input("Microns per pixel (mpp)", min_value=PLAUSIBLE_MPP_RANGE[0],
                                max_value=PLAUSIBLE_MPP_RANGE[1], value=p.mpp, step=0.01, format="%.4f",
                                placeholder="e.g. 0.25 at 40x, 0.5 at 20x", key=f"mpp_{path}",
                                help="From the scanner; correct it here if the file's value is wrong.")
        if given is not None and (p.mpp is None or abs(given - p.mpp) > 1e-9):
            p = preview_of(path, name, float(given))
    except Exception as err:  # noqa: BLE001 - every failure of reading is one line
        failed("The slide could not be read", err)
        return
    show_metadata(p)
    if p.mpp is None:
        st.image(p.thumbnail, caption="Thumbnail (the tissue is found once the pixel size is given)", width=700)
        st.caption("Enter the microns per pixel above to go on: the slide cannot be analysed without them.")
        return
    if p.tissue_area_mm2 <= 0:
        st.image(p.thumbnail, caption="Thumbnail: no tissue found", width=700)
        st.error("No tissue was found on this slide: check that it is a brightfield slide with tissue on it.")
        return

    st.subheader("Tissue and regions")
    roi, exclude, regions_ok = regions(p)
    try:
        tissue, area = sa.tissue_within(p, roi, exclude)
        st.image(sa.preview_picture(p, roi, exclude, tissue), width=900,
                 caption="Green: the tissue analysed; blue: the region of interest; red: regions left out.")
    except TILscopeError as err:
        st.error(md_escape(err))
        tissue, area, regions_ok = None, 0.0, False
    c = st.columns(3)
    c[0].metric("Tissue analysed (mm²)", f"{area:.3f}", help="Every density is per mm² of this tissue.")
    c[1].metric("Tissue detected (mm²)", f"{p.tissue_area_mm2:.3f}")
    c[2].metric("Pen marks left out (mm²)", f"{p.pen_area_mm2:.3f}")
    for note in p.tissue_notes:
        st.caption(md_escape(note))

    st.subheader("Model and case")
    keys = slide_scenarios()
    same_stain = [i for i, k in enumerate(keys) if get_scenario(k).use.stain == p.stain_family]
    key = st.selectbox("What is the slide stained with?", keys, index=same_stain[0] if same_stain else 0,
                       format_func=lambda k: f"{get_scenario(k).stain}: {get_scenario(k).title}",
                       help="Models that run on whole slides (cell detection on RGB slides); the first offered "
                            "matches the stain read on the tissue.")
    scenario = get_scenario(key)
    lo, hi = scenario.use.mpp_range
    st.caption(f"Validated for {STAIN_LABELS[scenario.use.stain]} at {lo:g} to {hi:g} µm per pixel. Tiles of "
               f"{scenario.tiling.tile_um:g} µm at {scenario.input_mpp:g} µm/px.")
    if scenario.caution:
        st.warning(scenario.caution, icon="⚠️")
    antigen = None
    if scenario.use.antigen:
        antigen = st.checkbox(f"This slide is stained for {scenario.use.antigen} (DAB) with a hematoxylin counterstain",
                              key=f"slide_antigen_{key}")
    problems, notes = sa.fitness_for(p, key, antigen if scenario.use.antigen else None)
    override = False
    if problems:
        st.error("**Outside the validated use.** " + " ".join(md_escape(x) for x in problems), icon="🛑")
        override = st.checkbox("Run outside the validated use", key=f"slide_override_{key}",
                               help="The result is then marked 'outside the validated use' everywhere it is shown.")
    for note in notes:
        st.warning(md_escape(note))
    precision = "float32"
    validated, fast_ok = fast_mode(key)
    if validated and st.toggle("Fast mode (bfloat16)", value=False, disabled=not fast_ok,
                               help="The network computes in bfloat16 (validated for this model)."
                                    + ("" if fast_ok else " Not available: this processor has no native bfloat16.")):
        precision = "bfloat16"
    case_label = st.text_input("Case label", key="slide_case_label", placeholder="e.g. study ID or anonymised case number",
                               help="The analysis is saved under this case in the case history (Cases page).")
    group = None
    if actor is not None and actor.groups and actor.can_save:
        group = st.selectbox("Share a new case with", [None, *actor.groups],
                             format_func=lambda g: "nobody else (you and the admins)" if g is None else f"group {g}")
    blocked = (not user and "Enter your name in the sidebar first: it is recorded with the analysis.") or (
        not can_save() and "You are a viewer: running analyses needs the analyst role (ask an admin).") or (
        not regions_ok and "Finish the region choice above (or analyse all the tissue).") or (
        area <= 0 and "There is no tissue to analyse within the regions chosen.") or (
        scenario.use.antigen and not antigen and f"Confirm that the slide is stained for {scenario.use.antigen} first.") or (
        problems and not override and "The slide is outside the validated use (see above).")
    if blocked:
        st.caption(blocked)
    if st.button("Start the analysis", type="primary", disabled=bool(blocked)):
        try:
            run = sa.start_run(p, key, case_label=case_label, roi=roi, exclude=exclude, actor=actor, user_name=user,
                               group=group, precision=precision, device=device_name(), outside_validated_use=override,
                               antigen_confirmed=True if scenario.use.antigen else None, keep_file=keep)
        except Exception as err:  # noqa: BLE001 - one line
            failed("The analysis could not start", err)
            return
        go_to_run(run.id)


# ----------------------------------------------------------------------------------------------- a run


@st.fragment(run_every=2.0)
def progress_panel(run: sa.SlideRun) -> None:
    """Progress by tile with the time left; the whole page reruns once the run has finished."""
    status = sa.run_status(run)
    if status.finished:
        st.rerun()
    st.progress(status.fraction, text=status.text)
    st.caption("The analysis runs on the server: you may close or reload this page and come back to this address.")
    if st.button("Cancel the analysis"):
        sa.cancel_run(run)
        st.rerun()


def field_viewer(run: sa.SlideRun, res: sa.SlideResult, colors: dict, labels: dict) -> None:
    """A field at full resolution, centred where the user clicked (a cell) or on the position entered."""
    mpp = float(res.view["mpp"])
    largest = float(int(sa.FIELD_MAX_SIDE_PX * mpp))
    keys = {k: f"field_{k}_{run.id}" for k in ("x", "y", "side")}
    if len(res.cells):  # first shown: the middle of the cells
        st.session_state.setdefault(keys["x"], round(float(res.cells["x_um"].median()), 1))
        st.session_state.setdefault(keys["y"], round(float(res.cells["y_um"].median()), 1))
    st.session_state.setdefault(keys["side"], min(500.0, largest))
    st.session_state[keys["side"]] = min(max(20.0, st.session_state[keys["side"]]), largest)
    c = st.columns([1, 1, 1, 1])
    x = c[0].number_input("Centre x (µm)", min_value=0.0, step=50.0, key=keys["x"])
    y = c[1].number_input("Centre y (µm)", min_value=0.0, step=50.0, key=keys["y"])
    side = c[2].number_input("Side (µm)", min_value=20.0, max_value=largest, step=50.0, key=keys["side"],
                             help=f"At most {largest:,.0f} µm ({sa.FIELD_MAX_SIDE_PX} pixels at full resolution).")
    c[3].write("")
    if c[3].button("Show the field"):
        try:
            st.session_state["slide_field"] = (run.id, in_worker(
                "Reading the field at full resolution…", sa.read_field, run.request["slide_path"], mpp,
                str(run.out_dir / "cells.parquet"), x, y, side, kind="slide field"))
        except Exception as err:  # noqa: BLE001 - one line
            failed("The field could not be read", err)
    kept = st.session_state.get("slide_field")
    if kept and kept[0] == run.id:
        f = kept[1]
        counts = f.cells["cell_class"].value_counts().to_dict() if len(f.cells) else {}
        st.caption(f"Field at ({f.x0_px * f.mpp:,.0f}, {f.y0_px * f.mpp:,.0f}) µm, {f.rgb.shape[1]} x {f.rgb.shape[0]} px "
                   f"at {f.mpp:g} µm/px: {len(f.cells)} cells ("
                   + ", ".join(f"{md_escape(labels.get(k, k))}: {v}" for k, v in counts.items()) + ")")
        st.plotly_chart(sv.field_figure(f, colors, labels), width="stretch", config={"scrollZoom": True})


def apply_selection(event, run_id: str) -> None:
    """A cell clicked (or a box drawn) on the slide view becomes the field's centre (and side)."""
    sel = getattr(event, "selection", None) or {}
    points, boxes = sel.get("points") or [], sel.get("box") or []
    picked = None
    if points:
        picked = (float(points[0]["x"]), float(points[0]["y"]), None)
    elif boxes:
        bx, by = boxes[0].get("x") or [], boxes[0].get("y") or []
        if len(bx) == 2 and len(by) == 2:
            picked = ((bx[0] + bx[1]) / 2, (by[0] + by[1]) / 2, max(abs(bx[1] - bx[0]), abs(by[1] - by[0])))
    if picked is not None and st.session_state.get("slide_selection") != picked:
        st.session_state["slide_selection"] = picked
        st.session_state[f"field_x_{run_id}"] = max(0.0, round(picked[0], 1))
        st.session_state[f"field_y_{run_id}"] = max(0.0, round(picked[1], 1))
        if picked[2]:
            st.session_state[f"field_side_{run_id}"] = float(max(20.0, round(picked[2])))


def show_result(run: sa.SlideRun) -> None:
    res = sa.load_result(run)
    s = res.summary
    sc = get_scenario(s["scenario"])
    colors, labels = dict(sc.class_colors), dict(sc.class_labels)
    if res.analysis_id is not None:
        st.success(f"Saved as analysis {res.analysis_id} in the case history.", icon=":material/database:")
    elif res.save_error:
        st.warning(f"Not saved in the case history: {md_escape(res.save_error)} The downloads below still work.")
    if s.get("outside_validated_use"):
        st.error("**Outside the validated use:** " + " ".join(md_escape(x) for x in s["outside_validated_use"])
                 + " Treat these numbers as exploratory.", icon="🛑")
    cols = st.columns(4)
    area = s["tissue_area_mm2"]
    cols[0].metric("Cells", f"{s['n_cells']:,}")
    cols[1].metric("Density (cells/mm² of tissue)", f"{s['n_cells'] / area:,.0f}" if area else "n/a")
    cols[2].metric("Tissue area (mm²)", f"{area:.3f}", help=f"Tissue found on {100 * s['tissue_fraction']:.0f} % of the "
                   f"slide's {s['image_area_mm2']:.2f} mm²; every density is per mm² of tissue.")
    cols[3].metric(f"Run time (s, {s['device'].upper()})", f"{s['runtime_s']:,.0f}",
                   help=f"{s['tiles']['with_tissue']} tiles of {s['tiles']['tile_um']:g} µm, read from pyramid level "
                        f"{s['tiles']['level_read']}; numeric precision {s.get('inference_precision', 'float32')}")
    with st.expander(f"Notes on this analysis ({len(s.get('warnings') or [])})"):
        for w in s.get("warnings") or []:
            st.markdown(f"- {md_escape(w)}")

    n_shown, n_total = res.view.get("n_shown", len(res.cells)), res.view.get("n_cells", len(res.cells))
    st.markdown("**The slide**: drag to pan, scroll to zoom, click a legend entry to hide or show a layer; click a "
                "cell, or draw a box with the box-select tool, to see that field at full resolution below."
                + ("" if n_shown == n_total else f" {n_shown:,} of the {n_total:,} cells are drawn (a random sample)."))
    hot = (s.get("hot_spots") or {})
    event = st.plotly_chart(sv.slide_figure(res, colors, labels, show_hot_spots=False), width="stretch",
                            config={"scrollZoom": True}, on_select="rerun", selection_mode=("points", "box"),
                            key=f"slide_view_{run.id}", theme=None)  # the figure's own colour scales, not the theme's
    apply_selection(event, run.id)
    if hot:
        st.caption(f"Immune hot spots (Getis-Ord Gi*, {hot.get('bin_um', 100):g} µm bins within "
                   f"{hot.get('neighbourhood_um', 150):g} µm, Benjamini-Hochberg q < {hot.get('alpha', 0.05):g}): "
                   f"{hot.get('n_hot_bins', 0)} hot and {hot.get('n_cold_bins', 0)} cold bins of "
                   f"{hot.get('n_tissue_bins', 0)}; hot area {hot.get('hot_area_mm2', 0):.3f} mm².")
    ci = s.get("density_ci95_per_mm2") or {}
    st.dataframe([{"class": labels.get(k, k), "count": v, "cells/mm² of tissue": round(s["density_per_mm2"][k], 1),
                   "95 % interval (Poisson)": f"{ci[k][0]:,.0f} – {ci[k][1]:,.0f}" if k in ci else "n/a"}
                  for k, v in s["counts"].items()], hide_index=True)
    headline = key_figure_rows(s.get("spatial"))
    if headline:
        st.markdown("**Spatial statistics** (the analysed tissue)")
        st.dataframe(headline, hide_index=True)

    st.markdown("**A field at full resolution**")
    field_viewer(run, res, colors, labels)

    st.markdown("**Downloads**")
    stem = run.slide_name.rsplit(".", 1)[0]
    files = sa.run_files(run)
    per_row = 5
    cols = [c for _ in range(-(-(len(files) + 1) // per_row)) for c in st.columns(per_row)]
    for col, (name, path) in zip(cols, files):
        col.download_button(name, data=lambda p=path: p.read_bytes(), file_name=f"{stem}-{name}", mime=media_type(name),
                            key=f"dl_{name}")
    if s["n_cells"] <= sa.GEOJSON_MAX_CELLS:
        cols[len(files)].download_button("cells.geojson", data=lambda: sa.cells_geojson_bytes(run),
                                 file_name=f"{stem}-cells.geojson", mime=media_type("cells.geojson"), key="dl_geojson")
    else:
        cols[len(files)].caption(f"cells.geojson: more than {sa.GEOJSON_MAX_CELLS:,} cells; use cells.parquet or cells.csv")


def show_run(run_id: str) -> None:
    if st.button("Analyse another slide"):
        go_to_run(None)
    try:
        run = sa.load_run(run_id, actor)
    except TILscopeError as err:
        st.error(md_escape(err))
        return
    req = run.request
    title = get_scenario(req["scenario"]).title
    st.subheader(f"{md_escape(run.slide_name)} · {title}")
    st.caption(f"Case {md_escape(req.get('case_label') or 'unlabelled')} · started by "
               f"{md_escape(req.get('created_by') or 'this browser')} · {req['mpp']:.4g} µm/px"
               + (" · region of interest" if req.get("roi") else "") + (" · with exclusions" if req.get("exclude") else ""))
    status = sa.run_status(run)
    if not status.finished:
        progress_panel(run)
        return
    if status.state == "failed":
        st.error(f"The analysis did not finish: {md_escape(status.error or 'it failed')}")
        if can_save() and st.button("Resume", help="Start it again; the tiles already analysed are kept."):
            try:
                sa.resume_run(run)
            except Exception as err:  # noqa: BLE001 - one line
                failed("The analysis could not resume", err)
            st.rerun()
        return
    try:
        show_result(run)
    except Exception as err:  # noqa: BLE001 - one line
        failed("The result could not be shown", err)


# ----------------------------------------------------------------------------------------------- the page

_old_runs_removed()
st.title("Whole slides")
run_id = st.query_params.get("run")
if run_id:
    show_run(run_id)
else:
    st.caption("Analyse all the tissue of a whole slide (or a region of it) in the background, then explore the cells "
               "and heat maps over the slide. Field images go on the Analyze page.")
    try:
        setup()
    except Exception as err:  # noqa: BLE001 - a traceback never reaches the browser
        failed("The slide could not be prepared", err)
    try:
        recent = sa.list_runs(actor)
    except OSError:
        recent = []
    if recent:
        with st.expander("Your recent slide analyses"):
            for r in recent:
                if st.button(md_escape(f"{r['slide']} · {r['scenario']} · case {r['case']}"), key=f"open_{r['id']}"):
                    go_to_run(r["id"])
