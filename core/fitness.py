"""Fitness checks: is this image one the chosen scenario model was validated for?

Before a number is shown, the image is checked against what its scenario declares
(:class:`core.scenarios.spec.Use`): the stain family read from the pixels, the magnification
(mpp) range, tissue present. A mismatch stops the run with a plain message; a user who
overrides it gets a result marked "outside the validated use" on screen, in the case store
and on every export (``summary["outside_validated_use"]``).

- **Stain family** (:func:`read_stain`), on tissue pixels of a colour image:
  *fluorescence* when most of the field is dark (signal on a black background: at least
  half of the pixels below 50 of 255 and a median below 60); otherwise brightfield, split by
  the optical densities unmixed onto the hematoxylin, eosin and DAB vectors of Ruifrok &
  Johnston (Anal Quant Cytol Histol 2001; :data:`skimage.color.hed_from_rgb`, not clipped):
  the eosin share ``E / (E + DAB)`` of the positive concentrations is below 0.01 for
  DAB-hematoxylin IHC and above 0.05 for H&E. Measured on the project's data: every one of
  296 CD3-IHC patches, both Ki67 IHC tiles and scikit-image's IHC image have a share <= 0.003;
  the H&E images of four sources (CRC 80, BRCA-M2C 90, CoNSeP 108 tiles, necrosis 20) have
  0.019-0.96 (5th percentile 0.25). Between 0.01 and 0.05 the stain is "uncertain" and the
  run goes on with a warning. This cannot tell which antibody was used (CD3 from Ki67): a
  scenario that counts one antigen asks the user to confirm it (:attr:`Use.antigen`). A
  multistain model declares several families (:attr:`Use.stains`, e.g. CD-UNET: H&E and
  DAB-hematoxylin IHC); the image must show one of them (:func:`stain_check`).
- **Tissue** (:func:`tissue_mask`): brightfield pixels whose colour saturation exceeds 0.05
  (glass is grey, whatever its brightness) or whose summed optical density exceeds 0.9 (dark
  material), fluorescence pixels above an Otsu threshold of the brightest
  channel, grown by 10 µm; on a copy reduced to about 2 µm/px, closed, small holes and specks
  removed (scikit-image); pixels the file marks transparent (alpha 0) are never tissue, nor
  read for the stain. A simple glass threshold for fields; whole-slide tissue detection
  replaces it on slides. The tissue area is the denominator of every density.
- **Focus** (:func:`focus_score`): variance of the Laplacian of the grey optical density at
  the model's mpp, on tissue; a warning (never a stop) below the scenario's ``min_focus``.
  Measured on the project's data at the model's mpp: sharp images 0.0069-0.047 (CD3 patches
  from 0.0185, H&E of three sources from 0.0069), the same images blurred with a Gaussian of
  sigma 2 px at most 0.0015; the warning threshold is 0.003.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from core.errors import InputError
from core.io import ImageData

__all__ = ["StainReading", "TissueMask", "FitnessReport", "read_stain", "tissue_mask", "focus_score", "assess",
           "stain_check", "stains_label", "merge_reports", "OutsideValidatedUse", "STAIN_LABELS"]

#: Plain names of the stain families a scenario can declare.
STAIN_LABELS = {"he": "H&E", "dab-hematoxylin": "DAB with a hematoxylin counterstain (IHC)",
                "fluorescence": "fluorescence"}
#: Eosin share below which a brightfield image is read as DAB-hematoxylin, above which as H&E.
EOSIN_SHARE_IHC_MAX = 0.01
EOSIN_SHARE_HE_MIN = 0.05
#: Summed optical density above which a brightfield pixel counts for the stain reading.
STAIN_OD_MIN = 0.3
#: A brightfield pixel is tissue when its colour saturation (HSV) exceeds this, or it is dark:
#: glass is grey at any brightness (CLAM and HistoQC threshold saturation the same way).
TISSUE_SATURATION_MIN = 0.05
TISSUE_OD_DARK = 0.9
#: Tissue mask resolution (µm/px) and the largest mask side (px).
MASK_MPP = 2.0
MASK_MAX_SIDE = 2048
#: Smallest tissue fraction of the image and smallest tissue area (mm²) analysed.
MIN_TISSUE_FRACTION = 0.02
MIN_TISSUE_AREA_MM2 = 0.001


def stains_label(use) -> str:
    """The stain families a scenario reads, in words: "H&E" or "H&E or DAB with a hematoxylin counterstain (IHC)".

    Parameters
    ----------
    use : core.scenarios.spec.Use (its ``stains``; its ``stain_words`` instead when set)
    """
    if use.stain_words:
        return use.stain_words
    names = [STAIN_LABELS[s] for s in use.stains]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]


class OutsideValidatedUse(InputError):
    """The image is outside what the scenario was validated for; ``problems`` lists why."""

    def __init__(self, message: str, problems: list[str]):
        super().__init__(message)
        self.problems = problems


@dataclass(frozen=True)
class StainReading:
    """What the pixels say about the stain.

    Attributes
    ----------
    family : {"he", "dab-hematoxylin", "fluorescence", "uncertain"}
    eosin_share : float or None
        E / (E + DAB) of the positive unmixed concentrations on tissue, in [0, 1]; None for
        fluorescence and non-colour images.
    dark_fraction : float
        Share of pixels darker than 50 of 255 (mean of the channels), in [0, 1].
    """

    family: str
    eosin_share: float | None
    dark_fraction: float

    @property
    def label(self) -> str:
        return STAIN_LABELS.get(self.family, "an uncertain stain")


@dataclass(frozen=True)
class TissueMask:
    """Tissue at low resolution.

    Attributes
    ----------
    mask : (h, w) bool ndarray, True on tissue, at ``mask_mpp`` (or ``scale`` image px per mask px)
    scale : float, image pixels per mask pixel
    fraction : float in [0, 1], tissue share of the image
    method : str, how the mask was made
    """

    mask: np.ndarray
    scale: float
    fraction: float
    method: str

    def area_mm2(self, mpp: float | None) -> float | None:
        """Tissue area in mm² for an image of ``mpp`` µm/px (None without mpp)."""
        if mpp is None:
            return None
        return float(self.mask.sum()) * (self.scale * mpp) ** 2 / 1e6


@dataclass
class FitnessReport:
    """The checks of one image against one scenario.

    Attributes
    ----------
    stain : StainReading
    tissue : TissueMask
    focus : float or None
    problems : list of str
        Mismatches that stop the run unless overridden (plain language, with what to do).
    notes : list of str
        Warnings that do not stop the run.
    """

    stain: StainReading
    tissue: TissueMask
    focus: float | None
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def read_stain(image: ImageData) -> StainReading:
    """The stain family of an image from its colours (module docstring).

    Parameters
    ----------
    image : ImageData, any channels (non-colour images are read as fluorescence when dark)

    Returns
    -------
    StainReading

    References
    ----------
    Ruifrok & Johnston, Quantification of histochemical staining by color deconvolution,
    Anal Quant Cytol Histol 2001 (the H, E, DAB optical density vectors).
    """
    from skimage.color import hed_from_rgb

    rgb = _sample(image.rgb)
    if image.transparent is not None:  # no image there: black in the RGB, but neither dark field nor tissue
        rgb = rgb[~_sample(image.transparent)]
        if len(rgb) == 0:
            return StainReading("uncertain", None, 0.0)
    grey = rgb.mean(axis=-1)
    dark = float((grey < 50).mean())
    if not image.is_rgb or (dark >= 0.5 and float(np.median(grey)) < 60):
        return StainReading("fluorescence", None, dark)
    od = -np.log((rgb.astype(np.float64) + 1.0) / 256.0)
    tissue = od.sum(axis=-1) > STAIN_OD_MIN
    if tissue.sum() < 100:
        return StainReading("uncertain", None, dark)
    conc = od[tissue] @ hed_from_rgb
    e = float(np.clip(conc[:, 1], 0, None).sum())
    d = float(np.clip(conc[:, 2], 0, None).sum())
    share = e / (e + d) if e + d > 0 else 0.0
    family = "dab-hematoxylin" if share < EOSIN_SHARE_IHC_MAX else "he" if share > EOSIN_SHARE_HE_MIN else "uncertain"
    return StainReading(family, share, dark)


def _sample(rgb: np.ndarray, max_pixels: int = 4_000_000) -> np.ndarray:
    """A strided view with at most ``max_pixels`` pixels (bounded time on large fields)."""
    h, w = rgb.shape[:2]
    step = max(1, int(np.ceil(np.sqrt(h * w / max_pixels))))
    return rgb[::step, ::step]


def tissue_mask(image: ImageData, fluorescence: bool | None = None) -> TissueMask:
    """Tissue (not glass, not empty background) at about 2 µm/px (module docstring).

    Parameters
    ----------
    image : ImageData; mpp None is read as 0.5 µm/px for the mask's resolution only
    fluorescence : bool, optional
        Dark-background image; default from :func:`read_stain`.

    Returns
    -------
    TissueMask, at most :data:`MASK_MAX_SIDE` px a side
        Transparent pixels of the file (:attr:`core.io.ImageData.transparent`) are not
        tissue: a mask pixel more than half transparent is cleared after the clean-up.
    """
    from skimage import filters, morphology
    from skimage.transform import downscale_local_mean

    if fluorescence is None:
        fluorescence = read_stain(image).family == "fluorescence"
    mpp = image.mpp or 0.5
    h, w = image.shape
    f = max(1, int(round(MASK_MPP / mpp)), int(np.ceil(max(h, w) / MASK_MAX_SIDE)))
    # Every g-th pixel is read before block averaging, so the float copy stays under about
    # 16 pixels per mask pixel whatever the image size (bounded memory).
    g = max(1, f // 4)
    f = g * (f // g)
    rgb = image.rgb[::g, ::g]
    if fluorescence:
        signal = downscale_local_mean(rgb.max(axis=-1).astype(np.float32), (f // g, f // g))
        thr = filters.threshold_otsu(signal) if np.ptp(signal) > 0 else np.inf
        mask = signal > thr
        grow = max(1, int(round(10.0 / (f * mpp))))
        mask = morphology.dilation(mask, morphology.disk(grow))
        method = "fluorescence: Otsu threshold of the brightest channel, grown by 10 µm"
    else:
        from skimage.color import rgb2hsv

        small = downscale_local_mean(rgb.astype(np.float32), (f // g, f // g, 1)) / 255.0
        od = -np.log((small * 255.0 + 1.0) / 256.0).sum(axis=-1)
        mask = (rgb2hsv(small)[..., 1] > TISSUE_SATURATION_MIN) | (od > TISSUE_OD_DARK)
        method = (f"brightfield: colour saturation > {TISSUE_SATURATION_MIN:g} or summed optical density > "
                  f"{TISSUE_OD_DARK:g} (grey glass excluded)")
    px_um = f * mpp
    mask = morphology.closing(mask, morphology.disk(max(1, int(round(4.0 / px_um)))))
    mask = morphology.remove_small_holes(mask, max_size=max(4, int(round(400.0 / px_um**2))))
    mask = morphology.remove_small_objects(mask, max_size=max(4, int(round(100.0 / px_um**2))))
    method += "; closed, holes < 400 µm² filled, specks < 100 µm² removed"
    if image.transparent is not None:
        clear = downscale_local_mean(image.transparent[::g, ::g].astype(np.float32), (f // g, f // g)) > 0.5
        mask &= ~clear
        method += "; transparent pixels are not tissue"
    return TissueMask(mask, float(f), float(mask.mean()) if mask.size else 0.0, method)


def focus_score(image: ImageData, model_mpp: float, tissue: TissueMask) -> float | None:
    """Variance of the Laplacian of the grey optical density at ``model_mpp`` on tissue.

    Parameters
    ----------
    image : ImageData
    model_mpp : float, µm/px the model reads
    tissue : TissueMask of the image

    Returns
    -------
    float >= 0 (higher is sharper), or None with too little tissue
    """
    from scipy import ndimage
    from skimage.transform import resize

    rgb = _sample(image.rgb, 2_000_000)
    stride = image.shape[0] / rgb.shape[0]
    mpp = image.mpp or model_mpp
    s = mpp * stride / model_mpp
    grey = -np.log((rgb.mean(axis=-1, dtype=np.float32) + 1.0) / 256.0)
    if s > 1.05:  # the image is coarser than the model reads: measure at its own scale (no upsampled copy)
        s = 1.0
    if abs(s - 1) > 0.05:
        shape = (max(8, int(round(grey.shape[0] * s))), max(8, int(round(grey.shape[1] * s))))
        grey = resize(grey, shape, anti_aliasing=s < 1, preserve_range=True)
    lap = ndimage.laplace(grey)
    m = resize(tissue.mask.astype(np.float32), lap.shape, order=0) > 0.5
    if m.sum() < 256:
        return None
    return float(lap[m].var())


def stain_check(stain: StainReading, scenario, what: str = "image") -> tuple[list[str], list[str]]:
    """Does the stain read from the pixels fit one of the stain families the scenario reads?

    Parameters
    ----------
    stain : StainReading of the image (:func:`read_stain`)
    scenario : core.scenarios.spec.Scenario (its ``use.stains``: one family, or several for a
        multistain model such as CD-UNET, H&E and DAB-hematoxylin IHC)
    what : str, the word for the input in the messages ("image", "slide")

    Returns
    -------
    (problems, notes) : lists of str
        A problem when the stain is read as a family the model does not read; a note when the
        stain could not be told from the colours.
    """
    wanted = stains_label(scenario.use)
    if stain.family == "uncertain":
        article = "an" if what[:1] in ("a", "e", "i", "o", "u") else "a"
        return [], [f"TILscope could not tell the stain from the colours; the {scenario.title} model reads "
                    f"{wanted}: check that this is such {article} {what}."]
    if stain.family not in scenario.use.stains:
        return [f"The {what} looks like {stain.label}, but the {scenario.title} model reads {wanted}: choose the "
                "scenario for this stain."], []
    return [], []


def use_checks(scenario, mpp: float | None, antigen_confirmed: bool | None,
               fix: str = "scan or export the image at such a magnification") -> tuple[list[str], list[str]]:
    """The checks of a scenario's declared use that need no pixels: the antibody and the pixel size.

    Parameters
    ----------
    scenario : core.scenarios.spec.Scenario (its ``use``)
    mpp : float or None, µm per pixel of the input (None: not checked)
    antigen_confirmed : bool or None, the user confirmed the antibody (None: not asked)
    fix : str, what the user should do about a pixel size outside the range (field or slide wording)

    Returns
    -------
    (problems, notes) : lists of str
        A problem for an antibody denied or a pixel size outside ``use.mpp_range``; a note for
        an antibody not asked about.
    """
    use = scenario.use
    problems, notes = [], []
    if use.antigen:
        if antigen_confirmed is False:
            problems.append(f"The {scenario.title} model counts {use.antigen}-stained cells only; the antibody was "
                            f"not confirmed as {use.antigen}.")
        elif antigen_confirmed is None:
            notes.append(f"The antibody was not confirmed as {use.antigen}: the colours cannot tell {use.antigen} "
                         "from another DAB stain (e.g. Ki67).")
    if mpp is not None:
        lo, hi = use.mpp_range
        if not lo <= mpp <= hi:
            problems.append(f"The pixel size is {mpp:.3g} µm/px; the {scenario.title} model is validated from "
                            f"{lo:g} to {hi:g} µm/px (0.25 µm/px is about a 40x scan, 0.5 about 20x): {fix}, or "
                            "correct the pixel size if it is wrong.")
    return problems, notes


def assess(image: ImageData, scenario, antigen_confirmed: bool | None = None, *, stain: StainReading | None = None,
           tissue: TissueMask | None = None) -> FitnessReport:
    """Check an image against a scenario's declared use (stain, magnification, tissue, focus).

    Parameters
    ----------
    image : ImageData
    scenario : core.scenarios.spec.Scenario (its ``use``)
    antigen_confirmed : bool, optional
        The user confirmed the antibody (e.g. CD3) for a scenario that counts one antigen;
        None when not asked (the CLI): a note says it was not confirmed.
    stain, tissue : StainReading and TissueMask of this image, optional
        Readings already made (for a second scenario on the same image); read here if absent.

    Returns
    -------
    FitnessReport
        ``problems`` (stop unless overridden) and ``notes`` (warnings), in plain language.
    """
    use = scenario.use
    stain = stain or read_stain(image)
    tissue = tissue or tissue_mask(image, stain.family == "fluorescence")
    problems, notes = stain_check(stain, scenario)
    more_problems, more_notes = use_checks(scenario, image.mpp, antigen_confirmed)
    problems += more_problems
    notes += more_notes
    area = tissue.area_mm2(image.mpp)
    if tissue.fraction < MIN_TISSUE_FRACTION or (area is not None and area < MIN_TISSUE_AREA_MM2):
        problems.append(f"Almost no tissue was found ({100 * tissue.fraction:.1f} % of the image"
                        + (f", {area:.4f} mm²" if area is not None else "")
                        + "): upload a field that shows tissue.")
    focus = None
    if stain.family != "fluorescence" and use.min_focus is not None and tissue.fraction >= MIN_TISSUE_FRACTION:
        focus = focus_score(image, scenario.input_mpp, tissue)
        if focus is not None and focus < use.min_focus:
            notes.append(f"The image looks out of focus (sharpness {focus:.3g}, below the {use.min_focus:g} of the "
                         "images the model was checked on): cells may be missed; rescan or pick a sharper field.")
    return FitnessReport(stain, tissue, focus, problems, notes)


def merge_reports(first: FitnessReport, second: FitnessReport) -> FitnessReport:
    """One report for two scenarios run on the same image (e.g. cells and their tissue compartments).

    The stain, tissue and focus readings are those of ``first``; problems and notes are those
    of both, each once, in order.
    """
    problems = list(dict.fromkeys([*first.problems, *second.problems]))
    notes = list(dict.fromkeys([*first.notes, *second.notes]))
    return FitnessReport(first.stain, first.tissue, first.focus, problems, notes)


def outside_use_message(scenario, problems: list[str], others=()) -> str:
    """The message that stops a run: the problems, then how to override.

    ``others``: further scenarios run on the same image (e.g. the tissue compartments), named too.
    """
    titles = " and the ".join(s.title for s in (scenario, *others))
    what = "models were" if others else "model was"
    return (f"This image is outside what the {titles} {what} validated for. " + " ".join(problems)
            + " To run it anyway, tick 'Run outside the validated use' (command line: --outside-validated-use); "
              "the result is then marked as outside the validated use everywhere it appears.")
