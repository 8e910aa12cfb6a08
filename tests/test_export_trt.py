"""TensorRT builder and runner: everything that does not need TensorRT, plus the API calls checked
against a fake `tensorrt` module (this checks our code calls the API as written, not TensorRT itself).
Tests that need the real library use pytest.importorskip("tensorrt") and a GPU.
"""

from __future__ import annotations

import ctypes
import json
import sys
import types

import numpy as np
import onnx
import pytest
import torch

from deblurgan import Generator, GeneratorConfig
from deblurgan.checkpoint import save_generator
from deblurgan.errors import DeblurGANError
from export import runtime as rt
from export import trt as trt_export
from export.onnx import OnnxExporter
from export.runtime import TRT_MISSING, TensorRTRunner, check_compatible, load_runner
from export.trt import BuildOptions, ShapeProfile, TrtEngineBuilder, main, parse_shape

GPU = {"name": "Fake GPU", "compute_capability": "9.0"}


# --- a fake tensorrt module: records what our code asks of the API --------------------------------


class _Enum:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


class FakeLayer:
    def __init__(self, op_type: str, trt) -> None:
        self.type = trt.LayerType.NORMALIZATION if op_type == "InstanceNormalization" else _Enum(op_type)
        self.precision = None
        self.output_types: dict[int, object] = {}

    def set_output_type(self, index: int, dtype) -> None:
        self.output_types[index] = dtype


class FakeTensor:
    def __init__(self, name: str, shape) -> None:
        self.name, self.shape = name, shape


class FakeNetwork:
    def __init__(self) -> None:
        self.layers: list[FakeLayer] = []
        self.inputs: list[FakeTensor] = []
        self.outputs: list[FakeTensor] = []

    num_layers = property(lambda self: len(self.layers))
    num_inputs = property(lambda self: len(self.inputs))
    num_outputs = property(lambda self: len(self.outputs))

    def get_layer(self, i):
        return self.layers[i]

    def get_input(self, i):
        return self.inputs[i]

    def get_output(self, i):
        return self.outputs[i]


