"""PSNR/SSIM equal scikit-image's on the same uint8 images; clear errors; the torch batch helper."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from deblurgan.errors import DeblurGANError
from deblurgan.metrics import psnr, psnr_batch, ssim

RNG = np.random.default_rng(7)


def pair(h=31, w=45, noise=25):
    a = RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)
    b = np.clip(a.astype(int) + RNG.integers(-noise, noise + 1, a.shape), 0, 255).astype(np.uint8)
    return a, b


@pytest.mark.parametrize("shape", [(31, 45), (7, 7), (64, 48)])
def test_equal_to_skimage(shape):
    a, b = pair(*shape)
    assert psnr(a, b) == peak_signal_noise_ratio(a, b, data_range=255)
    assert ssim(a, b) == structural_similarity(a, b, channel_axis=2, data_range=255)
    assert 10 < psnr(a, b) < 40 and 0 < ssim(a, b) < 1


def test_known_values():
    a = np.full((8, 8, 3), 100, np.uint8)
    b = a.copy()
    b[0, 0, 0] = 110  # MSE = 100 / 192
    assert psnr(a, b) == pytest.approx(10 * np.log10(255**2 * 192 / 100))
    assert psnr(a, a) == float("inf")
    assert ssim(a, a) == pytest.approx(1.0)


@pytest.mark.parametrize(
    "a,b,match",
    [
        (np.zeros((8, 8, 3), np.float32), np.zeros((8, 8, 3), np.uint8), "uint8"),
        (np.zeros((8, 8), np.uint8), np.zeros((8, 8), np.uint8), "HxWx3"),
        (np.zeros((8, 8, 4), np.uint8), np.zeros((8, 8, 4), np.uint8), "HxWx3"),
        (np.zeros((8, 8, 3), np.uint8), np.zeros((8, 9, 3), np.uint8), "differ"),
        (np.zeros((5, 8, 3), np.uint8), np.zeros((5, 8, 3), np.uint8), "7x7"),
    ],
)
def test_validation(a, b, match):
    with pytest.raises(DeblurGANError, match=match):
        psnr(a, b)
    with pytest.raises(DeblurGANError, match=match):
        ssim(a, b)


def test_psnr_batch_matches_psnr_on_saved_images():
    pred = torch.rand(3, 3, 20, 24) * 2 - 1
    target = (pred + 0.1 * torch.randn_like(pred)).clamp(-1, 1)
    got = psnr_batch(pred, target)
    for i in range(3):
        a = torch.round((pred[i] + 1) * 127.5).permute(1, 2, 0).numpy().astype(np.uint8)
        b = torch.round((target[i] + 1) * 127.5).permute(1, 2, 0).numpy().astype(np.uint8)
        assert got[i].item() == pytest.approx(psnr(a, b), abs=1e-9)
    unq = psnr_batch(pred, target, quantize=False)
    assert torch.allclose(unq, got, atol=0.2) and not torch.equal(unq, got)


def test_psnr_batch_shape_error():
    with pytest.raises(DeblurGANError):
        psnr_batch(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 9))


def test_gaussian_ssim_equals_skimage_with_wang_settings():
    a, b = pair(40, 52)
    expected = structural_similarity(
        a, b, channel_axis=2, data_range=255, gaussian_weights=True, sigma=1.5, use_sample_covariance=False
    )
    assert ssim(a, b, gaussian=True) == expected != ssim(a, b)
