"""DeepDeblur, the peer model of the DeblurGAN paper's runtime comparison, built from its paper's description.

Nah, Kim and Lee, "Deep Multi-scale Convolutional Neural Network for Dynamic Scene Deblurring", CVPR 2017
(arXiv:1612.02177), Sec. 3 and Fig. 3: three scales (1/4, 1/2, 1), coarse to fine. Each scale is a 5x5 conv to
64 channels, 19 ResBlocks (conv5x5-ReLU-conv5x5, no batch norm, identity skip) and a 5x5 conv to 3 channels.
The coarser scale's output is up-convolved to the next scale's size and concatenated with that scale's blurred
input, so the two finer scales take 6 channels.

The up-convolution is a 5x5 transposed conv 3->3 with stride 2 (the paper's wording, `upconv="transpose"`,
11,719,953 parameters) or the authors' PyTorch port's conv 3->12 + PixelShuffle(2) (`upconv="pixelshuffle"`,
11,721,321 parameters, the count in the plain-PyTorch reference timings, H200, torch 2.11, 2026-11-26). The two
differ by 1,368 parameters and a negligible number of FLOPs. Weights are random: this model is only timed, never
asked to deblur.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

N_SCALES, N_RESBLOCKS, WIDTH, KERNEL = 3, 19, 64, 5
UPCONV_KINDS = ("transpose", "pixelshuffle")


def _conv(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, KERNEL, padding=KERNEL // 2)


class ResBlock(nn.Module):
    """x + conv(relu(conv(x))), 5x5 convs, no normalisation (the paper drops BN; no ReLU after the sum)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.body = nn.Sequential(_conv(width, width), nn.ReLU(inplace=True), _conv(width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ScaleNet(nn.Module):
    """One scale: conv5x5(in->64), 19 ResBlocks, conv5x5(64->3)."""

    def __init__(self, in_channels: int, n_resblocks: int = N_RESBLOCKS, width: int = WIDTH) -> None:
        super().__init__()
        self.head = _conv(in_channels, width)
        self.body = nn.Sequential(*[ResBlock(width) for _ in range(n_resblocks)])
        self.tail = _conv(width, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tail(self.body(self.head(x)))


def _upconv(kind: str) -> nn.Module:
    if kind == "transpose":
        return nn.ConvTranspose2d(3, 3, KERNEL, stride=2, padding=KERNEL // 2, output_padding=1)
    if kind == "pixelshuffle":
        return nn.Sequential(_conv(3, 12), nn.PixelShuffle(2))
    raise ValueError(f"upconv must be one of {UPCONV_KINDS} (got {kind!r})")


class DeepDeblur(nn.Module):
    """Multi-scale DeepDeblur generator; `forward` returns the sharp estimates [1/4, 1/2, 1], finest last."""

    def __init__(
        self, n_scales: int = N_SCALES, n_resblocks: int = N_RESBLOCKS, width: int = WIDTH, upconv: str = "transpose"
    ) -> None:
        super().__init__()
        self.n_scales = n_scales
        self.scales = nn.ModuleList(
            [ScaleNet(3 if i == 0 else 6, n_resblocks, width) for i in range(n_scales)]  # coarsest first
        )
        self.upconvs = nn.ModuleList([_upconv(upconv) for _ in range(n_scales - 1)])

    def pyramid(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Blurred inputs from coarsest to finest (area downsampling by 2 per scale)."""
        levels = [x]
        for _ in range(self.n_scales - 1):
            levels.append(F.avg_pool2d(levels[-1], 2))
        return levels[::-1]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        div = 2 ** (self.n_scales - 1)
        if x.shape[-1] % div or x.shape[-2] % div:
            raise ValueError(f"H and W must be multiples of {div} (got {tuple(x.shape[-2:])})")
        levels = self.pyramid(x)
        outs = [self.scales[0](levels[0])]
        for i in range(1, self.n_scales):
            up = self.upconvs[i - 1](outs[-1])
            outs.append(self.scales[i](torch.cat([levels[i], up], dim=1)))
        return outs


def count_flops(model: nn.Module, shape: tuple[int, ...]) -> int:
    """FLOPs (2 x multiply-accumulates, torch.utils.flop_counter convention) of one forward on `shape`.

    Runs on the meta device, so a 720p count costs no compute and no memory.
    """
    from copy import deepcopy

    from torch.utils.flop_counter import FlopCounterMode

    meta = deepcopy(model).to("meta")
    x = torch.empty(shape, device="meta")
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        meta(x)
    return counter.get_total_flops()