def make_fake_trt(version: str = "10.99.0"):
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.float32, trt.float16 = _Enum("FLOAT"), _Enum("HALF")
    trt.LayerType = types.SimpleNamespace(NORMALIZATION=_Enum("NORMALIZATION"))
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE=_Enum("WORKSPACE"))
    trt.BuilderFlag = types.SimpleNamespace(
        FP16=_Enum("FP16"), BF16=_Enum("BF16"), OBEY_PRECISION_CONSTRAINTS=_Enum("OBEY_PRECISION_CONSTRAINTS")
    )
    trt.OnnxParserFlag = types.SimpleNamespace(NATIVE_INSTANCENORM=_Enum("NATIVE_INSTANCENORM"))
    trt.TensorIOMode = types.SimpleNamespace(INPUT=_Enum("INPUT"), OUTPUT=_Enum("OUTPUT"))
    trt.INormalizationLayer = FakeLayer
    trt.calls = []

    class Logger:
        WARNING = 2

        def __init__(self, level) -> None:
            self.level = level

    class OnnxParser:
        def __init__(self, network, logger) -> None:
            self.network, self.flags, self.num_errors = network, [], 0

        def set_flag(self, flag) -> None:
            self.flags.append(flag)
            trt.calls.append(("parser_flag", flag.name))

        def parse(self, data: bytes, path=None) -> bool:
            model = onnx.load_from_string(data)  # the real exported graph drives the fake network
            self.network.layers = [FakeLayer(n.op_type, trt) for n in model.graph.node]
            shape = lambda v: tuple(d.dim_value or -1 for d in v.type.tensor_type.shape.dim)
            self.network.inputs = [FakeTensor(v.name, shape(v)) for v in model.graph.input]
            self.network.outputs = [FakeTensor(v.name, shape(v)) for v in model.graph.output]
            return True

    class Profile:
        def set_shape(self, name, lo, opt, hi) -> None:
            self.shapes = (name, tuple(lo), tuple(opt), tuple(hi))

    class TimingCache:
        def __init__(self, blob: bytes) -> None:
            self.blob = blob

        def serialize(self) -> bytes:
            return self.blob + b"+timed"

    class Config:
        def __init__(self) -> None:
            self.flags, self.profiles, self.cache, self.pool = [], [], None, {}

        def set_memory_pool_limit(self, pool, size) -> None:
            self.pool[pool.name] = size

        def add_optimization_profile(self, profile) -> int:
            self.profiles.append(profile)
            return 0

        def set_flag(self, flag) -> None:
            self.flags.append(flag.name)

        def create_timing_cache(self, blob: bytes):
            return TimingCache(bytes(blob))

        def set_timing_cache(self, cache, ignore_mismatch) -> bool:
            self.cache = cache
            return True

        def get_timing_cache(self):
            return self.cache

    class Builder:
        def __init__(self, logger) -> None:
            self.logger = logger

        def create_network(self, flags):
            assert flags == 0
            return FakeNetwork()

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            desc = {
                "flags": config.flags,
                "pool": config.pool,
                "profile": [list(s) if isinstance(s, tuple) else s for s in config.profiles[0].shapes],
                "fp32_layers": sum(1 for layer in network.layers if layer.precision is trt.float32),
                "fp32_outputs": sum(1 for layer in network.layers if layer.output_types.get(0) is trt.float32),
            }
            return json.dumps(desc).encode()

    # --- runtime side: the "engine" negates its input so bindings are observable ------------------

    class Context:
        def __init__(self, engine) -> None:
            self.engine, self.shapes, self.addr = engine, {}, {}

        def set_input_shape(self, name, shape) -> bool:
            self.shapes[name] = tuple(shape)
            return name == "input"

        def get_tensor_shape(self, name):
            return self.shapes["input"]

        def set_tensor_address(self, name, ptr) -> bool:
            self.addr[name] = ptr
            return True

        def execute_async_v3(self, stream) -> bool:
            trt.calls.append(("execute_async_v3", stream))
            n = int(np.prod(self.shapes["input"]))
            src = np.ctypeslib.as_array((ctypes.c_float * n).from_address(self.addr["input"]))
            dst = np.ctypeslib.as_array((ctypes.c_float * n).from_address(self.addr["output"]))
            dst[:] = -src
            return True

    class Engine:
        num_io_tensors = 2

        def get_tensor_name(self, i):
            return ["input", "output"][i]

        def get_tensor_mode(self, name):
            return trt.TensorIOMode.INPUT if name == "input" else trt.TensorIOMode.OUTPUT

        def get_tensor_dtype(self, name):
            return trt.float32

        def get_tensor_profile_shape(self, name, index):
            return [(1, 3, 8, 8), (1, 3, 64, 64), (4, 3, 256, 256)]

        def create_execution_context(self):
            return Context(self)

    class Runtime:
        def __init__(self, logger) -> None:
            pass

        def deserialize_cuda_engine(self, blob: bytes):
            return Engine() if blob.startswith(b"{") else None

    trt.Logger, trt.OnnxParser, trt.Builder, trt.Runtime = Logger, OnnxParser, Builder, Runtime
    return trt


@pytest.fixture
def fake_trt(monkeypatch):
    trt = make_fake_trt()
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(trt_export, "gpu_info", lambda *a: dict(GPU))
    monkeypatch.setattr(rt, "gpu_info", lambda *a: dict(GPU))
    return trt


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory):
    d = tmp_path_factory.mktemp("trt")
    torch.manual_seed(0)
    g = Generator(GeneratorConfig(ngf=8, n_blocks=1))
    ckpt = save_generator(g, d / "g.pth")
    return OnnxExporter(g.eval()).export(d / "g.onnx"), ckpt


# --- no TensorRT needed -----------------------------------------------------------------------------


def test_missing_tensorrt_is_one_clear_line(monkeypatch, tmp_path, capsys, onnx_file):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import fails as if not installed
    onnx_path, ckpt = onnx_file
    for src in (["--onnx", str(onnx_path)], ["--checkpoint", str(ckpt)]):
        assert main([*src, "--out", str(tmp_path / "m.engine"), "--fp16"]) == 2
        err = capsys.readouterr().err
        assert err == f"error: {TRT_MISSING}\n"
    assert not list(tmp_path.iterdir())
    (tmp_path / "m.engine").write_bytes(b"engine")
    with pytest.raises(DeblurGANError, match="TensorRT is not installed"):
        load_runner(tmp_path / "m.engine", "auto", device="cuda")


