"""Home: who TILscope is for, what to do first, and which models it has, by stain."""

import streamlit as st

from core import __version__
from core.fitness import STAIN_LABELS
from core.scenarios.registry import list_scenarios
from pages._router import through_app_router
from pages._user import gate, user_box

through_app_router()
gate()
user_box()

st.title("TILscope")
st.markdown(
    "For **pathologists, oncologists and tumour boards** who need **tumour-infiltrating lymphocytes (TILs)** "
    "counted, located and scored in a microscope image. Upload a field from your slide, choose what it is "
    "stained with, and TILscope marks every cell it finds, counts them per mm² of tissue, measures how close the "
    "lymphocytes come to the tumour cells, and writes a report you can bring to the tumour board."
)
st.warning("Research use only, not for diagnostic decisions.", icon="⚠️")
if st.button("Analyze an image", type="primary", icon=":material/biotech:"):
    st.switch_page("pages/analyze.py")
st.markdown(
    "**First time?** On *Analyze*, pick *Bundled sample* to see a result in a few seconds. Then upload your own "
    "image with its pixel size (microns per pixel, from the scanner: about 0.25 at 40x, 0.5 at 20x). "
    "*Review* lets you correct cells and draw tumour and stroma regions; *Cases* keeps every analysis; "
    "*Tumour board* puts cases side by side."
)

st.subheader("What TILscope can read")
clinical = [s for s in list_scenarios() if s.validated_for_counting]
research = [s for s in list_scenarios() if s.research_only and not s.trained_on_synthetic]
teaching = [s for s in list_scenarios() if s.trained_on_synthetic]
for s in clinical:
    lo, hi = s.use.mpp_range
    with st.container(border=True):
        st.markdown(f"**{s.stain}** — {s.title}")
        st.caption(f"Validated on real labelled images · {STAIN_LABELS[s.use.stain]} at {lo:g}-{hi:g} µm/px "
                   "· finds: "
                   + ", ".join(c.label for c in s.classes))
        if s.caution:
            st.caption(f"What to know: {s.caution}")
if research:
    st.subheader("For research only")
    st.caption("Trained on real labelled images but did not pass their validation: on Analyze, marked research only; "
               "their numbers are not counts for a patient case.")
    for s in research:
        with st.container(border=True):
            st.markdown(f"**{s.stain}** — {s.title}")
            st.caption(f"Why: {s.caution}")
if teaching:
    st.subheader("For teaching and method development")
    st.caption("Trained on synthetic images only, never used for case counts: the TNRD models on the Teaching page, "
               "and every one on Analyze once its switch \"Also list models trained on synthetic images\" is on "
               "(results saved only when you confirm it).")
    for s in teaching:
        st.markdown(f"- {s.stain}: {s.title}")
st.caption(f"TILscope {__version__}. Each model's card (on Analyze) gives its training data, validation figures "
           "and limitations.")
