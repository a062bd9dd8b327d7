"""Analyze: upload an image (or pick a sample), choose a scenario, run, review, download."""

from __future__ import annotations

import logging

import streamlit as st

from core.errors import TILscopeError
from core.io import PLAUSIBLE_MPP_RANGE, load_image
from core.model_card import markdown_path, render_markdown
from core.fitness import STAIN_LABELS
from core.pipeline import assess_fitness, check_input, device_name, fast_mode, previous_runs, run_analysis, save_analysis
from core.samples import list_samples
from core.scenarios.registry import get_scenario, list_scenarios
from core.outputs.exports import build_exports, media_type
from core.outputs.figures import dense_over_image
from core.outputs.key_figures import key_figure_rows
from core.outputs.plots import cell_figure
from core.outputs.records import card_summary
from pages._resources import cached_model, case_store
from pages._router import through_app_router
from pages._text import md_escape
from pages._user import user_box

through_app_router()
user = user_box()

log = logging.getLogger("tilscope.analyze")

#: Where the pixel size came from, in words.
MPP_SOURCES = {"ome": "from the OME-TIFF metadata", "tiff-resolution": "from the TIFF resolution tags",
               "imagej-resolution": "from the ImageJ calibration", "tiff-description": "from the scanner's description",
               "user": "entered by you", "sample": "given with the sample"}


def fitness_of(image, key: str):
    """The fitness checks of this image (file and page), model and pixel size, computed once per combination."""
    cache = st.session_state.setdefault("fitness_cache", {})
    k = (st.session_state.get("analysis_context"), image.mpp, key)
    if k not in cache:
        cache.clear()
        cache[k] = assess_fitness(image, key, antigen_confirmed=True if get_scenario(key).use.antigen else None)
    return cache[k]


def saved_by() -> dict:
    """The user the analysis is saved under (the name given in this browser)."""
    name = st.session_state.get("user_name")
    return {"created_by": name} if name else {}


st.title("Analyze an image")

scenarios = [s for s in list_scenarios() if not s.trained_on_synthetic]  # synthetic-only models: Teaching page
key = st.selectbox(
    "What is the slide stained with?", [s.key for s in scenarios],
    format_func=lambda k: f"{get_scenario(k).stain}: {get_scenario(k).title}",
    help="Models trained on synthetic images only are on the Teaching page, not here.",
)
scenario = get_scenario(key)
lo, hi = scenario.use.mpp_range
st.caption(f"Validated for {STAIN_LABELS[scenario.use.stain]} images at {lo:g} to {hi:g} µm per pixel "
           "(0.25 µm per pixel is about a 40x scan, 0.5 about 20x).")
if scenario.caution:
    st.warning(scenario.caution, icon="⚠️")
try:
    full_card = scenario.card()
    card = card_summary(full_card)
    with st.expander("Model card: intended use, limitations, metrics"):
        st.markdown(f"**Intended use:** {md_escape(card['intended_use'])}")
        st.markdown("**Limitations:**\n" + "\n".join(f"- {md_escape(item)}" for item in card["limitations"]))
        st.json(card["metrics"], expanded=False)
        st.download_button("Download the whole model card (Markdown)", render_markdown(full_card),
                           file_name=markdown_path(scenario.weights).name, mime="text/markdown")
except TILscopeError as err:
    st.error(md_escape(err))

source = st.radio("Image", ["Upload a file", "Bundled sample"], horizontal=True)
image = None
context = None
try:
    if source == "Upload a file":
        upload = st.file_uploader("PNG, JPEG, BMP or TIFF / OME-TIFF (8 or 16 bit)",
                                  type=["png", "jpg", "jpeg", "bmp", "tif", "tiff"])
        if upload is not None:
            page = int(st.session_state.get(f"page_{upload.file_id}", 1))
            context = (key, "upload", upload.file_id, page)
            image = load_image(upload.getvalue(), name=upload.name, page=page)
            if image.n_pages > 1:
                st.number_input(f"Page of the file to analyse (it holds {image.n_pages})", min_value=1,
                                max_value=image.n_pages, step=1, key=f"page_{upload.file_id}")
    else:
        samples = list_samples()
        matching = [i for i, smp in enumerate(samples) if smp.scenario == key]
        sample = st.selectbox("Sample", samples, index=matching[0] if matching else 0, format_func=lambda s: s.title)
        st.caption(sample.description + f" ({sample.mpp_note})")
        context = (key, "sample", sample.key)
        image = sample.load()
    if image is not None:
        check_input(image, key)  # refused now, not after pressing Run
except TILscopeError as err:
    st.error(md_escape(err))
    image = None
finally:
    # One case, one result: a new image or model clears the previous result and case label.
    if context is not None and st.session_state.get("analysis_context") != context:
        for name in ("analysis", "analysis_id", "pending_save", "case_label"):
            st.session_state.pop(name, None)
        st.session_state["case_label_box"] = ""  # set, not deleted: the browser would send its old text back
        st.session_state["analysis_context"] = context