def test_cli_validates_before_needing_tensorrt(monkeypatch, tmp_path, capsys, onnx_file):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    onnx_path, _ = onnx_file
    cases = {
        ("--min", "1x3x250x256"): "multiples of 4",
        ("--opt", "1x3x64"): "NxCxHxW",
        ("--max", "1x3x32x32"): "min <= opt <= max",
        ("--min", "1x1x64x64"): "channels 3",
        ("--workspace-gib", "0"): "workspace",
    }
    for extra, msg in cases.items():
        assert main(["--onnx", str(onnx_path), "--out", str(tmp_path / "m.engine"), *extra]) == 2
        assert msg in capsys.readouterr().err
    assert main(["--onnx", str(tmp_path / "nope.onnx")]) == 2
    assert "not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse: exactly one of --onnx / --checkpoint
        main(["--out", "x.engine"])
    with pytest.raises(SystemExit):
        main(["--onnx", str(onnx_path), "--fp16", "--bf16"])


def test_shape_profile_parsing():
    p = ShapeProfile.parse("1x3x64x64", "2x3x720x1280", "8x3x1080x1920")
    assert p.opt == (2, 3, 720, 1280) and p.max[0] == 8
    assert parse_shape("1,3,8,8") == (1, 3, 8, 8)
    with pytest.raises(DeblurGANError, match="on N"):
        ShapeProfile.parse("4x3x64x64", "2x3x64x64", "8x3x64x64")
    with pytest.raises(DeblurGANError, match=">= 8"):
        ShapeProfile.parse("1x3x4x4", "1x3x64x64", "1x3x64x64")


# --- the API calls, against the fake module ---------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "expect_flags", "pinned"),
    [
        ([], [], False),
        (["--fp16"], ["FP16", "OBEY_PRECISION_CONSTRAINTS"], True),
        (["--bf16"], ["BF16", "OBEY_PRECISION_CONSTRAINTS"], True),
        (["--fp16", "--no-fp32-norm"], ["FP16"], False),
    ],
)
def test_build_engine_from_onnx(fake_trt, tmp_path, onnx_file, flags, expect_flags, pinned):
    onnx_path, _ = onnx_file
    out = tmp_path / "m.engine"
    argv = ["--onnx", str(onnx_path), "--out", str(out), "--min", "1x3x64x64", "--opt", "2x3x128x128"]
    assert main([*argv, "--max", "4x3x256x256", "--workspace-gib", "0.5", *flags]) == 0
    built = json.loads(out.read_bytes())
    assert built["flags"] == expect_flags
    assert built["pool"] == {"WORKSPACE": 1 << 29}
    assert built["profile"] == ["input", [1, 3, 64, 64], [2, 3, 128, 128], [4, 3, 256, 256]]
    n_norm = sum(n.op_type == "InstanceNormalization" for n in onnx.load(str(onnx_path)).graph.node)
    assert n_norm == 7
    assert built["fp32_layers"] == built["fp32_outputs"] == (n_norm if pinned else 0)
    assert ("parser_flag", "NATIVE_INSTANCENORM") in fake_trt.calls
    side = json.loads((tmp_path / "m.engine.json").read_text())
    assert side["precision"] == ("fp16" if "--fp16" in flags else "bf16" if "--bf16" in flags else "fp32")
    assert side["norm_precision"] == ("fp32" if pinned or not flags else "fp16")
    assert side["tensorrt_version"] == "10.99.0" and side["gpu"] == GPU
    assert side["profile"]["max"] == [4, 3, 256, 256] and side["input"] == "input"


def test_checkpoint_goes_through_onnx_and_timing_cache_is_updated(fake_trt, tmp_path, onnx_file):
    _, ckpt = onnx_file
    cache = tmp_path / "trt.cache"
    cache.write_bytes(b"old")
    out = tmp_path / "sub" / "m.engine"
    assert main(["--checkpoint", str(ckpt), "--out", str(out), "--fp16", "--timing-cache", str(cache)]) == 0
    assert json.loads(out.read_bytes())["fp32_layers"] == 7
    assert cache.read_bytes() == b"old+timed"
    assert sorted(p.name for p in out.parent.iterdir()) == ["m.engine", "m.engine.json"]


