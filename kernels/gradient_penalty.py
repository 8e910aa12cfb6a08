"""WGAN-GP gradient penalty (Gulrajani et al. 2017) as used by DeblurGAN.

`gradient_penalty_reference` is the plain-autograd definition every faster path is tested against.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

GP_MODES = ("sample", "pixel")


def draw_eps(batch: int, mode: str, device: torch.device, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Interpolation weights, shape (B, 1, 1, 1): one per sample ('sample'), one per batch ('pixel')."""
    if mode == "sample":
        return torch.rand(batch, 1, 1, 1, device=device, dtype=dtype)
    if mode == "pixel":
        return torch.rand(1, 1, 1, 1, device=device, dtype=dtype).expand(batch, 1, 1, 1)
    raise ValueError(f"mode must be one of {GP_MODES} (got {mode!r})")


def gradient_penalty_reference(
    critic: Callable[[torch.Tensor], torch.Tensor],
    real: torch.Tensor,
    fake: torch.Tensor,
    weight: float = 10.0,
    mode: str = "sample",
    eps: torch.Tensor | None = None,
) -> torch.Tensor:
    """weight * mean((||grad D(x_hat)|| - 1)^2), x_hat = eps*real + (1-eps)*fake (a detached leaf).

    mode 'sample': the paper's norm over C*H*W per sample.
    mode 'pixel': the authors' code, norm over channels at every pixel (`gradients.norm(2, dim=1)`).
    The result is differentiable w.r.t. the critic's parameters (double backward).
    """
    if real.shape != fake.shape:
        raise ValueError(f"real and fake shapes differ: {tuple(real.shape)} vs {tuple(fake.shape)}")
    if eps is None:
        eps = draw_eps(real.shape[0], mode, real.device, real.dtype)
    elif mode not in GP_MODES:
        raise ValueError(f"mode must be one of {GP_MODES} (got {mode!r})")
    x_hat = (eps * real.detach() + (1 - eps) * fake.detach()).requires_grad_(True)
    scores = critic(x_hat)
    (grad,) = torch.autograd.grad(scores.sum(), x_hat, create_graph=True)
    if mode == "sample":
        norm = grad.flatten(1).norm(2, dim=1)
    else:
        norm = grad.norm(2, dim=1)
    return weight * ((norm - 1) ** 2).mean()
