"""DeblurGAN losses: perceptual (VGG19 conv3_3) content loss and the WGAN critic/generator terms.

L_G = -mean D(G(B)) + content_weight * MSE(phi(G(B)), phi(S))   (the paper; the trainer can add pixel_loss)
L_D = mean D(G(B)) - mean D(S) + gp_weight * GP       (`compute_gp`, added by the trainer)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kernels.gradient_penalty import gradient_penalty_reference

from .layers import resolve_kernels
from .vgg import IMAGENET_MEAN, IMAGENET_STD


class PerceptualLoss(nn.Module):
    """MSE between VGG features of restored and sharp images (inputs in [-1, 1]).

    normalize=False feeds [-1, 1] directly, as the authors' code did; True maps to ImageNet mean/std first,
    which is what ImageNet VGG weights were trained on.
    """

    def __init__(self, features: nn.Module, normalize: bool = False) -> None:
        super().__init__()
        self.features = features
        self.normalize = normalize
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def _prep(self, x: torch.Tensor) -> torch.Tensor:
        if self.normalize:
            x = ((x + 1) / 2 - self.mean) / self.std
        return x

    def forward(self, restored: torch.Tensor, sharp: torch.Tensor) -> torch.Tensor:
        f_fake = self.features(self._prep(restored))
        with torch.no_grad():
            f_real = self.features(self._prep(sharp))
        return F.mse_loss(f_fake.float(), f_real.float())


def pixel_loss(restored: torch.Tensor, sharp: torch.Tensor) -> torch.Tensor:
    """Mean absolute error in pixel space ([-1, 1] images): not in the paper, an optional extra content term."""
    return F.l1_loss(restored.float(), sharp.float())


def critic_loss(d_real: torch.Tensor, d_fake: torch.Tensor) -> torch.Tensor:
    """WGAN critic loss without GP: mean D(fake) - mean D(real) (minimised)."""
    return d_fake.float().mean() - d_real.float().mean()


def generator_adv_loss(d_fake: torch.Tensor) -> torch.Tensor:
    """WGAN generator loss: -mean D(fake)."""
    return -d_fake.float().mean()


def wasserstein_estimate(d_real: torch.Tensor, d_fake: torch.Tensor) -> torch.Tensor:
    """mean D(real) - mean D(fake): the critic's estimate of the Wasserstein-1 distance."""
    return d_real.float().mean() - d_fake.float().mean()


def compute_gp(
    critic: nn.Module, real: torch.Tensor, fake: torch.Tensor, weight: float, mode: str, kernels: str = "torch"
) -> torch.Tensor:
    """The weighted gradient penalty: 'torch' = plain autograd (the reference), 'triton' = the fused kernels of
    `kernels.gradient_penalty`, 'auto' as `deblurgan.layers.resolve_kernels` for the inputs' device."""
    if resolve_kernels(kernels, real.device) == "triton":
        from kernels.gradient_penalty import gradient_penalty

        return gradient_penalty(critic, real, fake, weight, mode)
    return gradient_penalty_reference(critic, real, fake, weight, mode)
