"""The Deblurrer end to end: untiled vs tiled (whole-image IN statistics, exact) vs tiled (per-tile, one pass).

Run: `pytest bench/test_bench_deblur.py --benchmark`. On CUDA: the full generator (random weights) on a
1024x1024 image, tiles of 512 px (the exact mode's overlap is twice the receptive field: 192 px); on CPU a small
generator (ngf=8, 1 block) on 160x200 with 96 px tiles. Every tiled result is checked against the untiled one:
the exact modes before timing, in full fp32 (`exact_fp32`: TF32 convolutions, PyTorch's CUDA default, are
expected to move outputs past the 1e-3 bound; not measured on a GPU yet), the per-tile mode (approximate, bound
1.0) on the timed output. Timing uses the defaults (TF32 allowed). Tiled calls are expected to take seconds on
CUDA (not measured): those modes get 1 warm-up call and 3 timed ones.
Also the 16-bit PNG codec (numpy + zlib) on one 512x512 RGB image.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from bench.timing import device, measure, on_gpu, pick, tf32_convs
from deblurgan.config import GeneratorConfig
from deblurgan.inference import Deblurrer, TorchRunner, pad_to_multiple
from deblurgan.io import _decode_png16, encode_png16
from deblurgan.networks import Generator
from deblurgan.precision import exact_fp32

SHAPE = pick(cpu=(160, 200), cuda=(1024, 1024))
TILE = pick(cpu=96, cuda=512)
MODES = {"untiled": {}, "tiled-global": {"tile": TILE}, "tiled-tile": {"tile": TILE, "tile_stats": "tile"}}


@functools.cache
def runner() -> TorchRunner:
    torch.manual_seed(0)
    cfg = pick(cpu=GeneratorConfig(ngf=8, n_blocks=1), cuda=GeneratorConfig())
    return TorchRunner(Generator(cfg), device=device())


@functools.cache
def image() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.rand(1, 3, *SHAPE) * 2 - 1


@functools.cache
def untiled() -> torch.Tensor:
    """The reference: the untiled result in full fp32."""
    with exact_fp32():
        return Deblurrer(runner=runner()).deblur_tensor(image())


@pytest.mark.parametrize("mode", list(MODES))
def test_bench_deblur_tiling(benchmark, mode: str) -> None:
    d = Deblurrer(runner=runner(), batch_size=pick(cpu=4, cuda=4), **MODES[mode])
    plan = d.plan(*pad_to_multiple(image()).shape[-2:])
    exact = mode != "tiled-tile"
    if exact:  # before timing, without TF32: exact tiling must match the untiled result to rounding
        with exact_fp32():
            err = (d.deblur_tensor(image()) - untiled()).abs().max().item()
        assert err < 1e-3, f"{mode}: max abs {err:.3g} vs untiled (fp32, no TF32)"
    slow = on_gpu() and mode != "untiled"  # a tiled 1024x1024 call takes seconds on CUDA
    benchmark.group = "inference"
    y = measure(
        benchmark,
        lambda: d.deblur_tensor(image()),
        rounds=pick(cpu=3, cuda=3 if slow else None),
        warmup=1 if slow else None,
        case=f"deblur {SHAPE[0]}x{SHAPE[1]}",
        backend=mode,
        shape=list(SHAPE),
        dtype="float32",
        tiles=len(plan.windows()) if plan else 1,
        overlap=plan.overlap if plan else 0,
        tf32_convs=tf32_convs(),  # timed with PyTorch's defaults
    )
    assert torch.isfinite(y).all()
    if not exact:  # per-tile statistics: approximate, but far from the trivial bound of 2 in [-1, 1]
        err = (y - untiled()).abs().max().item()
        assert err < 1.0, f"{mode}: max abs {err:.3g} vs untiled"
    benchmark.extra_info["max_abs_vs_untiled"] = err


def test_bench_png16_codec(benchmark) -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 65536, (512, 512, 3), dtype=np.uint16)
    benchmark.group = "data"
    out = measure(
        benchmark,
        lambda: _decode_png16(encode_png16(img), "bench.png"),
        rounds=3,
        warmup=1,
        case="png16 encode+decode 512x512x3",
        backend="libpng (imagecodecs)",
        bytes=2 * img.nbytes,
    )
    np.testing.assert_array_equal(out, img)
