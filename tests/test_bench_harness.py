"""The benchmark harness: DeepDeblur peer, FLOP counting, timing helpers, the --benchmark flag and the report."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench import report
from bench.deepdeblur import DeepDeblur, count_flops
from bench.timing import gbps, on_gpu, tensor_bytes, time_ms
from deblurgan.cli import run_cli
from deblurgan.errors import DeblurGANError
from deblurgan.networks import Generator, count_parameters

ROOT = Path(__file__).resolve().parents[1]


# --- DeepDeblur -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("upconv", "expected"), [("transpose", 11_719_953), ("pixelshuffle", 11_721_321)])
def test_deepdeblur_parameter_count(upconv: str, expected: int) -> None:
    # 3 scales x (head + 19 ResBlocks of two 5x5 64->64 convs + tail) + 2 up-convolutions; paper: ~11.7 M.
    per_scale = 19 * 2 * (64 * 64 * 25 + 64) + (64 * 3 * 25 + 3)
    heads = (3 * 64 * 25 + 64) + 2 * (6 * 64 * 25 + 64)
    ups = 2 * ((3 * 3 * 25 + 3) if upconv == "transpose" else (3 * 12 * 25 + 12))
    assert 3 * per_scale + heads + ups == expected
    assert count_parameters(DeepDeblur(upconv=upconv)) == expected


def test_deepdeblur_structure_and_forward() -> None:
    torch.manual_seed(0)
    model = DeepDeblur(n_resblocks=2).eval()  # same topology, fewer blocks: keeps the test fast
    assert len(model.scales) == 3 and len(model.upconvs) == 2
    assert [m.in_channels for m in (s.head for s in model.scales)] == [3, 6, 6]
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(m.kernel_size == (5, 5) for m in convs)
    assert len(DeepDeblur().scales[0].body) == 19
    x = torch.rand(2, 3, 16, 24) * 2 - 1
    with torch.no_grad():
        outs = model(x)
    assert [tuple(o.shape) for o in outs] == [(2, 3, 4, 6), (2, 3, 8, 12), (2, 3, 16, 24)]
    # coarse-to-fine: the finest output depends on the coarsest scale's weights
    with torch.no_grad():
        model.scales[0].tail.bias.add_(1.0)
        assert not torch.allclose(model(x)[-1], outs[-1])
    with pytest.raises(ValueError, match="multiples of 4"):
        model(torch.rand(1, 3, 10, 12))
    with pytest.raises(ValueError, match="upconv"):
        DeepDeblur(upconv="bilinear")


def test_count_flops_matches_analytic_counts() -> None:
    conv = torch.nn.Conv2d(5, 7, 3, padding=1)
    assert count_flops(conv, (2, 5, 8, 12)) == 2 * (2 * 8 * 12) * 5 * 7 * 9
    h, w = 64, 96
    expected = 0
    for i, cin in enumerate([3, 6, 6]):
        hw = (h // 2 ** (2 - i)) * (w // 2 ** (2 - i))
        expected += 2 * hw * 25 * (cin * 64 + 19 * 2 * 64 * 64 + 64 * 3)
        if i:
            expected += 2 * (hw // 4) * 25 * 3 * 3  # transposed conv: input pixels x kernel
    assert count_flops(DeepDeblur(), (1, 3, h, w)) == expected


def test_model_flops_per_720p_frame() -> None:
    deepdeblur = count_flops(DeepDeblur(), (1, 3, 720, 1280)) / 1e9
    deblurgan = count_flops(Generator(), (1, 3, 720, 1280)) / 1e9
    assert deepdeblur == pytest.approx(9448.0, rel=1e-3)
    # 1597 GFLOP if the two stride-2 transposed convs are counted at their output resolution (4x their useful work)
    assert deblurgan == pytest.approx(1393.6, rel=1e-3)


# --- timing helpers ---------------------------------------------------------------------------------------------


def test_gbps_and_bytes() -> None:
    assert gbps(2e9, 1000.0) == pytest.approx(2.0)
    assert tensor_bytes(torch.empty(3, 4), torch.empty(5, dtype=torch.float16)) == 48 + 10


def test_extra_info_values_become_json() -> None:
    from bench.timing import _jsonable

    value = {"s": torch.Size([2, 3]), "d": torch.float16, "dev": torch.device("cpu"), "t": (1, (2.5, None))}
    assert json.loads(json.dumps(_jsonable(value))) == {
        "s": [2, 3],
        "d": "float16",
        "dev": "cpu",
        "t": [1, [2.5, None]],
    }


def test_time_ms_measures_real_work() -> None:
    import time

    ms = time_ms(lambda: time.sleep(0.02), warmup=0, rep=3)
    assert 15 < ms < 200


def test_tf32_convs_only_for_float32_on_cuda_with_tf32_allowed(monkeypatch) -> None:
    from bench import timing

    monkeypatch.setattr(timing, "on_gpu", lambda: True)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    assert timing.tf32_convs() and timing.tf32_convs(torch.float32) and timing.tf32_convs("float32")
    assert not timing.tf32_convs(torch.float16) and not timing.tf32_convs("bfloat16")
    torch.backends.cudnn.allow_tf32 = False  # restored by monkeypatch
    assert not timing.tf32_convs(torch.float32)
    torch.backends.cudnn.allow_tf32 = True
    monkeypatch.setattr(timing, "on_gpu", lambda: False)
    assert not timing.tf32_convs(torch.float32)  # CPU convolutions never use TF32


def test_l2_flush_is_the_last_work_before_the_timed_call(monkeypatch) -> None:
    from bench import timing

    calls = []
    monkeypatch.setattr(timing, "l2_flush", lambda: calls.append("flush"))
    setup = timing._then_flush_l2(lambda: calls.append("setup") or ((1,), {}))
    assert setup() == ((1,), {}) and calls == ["setup", "flush"]  # the user's setup and its (args, kwargs) survive
    assert timing._then_flush_l2(None)() is None and calls[-1] == "flush"


class _PedanticStub:
    """The part of pytest-benchmark's fixture that `measure` uses: setup before every call, warm-up + timed rounds."""

    def __init__(self) -> None:
        self.extra_info: dict = {}
        self.stats = None

    def pedantic(self, target, setup, rounds, warmup_rounds, iterations):
        for _ in range(warmup_rounds + rounds):
            setup()
            out = target()
        return out


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_measure_l2_flush_stays_outside_the_events(monkeypatch) -> None:
    from bench import timing

    x = torch.randn(2**20, device="cuda")  # 4 MB: a few microseconds
    real_flush, flushes = timing.l2_flush, []
    monkeypatch.setattr(timing, "l2_flush", lambda: flushes.append(1) or real_flush())
    stub = _PedanticStub()
    timing.measure(stub, lambda: x.mul_(1.0), rounds=4, warmup=1, flush_l2=True)
    assert len(flushes) == 5 and stub.extra_info["l2_flush_bytes"] == timing.L2_FLUSH_BYTES
    # writing 256 MiB takes tens of microseconds: had it leaked into the event interval, device_ms would exceed it
    flush_ms = timing.time_cuda(real_flush, warmup=2, rep=5)
    assert stub.extra_info["device_ms"] < flush_ms, (stub.extra_info["device_ms"], flush_ms)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_time_cuda_scales_with_work() -> None:
    from bench.timing import time_cuda

    a = torch.randn(4096, 4096, device="cuda")
    one = time_cuda(lambda: a @ a, warmup=3, rep=10)
    four = time_cuda(lambda: [a @ a for _ in range(4)], warmup=3, rep=10)
    assert 2.5 < four / one < 6


