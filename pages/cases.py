"""Cases: every saved analysis; search, open one with its overlay and numbers, review it, download, delete.

A reviewed analysis shows its reviewed state (numbers, overlay, downloads) with who reviewed it;
the analysis as detected stays available under "Before review", and the audit log says who
changed what, when and why. A whole-slide analysis is labelled so, shows its overview and
immune-density heat map and the slide's provenance (:mod:`core.slides.pages_support`), and is
explored on the Slides page rather than reviewed cell by cell."""

from __future__ import annotations

import pandas as pd
import streamlit as st
from streamlit.errors import StreamlitAPIException

from core import auth
from core.errors import TILscopeError
from core.outputs import records as rec
from core.outputs.key_figures import format_value, key_figure_rows
from core.outputs.store import StoreError
from core.slides import pages_support as slide_view
from pages._resources import case_store, list_analyses_or_stop
from pages._router import through_app_router
from pages._text import md_escape
from pages._user import can_save, current_actor, gate, user_box

through_app_router()
gate()


def board_ids() -> list[int]:
    return st.session_state.setdefault("board_ids", [])


def when(iso: str | None) -> str:
    return (iso or "")[:16].replace("T", " ")


def open_in_review(analysis_id: int) -> None:
    """Send an analysis to the Review page (it opens it from the case store)."""
    st.session_state["review_request"] = analysis_id
    try:
        st.switch_page("pages/review.py")
    except StreamlitAPIException:  # this page run on its own (tests): no router to switch with
        st.success(f"Analysis #{analysis_id} will open on the Review page.")


def open_on_slides_page(analysis: dict) -> None:
    """A link to the Slides page (on this analysis's run while it is kept): whole slides are explored there."""
    query = slide_view.slides_page_query(analysis, actor)
    notice = slide_view.review_notice(analysis["id"], run_kept=query is not None)
    try:
        st.page_link("pages/slides.py", label="Open on the Slides page", icon=":material/gallery_thumbnail:",
                     query_params=query, help=notice)
    except StreamlitAPIException:  # this page run on its own (tests): no router to link with
        st.info(notice)


st.title("Cases")
st.caption("Every analysis run in TILscope is saved here. Research use only, not for diagnostic decisions.")
user = user_box()
actor = current_actor()

search = st.text_input("Search", placeholder="case label, image name, SHA-256 or scenario")
rows = list_analyses_or_stop(search)
store = case_store()

if not rows:
    st.info("No saved analyses match." if search else "No analyses saved yet: run one on the Analyze page.")
    st.stop()

table = pd.DataFrame(
    {
        "id": [r["id"] for r in rows],
        "case": [r["case_label"] for r in rows],
        "image": [r["image_name"] for r in rows],
        "scenario": [(r["scenario_key"] or "") + (" (synthetic-trained)" if rec.scenario_trained_on_synthetic(r["scenario_key"])
                                                  else "") for r in rows],
        "saved (UTC)": [(r["created_at"] or "")[:16].replace("T", " ") for r in rows],
        "cells": [sum(r["counts"].values()) for r in rows],
        "corrections": [r["n_corrections"] for r in rows],
        "analysed by": [r["created_by"] or "" for r in rows],
        "reviewed by": [(f"{r['reviewed_by']} ({when(r['reviewed_at'])[:10]})" if r["reviewed_by"] else "") for r in rows],
    }
)
if actor is not None:  # signed-in users: whose case it is and whom it is shared with
    table["case owner"] = [r["owner"] or "" for r in rows]
    table["shared with group"] = [r["group"] or "" for r in rows]
st.dataframe(table, hide_index=True, width="stretch")

by_id = {r["id"]: r for r in rows}
# A keyed selectbox keeps one identity while the list of analyses grows; "open_analysis" outlives
# the widget's own state, which Streamlit drops when another page is shown.
wanted = st.session_state.get("open_analysis")
if st.session_state.get("open_analysis_box") not in by_id:
    st.session_state["open_analysis_box"] = wanted if wanted in by_id else next(iter(by_id))
chosen = st.selectbox(
    "Open analysis",
    list(by_id),
    key="open_analysis_box",
    format_func=lambda i: f"#{i} · {by_id[i]['case_label']} · {by_id[i]['image_name']} · {(by_id[i]['created_at'] or '')[:10]}",
)
st.session_state["open_analysis"] = chosen

try:
    analysis = store.get_analysis(chosen)
    record = store.get_record(chosen)
except StoreError as err:  # deleted in another session since the list was drawn
    st.error(md_escape(err))
    st.stop()