if image is not None:
    for note in image.notes:
        st.info(md_escape(note))
    default_mpp = image.mpp if image.mpp is not None else scenario.input_mpp
    col1, col2 = st.columns([1, 2])
    with col1:
        known = st.checkbox("Pixel size known", value=image.mpp is not None)
        mpp = st.number_input(
            "Microns per pixel (mpp)", min_value=PLAUSIBLE_MPP_RANGE[0], max_value=PLAUSIBLE_MPP_RANGE[1],
            value=float(default_mpp), step=0.01, format="%.4f", disabled=not known,
            help="From the scanner or microscope: about 0.25 at 40x and 0.5 at 20x.",
        )
    with col2:
        h, w = image.shape
        where = MPP_SOURCES.get(image.mpp_source, image.mpp_source) if image.mpp else "not recorded in the file"
        st.caption(f"{md_escape(image.name)}: {w} x {h} px · pixel size {md_escape(where)}")
        if not known:
            st.warning(
                "Without the pixel size, TILscope reports cell counts only: densities per mm² and distances "
                "in µm need the microns per pixel. The image is analysed as if it were at the model's "
                f"{scenario.input_mpp} µm/px."
            )
    chosen = image.with_mpp(mpp if known else None, source=image.mpp_source if known and image.mpp == mpp else "user")
    antigen_ok = True
    if scenario.use.antigen:
        antigen_ok = st.checkbox(
            f"This section is stained for {scenario.use.antigen} (DAB) with a hematoxylin counterstain",
            key=f"antigen_{key}",
            help=f"The colours cannot tell {scenario.use.antigen} from another DAB stain such as Ki67: the model "
                 f"would count the other antigen's cells as {scenario.use.antigen}+.",
        )
    fitness = fitness_of(chosen, key)  # the antibody is confirmed by the box above (it gates Run)
    override = False
    if fitness.problems:
        st.error("**Outside the validated use.** " + " ".join(md_escape(p) for p in fitness.problems), icon="🛑")
        override = st.checkbox(
            "Run outside the validated use", value=False, key=f"override_{key}",
            help="The result is then marked 'outside the validated use' on screen, in the case history and in "
                 "every download.",
        )
    for note in fitness.notes:
        st.warning(md_escape(note))
    # Keyed, so that the box keeps one identity when a run stores its label: an unkeyed box
    # built from that label would be replaced by a new one, and typing in the old one lost.
    case_label = st.text_input(
        "Case label", key="case_label_box", placeholder="e.g. study ID or anonymised case number",
        help="Every run is saved under this case in the case history (Cases page).",
    )
    precision = "float32"
    validated, fast_ok = fast_mode(key)
    if validated:
        fast = st.toggle(
            "Fast mode (bfloat16)", value=False, disabled=not fast_ok,
            help="The network computes in bfloat16: 1.5 to 2 times as fast on this kind of processor. The model card gives "
                 "its validation figures at both precisions. Recorded with the analysis and in the report."
                 + ("" if fast_ok else " Not available: this processor has no native bfloat16."),
        )
        precision = "bfloat16" if fast else "float32"
    blocked = (not user and "Enter your name in the sidebar first: it is recorded with the analysis.") or (
        not antigen_ok and f"Confirm that the section is stained for {scenario.use.antigen} first.") or (
        fitness.problems and not override and "The image is outside the validated use (see above).")
    if blocked:
        st.caption(blocked)
    if st.button("Run", type="primary", disabled=bool(blocked)):
        device = device_name()
        bar = st.progress(0.0, text="Running the model…")
        st.session_state.pop("analysis", None)  # an error replaces the old result, never sits under it
        st.session_state.pop("analysis_id", None)
        st.session_state.pop("pending_save", None)
        try:
            model = cached_model(key, device, precision)
            result = run_analysis(chosen, key, model=model, outside_validated_use=override,
                                  antigen_confirmed=True if scenario.use.antigen else None, fitness=fitness,
                                  progress=lambda d, t: bar.progress(d / t, text=f"Window {d} of {t}"))
            st.session_state["analysis"] = result
            st.session_state["case_label"] = case_label
            bar.progress(1.0, text="Saving to the case history…")
            label = case_label.strip() or "unlabelled"
            earlier = previous_runs(case_store(), label, result)
            if earlier:
                st.session_state["pending_save"] = earlier
            else:
                st.session_state["analysis_id"] = save_analysis(result, label, case_store(), **saved_by())
        except TILscopeError as err:
            st.error(md_escape(err))
        except Exception:  # the browser gets a message, the log gets the traceback
            log.exception("analysis failed")
            st.error("The analysis failed unexpectedly. Nothing was saved; the details are in the server log.")
        finally:
            bar.empty()

