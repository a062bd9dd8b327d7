"""Analyze: upload an image (or pick a sample), choose a scenario, run, review, download.

Reading the upload, its fitness checks and the analysis run in a worker process with a memory
cap (:mod:`core.jobs`), never in the app server: a hostile or oversized file ends its worker,
and the page says in one line what happened."""

from __future__ import annotations

import logging
from dataclasses import replace

import streamlit as st

from core import jobs
from core.errors import TILscopeError
from core.explain.saliency import (DEFAULT_EVALUATIONS, EVALUATION_CHOICES, compute_saliency, report_with_saliency,
                                   saliency_field, supports_saliency)
from core.io import MPP_SOURCE_WORDS, PLAUSIBLE_MPP_RANGE
from core.model_card import markdown_path, render_markdown
from core.fitness import stains_label
from core.pipeline import (FROM_FILE, ImageSource, analyze_source, compartment_scenarios, device_name, fast_mode,
                           prepare_image, previous_runs, save_analysis)
from core.samples import list_samples
from core.scenarios.base import channel_choices
from core.scenarios.registry import get_scenario, list_scenarios
from core.outputs.exports import build_exports, media_type
from core.outputs.figures import dense_over_image
from core.outputs.key_figures import class_distance_table, key_figure_rows
from core.outputs.plots import cell_figure
from core.outputs.records import card_summary
from core.outputs.report_pdf import compartment_rows
from pages._resources import case_store, job_runner
from pages._router import through_app_router
from pages._text import md_escape
from pages._user import can_save, current_actor, gate, user_box

through_app_router()
gate()
user = user_box()
actor = current_actor()
job_runner()  # old job folders cleaned up, once per server

log = logging.getLogger("tilscope.analyze")



def prepared(src: ImageSource, context, key: str, mpp, fitness: bool = True, compartments: str | None = None):
    """The image read and checked at pixel size ``mpp`` (``FROM_FILE``: the file's); once per combination.

    An upload is read and checked in a worker process (:mod:`core.jobs`); a bundled sample,
    small and shipped with TILscope, here (``fitness`` False: read and checked without the
    fitness checks, which then follow once the page has drawn its settings). ``compartments``:
    a compartment scenario run beside ``key``, checked too.

    Raises
    ------
    TILscopeError
        The file cannot be read, or the worker failed (one line: out of memory, killed).
    """
    cache = st.session_state.setdefault("prepare_cache", {})
    k = (context, mpp, fitness, compartments)
    if k not in cache:
        if not any(c[0] == context for c in cache):
            cache.clear()
        antigen = True if get_scenario(key).use.antigen else None
        if src.sample is not None:
            cache[k] = prepare_image(src, key, mpp, antigen_confirmed=antigen, fitness=fitness,
                                     compartments=compartments)
        else:
            with st.spinner("Reading the image…"):
                cache[k] = jobs.wait(jobs.submit(prepare_image, src, key, mpp, antigen_confirmed=antigen,
                                                 compartments=compartments, kind="read image"))
    return cache[k]


def staged(upload) -> str:
    """The upload kept in a file a worker can read (one per uploaded file; the previous one removed)."""
    kept = st.session_state.get("staged_upload")
    if kept and kept[0] == upload.file_id:
        return kept[1]
    if kept:
        import shutil
        from pathlib import Path

        shutil.rmtree(Path(kept[1]).parent, ignore_errors=True)
    path = str(jobs.stage_input(upload.getvalue(), upload.name))
    st.session_state["staged_upload"] = (upload.file_id, path)
    return path


def saved_by() -> dict:
    """The user the analysis is saved under (the name given in this browser)."""
    name = st.session_state.get("user_name")
    return {"created_by": name} if name else {}


