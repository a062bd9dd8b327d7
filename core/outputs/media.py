"""Media types of export files, by suffix (read by the exporters, the case store and the download buttons)."""

from __future__ import annotations

from pathlib import Path

#: Media type by file suffix.
MEDIA_TYPES = {
    ".pdf": "application/pdf",
    ".csv": "text/csv",
    ".parquet": "application/vnd.apache.parquet",
    ".json": "application/json",
    ".geojson": "application/geo+json",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".txt": "text/plain",
}


def media_type(name: str) -> str:
    """The media type of an export file from its suffix (``application/octet-stream`` if unknown)."""
    return MEDIA_TYPES.get(Path(str(name)).suffix.lower(), "application/octet-stream")