def test_builder_refuses_uint8_graph(fake_trt, tmp_path):
    g = Generator(GeneratorConfig(ngf=8, n_blocks=1)).eval()
    path = OnnxExporter(g, io="uint8").export(tmp_path / "u8.onnx")
    builder = TrtEngineBuilder(path, ShapeProfile.parse("1x3x8x8", "1x3x8x8", "1x3x8x8"), BuildOptions(), fake_trt)
    with pytest.raises(DeblurGANError, match="NCHW float export"):
        builder.build(tmp_path / "u8.engine")
    assert not (tmp_path / "u8.engine").exists()


def _runner(fake_trt, monkeypatch, tmp_path, sidecar: dict | None = None) -> TensorRTRunner:
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"{fake}")
    if sidecar is not None:
        (tmp_path / "m.engine.json").write_text(json.dumps(sidecar))
    monkeypatch.setattr(TensorRTRunner, "_check_device", lambda self: None)  # CPU tensors stand in for CUDA
    monkeypatch.setattr(TensorRTRunner, "_stream_handle", lambda self: 1234)
    return TensorRTRunner(engine, device="cpu")


def test_runner_binds_by_name_and_runs_on_current_stream(fake_trt, monkeypatch, tmp_path):
    runner = _runner(fake_trt, monkeypatch, tmp_path, {"tensorrt_version": "10.99.0", "gpu": GPU})
    assert runner.max_batch == 4 and runner.dtype == torch.float32
    x = torch.rand(2, 3, 16, 24) * 2 - 1
    y = runner(x)
    assert torch.equal(y, -x)  # the fake engine wrote through the bound output address
    assert ("execute_async_v3", 1234) in fake_trt.calls
    with pytest.raises(DeblurGANError, match="outside the engine's profile"):
        runner(torch.zeros(1, 3, 512, 512))
    with pytest.raises(DeblurGANError, match="max_batch"):
        runner(torch.zeros(5, 3, 16, 16))


def test_runner_refuses_foreign_engines(fake_trt, monkeypatch, tmp_path):
    with pytest.raises(DeblurGANError, match="built with TensorRT 10.1.0"):
        _runner(fake_trt, monkeypatch, tmp_path, {"tensorrt_version": "10.1.0", "gpu": GPU})
    other = {"name": "Other GPU", "compute_capability": "8.6"}
    with pytest.raises(DeblurGANError, match="built for GPU Other GPU"):
        _runner(fake_trt, monkeypatch, tmp_path, {"tensorrt_version": "10.99.0", "gpu": other})
    bad = tmp_path / "bad.engine"
    bad.write_bytes(b"garbage")
    with pytest.raises(DeblurGANError, match="could not deserialize"):
        TensorRTRunner(bad, device="cpu")


def test_check_compatible_without_sidecar_accepts():
    check_compatible({}, "10.0", GPU, "x.engine")


# --- the real library (GPU machines with TensorRT) --------------------------------------------------


@pytest.mark.gpu
def test_real_tensorrt_fp16_engine_matches_pytorch(tmp_path, onnx_file):
    pytest.importorskip("tensorrt")
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    onnx_path, ckpt = onnx_file
    out = tmp_path / "m.engine"
    argv = ["--onnx", str(onnx_path), "--out", str(out), "--fp16", "--min", "1x3x64x64", "--opt", "2x3x256x256"]
    assert main([*argv, "--max", "2x3x256x256"]) == 0
    runner = load_runner(out, "tensorrt", device="cuda")
    from deblurgan.checkpoint import load_generator

    g = load_generator(ckpt).cuda()
    import skimage.data  # natural photographs, bundled with scikit-image

    ims = [skimage.data.astronaut()[:256, 128:384], skimage.data.coffee()[:256, :256]]
    x = torch.stack([torch.from_numpy(np.ascontiguousarray(im)).permute(2, 0, 1) for im in ims])
    x = (x.float() / 127.5 - 1).cuda()
    with torch.no_grad():
        ref = g(x)
    mse = (runner(x) - ref).pow(2).mean().item()
    assert 10 * np.log10(4.0 / max(mse, 1e-20)) >= 45.0
