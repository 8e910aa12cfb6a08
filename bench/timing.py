"""Shared timing helpers for every `bench/test_bench_*.py` file.

One approach everywhere (see bench/README.md):

    from bench.timing import measure, pick, device
    def test_bench_thing(benchmark):
        x = torch.randn(pick(cpu=(1, 8, 16, 16), cuda=(1, 64, 720, 1280)), device=device())
        measure(benchmark, lambda: op(x), case="in_relu fwd", backend="eager", bytes=2 * x.nbytes)

`measure` runs `benchmark.pedantic` over a wrapper that, on CUDA, records a CUDA event pair around every
call and synchronises on the end event. pytest-benchmark therefore times *synchronised* calls (its stats
include the host launch overhead), and the device-side median from the events goes to
`benchmark.extra_info["device_ms"]`. The report uses `device_ms` when present, else pytest-benchmark's median.
On CPU there is nothing to synchronise: the wall clock is the measurement.

`measure(..., flush_l2=True)` (the kernel suite) writes a 256 MiB buffer before every call, untimed by the
events, so shapes that fit the GPU's L2 (50 MB on H100/H200) are not served from it, and the GPU is still busy
with that write while the host launches the timed call (the event interval holds no launch gap).
`measure` writes `extra_info["timing"]` last: an entry without it did not finish (bench/conftest.py drops those).
"""

from __future__ import annotations

import functools
import importlib
import os
import platform
import shutil
import statistics
import subprocess
from collections.abc import Callable
from typing import Any, TypeVar

import torch

T = TypeVar("T")

# Rounds after warm-up. Kept small on CPU so `pytest bench/ --benchmark-only` finishes in about a minute on 2 cores.
CPU_ROUNDS, CPU_WARMUP = 3, 1
CUDA_ROUNDS, CUDA_WARMUP = 20, 5
# Written before every timed call by measure(flush_l2=True): 5x the 50 MB L2 of an H100/H200
L2_FLUSH_BYTES = 256 * 2**20


def device() -> torch.device:
    """The device benchmarks run on: CUDA when available, else CPU."""
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def on_gpu() -> bool:
    return device().type == "cuda"


def pick(cpu: T, cuda: T) -> T:
    """Device-adaptive value: `cuda` on a GPU, `cpu` (tiny) otherwise."""
    return cuda if on_gpu() else cpu


def full_size() -> bool:
    """Full sizes: on CUDA, or on CPU with DEBLURGAN_BENCH_FULL=1 (minutes per suite; the suites that size their
    inputs through `sizes()` / `full_size()`: models and inference; the others use `pick` and stay tiny on CPU)."""
    return on_gpu() or os.environ.get("DEBLURGAN_BENCH_FULL") == "1"


REAL_SIZES = {"256": (256, 256), "720p": (720, 1280)}


def size_label(name: str, shape: tuple[int, int]) -> str:
    """`name` where `shape` is the size it names, else "HxW": a row or id names the size that really ran."""
    return name if REAL_SIZES.get(name) == tuple(shape) else f"{shape[0]}x{shape[1]}"


def sizes() -> dict[str, tuple[int, int]]:
    """Named image sizes (H, W): full on CUDA, tiny stand-ins on CPU (named by the real size they stand in for)."""
    if full_size():
        return dict(REAL_SIZES)
    return {"256": (32, 32), "720p": (36, 64)}


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def tf32_convs(dtype: torch.dtype | str = torch.float32) -> bool:
    """True when float32 convolutions of this run may use TF32: on CUDA with cuDNN's allow_tf32 (PyTorch's default)."""
    return on_gpu() and str(dtype).removeprefix("torch.") == "float32" and torch.backends.cudnn.allow_tf32


@functools.cache
def _l2_flush_buffer() -> torch.Tensor:
    return torch.empty(L2_FLUSH_BYTES, dtype=torch.uint8, device="cuda")


def l2_flush() -> None:
    """Evict the GPU's L2 cache: enqueue a write of L2_FLUSH_BYTES (asynchronous; no-op without CUDA)."""
    if torch.cuda.is_available():
        _l2_flush_buffer().zero_()


def time_cuda(fn: Callable[[], Any], warmup: int = 5, rep: int = 20) -> float:
    """Median milliseconds of `fn()` measured with CUDA events after `warmup` calls."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    pairs = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(rep)]
    for start, end in pairs:
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize()
    return statistics.median(start.elapsed_time(end) for start, end in pairs)


def time_cpu(fn: Callable[[], Any], warmup: int = 1, rep: int = 5) -> float:
    """Median milliseconds of `fn()` on the host clock (CPU work only)."""
    import time

    for _ in range(warmup):
        fn()
    times = []
    for _ in range(rep):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def time_ms(fn: Callable[[], Any], warmup: int | None = None, rep: int | None = None) -> float:
    """Median ms of `fn()` on the current device (CUDA events on a GPU, host clock on CPU)."""
    if on_gpu():
        return time_cuda(fn, warmup if warmup is not None else CUDA_WARMUP, rep or CUDA_ROUNDS)
    return time_cpu(fn, warmup if warmup is not None else CPU_WARMUP, rep or CPU_ROUNDS)


def gbps(nbytes: float, ms: float) -> float:
    """Bandwidth in GB/s (1e9 bytes per second) for `nbytes` moved in `ms` milliseconds."""
    return nbytes / (ms * 1e-3) / 1e9


def tensor_bytes(*tensors: torch.Tensor) -> int:
    """Total bytes of the given tensors (for the minimal read+write traffic of an op)."""
    return sum(t.numel() * t.element_size() for t in tensors)


class _EventTimer:
    """Wraps fn: on CUDA records an event pair per call and synchronises, so every call is complete when timed."""

    def __init__(self, fn: Callable[..., Any], cuda: bool) -> None:
        self.fn, self.cuda, self.pairs = fn, cuda, []

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if not self.cuda:
            return self.fn(*args, **kwargs)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        out = self.fn(*args, **kwargs)
        end.record()
        end.synchronize()
        self.pairs.append((start, end))
        return out

    def device_ms(self, last: int) -> list[float]:
        return [s.elapsed_time(e) for s, e in self.pairs[-last:]]


def _jsonable(v: Any) -> Any:
    """extra_info values must survive json.dumps: tuples/Size -> lists, dtypes -> 'float16', others -> str."""
    if isinstance(v, torch.dtype):
        return str(v).removeprefix("torch.")
    if isinstance(v, (tuple, list)):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    return str(v)


def _then_flush_l2(setup: Callable[[], Any] | None) -> Callable[[], Any]:
    """`setup` (if any), then an L2 flush: the last work queued before the timed call, so the GPU is still writing
    the buffer while the host launches the call, and the call's start event is recorded when the flush is done."""

    def run() -> Any:
        out = setup() if setup is not None else None
        l2_flush()
        return out

    return run


