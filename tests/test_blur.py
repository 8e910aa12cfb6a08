"""deblurgan.blur: trajectories, PSFs and blurring against the authors' loop (bench/reference_blur.py) and scipy."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage, stats

from bench.reference_blur import reference_psfs, reference_trajectory
from deblurgan import blur
from deblurgan.blur import (
    FRACTIONS,
    blur_batch,
    blur_image,
    psf_sheet,
    random_psfs,
    random_trajectories,
    random_trajectory,
    trajectory_to_psfs,
)
from deblurgan.errors import DeblurGANError

# Tolerances: float64 paths agree with scipy to rounding (1e-10); float32 FFT to 2e-6 of the [0, 1] range.
TOL = {np.float64: 1e-10, np.float32: 2e-6}


def _scipy_blur(img, psf):
    if img.ndim == 2:
        return ndimage.convolve(img, psf, mode="mirror")
    return np.stack([ndimage.convolve(img[..., c], psf, mode="mirror") for c in range(img.shape[2])], axis=-1)


@pytest.fixture(scope="module")
def many():
    return random_psfs(np.random.default_rng(123), 48)


def test_psfs_nonnegative_normalised_and_inside_canvas(many):
    assert many.shape == (48, 4, 64, 64) and many.dtype == np.float32
    assert (many >= 0).all()
    np.testing.assert_allclose(many.sum(axis=(2, 3)), 1.0, atol=1e-5)
    traj = random_trajectories(np.random.default_rng(123), 48)
    assert traj.real.min() >= 0 and traj.imag.min() >= 0
    assert traj.real.max() <= 63 and traj.imag.max() <= 63
    # bounding box centred on the PSF origin (32, 32)
    np.testing.assert_allclose((traj.real.min(1) + traj.real.max(1)) / 2, 32, atol=1e-9)
    np.testing.assert_allclose((traj.imag.min(1) + traj.imag.max(1)) / 2, 32, atol=1e-9)


@settings(max_examples=25, deadline=None)
@given(
    canvas=st.integers(6, 80),
    len_frac=st.floats(0.01, 1.0),
    iters=st.integers(2, 400),
    expl=st.one_of(st.none(), st.just(0.0), st.floats(1e-6, 0.05)),
    fractions=st.lists(st.floats(0.001, 1.0), min_size=1, max_size=5, unique=True).map(sorted),
    seed=st.integers(0, 2**32 - 1),
)
def test_psf_invariants_for_any_parameters(canvas, len_frac, iters, expl, fractions, seed):
    max_len = len_frac * 2 * (canvas - 1 - canvas // 2)
    traj = random_trajectories(np.random.default_rng(seed), 3, canvas, iters, max_len, expl)
    psfs = blur.trajectories_to_psfs(traj, canvas, fractions)
    assert psfs.shape == (3, len(fractions), canvas, canvas)
    assert (psfs >= 0).all()
    np.testing.assert_allclose(psfs.sum(axis=(2, 3)), 1.0, atol=1e-5)
    assert np.abs(np.diff(traj, axis=1)).sum(axis=1) == pytest.approx(max_len, rel=1e-6)


def test_psfs_grow_with_exposure(many):
    support = (many > 0).sum(axis=(2, 3))
    assert (np.diff(support, axis=1) >= 0).all()  # accumulated over time: later fractions contain earlier ones
    assert (support[:, -1] > support[:, 0]).mean() > 0.9


def test_path_length_is_max_len():
    x = random_trajectory(np.random.default_rng(5), max_len=40)
    assert np.abs(np.diff(x)).sum() == pytest.approx(40, rel=1e-9)


def test_same_seed_same_kernels_and_other_seed_differs():
    a = random_psfs(np.random.default_rng(7), 3)
    b = random_psfs(np.random.default_rng(7), 3)
    c = random_psfs(np.random.default_rng(8), 3)
    assert np.array_equal(a, b)
    assert not np.allclose(a, c)


def test_one_at_a_time_equals_batched(monkeypatch):
    single = trajectory_to_psfs(random_trajectory(np.random.default_rng(11), expl=0.008))
    assert np.array_equal(single, random_psfs(np.random.default_rng(11), 1, expl=0.008)[0])
    monkeypatch.setattr(blur, "SCALAR_LOOP_MAX", 0)  # force the numpy batch loop
    batched = random_trajectories(np.random.default_rng(3), 6)
    monkeypatch.setattr(blur, "SCALAR_LOOP_MAX", 10**6)  # force the plain-Python loop
    scalar = random_trajectories(np.random.default_rng(3), 6)
    np.testing.assert_allclose(batched, scalar, rtol=0, atol=1e-9)


def test_a_cancelled_velocity_keeps_its_direction():
    """If a step ever sums to a zero velocity, the walk keeps the last direction instead of dividing by zero."""
    steps = 5
    zeros = np.zeros((1, steps), dtype=np.complex128)
    no = np.zeros((1, steps), dtype=bool)
    scalar = blur._walk_scalar(0j, no[0], zeros[0], zeros[0], 0.0, 0.5)
    batched = blur._walk_batched(np.zeros(1, np.complex128), no, zeros, zeros, np.zeros(1), 0.5)[0]
    np.testing.assert_allclose(scalar, 0.5 * np.arange(steps + 1))
    np.testing.assert_allclose(batched, scalar)


def test_full_exposure_psf_equals_authors_splat():
    """For the full exposure both use weight 1 per sample t >= 1: the splat must agree exactly (after /sum)."""
    rng = np.random.default_rng(2)
    checked = 0
    for _ in range(6):
        x, _, _ = reference_trajectory(rng, iters=300, max_len=40)
        if x.real.max() > 62 or x.imag.max() > 62:  # authors' clamping would move those samples
            continue
        ref = reference_psfs(x, canvas=64, fractions=(1.0,))[-1]
        ours = trajectory_to_psfs(x, canvas=64, fractions=(1.0,))[0]
        np.testing.assert_allclose(ours, ref / ref.sum(), atol=1e-7)
        checked += 1
    assert checked >= 3


def test_statistics_match_the_authors_loop():
    """Path extent and PSF support follow the same distributions as the reimplemented reference loop."""
    rng = np.random.default_rng(2024)
    n_ref = 40  # the reference loop costs ~0.1 s per kernel
    ref_extent, ref_support = [], []
    for _ in range(n_ref):
        x, length, _ = reference_trajectory(rng)
        assert length == pytest.approx(60, rel=1e-9)
        ref_extent.append(np.hypot(np.ptp(x.real), np.ptp(x.imag)))
        ref_support.append((reference_psfs(x)[-1] > 1e-4).sum())
    traj = random_trajectories(np.random.default_rng(99), 400)
    ours_extent = np.hypot(np.ptp(traj.real, axis=1), np.ptp(traj.imag, axis=1))
    ours_support = ((blur.trajectories_to_psfs(traj)[:, -1] * (1999 / 2000)) > 1e-4).sum(axis=(1, 2))
    assert stats.ks_2samp(ref_extent, ours_extent).pvalue > 1e-3
    assert stats.ks_2samp(ref_support, ours_support).pvalue > 1e-3
    # and the test has teeth: a different max_len is told apart
    short = random_trajectories(np.random.default_rng(99), 400, max_len=30)
    assert stats.ks_2samp(ref_extent, np.hypot(np.ptp(short.real, axis=1), np.ptp(short.imag, axis=1))).pvalue < 1e-3


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape", [(37, 53, 3), (41, 29), (9, 12, 2), (1, 7), (2, 3, 1)])
def test_blur_equals_scipy_convolution(dtype, shape):
    rng = np.random.default_rng(sum(shape))
    img = rng.random(shape).astype(dtype)
    for k in (random_psfs(rng, 1)[0, -1], rng.random((7, 7)), rng.random((6, 6))):  # ours, odd, even
        k = (k / k.sum()).astype(np.float64)
        out = blur_image(img, k)
        assert out.shape == img.shape and out.dtype == dtype
        np.testing.assert_allclose(out, _scipy_blur(img.astype(np.float64), k), atol=TOL[dtype], rtol=0)


def test_blur_batch_per_image_kernels():
    rng = np.random.default_rng(4)
    imgs = rng.random((3, 2, 30, 34))
    psfs = random_psfs(rng, 3)[:, 2]
    out = blur_batch(torch.from_numpy(imgs), torch.from_numpy(psfs).double())
    for i in range(3):
        ref = _scipy_blur(imgs[i].transpose(1, 2, 0), psfs[i].astype(np.float64)).transpose(2, 0, 1)
        np.testing.assert_allclose(out[i].numpy(), ref, atol=1e-10)


def test_gamma_blurs_in_linear_light():
    rng = np.random.default_rng(6)
    img = rng.random((24, 31, 3))
    k = rng.random((5, 5))
    k /= k.sum()
    ref = np.clip(_scipy_blur(img**2.2, k), 0, 1) ** (1 / 2.2)
    np.testing.assert_allclose(blur_image(img, k, gamma=2.2), ref, atol=1e-10)


def test_delta_kernel_is_identity_and_uint8_is_scaled():
    rng = np.random.default_rng(8)
    img = (rng.random((20, 22, 3)) * 255).astype(np.uint8)
    delta = np.zeros((64, 64))
    delta[32, 32] = 1
    np.testing.assert_allclose(blur_image(img, delta), img / 255.0, atol=1e-6)


def test_noise_is_seeded_and_has_the_asked_strength():
    rng = np.random.default_rng(9)
    img = np.full((64, 64), 0.5)
    delta = np.ones((1, 1))
    a = blur_image(img, delta, noise_std=0.05, rng=np.random.default_rng(1))
    b = blur_image(img, delta, noise_std=0.05, rng=np.random.default_rng(1))
    assert np.array_equal(a, b)
    assert np.std(a) == pytest.approx(0.05, rel=0.1)
    p = blur_image(img + 0 * rng.random(img.shape), delta, poisson_peak=100.0, rng=np.random.default_rng(2))
    assert p.mean() == pytest.approx(0.5, abs=0.01)
    assert np.std(p) == pytest.approx(np.sqrt(0.5 * 100) / 100, rel=0.1)


@pytest.mark.parametrize(
    "call",
    [
        lambda: random_trajectory(np.random.default_rng(0), canvas=32, max_len=60),
        lambda: random_trajectory(np.random.default_rng(0), expl=1e-300),
        lambda: trajectory_to_psfs(np.array([0, 70 + 70j])),
        lambda: trajectory_to_psfs(np.array([10, np.nan])),
        lambda: trajectory_to_psfs(np.array([10, 20 + 20j]), fractions=(0.5, 0.1)),
        lambda: trajectory_to_psfs(np.array([10, 20 + 20j]), fractions=(0.0, 1.0)),
        lambda: blur_image(np.zeros((4, 4, 3, 1)), np.ones((3, 3))),
        lambda: blur_image(np.zeros((4, 4)), np.zeros((3, 3))),
        lambda: blur_image(np.zeros((4, 4), dtype=np.int32), np.ones((3, 3))),
        lambda: blur_batch(torch.zeros(2, 3, 8, 8), torch.ones(3, 3, 3)),
    ],
)
def test_bad_input_is_a_user_error(call):
    with pytest.raises(DeblurGANError):
        call()


def test_default_fractions_and_sheet(many):
    assert FRACTIONS == (0.01, 0.1, 0.5, 1.0)
    sheet = psf_sheet(many[:10, -1], cols=4)
    assert sheet.dtype == np.uint8 and sheet.shape == (3 * 66 + 2, 4 * 66 + 2)
    assert sheet.max() == 255


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_blur_batch_cuda_matches_cpu():
    rng = np.random.default_rng(10)
    imgs = torch.from_numpy(rng.random((4, 3, 256, 256), dtype=np.float32))
    psfs = torch.from_numpy(random_psfs(rng, 4)[:, -1])
    ref = blur_batch(imgs.double(), psfs.double())
    gpu = blur_batch(imgs.cuda(), psfs.cuda())
    assert gpu.device.type == "cuda" and gpu.dtype == torch.float32
    torch.testing.assert_close(gpu.cpu().double(), ref, atol=1e-5, rtol=0)  # float32 cuFFT vs float64
    half = blur_batch(imgs.cuda().half(), psfs.cuda())
    torch.testing.assert_close(half.cpu().double(), ref, atol=2e-3, rtol=0)  # fp16 storage, fp32 FFT
    noisy = blur_batch(imgs.cuda(), psfs.cuda(), noise_std=0.01, poisson_peak=1000.0)
    assert (noisy - gpu).abs().mean().item() > 1e-3