def failed(what: str, err: BaseException) -> None:
    """One line in the page for a failure; the traceback (if any) goes to the server log only."""
    if isinstance(err, jobs.JobFailed):
        text = str(err).rstrip()
        st.error(f"{what}: {md_escape(text)}" + ("" if text.endswith((".", "!", "?")) else "."))
    elif isinstance(err, TILscopeError):
        st.error(md_escape(err))
    else:
        log.error("%s", what, exc_info=err)
        st.error(f"{what}: it failed unexpectedly. Nothing was saved; the details are in the server log.")


def current_saliency() -> dict | None:
    """The saliency maps computed for the result on the page ({"maps", "report"}), or None."""
    sal = st.session_state.get("saliency")
    return sal if sal and sal.get("context") == st.session_state.get("analysis_context") and "maps" in sal else None


def saliency_view(result, labels: dict) -> None:
    """The "Saliency (HiPe)" view: computed on demand in a worker process, with a progress bar, shown per class."""
    sc = result.scenario
    sal = current_saliency()
    with st.expander("Saliency (HiPe): which parts of the image each class's calls rest on", expanded=sal is not None):
        st.caption("Hierarchical perturbation (the Hoechst U-Net paper, §5.1): regions of the image are faded in a "
                   "refining grid and the drop of each class's mean probability is mapped. It costs one network pass "
                   "per perturbed image, so it runs on one field of at most 256 x 256 pixels at the model's pixel "
                   "size (the one with the most cells) and only when asked.")
        names = [c.name for c in sc.classes]
        left, right = st.columns(2)
        chosen = left.multiselect("Classes", names, default=names, format_func=labels.get, key="saliency_classes")
        budget = right.select_slider("Perturbed images per class (more: finer, slower)", EVALUATION_CHOICES,
                                     value=DEFAULT_EVALUATIONS, key="saliency_budget")
        if st.button("Compute saliency maps", disabled=not chosen):
            try:
                job_id = jobs.submit(compute_saliency, saliency_field(result.image, result.cells, sc.input_mpp), sc.key,
                                     tuple(chosen), int(budget), device=device_name(), kind="saliency",
                                     progress_kwarg="progress")
                st.session_state["saliency"] = {"context": st.session_state.get("analysis_context"), "job": job_id}
            except TILscopeError as err:
                failed("The saliency maps could not start", err)
        running = st.session_state.get("saliency")
        if running and "job" in running and running.get("context") == st.session_state.get("analysis_context"):
            bar = st.progress(0.0, text="Computing the saliency maps…")
            finished = False
            try:
                maps = jobs.wait(running["job"], on_progress=lambda j: bar.progress(
                    j.fraction, text=f"Perturbed image {j.done} of at most {j.total}" if j.total
                    else "Loading the model…"))
                finished = True
                st.session_state["saliency"] = {"context": running["context"], "maps": maps, "report": None}
            except Exception as err:  # noqa: BLE001 - one line in the page
                finished = True
                st.session_state.pop("saliency", None)
                failed("The saliency maps did not finish", err)
            finally:  # a rerun of the page leaves the job running, to be picked up again
                if finished:
                    bar.empty()
            sal = current_saliency()
        if sal is not None:
            maps = sal["maps"]
            st.caption(md_escape(maps.method_text()))
            pictures = maps.pictures()
            for col, (title, picture, caption) in zip(st.columns(max(3, len(pictures))), pictures):
                col.image(picture, caption=f"{title}. {caption}", width="stretch")