def measure(
    benchmark: Any,
    fn: Callable[..., Any],
    *,
    setup: Callable[[], Any] | None = None,
    rounds: int | None = None,
    warmup: int | None = None,
    items: int = 1,
    flush_l2: bool = False,
    **extra: Any,
) -> Any:
    """Time `fn` with pytest-benchmark (synchronised per call) and record device-side CUDA-event times.

    Extra keyword arguments go to `benchmark.extra_info`; the report understands these keys:
    `case` (what is computed, e.g. "in_relu fwd"), `backend` ("eager", "compile", "triton", "engine",
    "aoti", "onnxruntime", "tensorrt", "reference", ...), `shape`, `dtype`, `bytes` (minimal traffic:
    GB/s is derived), `flop`, `model`, `params`, `gflop_720p`, `tf32_convs` (a float32 row whose convolutions
    may run in TF32: see `tf32_convs()`). `items` = frames/crops per call (per-item ms).
    `setup` (optional) runs untimed before every round and may return `(args, kwargs)` for `fn`.
    `flush_l2` (CUDA): write L2_FLUSH_BYTES before every call, after `setup` and outside the CUDA-event interval,
    without waiting for it: the event times exclude the flush, pytest-benchmark's host times include its tail.
    `extra_info["timing"]` is written last, so its presence means the measurement finished.
    """
    cuda = on_gpu()
    rounds = rounds or (CUDA_ROUNDS if cuda else CPU_ROUNDS)
    warmup = warmup if warmup is not None else (CUDA_WARMUP if cuda else CPU_WARMUP)
    timer = _EventTimer(fn, cuda)
    if cuda and flush_l2:
        setup = _then_flush_l2(setup)
    if cuda:
        synchronize()
    result = benchmark.pedantic(timer, setup=setup, rounds=rounds, warmup_rounds=warmup, iterations=1)
    info = benchmark.extra_info
    info.update({k: _jsonable(v) for k, v in extra.items()})
    info.setdefault("device", device().type)
    info["items"] = items
    if cuda and flush_l2:
        info["l2_flush_bytes"] = L2_FLUSH_BYTES
    if cuda and timer.pairs:
        times = timer.device_ms(rounds)
        info["device_ms"] = statistics.median(times)
        info["device_ms_min"] = min(times)
        if len(times) >= 2:
            q1, _, q3 = statistics.quantiles(times, n=4)
            info["device_ms_iqr"] = q3 - q1
    ms = info.get("device_ms")
    if ms is None and benchmark.stats is not None:
        ms = benchmark.stats.stats.median * 1e3
    if ms and info.get("bytes"):
        info["gbps"] = gbps(info["bytes"], ms)
    if ms and info.get("flop"):
        info["tflops"] = info["flop"] / (ms * 1e-3) / 1e12
    info["timing"] = "cuda-events" if "device_ms" in info else "host-clock"  # last: the entry is complete
    return result


def _version(module: str) -> str:
    try:
        return str(getattr(importlib.import_module(module), "__version__", "unknown"))
    except Exception as e:  # noqa: BLE001 - an optional package may fail to import in many ways
        return f"missing ({type(e).__name__})"


def _nvidia_smi() -> dict[str, str]:
    if shutil.which("nvidia-smi") is None:
        return {}
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {}
    name, driver, mem = ([*out.splitlines()[0].split(","), "", "", ""])[:3] if out else ("", "", "")
    return {"gpu_name": name.strip(), "driver": driver.strip(), "gpu_memory": mem.strip()}


def environment() -> dict[str, Any]:
    """Where a run happened: device, GPU name/driver, CPU, and the versions the report stamps."""
    env: dict[str, Any] = {
        "device": device().type,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda or "none",
        "triton": _version("triton"),
        "onnx": _version("onnx"),
        "onnxruntime": _version("onnxruntime"),
        "tensorrt": _version("tensorrt"),
        "torch_threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),
        "full_size": full_size(),
        # cuDNN / cuBLAS switches at the end of the run (PyTorch defaults: benchmark off, TF32 convs on, matmul off)
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
    }
    if os.environ.get("DEBLURGAN_COMMIT"):
        env["commit"] = os.environ["DEBLURGAN_COMMIT"]
    if torch.cuda.is_available():
        env["gpu_name"] = torch.cuda.get_device_name(0)
        env.update({k: v for k, v in _nvidia_smi().items() if v})
    return env
