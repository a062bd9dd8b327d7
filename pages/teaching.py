"""Teaching: generate a synthetic section, run a generator-trained model, compare with the ground truth.

The TNRD scenarios (denoising + immune mask) and, when installed, the multiplex IHC phenotypes
(S-DRDIN on the mIHC generator: true vs called phenotypes, true vs unmixed chromogens).
"""

from __future__ import annotations

import html
import logging
import re

import streamlit as st

from core.pipeline import analyze
from core.errors import TILscopeError
from core.evaluation.mihc import TEACHING_SIZES_PX, chromogen_truth_pictures, teaching_section
from core.evaluation.tnrd import SCENARIO_RECIPE, recipe_for, score_section
from core.generator import generate
from core.io import ImageData, load_image, select_channels
from core.scenarios.registry import SCENARIOS, get_scenario
from core.outputs.figures import dense_over_image, render_overlay
from core.results import DenseOutput
from pages._resources import cached_model
from pages._router import through_app_router
from pages._text import md_escape
from pages._user import gate, user_box

through_app_router()
gate()
user_box()

log = logging.getLogger("tilscope.teaching")


MIHC_KEY = "mihc-tcell-phenotypes"


def shown_run(what: str, run):
    """``run()``, its errors said in the page: a TILscopeError by its message, anything else logged, never a traceback.

    Returns run()'s value, or None when it failed.
    """
    try:
        return run()
    except TILscopeError as err:
        st.error(md_escape(err))
    except Exception:  # a traceback never reaches the browser
        log.exception("teaching: %s failed", what)
        st.error(f"The {what} failed unexpectedly; the server log has the details.")
    return None


def phenotype_legend(classes) -> None:
    """One line: each phenotype's ring colour (names and colours from the registry: escaped, colours checked)."""
    items = []
    for c in classes:
        color = c.color if re.fullmatch(r"#[0-9a-fA-F]{3,8}|[a-zA-Z]{1,30}", str(c.color)) else "gray"
        items.append(f"<span><span style='display:inline-block;width:11px;height:11px;border-radius:50%;border:2.5px "
                     f"solid {color};vertical-align:middle'></span> {html.escape(str(c.name))}</span>")
    st.html("<div style='display:flex;flex-wrap:wrap;gap:4px 16px;font-size:0.85rem;line-height:1.6'>"
            f"<b>Rings:</b>{''.join(items)}</div>")


def mihc_teaching(key: str) -> None:
    """The multiplex IHC view: a synthetic section, its true T-cell phenotypes, the model's calls, the chromogens."""
    scenario = get_scenario(key)
    st.error("**Trained on synthetic images only; not validated on real mIHC.** This view is for learning how "
             "phenotypes follow from chromogen combinations and how the model calls them. Nothing here is saved.",
             icon=":material/experiment:")
    col1, col2 = st.columns(2)
    lo, hi = TEACHING_SIZES_PX
    size = col1.slider("Section size (px at 0.44 µm/px)", lo, hi, 320, step=32, key="teach_mihc_size")
    seed = int(col2.number_input("Seed", min_value=0, max_value=10**9, value=20000, step=1, key="teach_mihc_seed",
                                 help="Each seed is another section. The model card's figures come from seeds "
                                      "10000-10039, which the model never saw in training."))
    if st.button("Generate and run", type="primary", key="teach_mihc_run"):
        st.session_state.pop("teaching_mihc", None)

        def run():
            state = teaching_section(seed, size, model=cached_model(key, "cpu"))
            return {**state, "chromogens": chromogen_truth_pictures(state["section"])}

        with st.spinner("Generating the section and running S-DRDIN…"):
            st.session_state["teaching_mihc"] = shown_run("synthetic run", run)
    state = st.session_state.get("teaching_mihc")
    if not state:
        return
    section, result, scores, per = state["section"], state["result"], state["scores"], state["per_phenotype"]
    det, cls = scores["detection"], scores["classification"]
    m = st.columns(4)
    m[0].metric("Detection F1", f"{det['f1']:.2f}", help="Model cells matched one to one to true T cells within 4.4 µm")
    m[1].metric("Weighted phenotype F1", "–" if cls is None else f"{cls['weighted_f1']:.2f}",
                help="Of the matched cells, weighted by each phenotype's number of true cells")
    m[2].metric("T cells (truth)", int(per["true_cells"].sum()))
    m[3].metric("T cells (model)", len(result.cells))
    colors = {c.name: c.color for c in scenario.classes}
    left, mid, right = st.columns(3)
    left.image(section.image, caption=f"Input: synthetic mIHC section, seed {section.seed}", width="stretch")
    mid.image(render_overlay(section.image, state["truth_cells"], colors, section.mpp),
              caption="Ground truth: each T cell ringed in its phenotype's colour", width="stretch")
    right.image(render_overlay(section.image, result.cells, colors, section.mpp),
                caption="Prediction: the model's cells and calls", width="stretch")
    phenotype_legend(scenario.classes)
    st.dataframe(per, hide_index=True, column_config={
        "phenotype": "Phenotype", "true_cells": "True cells", "model_cells": "Called by the model",
        "found": st.column_config.NumberColumn("Found", help="True cells with a model cell within 4.4 µm, whatever its call"),
        "called_right": st.column_config.NumberColumn("Called right", help="Found and given the true phenotype"),
        "recall": st.column_config.NumberColumn("Recall", format="%.2f"),
        "precision": st.column_config.NumberColumn("Precision", format="%.2f")})
    with st.expander("Chromogens: true and unmixed"):
        st.caption("Each chromogen drawn alone on white glass: top row, the generator's true concentration (before blur "
                   "and noise); bottom row, what colour unmixing recovers from the scanned image with the panel's nominal "
                   "stain colours (what the Analyze page shows for a real image). A phenotype is its combination of "
                   "chromogens: CD8 red, CD4 green, FOXP3 brown in the nucleus, PD1 teal.")
        pictures = state["chromogens"]
        for row, what in ((1, "truth"), (2, "unmixed")):
            for col, picture in zip(st.columns(len(pictures)), pictures):
                col.image(picture[row], caption=f"{picture[0]}: {what}", width="stretch")


