"""Generator inference per deploy backend: eager fp32/bf16/fp16, torch.compile, AOTInductor, onnxruntime, TensorRT.

Run: `pytest bench/test_bench_inference.py --benchmark`. On CUDA: the full generator (11.4 M params) at 256x256 and
1280x720, batch 1 and 8, except torch.compile: 1280x720 batch 1 only (see below). On CPU: eager fp32 and bf16
(`TorchRunner(precision="bf16")`: autocast, instance norm in fp32), onnxruntime, AOTInductor fp32 and bf16 (the same
autocast inside the compiled graph; skipped where it does not compile); a small generator (ngf=8, 1 block) at tiny
stand-in sizes, batch 1, about a minute; `DEBLURGAN_BENCH_FULL=1` runs the full generator at 1280x720, batch 1, on
CPU too (minutes; the bf16 rows are skipped where the CPU has no native bf16: emulated bf16 is slower than fp32 and
its time says nothing of the bf16 path). Each row records `ms_per_frame`, `fps` and `flop` (the report derives
GFLOP/s and the share of the matmul ceiling of its dtype). Every case runs once before timing (compiles, loads,
autotunes) and that output is checked against eager fp32 first (fp32 backends: <= 1e-4 max abs on CPU, 1e-2 on CUDA
where convolutions may use TF32; fp16/bf16 backends: >= 40 dB PSNR on random inputs): a wrong backend is never
timed.

Compile / export / engine builds happen once per backend, untimed, and are expected to be slow on CUDA (not
measured yet; on the 2-core CPU an AOTInductor build of the full model takes about 2 minutes): the cheap backends
run first, so a time limit (bench/gpu_check.sh, SIGINT) still leaves their results. For every row, raise the
whole budget (BUDGET_S=540 bash bench/gpu_check.sh OUT stretches every phase).
torch.compile uses `dynamic=False`: every input shape is its own compile (without it, the second shape would
recompile with dynamic shapes and later rows would time dynamic-shape kernels), so on CUDA it runs at the
issue's case only, 1280x720 batch 1 fp16; a compile per size and batch would not fit the suite's time limit.
Batch 8 frames/s come from eager, onnxruntime, AOTInductor and TensorRT. AOTInductor is built once per backend
as the deployable package (dynamic batch, H, W; `python -m export.aoti`) and serves every size and batch.
"""

from __future__ import annotations

import functools
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from bench.deepdeblur import count_flops
from bench.timing import device, measure, on_gpu, pick, size_label, sizes, tf32_convs
from deblurgan.config import GeneratorConfig
from deblurgan.inference import TorchRunner, keep_norms_fp32
from deblurgan.networks import Generator
from deblurgan.precision import cpu_has_native_bf16

FULL = on_gpu() or os.environ.get("DEBLURGAN_BENCH_FULL") == "1"
BATCHES = pick(cpu=[1], cuda=[1, 8])
SIZES = pick(cpu={"720p": (720, 1280)}, cuda={"256": (256, 256), "720p": (720, 1280)}) if FULL else sizes()
LOW_PRECISION = {  # backend -> dtype of its convolutions
    "eager-fp16": "float16",
    "compile-fp16": "float16",
    "aoti-fp16": "float16",
    "tensorrt-fp16": "float16",
    "eager-bf16": "bfloat16",
    "aoti-bf16": "bfloat16",
}
BACKENDS = pick(
    cpu=["eager", "eager-bf16", "onnxruntime", "aoti", "aoti-bf16"],
    cuda=["eager", "eager-fp16", "onnxruntime", "compile-fp16", "aoti-fp16", "tensorrt-fp16"],
)
_TMP = Path(tempfile.mkdtemp(prefix="bench_inference_"))


@functools.cache
def generator() -> Generator:
    torch.manual_seed(0)
    cfg = GeneratorConfig() if FULL else GeneratorConfig(ngf=8, n_blocks=1)
    g = Generator(cfg).eval()
    with torch.no_grad():  # random biases as well: outputs must not be near-trivial
        for p in g.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    return g.to(device())


