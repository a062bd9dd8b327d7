"""Teaching: generate a synthetic section, run the TNRD model, compare with the ground truth."""

from __future__ import annotations

import logging

import streamlit as st

from core.pipeline import analyze
from core.errors import TILscopeError
from core.evaluation.tnrd import SCENARIO_RECIPE, recipe_for, score_section
from core.generator import generate
from core.io import ImageData, load_image, select_channels
from core.scenarios.registry import SCENARIOS, get_scenario
from core.outputs.figures import dense_over_image
from core.results import DenseOutput
from pages._resources import cached_model
from pages._router import through_app_router
from pages._text import md_escape
from pages._user import gate, user_box

through_app_router()
gate()
user_box()

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
        st.error(md_escape(err))
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
    try:
        image = own_image
        if image.mpp is None:
            image = image.with_mpp(get_scenario(key).input_mpp, source="user")
            st.info(f"No pixel size in the file: analysed at the model's {image.mpp} µm/px.")
        with st.spinner("Running the TNRD model…"):
            st.session_state["teaching_own"] = (key, analyze(image, key, model=cached_model(key, "cpu")))
    except TILscopeError as err:
        st.error(md_escape(err))
    except Exception:  # a traceback never reaches the browser
        log.exception("teaching run on an uploaded image failed")
        st.error("The run failed unexpectedly; the server log has the details.")
own_state = st.session_state.get("teaching_own")
if own_state and own_state[0] == key:
    res = own_state[1]
    st.caption(f"{md_escape(res.image.name)}: {len(res.cells)} cells marked by a synthetic-only model (not a count).")
    left, right = st.columns(2)
    left.image(res.image.rgb, caption="Your image", width="stretch")
    right.image(dense_over_image(res.restored["denoised"], res.dense["mask"]), caption="Denoised, with the predicted mask",
                width="stretch")
