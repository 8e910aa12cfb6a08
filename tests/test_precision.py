"""deblurgan.precision: exact_fp32 (TF32 off inside the block) and the inference precision (fp32, bf16, auto)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import deblurgan.precision as precision_mod
from deblurgan import Generator, GeneratorConfig
from deblurgan.errors import DeblurGANError
from deblurgan.inference import Deblurrer, TorchRunner
from deblurgan.precision import cpu_has_native_bf16, exact_fp32, resolve_precision


@pytest.mark.parametrize("before", [True, False])
def test_exact_fp32_turns_tf32_off_and_restores(before: bool) -> None:
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before, not before
        with exact_fp32():
            assert torch.backends.cudnn.allow_tf32 is False and torch.backends.cuda.matmul.allow_tf32 is False
        assert torch.backends.cudnn.allow_tf32 is before and torch.backends.cuda.matmul.allow_tf32 is (not before)
        with pytest.raises(RuntimeError), exact_fp32():
            raise RuntimeError("boom")
        assert torch.backends.cudnn.allow_tf32 is before  # restored on errors too
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def test_full_fp32_fixture(full_fp32) -> None:
    assert torch.backends.cudnn.allow_tf32 is False and torch.backends.cuda.matmul.allow_tf32 is False


# --- inference precision ------------------------------------------------------------------------------------

def _gen() -> Generator:
    """ngf=8, 1 block, weights ~N(0, 0.2): far from the identity, IN statistics matter."""
    torch.manual_seed(0)
    g = Generator(GeneratorConfig(ngf=8, n_blocks=1))
    with torch.no_grad():
        for p in g.parameters():
            p.normal_(0, 0.2)
    return g.eval()


def _natural(name: str, size: int = 96) -> torch.Tensor:
    """A crop of one of scikit-image's photographs, as 1 x 3 x H x W in [-1, 1]."""
    from skimage import data

    img = getattr(data, name)()
    y, x = {"astronaut": (100, 150), "coffee": (100, 200)}[name]
    return torch.from_numpy(np.ascontiguousarray(img[y : y + size, x : x + size])).permute(2, 0, 1)[None] / 127.5 - 1


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = (a - b).pow(2).mean().item()
    return math.inf if mse == 0 else 10 * math.log10(4.0 / mse)  # peak-to-peak 2 in [-1, 1]


def test_native_bf16_detection_matches_the_cpu_flags():
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else None
    if flags is None or "flags" not in flags:
        pytest.skip("no /proc/cpuinfo flags here")
    words = set(flags.split())
    assert cpu_has_native_bf16() == bool({"avx512_bf16", "amx_tile"} & words)


@pytest.mark.parametrize("native", [True, False])
def test_auto_is_bf16_exactly_where_the_cpu_has_it(monkeypatch, native):
    monkeypatch.setattr(precision_mod, "cpu_has_native_bf16", lambda: native)
    assert resolve_precision("auto", "cpu") == ("bf16" if native else "fp32")
    assert TorchRunner(_gen()).precision == ("bf16" if native else "fp32")
    assert resolve_precision("auto", "cuda") == "fp32"  # CUDA: fp16/bf16 only when asked
    assert resolve_precision("fp32", "cpu") == "fp32" and resolve_precision("bf16", "cpu") == "bf16"


@pytest.mark.parametrize(
    ("value", "match"), [("fp8", "unknown precision 'fp8'"), ("FP32", "unknown precision"), ("fp16", "needs a CUDA")]
)
def test_bad_precision_is_one_line(value, match):
    with pytest.raises(DeblurGANError, match=match) as e:
        TorchRunner(_gen(), precision=value)
    assert "\n" not in str(e.value)


def _dtypes_seen(runner: TorchRunner, x: torch.Tensor) -> dict[str, set]:
    seen: dict[str, set] = {"conv": set(), "norm": set()}
    hooks = []
    for m in runner.generator.modules():
        kind = "conv" if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)) else "norm"
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.InstanceNorm2d)):
            hooks.append(m.register_forward_hook(lambda mod, i, o, kind=kind: seen[kind].add((i[0].dtype, o.dtype))))
    try:
        Deblurrer(runner=runner).deblur_tensor(x)
    finally:
        for h in hooks:
            h.remove()
    return seen


def test_bf16_really_runs_in_bf16_with_fp32_instance_norm():
    x = _natural("astronaut", 32)
    seen = _dtypes_seen(TorchRunner(_gen(), precision="bf16"), x)
    assert {o for _, o in seen["conv"]} == {torch.bfloat16}  # every convolution computed in bf16
    assert seen["norm"] == {(torch.float32, torch.float32)}  # statistics and normalisation in fp32
    seen = _dtypes_seen(TorchRunner(_gen(), precision="fp32"), x)
    assert seen["conv"] == {(torch.float32, torch.float32)} and seen["norm"] == {(torch.float32, torch.float32)}


@pytest.mark.parametrize("image", ["astronaut", "coffee"])
def test_output_accuracy_per_precision(image):
    """fp32 equals the plain generator; bf16 is close on natural photographs (>= 38 dB; ~43 dB seen) but not equal."""
    x = _natural(image)
    g = _gen()
    with torch.no_grad():
        plain = g(x)
    y32 = Deblurrer(runner=TorchRunner(g, precision="fp32")).deblur_tensor(x)
    assert (y32 - plain).abs().max() < 1e-5
    y16 = Deblurrer(runner=TorchRunner(g, precision="bf16")).deblur_tensor(x)
    assert 38.0 <= _psnr(y16, y32) < 80.0  # below 80 dB: bf16 did not silently fall back to fp32
    assert (y32 - x).abs().mean() > 0.3  # the model changes the image a lot: a meaningful comparison


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_exact_tiling_is_exact_in_each_precision(precision):
    x = _natural("coffee", 120)
    runner = TorchRunner(_gen(), precision=precision)
    untiled = Deblurrer(runner=runner).deblur_tensor(x)
    d = Deblurrer(runner=runner, tile=96)
    assert len(d.plan(120, 120).windows()) == 4
    tiled = d.deblur_tensor(x)
    assert (tiled - untiled).abs().max() < 1e-3  # ~1e-7 seen in both; per-tile statistics differ by ~0.1
    per_tile = Deblurrer(runner=runner, tile=96, tile_stats="tile").deblur_tensor(x)
    assert (per_tile - untiled).abs().max() > 1e-2


def test_fp16_alias_and_exported_runner_precision():
    with pytest.raises(DeblurGANError, match="CUDA"):
        TorchRunner(_gen(), fp16=True)
    with pytest.raises(DeblurGANError, match="contradicts"):
        TorchRunner(_gen(), fp16=True, precision="bf16")

    class Exported:
        device, dtype, max_batch, name = torch.device("cpu"), torch.float32, None, "onnx"

        def __call__(self, x):
            return x

    Deblurrer(runner=Exported(), precision="auto")  # auto and fp32 are fine for any runner
    with pytest.raises(DeblurGANError, match="set when it is exported"):
        Deblurrer(runner=Exported(), precision="bf16")
