"""This run's hardware ceilings (measured first), then DeblurGAN generator vs DeepDeblur (Nah et al. 2017) forward.

Run: `pytest bench/test_bench_models.py --benchmark` (720p, batch 1 on CUDA; a tiny 36x64 stand-in on CPU).
The report (`python -m bench.report RESULTS.json`) takes the speed ratio from the same run, and the
copy-bandwidth / matmul calibration below is the ceiling its "% of copy bandwidth" column uses.
"""

from __future__ import annotations

import functools

import pytest
import torch

from bench.deepdeblur import DeepDeblur, count_flops
from bench.timing import device, full_size, measure, on_gpu, pick, size_label, sizes, tensor_bytes, tf32_convs
from deblurgan.networks import Generator, count_parameters

MODELS = {"DeblurGAN": Generator, "DeepDeblur": DeepDeblur}
DTYPES = [torch.float32, pytest.param(torch.float16, marks=pytest.mark.skipif(not on_gpu(), reason="fp16 needs CUDA"))]
FULL_720P = (1, 3, 720, 1280)


@functools.cache
def _gflop_720p(name: str) -> float:
    return count_flops(MODELS[name](), FULL_720P) / 1e9


def test_bench_calibration_copy(benchmark) -> None:
    """Device-to-device copy of a large tensor: the bandwidth ceiling of memory-bound kernels in this run."""
    n = pick(cpu=16 * 2**20, cuda=256 * 2**20)  # fp32 elements: 64 MiB on CPU, 1 GiB on CUDA
    src = torch.randn(n, device=device())
    dst = torch.empty_like(src)
    benchmark.group = "calibration"
    measure(
        benchmark, lambda: dst.copy_(src), case="copy", backend="calibration", bytes=tensor_bytes(src, dst), shape=[n]
    )
    assert torch.equal(dst, src)


MATMUL_DTYPES = pick(cpu=[torch.float32, torch.bfloat16], cuda=[torch.bfloat16])


@pytest.mark.parametrize("dtype", MATMUL_DTYPES, ids=lambda d: str(d).removeprefix("torch."))
def test_bench_calibration_matmul(benchmark, dtype: torch.dtype) -> None:
    """Dense matmul throughput: the compute ceiling of this run (bf16 on CUDA; fp32 and bf16 on CPU).

    On CPU at full size (DEBLURGAN_BENCH_FULL=1) the matrices are 2048 x 2048, large enough for the fp32 rate
    to approach the cores' peak (512 x 512 otherwise, which only shows that the row runs).
    """
    n = pick(cpu=2048 if full_size() else 512, cuda=8192)
    a = torch.randn(n, n, device=device(), dtype=dtype)
    b = torch.randn(n, n, device=device(), dtype=dtype)
    benchmark.group = "calibration"
    case = "matmul" if dtype == pick(cpu=torch.float32, cuda=torch.bfloat16) else f"matmul {str(dtype)[6:]}"
    out = measure(benchmark, lambda: a @ b, case=case, backend="calibration", flop=2 * n**3, shape=[n, n], dtype=dtype)
    ref = a[:4].float() @ b.float()
    torch.testing.assert_close(out[:4].float(), ref, rtol=2e-2, atol=2e-2 * n**0.5)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("name", list(MODELS))
def test_bench_model_forward(benchmark, name: str, dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    model = MODELS[name]().to(device(), dtype).eval()
    h, w = sizes()["720p"]
    x = torch.rand(1, 3, h, w, device=device(), dtype=dtype) * 2 - 1
    benchmark.group = "models"

    def forward() -> torch.Tensor:
        with torch.inference_mode():
            out = model(x)
        return out[-1] if isinstance(out, list) else out

    out = forward()  # checked before timing: a wrong model is never timed
    assert out.shape == x.shape and torch.isfinite(out).all()
    if dtype != torch.float32:  # the timed half-precision model still computes the fp32 model's function
        torch.manual_seed(0)
        ref = MODELS[name]().to(device()).eval()
        with torch.inference_mode():
            expected = ref(x.float())
        expected = expected[-1] if isinstance(expected, list) else expected
        torch.testing.assert_close(out.float(), expected, atol=3e-2, rtol=3e-2)  # fp16 vs fp32: ~7e-3 seen on CPU
        del ref, expected

    out = measure(
        benchmark,
        forward,
        case=f"forward {size_label('720p', (h, w))} b1",
        backend="eager",
        model=name,
        params=count_parameters(model),
        gflop_720p=_gflop_720p(name),
        flop=_gflop_720p(name) * 1e9 * (h * w) / (720 * 1280),
        shape=[1, 3, h, w],
        dtype=dtype,
        full_size=(h, w) == (720, 1280),
        tf32_convs=tf32_convs(dtype),  # fp32 on CUDA: PyTorch's default lets cuDNN use TF32 (fp16 rows: False)
    )
    assert out.shape == x.shape and torch.isfinite(out).all()
