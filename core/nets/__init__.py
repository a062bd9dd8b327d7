"""Network definitions of the scenario models (no weights here: see ``weights/``)."""
