"""The one model interface every scenario implements, and the skeleton they share.

Modelled on tiatoolbox's ``ModelABC``: a scenario implements only

- :meth:`ScenarioModel.preprocess`: one window of the image at the model's mpp → the
  network's input (normalisation, padding);
- :meth:`ScenarioModel.infer_batch`: the network on a batch, run under
  ``torch.inference_mode()`` (and bfloat16 autocast where validated);
- :meth:`ScenarioModel.postprocess` (dense tiling) or :meth:`ScenarioModel.postprocess_window`
  (cell tiling): network outputs → cells, dense maps, a restored image.

The base class does the rest, the same way for every scenario: select the declared
input channels, resample to the scenario's mpp, refuse an image too small for the model,
note an unknown mpp, cut the image with the tiler the registry names
(:mod:`core.tiling`), report ``progress(done, total)``, and map the results back to the
input image's pixels with one convention (:func:`to_image_xy`). A page or command that can
run one scenario runs all of them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from core.cells import make_cell_table
from core.errors import InputError, WeightsError
from core.io import ImageData
from core.scenarios.spec import Scenario
from core.scenarios.weights import load_strict, load_verified_state_dict
from core.tiling import Progress, detect_in_blocks, tile_dense

def pick_device(requested: str | None = None) -> torch.device:
    """Return the torch device to run on: CUDA when available, else CPU.

    Parameters
    ----------
    requested : {"cuda", "cpu", None}
        ``None`` chooses CUDA when ``torch.cuda.is_available()``.

    Raises
    ------
    core.errors.InputError
        If CUDA is requested but not available.
    """
    if requested in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise InputError("device 'cuda' requested but no CUDA GPU is available; use --device cpu")
    if requested not in ("cuda", "cpu"):
        raise InputError(f"unknown device {requested!r}; use 'cpu', 'cuda' or 'auto'")
    return torch.device(requested)


#: Inference precisions. ``float32`` is the default and what every model card's figures are
#: for; ``bfloat16`` (autocast: convolutions in bfloat16, weights float32) is an opt-in for the
#: scenarios whose card also reports their validation figures at it.
PRECISIONS = ("float32", "bfloat16")


def bfloat16_supported(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 convolutions natively (CPU: AVX512-BF16 or AMX)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    check = getattr(getattr(torch.ops, "mkldnn", None), "_is_mkldnn_bf16_supported", None)
    return bool(check and check())


def check_precision(precision: str, device: torch.device, supported: tuple[str, ...], scenario_key: str) -> str:
    """Validate an inference precision for a scenario on a device.

    Returns
    -------
    str, one of :data:`PRECISIONS`

    Raises
    ------
    core.errors.InputError
        If the precision is unknown, not validated for this scenario, or (bfloat16) not
        supported natively by the device, where it would be slower than float32.
    """
    if precision not in PRECISIONS:
        raise InputError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    if precision not in supported:
        raise InputError(f"scenario {scenario_key!r} is validated at {', '.join(supported)} only; use --precision float32")
    if precision == "bfloat16" and not bfloat16_supported(device):
        raise InputError(f"this {device.type.upper()} has no native bfloat16 (needs AVX512-BF16 or AMX on CPU); "
                         "use --precision float32")
    return precision


@dataclass
class Prediction:
    """What a scenario's post-processing returns, in the pixels of the image it was given.

    Attributes
    ----------
    xy : (N, 2) float64
        Cell centroids x, y in pixels (pixel centres at integer coordinates).
    class_index : (N,) int64
        Index into the scenario's ``classes``.
    probability : (N,) float64 in [0, 1]
        Confidence of each cell's class.
    columns : dict of str to (N,) ndarray
        Extra per-cell columns for the cell table (e.g. ``detection_probability``).
    dense : dict of str to ndarray
        Dense outputs named as the registry declares them: (H, W) or (H, W, K) float32.
    restored : dict of str to ndarray
        Restored images named as declared: (H, W, 3) float32 in [0, 1].
    notes : list of str
        Messages for the user.
    """

    xy: np.ndarray
    class_index: np.ndarray
    probability: np.ndarray
    columns: dict[str, np.ndarray] = field(default_factory=dict)
    dense: dict[str, np.ndarray] = field(default_factory=dict)
    restored: dict[str, np.ndarray] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@dataclass
class ScenarioOutput:
    """A scenario's results in the pixels of the input image (what :meth:`ScenarioModel.analyze` returns).

    Attributes
    ----------
    cells : pandas.DataFrame
        Cell table (:data:`core.cells.CELL_COLUMNS` + the scenario's extra columns).
    dense : dict of str to ndarray
        (H, W) or (H, W, K) float32 at the image's size, named as declared.
    restored : dict of str to ndarray
        (H, W, 3) uint8 RGB at the image's size, named as declared.
    notes : list of str
    """

    cells: pd.DataFrame
    dense: dict[str, np.ndarray]
    restored: dict[str, np.ndarray]
    notes: list[str]


class ScenarioModel(ABC):
    """A scenario's network with its pre- and post-processing (tiatoolbox ``ModelABC`` shape).

    Subclasses build ``self.net`` in :meth:`build` and implement :meth:`preprocess`, and
    :meth:`postprocess` (registry tiling ``"dense"``) or :meth:`postprocess_window`
    (tiling ``"cells"``); :meth:`infer_batch` runs ``self.net`` unless overridden. A
    subclass that runs its network under :meth:`autocast` lists ``bfloat16`` in
    ``supported_precisions``.

    Attributes
    ----------
    tile_px, overlap_px : int
        The registry's tile and overlap (µm) in pixels at the input mpp; tests may shrink them.
    output_stride_px, field_px : int
        Geometry of a dense network: a window of ``field_px + output_stride_px * (n - 1)``
        input pixels gives ``n`` outputs (1, 1 for a same-size network).
    channels_last : bool
        Feed the network NHWC tensors (faster on CPU for some networks).
    balanced_windows : bool
        Dense linear tiling with the fewest, evenly spread windows (:func:`core.tiling.balanced_windows`).
    window_multiple_px : int
        With ``balanced_windows``: window sides are multiples of this (the network's size multiple).
    """

    #: Precisions this scenario's card has validation figures for.
    supported_precisions: tuple[str, ...] = ("float32",)
    output_stride_px: int = 1
    field_px: int = 1
    channels_last: bool = False
    balanced_windows: bool = False
    window_multiple_px: int = 1

    def __init__(self, scenario: Scenario, device: torch.device, state_dict: dict, metadata: dict,
                 precision: str = "float32"):
        self.scenario = scenario
        self.device = device
        self.precision = check_precision(precision, device, self.supported_precisions, scenario.key)
        self.metadata = metadata
        self.tile_px = scenario.tiling.tile_px(scenario.input_mpp)
        self.overlap_px = scenario.tiling.overlap_px(scenario.input_mpp)
        try:
            self.net = self.build(metadata)
        except (KeyError, ValueError, TypeError) as err:  # metadata of another network, or edited
            raise WeightsError(f"weights file {scenario.weights}: its metadata does not describe the {scenario.key} "
                               f"network ({err}); restore the registered file from the repository") from err
        load_strict(self.net, state_dict, scenario.weights)
        self.net.to(device).eval()

    @classmethod
    def from_registry(cls, scenario: Scenario, device: torch.device, precision: str = "float32") -> "ScenarioModel":
        """Load the scenario's registered weights (SHA-256 checked, ``strict=True``).

        Raises
        ------
        WeightsError, InputError (precision, see :func:`check_precision`)
        """
        return cls.from_file(scenario, scenario.weights_path, scenario.sha256, device, precision)

    @classmethod
    def from_file(cls, scenario: Scenario, path, sha256: str, device: torch.device,
                  precision: str = "float32") -> "ScenarioModel":
        """Load the weights at ``path`` for ``scenario`` after checking they hash to ``sha256`` (``strict=True``).

        Raises
        ------
        WeightsError, InputError (precision, see :func:`check_precision`)
        """
        state, metadata = load_verified_state_dict(path, sha256)
        return cls(scenario, device, state, metadata, precision)

    def autocast(self):
        """Context for the network's forward pass: bfloat16 autocast when ``precision`` says so."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bfloat16")

    @property
    def operating_point(self) -> dict | None:
        """Post-processing settings calibrated with the weights (e.g. cd3-ihc's ``threshold`` and
        ``nms_radius_um``), recorded in ``summary.json``; None for a scenario that has none."""
        return None

    # ------------------------------------------------------------------ what a scenario implements

    @abstractmethod
    def build(self, metadata: dict) -> torch.nn.Module:
        """Return the untrained network described by the weights' metadata."""

    @abstractmethod
    def preprocess(self, window: np.ndarray) -> np.ndarray:
        """One window at the input mpp → the network's input.

        Parameters
        ----------
        window : (h, w, C) array of what :meth:`prepare` returned (default: the declared
            input channels in the declared dtype)

        Returns
        -------
        (h', w', C') float32, channels last
        """

    def infer_batch(self, batch: torch.Tensor):
        """The network on a batch ``(N, C', h', w')`` on the model's device.

        Called under ``torch.inference_mode()`` and :meth:`autocast`. Returns an
        ``(N, K, h'', w'')`` tensor (dense maps, cropped by the tiler to the window's output size).
        """
        return self.net(batch)

    def postprocess(self, maps: np.ndarray, work: np.ndarray) -> Prediction:
        """Dense tiling: the stitched network output → a :class:`Prediction` in ``work``'s pixels.

        Parameters
        ----------
        maps : (H', W', K) float32, the output grid (H' = H for a same-size network)
        work : (H, W, C) the image at the input mpp (as given to :meth:`prepare`)
        """
        raise NotImplementedError(f"{type(self).__name__} declares dense tiling but no postprocess")

    def postprocess_window(self, maps: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray | None]:
        """Cell tiling: one block's network output → its cells.

        Parameters
        ----------
        maps : (h, w, K) float32, the network output over the block with its context

        Returns
        -------
        xy : (N, 2) float64 centroids in the block's pixels
        columns : dict of str to (N,) arrays, per-cell values (must include ``class_index``
            and ``probability``)
        dense : (h, w[, K']) float32 map to stitch into the image-wide dense output, or None
        """
        raise NotImplementedError(f"{type(self).__name__} declares cell tiling but no postprocess_window")

    def finish_cells(self, xy: np.ndarray, columns: dict[str, np.ndarray], dense: np.ndarray | None,
                     work: np.ndarray) -> Prediction:
        """Cell tiling: the cells of every block → a :class:`Prediction` (default: as they are)."""
        extra = {k: v for k, v in columns.items() if k not in ("class_index", "probability")}
        return Prediction(xy, columns["class_index"], columns["probability"], extra)

    def prepare(self, work: np.ndarray) -> np.ndarray:
        """Image-wide step before tiling (default: none); e.g. padding a valid-convolution network's border."""
        return work

    # ------------------------------------------------------------------ the shared skeleton

    def input_pixels(self, image: ImageData) -> np.ndarray:
        """The declared input channels of ``image``, (H, W, C) in the declared dtype.

        Raises
        ------
        InputError
            If the image lacks the channels the scenario reads (e.g. a 5-channel fluorescence
            stack for an RGB scenario, or a greyscale image for one that reads colours).
        """
        spec = self.scenario.input
        check_input(image, self.scenario)
        if spec.is_rgb:
            return image.rgb
        return np.ascontiguousarray(image.data[..., input_channel_indices(image, self.scenario)])

    def predict(self, work: np.ndarray, progress: Progress | None = None) -> Prediction:
        """Run the scenario on an image at its input mpp with the registry's tiler.

        Parameters
        ----------
        work : (H, W, C) the declared input channels at ``scenario.input_mpp``
        progress : callable(done, total), optional, called after each window

        Returns
        -------
        Prediction in the pixels of ``work``
        """
        x = self.prepare(work)
        tiling = self.scenario.tiling
        if tiling.kind == "dense":
            maps = tile_dense(self.infer_window, x, self.tile_px, self.overlap_px, blend=tiling.blend,
                              stride_px=self.output_stride_px, field_px=self.field_px,
                              balance=self.balanced_windows, multiple_px=self.window_multiple_px, progress=progress)
            return self.postprocess(maps, work)
        xy, columns, dense = detect_in_blocks(lambda w: self.postprocess_window(self.infer_window(w)), x,
                                              self.tile_px, self.overlap_px, progress=progress)
        return self.finish_cells(xy, columns, dense, work)

    def infer_window(self, window: np.ndarray) -> np.ndarray:
        """:meth:`preprocess`, :meth:`infer_batch` on a batch of one, outputs cropped to the window's grid.

        Returns
        -------
        (n_h, n_w, K) float32, n = (window side - field_px) // output_stride_px + 1
        """
        h, w = window.shape[:2]
        nh = (h - self.field_px) // self.output_stride_px + 1
        nw = (w - self.field_px) // self.output_stride_px + 1
        x = torch.from_numpy(np.ascontiguousarray(self.preprocess(window))).to(self.device).permute(2, 0, 1)[None]
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), self.autocast():
            out = self.infer_batch(x)
        return np.ascontiguousarray(out[0, :, :nh, :nw].float().cpu().permute(1, 2, 0).numpy())

    def min_side_px(self) -> int:
        """Smallest image side the model analyses, in pixels at its input mpp."""
        return int(round(self.scenario.min_side_um / self.scenario.input_mpp))

    def analyze(self, image: ImageData, progress: Progress | None = None) -> ScenarioOutput:
        """Run the scenario on one image.

        Parameters
        ----------
        image : ImageData, with the channels the scenario declares; mpp None allowed
            (analysed as if at the model's mpp, positions in pixels only)
        progress : callable(done, total), optional

        Returns
        -------
        ScenarioOutput in the pixels of ``image``

        Raises
        ------
        InputError
            If the image lacks the declared channels or is too small for the model.
        """
        notes = []
        work = resample_to_mpp(self.input_pixels(image), image.mpp, self.scenario.input_mpp)
        need = self.min_side_px()
        if min(work.shape[:2]) < need:
            h, w = image.shape
            raise InputError(
                f"image is {w} x {h} px, {work.shape[1]} x {work.shape[0]} px at {self.scenario.input_mpp} µm/px: "
                f"the {self.scenario.key} model needs at least {need} px ({self.scenario.min_side_um:g} µm) on each side"
            )
        if image.mpp is None:
            notes.append(
                f"mpp unknown: the image was analysed at its own pixel size, assumed to be the model's "
                f"{self.scenario.input_mpp} µm/px; positions are in pixels and densities are not reported"
            )
        pred = self.predict(work, progress)
        h, w = image.shape
        xy = to_image_xy(pred.xy, work.shape[:2], (h, w))
        classes = self.scenario.classes
        names = np.array([c.name for c in classes], dtype=object)
        roles = np.array([c.role for c in classes], dtype=object)
        idx = np.asarray(pred.class_index, np.int64)
        cells = make_cell_table(xy, names[idx], roles[idx], np.asarray(pred.probability, np.float64), image.mpp)
        for name, values in pred.columns.items():
            cells[name] = values
        dense = {k: resize_map(v, (h, w)) for k, v in pred.dense.items()}
        restored = {k: np.clip(resize_map(v, (h, w)) * 255.0 + 0.5, 0, 255).astype(np.uint8)
                    for k, v in pred.restored.items()}
        return ScenarioOutput(cells, dense, restored, notes + pred.notes)


def check_input(image: ImageData, scenario: Scenario) -> None:
    """Refuse an image the scenario cannot read: no colour for a colour scenario, or missing named channels.

    Raises
    ------
    InputError
        The image is smaller than the scenario's ``min_side_um``, or larger than
        :data:`core.io.MAX_PIXELS` once resampled to the scenario's mpp
        (:func:`check_resampled_size`); see :func:`check_colour`; or, for a scenario that
        reads named channels, when the image lacks one of them.
    """
    h, w = image.shape
    side_um = min(h, w) * (image.mpp or scenario.input_mpp)
    if side_um < scenario.min_side_um - 1e-9:
        need = int(round(scenario.min_side_um / scenario.input_mpp))
        raise InputError(
            f"{image.name}: image is {w} x {h} px ({side_um:.3g} µm on its short side): the {scenario.key} model needs "
            f"at least {need} px ({scenario.min_side_um:g} µm) on each side at {scenario.input_mpp} µm/px; "
            "upload a larger field"
        )
    check_resampled_size((h, w), image.mpp, scenario.input_mpp, image.name)
    spec = scenario.input
    if spec.is_rgb:
        check_colour(image, scenario)
        return
    if input_channel_indices(image, scenario) is None and image.is_rgb:  # e.g. an H&E or IHC scan
        raise InputError(
            f"{image.name}: the {scenario.key} model reads the {', '.join(spec.channels)} channel(s) of a "
            f"{scenario.modality} image ({scenario.stain}); this is a colour (RGB) image: upload the channel(s) as a "
            "greyscale or multi-channel TIFF / OME-TIFF, or choose a scenario for this stain (a nuclear stain saved as "
            "colour: pick its plane with --channel blue on the command line)"
        )
    if input_channel_indices(image, scenario) is None:
        listed = ", ".join(f"{i}: {n}" for i, n in enumerate(image.channel_names))
        if len(spec.channels) == 1:
            raise InputError(
                f"{image.name}: the {scenario.key} model reads one {spec.channels[0]} channel; the image has "
                f"{image.n_channels} channels ({listed}): pick the {spec.channels[0]} channel with --channel NAME or "
                "INDEX (from 0) on the command line, or the channel picker in the app"
            )
        raise InputError(
            f"{image.name}: the {scenario.key} model reads the channels {', '.join(spec.channels)}; "
            f"the image has {', '.join(image.channel_names)}: export the image with those channels"
        )


def input_channel_indices(image: ImageData, scenario: Scenario) -> list[int] | None:
    """Indices of the channels a named-channel scenario reads in ``image``, or None if it lacks one.

    A channel is found by its name (``scenario.input.channels``); a scenario that reads one
    channel also takes the only plane of a one-channel image whatever its name (a greyscale
    Hoechst or DAPI export is called "grey"). RGB scenarios: None (they read ``image.rgb``).

    Returns
    -------
    list of int (one per declared channel, in declared order) or None
    """
    spec = scenario.input
    if spec.is_rgb:
        return None
    if all(c in image.channel_names for c in spec.channels):
        return [image.channel_names.index(c) for c in spec.channels]
    if len(spec.channels) == 1 and image.n_channels == 1:
        return [0]
    return None


def pick_input_channel(image: ImageData, scenario: Scenario, spec: str | int) -> ImageData:
    """The one channel a single-channel scenario reads, picked from a multi-channel image and renamed to its input name.

    What the CLI's ``--channel NAME|INDEX`` and the Analyze page's channel picker do.

    Parameters
    ----------
    image : ImageData, e.g. a 16-bit multiplex fluorescence OME-TIFF
    scenario : Scenario reading one named channel (e.g. ``("Hoechst",)``)
    spec : str or int, the file's channel name (case ignored) or its index from 0
        (:func:`core.io.resolve_channel`)

    Returns
    -------
    ImageData, (H, W, 1) of the image's dtype, mpp and hash, its channel named as the scenario
    reads it; a note says which channel was picked

    Raises
    ------
    InputError
        If the scenario does not read exactly one named channel, or the image has no such
        channel (the message lists the channels with their indices).
    """
    from core.io import pick_channel

    channels = scenario.input.channels
    if scenario.input.is_rgb or len(channels) != 1:
        raise InputError(f"--channel picks the one channel a single-channel scenario reads; {scenario.key} reads "
                         f"{', '.join(channels)}: leave --channel out")
    return pick_channel(image, spec, channels[0])


def channel_choices(scenario: Scenario, channel_names: tuple[str, ...]) -> tuple[tuple[str, ...], int] | None:
    """What the channel picker offers for a file: its channels and the one chosen by default, or None.

    A pick is offered when the scenario reads one named channel and the file has several
    channels that are not a colour (RGB) image; an RGB image is refused by :func:`check_input`
    instead. The default is the channel named as the scenario reads it (case ignored), else,
    for a scenario reading a nuclear stain, the first channel named like one
    (:func:`core.io.nuclear_channel`: Hoechst, H3342, DAPI...), else the first.

    Parameters
    ----------
    scenario : Scenario
    channel_names : tuple of str, the file's channels (:attr:`core.pipeline.PreparedImage.channel_names`)

    Returns
    -------
    (names, default index) or None when nothing is to be picked
    """
    from core.io import RGB_CHANNELS, nuclear_channel

    spec = scenario.input
    names = tuple(channel_names)
    if spec.is_rgb or len(spec.channels) != 1 or len(names) < 2 or names == RGB_CHANNELS:
        return None
    wanted = spec.channels[0].casefold()
    same = [i for i, n in enumerate(names) if n.casefold() == wanted]
    if same:
        return names, same[0]
    nuclear = nuclear_channel(names) if nuclear_channel((spec.channels[0],)) == 0 else None
    return names, nuclear if nuclear is not None else 0


def check_colour(image: ImageData, scenario: Scenario) -> None:
    """Refuse an image without colour for a scenario whose model reads colours.

    A greyscale file (one channel), or a colour file whose red, green and blue are equal
    at every pixel, cannot show an H&E or DAB + hematoxylin model its stains; it would
    return a plausible-looking but meaningless result.

    Parameters
    ----------
    image : ImageData
    scenario : Scenario, checked when ``scenario.input.reads_colour``

    Raises
    ------
    InputError
        If the image is grey, or has channels other than red, green and blue.
    """
    if not scenario.input.reads_colour:
        return
    grey = image.n_channels == 1
    if image.is_rgb:
        px = image.data
        grey = np.array_equal(px[..., 0], px[..., 1]) and np.array_equal(px[..., 1], px[..., 2])
    if grey:
        raise InputError(
            f"{image.name}: the image has no colour (red, green and blue are equal at every pixel: a greyscale "
            f"image or a blank field), but the {scenario.key} model reads the colours of {scenario.stain}; "
            "upload the colour (RGB) image as scanned"
        )
    if not image.is_rgb:
        raise InputError(
            f"{image.name}: the {scenario.key} model reads a colour (RGB) image of {scenario.stain}; this image has "
            f"{image.n_channels} channels ({', '.join(image.channel_names)}): upload the RGB image or an RGB "
            "rendering, or choose a scenario for these channels"
        )


def to_image_xy(xy: np.ndarray, work_hw: tuple[int, int], image_hw: tuple[int, int]) -> np.ndarray:
    """Map points from the resampled image back to the input image's pixels.

    The one convention of TILscope: integer coordinates are pixel centres, so a point at
    ``x`` in an image resampled by ``s`` (new pixels per old pixel) came from
    ``(x + 0.5) / s - 0.5``, clipped to the image. Identity when the sizes agree.

    Parameters
    ----------
    xy : (N, 2) float x, y in pixels of the resampled image (H', W')
    work_hw, image_hw : (H', W') and (H, W)

    Returns
    -------
    (N, 2) float64 x, y in pixels of the input image, in [0, W - 1] x [0, H - 1]
    """
    xy = np.asarray(xy, np.float64).reshape(-1, 2)
    (wh, ww), (h, w) = work_hw, image_hw
    if (wh, ww) != (h, w):
        xy = (xy + 0.5) / np.array([ww / w, wh / h]) - 0.5
    return np.clip(xy, 0, [w - 1, h - 1]) if len(xy) else xy


def resize_map(values: np.ndarray, image_hw: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of an (H', W') or (H', W', K) float map to (H, W[, K]) float32 (pixel-centre aligned)."""
    values = np.asarray(values, np.float32)
    if values.shape[:2] == tuple(image_hw):
        return values
    t = torch.from_numpy(np.ascontiguousarray(values if values.ndim == 3 else values[..., None])).permute(2, 0, 1)[None]
    out = torch.nn.functional.interpolate(t, size=tuple(image_hw), mode="bilinear", align_corners=False)[0]
    out = out.permute(1, 2, 0).numpy()
    return np.ascontiguousarray(out if values.ndim == 3 else out[..., 0])


def resampled_shape(hw: tuple[int, int], mpp: float | None, target_mpp: float) -> tuple[int, int]:
    """(H', W') of an (H, W) image at ``mpp`` resampled to ``target_mpp`` by :func:`resample_to_mpp`.

    The size is that of scikit-image ``rescale``: each side times ``mpp / target_mpp``,
    rounded, at least 1; unchanged with ``mpp`` None or within 2 % of the target.
    """
    h, w = int(hw[0]), int(hw[1])
    if mpp is None:
        return h, w
    scale = float(mpp) / float(target_mpp)
    if abs(scale - 1.0) < 0.02:
        return h, w
    return max(int(round(scale * h)), 1), max(int(round(scale * w)), 1)


def check_resampled_size(hw: tuple[int, int], mpp: float | None, target_mpp: float, name: str = "image",
                         max_pixels: int | None = None) -> tuple[int, int]:
    """Refuse an image whose resampling to ``target_mpp`` would exceed :data:`core.io.MAX_PIXELS`.

    Parameters
    ----------
    hw : (H, W) in pixels at ``mpp``
    mpp, target_mpp : float, µm/px (``mpp`` None: no resampling)
    name : str, for the message
    max_pixels : int, optional
        Default :data:`core.io.MAX_PIXELS`, the limit of the image read.

    Returns
    -------
    (H', W') the resampled size

    Raises
    ------
    InputError
        If H' x W' exceeds the limit (e.g. a wrong, too large mpp makes the image grow).
    """
    from core import io as _io

    limit = _io.MAX_PIXELS if max_pixels is None else int(max_pixels)
    out_h, out_w = resampled_shape(hw, mpp, target_mpp)
    if out_h * out_w > limit:
        h, w = hw
        raise InputError(
            f"{name}: {w} x {h} px at {mpp:g} µm/px becomes {out_w} x {out_h} px ({out_w * out_h / 1e6:.0f} megapixels) "
            f"at the model's {target_mpp:g} µm/px, more than the {limit / 1e6:.0f} megapixels accepted: check the "
            "microns per pixel (about 0.25 at 40x, 0.5 at 20x), or crop a region of interest"
        )
    return out_h, out_w


#: Input bytes (float32) of one band of :func:`resample_to_mpp`; bounds its temporaries.
_RESAMPLE_BAND_BYTES = 16 << 20


def _linear_taps(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Indices and weights of linear interpolation with pixel centres aligned (``ndimage.zoom``, ``grid_mode``).

    Output pixel ``k`` samples the input at ``(k + 0.5) * n_in / n_out - 0.5``, indices
    mirrored at the edges (scipy's ``"mirror"`` mode, as scikit-image's ``"reflect"``).
    Returns ``(i0, i1, w0, w1)``: (n_out,) int64 indices and float32 weights.
    """
    c = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
    i0 = np.floor(c).astype(np.int64)
    f = (c - i0).astype(np.float32)
    i1 = i0 + 1
    if n_in == 1:
        zero = np.zeros(n_out, np.int64)
        return zero, zero, 1.0 - f, f
    period = 2 * (n_in - 1)

    def mirror(i):
        i = np.abs(i) % period
        return np.where(i >= n_in, period - i, i)

    return mirror(i0), mirror(i1), (1.0 - f).astype(np.float32), f


def resample_to_mpp(pixels: np.ndarray, mpp: float | None, target_mpp: float) -> np.ndarray:
    """Resample an (H, W, C) image from ``mpp`` to ``target_mpp``, keeping its dtype.

    With ``mpp`` None, or within 2 % of the target, the image is returned as is.
    Linear interpolation, anti-aliased by a Gaussian of sigma ``(1 / scale - 1) / 2``
    pixels when downsampling: the method of scikit-image ``rescale(order=1,
    anti_aliasing=True, mode="reflect")``, computed in float32 over bands of rows (each
    band's Gaussian sees its full support), so the temporaries stay near
    ``_RESAMPLE_BAND_BYTES`` whatever the image size; integer data are rounded and
    clipped to their dtype's range.

    Parameters
    ----------
    pixels : (H, W, C) uint8, uint16 or float32
    mpp, target_mpp : float or None, µm/px

    Returns
    -------
    (H', W', C) array of ``pixels``' dtype, H' = round(H x mpp / target_mpp) (at least 1)

    Raises
    ------
    InputError
        If H' x W' exceeds :data:`core.io.MAX_PIXELS` (:func:`check_resampled_size`),
        checked before anything is allocated.
    """
    from scipy import ndimage

    if mpp is None:
        return pixels
    h, w, c = pixels.shape
    out_h, out_w = check_resampled_size((h, w), mpp, target_mpp)
    if (out_h, out_w) == (h, w):
        return pixels
    scale = mpp / target_mpp
    ri0, ri1, rw0, rw1 = _linear_taps(out_h, h)
    ci0, ci1, cw0, cw1 = _linear_taps(out_w, w)
    sigma = (max(0.0, (h / out_h - 1) / 2), max(0.0, (w / out_w - 1) / 2)) if scale < 1 else (0.0, 0.0)
    radius = int(4.0 * sigma[0] + 0.5) if sigma[0] > 0 else 0  # scipy's truncate=4
    out = np.empty((out_h, out_w, c), pixels.dtype)
    integer = np.issubdtype(pixels.dtype, np.integer)
    top = np.iinfo(pixels.dtype).max if integer else None
    rows_in = max(1, _RESAMPLE_BAND_BYTES // max(1, w * c * 4))
    rows_out = max(1, min(out_h, int(rows_in * out_h / h), _RESAMPLE_BAND_BYTES // max(1, out_w * c * 4)))
    for r0 in range(0, out_h, rows_out):
        r1 = min(out_h, r0 + rows_out)
        need_lo = int(min(ri0[r0:r1].min(), ri1[r0:r1].min()))
        need_hi = int(max(ri0[r0:r1].max(), ri1[r0:r1].max())) + 1
        a, b = max(0, need_lo - radius), min(h, need_hi + radius)
        band = pixels[a:b].astype(np.float32)
        if sigma[0] > 0 or sigma[1] > 0:
            band = ndimage.gaussian_filter(band, (sigma[0], sigma[1], 0.0), mode="mirror", output=np.float32)
        rows = band[ri0[r0:r1] - a]
        rows *= rw0[r0:r1, None, None]
        other = band[ri1[r0:r1] - a]
        other *= rw1[r0:r1, None, None]
        rows += other
        del band, other
        block = rows[:, ci0]
        block *= cw0[None, :, None]
        other = rows[:, ci1]
        other *= cw1[None, :, None]
        block += other
        del rows, other
        if integer:
            block += 0.5
            np.clip(block, 0, top, out=block)
        out[r0:r1] = block
    return out
