"""Tumour board: compare saved analyses side by side (densities, proximity figures,
phenotype calls) in a table and charts, and export the comparison as PDF."""

from __future__ import annotations

import logging
from datetime import datetime, timezone

import pandas as pd
import streamlit as st

from core.errors import TILscopeError
from core.outputs.key_figures import format_value
from core.outputs.store import StoreError
from core.outputs.tumour_board import build_comparison_pdf, comparison_numeric, comparison_table, key_figure_table
from pages._resources import case_store, list_analyses_or_stop
from pages._router import through_app_router

through_app_router()

log = logging.getLogger("tilscope.tumour_board")


st.title("Tumour board")
st.caption("Compare infiltration across analyses. Research use only, not for diagnostic decisions.")

rows = list_analyses_or_stop()
store = case_store()

if not rows:
    st.info("No analyses saved yet: run one on the Analyze page, then pick it here.")
    st.stop()

by_id = {r["id"]: r for r in rows}
# "board_ids" (kept across pages; the Cases page adds to it) seeds the widget's own state.
pick = [i for i in st.session_state.get("board_pick", []) if i in by_id]
pick += [i for i in st.session_state.get("board_ids", []) if i in by_id and i not in pick]
st.session_state["board_pick"] = pick
picked = st.multiselect(
    "Analyses to compare",
    list(by_id),
    key="board_pick",
    format_func=lambda i: f"#{i} · {by_id[i]['case_label']} · {by_id[i]['image_name']} · {(by_id[i]['created_at'] or '')[:10]}",
    placeholder="Pick two or more analyses (search by case label or image name)",
)
st.session_state["board_ids"] = list(picked)
if not picked:
    st.info("Pick the analyses to compare; the Cases page can add them too.")
    st.stop()

records = []
for analysis_id in picked:
    try:
        records.append(store.get_record(analysis_id))
    except StoreError as err:  # deleted in another session
        st.warning(str(err))
if not records:
    st.stop()

table = comparison_table(records)
formatted = table.map(lambda v: format_value(v, 4) if not isinstance(v, str) else v)
formatted.columns = [f"{i + 1}. {c}" for i, c in enumerate(table.columns)]
st.subheader("Side by side")
every = st.toggle("Every statistic", value=False, help="Off: the key figures only. On: every number saved with the analyses.")
if every:
    shown = formatted
else:
    shown = key_figure_table(records)
    shown.columns = formatted.columns
st.dataframe(
    shown, width="stretch", height=min(800, 38 + 35 * len(shown)),
    column_config={"_index": st.column_config.Column("measure", width="large")},
)

numeric = comparison_numeric(records)
if not numeric["density"].empty:
    st.subheader("Density per class (cells/mm²)")
    density = numeric["density"].copy()
    density.columns = formatted.columns
    st.bar_chart(density, stack=False, y_label="cells/mm²")
else:
    st.info("No densities to chart: the analyses picked have no pixel size (mpp).")
if not numeric["spatial"].empty:
    st.subheader("Spatial statistics")
    spatial = numeric["spatial"].copy()
    spatial.columns = formatted.columns
    cols = st.columns(3)
    for i, (name, values) in enumerate(spatial.iterrows()):
        with cols[i % 3]:
            st.caption(str(name))
            values.index = [str(k + 1) for k in range(len(values))]  # numbered as in the table
            st.bar_chart(pd.DataFrame({"value": values}), height=200, x_label="analysis")
calls = [i for i in table.index if str(i).startswith("spatial: phenotype.")]
if calls:
    st.subheader("Phenotype calls")
    st.dataframe(formatted.loc[calls], width="stretch")

st.divider()
if st.button("Prepare comparison PDF", type="primary"):
    try:
        st.session_state["board_pdf"] = (tuple(picked), build_comparison_pdf(records))
    except TILscopeError as err:
        st.error(str(err))
    except Exception:
        log.exception("comparison PDF failed")
        st.error("The comparison PDF could not be built; the details are in the server log.")
prepared = st.session_state.get("board_pdf")
if prepared and prepared[0] == tuple(picked):
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M")
    st.download_button(
        "Download comparison.pdf", data=prepared[1], file_name=f"tumour-board-{stamp}.pdf", mime="application/pdf"
    )
