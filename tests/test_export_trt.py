"""TensorRT builder and runner: everything that does not need TensorRT, plus the API calls checked against a
fake `tensorrt` module that models BOTH API surfaces NVIDIA publishes (this checks that our code calls each
API as written, not TensorRT itself):

- 10.x: weakly and strongly typed networks (`NetworkDefinitionCreationFlag.STRONGLY_TYPED` = 1),
  `BuilderFlag.FP16/BF16/OBEY_PRECISION_CONSTRAINTS`, `ILayer.precision`, `ILayer.set_output_type`;
- 11.x: strongly typed only (`STRONGLY_TYPED` = 0, accepted and ignored), none of those flags or setters.

Every builder and runner test runs against both. Tests that need the real library use
pytest.importorskip("tensorrt") and a GPU.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import sys
import tomllib
import types
from pathlib import Path

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
from export.runtime import TRT_MISSING, TRT_REQUIREMENT, TensorRTRunner, check_compatible, load_runner
from export.trt import NO_FP32_NORM_REMOVED, BuildOptions, ShapeProfile, TrtEngineBuilder, main, parse_shape

GPU = {"name": "Fake GPU", "compute_capability": "9.0"}
VERSIONS = ("10.16.0.1", "11.1.0.106")  # the last 10.x and an 11.x release, as tensorrt.__version__ spells them
ROOT = Path(__file__).resolve().parents[1]


# --- a fake tensorrt module: records what our code asks of the API --------------------------------


class _Enum:
    def __init__(self, name: str, value: int = 0) -> None:
        self.name, self.value = name, value

    def __int__(self) -> int:
        return self.value

    def __repr__(self) -> str:
        return self.name


def _enum(**members: int) -> types.SimpleNamespace:
    return types.SimpleNamespace(**{k: _Enum(k, v) for k, v in members.items()})


_ONNX_TO_TRT = {onnx.TensorProto.FLOAT: "FLOAT", onnx.TensorProto.FLOAT16: "HALF", onnx.TensorProto.BFLOAT16: "BF16"}


class FakeTensor:
    def __init__(self, name: str, shape, dtype) -> None:
        self.name, self.shape, self.dtype = name, shape, dtype


class FakeNetwork:
    def __init__(self, strongly_typed: bool) -> None:
        self.strongly_typed = strongly_typed
        self.layers: list = []
        self.inputs: list[FakeTensor] = []
        self.outputs: list[FakeTensor] = []
        self.norm_input_types: list[str] = []
        self.weight_types: list[str] = []

    num_layers = property(lambda self: len(self.layers))
    num_inputs = property(lambda self: len(self.inputs))
    num_outputs = property(lambda self: len(self.outputs))

    def get_layer(self, i):
        return self.layers[i]

    def get_input(self, i):
        return self.inputs[i]

    def get_output(self, i):
        return self.outputs[i]


def make_fake_trt(version: str):
    major = int(version.split(".")[0])
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.float32, trt.float16, trt.bfloat16 = _Enum("FLOAT"), _Enum("HALF"), _Enum("BF16")
    trt.LayerType = _enum(CONVOLUTION=0, NORMALIZATION=1, OTHER=2)
    trt.MemoryPoolType = _enum(WORKSPACE=0)
    trt.OnnxParserFlag = _enum(NATIVE_INSTANCENORM=0)
    trt.TensorIOMode = _enum(NONE=0, INPUT=1, OUTPUT=2)
    if major == 10:  # include/NvInfer.h at v10.16: weak typing deprecated, still there
        trt.NetworkDefinitionCreationFlag = _enum(
            EXPLICIT_BATCH=0, STRONGLY_TYPED=1, PREFER_JIT_PYTHON_PLUGINS=2, PREFER_AOT_PYTHON_PLUGINS=3
        )
        trt.BuilderFlag = _enum(
            FP16=0, INT8=1, DEBUG=2, REFIT=4, TF32=6, OBEY_PRECISION_CONSTRAINTS=9, PREFER_PRECISION_CONSTRAINTS=10,
            BF16=17,
        )  # fmt: skip
        weak_flags = {"FP16", "INT8", "BF16", "OBEY_PRECISION_CONSTRAINTS", "PREFER_PRECISION_CONSTRAINTS"}
    else:  # include/NvInfer.h at v11.1: strong typing only
        trt.NetworkDefinitionCreationFlag = _enum(
            STRONGLY_TYPED=0, PREFER_JIT_PYTHON_PLUGINS=1, PREFER_AOT_PYTHON_PLUGINS=2
        )
        trt.BuilderFlag = _enum(DEBUG=2, REFIT=4, TF32=6)
        weak_flags = set()
    n_creation_flags = len(vars(trt.NetworkDefinitionCreationFlag))
    trt.calls = []
    trt.cache_accepts = lambda blob: not blob.startswith(b"other-gpu")  # the cache header names the GPU
    trt.return_no_cache = False
    trt.address_ok = lambda name, ptr: ptr % 256 == 0  # setTensorAddress: "at least 256-byte alignment"

    class Layer:
        def __init__(self, op_type: str, network: FakeNetwork) -> None:
            kind = {"Conv": "CONVOLUTION", "InstanceNormalization": "NORMALIZATION"}.get(op_type, "OTHER")
            self.type = getattr(trt.LayerType, kind)
            self._network = network

        if major == 10:  # ILayer.precision / set_output_type: gone in 11; refused by strongly typed networks

            @property
            def precision(self):
                return trt.float32

            @precision.setter
            def precision(self, dtype) -> None:
                if self._network.strongly_typed:
                    raise RuntimeError("setting layer precision is not allowed in a strongly typed network")

            def set_output_type(self, index: int, dtype) -> None:
                if self._network.strongly_typed:
                    raise RuntimeError("setting layer output types is not allowed in a strongly typed network")

    trt.ILayer = Layer

    class Logger:
        WARNING = 2

        def __init__(self, level) -> None:
            self.level = level

    class OnnxParser:
        def __init__(self, network, logger) -> None:
            self.network, self.num_errors = network, 0

        def set_flag(self, flag) -> None:
            assert isinstance(flag, _Enum) and flag is trt.OnnxParserFlag.NATIVE_INSTANCENORM
            trt.calls.append(("parser_flag", flag.name))

        def parse(self, data: bytes, path=None) -> bool:
            model = onnx.load_from_string(data)  # the real exported graph drives the fake network
            net = self.network
            net.layers = [Layer(n.op_type, net) for n in model.graph.node]
            types_ = {
                v.name: v.type.tensor_type.elem_type for v in onnx.shape_inference.infer_shapes(model).graph.value_info
            }
            types_.update({i.name: i.data_type for i in model.graph.initializer})
            net.weight_types = sorted(
                {_ONNX_TO_TRT[types_[n.input[1]]] for n in model.graph.node if n.op_type == "Conv"}
            )
            net.norm_input_types = sorted(
                {_ONNX_TO_TRT[types_[n.input[0]]] for n in model.graph.node if n.op_type == "InstanceNormalization"}
            )
            shape = lambda v: tuple(d.dim_value or -1 for d in v.type.tensor_type.shape.dim)
            dtype = lambda v: _ONNX_TO_TRT.get(v.type.tensor_type.elem_type, "UINT8")
            net.inputs = [FakeTensor(v.name, shape(v), dtype(v)) for v in model.graph.input]
            net.outputs = [FakeTensor(v.name, shape(v), dtype(v)) for v in model.graph.output]
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
            assert isinstance(flag, _Enum)
            self.flags.append(flag.name)

        def create_timing_cache(self, blob: bytes):
            blob = bytes(blob)
            return None if blob == b"corrupt" else TimingCache(blob)

        def set_timing_cache(self, cache, ignore_mismatch: bool) -> bool:  # "A BOOL indicating ... success"
            if not ignore_mismatch and not trt.cache_accepts(cache.blob):
                return False
            self.cache = cache
            return True

        def get_timing_cache(self):  # "or None if no timing cache is set"
            return None if trt.return_no_cache else self.cache

    class Builder:
        def __init__(self, logger) -> None:
            self.logger = logger

        def create_network(self, flags: int = 0):
            assert isinstance(flags, int) and 0 <= flags < (1 << n_creation_flags), flags
            trt.calls.append(("create_network", flags))
            strong = major >= 11 or bool(flags & (1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)))
            return FakeNetwork(strongly_typed=strong)

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            if network.strongly_typed and set(config.flags) & weak_flags:
                return None  # 10.x: "flag X is incompatible with strongly typed networks" in the log
            desc = {
                "strongly_typed": network.strongly_typed,
                "flags": config.flags,
                "pool": config.pool,
                "profile": [list(s) if isinstance(s, tuple) else s for s in config.profiles[0].shapes],
                "weights": network.weight_types,
                "norm_inputs": network.norm_input_types,
                "io": [t.dtype for t in (*network.inputs, *network.outputs)],
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
            if not trt.address_ok(name, ptr):
                return False
            self.addr[name] = ptr
            return True

        def execute_async_v3(self, stream_handle) -> bool:
            trt.calls.append(("execute_async_v3", stream_handle))
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


def _install(monkeypatch, trt) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(trt_export, "gpu_info", lambda *a: dict(GPU))
    monkeypatch.setattr(rt, "gpu_info", lambda *a: dict(GPU))


@pytest.fixture(params=VERSIONS, ids=lambda v: f"trt{v.split('.')[0]}")
def fake_trt(request, monkeypatch):
    trt = make_fake_trt(request.param)
    _install(monkeypatch, trt)
    return trt


def tiny_generator(seed: int = 0) -> Generator:
    torch.manual_seed(seed)
    return Generator(GeneratorConfig(ngf=8, n_blocks=1)).eval()


@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    """A checkpoint and its fp32 and fp16 graphs (the fp16 one as export.onnx --fp16 writes it)."""
    d = tmp_path_factory.mktemp("trt")
    g = tiny_generator()
    ckpt = save_generator(g, d / "g.pth")
    fp32 = OnnxExporter(g).export(d / "g.onnx")
    fp16 = OnnxExporter(g, precision="fp16").export(d / "g_fp16.onnx")
    return {"ckpt": ckpt, "fp32": fp32, "fp16": fp16}


N_NORM = 7  # stem, 2 down, 2 in the block, 2 up


# --- no TensorRT needed -----------------------------------------------------------------------------


def test_missing_tensorrt_is_one_clear_line(monkeypatch, tmp_path, capsys, graphs):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import fails as if not installed
    for src in (["--onnx", str(graphs["fp16"])], ["--checkpoint", str(graphs["ckpt"])]):
        assert main([*src, "--out", str(tmp_path / "m.engine"), "--fp16"]) == 2
        err = capsys.readouterr().err
        assert err == f"error: {TRT_MISSING}\n"
    assert f'pip install "{TRT_REQUIREMENT}"' in TRT_MISSING  # fits a source checkout and an installed package
    assert not list(tmp_path.iterdir())
    (tmp_path / "m.engine").write_bytes(b"engine")
    with pytest.raises(DeblurGANError, match="TensorRT is not installed"):
        load_runner(tmp_path / "m.engine", "auto", device="cuda")


def test_trt_extra_matches_supported_versions():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert extras["trt"] == [TRT_REQUIREMENT]
    assert rt.SUPPORTED_TRT_MAJORS == (10, 11) and TRT_REQUIREMENT == "tensorrt>=10,<12"


@pytest.mark.parametrize("version", ["9.3.0.1", "12.0.0", "8.6.1", "ten"])
def test_unsupported_tensorrt_versions_are_one_line(monkeypatch, tmp_path, capsys, graphs, version):
    _install(monkeypatch, make_fake_trt("10.16.0") if version == "ten" else make_fake_trt("11.1.0"))
    sys.modules["tensorrt"].__version__ = version
    assert main(["--onnx", str(graphs["fp16"]), "--out", str(tmp_path / "m.engine")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert ("cannot read the TensorRT version" if version == "ten" else f"TensorRT {version} is not supported") in err
    assert not list(tmp_path.iterdir())


def test_cli_validates_before_needing_tensorrt(monkeypatch, tmp_path, capsys, graphs):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    cases = {
        ("--min", "1x3x250x256"): "multiples of 4",
        ("--opt", "1x3x64"): "NxCxHxW",
        ("--max", "1x3x32x32"): "min <= opt <= max",
        ("--min", "1x1x64x64"): "channels 3",
        ("--workspace-gib", "0"): "workspace",
        ("--no-fp32-norm",): NO_FP32_NORM_REMOVED,
    }
    for extra, msg in cases.items():
        assert main(["--onnx", str(graphs["fp16"]), "--out", str(tmp_path / "m.engine"), *extra]) == 2
        err = capsys.readouterr().err
        assert msg in err and err.count("\n") == 1
    assert main(["--onnx", str(tmp_path / "nope.onnx")]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["--checkpoint", str(tmp_path / "nope.pth")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    assert main(["--out", str(tmp_path / "m.engine")]) == 2  # no source: the shipped model, none ships yet
    err = capsys.readouterr().err
    assert err.startswith("error: no trained model ships") and err.count("\n") == 1
    with pytest.raises(SystemExit):  # argparse: at most one of --onnx / --checkpoint
        main(["--onnx", str(graphs["fp16"]), "--checkpoint", str(graphs["ckpt"])])
    with pytest.raises(SystemExit):
        main(["--onnx", str(graphs["fp16"]), "--fp16", "--bf16"])
    assert not list(tmp_path.iterdir())


def test_every_option_has_help():
    for action in trt_export.build_parser()._actions:
        assert action.help, action.option_strings  # hidden ones say argparse.SUPPRESS


def test_shape_profile_parsing():
    p = ShapeProfile.parse("1x3x64x64", "2x3x720x1280", "8x3x1080x1920")
    assert p.opt == (2, 3, 720, 1280) and p.max[0] == 8
    assert parse_shape("1,3,8,8") == (1, 3, 8, 8)
    with pytest.raises(DeblurGANError, match="on N"):
        ShapeProfile.parse("4x3x64x64", "2x3x64x64", "8x3x64x64")
    with pytest.raises(DeblurGANError, match=">= 8"):
        ShapeProfile.parse("1x3x4x4", "1x3x64x64", "1x3x64x64")


# --- the API calls, against the fake module of each version -----------------------------------------

PROFILE_ARGS = ["--min", "1x3x64x64", "--opt", "2x3x128x128", "--max", "4x3x256x256", "--workspace-gib", "0.5"]


@pytest.mark.parametrize(
    ("graph", "flags", "precision"), [("fp32", [], "fp32"), ("fp16", [], "fp16"), ("fp16", ["--fp16"], "fp16")]
)
def test_build_engine_from_onnx(fake_trt, tmp_path, graphs, capsys, graph, flags, precision):
    out = tmp_path / "m.engine"
    assert main(["--onnx", str(graphs[graph]), "--out", str(out), *PROFILE_ARGS, *flags]) == 0
    built = json.loads(out.read_bytes())
    assert built["strongly_typed"] is True and built["flags"] == []  # no precision flag on either version
    strongly_typed = 1 << int(fake_trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    assert ("create_network", strongly_typed) in fake_trt.calls
    assert built["pool"] == {"WORKSPACE": 1 << 29}
    assert built["profile"] == ["input", [1, 3, 64, 64], [2, 3, 128, 128], [4, 3, 256, 256]]
    assert built["weights"] == [{"fp32": "FLOAT", "fp16": "HALF"}[precision]]
    assert built["norm_inputs"] == ["FLOAT"]  # instance norm computes in fp32 in every engine
    assert built["io"] == ["FLOAT", "FLOAT"]
    assert ("parser_flag", "NATIVE_INSTANCENORM") in fake_trt.calls
    side = json.loads((tmp_path / "m.engine.json").read_text())
    assert side["precision"] == precision and side["norm_precision"] == "fp32" and side["typing"] == "strong"
    assert side["tensorrt_version"] == fake_trt.__version__ and side["gpu"] == GPU
    assert side["profile"]["max"] == [4, 3, 256, 256] and side["input"] == "input"
    assert f"strongly typed {precision} engine with TensorRT {fake_trt.__version__}" in capsys.readouterr().out


def test_precision_flag_must_match_the_graph(fake_trt, tmp_path, graphs, capsys):
    for graph, flag in (("fp32", "--fp16"), ("fp16", "--bf16")):
        assert main(["--onnx", str(graphs[graph]), "--out", str(tmp_path / "m.engine"), flag]) == 2
        err = capsys.readouterr().err
        assert f"is an {graph} graph, not {flag[2:]}: export it with python -m export.onnx {flag}" in err
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_checkpoint_is_exported_in_the_precision_asked(fake_trt, tmp_path, graphs, precision):
    cache = tmp_path / "trt.cache"
    cache.write_bytes(b"old")
    out = tmp_path / "sub" / "m.engine"
    argv = ["--checkpoint", str(graphs["ckpt"]), "--out", str(out), f"--{precision}", "--timing-cache", str(cache)]
    assert main(argv) == 0
    built = json.loads(out.read_bytes())
    assert built["weights"] == [{"fp16": "HALF", "bf16": "BF16"}[precision]] and built["norm_inputs"] == ["FLOAT"]
    assert built["strongly_typed"] is True and built["flags"] == []
    assert json.loads((tmp_path / "sub" / "m.engine.json").read_text())["precision"] == precision
    assert cache.read_bytes() == b"old+timed"
    assert sorted(p.name for p in out.parent.iterdir()) == ["m.engine", "m.engine.json"]


def test_timing_cache_from_another_gpu_is_replaced_not_fatal(fake_trt, tmp_path, graphs, capsys):
    cache = tmp_path / "trt.cache"
    cache.write_bytes(b"other-gpu cache")
    out = tmp_path / "m.engine"
    assert main(["--onnx", str(graphs["fp16"]), "--out", str(out), "--timing-cache", str(cache)]) == 0
    err = capsys.readouterr().err
    assert f"warning: timing cache {cache} was ignored" in err and err.count("\n") == 1
    assert cache.read_bytes() == b"+timed"  # this GPU's cache now
    assert out.is_file() and (tmp_path / "m.engine.json").is_file()

    cache.write_bytes(b"corrupt")  # create_timing_cache returns None
    assert main(["--onnx", str(graphs["fp16"]), "--out", str(out), "--timing-cache", str(cache)]) == 0
    assert "was ignored" in capsys.readouterr().err and cache.read_bytes() == b"+timed"


def test_no_timing_cache_from_tensorrt_keeps_the_engine(fake_trt, tmp_path, graphs, capsys):
    cache = tmp_path / "trt.cache"
    cache.write_bytes(b"old")
    fake_trt.return_no_cache = True  # get_timing_cache() -> None
    out = tmp_path / "m.engine"
    assert main(["--onnx", str(graphs["fp16"]), "--out", str(out), "--timing-cache", str(cache)]) == 0
    assert f"warning: TensorRT returned no timing cache: {cache} left unchanged" in capsys.readouterr().err
    assert cache.read_bytes() == b"old" and json.loads(out.read_bytes())["strongly_typed"]

    fake_trt.return_no_cache = False
    fake_trt.cache_accepts = lambda blob: False  # refuses even a fresh cache
    assert main(["--onnx", str(graphs["fp16"]), "--out", str(out), "--timing-cache", str(cache)]) == 0
    assert "accepted no timing cache" in capsys.readouterr().err and cache.read_bytes() == b"old"


def test_builder_refuses_uint8_graph(fake_trt, tmp_path):
    path = OnnxExporter(tiny_generator(), io="uint8").export(tmp_path / "u8.onnx")
    builder = TrtEngineBuilder(path, ShapeProfile.parse("1x3x8x8", "1x3x8x8", "1x3x8x8"), BuildOptions(), fake_trt)
    with pytest.raises(DeblurGANError, match="NCHW float export"):
        builder.build(tmp_path / "u8.engine")
    assert not (tmp_path / "u8.engine").exists()


def _runner(monkeypatch, tmp_path, sidecar: dict | None = None) -> TensorRTRunner:
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"{fake}")
    if sidecar is not None:
        (tmp_path / "m.engine.json").write_text(json.dumps(sidecar))
    monkeypatch.setattr(TensorRTRunner, "_check_device", lambda self: None)  # CPU tensors stand in for CUDA
    monkeypatch.setattr(TensorRTRunner, "_stream_handle", lambda self: 1234)
    return TensorRTRunner(engine, device="cpu")


def test_runner_binds_by_name_and_runs_on_current_stream(fake_trt, monkeypatch, tmp_path):
    runner = _runner(monkeypatch, tmp_path, {"tensorrt_version": fake_trt.__version__, "gpu": GPU})
    assert runner.max_batch == 4 and runner.dtype == torch.float32
    x = torch.rand(2, 3, 16, 24) * 2 - 1
    y = runner(x)
    assert torch.equal(y, -x)  # the fake engine wrote through the bound output address
    assert ("execute_async_v3", 1234) in fake_trt.calls
    with pytest.raises(DeblurGANError, match="outside the engine's profile"):
        runner(torch.zeros(1, 3, 512, 512))
    with pytest.raises(DeblurGANError, match="max_batch"):
        runner(torch.zeros(5, 3, 16, 16))


def test_runner_copies_misaligned_views(fake_trt, monkeypatch, tmp_path):
    """TensorRT wants 256-byte aligned tensor addresses; batch[1:] of 3x8x12 float32 is 1152 bytes in."""
    runner = _runner(monkeypatch, tmp_path)
    batch = rt.aligned_empty((3, 3, 8, 12), torch.float32, torch.device("cpu")).copy_(torch.rand(3, 3, 8, 12))
    view = batch[1:]
    assert view.data_ptr() % 256 != 0
    assert torch.equal(runner(view), -view)
    assert all(ptr % 256 == 0 for ptr in runner.context.addr.values())


def test_runner_reports_a_refused_address(fake_trt, monkeypatch, tmp_path):
    runner = _runner(monkeypatch, tmp_path)
    fake_trt.address_ok = lambda name, ptr: name != "output"
    with pytest.raises(DeblurGANError, match="TensorRT refused the address of tensor 'output'"):
        runner(torch.rand(1, 3, 8, 8))


def test_runner_refuses_foreign_engines(fake_trt, monkeypatch, tmp_path):
    with pytest.raises(DeblurGANError, match="built with TensorRT 10.1.0"):
        _runner(monkeypatch, tmp_path, {"tensorrt_version": "10.1.0", "gpu": GPU})
    other = {"name": "Other GPU", "compute_capability": "8.6"}
    with pytest.raises(DeblurGANError, match="built for GPU Other GPU"):
        _runner(monkeypatch, tmp_path, {"tensorrt_version": fake_trt.__version__, "gpu": other})
    bad = tmp_path / "bad.engine"
    bad.write_bytes(b"garbage")
    with pytest.raises(DeblurGANError, match="could not deserialize"):
        TensorRTRunner(bad, device="cpu")


def test_check_compatible_without_sidecar_accepts():
    check_compatible({}, "10.0", GPU, "x.engine")


def test_build_parser_hides_removed_option():
    helps = {a.dest: a.help for a in trt_export.build_parser()._actions}
    assert helps["no_fp32_norm"] == argparse.SUPPRESS == helps["fp32_norm"]


# --- the real library (GPU machines with TensorRT) --------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_real_tensorrt_engine_matches_pytorch(tmp_path, graphs, precision):
    pytest.importorskip("tensorrt")
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    out = tmp_path / "m.engine"
    argv = ["--checkpoint", str(graphs["ckpt"]), "--out", str(out), f"--{precision}"]
    assert main([*argv, "--min", "1x3x64x64", "--opt", "2x3x256x256", "--max", "2x3x256x256"]) == 0
    runner = load_runner(out, "tensorrt", device="cuda")
    from deblurgan.checkpoint import load_generator
    from deblurgan.precision import exact_fp32
    from export.onnx import natural_images, psnr, to_float_batch

    g = load_generator(graphs["ckpt"]).cuda()
    x = to_float_batch(natural_images([(256, 256)])).cuda()
    with torch.no_grad(), exact_fp32():
        ref = g(x)
    assert psnr(runner(x).cpu().numpy(), ref.cpu().numpy()) >= 45.0