st.title("Teaching: synthetic sections")
st.caption(
    "A synthetic section from the project's tissue generators, what a generator-trained model makes of it, and "
    "how that compares with the exact ground truth: the TNRD variational network's denoised image and immune mask "
    "(TNRD melanoma paper §2.2), or S-DRDIN's T-cell phenotypes on multiplex IHC. Research and teaching use, not a "
    "diagnostic device."
)

installed = [k for k in SCENARIO_RECIPE if k in SCENARIOS] + ([MIHC_KEY] if MIHC_KEY in SCENARIOS else [])
if not installed:
    st.info("No generator-trained model is installed in this TILscope; the teaching page needs one.")
    st.stop()
key = st.selectbox("Scenario", installed, format_func=lambda k: f"{get_scenario(k).title}  ({k})")
if key == MIHC_KEY:
    mihc_teaching(key)
    st.stop()
recipe = recipe_for(key)
types = {c.name: c for c in recipe.cell_types}
col1, col2, col3 = st.columns(3)
with col1:
    size = st.slider("Section size (px)", 128, 500, 256, step=32, key="teach_size")
    seed = int(st.number_input("Seed", min_value=0, max_value=10**9, value=10000, step=1, key="teach_seed"))
with col2:
    if key == "tnrd-if-melanoma":
        n_tumour = st.slider("Melanoma cells per 500 x 500 px", 0, 120, types["tumour"].count, key="teach_tumour")
        n_immune = st.slider("Immune cells per 500 x 500 px", 0, 80, types["immune"].count, key="teach_immune")
        counts = {"tumour": n_tumour, "immune": n_immune}
    else:
        n_scattered = st.slider("Scattered immune cells per 500 x 500 px", 0, 100, types["immune"].scattered,
                                key="teach_scattered", help="Isolated immune cells among the tumour cells, besides the two dense infiltrate regions")
        counts = {"immune": n_scattered}
with col3:
    noise = st.slider("Noise (x the recipe's)", 0.0, 2.0, 1.0, step=0.1, key="teach_noise")

if st.button("Generate and run", type="primary"):
    def run_tnrd():
        section = generate(recipe.with_counts(**counts).with_noise(noise), (size, size), seed)
        model = cached_model(key, "cpu")
        image = ImageData(section.noisy_uint8, model.scenario.input_mpp, f"synthetic-{recipe.key}-{seed}", "", "user")
        result = analyze(image, key, model=model)
        return {"key": key, "section": section, "result": result,
                "scores": score_section(key, section, result.cells, result.restored["denoised"],
                                        result.dense["mask"].values, model.min_area_px)}

    with st.spinner("Running the TNRD model…"):
        done = shown_run("synthetic run", run_tnrd)
    if done is not None:
        st.session_state["teaching"] = done

