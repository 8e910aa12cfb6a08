"""DeblurGAN networks, layer for layer as in the authors' code (KupynOrest/DeblurGAN @ 39e8a4b).

Module indices follow the original `nn.Sequential` layout, so an original `latest_net_G.pth`
loads with the same keys (`model.1.weight`, `model.10.conv_block.1.weight`, ...).
"""

from __future__ import annotations

import torch
from torch import nn

from .config import CriticConfig, GeneratorConfig
from .layers import norm_act


class ResnetBlock(nn.Module):
    """x + [pad, conv, IN, ReLU, dropout, pad, conv, IN](x); indices 1 and 6 are the convs."""

    def __init__(self, dim: int, dropout: float, kernels: str) -> None:
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ReflectionPad2d(1),
            nn.Conv2d(dim, dim, kernel_size=3, bias=True),
            *norm_act(dim, 0.0, kernels),
            nn.Dropout(dropout) if dropout > 0 else nn.Identity(),
            nn.ReflectionPad2d(1),
            nn.Conv2d(dim, dim, kernel_size=3, bias=True),
            norm_act(dim, None, kernels)[0],
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_block(x)


class Generator(nn.Module):
    """ResNet generator: 7x7 conv, 2 downsamplings, n ResBlocks, 2 upsamplings, 7x7 conv, tanh.

    Input and output are RGB in [-1, 1]; H and W must be multiples of 4 (the Deblurrer pads).
    """

    def __init__(self, config: GeneratorConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or GeneratorConfig()
        k, ngf = cfg.kernels, cfg.ngf
        layers: list[nn.Module] = [
            nn.ReflectionPad2d(3),
            nn.Conv2d(cfg.in_channels, ngf, kernel_size=7, bias=True),
            *norm_act(ngf, 0.0, k),
        ]
        for i in range(2):
            c = ngf * 2**i
            layers += [nn.Conv2d(c, 2 * c, kernel_size=3, stride=2, padding=1, bias=True), *norm_act(2 * c, 0.0, k)]
        layers += [ResnetBlock(ngf * 4, cfg.dropout, k) for _ in range(cfg.n_blocks)]
        for i in range(2):
            c = ngf * 2 ** (2 - i)
            layers += [
                nn.ConvTranspose2d(c, c // 2, kernel_size=3, stride=2, padding=1, output_padding=1, bias=True),
                *norm_act(c // 2, 0.0, k),
            ]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, cfg.out_channels, kernel_size=7), nn.Tanh()]
        self.model = nn.Sequential(*layers)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        if self.config.learn_residual:
            out = torch.clamp(x + out, min=-1.0, max=1.0)
        return out


class Critic(nn.Module):
    """PatchGAN critic (n_layers=3 gives a 70x70 receptive field); raw scores, no sigmoid."""

    def __init__(self, config: CriticConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or CriticConfig()
        kw, padw, ndf, slope = 4, 2, cfg.ndf, cfg.negative_slope
        layers: list[nn.Module] = [
            nn.Conv2d(cfg.in_channels, ndf, kernel_size=kw, stride=2, padding=padw),
            nn.LeakyReLU(slope),
        ]
        mult = 1
        for n in range(1, cfg.n_layers):
            prev, mult = mult, min(2**n, 8)
            layers += [
                nn.Conv2d(ndf * prev, ndf * mult, kernel_size=kw, stride=2, padding=padw, bias=True),
                *norm_act(ndf * mult, slope, cfg.kernels),
            ]
        prev, mult = mult, min(2**cfg.n_layers, 8)
        layers += [
            nn.Conv2d(ndf * prev, ndf * mult, kernel_size=kw, stride=1, padding=padw, bias=True),
            *norm_act(ndf * mult, slope, cfg.kernels),
            nn.Conv2d(ndf * mult, 1, kernel_size=kw, stride=1, padding=padw),
        ]
        self.model = nn.Sequential(*layers)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def init_weights(module: nn.Module, std: float = 0.02) -> None:
    """The authors' init: conv weights N(0, 0.02), biases 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