def unmixing_view(result) -> None:
    """"Why each cell got its call": the unmixed chromogen maps (computed once per result in a worker) and each phenotype's levels."""
    from core.mihc_unmixing import VIEW_MAX_PIXELS, chromogen_pictures, phenotype_levels

    context = st.session_state.get("analysis_context")
    with st.expander("Chromogen unmixing: why each cell got its phenotype", expanded=True):
        st.caption("Each pixel's colour split into the panel's five stains by Beer-Lambert colour unmixing "
                   "(non-negative least squares with few stains per pixel; Ruifrok & Johnston 2001, Chen & Srinivas "
                   "2015), each drawn alone on white glass. With three colour channels, stains of close hue can trade "
                   "concentration: the maps are a guide to the chromogens, not a measurement; the network's call is "
                   f"the result. Images over {VIEW_MAX_PIXELS / 1e6:.1f} megapixels are reduced first.")
        kept = st.session_state.get("unmixing")
        if not kept or kept.get("context") != context:
            try:
                with st.spinner("Unmixing the chromogens…"):
                    pictures = jobs.wait(jobs.submit(chromogen_pictures, result.image.rgb, kind="unmixing"))
                kept = {"context": context, "pictures": pictures}
                st.session_state["unmixing"] = kept
            except Exception as err:  # noqa: BLE001 - one line in the page; the result above stays
                failed("The chromogen maps could not be computed", err)
                kept = None
        if kept:
            pictures = kept["pictures"]
            for start in range(0, len(pictures), 3):
                for col, (title, picture, caption) in zip(st.columns(3), pictures[start : start + 3]):
                    col.image(picture, caption=f"{title}: {caption}", width="stretch")
        if len(result.cells):
            try:
                st.markdown("**Median chromogen level of each phenotype's cells** (90th percentile in a disc around "
                            "each cell, OD units; the cell table below has every cell's levels)")
                st.dataframe(phenotype_levels(result.cells), hide_index=True)
            except TILscopeError as err:
                st.error(md_escape(err))


st.title("Analyze an image")

teaching = st.toggle(
    "Also list models trained on synthetic images (teaching and method development)", value=False, key="show_synthetic",
    help="Models trained on the project's synthetic tissue generator only, such as the multiplex IHC T-cell phenotypes. "
         "Not validated on real tissue: their numbers are never counts for a patient case, and their results are saved "
         "in the case history only if you confirm it.")
scenarios = [s for s in list_scenarios() if teaching or not s.trained_on_synthetic]


def scenario_label(k: str) -> str:
    """The picker's line: stain and title, with what a synthetic-trained model is."""
    sc = get_scenario(k)
    return f"{sc.stain}: {sc.title}" + (" · trained on synthetic images only" if sc.trained_on_synthetic else "")


key = st.selectbox(
    "What is the slide stained with?", [s.key for s in scenarios], format_func=scenario_label,
    help="Models marked research only did not pass their validation: their numbers are not counts for a patient case. "
         "Models trained on synthetic images only are listed when the switch above is on.",
)
scenario = get_scenario(key)
lo, hi = scenario.use.mpp_range
if scenario.trained_on_synthetic:
    st.error("**Trained on synthetic images only; not validated on real tissue.** For teaching and method development: "
             "its numbers are never counts for a patient case, and its result is saved in the case history only if you "
             "confirm it. " + md_escape(scenario.caution), icon=":material/experiment:")
elif scenario.research_only:
    st.error("**Research only: not for counting on patient cases.** This model did not pass its validation. "
             + md_escape(scenario.caution), icon=":material/science:")
else:
    st.caption(f"Validated for {stains_label(scenario.use)} images at {lo:g} to {hi:g} µm per pixel "
               "(0.25 µm per pixel is about a 40x scan, 0.5 about 20x).")
    if scenario.caution:
        st.warning(scenario.caution, icon="⚠️")
try:
    full_card = scenario.card()
    card = card_summary(full_card)
    with st.expander("Model card: intended use, limitations, metrics"):
        st.markdown(f"**Intended use:** {md_escape(card['intended_use'])}")
        st.markdown("**Limitations:**\n" + "\n".join(f"- {md_escape(item)}" for item in card["limitations"]))
        st.json(card["metrics"], expanded=False)
        st.download_button("Download the whole model card (Markdown)", render_markdown(full_card),
                           file_name=markdown_path(scenario.weights).name, mime="text/markdown")
except TILscopeError as err:
    st.error(md_escape(err))