@functools.cache
def runner(backend: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """Build (untimed) a callable for `backend`; skips when its library or device is missing."""
    g = generator()
    if FULL and not on_gpu() and LOW_PRECISION.get(backend) == "bfloat16" and not cpu_has_native_bf16():
        pytest.skip("this CPU has no native bf16 (AVX512-BF16 or AMX): emulated bf16 is slower than fp32, not timed")
    if backend == "eager":
        return lambda x: g(x)
    if backend == "eager-fp16":
        return lambda x: _autocast(g, x)
    if backend == "eager-bf16":
        return TorchRunner(_copy(g), device=device(), precision="bf16")
    if backend == "aoti-bf16":
        return _aoti_bf16(g)
    if backend == "compile-fp16":
        compiled = torch.compile(g, dynamic=False)  # compiles at the first call of each shape (untimed, see below)
        return lambda x: _autocast(compiled, x)
    if backend in ("aoti", "aoti-fp16"):
        from export.aoti import AotiExporter
        from export.runtime import AOTIRunner

        path = AotiExporter(_copy(g), device=device().type, fp16=backend == "aoti-fp16", max_batch=8).export(
            _TMP / f"{backend}.pt2"
        )
        return AOTIRunner(path)
    if backend == "onnxruntime":
        import onnxruntime as ort

        from export.onnx import OnnxExporter
        from export.runtime import OnnxRunner

        dev = device()
        if dev.type == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
            pytest.skip("onnxruntime has no CUDA provider here (pip install onnxruntime-gpu)")
        path = OnnxExporter(_copy(g).cpu()).export(_TMP / "g.onnx")
        return OnnxRunner(path, device=dev)
    if backend == "tensorrt-fp16":
        pytest.importorskip("tensorrt")
        from export.onnx import OnnxExporter
        from export.runtime import TensorRTRunner
        from export.trt import BuildOptions, ShapeProfile, TrtEngineBuilder

        onnx_path = OnnxExporter(_copy(g).cpu(), precision="fp16").export(_TMP / "g_trt.onnx")  # strongly typed
        h, w = SIZES["720p"]
        profile = ShapeProfile((1, 3, 64, 64), (1, 3, h, w), (max(BATCHES), 3, h, w))
        engine = TrtEngineBuilder(onnx_path, profile, BuildOptions("fp16", workspace_gib=8)).build(_TMP / "g.engine")
        return TensorRTRunner(engine)
    raise ValueError(backend)


class _Bf16Autocast(torch.nn.Module):
    """float32 in and out, bf16 autocast inside (instance norm in fp32), as TorchRunner(precision="bf16")."""

    def __init__(self, generator: Generator) -> None:
        super().__init__()
        self.generator = generator
        self.config = generator.config
        keep_norms_fp32(generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device().type, dtype=torch.bfloat16):
            return self.generator(x).float()


def _aoti_bf16(g: Generator) -> Callable[[torch.Tensor], torch.Tensor]:
    """AOTInductor with bf16 autocast inside the exported graph; skipped where it does not export or compile."""
    from deblurgan.errors import DeblurGANError
    from export.aoti import AotiExporter
    from export.runtime import AOTIRunner

    exporter = AotiExporter(_copy(g), device=device().type, max_batch=8)
    exporter.generator = _Bf16Autocast(exporter.generator)  # type: ignore[assignment]
    fp32_metadata = exporter.metadata
    exporter.metadata = lambda: {**fp32_metadata(), "deblurgan.precision": "bf16"}  # type: ignore[method-assign]
    try:
        path = exporter.export(_TMP / "aoti-bf16.pt2")
    except (DeblurGANError, RuntimeError) as e:
        pytest.skip(f"AOTInductor bf16 did not compile here: {str(e).splitlines()[0][:200]}")
    return AOTIRunner(path)


def _copy(g: Generator) -> Generator:
    c = Generator(g.config)
    c.load_state_dict(g.state_dict())
    return c.eval().to(device())


def _autocast(model, x: torch.Tensor) -> torch.Tensor:
    with torch.autocast("cuda", dtype=torch.float16):
        return model(x).float()


@functools.cache
def _flop(h: int, w: int) -> int:
    return count_flops(generator(), (1, 3, h, w))


def _wanted(backend: str, size: str, batch: int) -> bool:
    """torch.compile (dynamic=False: a full compile per shape) at 1280x720 batch 1 only on CUDA."""
    return not (on_gpu() and backend.startswith("compile")) or (size, batch) == ("720p", 1)


CASES = [(b, s, n) for b in BACKENDS for s in SIZES for n in BATCHES if _wanted(b, s, n)]


CASE_IDS = [f"{b}-{size_label(s, SIZES[s])}-b{n}" for b, s, n in CASES]


@pytest.mark.parametrize(("backend", "size", "batch"), CASES, ids=CASE_IDS)
def test_bench_generator(benchmark, backend: str, size: str, batch: int) -> None:
    h, w = SIZES[size]
    run = runner(backend)
    x = torch.rand(batch, 3, h, w, generator=torch.Generator().manual_seed(batch)).to(device()) * 2 - 1
    with torch.inference_mode():
        ref = generator()(x)

    def forward() -> torch.Tensor:
        with torch.inference_mode():
            return run(x)

    y = forward()  # the first call compiles / loads / autotunes: before timing, and checked before timing
    assert y.shape == ref.shape
    info = benchmark.extra_info
    if backend in LOW_PRECISION:
        mse = (y.float() - ref).pow(2).mean().item()
        psnr = math.inf if mse == 0 else 10 * math.log10(4.0 / mse)
        info["psnr_vs_fp32"] = psnr
        assert psnr >= 40.0, f"{backend}: {psnr:.1f} dB vs eager fp32"
    else:
        err = (y.float() - ref).abs().max().item()
        info["max_abs_vs_fp32"] = err
        tol = 1e-4 if device().type == "cpu" else 1e-2  # CUDA fp32 convs may use TF32 (PyTorch's default)
        assert err <= tol, f"{backend}: max abs {err:.3g} vs eager fp32"

    benchmark.group = "inference"
    y = measure(
        benchmark,
        forward,
        case=f"generator {size_label(size, SIZES[size])} b{batch}",
        backend=backend,
        shape=[batch, 3, h, w],
        dtype=LOW_PRECISION.get(backend, "float32"),
        flop=_flop(h, w) * batch,
        items=batch,
        params=sum(p.numel() for p in generator().parameters()),
        full_size=FULL,
        threads=torch.get_num_threads(),
        tf32_convs=backend == "eager" and tf32_convs(),  # torch's fp32 convs on CUDA (PyTorch's default)
    )
    ms = info.get("device_ms") or benchmark.stats.stats.median * 1e3
    info["ms_per_frame"] = ms / batch
    info["fps"] = 1e3 * batch / ms
    assert y.shape == ref.shape