# --- the --benchmark flag and a real benchmark JSON -----------------------------------------------------------------

DUMMY_BENCH = """
import torch
from bench.timing import measure

def test_plain():
    pass

def test_bench_copy(benchmark):
    benchmark.group = "kernels"
    x = torch.randn(1000)
    y = torch.empty_like(x)
    measure(benchmark, lambda: y.copy_(x), case="copy", backend="eager", bytes=8000, shape=x.shape, dtype=x.dtype)
"""


def _run_pytest(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rs", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    """`pytest bench --benchmark` on a scratch suite that uses the real bench/conftest.py."""
    tmp = tmp_path_factory.mktemp("suite")
    (tmp / "bench").mkdir()
    shutil.copy(ROOT / "bench" / "conftest.py", tmp / "bench" / "conftest.py")
    (tmp / "bench" / "test_bench_dummy.py").write_text(DUMMY_BENCH)
    out = tmp / "results.json"
    return _run_pytest(tmp, "bench", "--benchmark", f"--benchmark-json={out}"), out


def test_benchmark_flag_runs_only_benchmarks(bench_run) -> None:
    proc, out = bench_run
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 passed, 1 skipped" in proc.stdout, proc.stdout
    assert "benchmark-only" in proc.stdout  # the plain test was skipped by pytest-benchmark's --benchmark-only
    data = json.loads(out.read_text())
    (bench,) = data["benchmarks"]
    assert bench["group"] == "kernels" and bench["stats"]["rounds"] >= 1
    info = bench["extra_info"]
    assert info["dtype"] == "float32" and info["shape"] == [1000] and info["gbps"] > 0
    assert info["timing"] == ("cuda-events" if on_gpu() else "host-clock")
    env = data["machine_info"]["deblurgan"]
    assert env["torch"] == torch.__version__
    assert env["cudnn_benchmark"] is torch.backends.cudnn.benchmark
    assert env["cudnn_allow_tf32"] is torch.backends.cudnn.allow_tf32


def test_benchmark_flag_without_pytest_benchmark_is_a_usage_error(bench_run) -> None:
    _, out = bench_run
    proc = _run_pytest(out.parent, "bench", "--benchmark", "-p", "no:benchmark")
    assert proc.returncode == 4  # pytest's usage-error exit code
    assert "--benchmark needs pytest-benchmark" in proc.stderr and "Traceback" not in proc.stderr


def test_report_from_real_json(bench_run, tmp_path) -> None:
    _, out = bench_run
    md_path = tmp_path / "r.md"
    assert report.main([str(out), "--out", str(md_path)]) == 0
    md = md_path.read_text()
    assert "| copy | 1000 | float32 | eager |" in md
    assert "Not measured in this run: compile, triton." in md
    assert ("CPU only" in md) != on_gpu()


# a suite stopped by SIGINT (gpu_check.sh's time limit) in its third benchmark, after one good row and one wrong one
INTERRUPTED_BENCH = """
import os
import signal
import time

from bench.timing import measure

STOP_AT_CALL = {stop_at_call}  # warm-up is call 1, timed rounds are calls 2..4


def test_bench_good(benchmark):
    measure(benchmark, lambda: time.sleep(0.001), case="good", backend="eager", rounds=2, warmup=1)


def test_bench_wrong(benchmark):
    y = measure(benchmark, lambda: 1, case="wrong", backend="eager", rounds=2, warmup=1)
    assert y == 2  # the correctness check after timing fails: this row must not reach the JSON


def test_bench_interrupted(benchmark):
    calls = []

    def fn():
        calls.append(1)
        if len(calls) == STOP_AT_CALL:
            os.kill(os.getpid(), signal.SIGINT)  # what `timeout -s INT` delivers
            time.sleep(5)

    measure(benchmark, fn, case="interrupted", backend="eager", rounds=3, warmup=1)


def test_bench_never_reached(benchmark):
    measure(benchmark, lambda: None, case="never", backend="eager")
"""


@pytest.mark.parametrize("stop_at_call", [1, 3], ids=["in-warm-up", "in-second-timed-round"])
def test_interrupted_suite_keeps_finished_rows_only(tmp_path, stop_at_call: int) -> None:
    (tmp_path / "bench").mkdir()
    shutil.copy(ROOT / "bench" / "conftest.py", tmp_path / "bench" / "conftest.py")
    (tmp_path / "bench" / "test_bench_stop.py").write_text(INTERRUPTED_BENCH.format(stop_at_call=stop_at_call))
    out = tmp_path / "results.json"
    proc = _run_pytest(tmp_path, "bench", "--benchmark", f"--benchmark-json={out}")
    log = proc.stdout + proc.stderr
    assert proc.returncode == 2 and "KeyboardInterrupt" in log, log  # 2: pytest was interrupted
    # written: pytest-benchmark's JSON writer used to fail on the interrupted entry's missing stats (an empty file
    # with pytest-benchmark 5.2, none with 5.3)
    assert out.exists() and out.stat().st_size > 0, log
    names = [b["name"] for b in json.loads(out.read_text())["benchmarks"]]
    assert names == ["test_bench_good"], log  # not the failed check's row, not the interrupted one
    assert "unfinished benchmarks left out of the JSON: test_bench_interrupted" in log


def test_plain_pytest_does_not_collect_bench() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    assert cfg["testpaths"] == ["tests"]
    uses_fixture = re.compile(r"def test_\w+\([^)]*\bbenchmark\b")
    others = [p for p in (ROOT / "tests").glob("*.py") if p.name != Path(__file__).name]
    hits = [p.name for p in others if uses_fixture.search(p.read_text())]
    assert not hits, f"timed tests belong in bench/: {hits}"


# --- report on a synthetic JSON ---------------------------------------------------------------------------------


def _bench(name: str, group: str, ms: float, **info) -> dict:
    iqr = info.pop("iqr_ms", 0.0)
    stats = {"median": ms / 1e3, "iqr": iqr / 1e3}
    return {"name": name, "group": group, "params": {}, "stats": stats, "extra_info": info}


def _synthetic(gpu: bool = True) -> dict:
    env = {"device": "cuda", "gpu_name": "NVIDIA H200", "driver": "580.1", "torch": "2.11.0", "triton": "3.6.0"}
    env.update(cudnn_benchmark=False, cudnn_allow_tf32=True, matmul_allow_tf32=False)  # PyTorch's defaults
    if not gpu:
        env = {"device": "cpu", "cpu": "x86_64", "cpu_count": 2, "torch": "2.13.0"}
    s720 = [1, 3, 720, 1280]
    benches = [
        _bench(
            "test_copy", "calibration", 1.0, case="copy", backend="calibration", gbps=4000.0, shape=[2**28], bytes=2**31
        ),
        _bench("test_mm", "calibration", 1.0, case="matmul", backend="calibration", tflops=700.0, dtype="bfloat16"),
        _bench(
            "test_gan",
            "models",
            99.0,
            device_ms=20.0,
            device_ms_iqr=1.0,  # 5 %: stable, although the host iqr (0 here) is not used
            case="forward",
            backend="eager",
            model="DeblurGAN",
            params=11_378_179,
            gflop_720p=1393.6,
            shape=s720,
            dtype="float32",
            full_size=True,
            tflops=69.68,
            tf32_convs=True,
        ),
        _bench(
            "test_dd",
            "models",
            99.0,
            device_ms=80.0,
            case="forward",
            backend="eager",
            model="DeepDeblur",
            params=11_719_953,
            gflop_720p=9448.0,
            shape=s720,
            dtype="float32",
            full_size=True,
        ),
        _bench(
            "test_gan8",
            "models",
            99.0,
            device_ms=80.0,
            case="forward b8",
            backend="eager",
            model="DeblurGAN",
            params=11_378_179,
            gflop_720p=1393.6,
            shape=[8, 3, 720, 1280],
            dtype="float32",
            items=8,
        ),
        _bench(
            "test_k_eager",
            "kernels",
            2.0,
            l2_flush_bytes=2**28,
            case="in_relu fwd",
            backend="eager",
            shape=[1, 64, 720, 1280],
            dtype="float16",
            gbps=1000.0,
        ),
        _bench(
            "test_k_compile",
            "kernels",
            1.0,
            l2_flush_bytes=2**28,
            case="in_relu fwd",
            backend="compile",
            shape=[1, 64, 720, 1280],
            dtype="float16",
            gbps=2000.0,
        ),
        _bench(
            "test_k_triton",
            "kernels",
            0.5,
            l2_flush_bytes=2**28,
            case="in_relu fwd",
            backend="triton",
            shape=[1, 64, 720, 1280],
            dtype="float16",
            gbps=3000.0,
        ),
        _bench(
            "test_k_other_dtype",
            "kernels",
            0.1,
            l2_flush_bytes=2**28,
            case="in_relu fwd",
            backend="eager",
            shape=[1, 64, 720, 1280],
            dtype="float32",
        ),
        _bench("test_crops[b16]", "data", 10.0, case="blurred crops", backend="engine", items=16, iqr_ms=5.0),
        _bench(
            "test_dd16",
            "models",
            1.0,
            tf32_convs=True,  # as the models suite used to record for every dtype: not a float32 row, no TF32 label
            iqr_ms=0.9,  # host spread 90 %: ignored, the device-side timing has no iqr recorded
            device_ms=40.0,
            case="forward",
            backend="eager",
            model="DeepDeblur",
            params=11_719_953,
            gflop_720p=9448.0,
            shape=s720,
            dtype="float16",
            full_size=True,
        ),
        # inference suite: the engine's backends join the model table (eager fp32 b1 duplicates the models row)
        _bench(
            "test_inf_eager",
            "inference",
            21.0,
            tf32_convs=True,
            case="generator 720p b1",
            backend="eager",
            shape=s720,
            dtype="float32",
            flop=1393.6e9,
            items=1,
            params=11_378_179,
            full_size=True,
        ),
        _bench(
            "test_inf_c16",
            "inference",
            5.0,
            case="generator 720p b1",
            backend="compile-fp16",
            shape=s720,
            dtype="float16",
            flop=1393.6e9,
            items=1,
            params=11_378_179,
            full_size=True,
        ),
        _bench(
            "test_inf_c16_b8",
            "inference",
            32.0,
            case="generator 720p b8",
            backend="compile-fp16",
            shape=[8, 3, 720, 1280],
            dtype="float16",
            flop=8 * 1393.6e9,
            items=8,
            params=11_378_179,
            full_size=True,
        ),
        _bench(
            "test_inf_256",
            "inference",
            1.0,
            case="generator 256 b1",
            backend="compile-fp16",
            shape=[1, 3, 256, 256],
            dtype="float16",
            full_size=True,
        ),
        _bench(
            "test_tr_e",
            "train",
            300.0,
            tf32_convs=True,
            case="train b16",
            backend="eager",
            shape=[16, 3, 256, 256],
            dtype="float32",
            items=16,
        ),
        _bench(
            "test_tr_x",
            "train",
            100.0,
            case="train b16",
            backend="engine",
            shape=[16, 3, 256, 256],
            dtype="bfloat16",
            items=16,
        ),
    ]
    return {
        "machine_info": {"deblurgan": env},
        "commit_info": {"id": "abc123def456", "dirty": False},
        "datetime": "2026-11-26T05:00:00",
        "benchmarks": benches,
    }


def _render(data: dict, tmp_path: Path) -> str:
    path = tmp_path / "results.json"
    path.write_text(json.dumps(data))
    return report.render(report.load_results(path))


def test_report_tables_and_ratios(tmp_path) -> None:
    md = _render(_synthetic(), tmp_path)
    assert md.startswith("# Benchmark report: NVIDIA H200")
    assert "| driver | 580.1 |" in md and "| triton | 3.6.0 |" in md and "| commit | abc123def4 |" in md
    assert "| cudnn.benchmark / TF32 convs / TF32 matmul | off / on / off |" in md
    assert "4000 GB/s" in md and "700 TFLOP/s" in md
    # device_ms wins over the host median; DeepDeblur 80 ms / DeblurGAN 20 ms = 4x
    row = "| DeblurGAN (eager, float32 (TF32 convs), b1) | 11.38 M | 1394 | 1×3×720×1280 | 20.0 | 4.00× | 69.7 |"
    assert row in md
    assert "| DeepDeblur (eager, float32, b1) | 11.72 M | 9448 | 1×3×720×1280 | 80.0 | 1.00× | - |" in md
    assert "| DeblurGAN (eager, float32, b8) | 11.38 M | 1394 | 8×3×720×1280 | 10.0 | 8.00× |" in md  # per frame
    assert "tiny stand-ins" not in md
    assert "**This run: DeblurGAN is 4.00× faster than DeepDeblur** (eager float32 (TF32 convs), batch 1, 20.0 vs" in md
    assert "faster than DeepDeblur** (eager float16" not in md  # no eager fp16 DeblurGAN row in this file
    assert "| device-to-device copy | 1024 MiB | 4000 GB/s (read + write) |" in md
    assert "| DeepDeblur (eager, float16, b1) | 11.72 M | 9448 | 1×3×720×1280 | 40.0 | 1.00× | - |" in md  # no TF32
    assert "float32 (TF32 convs): cuDNN was allowed" in md.split("## Kernels")[0]
    assert "float16 (TF32" not in md and "/TF32" not in md
    # the engine's 720p inference rows, vs DeepDeblur of the same dtype (40 ms fp16); eager fp32 b1 not repeated
    assert "| DeblurGAN (compile-fp16, float16, b1) | 11.38 M | 1394 | 1×3×720×1280 | 5.00 | 8.00× | - |" in md
    assert "| DeblurGAN (compile-fp16, float16, b8) | 11.38 M | 1394 | 8×3×720×1280 | 4.00 | 10.00× | - |" in md
    assert "| DeblurGAN (eager, float32, b1)" not in md and "generator 256" not in md.split("## Kernels")[0]
    # inference: backends carry their dtype, so the fp16 engine is compared with eager fp32 (21 ms / 5 ms)
    assert "| generator 720p b1 | 1×3×720×1280 | float16 | compile-fp16 | 5.00 | 4.20× | - |" in md
    assert "| generator 720p b1 | 1×3×720×1280 | float32 (TF32 convs) | eager | 21.0 | 1.00× | - |" in md
    assert "Not measured in this run: eager-fp16, aoti, onnxruntime, tensorrt." in md
    # kernels: triton 0.5 ms vs eager 2 ms and compile 1 ms; 3000 / 4000 GB/s = 75 %
    assert "| in_relu fwd | 1×64×720×1280 | float16 | triton | 0.500 | 3000 | 75.0 % | 4.00× | 2.00× |" in md
    assert "| in_relu fwd | 1×64×720×1280 | float16 | eager | 2.00 | 1000 | 25.0 % | 1.00× | 0.50× |" in md
    # no eager/compile row of the same dtype: no invented speed-up
    assert "| in_relu fwd | 1×64×720×1280 | float32 | eager | 0.100 | - | - | 1.00× | - |" in md
    assert "| blurred crops | - | - | engine | ~10.0 (0.625 / item, 1600 items/s) | - |" in md
    assert "| train b16 | 16×3×256×256 | bfloat16 | engine | 100 (6.25 / item, 160 items/s) | 3.00× |" in md
    assert "| train b16 | 16×3×256×256 | float32 (TF32 convs) | eager | 300 (18.8 / item, 53.33 items/s) |" in md
    # kernels: no TF32-labelled row, so no TF32 footnote there
    assert "TF32" not in md.split("## Kernels")[1].split("## Inference")[0]
    assert "Not measured in this run: reference." in md  # data group lacks the reference loop
    flush_note = "L2 flushed before every timed call (256 MiB written, outside the timed interval) in every row"
    assert md.count(flush_note) == 1 and flush_note in md.split("## Kernels")[1].split("## Inference")[0]


def test_report_cpu_run_and_missing_sections(tmp_path) -> None:
    data = _synthetic(gpu=False)
    data["commit_info"] = {"id": "unversioned", "dirty": False}  # a checkout copied without .git
    data["machine_info"]["deblurgan"]["commit"] = "0123456789abcdef"
    data["benchmarks"] = [b for b in data["benchmarks"] if b["group"] in ("models",)]
    for b in data["benchmarks"]:
        b["extra_info"]["shape"] = [1, 3, 36, 64]
        b["extra_info"]["full_size"] = False
    md = _render(data, tmp_path)
    assert md.startswith("# Benchmark report: CPU only (x86_64, 2 cores)")
    assert "cudnn.benchmark" not in md  # CUDA switches are not shown for a CPU run
    assert "say nothing" in md and "tiny stand-ins, not 720p frames" in md
    assert "| commit | 0123456789 (from DEBLURGAN_COMMIT) |" in md
    (headline,) = [line for line in md.splitlines() if line.startswith("**This run")]
    assert headline.endswith("ms per 36×64 stand-in input, not a 720p frame).")  # no paper ratio beside it
    assert "Not measured in this run (no `calibration` benchmarks)" in md
    assert "Not measured in this run (no `kernels` benchmarks)." in md
    assert "GB/s" not in md.split("## Kernels")[1]


def test_report_cpu_run_at_full_size_says_so(tmp_path) -> None:
    data = _synthetic(gpu=False)
    data["machine_info"]["deblurgan"]["full_size"] = True  # DEBLURGAN_BENCH_FULL=1
    data["benchmarks"] = [b for b in data["benchmarks"] if b["group"] == "models"]
    md = _render(data, tmp_path)
    assert "**CPU run at full size**" in md and "tiny stand-in" not in md
    (headline,) = [line for line in md.splitlines() if line.startswith("**This run")]
    assert "per 720p frame" in headline


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no such file"),
        ("{not json", "not a readable JSON"),
        ('{"a": 1}', "no 'benchmarks' list"),
        ('{"benchmarks": [{"name": "x"}]}', "malformed benchmark entry"),
    ],
)
def test_report_cli_bad_input(tmp_path, capsys, content, message) -> None:
    path = tmp_path / "r.json"
    if content is not None:
        path.write_text(content)
    assert run_cli(report.main, [str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_report_cli_keeps_old_output_on_failure(tmp_path) -> None:
    out = tmp_path / "report.md"
    out.write_text("previous report")
    with pytest.raises(DeblurGANError):
        report.main([str(tmp_path / "missing.json"), "--out", str(out)])
    assert out.read_text() == "previous report"


def test_report_merges_several_result_files(tmp_path) -> None:
    data = _synthetic()
    models, rest = dict(data), dict(data)
    models["benchmarks"] = [b for b in data["benchmarks"] if b["group"] == "models"]
    rest["benchmarks"] = [b for b in data["benchmarks"] if b["group"] != "models"]
    rest["machine_info"] = {}
    paths = [tmp_path / "a.json", tmp_path / "b.json"]
    for p, d in zip(paths, (rest, models), strict=True):
        p.write_text(json.dumps(d))
    res = report.load_results(*paths)
    assert len(res.rows) == len(data["benchmarks"]) and res.env["gpu_name"] == "NVIDIA H200"
    assert report.render(res) == _render(data, tmp_path)


def test_gpu_check_script_is_valid_bash() -> None:
    script = ROOT / "bench" / "gpu_check.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    assert "--benchmark-json" in text and "bench.report" in text
    assert '-m "gpu and not slow"' in text and '-m "gpu and slow"' in text  # every GPU test, the slow ones last


def test_report_cpu_inference_rows_gflops_and_large_photo(tmp_path) -> None:
    """CPU report: GFLOP/s against the matmul ceiling of the row's dtype, CPU backends expected, the large photo."""
    data = _synthetic(gpu=False)
    s720 = [1, 3, 720, 1280]
    flop = 1394e9
    data["benchmarks"] = [
        _bench("mm32", "calibration", 100.0, case="matmul", backend="calibration", tflops=0.25, dtype="float32"),
        _bench(
            "mm16", "calibration", 50.0, case="matmul bfloat16", backend="calibration", tflops=0.5, dtype="bfloat16"
        ),
        _bench(
            "e",
            "inference",
            6000.0,
            case="generator 720p b1",
            backend="eager",
            shape=s720,
            dtype="float32",
            flop=flop,
            tflops=flop / 6.0 / 1e12,
            full_size=True,
        ),
        _bench(
            "b",
            "inference",
            3000.0,
            case="generator 720p b1",
            backend="eager-bf16",
            shape=s720,
            dtype="bfloat16",
            flop=flop,
            tflops=flop / 3.0 / 1e12,
            full_size=True,
        ),
        _bench(
            "photo",
            "large-photo",
            120e3,
            case="deblur 4000x3000 JPEG",
            backend="engine.deblur",
            shape=[3000, 4000],
            dtype="bfloat16",
            peak_rss_bytes=3.5e9,
            wall_s=120.0,
            untiled_fp32_estimate_s=60.0,
            ratio_to_untiled=2.0,
            tiles=6,
            tile_px=1596,
            max_memory="default",
            full_size=True,
        ),
    ]
    md = _render(data, tmp_path)
    assert "| matmul float32 | - | 250 GFLOP/s |" in md and "| matmul bfloat16 | - | 500 GFLOP/s |" in md
    inference = md.split("## Inference")[1].split("## Large photo")[0]
    assert "GFLOP/s | % of matmul peak (same dtype)" in inference
    assert "| generator 720p b1 | 1×3×720×1280 | float32 | eager | 6000 | 232 | 92.9 % | 1.00× | - |" in inference
    assert "| generator 720p b1 | 1×3×720×1280 | bfloat16 | eager-bf16 | 3000 | 465 | 92.9 % | 2.00× | - |" in inference
    assert "Not measured in this run: aoti, aoti-bf16, onnxruntime." in inference
    photo = md.split("## Large photo (CPU, default path)")[1].split("## Training")[0]
    row = "| 4000×3000 (12.0 MP) | torch | bfloat16 | 6 of 1596 px | default | 3.50 GB | 120.0 s | 60.0 s | 2.00× |"
    assert row in photo
    assert "stand-in" not in photo
    assert report._photo_layout({"tiles": 1, "tile_px": None, "bands": True}) == "1 window in bands"
    assert report._photo_layout({"tiles": 1, "tile_px": None}) == "untiled"


def test_rows_and_ids_name_the_size_that_ran() -> None:
    """A CPU stand-in (36x64) is never labelled "720p": ids and cases say what really ran."""
    import bench.test_bench_inference as bench_inference
    from bench.timing import size_label

    assert size_label("720p", (720, 1280)) == "720p" and size_label("256", (256, 256)) == "256"
    assert size_label("720p", (36, 64)) == "36x64"
    for (_, size, _), case_id in zip(bench_inference.CASES, bench_inference.CASE_IDS, strict=True):
        h, w = bench_inference.SIZES[size]
        assert (f"-{h}x{w}-" in case_id) or ((h, w) == (720, 1280) and "-720p-" in case_id), case_id
