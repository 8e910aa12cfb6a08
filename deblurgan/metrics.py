"""PSNR and SSIM exactly as scikit-image computes them on uint8 RGB images, plus a torch batch PSNR.

`psnr(a, b)` = `skimage.metrics.peak_signal_noise_ratio(a, b, data_range=255)`.
`ssim(a, b)` = `skimage.metrics.structural_similarity(a, b, channel_axis=2, data_range=255)`: a 7x7 uniform
window, K1=0.01, K2=0.03, sample covariance, computed per RGB channel and averaged. The GoPro/DeblurGAN
papers report MATLAB's `ssim` (11x11 Gaussian window, sigma 1.5, usually on grayscale or per channel), so
numbers from here are comparable with each other and with skimage, not digit-for-digit with those tables
(`ssim(a, b, gaussian=True)` uses the Gaussian-window settings).
"""

from __future__ import annotations

import numpy as np
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from .errors import DeblurGANError


def _check(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a), np.asarray(b)
    for name, x in (("a", a), ("b", b)):
        if x.dtype != np.uint8:
            raise DeblurGANError(f"metrics expect uint8 images; {name} is {x.dtype}")
        if x.ndim != 3 or x.shape[2] != 3:
            raise DeblurGANError(f"metrics expect HxWx3 RGB images; {name} has shape {x.shape}")
    if a.shape != b.shape:
        raise DeblurGANError(f"image sizes differ: {a.shape} vs {b.shape}")
    if min(a.shape[:2]) < 7:
        raise DeblurGANError(f"SSIM needs images of at least 7x7 pixels, got {a.shape[:2]}")
    return a, b


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two uint8 HxWx3 images (inf when identical)."""
    a, b = _check(a, b)
    with np.errstate(divide="ignore"):  # identical images: inf, without a RuntimeWarning
        return float(peak_signal_noise_ratio(a, b, data_range=255))


def ssim(a: np.ndarray, b: np.ndarray, gaussian: bool = False) -> float:
    """Mean SSIM of two uint8 HxWx3 images (skimage defaults, per channel, averaged).

    `gaussian=True` uses the settings of Wang et al. 2004 that MATLAB's `ssim` follows (11x11 Gaussian window,
    sigma 1.5, population covariance): closer to published tables, still not identical to them.
    """
    a, b = _check(a, b)
    if gaussian:
        return float(
            structural_similarity(
                a, b, channel_axis=2, data_range=255, gaussian_weights=True, sigma=1.5, use_sample_covariance=False
            )
        )
    return float(structural_similarity(a, b, channel_axis=2, data_range=255))


def psnr_batch(pred: torch.Tensor, target: torch.Tensor, quantize: bool = True) -> torch.Tensor:
    """Per-image PSNR (dB) of N x C x H x W tensors in [-1, 1], for validation during training.

    With `quantize=True` both are rounded to uint8 levels first, so the result equals `psnr()` on the
    images that would be saved (up to float rounding); identical images give inf.
    """
    if pred.shape != target.shape or pred.ndim != 4:
        raise DeblurGANError(f"psnr_batch expects two equal N x C x H x W tensors, got {pred.shape}, {target.shape}")
    p = (pred.detach().double().clamp(-1, 1) + 1) * 127.5
    t = (target.detach().double().clamp(-1, 1) + 1) * 127.5
    if quantize:
        p, t = torch.round(p), torch.round(t)
    mse = ((p - t) ** 2).mean(dim=(1, 2, 3))
    return 10 * torch.log10(255.0**2 / mse)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """3xHxW in [-1, 1] -> HxWx3 uint8."""
    x = ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(1, 2, 0).numpy()


def psnr_ssim(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(PSNR, SSIM) of two uint8 HxWx3 images."""
    return psnr(a, b), ssim(a, b)
