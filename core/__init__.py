"""TILscope core: image I/O, scenario models, detection, statistics and reports.

Nothing in this package imports Streamlit, so the same code runs from the app,
the command line (``python -m core``), tests, batch jobs and notebooks.
"""

__version__ = "0.1.0"