source = st.radio("Image", ["Upload a file", "Bundled sample"], horizontal=True)
src = None
info = None
context = None
try:
    if source == "Upload a file":
        upload = st.file_uploader("PNG, JPEG, BMP or TIFF / OME-TIFF (8 or 16 bit)",
                                  type=["png", "jpg", "jpeg", "bmp", "tif", "tiff"])
        if upload is not None:
            page = int(st.session_state.get(f"page_{upload.file_id}", 1))
            context = (key, "upload", upload.file_id, page)
            src = ImageSource(path=staged(upload), name=upload.name, page=page)
    else:
        samples = list_samples()
        matching = [i for i, smp in enumerate(samples) if smp.scenario == key]
        sample = st.selectbox("Sample", samples, index=matching[0] if matching else 0, format_func=lambda s: s.title)
        st.caption(sample.description + f" ({sample.mpp_note})")
        context = (key, "sample", sample.key)
        src = ImageSource(sample=sample.key)
    if src is not None:
        info = prepared(src, context, key, FROM_FILE, fitness=src.sample is None)
        choices = channel_choices(scenario, info.channel_names)
        if choices is not None:  # a multi-channel fluorescence file for a one-channel model: pick the channel
            names, default = choices
            channel = st.selectbox(
                f"Channel of the file that holds the {scenario.input.channels[0]} stain", names, index=default,
                key=f"channel_{context}", format_func=lambda n: f"{names.index(n)}: {n}",
                help=f"The {scenario.title} model reads one {scenario.input.channels[0]} channel; the file has "
                     f"{len(names)} (their names as the file records them).")
            src = replace(src, channel=channel)
            context = (*context, channel)
            info = prepared(src, context, key, FROM_FILE, fitness=src.sample is None)
        if info.n_pages > 1 and source == "Upload a file":
            st.number_input(f"Page of the file to analyse (it holds {info.n_pages})", min_value=1,
                            max_value=info.n_pages, step=1, key=f"page_{upload.file_id}")
        if info.refused:  # the model cannot read it at all: refused now, not after pressing Run
            st.error(md_escape(info.refused))
            info = None
except Exception as err:  # noqa: BLE001 - every failure of reading is one line
    failed("The image could not be read", err)
    info = None
finally:
    # One case, one result: a new image or model clears the previous result and case label.
    if context is not None and st.session_state.get("analysis_context") != context:
        stale = st.session_state.get("saliency") or {}
        if "job" in stale:  # saliency maps of the previous result still being computed
            jobs.cancel(stale["job"])
        for name in ("analysis", "analysis_id", "pending_save", "case_label", "saliency", "unmixing"):
            st.session_state.pop(name, None)
        running = st.session_state.pop("analysis_job", None)
        if running:
            jobs.cancel(running["id"])
        st.session_state["case_label_box"] = ""  # set, not deleted: the browser would send its old text back
        st.session_state["analysis_context"] = context

