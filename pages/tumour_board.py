"""Tumour board: compare saved analyses side by side (densities, proximity figures,
phenotype calls) in a table and charts, and export the comparison as PDF (one row per
analysis with its overlay thumbnail, the same charts, every key figure). Whole-slide analyses sit
beside field analyses, their columns marked "whole slide", with a note on their densities
(:func:`core.slides.pages_support.board_note`)."""

from __future__ import annotations

import logging
from datetime import datetime, timezone

import streamlit as st

from core.errors import TILscopeError
from core.outputs.key_figures import format_value
from core.outputs.store import StoreError
from core.outputs.tumour_board import build_comparison_pdf, comparison_figures_png, comparison_table, key_figure_table
from core.slides import pages_support as slide_view
from pages._resources import case_store, list_analyses_or_stop
from pages._router import through_app_router
from pages._text import md_escape
from pages._user import gate, user_box

through_app_router()
gate()
user_box()

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
        st.warning(md_escape(err))
if not records:
    st.stop()

table = comparison_table(records)
key_table = key_figure_table(records)
formatted = table.map(lambda v: format_value(v, 4) if not isinstance(v, str) else v)
formatted.columns = [f"{i + 1}. {c}" + (f" ({slide_view.SLIDE})" if slide_view.is_slide(r.get("summary")) else "")
                     for i, (c, r) in enumerate(zip(table.columns, records))]
st.subheader("Side by side")
note = slide_view.board_note(records)
if note:
    st.caption(note)
every = st.toggle("Every statistic", value=False, help="Off: the key figures only. On: every number saved with the analyses.")
if every:
    shown = formatted
else:
    shown = key_table.copy()
    shown.columns = formatted.columns
st.dataframe(
    shown, width="stretch", height=min(800, 38 + 35 * len(shown)),
    column_config={"_index": st.column_config.Column("measure", width="large")},
)

st.subheader("Charts")
charts = comparison_figures_png(records)
if not charts:
    st.info("No densities or distances to chart: the analyses picked have no pixel size (mpp) or no spatial statistics.")
for title, png in charts:
    st.image(png, caption=f"{title} (analyses numbered as in the table)", width="stretch")
if "immune phenotype" in key_table.index:
    st.subheader("Phenotype calls")
    calls = key_table.loc[["immune phenotype"]].copy()
    calls.columns = formatted.columns
    st.dataframe(calls, width="stretch")

st.divider()
if st.button("Prepare comparison PDF", type="primary"):
    try:
        overlays = []
        for record in records:
            try:
                overlays.append(store.get_file(record["analysis_id"], "overlay.png"))
            except StoreError:  # saved without an overlay: the row says so
                overlays.append(None)
        st.session_state["board_pdf"] = (tuple(picked), build_comparison_pdf(records, overlays=overlays))
    except TILscopeError as err:
        st.error(md_escape(err))
    except Exception:
        log.exception("comparison PDF failed")
        st.error("The comparison PDF could not be built; the details are in the server log.")
prepared = st.session_state.get("board_pdf")
if prepared and prepared[0] == tuple(picked):
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M")
    st.download_button(
        "Download comparison.pdf", data=prepared[1], file_name=f"tumour-board-{stamp}.pdf", mime="application/pdf"
    )
