"""CD-UNET: a U-Net with a learned colour-deconvolution segment, for tissue compartments in any stain.

Architecture of the CD-UNET paper (shared/papers/cd-unet-multistain-tissue-segmentation.txt,
§3.2, Figure 3):

- a **colour-deconvolution segment**: two 1 x 1 convolutions, 6 filters (one per principal
  colour shade of the training stains: pink, blue, purple, brown, yellow, red) then 3 filters
  (so the U-Net's input size is unchanged), each followed by batch normalisation and ReLU
  (the non-linearity lets it learn the Beer-Lambert logarithm, §3.2);
- a **U-Net** (Ronneberger et al. 2015) at **half the original width** (32, 64, 128, 256, 512
  filters instead of 64 ... 1024), **zero padding** in every convolution so the output has the
  input's size, and **batch normalisation after every convolution**;
- a final 1 x 1 convolution to the **4 classes** (:data:`CLASSES`): background, tumour,
  stroma (the paper's "tissue", healthy tissue) and necrosis.

``colour_deconvolution=False`` gives the plain U-Net of the paper's comparison (§3.1, §3.3,
Table 2): the same network without the two 1 x 1 layers.

Choices the paper leaves open (stated in the model card): the U-Net's up-sampling is the
original 2 x 2 transposed convolution ("up-conv"), followed, like every other convolution, by
batch normalisation and ReLU; the last 1 x 1 convolution that produces the class scores has
no batch normalisation (its outputs are logits); the depth is the original 4 poolings.
The network returns logits; :func:`probabilities` applies the softmax.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

#: Output classes in channel order (label values of the compartment map).
CLASSES = ("background", "tumour", "stroma", "necrosis")
#: The two configurations of the paper's comparison (§3.3, Table 2).
VARIANTS = ("cd-unet", "unet")
#: Filters of the first U-Net level at half the original width (§3.2: the original has 64).
PAPER_BASE = 32
#: Poolings of the original U-Net.
PAPER_DEPTH = 4


def conv_bn_relu(in_channels: int, out_channels: int, kernel: int) -> nn.Sequential:
    """Convolution (zero padding that keeps the size), batch normalisation, ReLU (§3.2)."""
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2, bias=False),
                         nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


class ColourDeconvolution(nn.Module):
    """The learned colour-deconvolution segment of CD-UNET (§3.2).

    Two 1 x 1 convolutions, each followed by batch normalisation and ReLU: 3 → ``shades``
    (6: pink, blue, purple, brown, yellow, red) → 3 channels. Its three outputs play the role
    of stain concentration maps (Figure 7: hematoxylin, eosin, background on an H&E image).

    Parameters
    ----------
    shades : int
        Filters of the first layer (paper: 6).
    out_channels : int
        Filters of the second layer (paper: 3, the U-Net's input channels).

    Shapes
    ------
    (N, 3, H, W) float32 RGB in [0, 1] → (N, out_channels, H, W) float32 >= 0.
    """

    def __init__(self, shades: int = 6, out_channels: int = 3):
        super().__init__()
        self.layer1 = conv_bn_relu(3, shades, 1)
        self.layer2 = conv_bn_relu(shades, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer2(self.layer1(x))


class DoubleConv(nn.Sequential):
    """Two 3 x 3 convolutions with zero padding, each followed by batch normalisation and ReLU."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(conv_bn_relu(in_channels, out_channels, 3), conv_bn_relu(out_channels, out_channels, 3))


class Up(nn.Module):
    """U-Net up step: 2 x 2 transposed convolution (+ BN, ReLU), concatenation with the skip, DoubleConv."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.up = nn.Sequential(nn.ConvTranspose2d(in_channels, out_channels, 2, stride=2, bias=False),
                                nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))
        self.conv = DoubleConv(2 * out_channels, out_channels)

    def forward(self, low: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([skip, self.up(low)], dim=1))


class CDUNet(nn.Module):
    """CD-UNET (``colour_deconvolution=True``) or the plain U-Net of the paper's comparison.

    Parameters
    ----------
    n_classes : int
        Output channels (default 4: :data:`CLASSES`).
    base : int
        Filters of the first U-Net level, doubled at each pooling (paper: 32, half of the
        original 64). Smaller values give a faster network for tests and CPU smoke runs.
    depth : int
        Number of 2 x 2 max-poolings (original U-Net: 4). Input height and width must be
        multiples of ``2 ** depth``.
    colour_deconvolution : bool
        Put the two 1 x 1 layers of §3.2 in front (CD-UNET); False for the plain U-Net.
    shades : int
        Filters of the first 1 x 1 layer (paper: 6).

    Shapes
    ------
    forward: (N, 3, H, W) float32 RGB in [0, 1], H and W multiples of :attr:`size_multiple`
    → (N, n_classes, H, W) float32 logits.

    Raises
    ------
    ValueError
        If ``base`` < 1, ``depth`` < 1 or ``shades`` < 1.

    References
    ----------
    CD-UNET paper §3.2 (architecture), §3.3 and Table 2 (CD-UNET vs U-Net); Ronneberger et al.,
    U-Net, MICCAI 2015.
    """

    def __init__(self, n_classes: int = len(CLASSES), base: int = PAPER_BASE, depth: int = PAPER_DEPTH,
                 colour_deconvolution: bool = True, shades: int = 6):
        super().__init__()
        if base < 1 or depth < 1 or shades < 1:
            raise ValueError(f"base, depth and shades must be >= 1, got {base}, {depth}, {shades}")
        self.config = {"n_classes": int(n_classes), "base": int(base), "depth": int(depth),
                       "colour_deconvolution": bool(colour_deconvolution), "shades": int(shades)}
        self.cd = ColourDeconvolution(shades, 3) if colour_deconvolution else nn.Identity()
        widths = [base * 2**k for k in range(depth + 1)]
        self.down = nn.ModuleList([DoubleConv(3, widths[0])] + [DoubleConv(widths[k - 1], widths[k])
                                                                for k in range(1, depth + 1)])
        self.up = nn.ModuleList([Up(widths[k + 1], widths[k]) for k in reversed(range(depth))])
        self.head = nn.Conv2d(widths[0], n_classes, 1)

    @property
    def variant(self) -> str:
        """``"cd-unet"`` or ``"unet"``."""
        return VARIANTS[0] if self.config["colour_deconvolution"] else VARIANTS[1]

    @property
    def size_multiple(self) -> int:
        """Input height and width must be multiples of this (``2 ** depth``)."""
        return 2 ** self.config["depth"]

    def n_parameters(self) -> int:
        return int(sum(p.numel() for p in self.parameters()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.cd(x)
        skips = []
        for k, block in enumerate(self.down):
            x = block(x if k == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        x = skips.pop()
        for up in self.up:
            x = up(x, skips.pop())
        return self.head(x)

    @torch.no_grad()
    def fuse_batch_norm_(self) -> "CDUNet":
        """Fold every eval-mode batch normalisation into the convolution before it, in place; returns ``self``.

        Uses :func:`torch.nn.utils.fusion.fuse_conv_bn_eval` (transposed convolutions included):
        the same function up to float rounding, one pass over each activation fewer. The
        running statistics are baked in, so fuse after loading the weights, for inference only.

        Raises
        ------
        RuntimeError
            If the network is in training mode (BN then normalises with batch statistics).
        """
        from torch.nn.utils.fusion import fuse_conv_bn_eval

        if self.training:
            raise RuntimeError("fuse_batch_norm_ is for inference: call eval() first")
        for m in self.modules():
            if isinstance(m, nn.Sequential) and len(m) == 3 and isinstance(m[1], nn.BatchNorm2d):
                conv = m[0]
                m[0] = fuse_conv_bn_eval(conv, m[1], transpose=isinstance(conv, nn.ConvTranspose2d))
                m[1] = nn.Identity()
        return self

    def deconvolved(self, x: torch.Tensor) -> torch.Tensor:
        """The colour-deconvolution segment's output (Figure 7): (N, 3, H, W) float32 >= 0.

        Raises
        ------
        RuntimeError
            For the plain U-Net (it has no such segment).
        """
        if not self.config["colour_deconvolution"]:
            raise RuntimeError("the plain U-Net has no colour-deconvolution segment")
        return self.cd(x)


def build(config: dict) -> CDUNet:
    """A network from its saved configuration (the ``config`` metadata of the weights).

    Raises
    ------
    KeyError, TypeError, ValueError
        If ``config`` lacks a key or has one the network does not take.
    """
    return CDUNet(**{k: config[k] for k in ("n_classes", "base", "depth", "colour_deconvolution", "shades")})


def probabilities(logits: torch.Tensor) -> torch.Tensor:
    """Softmax over the class channel: (N, K, H, W) logits → (N, K, H, W) probabilities summing to 1."""
    return torch.softmax(logits, dim=1)


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Mirror-pad (N, C, H, W) at the bottom and right to multiples of ``multiple``; returns it and the original (H, W)."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        mode = "reflect" if ph < h and pw < w else "replicate"
        x = F.pad(x, (0, pw, 0, ph), mode=mode)
    return x, (h, w)
