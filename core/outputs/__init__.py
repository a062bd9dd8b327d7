"""What an analysis produces for people and other programs: files, reports, figures, the case store.

Modules (none imports Streamlit; the pages only call them and draw):

- :mod:`~core.outputs.records`: the plain-dict analysis record shared by reports, the
  store and the pages, and :func:`~core.outputs.records.record_from_result`.
- :mod:`~core.outputs.key_figures`: the one selection and formatting of the key figures
  (:func:`~core.outputs.key_figures.key_figures`) every page and report shows.
- :mod:`~core.outputs.figures`: static pictures by output kind (the cell overlay, dense
  outputs, restored images) and the PDF's charts.
- :mod:`~core.outputs.plots`: interactive plotly figures for the pages.
- :mod:`~core.outputs.pdf`, :mod:`~core.outputs.report_pdf`: the single-analysis PDF report.
- :mod:`~core.outputs.tumour_board`: the comparison of several analyses (tables, charts, PDF).
- :mod:`~core.outputs.exports`: one writer per export file
  (:func:`~core.outputs.exports.build_exports`), writing them to a folder or the store.
- :mod:`~core.outputs.store`, :mod:`~core.outputs.store_schema`: the case store
  (:class:`~core.outputs.store.CaseStore`) and its database schema and migrations.
"""