summary = analysis["summary"]
image = rec.image_info(summary)
slide = slide_view.is_slide(summary)
reviewed = analysis["detected_summary"] is not None or bool(analysis["n_corrections"])
title_col, button_col = st.columns([4, 1], vertical_alignment="bottom")
title_col.subheader(f"#{analysis['id']} · {md_escape(analysis['case_label'])} · {md_escape(image['name'] or 'image')} · "
                    f"{slide_view.kind_label(summary)}")
if slide:
    with button_col:
        open_on_slides_page(analysis)
elif button_col.button("Review this analysis", type="primary", icon=":material/edit_location_alt:", key=f"review-{chosen}",
                       help="Open it on the Review page: correct cells, draw regions, save the reviewed state back here."):
    open_in_review(chosen)
who = f"Analysed by {md_escape(analysis['created_by'] or 'an unrecorded user')} · saved {when(analysis['created_at'])} UTC"
if analysis["reviewed_by"]:
    who += f" · reviewed by {md_escape(analysis['reviewed_by'])} on {when(analysis['reviewed_at'])} UTC"
elif reviewed:
    who += " · reviewed (reviewer not recorded)"
st.markdown(who)
if summary.get("trained_on_synthetic"):
    st.warning("**Teaching analysis:** the model was trained on synthetic images only and is not validated on real "
               "tissue; its numbers are not counts for this case"
               + (" (saved after the user confirmed it)." if summary.get("synthetic_save_confirmed") else "."), icon=":material/experiment:")
if actor is not None:
    owner, group = analysis["owner"], analysis["group"]
    st.caption(f"Case owner: {md_escape(owner or 'not recorded (admins only)')} · shared with group: "
               f"{md_escape(group or 'none')}")
    if actor.is_admin or (owner == actor.name and actor.can_save):
        choices = [None, *sorted(set(actor.groups) | ({group} if group else set()))]
        if actor.is_admin:
            try:
                choices = [None, *sorted({g for r in auth.UserFile().records() for g in r.groups} | set(choices[1:]))]
            except TILscopeError:
                pass
        with st.expander("Share this case"):
            share = st.selectbox("Group that sees this case", choices, index=choices.index(group) if group in choices else 0,
                                 format_func=lambda g: "nobody else (owner and admins only)" if g is None else g,
                                 key=f"share-{analysis['case_id']}")
            if st.button("Save sharing", key=f"share-save-{analysis['case_id']}"):
                try:
                    store.set_case_group(analysis["case_id"], share)
                    st.rerun()
                except TILscopeError as err:
                    st.error(md_escape(err))
cols = st.columns(4)
counts = rec.counts(summary)
cols[0].metric("Cells", sum(counts.values()), help="After review when reviewed: " + md_escape(summary.get("analysed_area") or "whole image"))
cols[1].metric(slide_view.area_label(summary), format_value(summary.get("area_mm2"), 3),
               help=md_escape(summary.get("analysed_area") or "whole image"))
cols[2].metric("Scenario", analysis["scenario_key"] or "n/a")
cols[3].metric("Manual corrections", "none" if analysis["n_corrections"] is None else analysis["n_corrections"])

left, right = st.columns([3, 2])
with left:
    shown = slide_view.pictures(summary, (f["name"] for f in analysis["files"]))
    for name, caption in shown:
        st.image(store.get_file(chosen, name), caption=md_escape(caption), width="stretch")
    if not shown:
        st.info("No overlay image was saved with this analysis.")
with right:
    dens = rec.densities_per_mm2(summary)
    st.dataframe(
        pd.DataFrame(
            {
                "class": list(counts),
                "count": list(counts.values()),
                "density (cells/mm²)": [format_value(dens.get(c), 4) for c in counts],
            }
        ),
        hide_index=True,
        width="stretch",
    )
    st.markdown("**Key figures**")
    st.dataframe(pd.DataFrame(key_figure_rows(record)), hide_index=True, width="stretch")
    spatial = rec.spatial_statistics(rec.spatial(record))
    if spatial:
        with st.expander("Every spatial statistic"):
            st.dataframe(
                pd.DataFrame({"statistic": list(spatial), "value": [format_value(v, 4) for v in spatial.values()]}),
                hide_index=True,
                width="stretch",
            )
    for warning in summary.get("warnings") or []:
        st.warning(md_escape(warning))

with st.expander("Provenance: image, weights, versions"):
    st.caption(
        f"Image SHA-256 {md_escape(analysis['image_sha256'])} · weights SHA-256 {md_escape(analysis['weights_sha256'])} · "
        f"mpp {format_value(summary.get('mpp'), 4)} µm/px · TILscope {md_escape(analysis['app_version'])}"
    )
    if slide:
        st.dataframe(pd.DataFrame(slide_view.slide_facts(summary)), hide_index=True, width="stretch")

