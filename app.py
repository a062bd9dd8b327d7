"""TILscope: the router. Every page lives in ``pages/``; this file only navigates."""

import streamlit as st

st.set_page_config(page_title="TILscope", page_icon="🔬", layout="wide")

pages = [
    st.Page("pages/home.py", title="Home", icon="🏠", default=True),
    st.Page("pages/analyze.py", title="Analyze", icon="🔬"),
]
st.navigation(pages).run()
