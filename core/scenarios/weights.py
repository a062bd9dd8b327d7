"""Weights files: SHA-256 checked, safetensors only, loaded with ``strict=True`` (:func:`load_strict`)."""

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


def load_strict(net, state_dict: dict, weights_name: str) -> None:
    """Load ``state_dict`` into ``net`` with ``strict=True``, a mismatch reported as a WeightsError.

    Parameters
    ----------
    net : torch.nn.Module
        The network built from the weights' metadata.
    state_dict : dict of str to torch.Tensor
    weights_name : str
        The weights file's name, for the message.

    Raises
    ------
    WeightsError
        If the file holds tensors the network does not have, lacks some it needs, or has
        one of another shape: the message names up to three of each and says to restore
        the registered file.
    """
    expected = net.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    extra = sorted(set(state_dict) - set(expected))
    shapes = sorted(k for k in set(expected) & set(state_dict)
                    if tuple(expected[k].shape) != tuple(getattr(state_dict[k], "shape", ())))
    problems = []
    for what, keys in (("missing", missing), ("unexpected", extra), ("of the wrong shape", shapes)):
        if keys:
            more = f" and {len(keys) - 3} more" if len(keys) > 3 else ""
            problems.append(f"{len(keys)} tensor(s) {what} ({', '.join(keys[:3])}{more})")
    if problems:
        raise WeightsError(
            f"weights file {weights_name} does not fit its network: {'; '.join(problems)}; the file is not the "
            "registered version for this scenario: restore it from the repository"
        )
    try:
        net.load_state_dict(state_dict, strict=True)
    except RuntimeError as err:  # e.g. a dtype that cannot be copied
        raise WeightsError(f"weights file {weights_name} could not be loaded into its network ({err}); restore it "
                           "from the repository") from err


def model_from_weights_file(runner, scenario, weights: str | Path, device="cpu", how_to_train: str = ""):
    """A scenario model from a weights file outside the registry (a cross-validation fold, a training run).

    The file's own SHA-256 is taken as the one it must have (it is not a registered file), so
    what is checked is that it is a readable safetensors file whose tensors fit the network
    (``strict=True``, :func:`load_strict`); the scenario entry is copied with the file's name
    and hash, so results and summaries name the weights actually used.

    Parameters
    ----------
    runner : type
        The :class:`core.scenarios.base.ScenarioModel` subclass to build (e.g. ``HoechstModel``).
    scenario : core.scenarios.spec.Scenario
        The entry the weights are used under (the registered one, or a draft before registration).
    weights : path to a ``.safetensors`` file
    device : torch device or its name
    how_to_train : str, optional
        The command that writes such a file, named in the message when it is missing.

    Returns
    -------
    ScenarioModel of class ``runner``, on ``device``, in eval mode

    Raises
    ------
    WeightsError
        If the file is missing, not safetensors, or does not fit the network.
    """
    from dataclasses import replace

    import torch

    path = Path(weights)
    if not path.is_file():
        raise WeightsError(f"weights file {path} is missing" + (f"; train it with {how_to_train}" if how_to_train else ""))
    sha256 = sha256_file(path)
    state, metadata = load_verified_state_dict(path, sha256)
    return runner(replace(scenario, weights=path.name, sha256=sha256), torch.device(device), state, metadata)
