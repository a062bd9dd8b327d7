"""S-DRDIN: symmetric dense inception network for simultaneous cell detection and classification.

Architecture of the S-DRDIN paper (shared/papers/s-drdin-mihc-detection-classification.txt,
§2.3, Figure 1): a U-Net whose convolution module is an inception block; an encoder of 4
inception blocks joined by 2 x 2 average pooling; two decoders,

- a *classification* branch ending in a 1 x 1 convolution to ``n_classes + 1`` channels
  (the cell classes and background; softmax), and
- a *detection* branch that receives the encoder's skip connections through a
  stop-gradient, concatenates the classification branch's last inception output with its
  own, then applies two 3 x 3 convolutions and a final 1 x 1 convolution (sigmoid).

The paper's variants are selected by ``variant``:

=====================  ==============================================================
``"s-drdin"``          both branches, stop-gradient on the detection skips (proposed)
``"s-drdin-gradient"`` both branches, gradient flows through every skip
``"drdin-detection"``  detection branch only (no classification branch)
``"drdin-classification"``  classification branch only
=====================  ==============================================================

The network returns *logits*; :func:`probabilities` applies the softmax and sigmoid.
Widths are configurable (``base_features``); the shipped model uses a reduced width for
CPU inference, see its model card.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

VARIANTS = ("s-drdin", "s-drdin-gradient", "drdin-detection", "drdin-classification")
#: Input height and width must be multiples of this (3 poolings by 2).
SIZE_MULTIPLE_PX = 8


class InceptionBlock(nn.Module):
    """Inception module (Szegedy et al. 2015) with four parallel branches.

    Branches, each with ``out_channels // 4`` channels: 1 x 1; 1 x 1 → 3 x 3;
    1 x 1 → 3 x 3 → 3 x 3 (the factorised 5 x 5); 3 x 3 average pool of a 1 x 1 projection.
    Their concatenation is batch-normalised and passed through ReLU.

    Parameters
    ----------
    in_channels, out_channels : int
        ``out_channels`` must be divisible by 4.
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        if out_channels % 4:
            raise ValueError(f"out_channels must be divisible by 4, got {out_channels}")
        b = out_channels // 4
        self.branch_channels = b
        # The four 1 x 1 convolutions that read the input (branch 1, the two reductions and the
        # pool branch's projection) are one convolution to 4 b channels, split afterwards: one
        # pass over the input instead of four. The pool branch projects before pooling, which
        # is the same linear map (average pooling commutes with a 1 x 1 convolution) on b
        # instead of in_channels channels.
        self.reduce = nn.Conv2d(in_channels, 4 * b, 1)
        self.conv3 = nn.Conv2d(b, b, 3, padding=1)
        self.conv5a = nn.Conv2d(b, b, 3, padding=1)
        self.conv5b = nn.Conv2d(b, b, 3, padding=1)
        self.pool = nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)
        self.norm = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.branches(self.reduce(x))

    def reduce_upsampled(self, low: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """``self.reduce(cat([upsample(low), skip]))`` without up-sampling ``low`` or concatenating.

        A 1 x 1 convolution of a concatenation is the sum of the convolutions of its parts,
        and bilinear up-sampling (weights summing to 1) commutes with a 1 x 1 convolution and
        its bias; so ``low`` is reduced at its own resolution and only the 4 b reduced channels
        are up-sampled. The same function as the concatenation (up to float rounding) with
        about half the decoder's multiply-adds and without its largest tensors.

        Parameters
        ----------
        low : (N, C_low, H / 2, W / 2) float, the coarser decoder features
        skip : (N, C_skip, H, W) float, with C_low + C_skip == ``in_channels``

        Returns
        -------
        (N, 4 b, H, W) float, the four 1 x 1 reductions of the block
        """
        c = low.shape[1]
        w = self.reduce.weight
        r = F.interpolate(F.conv2d(low, w[:, :c], self.reduce.bias), size=skip.shape[-2:], mode="bilinear",
                          align_corners=False)
        return r.add_(F.conv2d(skip, w[:, c:]))

    @torch.no_grad()
    def fold_batch_norm_(self) -> None:
        """Fold the eval-mode batch normalisation into the convolutions that feed it, in place.

        Each output channel of the concatenation comes from one convolution: branch 1 and the
        pool branch from :attr:`reduce` (average pooling with weights summing to 1 commutes with
        a per-channel affine map), the others from :attr:`conv3` and :attr:`conv5b`. Scaling
        their weights and shifting their biases by BN's per-channel affine map and removing BN
        gives the same function (up to float rounding) with one pass over the block's output
        fewer. For inference only: the running statistics are baked in.

        Raises
        ------
        RuntimeError
            If the block is in training mode (BN then normalises with batch statistics).
        """
        if self.training:
            raise RuntimeError("fold_batch_norm_ is for inference: call eval() first")
        if isinstance(self.norm, nn.Identity):
            return
        n, b = self.norm, self.branch_channels
        scale = n.weight / torch.sqrt(n.running_var + n.eps)
        shift = n.bias - n.running_mean * scale
        for conv, rows, channels in ((self.reduce, slice(0, b), slice(0, b)),
                                     (self.conv3, slice(None), slice(b, 2 * b)),
                                     (self.conv5b, slice(None), slice(2 * b, 3 * b)),
                                     (self.reduce, slice(3 * b, 4 * b), slice(3 * b, 4 * b))):
            conv.weight[rows] *= scale[channels].view(-1, 1, 1, 1)
            conv.bias[rows] = conv.bias[rows] * scale[channels] + shift[channels]
        self.norm = nn.Identity()

    def branches(self, r: torch.Tensor) -> torch.Tensor:
        """The block after its 1 x 1 reductions ``r`` (N, 4 b, H, W): branches, concatenation, BN, ReLU."""
        b = self.branch_channels
        a, r3, r5, p = torch.split(r, b, dim=1)
        b3 = self.conv3(F.relu(r3))
        b5 = self.conv5b(F.relu(self.conv5a(F.relu(r5))))
        if torch.is_grad_enabled():
            y = torch.cat([a, b3, b5, self.pool(p)], dim=1)
        else:
            # Inference: each branch's output is written over the reduction it was computed from
            # (r3, r5 and p are read before their channels are overwritten), so ``r`` becomes the
            # concatenation: the same values without the block's largest allocation and its copy.
            pooled = self.pool(p)
            r[:, b : 2 * b] = b3
            r[:, 2 * b : 3 * b] = b5
            r[:, 3 * b :] = pooled
            y = r
        return F.relu(self.norm(y), inplace=True)


class Decoder(nn.Module):
    """Three up-sampling steps (bilinear x2, concatenate the skip, inception block).

    The up-sampling and the concatenation are folded into each block's first 1 x 1
    convolution (:meth:`InceptionBlock.reduce_upsampled`), which is the same function.
    """

    def __init__(self, widths: tuple[int, int, int, int]):
        super().__init__()
        f1, f2, f3, f4 = widths
        self.blocks = nn.ModuleList([InceptionBlock(f4 + f3, f3), InceptionBlock(f3 + f2, f2), InceptionBlock(f2 + f1, f1)])

    def forward(self, bottom: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        x = bottom
        for block, skip in zip(self.blocks, skips):
            x = block.branches(block.reduce_upsampled(x, skip))
        return x


class SDRDIN(nn.Module):
    """S-DRDIN and its variants (S-DRDIN, §2.3).

    Parameters
    ----------
    n_classes : int
        Number of cell classes; the classification output has ``n_classes + 1`` channels,
        the last one background.
    variant : str
        One of :data:`VARIANTS`.
    base_features : int
        Channels of the first encoder block (doubled at each of the 3 poolings); divisible by 4.

    Input: (N, 3, H, W) float32 normalised RGB, H and W multiples of :data:`SIZE_MULTIPLE_PX`.

    Output: dict with ``"class_logits"`` (N, n_classes + 1, H, W) and ``"detection_logits"``
    (N, 1, H, W) float32 (``None`` for the branch a variant lacks).
    """

    def __init__(self, n_classes: int = 4, variant: str = "s-drdin", base_features: int = 16):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"unknown S-DRDIN variant {variant!r}; choose one of {', '.join(VARIANTS)}")
        self.n_classes = n_classes
        self.variant = variant
        f = base_features
        widths = (f, 2 * f, 4 * f, 8 * f)
        self.encoder = nn.ModuleList(
            [InceptionBlock(3, widths[0]), InceptionBlock(widths[0], widths[1]),
             InceptionBlock(widths[1], widths[2]), InceptionBlock(widths[2], widths[3])]
        )
        self.has_classification = variant != "drdin-detection"
        self.has_detection = variant != "drdin-classification"
        #: Stop-gradient on the encoder → detection skip connections (S-DRDIN only).
        self.stop_gradient = variant == "s-drdin"
        if self.has_classification:
            self.class_decoder = Decoder(widths)
            self.class_head = nn.Conv2d(f, n_classes + 1, 1)
        if self.has_detection:
            self.detection_decoder = Decoder(widths)
            cin = 2 * f if self.has_classification else f
            self.detection_head = nn.Sequential(
                nn.Conv2d(cin, f, 3, padding=1), nn.ReLU(inplace=True),
                nn.Conv2d(f, f, 3, padding=1), nn.ReLU(inplace=True),
                nn.Conv2d(f, 1, 1),
            )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Glorot-uniform convolution weights, zero biases (§2.3)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def fold_batch_norm_(self) -> "SDRDIN":
        """Fold every inception block's batch normalisation into its convolutions (in place).

        The same function in eval mode, faster and with one activation tensor fewer per block
        (:meth:`InceptionBlock.fold_batch_norm_`); the folded network has no BN parameters, so
        fold after loading the weights. Returns ``self``.

        Raises
        ------
        RuntimeError
            If the network is in training mode.
        """
        for m in self.modules():
            if isinstance(m, InceptionBlock):
                m.fold_batch_norm_()
        return self

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Encoder outputs [e1, e2, e3, e4] (e4 the bottleneck, at 1/8 resolution)."""
        feats = []
        for i, block in enumerate(self.encoder):
            if i:
                x = F.avg_pool2d(x, 2)
            x = block(x)
            feats.append(x)
        return feats

    def detection_skips(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        """The skips [e3, e2, e1] as the detection branch receives them (detached in S-DRDIN)."""
        skips = [feats[2], feats[1], feats[0]]
        return [s.detach() for s in skips] if self.stop_gradient else skips

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor | None]:
        h, w = x.shape[-2:]
        if h % SIZE_MULTIPLE_PX or w % SIZE_MULTIPLE_PX:
            raise ValueError(f"input height and width must be multiples of {SIZE_MULTIPLE_PX}, got {h} x {w}")
        feats = self.encode(x)
        out: dict[str, torch.Tensor | None] = {"class_logits": None, "detection_logits": None}
        class_features = None
        if self.has_classification:
            class_features = self.class_decoder(feats[3], [feats[2], feats[1], feats[0]])
            out["class_logits"] = self.class_head(class_features)
        if self.has_detection:
            det = self.detection_decoder(feats[3], self.detection_skips(feats))
            del feats  # the encoder's features are not read again: free them before the full-resolution head
            if class_features is not None:
                # The head's first convolution over cat([det, class_features]), as the sum of its
                # convolutions of the two parts: the same function without the concatenation.
                first = self.detection_head[0]
                w = first.weight
                det = F.conv2d(det, w[:, : det.shape[1]], first.bias, padding=first.padding).add_(
                    F.conv2d(class_features, w[:, det.shape[1] :], padding=first.padding))
                out["detection_logits"] = self.detection_head[1:](det)
            else:
                out["detection_logits"] = self.detection_head(det)
        return out


def probabilities(out: dict[str, torch.Tensor | None]) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Softmax of the class logits and sigmoid of the detection logits.

    Returns
    -------
    class_prob : (N, n_classes + 1, H, W) float32 in [0, 1], summing to 1 over channels, or None
    detection_prob : (N, H, W) float32 in [0, 1], or None
    """
    c = out.get("class_logits")
    d = out.get("detection_logits")
    return (None if c is None else torch.softmax(c, dim=1)), (None if d is None else torch.sigmoid(d[:, 0]))
