"""Saliency maps of an analysis, computed on demand: HiPe per class over one field of the image.

What the Analyze page's "Saliency (HiPe)" view runs in a worker process (:mod:`core.jobs`),
and what the report shows when it was computed. The method is hierarchical perturbation
(:func:`core.explain.hipe.hierarchical_perturbation`; Cooper et al., Pattern Recognition 2022),
as the Hoechst U-Net paper uses it (§5.1, Fig. 4): the model's answer is the mean softmax
probability of one class over the field, regions of the input are faded (set to 0, no
signal) in a grid refined where the answer dropped, and each pixel's saliency is the summed
drop of the windows that covered it.

A scenario model explains itself when it has a ``saliency_maps(work, classes, progress,
max_evaluations)`` method (e.g. :meth:`core.scenarios.hoechst.HoechstModel.saliency_maps`);
pages ask :func:`supports_saliency`, never a scenario's name.

Cost: each perturbed image is one forward pass of the field, so the field is at most
:data:`FIELD_MAX_SIDE_PX` pixels a side at the model's mpp (for ``hoechst-lymphocytes`` 256 µm,
one training tile) and the number of perturbed images per class is capped
(:data:`EVALUATION_CHOICES`). The field of a larger image is the window holding the most
detected cells (:func:`saliency_field`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from core.errors import InputError
from core.io import ImageData

__all__ = ["FIELD_MAX_SIDE_PX", "EVALUATION_CHOICES", "DEFAULT_EVALUATIONS", "SaliencyField", "SaliencyMaps",
           "supports_saliency", "saliency_field", "compute_saliency"]

#: Longest side of the field explained, in pixels at the model's mpp (HiPe's cost grows with it).
FIELD_MAX_SIDE_PX = 256
#: Perturbed images per class the page offers. 81 is HiPe's whole first level with four initial
#: cells ((2 x 4 + 1)² overlapping windows): fewer would leave part of the field never perturbed.
EVALUATION_CHOICES = (81, 200, 400, 800)
#: The page's default: the first level and the refinement of its most salient windows.
DEFAULT_EVALUATIONS = 200


def supports_saliency(key: str) -> bool:
    """Whether scenario ``key``'s model computes saliency maps (its runner has ``saliency_maps``).

    Raises
    ------
    UnknownScenarioError
    """
    from core.scenarios.registry import get_scenario, runner_class

    return callable(getattr(runner_class(get_scenario(key)), "saliency_maps", None))


@dataclass
class SaliencyField:
    """The part of an analysed image that is explained.

    Attributes
    ----------
    image : ImageData
        The field: the analysed image's channels cropped to ``box_px`` (its mpp, name and hash).
    box_px : (x0, y0, x1, y1) int
        The field in the analysed image's pixels (x1, y1 exclusive).
    whole : bool
        True when the field is the whole image.
    """

    image: ImageData
    box_px: tuple[int, int, int, int]
    whole: bool


@dataclass
class SaliencyMaps:
    """HiPe saliency of each class over one field.

    Attributes
    ----------
    scenario_key : str
    maps : dict of str to ndarray
        Class name → (h, w) float32 >= 0 at the field's pixels: the summed drop of the mean
        probability of that class over the field when the windows covering each pixel were
        faded (probability units; larger: the class's answer depends more on that region).
    labels, colors : dict of str to str
        Display label and hex colour of each class (from the registry).
    field_rgb : (h, w, 3) uint8
        The field as displayed (the image's 8-bit rendering).
    box_px : (x0, y0, x1, y1) int
        The field in the analysed image's pixels (x1, y1 exclusive).
    whole : bool
        The field is the whole image.
    mpp : float or None
        µm per pixel of the analysed image.
    max_evaluations : int
        Most perturbed images per class.
    notes : list of str
    """

    scenario_key: str
    maps: dict[str, np.ndarray]
    labels: dict[str, str]
    colors: dict[str, str]
    field_rgb: np.ndarray
    box_px: tuple[int, int, int, int]
    whole: bool
    mpp: float | None
    max_evaluations: int
    notes: list[str] = field(default_factory=list)

    def field_text(self) -> str:
        """Where the field lies, in words, e.g. "the whole image (64 x 64 px)"."""
        x0, y0, x1, y1 = self.box_px
        size = f"{x1 - x0} x {y1 - y0} px" + (f", {(x1 - x0) * self.mpp:.0f} x {(y1 - y0) * self.mpp:.0f} µm"
                                              if self.mpp else "")
        if self.whole:
            return f"the whole image ({size})"
        return f"x {x0}-{x1 - 1}, y {y0}-{y1 - 1} px of the image ({size}), the field with the most detected cells"

    def method_text(self) -> str:
        """How the maps were made, for the page and the report."""
        return (
            "Hierarchical perturbation (HiPe; Cooper et al., Pattern Recognition 2022), as the Hoechst U-Net paper "
            "uses it (§5.1): for each class, the model's answer is its mean probability over the field; windows of a "
            "grid of 8 x 8 cells, refined where the answer dropped, are faded (set to 0: no signal), and each pixel "
            "shows the summed drop of the windows that covered it. Brighter: the class's answer depends more on that "
            f"region. At most {self.max_evaluations} perturbed images per class; field: {self.field_text()}. "
            "The field is normalised on its own (its own percentiles), so its answer can differ slightly from the "
            "whole image's."
        )

    def pictures(self) -> list[tuple[str, np.ndarray, str]]:
        """One picture per class: (title, (h, w, 3) uint8 RGB, caption), the saliency over the field in the class colour.

        Each map is scaled to its own maximum (said in the caption); a map that is zero
        everywhere (fading no region lowered the answer) is said so.
        """
        from core.outputs.figures import dense_over_image
        from core.results import DenseOutput

        out = []
        for name, values in self.maps.items():
            top = float(values.max()) if values.size else 0.0
            label = self.labels.get(name, name)
            scaled = values / top if top > 0 else np.zeros_like(values)
            picture = dense_over_image(self.field_rgb, DenseOutput(name, "probability", label, scaled.astype(np.float32),
                                                                   color=self.colors.get(name, "#ffd400")), max_alpha=0.75)
            caption = (f"Where fading the image lowered the mean P({label}) over the field most; full colour = the "
                       f"largest summed drop, {top:.3g}." if top > 0 else
                       f"Fading no region lowered the mean P({label}) over the field: nothing in it supports this class.")
            out.append((f"Saliency (HiPe): {label}", picture, caption))
        return out

    def report_section(self):
        """The report's "Saliency (HiPe)" section (:class:`core.outputs.report_pdf.ReportSection`)."""
        from core.outputs.figures import png_bytes
        from core.outputs.report_pdf import ReportImage, ReportSection

        images = tuple(ReportImage(title, png_bytes(picture), caption) for title, picture, caption in self.pictures())
        return ReportSection("Saliency (HiPe)", self.method_text() + (" " + " ".join(self.notes) if self.notes else ""),
                             images)


def saliency_field(image: ImageData, cells, input_mpp: float, max_side_px: int = FIELD_MAX_SIDE_PX) -> SaliencyField:
    """The field of ``image`` to explain: the whole image, or the window with the most detected cells.

    The window is ``max_side_px`` pixels a side at the model's mpp (fewer in the image's own
    pixels when it is coarser); its top-left corner is tried on a grid of a quarter of its side
    (and flush with the right and bottom edges), and the first window holding the most cell
    centroids is taken.

    Parameters
    ----------
    image : ImageData, the analysed image (its channels as the model reads them)
    cells : pandas.DataFrame with ``x_px``, ``y_px`` (the cell table) or None
    input_mpp : float, µm per pixel of the model
    max_side_px : int, longest field side at ``input_mpp``

    Returns
    -------
    SaliencyField
    """
    h, w = image.shape
    side = int(max_side_px * input_mpp / image.mpp) if image.mpp else int(max_side_px)
    side = max(1, side)
    if h <= side and w <= side:
        return SaliencyField(image, (0, 0, w, h), True)
    sh, sw = min(side, h), min(side, w)

    def starts(n: int, s: int) -> list[int]:
        grid = list(range(0, n - s + 1, max(1, s // 4)))
        return grid if grid[-1] == n - s else grid + [n - s]

    xy = np.zeros((0, 2)) if cells is None or len(cells) == 0 else cells[["x_px", "y_px"]].to_numpy(np.float64)
    best, box = -1, (0, 0, sw, sh)
    for y0 in starts(h, sh):
        for x0 in starts(w, sw):
            inside = int(((xy[:, 0] >= x0) & (xy[:, 0] < x0 + sw) & (xy[:, 1] >= y0) & (xy[:, 1] < y0 + sh)).sum())
            if inside > best:
                best, box = inside, (x0, y0, x0 + sw, y0 + sh)
    x0, y0, x1, y1 = box
    crop = ImageData(np.ascontiguousarray(image.data[y0:y1, x0:x1]), image.mpp, image.name, image.sha256,
                     image.mpp_source, [], image.channel_names, image.significant_bits,
                     None if image.transparent is None else image.transparent[y0:y1, x0:x1])
    return SaliencyField(crop, box, False)


def compute_saliency(field_: SaliencyField, key: str, classes: tuple[str, ...] | None = None,
                     max_evaluations: int = DEFAULT_EVALUATIONS, device: str | None = None,
                     progress=None) -> SaliencyMaps:
    """HiPe saliency of each class of scenario ``key`` over a field (what the page runs in a worker).

    Parameters
    ----------
    field_ : SaliencyField (:func:`saliency_field`)
    key : str, a scenario whose model has ``saliency_maps`` (:func:`supports_saliency`)
    classes : class names of the scenario, default all of them
    max_evaluations : int, most perturbed images per class, at least the first level's 81
    device : "cpu", "cuda" or None (automatic)
    progress : callable(done, total), optional; one bar over all classes

    Returns
    -------
    SaliencyMaps, at the field's pixels

    Raises
    ------
    InputError
        The scenario computes no saliency, a class is unknown, ``max_evaluations`` is below
        81, or the field cannot be read by the model.
    UnknownScenarioError, WeightsError
    """
    from core.pipeline import load_model
    from core.scenarios.base import resample_to_mpp, resize_map
    from core.scenarios.registry import get_scenario

    scenario = get_scenario(key)
    if not supports_saliency(key):
        raise InputError(f"the {scenario.title} model computes no saliency maps")
    if int(max_evaluations) < EVALUATION_CHOICES[0]:
        raise InputError(f"at least {EVALUATION_CHOICES[0]} perturbed images per class are needed (HiPe's first level "
                         f"covers the field with {EVALUATION_CHOICES[0]} windows), got {max_evaluations}")
    names = [c.name for c in scenario.classes]
    classes = tuple(classes or names)
    unknown = [c for c in classes if c not in names]
    if unknown:
        raise InputError(f"unknown class(es) {', '.join(map(repr, unknown))}; the {scenario.key} classes are "
                         f"{', '.join(names)}")
    model = load_model(key, device)
    image = field_.image
    work = resample_to_mpp(model.input_pixels(image), image.mpp, scenario.input_mpp)
    raw = model.saliency_maps(work, classes, progress, int(max_evaluations))
    h, w = image.shape
    maps = {name: np.clip(resize_map(raw[name], (h, w)), 0.0, None).astype(np.float32) for name in classes}
    return SaliencyMaps(key, maps, dict(scenario.class_labels), dict(scenario.class_colors), image.rgb.copy(),
                        field_.box_px, field_.whole, image.mpp, int(max_evaluations))


def report_with_saliency(result, saliency: SaliencyMaps, record: dict | None = None,
                         case_label: str | None = None) -> bytes:
    """report.pdf of an analysis with its "Saliency (HiPe)" section (the Analyze page's download once computed).

    Parameters
    ----------
    result : core.results.AnalysisResult
    saliency : SaliencyMaps of that analysis
    record : dict, optional
        The saved analysis's record (:meth:`core.outputs.store.CaseStore.get_record`), so the
        report carries its analysis number; built from ``result`` when absent.
    case_label : str, optional

    Returns
    -------
    bytes, the PDF: the analysis's report with the saliency section after its pictures
    """
    from core.outputs.exports import build_exports

    return build_exports(result, record=record, case_label=case_label,
                         sections=[saliency.report_section()])["report.pdf"]