state = st.session_state.get("teaching")
if state and state["key"] == key:
    section, result, scores = state["section"], state["result"], state["scores"]
    color = get_scenario(key).classes[0].color
    m = st.columns(6)
    m[0].metric("RGB PSNR", f"{scores['rgb_psnr_db']:.1f} dB", f"{scores['rgb_psnr_gain_db']:+.1f} dB vs input")
    m[1].metric("Mask PSNR", f"{scores['mask_psnr_db']:.1f} dB")
    m[2].metric("Precision", f"{scores['precision']:.2f}")
    m[3].metric("Recall", f"{scores['recall']:.2f}")
    m[4].metric("Classified immune cells (truth)", scores["n_true"])
    m[5].metric("Classified immune cells (model)", scores["n_pred"])
    clean_u8 = (section.clean * 255 + 0.5).astype("uint8")
    left, mid, right = st.columns(3)
    left.image(section.noisy_uint8, caption="Input: noisy synthetic section", width="stretch")
    mid.image(clean_u8, caption="Ground truth: clean image", width="stretch")
    right.image(result.restored["denoised"], caption="Prediction: denoised image", width="stretch")
    left, mid, right = st.columns(3)
    left.image(section.mask, clamp=True, caption="Ground-truth mask (1 classified, 0.5 borderline)", width="stretch")
    truth = DenseOutput("mask", "mask", "ground-truth mask", section.mask.astype("float32"), color=color)
    mid.image(dense_over_image(clean_u8, truth), caption="Ground truth over the clean image", width="stretch")
    right.image(dense_over_image(result.restored["denoised"], result.dense["mask"]), caption="Predicted mask over the denoised image",
                width="stretch")
    with st.expander("How the ground truth is made"):
        st.markdown(
            f"Cells are ellipses with uniform semi-axes and inclination, placed at random or in Voronoi regions "
            f"(Table 1). An immune cell is *classified* (mask 1) when the area fraction of "
            f"{recipe.concentration_of} cells in a disc of radius {recipe.radius_px:.0f} px around it exceeds "
            f"{recipe.threshold}"
            + (f"; fractions in [{recipe.half_band[0]}, {recipe.half_band[1]}] give 0.5." if recipe.half_band else ".")
            + " A predicted cell counts as found when its centroid lies within the match radius of a classified "
            "cell's visible centroid; borderline (0.5) cells are neither required nor penalised."
        )
        st.dataframe(section.cells, hide_index=True)

st.divider()
st.subheader("Method development: this model on your own image")
st.warning(
    "This model was trained on synthetic images only. On real tissue it can mark debris, pigment or stain as "
    "immune cells: its numbers are for teaching and method development, never for a case. Nothing here is saved "
    "in the case history.", icon="🧪",
)
own = st.file_uploader("An image in the model's stain (PNG, JPEG, BMP or TIFF)", type=["png", "jpg", "jpeg", "bmp", "tif", "tiff"],
                       key="teach_upload")
own_image = None
if own is not None:
    try:
        own_image = load_image(own.getvalue(), name=own.name)
        if not own_image.is_rgb:  # a multi-channel fluorescence file: pick what goes into red, green and blue
            st.caption(f"The file has {own_image.n_channels} channels; the model reads {get_scenario(key).stain}. "
                       "Pick the file's channel for each colour.")
            options = [None, *own_image.channel_names]
            cols = st.columns(3)
            picks = tuple(col.selectbox(colour.capitalize(), options, index=min(i + 1, len(options) - 1),
                                        format_func=lambda o: "none" if o is None else o, key=f"teach_pick_{colour}")
                          for i, (col, colour) in enumerate(zip(cols, ("red", "green", "blue"))))
            own_image = select_channels(own_image, picks, ("red", "green", "blue"))
    except TILscopeError as err:
        st.error(md_escape(err))
        own_image = None
if own_image is not None and st.button("Run on this image", key="teach_own_run"):
    st.session_state.pop("teaching_own", None)
    image = own_image
    if image.mpp is None:
        image = image.with_mpp(get_scenario(key).input_mpp, source="user")
        st.info(f"No pixel size in the file: analysed at the model's {image.mpp} µm/px.")
    with st.spinner("Running the TNRD model…"):
        own_result = shown_run("run", lambda: analyze(image, key, model=cached_model(key, "cpu")))
    if own_result is not None:
        st.session_state["teaching_own"] = (key, own_result)
own_state = st.session_state.get("teaching_own")
if own_state and own_state[0] == key:
    res = own_state[1]
    st.caption(f"{md_escape(res.image.name)}: {len(res.cells)} cells marked by a synthetic-only model (not a count).")
    left, right = st.columns(2)
    left.image(res.image.rgb, caption="Your image", width="stretch")
    right.image(dense_over_image(res.restored["denoised"], res.dense["mask"]), caption="Denoised, with the predicted mask",
                width="stretch")
