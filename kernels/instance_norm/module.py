"""`InstanceNormAct`: the nn.Module of the fused instance norm + activation."""

from __future__ import annotations

import torch
from torch import nn

from .ops import instance_norm_act


class InstanceNormAct(nn.Module):
    """Drop-in for InstanceNorm2d(affine, track_running_stats=False) followed by ReLU / LeakyReLU.

    Same state-dict keys as nn.InstanceNorm2d: none when affine=False, `weight` and `bias` otherwise.
    """

    def __init__(
        self,
        num_features: int,
        negative_slope: float = 0.0,
        affine: bool = False,
        eps: float = 1e-5,
        activation: bool = True,
    ) -> None:
        super().__init__()
        self.num_features = num_features
        self.negative_slope = float(negative_slope)
        self.eps = eps
        self.activation = activation
        self.affine = affine
        if affine:
            self.weight = nn.Parameter(torch.ones(num_features))
            self.bias = nn.Parameter(torch.zeros(num_features))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4 and x.shape[1] != self.num_features:
            raise ValueError(f"expected {self.num_features} channels, got input of shape {tuple(x.shape)}")
        return instance_norm_act(x, self.weight, self.bias, self.negative_slope, self.eps, self.activation)

    def extra_repr(self) -> str:
        if not self.activation:
            act = "none"
        else:
            act = "relu" if self.negative_slope == 0 else f"leaky_relu({self.negative_slope})"
        return f"{self.num_features}, eps={self.eps}, affine={self.affine}, activation={act}"
