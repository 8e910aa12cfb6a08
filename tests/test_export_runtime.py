"""load_runner: runtime detection, one-line errors, one door to the torch runtime, all runners via the Deblurrer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deblurgan import Generator, GeneratorConfig
from deblurgan.checkpoint import save_generator
from deblurgan.errors import DeblurGANError
from deblurgan.inference import Deblurrer
from export.onnx import OnnxExporter
from export.runtime import OnnxRunner, Runner, TorchRunner, check_input, detect_runtime, load_runner


@pytest.fixture(autouse=True)
def _auto_is_fp32(monkeypatch):
    """These tests compare with fp32 references: "auto" means fp32 here on every CPU (bf16: test_precision.py)."""
    import deblurgan.precision

    monkeypatch.setattr(deblurgan.precision, "cpu_has_native_bf16", lambda: False)


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    d = tmp_path_factory.mktemp("runtime")
    torch.manual_seed(0)
    g = Generator(GeneratorConfig(ngf=8, n_blocks=1))
    with torch.no_grad():
        for p in g.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    ckpt = save_generator(g, d / "g.pth")
    onnx_path = OnnxExporter(g.eval()).export(d / "g.onnx")
    return ckpt, onnx_path


def test_detect_runtime():
    assert detect_runtime("a/b.onnx") == "onnx" and detect_runtime("m.PT2") == "aoti"
    assert detect_runtime("x.engine") == "tensorrt" and detect_runtime("latest_net_G.pth") == "torch"
    with pytest.raises(DeblurGANError, match="pass --runtime"):
        detect_runtime("model.bin")


def test_one_door_to_the_torch_runtime(artifacts, monkeypatch):
    """Deblurrer(checkpoint) and load_runner(..., runtime="torch") open checkpoints through the same function."""
    import deblurgan.inference as inf
    import export.runtime as rt

    assert rt.Runner is inf.Runner and rt.TorchRunner is inf.TorchRunner and rt.check_input is inf.check_input
    assert rt.RUNTIMES is inf.RUNTIMES
    calls = []
    original = inf.TorchRunner.from_checkpoint.__func__

    def spy(cls, path, *a, **k):
        calls.append(path)
        return original(cls, path, *a, **k)

    monkeypatch.setattr(inf.TorchRunner, "from_checkpoint", classmethod(spy))
    ckpt = artifacts[0]
    Deblurrer(ckpt, precision="fp32")
    load_runner(ckpt, runtime="torch", precision="fp32")
    load_runner(ckpt, backend="torch")  # the older keyword
    assert len(calls) == 3


def test_runners_follow_the_interface(artifacts):
    ckpt, onnx_path = artifacts
    torch_runner = load_runner(ckpt, "auto", precision="fp32")
    onnx_runner = load_runner(onnx_path, "onnx", device=torch.device("cpu"))
    assert isinstance(torch_runner, TorchRunner) and isinstance(onnx_runner, OnnxRunner)
    x = torch.rand(2, 3, 36, 52, generator=torch.Generator().manual_seed(0)) * 2 - 1
    for r in (torch_runner, onnx_runner):
        assert isinstance(r, Runner) and r.device == torch.device("cpu") and r.dtype == torch.float32
    assert (onnx_runner(x) - torch_runner(x)).abs().max().item() <= 1e-4


def test_load_runner_errors(artifacts, tmp_path):
    ckpt, onnx_path = artifacts
    cases = [
        ((tmp_path / "missing.onnx", "onnx"), "not found"),
        ((onnx_path, "aoti"), "for the onnx runtime, not aoti: use --runtime onnx"),
        ((ckpt, "onnx"), "for the torch runtime"),
        ((onnx_path, "caffe"), "unknown runtime"),
    ]
    for (path, runtime), msg in cases:
        with pytest.raises(DeblurGANError, match=msg):
            load_runner(path, runtime)
    with pytest.raises(DeblurGANError, match="precision is set when it is exported"):
        load_runner(onnx_path, "onnx", fp16=True)
    with pytest.raises(DeblurGANError, match="precision is set when it is exported"):
        load_runner(onnx_path, "onnx", precision="bf16")
    with pytest.raises(DeblurGANError, match="unknown precision"):
        load_runner(ckpt, "torch", precision="int8")
    with pytest.raises(DeblurGANError, match="CUDA"):
        load_runner(ckpt, "torch", fp16=True)  # fp16 eager needs CUDA
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00garbage")
    with pytest.raises(DeblurGANError, match="not a loadable ONNX model"):
        load_runner(junk, "onnx")


def test_check_input_rejects_bad_shapes(artifacts):
    runner = load_runner(artifacts[1], "onnx")
    for shape in [(1, 3, 30, 32), (1, 1, 32, 32), (3, 32, 32), (1, 3, 4, 4)]:
        with pytest.raises(DeblurGANError):
            check_input(torch.zeros(shape), runner)


def test_deblurrer_gives_same_image_with_onnx_runner(artifacts):
    """The same padding / conversion path: an odd-sized uint8 image through both backends."""
    ckpt, onnx_path = artifacts
    image = np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    ref = Deblurrer(ckpt, tile_stats="tile", precision="fp32").deblur(image)
    got = Deblurrer(runner=load_runner(onnx_path, "onnx"), tile_stats="tile").deblur(image)
    assert got.shape == ref.shape == image.shape and got.dtype == np.uint8
    assert np.abs(got.astype(int) - ref.astype(int)).max() <= 1
    assert np.abs(got.astype(int) - image.astype(int)).mean() > 1  # the model did something


def test_onnx_stats_model_tiles_exactly(artifacts, tmp_path, monkeypatch):
    """export.onnx_stats: IN statistics as inputs, so ONNX Runtime tiles like the torch runtime (exact)."""
    pytest.importorskip("onnxruntime")
    import deblurgan.inference as inf
    import deblurgan.tiling as tiling
    from deblurgan.checkpoint import load_generator
    from export.onnx_stats import OnnxStatsRunner, export_stats

    ckpt, onnx_path = artifacts
    gen = load_generator(ckpt)
    folder = export_stats(gen, tmp_path / "stats")
    runner = load_runner(folder, precision="fp32")  # a folder with the manifest: the onnx runtime
    assert isinstance(runner, OnnxStatsRunner) and isinstance(runner, Runner)
    x = torch.rand(1, 3, 150, 190, generator=torch.Generator().manual_seed(3)) * 2 - 1
    torch_runner = TorchRunner(gen, precision="fp32")
    untiled = Deblurrer(runner=torch_runner).deblur_tensor(x)
    assert (Deblurrer(runner=runner).deblur_tensor(x) - untiled).abs().max() < 1e-4  # per-image IN, untiled
    d = Deblurrer(runner=runner, tile=128)
    assert d.tile_stats == "global" and len(d.plan(152, 192).windows()) == 4
    assert (d.deblur_tensor(x) - untiled).abs().max() < 1e-3  # exact tiling through the segments
    kept_none = Deblurrer(runner=runner, tile=128, cache_budget=0).deblur_tensor(x)
    assert (kept_none - untiled).abs().max() < 1e-3
    monkeypatch.setattr(inf, "resident_memory", lambda: 0)
    bands: list[int] = []
    real_bands = tiling.ExactTiles._bands
    monkeypatch.setattr(tiling.ExactTiles, "_bands", lambda *a: bands.append(len(real_bands(*a))) or real_bands(*a))
    small = Deblurrer(runner=runner, max_memory=152 * 192 * (inf.IMAGE_BYTES_PER_PIXEL + 300))
    assert len(small.plan(152, 192).windows()) == 1
    assert (small.deblur_tensor(x) - untiled).abs().max() < 1e-3  # one window in bands, from the manifest's reach
    assert max(bands) > 1
    plain = Deblurrer(runner=load_runner(onnx_path, "onnx"), tile=128).deblur_tensor(x)  # per-tile statistics
    assert (plain - untiled).abs().max() > 1e-2
    with pytest.raises(DeblurGANError, match="not a folder written by export.onnx_stats"):
        export_stats(gen, tmp_path)
    with pytest.raises(DeblurGANError, match="is a folder"):
        load_runner(tmp_path, "onnx")


def test_onnx_runtime_tiles_within_the_memory_bound(artifacts, monkeypatch):
    """ONNX Runtime's larger measured footprint per pixel makes the Deblurrer tile it sooner than torch."""
    import deblurgan.inference as inf
    from export.runtime import ORT_BYTES_PER_CHANNEL

    monkeypatch.setattr(inf, "resident_memory", lambda: 0)
    ckpt, onnx_path = artifacts
    runner = load_runner(onnx_path, "onnx")
    assert runner.bytes_per_pixel == 8 * ORT_BYTES_PER_CHANNEL  # ngf 8, from the model's metadata
    bound = 200 * 200 * runner.bytes_per_pixel
    assert Deblurrer(runner=runner, max_memory=bound).plan(160, 160) is None
    plan = Deblurrer(runner=runner, max_memory=bound).plan(240, 240)
    assert plan is not None and min(plan.tile, 240) ** 2 * runner.bytes_per_pixel <= bound
    torch_d = Deblurrer(ckpt, precision="fp32", max_memory=bound, tile_stats="tile")
    assert Deblurrer(runner=runner)._bytes_per_pixel() > torch_d._bytes_per_pixel()
    torch_plan = torch_d.plan(240, 240)
    assert torch_plan is None or torch_plan.tile >= plan.tile
