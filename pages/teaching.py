"""Teaching: generate a synthetic section, run the TNRD model, compare with the ground truth."""

from __future__ import annotations

import logging

import streamlit as st

from core.pipeline import analyze
from core.errors import TILscopeError
from core.evaluation.tnrd import SCENARIO_RECIPE, recipe_for, score_section
from core.generator import generate
from core.io import ImageData
from core.scenarios.registry import SCENARIOS, get_scenario
from core.outputs.figures import dense_over_image
from core.results import DenseOutput
from pages._resources import cached_model
from pages._router import through_app_router

through_app_router()

log = logging.getLogger("tilscope.teaching")


st.title("Teaching: synthetic sections")
st.caption(
    "A synthetic section from the stochastic tissue generator (TNRD melanoma paper §2.2), the TNRD "
    "variational network's denoised image and classification mask, and how they compare with the exact "
    "ground truth. Research and teaching use, not a diagnostic device."
)

installed = [k for k in SCENARIO_RECIPE if k in SCENARIOS]
if not installed:
    st.info("No generator-trained model is installed in this TILscope; the teaching page needs one.")
    st.stop()
key = st.selectbox("Scenario", installed, format_func=lambda k: f"{get_scenario(k).title}  ({k})")
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
    try:
        section = generate(recipe.with_counts(**counts).with_noise(noise), (size, size), seed)
        model = cached_model(key, "cpu")
        image = ImageData(section.noisy_uint8, model.scenario.input_mpp, f"synthetic-{recipe.key}-{seed}", "", "user")
        with st.spinner("Running the TNRD model…"):
            result = analyze(image, key, model=model)
        st.session_state["teaching"] = {
            "key": key, "section": section, "result": result,
            "scores": score_section(key, section, result.cells, result.restored["denoised"], result.dense["mask"].values,
                                    model.min_area_px),
        }
    except TILscopeError as err:
        st.error(str(err))
    except Exception:  # a traceback never reaches the browser
        log.exception("teaching run failed")
        st.error("The synthetic run failed unexpectedly; the server log has the details.")

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
