"""U-Net with a ResNet34 encoder that reads lymphocyte subtypes off a Hoechst (DNA) image.

Reference: the Hoechst U-Net paper (``shared/papers/hoechst-unet-lymphocyte-subtypes.txt``,
code at github.com/jessicamarycooper/ICAIRD), §3 "Materials and Methods" and §3.4: a
semantic segmentation network "with U-Net architecture and a resnet34 encoder" from
Segmentation Models PyTorch, one Hoechst 33342 channel in, one softmax map per class out,
cross-entropy loss, AdamW.

Built here with ``segmentation_models_pytorch.Unet("resnet34", ...)`` (smp 0.6.0): the
encoder is torchvision's ResNet34 with its first convolution made for one input channel,
the decoder smp's default five upsampling blocks of (256, 128, 64, 32, 16) channels with
the encoder's skips, then a 3x3 convolution to the classes. 24.4 M parameters for 4
classes; an input side must be a multiple of :data:`SIZE_MULTIPLE_PX` (five stride-2 stages).

Initialisation: nothing is downloaded (``encoder_weights=None``, so smp never reaches a
hub). The encoder starts from torchvision's ResNet initialisation (Kaiming-normal
convolutions, batch norm at 1 / 0), the decoder and head from smp's (Kaiming-uniform
convolutions, Xavier-uniform head), all drawn from torch's global generator (seed it for
reproducible weights). An optional denoising pre-training stage on the Hoechst channel of
the training tiles starts the encoder and decoder before supervised training
(:mod:`core.training.hoechst`, ``--pretrain-minutes``).

Classes (:data:`CLASS_SCHEMES`): the data set (``shared/data/hoechst-mif-lung``) labels
0 background/other, 1 CD8 with low CD3, 2 CD3, 3 CD20, 4 CD8 with high CD3, the paper's
five groups (§3). The ``merged`` scheme (shipped) keeps background, CD3, CD8 and CD20 and
merges the two CD8 groups: both are CD8+ cytotoxic T cells, told apart only by a
threshold on the CD3 (AF750) intensity (§3), the figure the immune-infiltration scores
count (CD3+ and CD8+ T cells, CD20+ B cells; paper §2), and this slide has 25 CD8 CD3-low
and 38 CD8 CD3-high cells in all, too few to learn the threshold from a DNA stain. The
``paper`` scheme keeps all five for a data set that has them in number.
"""

from __future__ import annotations

import torch
from torch import nn

#: An input side must be a multiple of this (the encoder's five stride-2 stages).
SIZE_MULTIPLE_PX = 32
#: The encoder of the paper (§3).
ENCODER = "resnet34"
#: smp's default decoder widths (the paper used the library's U-Net as it comes).
DECODER_CHANNELS = (256, 128, 64, 32, 16)

#: Output classes of each label scheme, background first.
CLASS_SCHEMES: dict[str, tuple[str, ...]] = {
    "merged": ("background", "cd3", "cd8", "cd20"),
    "paper": ("background", "cd8-cd3lo", "cd3", "cd20", "cd8-cd3hi"),
}
#: The data set's label values (0 background/other, 1 CD8 CD3-low, 2 CD3, 3 CD20, 4 CD8 CD3-high)
#: mapped to each scheme's class index: ``LABEL_TO_CLASS[scheme][label]``.
LABEL_TO_CLASS: dict[str, tuple[int, ...]] = {
    "merged": (0, 2, 1, 3, 2),
    "paper": (0, 1, 2, 3, 4),
}


def label_to_class(labels, scheme: str):
    """Map the data set's label values to the class indices of ``scheme``.

    Parameters
    ----------
    labels : (H, W) integer ndarray with values 0-4 (the label PNGs of ``hoechst-mif-lung``)
    scheme : one of :data:`CLASS_SCHEMES`

    Returns
    -------
    (H, W) int64 ndarray of class indices in [0, len(CLASS_SCHEMES[scheme]))

    Raises
    ------
    ValueError
        If ``scheme`` is unknown or a label is outside 0-4.
    """
    import numpy as np

    if scheme not in LABEL_TO_CLASS:
        raise ValueError(f"unknown class scheme {scheme!r}; use one of {', '.join(LABEL_TO_CLASS)}")
    labels = np.asarray(labels)
    lut = np.asarray(LABEL_TO_CLASS[scheme], np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= len(lut)):
        raise ValueError(f"label values {int(labels.min())}-{int(labels.max())} outside 0-{len(lut) - 1}")
    return lut[labels.astype(np.int64)]


class HoechstUNet(nn.Module):
    """U-Net (ResNet34 encoder) mapping a normalised Hoechst image to per-pixel class logits.

    Parameters
    ----------
    n_classes : int >= 2
        Output classes including background (4 for the ``merged`` scheme, 5 for ``paper``).
    encoder : str
        smp encoder name; the paper's ``"resnet34"``.
    decoder_channels : tuple of 5 int
        Widths of the decoder blocks; smp's (and the paper's) default (256, 128, 64, 32, 16).

    Raises
    ------
    ValueError
        If ``n_classes`` < 2 or ``decoder_channels`` does not have 5 entries.

    References
    ----------
    Hoechst U-Net paper §3.4; Ronneberger et al., MICCAI 2015 (U-Net); He et al., CVPR 2016
    (ResNet); Iakubovskii, Segmentation Models PyTorch (smp).
    """

    def __init__(self, n_classes: int = 4, encoder: str = ENCODER, decoder_channels=DECODER_CHANNELS):
        super().__init__()
        import segmentation_models_pytorch as smp

        if int(n_classes) < 2:
            raise ValueError(f"n_classes must be at least 2 (background and one cell class), got {n_classes}")
        decoder_channels = tuple(int(c) for c in decoder_channels)
        if len(decoder_channels) != 5:
            raise ValueError(f"decoder_channels needs 5 widths (one per decoder block), got {decoder_channels}")
        self.n_classes = int(n_classes)
        self.encoder_name = encoder
        self.decoder_channels = decoder_channels
        # encoder_weights=None: random initialisation, nothing is fetched from a hub
        self.unet = smp.Unet(encoder_name=encoder, encoder_weights=None, in_channels=1, classes=self.n_classes,
                             decoder_channels=decoder_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits.

        Parameters
        ----------
        x : (N, 1, H, W) float32, the Hoechst channel normalised to [0, 1]
            (:func:`core.scenarios.hoechst.normalise_hoechst`); H, W multiples of 32

        Returns
        -------
        (N, n_classes, H, W) float32 logits (softmax over dim 1 gives the class probabilities)

        Raises
        ------
        ValueError
            If ``x`` is not (N, 1, H, W) or H, W are not multiples of :data:`SIZE_MULTIPLE_PX`.
        """
        if x.ndim != 4 or x.shape[1] != 1:
            raise ValueError(f"expected (N, 1, H, W) Hoechst input, got shape {tuple(x.shape)}")
        h, w = x.shape[-2:]
        if h % SIZE_MULTIPLE_PX or w % SIZE_MULTIPLE_PX:
            raise ValueError(f"input is {w} x {h} px; both sides must be multiples of {SIZE_MULTIPLE_PX} "
                             "(pad the image, e.g. by reflection)")
        return self.unet(x)

    def encoder_decoder_state(self) -> dict[str, torch.Tensor]:
        """The weights of everything but the segmentation head (what pre-training hands on)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("unet.segmentation_head.")}


def count_parameters(net: nn.Module) -> int:
    """Number of trainable parameters."""
    return int(sum(p.numel() for p in net.parameters() if p.requires_grad))
