"""Blur synthesis speed: kernels vs the authors' loop (same run), blurred 256-crops per second (CPU and GPU).

pytest bench/test_bench_blur.py --benchmark
"""

import numpy as np
import pytest
import torch

from bench.reference_blur import reference_kernel
from bench.timing import device, measure, on_gpu, pick, time_cpu
from deblurgan.blur import blur_batch, blur_image, random_psfs
from deblurgan.data import build_dataset

CROP = 256  # the training crop; kept at full size on CPU too (a batch of 8 takes well under a second)


@pytest.fixture(scope="module")
def authors_ms():
    """Median ms of one trajectory + 4 PSFs with the authors' per-sample loop, measured in this run."""
    rng = np.random.default_rng(0)
    return time_cpu(lambda: reference_kernel(rng), warmup=1, rep=3)


def test_bench_kernels_reference(benchmark):
    benchmark.group = "data"
    rng = np.random.default_rng(0)
    psfs = measure(
        benchmark, lambda: reference_kernel(rng), case="trajectory+4 psfs", backend="reference", shape=[4, 64, 64]
    )
    assert len(psfs) == 4


@pytest.mark.parametrize("n", [1, 256])
def test_bench_kernels_ours(benchmark, authors_ms, n):
    benchmark.group = "data"
    rng = np.random.default_rng(0)
    psfs = measure(
        benchmark,
        lambda: random_psfs(rng, n),
        case="trajectory+4 psfs",
        backend=f"numpy n={n}",
        shape=[4, 64, 64],
        items=n,
        rounds=5 if n == 1 else 3,
    )
    assert psfs.shape == (n, 4, 64, 64)
    np.testing.assert_allclose(psfs.sum(axis=(2, 3)), 1, atol=1e-5)
    per_item_ms = benchmark.stats.stats.median * 1e3 / n
    benchmark.extra_info["authors_ms"] = authors_ms
    benchmark.extra_info["speedup_vs_authors"] = authors_ms / per_item_ms


@pytest.mark.parametrize("with_kernels", [False, True])
def test_bench_blur_crops(benchmark, with_kernels):
    """Blurred 256x256 RGB crops per call (items): FFT blur on the bench device, optionally drawing fresh PSFs."""
    benchmark.group = "data"
    b = pick(cpu=8, cuda=64)
    dev = device()
    g = torch.Generator().manual_seed(0)
    crops = torch.rand(b, 3, CROP, CROP, generator=g).to(dev)
    rng = np.random.default_rng(0)
    fixed = torch.from_numpy(random_psfs(rng, b)[:, -1]).to(dev)

    def run():
        psfs = torch.from_numpy(random_psfs(rng, b)[:, -1]).to(dev) if with_kernels else fixed
        return blur_batch(crops, psfs)

    out = measure(
        benchmark,
        run,
        case="blur 256 crops" + (" + new psfs" if with_kernels else ""),
        backend="torch fft",
        shape=[b, 3, CROP, CROP],
        dtype=torch.float32,
        items=b,
        bytes=2 * crops.numel() * 4,
    )
    assert out.shape == crops.shape
    if not with_kernels:  # check what was timed against the numpy path
        ref = blur_image(crops[0].permute(1, 2, 0).cpu().numpy(), fixed[0].cpu().numpy())
        np.testing.assert_allclose(out[0].permute(1, 2, 0).cpu().numpy(), ref, atol=2e-5)
    benchmark.extra_info["crops_per_s"] = (
        b / (benchmark.extra_info.get("device_ms") or benchmark.stats.stats.median * 1e3) * 1e3
    )


@pytest.mark.skipif(on_gpu(), reason="the dataset runs in CPU DataLoader workers; one CPU number is enough")
def test_bench_synthetic_dataset_item(benchmark):
    """One training item of the on-the-fly synthetic dataset (random crop 256, new kernel, blur, flip) on CPU."""
    benchmark.group = "data"
    ds = build_dataset(None, "train", crop=CROP)
    ds[0]  # load and cache the source images
    item = measure(benchmark, lambda: ds[1], case="synthetic item 256", backend="dataset", rounds=5)
    assert item["blur"].shape == (3, CROP, CROP)
