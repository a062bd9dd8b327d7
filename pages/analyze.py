"""Analyze: upload an image (or pick a sample), choose a scenario, run, review, download."""

from __future__ import annotations

import json
import logging

import streamlit as st

from core.analysis import analyze, check_colour, spatial_statistics
from core.errors import TILscopeError
from core.exports import save_result
from core.io import PLAUSIBLE_MPP_RANGE, load_image
from core.model_card import markdown_path, render_markdown
from core.registry import get_scenario, list_scenarios, runner_class
from core.report import EXPORT_MEDIA_TYPES
from core.samples import list_samples
from core.scenarios.base import bfloat16_supported, pick_device
from core.ui_helpers import card_summary, cell_figure, spatial_headline
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
        upload = st.file_uploader("PNG, JPEG or TIFF (8/16-bit colour)", type=["png", "jpg", "jpeg", "tif", "tiff"])
        if upload is not None:
            image = load_image(upload.getvalue(), name=upload.name)
    else:
        samples = list_samples()
        matching = [i for i, smp in enumerate(samples) if smp.scenario == key]
        sample = st.selectbox("Sample", samples, index=matching[0] if matching else 0, format_func=lambda s: s.title)
        st.caption(sample.description + f" ({sample.mpp_note})")
        image = sample.load()
    if image is not None:
        check_colour(image, scenario)  # refused now, not after pressing Run
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
    if "bfloat16" in runner_class(scenario).supported_precisions:
        fast_ok = bfloat16_supported(pick_device())
        fast = st.toggle(
            "Fast mode (bfloat16)", value=False, disabled=not fast_ok,
            help="The network computes in bfloat16: 1.5 to 2 times as fast on this kind of processor. The model card gives "
                 "its validation figures at both precisions. Recorded with the analysis and in the report."
                 + ("" if fast_ok else " Not available: this processor has no native bfloat16."),
        )
        precision = "bfloat16" if fast else "float32"
    if st.button("Run", type="primary"):
        device = str(pick_device())
        bar = st.progress(0.0, text="Detecting cells…")
        try:
            chosen = image.with_mpp(mpp if known else None, source=image.mpp_source if known and image.mpp == mpp else "user")
            model = cached_model(key, device, precision)
            result = analyze(chosen, key, model=model, progress=lambda d, t: bar.progress(d / t, text=f"Block {d} of {t}"))
            bar.progress(1.0, text="Spatial statistics…")
            result.summary["spatial"] = spatial_statistics(result)
            st.session_state["analysis"] = result
            st.session_state["analysis_id"] = None
            st.session_state["case_label"] = case_label
            bar.progress(1.0, text="Saving to the case history…")
            st.session_state["analysis_id"] = save_result(result, case_label.strip() or "unlabelled", case_store())
        except TILscopeError as err:
            st.error(str(err))
        except Exception:  # the browser gets a message, the log gets the traceback
            log.exception("analysis failed")
            st.error("The analysis failed unexpectedly. Nothing was saved; the details are in the server log.")
        finally:
            bar.empty()

result = st.session_state.get("analysis")
if result is not None:
    sc = get_scenario(result.scenario_key)
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
    if result.denoised is not None:
        left, right = st.columns(2)
        left.image(result.image.pixels, caption="Input", width="stretch")
        right.image(result.denoised, caption="Denoised by the model", width="stretch")
    if "mask" in result.masks:
        from core.scenarios.tnrd import mask_overlay

        shown = result.denoised if result.denoised is not None else result.image.pixels
        st.image(mask_overlay(shown, result.masks["mask"], sc.classes[0].color),
                 caption="Classification mask over the image (full colour = classified, half = borderline)", width="stretch")
    labels = {c.name: c.label for c in sc.classes}
    visible = st.multiselect("Show classes", list(sc.class_colors), default=list(sc.class_colors), format_func=labels.get)
    st.plotly_chart(
        cell_figure(result.image.pixels, result.cells, sc.class_colors, labels, visible),
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
    headline = spatial_headline(s.get("spatial"))
    if headline:
        st.markdown("**Spatial statistics** (whole image; draw regions on the Review page)")
        st.dataframe(headline, hide_index=True)

    analysis_id = st.session_state.get("analysis_id")
    if analysis_id is None:
        st.warning("This analysis is not in the case history (saving failed); the downloads below still work.")
        files = {"cells.csv": result.cells.to_csv(index=False, float_format="%.3f").encode(),
                 "summary.json": json.dumps(s, indent=2, ensure_ascii=False).encode()}
    else:
        st.success(f"Saved as analysis {analysis_id} in the case history.", icon=":material/database:")
        files = {}
        try:
            store = case_store()
            stored = {f["name"] for f in store.get_analysis(analysis_id)["files"]}
            files = {name: store.get_file(analysis_id, name) for name in EXPORT_MEDIA_TYPES if name in stored}
        except TILscopeError as err:
            st.error(str(err))
    stem = s["image"]["name"].rsplit(".", 1)[0]
    cols = st.columns(max(1, len(files)))
    for col, (name, data) in zip(cols, sorted(files.items())):
        col.download_button(name, data, f"{stem}-{name}", EXPORT_MEDIA_TYPES.get(name, "application/octet-stream"))
