"""Weights files: SHA-256 checked, safetensors only, loaded with ``strict=True`` by the caller."""

from __future__ import annotations

import hashlib
from pathlib import Path

from core.errors import WeightsError


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_verified_state_dict(path: str | Path, expected_sha256: str) -> tuple[dict, dict]:
    """Load a safetensors state dict after checking its SHA-256.

    Parameters
    ----------
    path : path to a ``.safetensors`` file
    expected_sha256 : hex digest it must have

    Returns
    -------
    state_dict : dict of str to torch.Tensor (float tensors as float32)
    metadata : dict of str to str (the file's safetensors metadata)

    Raises
    ------
    WeightsError
        If the file is missing, its SHA-256 differs, or it is not a safetensors file.
    """
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file {path} is missing; reinstall TILscope or retrain the model")
    actual = sha256_file(path)
    if actual != expected_sha256:
        raise WeightsError(
            f"weights file {path.name} has SHA-256 {actual[:12]}…, expected {expected_sha256[:12]}…: "
            "the file is corrupt or not the registered version; restore it from the repository"
        )
    try:
        state = load_file(str(path), device="cpu")
        with safe_open(str(path), framework="pt") as fh:
            metadata = dict(fh.metadata() or {})
    except Exception as err:  # safetensors raises its own error types
        raise WeightsError(f"weights file {path.name} could not be read ({err})") from err
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in state.items()}
    return state, metadata
