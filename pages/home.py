"""Home: what TILscope is and what each scenario model does."""

import streamlit as st

from core import __version__
from core.scenarios.registry import list_scenarios
from pages._router import through_app_router

through_app_router()

st.title("TILscope")
st.markdown(
    "Count, locate and score **tumour-infiltrating lymphocytes (TILs)** in microscope images. "
    "Upload an IHC, H&E or fluorescence image, pick the scenario model that matches its stain, "
    "and TILscope marks every cell it finds, counts them, and reports densities in cells/mm²."
)
st.warning("Research use only, not for diagnostic decisions.", icon="⚠️")
st.markdown("Start with **Analyze** in the menu on the left.")

st.subheader("Scenario models")
for s in list_scenarios():
    with st.container(border=True):
        st.markdown(f"**{s.title}** — `{s.key}`")
        st.caption(f"{s.stain} · trained at {s.input_mpp} µm/px · classes: {', '.join(c.label for c in s.classes)}")
        st.write(s.description)
        if s.trained_on_synthetic:
            st.info("Trained on synthetic images only: check its results against a pathologist's reading.")
st.caption(f"TILscope {__version__}")
