"""Analyze: upload an image (or pick a sample), choose a scenario, run, review, download."""

from __future__ import annotations

import logging

import streamlit as st

from core.errors import TILscopeError
from core.io import PLAUSIBLE_MPP_RANGE, load_image
from core.model_card import markdown_path, render_markdown
from core.pipeline import check_input, device_name, fast_mode, run_analysis, save_analysis
from core.samples import list_samples
from core.scenarios.registry import get_scenario, list_scenarios
from core.outputs.exports import build_exports, media_type
from core.outputs.figures import dense_over_image
from core.outputs.key_figures import key_figure_rows
from core.outputs.plots import cell_figure
from core.outputs.records import card_summary
from pages._resources import cached_model, case_store
from pages._router import through_app_router

through_app_router()

log = logging.getLogger("tilscope.analyze")


st.title("Analyze an image")

scenarios = list_scenarios()
key = st.selectbox(
    "Scenario model", [s.key for s in scenarios], format_func=lambda k: f"{get_scenario(k).title}  ({k})"
)
scenario = get_scenario(key)
st.caption(f"Stain: {scenario.stain} · model input {scenario.input_mpp} µm/px")
if scenario.trained_on_synthetic:
    st.warning("This model was trained on synthetic images only.", icon="🧪")
if scenario.caution:
    st.warning(scenario.caution, icon="⚠️")
try:
    full_card = scenario.card()
    card = card_summary(full_card)
    with st.expander("Model card: intended use, limitations, metrics"):
        st.markdown(f"**Intended use:** {card['intended_use']}")
        st.markdown("**Limitations:**\n" + "\n".join(f"- {item}" for item in card["limitations"]))
        st.json(card["metrics"], expanded=False)
        st.download_button("Download the whole model card (Markdown)", render_markdown(full_card),
                           file_name=markdown_path(scenario.weights).name, mime="text/markdown")
except TILscopeError as err:
    st.error(str(err))

source = st.radio("Image", ["Upload a file", "Bundled sample"], horizontal=True)
image = None
try:
    if source == "Upload a file":
        wanted = "colour" if scenario.input.is_rgb else ", ".join(scenario.input.channels)
        upload = st.file_uploader(f"PNG, JPEG or TIFF/OME-TIFF (8/16-bit, {wanted})",
                                  type=["png", "jpg", "jpeg", "tif", "tiff"])
        if upload is not None:
            image = load_image(upload.getvalue(), name=upload.name)
    else:
        samples = list_samples()
        matching = [i for i, smp in enumerate(samples) if smp.scenario == key]
        sample = st.selectbox("Sample", samples, index=matching[0] if matching else 0, format_func=lambda s: s.title)
        st.caption(sample.description + f" ({sample.mpp_note})")
        image = sample.load()
    if image is not None:
        check_input(image, key)  # refused now, not after pressing Run
except TILscopeError as err:
    st.error(f"{err}")
    image = None

if image is not None:
    for note in image.notes:
        st.info(note)
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
        st.caption(f"{image.name}: {w} x {h} px · mpp from {image.mpp_source if image.mpp else 'nowhere'}")
        if not known:
            st.warning(
                "Without the pixel size, TILscope reports cell counts only: densities per mm² and distances "
                "in µm need the microns per pixel. The image is analysed as if it were at the model's "
                f"{scenario.input_mpp} µm/px."
            )
    # Keyed, so that the box keeps one identity when a run stores its label: an unkeyed box
    # built from that label would be replaced by a new one, and typing in the old one lost.
    if "case_label_box" not in st.session_state:
        st.session_state["case_label_box"] = st.session_state.get("case_label", "")
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
    if st.button("Run", type="primary"):
        device = device_name()
        bar = st.progress(0.0, text="Running the model…")
        try:
            chosen = image.with_mpp(mpp if known else None, source=image.mpp_source if known and image.mpp == mpp else "user")
            model = cached_model(key, device, precision)
            result = run_analysis(chosen, key, model=model,
                                  progress=lambda d, t: bar.progress(d / t, text=f"Window {d} of {t}"))
            st.session_state["analysis"] = result
            st.session_state["analysis_id"] = None
            st.session_state["case_label"] = case_label
            bar.progress(1.0, text="Saving to the case history…")
            st.session_state["analysis_id"] = save_analysis(result, case_label.strip() or "unlabelled", case_store())
        except TILscopeError as err:
            st.error(str(err))
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
    st.subheader(f"Result: {s['image']['name']} · {sc.title}")
    for w in result.warnings:
        st.warning(w)
    cols = st.columns(4)
    cols[0].metric("Cells", s["n_cells"])
    if s["density_per_mm2"]:
        cols[1].metric("Density (cells/mm²)", f"{s['n_cells'] / s['area_mm2']:,.0f}")
        cols[2].metric("Analysed area (mm²)", f"{s['area_mm2']:.4f}", help="The whole image.")
    else:
        cols[1].metric("Density (cells/mm²)", "n/a", help="Needs the microns per pixel.")
        cols[2].metric("Analysed area (mm²)", "n/a", help="Needs the microns per pixel.")
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
    counts = [
        {"class": labels.get(k, k), "count": v,
         "cells/mm²": None if not s["density_per_mm2"] else round(s["density_per_mm2"][k], 1)}
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
    if analysis_id is None:
        st.warning("This analysis is not in the case history (saving failed); the downloads below still work.")
        files = build_exports(result, case_label=st.session_state.get("case_label") or None)
    else:
        st.success(f"Saved as analysis {analysis_id} in the case history.", icon=":material/database:")
        files = {}
        try:
            store = case_store()
            stored = {f["name"] for f in store.get_analysis(analysis_id)["files"]}
            files = {name: store.get_file(analysis_id, name) for name in sorted(stored)}
        except TILscopeError as err:
            st.error(str(err))
    stem = s["image"]["name"].rsplit(".", 1)[0]
    cols = st.columns(max(1, len(files)))
    for col, (name, data) in zip(cols, sorted(files.items())):
        col.download_button(name, data, f"{stem}-{name}", media_type(name))