result = st.session_state.get("analysis")
if result is not None:
    sc = result.scenario
    s = result.summary
    st.divider()
    st.subheader(f"Result: {md_escape(s['image']['name'])} · {sc.title}")
    if s.get("outside_validated_use"):
        st.error("**Outside the validated use:** " + " ".join(md_escape(p) for p in s["outside_validated_use"])
                 + " Treat these numbers as exploratory.", icon="🛑")
    for w in result.warnings:
        st.warning(md_escape(w))
    cols = st.columns(4)
    cols[0].metric("Cells", s["n_cells"])
    tissue_help = (f"Tissue found in {100 * s['tissue_fraction']:.0f} % of the image (glass and empty background left "
                   "out); every density is per mm² of tissue.")
    if s["density_per_mm2"] and s["area_mm2"]:
        cols[1].metric("Density (cells/mm² of tissue)", f"{s['n_cells'] / s['area_mm2']:,.0f}", help=tissue_help)
        cols[2].metric("Tissue area (mm²)", f"{s['area_mm2']:.4f}",
                       help=tissue_help + f" The whole image is {s['image_area_mm2']:.4f} mm².")
    else:
        cols[1].metric("Density (cells/mm²)", "n/a", help="Needs the microns per pixel.")
        cols[2].metric("Tissue area (mm²)", "n/a", help="Needs the microns per pixel.")
    used = s.get("inference_precision", "float32")
    cols[3].metric(f"Run time (s, {s['device'].upper()}{', ' + used if used != 'float32' else ''})",
                   f"{s['runtime_s']:.1f}", help=f"Numeric precision of the network: {used}")

    if sc.trained_on_synthetic:
        st.warning("The model behind these numbers was trained on synthetic images only: check them by eye.", icon="🧪")
    for name, restored in result.restored.items():  # e.g. a denoised image
        left, right = st.columns(2)
        left.image(result.image.rgb, caption="Input", width="stretch")
        right.image(restored, caption=sc.output(name).description, width="stretch")
    for name, dense in result.dense.items():  # probability maps, masks, class maps
        with st.expander(f"{name.replace('_', ' ').capitalize()} map: {dense.description}",
                         expanded=dense.meaning == "mask"):
            st.image(dense_over_image(result.image.rgb, dense, sc.class_colors), width="stretch",
                     caption=f"{dense.description}, over the image (full colour = 1)")
    labels = sc.class_labels
    visible = st.multiselect("Show classes", list(sc.class_colors), default=list(sc.class_colors), format_func=labels.get)
    st.plotly_chart(
        cell_figure(result.image.rgb, result.cells, sc.class_colors, labels, visible),
        width="stretch", config={"scrollZoom": True},
    )
    ci = s.get("density_ci95_per_mm2") or {}
    counts = [
        {"class": labels.get(k, k), "count": v,
         "cells/mm² of tissue": None if not s["density_per_mm2"] else round(s["density_per_mm2"][k], 1),
         "95 % interval (Poisson)": f"{ci[k][0]:,.0f} – {ci[k][1]:,.0f}" if k in ci else "n/a"}
        for k, v in s["counts"].items()
    ]
    st.dataframe(counts, hide_index=True)
    with st.expander(f"Cell table ({len(result.cells)} rows)"):
        st.dataframe(result.cells, hide_index=True)
    headline = key_figure_rows(s.get("spatial"))
    if headline:
        st.markdown("**Spatial statistics** (whole image; draw regions on the Review page)")
        st.dataframe(headline, hide_index=True)

    analysis_id = st.session_state.get("analysis_id")
    pending = st.session_state.get("pending_save")
    if analysis_id is None and pending:
        label = (st.session_state.get("case_label") or "").strip() or "unlabelled"
        st.warning(f"Case {md_escape(repr(label))} already holds this image analysed with the same model and settings "
                   f"(analysis {', '.join(str(i) for i in pending)}). Save a second copy?", icon="⚠️")
        yes, no = st.columns(2)
        if yes.button("Save a second copy"):
            try:
                st.session_state["analysis_id"] = save_analysis(result, label, case_store(), **saved_by())
                st.session_state.pop("pending_save", None)
                st.rerun()
            except TILscopeError as err:
                st.error(md_escape(err))
        if no.button("Don't save"):
            st.session_state["pending_save"] = []
            st.rerun()
    if analysis_id is None:
        if pending is None:
            st.warning("This analysis is not in the case history (saving failed); the downloads below still work.")
        elif not pending:
            st.info("Not saved again: the earlier analysis stays in the case history; the downloads below still work.")
        files = build_exports(result, case_label=st.session_state.get("case_label") or None)
    else:
        st.success(f"Saved as analysis {analysis_id} in the case history.", icon=":material/database:")
        files = {}
        try:
            store = case_store()
            stored = {f["name"] for f in store.get_analysis(analysis_id)["files"]}
            files = {name: store.get_file(analysis_id, name) for name in sorted(stored)}
        except TILscopeError as err:
            st.error(md_escape(err))
    stem = s["image"]["name"].rsplit(".", 1)[0]
    cols = st.columns(max(1, len(files)))
    for col, (name, data) in zip(cols, sorted(files.items())):
        col.download_button(name, data, f"{stem}-{name}", media_type(name))
