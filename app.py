"""TILscope: the router. Every page lives in ``pages/``; this file only navigates."""

import streamlit as st

st.set_page_config(page_title="TILscope", page_icon=":material/biotech:", layout="wide")

pages = [
    st.Page("pages/home.py", title="Home", icon=":material/home:", default=True),
    st.Page("pages/analyze.py", title="Analyze", icon=":material/biotech:"),
]
st.navigation(pages).run()
