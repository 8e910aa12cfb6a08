"""The Deblurrer end to end: untiled vs tiled (whole-image IN statistics, exact) vs tiled (per-tile, one pass).

Run: `pytest bench/test_bench_deblur.py --benchmark`. On CUDA: the full generator (random weights) on a
1024x1024 image, tiles of 512 px (the exact mode's overlap is twice the receptive field: 192 px); on CPU a small
generator (ngf=8, 1 block) on 160x200 with 96 px tiles. Every tiled result is checked against the untiled one:
the exact modes before timing, in full fp32 (`exact_fp32`: TF32 convolutions, PyTorch's CUDA default, are
expected to move outputs past the 1e-3 bound; not measured on a GPU yet), the per-tile mode (approximate, bound
1.0) on the timed output. Timing uses the defaults (TF32 allowed). Tiled calls are expected to take seconds on
CUDA (not measured): those modes get 1 warm-up call and 3 timed ones.
Also the 16-bit PNG codec (numpy + zlib) on one 512x512 RGB image.

Large photo (`test_bench_large_photo`): a 4000x3000 JPEG (scikit-image's astronaut, resized) through
`python -m engine.deblur` with default settings (exact tiling within the default memory bound, precision auto),
in a child process: its peak resident memory (`os.wait4`) and wall time, beside an estimate of one untiled torch
fp32 pass at that size (one 1280x720 fp32 forward in this process, scaled by pixel count: the generator's work
is proportional to it). Twice: the default torch runtime, and `--runtime onnx` on the same weights exported by
`export.onnx_stats` (ONNX Runtime's exact tiling). Runs at full size with DEBLURGAN_BENCH_FULL=1 only (random
full-size weights until a trained model ships; about 6 minutes each on a 2-core CPU); otherwise a 300x400 photo
through a small generator with `--tile 160`, which only shows that the harness works. DEBLURGAN_BENCH_MAX_MEMORY
(e.g. 2G) adds --max-memory.
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.timing import device, full_size, measure, on_gpu, pick, tf32_convs
from deblurgan.checkpoint import save_generator
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


ROOT = Path(__file__).resolve().parents[1]


def run_measured(argv: list[str], env: dict[str, str] | None = None) -> dict:
    """Run a command; its wall time, exit code, stderr and peak resident memory (os.wait4's ru_maxrss)."""
    t0 = time.perf_counter()
    with subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env) as p:
        err = p.stderr.read() if p.stderr else ""
        _, status, usage = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    return {"wall_s": wall, "returncode": p.returncode, "stderr": err, "peak_rss_bytes": usage.ru_maxrss * 1024}


def _photo(path: Path, height: int, width: int) -> Path:
    """A natural photograph at the given size (astronaut, bicubic resize), saved as JPEG quality 92."""
    from PIL import Image
    from skimage import data

    Image.fromarray(data.astronaut()).resize((width, height), Image.BICUBIC).save(path, quality=92)
    return path


def _untiled_estimate_s(gen: Generator, height: int, width: int) -> tuple[float, int, int]:
    """Seconds of one untiled fp32 pass at HxW, from one 1280x720 pass (a smaller one when not full size)."""
    ref_h, ref_w = (720, 1280) if full_size() else (96, 128)
    runner = TorchRunner(gen, precision="fp32")
    with torch.inference_mode():
        runner(torch.zeros(1, 3, 64, 64))  # warm-up
        x = torch.rand(1, 3, ref_h, ref_w) * 2 - 1
        t0 = time.perf_counter()
        runner(x)
        seconds = time.perf_counter() - t0
    return seconds * (height * width) / (ref_h * ref_w), ref_h, ref_w


@pytest.mark.skipif(on_gpu(), reason="a CPU measurement (host memory of the default CPU path)")
@pytest.mark.parametrize("runtime", ["torch", "onnx-stats"])  # the default; ONNX Runtime's exact segments
def test_bench_large_photo(benchmark, tmp_path, runtime: str) -> None:
    height, width = (3000, 4000) if full_size() else (300, 400)
    torch.manual_seed(0)
    gen = Generator(GeneratorConfig() if full_size() else GeneratorConfig(ngf=8, n_blocks=1)).eval()
    with torch.no_grad():  # random biases as well: outputs must not be near-trivial
        for p in gen.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    ckpt = save_generator(gen, tmp_path / "g.pt")
    photo = _photo(tmp_path / "photo.jpg", height, width)
    argv = [sys.executable, "-m", "engine.deblur", str(photo), "--no-progress"]
    if runtime == "onnx-stats":
        pytest.importorskip("onnxruntime")
        from export.onnx_stats import export_stats

        argv += ["--runtime", "onnx", "--model", str(export_stats(gen, tmp_path / "stats"))]
    else:
        argv += ["--checkpoint", str(ckpt)]
    argv += [] if full_size() else ["--tile", "160"]
    if os.environ.get("DEBLURGAN_BENCH_MAX_MEMORY"):
        argv += ["--max-memory", os.environ["DEBLURGAN_BENCH_MAX_MEMORY"]]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    runs: list[dict] = []

    def deblur_photo() -> None:
        out = tmp_path / f"out{len(runs)}"
        runs.append(run_measured([*argv, "--out", str(out)], env))
        assert runs[-1]["returncode"] == 0, runs[-1]["stderr"][-2000:]
        assert (out / "photo.jpg").is_file()

    benchmark.group = "large-photo"
    measure(benchmark, deblur_photo, rounds=1, warmup=0, case=f"deblur {width}x{height} JPEG", backend=runtime)
    run = runs[-1]
    estimate, ref_h, ref_w = _untiled_estimate_s(gen, height, width)
    note = re.search(r"runs in (\d+) tiles of (\d+) px", run["stderr"])
    from deblurgan.precision import resolve_precision

    benchmark.extra_info.update(
        shape=[height, width],
        dtype={"bf16": "bfloat16"}.get(resolve_precision("auto", "cpu"), "float32"),
        peak_rss_bytes=run["peak_rss_bytes"],
        wall_s=run["wall_s"],
        untiled_fp32_estimate_s=estimate,
        untiled_reference=f"{ref_w}x{ref_h}",
        ratio_to_untiled=run["wall_s"] / estimate,
        tiles=int(note.group(1)) if note else 1,
        tile_px=int(note.group(2)) if note else None,
        bands="runs in bands of rows" in run["stderr"],  # one window, each pass in bands (exact tiling)
        max_memory=os.environ.get("DEBLURGAN_BENCH_MAX_MEMORY", "default"),
        full_size=full_size(),
        runtime=runtime,
    )
