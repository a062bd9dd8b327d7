"""TILscope: the router. Every page lives in ``pages/``; this file only navigates."""

import streamlit as st

st.set_page_config(page_title="TILscope", page_icon=":material/biotech:", layout="wide")

pages = [
    st.Page("pages/home.py", title="Home", icon=":material/home:", default=True),
    st.Page("pages/analyze.py", title="Analyze", icon=":material/biotech:"),
    st.Page("pages/slides.py", title="Slides", icon=":material/gallery_thumbnail:"),
    st.Page("pages/review.py", title="Review", icon=":material/edit_location_alt:"),
    st.Page("pages/cases.py", title="Cases", icon=":material/folder_open:"),
    st.Page("pages/tumour_board.py", title="Tumour board", icon=":material/groups:"),
    st.Page("pages/teaching.py", title="Teaching", icon=":material/school:"),
]
st.navigation(pages).run()
