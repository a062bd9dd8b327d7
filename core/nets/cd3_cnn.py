"""The CD3 lymphocyte CNN of the gastric IHC paper, in two layouts.

Reference: "Automatic lymphocyte detection on gastric cancer IHC images using deep
learning" (``shared/papers/cd3-ihc-lymphocyte-cnn-gastric.txt``), §III.C: three 3x3
convolutions of 64, 128 and 256 features, each followed by 2x2 max pooling, two
fully connected layers of 2048 with dropout and batch normalisation, softmax over
lymphocyte / not, on 70 x 70 px RGB patches.

Layouts (:data:`LAYOUTS`):

``paper``
    The paper's network as stated: 'same' padding (TensorFlow's default), so the
    third pooling leaves 9 x 9 x 256 = 20 736 features and the first dense layer
    holds 42.5 M weights (170 MB in float32). Kept to compare against.
``compact`` (shipped)
    The same three convolution stages with 'valid' padding, and the dense head
    written as convolutions of a smaller width: a 1x1 reduction to 32 channels, a
    7x7 convolution to 256 (FC1 over the 7 x 7 map), a 1x1 convolution to 256 (FC2)
    and a 1x1 classifier. On a 70 x 70 patch it is a patch classifier; on a whole
    image it computes every 70 x 70 window at a stride of 8 px in one pass, with
    exactly the numbers the patch classifier gives for those windows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

PATCH_SIZE_PX = 70
#: Output stride of the fully convolutional form (three 2x2 poolings).
STRIDE_PX = 8
CLASS_NAMES = ("not-lymphocyte", "lymphocyte")


@dataclass(frozen=True)
class Layout:
    """Hyper-parameters of one layout of the CD3 CNN."""

    padding: str  # "same" or "valid"
    head: str  # "dense" (paper) or "conv" (fully convolutional)
    reduce_channels: int
    fc_features: int
    dropout: float


LAYOUTS = {
    "paper": Layout(padding="same", head="dense", reduce_channels=0, fc_features=2048, dropout=0.5),
    "compact": Layout(padding="valid", head="conv", reduce_channels=32, fc_features=256, dropout=0.5),
}


def _conv_stage(cin: int, cout: int, padding: str) -> nn.Sequential:
    pad = 1 if padding == "same" else 0
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=pad, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2, ceil_mode=(padding == "same")),
    )


class CD3CNN(nn.Module):
    """Lymphocyte / not classifier for CD3 IHC patches (paper §III.C).

    Parameters
    ----------
    layout : {"compact", "paper"}
        See :data:`LAYOUTS`.

    Input: (N, 3, H, W) float32, RGB normalised with the training mean and std
    (stored in the weights file's metadata). For a 70 x 70 patch the output is
    (N, 2) logits. The ``compact`` layout also takes H, W >= 70 and returns
    (N, 2, (H - 70) // 8 + 1, (W - 70) // 8 + 1) logits, one per window whose
    top-left corner is at (8 i, 8 j).
    """

    def __init__(self, layout: str = "compact"):
        super().__init__()
        if layout not in LAYOUTS:
            raise ValueError(f"unknown CD3 CNN layout {layout!r}; choose one of {sorted(LAYOUTS)}")
        self.layout_name = layout
        cfg = LAYOUTS[layout]
        self.features = nn.Sequential(
            _conv_stage(3, 64, cfg.padding),
            _conv_stage(64, 128, cfg.padding),
            _conv_stage(128, 256, cfg.padding),
        )
        fc = cfg.fc_features
        if cfg.head == "dense":
            side = 9  # 70 -> 35 -> 18 -> 9 with 'same' padding and ceil pooling
            self.head = nn.Sequential(
                nn.Flatten(),
                nn.Linear(256 * side * side, fc, bias=False),
                nn.BatchNorm1d(fc),
                nn.ReLU(inplace=True),
                nn.Dropout(cfg.dropout),
                nn.Linear(fc, fc, bias=False),
                nn.BatchNorm1d(fc),
                nn.ReLU(inplace=True),
                nn.Dropout(cfg.dropout),
                nn.Linear(fc, 2),
            )
        else:
            side = 7  # 70 -> 68 -> 34 -> 32 -> 16 -> 14 -> 7 with 'valid' padding
            r = cfg.reduce_channels
            self.head = nn.Sequential(
                nn.Conv2d(256, r, 1, bias=False),
                nn.BatchNorm2d(r),
                nn.ReLU(inplace=True),
                nn.Conv2d(r, fc, side, bias=False),
                nn.BatchNorm2d(fc),
                nn.ReLU(inplace=True),
                nn.Dropout(cfg.dropout),
                nn.Conv2d(fc, fc, 1, bias=False),
                nn.BatchNorm2d(fc),
                nn.ReLU(inplace=True),
                nn.Dropout(cfg.dropout),
                nn.Conv2d(fc, 2, 1),
            )

    @property
    def fully_convolutional(self) -> bool:
        """True when the network can run on a whole image (``compact`` layout)."""
        return LAYOUTS[self.layout_name].head == "conv"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.head(self.features(x))
        if out.ndim == 4 and out.shape[-2:] == (1, 1) and x.shape[-2:] == (PATCH_SIZE_PX, PATCH_SIZE_PX):
            out = out.flatten(1)
        return out