if analysis["detected_summary"] is not None:
    with st.expander("Before review: the analysis as detected"):
        before = analysis["detected_summary"]
        b_counts, b_dens = rec.counts(before), rec.densities_per_mm2(before)
        st.dataframe(pd.DataFrame({
            "class": list(dict.fromkeys([*b_counts, *counts])),
            "detected": [b_counts.get(c, 0) for c in dict.fromkeys([*b_counts, *counts])],
            "reviewed": [counts.get(c, 0) for c in dict.fromkeys([*b_counts, *counts])],
            "detected density (cells/mm²)": [format_value(b_dens.get(c, 0.0 if b_dens else None), 4)
                                             for c in dict.fromkeys([*b_counts, *counts])],
        }), hide_index=True, width="stretch")
        kept = [f for f in analysis["originals"] if f["name"] != "source-image.png"]
        if kept:
            cols = st.columns(min(5, len(kept)))
            for i, f in enumerate(kept):
                cols[i % len(cols)].download_button(
                    f"{f['name']} (before review)", data=lambda name=f["name"]: store.get_original(chosen, name),
                    file_name=f"{analysis['case_label']}-{chosen}-before-review-{f['name']}".replace("/", "_"),
                    mime=f["media_type"], key=f"dl-orig-{chosen}-{f['name']}",
                )

with st.expander("Audit log: who did what, when and why"):
    try:
        events = store.audit_log(chosen)
    except TILscopeError as err:
        events = []
        st.error(md_escape(err))
    if events:
        st.dataframe(pd.DataFrame({
            "time (UTC)": [when(e["time"]) for e in events],
            "user": [e["user"] for e in events],
            "action": [e["action"] for e in events],
            "what changed": [rec.audit_detail_text(e["action"], e["detail"]) for e in events],
            "why": [e["comment"] or "" for e in events],
        }), hide_index=True, width="stretch")
    else:
        st.caption("Nothing recorded for this analysis (it was saved before TILscope kept an audit log).")

st.markdown("**Downloads**" + (" (reviewed state)" if reviewed else ""))
files = analysis["files"]
if files:
    cols = st.columns(min(5, len(files)))
    for i, f in enumerate(files):
        cols[i % len(cols)].download_button(
            f["name"],  # TILscope's own export names (report.pdf, cells.csv, ...)
            help=f"{f['size_bytes'] / 1024:,.0f} kB, {md_escape(f['media_type'])}",
            data=lambda name=f["name"]: store.get_file(chosen, name),  # read when clicked
            file_name=f"{analysis['case_label']}-{chosen}-{f['name']}".replace("/", "_"),
            mime=f["media_type"],
            key=f"dl-{chosen}-{f['name']}",
        )
else:
    st.info("No exported files were saved with this analysis.")

writer = can_save()
may_delete = auth.can_delete(actor, analysis["owner"], analysis["created_by"])
note = st.text_area("Tumour-board note", value=analysis["note"] or "", key=f"note-{chosen}", disabled=not writer)
c1, c2, c3 = st.columns(3)
if c1.button("Save note", key=f"save-note-{chosen}", disabled=not writer,
             help=None if writer else "Viewers cannot write notes: ask an admin for the analyst role."):
    try:
        store.set_note(chosen, note.strip() or None, user=user)
        st.success("Note saved." + ("" if user else " Enter your name in the sidebar so notes say who wrote them."))
    except TILscopeError as err:
        st.error(md_escape(err))
if c2.button("Add to tumour board", key=f"board-{chosen}"):
    if chosen not in board_ids():
        board_ids().append(chosen)
    st.success(f"Analysis #{chosen} is on the tumour board ({len(board_ids())} picked). Open the Tumour board page.")
if c3.button("Delete analysis…", key=f"delete-{chosen}", disabled=not may_delete,
             help=None if may_delete else "Only an admin, or the analyst who ran this analysis or owns its case, can "
                                          "delete it."):
    st.session_state["confirm_delete"] = chosen

if st.session_state.get("confirm_delete") == chosen and may_delete:
    st.warning(
        f"Delete analysis #{chosen} of case {md_escape(analysis['case_label'])} with its report and files? This cannot be undone; "
        "the audit log keeps who deleted it and why."
    )
    why = st.text_input("Why (optional, kept in the audit log)", key=f"delete-why-{chosen}")
    y, n = st.columns(2)
    if y.button("Yes, delete it", type="primary", key=f"confirm-{chosen}"):
        try:
            store.delete_analysis(chosen, user=user, comment=why or None)
            st.session_state.pop("confirm_delete", None)
            st.session_state.pop("open_analysis", None)
            if chosen in board_ids():
                board_ids().remove(chosen)
            st.rerun()
        except TILscopeError as err:
            st.error(md_escape(err))
    if n.button("Cancel", key=f"cancel-{chosen}"):
        st.session_state.pop("confirm_delete", None)
        st.rerun()