if info is not None:
    for note in info.notes:
        st.info(md_escape(note))
    default_mpp = info.mpp if info.mpp is not None else scenario.input_mpp
    col1, col2 = st.columns([1, 2])
    with col1:
        known = st.checkbox("Pixel size known", value=info.mpp is not None)
        mpp = st.number_input(
            "Microns per pixel (mpp)", min_value=PLAUSIBLE_MPP_RANGE[0], max_value=PLAUSIBLE_MPP_RANGE[1],
            value=float(default_mpp), step=0.01, format="%.4f", disabled=not known,
            help="From the scanner or microscope: about 0.25 at 40x and 0.5 at 20x.",
        )
    with col2:
        h, w = info.shape
        where = MPP_SOURCE_WORDS.get(info.mpp_source, info.mpp_source) if info.mpp else "not recorded in the file"
        st.caption(f"{md_escape(info.name)}: {w} x {h} px · pixel size {md_escape(where)}")
        if not known:
            st.warning(
                "Without the pixel size, TILscope reports cell counts only: densities per mm² and distances "
                "in µm need the microns per pixel. The image is analysed as if it were at the model's "
                f"{scenario.input_mpp} µm/px."
            )
    chosen_mpp = mpp if known else None
    run_mpp = FROM_FILE if chosen_mpp == info.mpp_used else chosen_mpp
    comp_key = None
    comp_choices = [c.key for c in compartment_scenarios(scenario)]
    if scenario.outputs_of("cells") and comp_choices:  # a cell scenario: its cells placed in predicted compartments
        if st.toggle("Tissue compartments from CD-UNET", value=False, key=f"compartments_{key}",
                     help="Also segment the image into tumour, stroma, necrosis and background (the tissue-compartments "
                          "model): the statistics then use these compartments (stromal TILs, intratumoral and stromal "
                          "densities, the invasive margin, the phenotype) and the densities leave out necrosis and "
                          "glass. Regions drawn on the Review page override them. Check the map before trusting it."):
            comp_key = comp_choices[0]
    antigen_ok = True
    if scenario.use.antigen:
        antigen_ok = st.checkbox(
            f"This section is stained for {scenario.use.antigen} (DAB) with a hematoxylin counterstain",
            key=f"antigen_{key}",
            help=f"The colours cannot tell {scenario.use.antigen} from another DAB stain such as Ki67: the model "
                 f"would count the other antigen's cells as {scenario.use.antigen}+.",
        )
    fitness = None
    try:
        checked = info if run_mpp == FROM_FILE and info.fitness is not None and comp_key is None else \
            prepared(src, context, key, run_mpp, compartments=comp_key)
        if checked.refused:
            st.error(md_escape(checked.refused))
        else:
            fitness = checked.fitness  # the antibody is confirmed by the box above (it gates Run)
    except Exception as err:  # noqa: BLE001 - one line, whatever went wrong in the worker
        failed("The image could not be checked", err)
    override = False
    if fitness is not None and fitness.problems:
        st.error("**Outside the validated use.** " + " ".join(md_escape(p) for p in fitness.problems), icon="🛑")
        override = st.checkbox(
            "Run outside the validated use", value=False, key=f"override_{key}",
            help="The result is then marked 'outside the validated use' on screen, in the case history and in "
                 "every download.",
        )
    for note in fitness.notes if fitness is not None else []:
        st.warning(md_escape(note))
    # Keyed, so that the box keeps one identity when a run stores its label: an unkeyed box
    # built from that label would be replaced by a new one, and typing in the old one lost.
    case_label = st.text_input(
        "Case label", key="case_label_box", placeholder="e.g. study ID or anonymised case number",
        help="Every run is saved under this case in the case history (Cases page).",
    )
    group = None
    if actor is not None and actor.groups and actor.can_save:
        group = st.selectbox("Share a new case with", [None, *actor.groups],
                             format_func=lambda g: "nobody else (you and the admins)" if g is None else f"group {g}",
                             help="Who else sees the case when this run creates it. A case that exists keeps its "
                                  "sharing (change it on the Cases page).")
    precision = "float32"
    validated, fast_ok = fast_mode(key)
    if validated:
        fast = st.toggle(
            "Fast mode (bfloat16)", value=False, disabled=not fast_ok,
            help="The network computes in bfloat16: 1.5 to 2 times as fast on this kind of processor. The model card gives "
                 "its validation figures at both precisions. Recorded with the analysis and in the report."
                 + ("" if fast_ok else " Not available: this processor has no native bfloat16."),
        )
        precision = "bfloat16" if fast else "float32"
    blocked = (not user and "Enter your name in the sidebar first: it is recorded with the analysis.") or (
        not can_save() and "You are a viewer: running and saving analyses needs the analyst role (ask an admin).") or (
        fitness is None and "The image cannot be analysed (see above).") or (
        not antigen_ok and f"Confirm that the section is stained for {scenario.use.antigen} first.") or (
        fitness.problems and not override and "The image is outside the validated use (see above).")
    if blocked:
        st.caption(blocked)
    if st.button("Run", type="primary", disabled=bool(blocked)):
        st.session_state.pop("analysis", None)  # an error replaces the old result, never sits under it
        st.session_state.pop("saliency", None)
        st.session_state.pop("analysis_id", None)
        st.session_state.pop("pending_save", None)
        st.session_state.pop("unmixing", None)
        try:
            job_id = jobs.submit(analyze_source, src, key, run_mpp, device=device_name(), precision=precision,
                                 outside_validated_use=override,
                                 antigen_confirmed=True if scenario.use.antigen else None, fitness=fitness,
                                 compartments=comp_key, kind="analysis", progress_kwarg="progress")
            st.session_state["analysis_job"] = {"id": job_id, "context": context, "case_label": case_label,
                                                "group": group}
        except TILscopeError as err:
            failed("The analysis could not start", err)

    running = st.session_state.get("analysis_job")
    if running and running["context"] == context:  # just started, or still running after a rerun of the page
        bar = st.progress(0.0, text="Running the model…")
        finished = False
        try:
            result = jobs.wait(running["id"], on_progress=lambda j: bar.progress(
                j.fraction, text=f"Window {j.done} of {j.total}" if j.total else "Reading the image and loading the model…"))
            finished = True
            st.session_state["analysis"] = result
            st.session_state["case_label"] = running["case_label"]
            st.session_state["case_group"] = running["group"]
            bar.progress(1.0, text="Saving to the case history…")
            label = running["case_label"].strip() or "unlabelled"
            if not result.scenario.trained_on_synthetic:  # a synthetic-trained result: saved only when confirmed, below
                earlier = previous_runs(case_store(), label, result)
                if earlier:
                    st.session_state["pending_save"] = earlier
                else:
                    st.session_state["analysis_id"] = save_analysis(result, label, case_store(), group=running["group"],
                                                                    **saved_by())
        except Exception as err:  # noqa: BLE001 - one line in the page; a traceback only in the server log
            finished = True
            failed("The analysis did not finish", err)
        finally:  # a rerun of the page (BaseException) leaves the job running, to be picked up again
            if finished:
                st.session_state.pop("analysis_job", None)
            bar.empty()

result = st.session_state.get("analysis")
if result is not None:
    sc = result.scenario
    s = result.summary
    st.divider()
    st.subheader(f"Result: {md_escape(s['image']['name'])} · {sc.title}")
    if s.get("outside_validated_use"):
        st.error("**Outside the validated use:** " + " ".join(md_escape(p) for p in s["outside_validated_use"])
                 + " Treat these numbers as exploratory.", icon="🛑")
    for w in result.warnings:
        st.warning(md_escape(w))
    has_cells = bool(sc.outputs_of("cells"))
    cols = st.columns(4)
    if has_cells:
        cols[0].metric("Cells", s["n_cells"])
    tissue_help = (f"Tissue found in {100 * s['tissue_fraction']:.0f} % of the image (glass and empty background left "
                   "out); every density is per mm² of tissue.") if not s.get("compartments") else (
        f"Predicted tumour and stroma: {100 * s['tissue_fraction']:.0f} % of the image (background and necrosis left "
        "out); every density is per mm² of them, counting the cells in them.")
    if s["density_per_mm2"] and s["area_mm2"] and has_cells:
        cols[1].metric("Density (cells/mm² of tissue)", f"{s.get('n_cells_in_tissue', s['n_cells']) / s['area_mm2']:,.0f}",
                       help=tissue_help)
        cols[2].metric("Tissue area (mm²)", f"{s['area_mm2']:.4f}",
                       help=tissue_help + f" The whole image is {s['image_area_mm2']:.4f} mm².")
    else:
        cols[1].metric("Density (cells/mm²)", "n/a", help="Needs the microns per pixel.")
        cols[2].metric("Tissue area (mm²)", "n/a", help="Needs the microns per pixel.")
    used = s.get("inference_precision", "float32")
    cols[3].metric(f"Run time (s, {s['device'].upper()}{', ' + used if used != 'float32' else ''})",
                   f"{s['runtime_s']:.1f}", help=f"Numeric precision of the network: {used}")

    if sc.trained_on_synthetic:
        st.warning("The model behind these numbers was trained on synthetic images only: check them by eye.", icon=":material/experiment:")
    if sc.research_only:
        st.error("**Research only:** the model behind these numbers did not pass its validation (see the warning "
                 "above and its model card); they are not counts for a patient case.", icon=":material/science:")
    for name, restored in result.restored.items():  # e.g. a denoised image
        left, right = st.columns(2)
        left.image(result.image.rgb, caption="Input", width="stretch")
        right.image(restored, caption=sc.output(name).description, width="stretch")
    if result.compartments is not None:  # regions: tissue compartments, the map over the image with its areas
        st.markdown("**Tissue compartments**")
        comp_sc = get_scenario(result.compartments_run.scenario_key) if result.compartments_run else sc
        if comp_sc.research_only and comp_sc.key != sc.key:  # the cell model's own banner is above
            st.error(f"**Research only:** the compartments come from {md_escape(comp_sc.title)}, which did not pass "
                     "its validation: check the map over the image before trusting the compartment densities, the "
                     "stromal TIL % or the margin.", icon=":material/science:")
        st.image(result.compartments.picture(result.image.rgb, 1600), width="stretch",
                 caption="Tumour, stroma, necrosis and background predicted for every pixel, over the image (legend "
                         "and areas below the picture); compartments.png and regions.geojson below hold them.")
        st.dataframe([{"compartment": a, "area, share of the image, cells": b}
                      for a, b in compartment_rows(s, s.get("spatial") or {})], hide_index=True)
    for name, dense in result.dense.items():  # probability maps, masks, class maps
        with st.expander(f"{name.replace('_', ' ').capitalize()} map: {dense.description}",
                         expanded=dense.meaning == "mask"):
            st.image(dense_over_image(result.image.rgb, dense, sc.class_colors), width="stretch",
                     caption=f"{dense.description}, over the image (full colour = 1)")
    labels = sc.class_labels
    if sc.params.get("unmixing"):
        unmixing_view(result)
    if supports_saliency(sc.key):
        saliency_view(result, labels)
    if has_cells:  # outputs by kind: a compartments-only scenario has no cells to show
        visible = st.multiselect("Show classes", list(sc.class_colors), default=list(sc.class_colors),
                                 format_func=labels.get)
        st.plotly_chart(
            cell_figure(result.image.rgb, result.cells, sc.class_colors, labels, visible),
            width="stretch", config={"scrollZoom": True},
        )
        ci = s.get("density_ci95_per_mm2") or {}
        counts = [
            {"class": labels.get(k, k), "count": v,
             "cells/mm² of tissue": None if not s["density_per_mm2"] else round(s["density_per_mm2"][k], 1),
             "95 % interval (Poisson)": f"{ci[k][0]:,.0f} – {ci[k][1]:,.0f}" if k in ci else "n/a"}
            for k, v in s["counts"].items()
        ]
        st.dataframe(counts, hide_index=True)
        with st.expander(f"Cell table ({len(result.cells)} rows)"):
            st.dataframe(result.cells, hide_index=True)
    headline = key_figure_rows(s.get("spatial"))
    if headline:
        where = ("regions: the predicted tissue compartments; regions drawn on the Review page override them"
                 if (s.get("compartments") or {}).get("regions_for_statistics") == "predicted"
                 else "whole image; draw regions on the Review page")
        st.markdown(f"**Spatial statistics** ({where})")
        st.dataframe(headline, hide_index=True)
    pairs = class_distance_table(s.get("spatial"))
    if pairs:
        with st.expander(f"Distances between immune phenotypes ({len(pairs)} ordered pairs)"):
            st.caption("For each cell of the first phenotype, the distance to the nearest cell of the second (µm), and "
                       "the share of its cells with one within each radius. Descriptive: not corrected for the image's "
                       "edges and not tested against chance.")
            st.dataframe(pairs, hide_index=True)

    analysis_id = st.session_state.get("analysis_id")
    pending = st.session_state.get("pending_save")
    if analysis_id is None and sc.trained_on_synthetic:  # never saved unless the user confirms it here
        st.info("**Not saved in the case history:** the model was trained on synthetic images only, so its numbers are "
                "not counts for a case. The downloads below carry that warning.", icon=":material/experiment:")
        sure = st.checkbox("I keep this as a teaching or method-development analysis, not a count for this case",
                           key="confirm_synthetic_save")
        if st.button("Save in the case history as a teaching analysis", disabled=not sure):
            try:
                label = (st.session_state.get("case_label") or "").strip() or "unlabelled"
                st.session_state["analysis_id"] = save_analysis(result, label, case_store(), confirm_synthetic=True,
                                                                group=st.session_state.get("case_group"), **saved_by())
                st.rerun()
            except TILscopeError as err:
                st.error(md_escape(err))
    if analysis_id is None and pending:
        label = (st.session_state.get("case_label") or "").strip() or "unlabelled"
        st.warning(f"Case {md_escape(repr(label))} already holds this image analysed with the same model and settings "
                   f"(analysis {', '.join(str(i) for i in pending)}). Save a second copy?", icon="⚠️")
        yes, no = st.columns(2)
        if yes.button("Save a second copy"):
            try:
                st.session_state["analysis_id"] = save_analysis(result, label, case_store(),
                                                                group=st.session_state.get("case_group"), **saved_by())
                st.session_state.pop("pending_save", None)
                st.rerun()
            except TILscopeError as err:
                st.error(md_escape(err))
        if no.button("Don't save"):
            st.session_state["pending_save"] = []
            st.rerun()
    if analysis_id is None:
        if sc.trained_on_synthetic:
            pass  # said above, with the button that saves it
        elif pending is None:
            st.warning("This analysis is not in the case history (saving failed); the downloads below still work.")
        elif not pending:
            st.info("Not saved again: the earlier analysis stays in the case history; the downloads below still work.")
        files = build_exports(result, case_label=st.session_state.get("case_label") or None)
    else:
        st.success(f"Saved as analysis {analysis_id} in the case history"
                   + (", marked as a teaching analysis (model trained on synthetic images only)."
                      if sc.trained_on_synthetic else "."), icon=":material/database:")
        files = {}
        try:
            store = case_store()
            stored = {f["name"] for f in store.get_analysis(analysis_id)["files"]}
            files = {name: store.get_file(analysis_id, name) for name in sorted(stored)}
        except TILscopeError as err:
            st.error(md_escape(err))
    sal = current_saliency()
    if sal is not None and "report.pdf" in files:
        try:
            if sal.get("report") is None:
                record = case_store().get_record(analysis_id) if analysis_id is not None else None
                sal["report"] = report_with_saliency(result, sal["maps"], record,
                                                     case_label=st.session_state.get("case_label") or None)
            files["report.pdf"] = sal["report"]
            st.caption("report.pdf below includes the saliency maps"
                       + ("; the copy in the case history was saved before they were computed, without them."
                          if analysis_id is not None else "."))
        except Exception as err:  # noqa: BLE001 - the report without them stays available
            failed("The report with the saliency maps could not be made (the one below is without them)", err)
    stem = s["image"]["name"].rsplit(".", 1)[0]
    cols = st.columns(max(1, len(files)))
    for col, (name, data) in zip(cols, sorted(files.items())):
        col.download_button(name, data, f"{stem}-{name}", media_type(name))
