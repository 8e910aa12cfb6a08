"""One runner interface for every artifact: PyTorch checkpoint, ONNX, AOTInductor `.pt2`, TensorRT `.engine`.

A runner (`deblurgan.inference.Runner`, where the protocol, the size rule and `TorchRunner` live) is a callable
`runner(x) -> y`: x is N x 3 x H x W float32 RGB in [-1, 1] on `runner.device`, y has the same shape, device
and range. Attributes: `device`, `dtype` (the input dtype it wants: always float32 here, fp16 artifacts cast
inside), `max_batch` (None = any), `name`. Pre/post-processing, padding and tiling belong to
`deblurgan.inference.Deblurrer`, which accepts any runner.

    runner = load_runner("deblurgan.onnx", runtime="onnx")
    y = runner(x)

Runners: `TorchRunner` (from deblurgan.inference), `OnnxRunner`, `AOTIRunner`, `TensorRTRunner`, and
`export.onnx_stats.OnnxStatsRunner` for a folder written by `python -m export.onnx_stats` (exact tiling).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from deblurgan.errors import DeblurGANError, first_line
from deblurgan.inference import RUNTIMES, Runner, TorchRunner, check_input

__all__ = [
    "AOTIRunner",
    "OnnxRunner",
    "RUNTIMES",
    "Runner",
    "TensorRTRunner",
    "TorchRunner",
    "check_input",
    "detect_runtime",
    "load_runner",
]

SUFFIXES = {
    "torch": (".pth", ".pt", ".ckpt", ".tar"),
    "onnx": (".onnx",),
    "aoti": (".pt2",),
    "tensorrt": (".engine", ".plan", ".trt"),
}
TRT_REQUIREMENT = "tensorrt>=10,<12"  # the [trt] extra of pyproject.toml says the same
TRT_MISSING = f'TensorRT is not installed: pip install "{TRT_REQUIREMENT}" (TensorRT 10 or 11; needs an NVIDIA GPU)'
ORT_BYTES_PER_CHANNEL = 25  # ONNX Runtime CPU: peak bytes per pixel per ngf channel (1580 measured at ngf 64)


class OnnxRunner:
    """onnxruntime session; float graphs bind torch tensors zero-copy, uint8 graphs run frame by frame.

    A `--io uint8` graph takes whole 8-bit frames: inputs are quantised to 8 bits (exact when they came
    from 8-bit images) and outputs are 8-bit levels mapped back to [-1, 1].
    """

    def __init__(self, path: str | os.PathLike, device: str | torch.device = "cpu") -> None:
        import onnxruntime as ort

        self.path = Path(path)
        self.device = torch.device(device)
        if self.device.type == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise DeblurGANError("onnxruntime has no CUDA provider here: pip install onnxruntime-gpu")
            providers: list = [("CUDAExecutionProvider", {"device_id": self.device.index or 0})]
        elif self.device.type == "cpu":
            providers = ["CPUExecutionProvider"]
        else:
            raise DeblurGANError(f"onnx backend runs on cpu or cuda, not {self.device}")
        try:
            self.session = ort.InferenceSession(str(self.path), providers=providers)
        except Exception as e:  # onnxruntime raises its own exception types for bad files
            raise DeblurGANError(f"{self.path}: not a loadable ONNX model ({first_line(e)})") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        self.io = meta.get("deblurgan.io", "float")
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name
        self.dtype = torch.float32
        self.max_batch: int | None = None
        self.precision = meta.get("deblurgan.precision", "fp32")
        self.name = "onnx-uint8" if self.io == "uint8" else "onnx"
        try:
            ngf = int(json.loads(meta.get("deblurgan.generator_config", "{}")).get("ngf", 64))
        except (ValueError, TypeError, AttributeError):
            ngf = 64
        self.bytes_per_pixel = ngf * ORT_BYTES_PER_CHANNEL  # for the Deblurrer's automatic tiling
        if self.io == "uint8" and self.device.type != "cpu":
            raise DeblurGANError("uint8-io ONNX models run on cpu here; export with --io float for CUDA")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self)
        if self.io == "uint8":
            return self._run_uint8(x)
        x = x.to(self.device, torch.float32).contiguous()
        y = torch.empty_like(x)
        binding = self.session.io_binding()
        kind, index = self.device.type, self.device.index or 0
        binding.bind_input(self.input_name, kind, index, np.float32, list(x.shape), x.data_ptr())
        binding.bind_output(self.output_name, kind, index, np.float32, list(y.shape), y.data_ptr())
        if kind == "cuda":
            torch.cuda.current_stream(self.device).synchronize()  # ORT uses its own stream
        self.session.run_with_iobinding(binding)
        return y

    def _run_uint8(self, x: torch.Tensor) -> torch.Tensor:
        frames = torch.clamp(torch.round((x.detach().cpu().float() + 1) * 127.5), 0, 255).to(torch.uint8)
        outs = []
        for frame in frames.permute(0, 2, 3, 1).contiguous().numpy():
            outs.append(torch.from_numpy(self.session.run(None, {self.input_name: frame})[0]))
        return (torch.stack(outs).permute(0, 3, 1, 2).float() / 127.5 - 1.0).contiguous()


class AOTIRunner:
    """An AOTInductor package from `python -m export.aoti`, loaded with `aoti_load_package`."""

    def __init__(self, path: str | os.PathLike, device: str | torch.device | None = None) -> None:
        self.path = Path(path)
        try:
            self.model = torch._inductor.aoti_load_package(str(self.path))
        except Exception as e:  # a corrupt zip, an ABI mismatch, a package for another device
            raise DeblurGANError(f"{self.path}: not a loadable AOTInductor package ({first_line(e)})") from None
        meta = self.model.get_metadata()
        built_for = meta.get("deblurgan.device") or meta.get("AOTI_DEVICE_KEY", "cpu")
        self.device = torch.device(device) if device is not None else torch.device(built_for)
        if self.device.type != torch.device(built_for).type:
            raise DeblurGANError(
                f"{self.path} was compiled for {built_for}, not {self.device}: "
                f"re-export with --device {self.device.type}"
            )
        self.precision = meta.get("deblurgan.precision", "fp32")
        self.fp16 = self.precision == "fp16"
        self.max_batch = int(meta["deblurgan.max_batch"]) if "deblurgan.max_batch" in meta else None
        self.dtype = torch.float32
        self.name = "aoti-fp16" if self.fp16 else "aoti"

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self)
        return self.model(x.to(self.device, torch.float32).contiguous())


_TRT_TO_TORCH = {"FLOAT": torch.float32, "HALF": torch.float16, "BF16": torch.bfloat16, "INT8": torch.int8}


TRT_ALIGNMENT = 256  # bytes: IExecutionContext::setTensorAddress wants at least this alignment
SUPPORTED_TRT_MAJORS = (10, 11)


class TensorRTRunner:
    """A serialized TensorRT 10 or 11 engine: named tensor addresses, `execute_async_v3` on the current stream.

    The JSON sidecar written by `export.trt` (`<engine>.json`) records the TensorRT version and GPU; an
    engine built elsewhere is refused with a clear message instead of failing inside TensorRT.
    """

    def __init__(self, path: str | os.PathLike, device: str | torch.device = "cuda") -> None:
        trt = import_tensorrt()
        self.trt_version = str(trt.__version__)  # read once (import_tensorrt checked it is supported)
        self.path = Path(path)
        self.device = torch.device(device)
        self._check_device()
        self.sidecar = read_sidecar(self.path)
        check_compatible(self.sidecar, self.trt_version, gpu_info(self.device), self.path)
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise DeblurGANError(
                f"{self.path}: TensorRT {self.trt_version} could not deserialize this engine "
                "(built for another GPU or TensorRT version, or corrupt): rebuild it with python -m export.trt"
            )
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or len(outputs) != 1:
            raise DeblurGANError(f"{self.path}: expected one input and one output tensor, found {names}")
        self.input_name, self.output_name = inputs[0], outputs[0]
        self.dtype = _torch_dtype(self.engine.get_tensor_dtype(self.input_name))
        self.out_dtype = _torch_dtype(self.engine.get_tensor_dtype(self.output_name))
        lo, _, hi = self.engine.get_tensor_profile_shape(self.input_name, 0)
        self.min_shape, self.max_shape = tuple(lo), tuple(hi)
        self.max_batch = int(hi[0])
        self.name = f"tensorrt-{self.sidecar.get('precision', 'fp32')}"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self)
        shape = tuple(x.shape)
        if any(s < a or s > b for s, a, b in zip(shape, self.min_shape, self.max_shape, strict=True)):
            raise DeblurGANError(
                f"{self.name}: input {shape} is outside the engine's profile {self.min_shape}..{self.max_shape}"
            )
        x = aligned(x.to(self.device, self.dtype).contiguous())  # a view such as batch[1:] is copied
        if not self.context.set_input_shape(self.input_name, shape):
            raise DeblurGANError(f"{self.name}: TensorRT rejected input shape {shape}")
        y = aligned_empty(tuple(self.context.get_tensor_shape(self.output_name)), self.out_dtype, x.device)
        for name, tensor in ((self.input_name, x), (self.output_name, y)):
            if not self.context.set_tensor_address(name, tensor.data_ptr()):
                raise DeblurGANError(
                    f"{self.name}: TensorRT refused the address of tensor {name!r} (see the TensorRT log above)"
                )
        if not self.context.execute_async_v3(self._stream_handle()):
            raise RuntimeError(f"{self.name}: execute_async_v3 failed (see TensorRT log above)")
        return y.float()

    def _check_device(self) -> None:
        if self.device.type != "cuda" or not torch.cuda.is_available():
            raise DeblurGANError("TensorRT engines run on an NVIDIA GPU: no CUDA device is available")

    def _stream_handle(self) -> int:
        return torch.cuda.current_stream(self.device).cuda_stream


def aligned_empty(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """An uninitialised contiguous tensor whose address is a multiple of TRT_ALIGNMENT bytes."""
    itemsize = dtype.itemsize
    n = int(np.prod(shape)) if shape else 1
    buf = torch.empty(n + TRT_ALIGNMENT // itemsize, dtype=dtype, device=device)
    offset = (-buf.data_ptr() % TRT_ALIGNMENT) // itemsize
    return buf[offset : offset + n].view(shape)


def aligned(x: torch.Tensor) -> torch.Tensor:
    """`x` itself when its address is TRT_ALIGNMENT-aligned, else an aligned copy (e.g. of a view batch[1:])."""
    if x.data_ptr() % TRT_ALIGNMENT == 0:
        return x
    return aligned_empty(tuple(x.shape), x.dtype, x.device).copy_(x)


def import_tensorrt():  # -> the tensorrt module
    """`import tensorrt` of a supported version, or one clear DeblurGANError saying what to install."""
    try:
        import tensorrt
    except ImportError:
        raise DeblurGANError(TRT_MISSING) from None
    tensorrt_version(tensorrt)
    return tensorrt


def tensorrt_version(trt) -> tuple[int, int]:
    """(major, minor) of a tensorrt module; a one-line DeblurGANError for versions this project does not support."""
    text = str(getattr(trt, "__version__", ""))
    try:
        major, minor = (int(part) for part in text.split(".")[:2])
    except ValueError:
        raise DeblurGANError(f"cannot read the TensorRT version ({text!r}): reinstall it ({TRT_REQUIREMENT})") from None
    if major not in SUPPORTED_TRT_MAJORS:
        raise DeblurGANError(
            f"TensorRT {text} is not supported: engines are built and run with TensorRT 10.x or 11.x "
            f'(pip install "{TRT_REQUIREMENT}")'
        )
    return major, minor


def gpu_info(device: torch.device | str = "cuda") -> dict[str, str]:
    """Name and compute capability of a CUDA device (what a TensorRT engine is tied to)."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        raise DeblurGANError("TensorRT needs an NVIDIA GPU: no CUDA device is available to this PyTorch")
    major, minor = torch.cuda.get_device_capability(device)
    return {"name": torch.cuda.get_device_name(device), "compute_capability": f"{major}.{minor}"}


def sidecar_path(engine: str | os.PathLike) -> Path:
    return Path(str(engine) + ".json")


def read_sidecar(engine: str | os.PathLike) -> dict:
    """The JSON sidecar of an engine, or {} when absent (engines built by other tools)."""
    engine = Path(engine)
    if not engine.is_file():
        raise DeblurGANError(f"TensorRT engine not found: {engine}")
    path = sidecar_path(engine)
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DeblurGANError(f"{path}: unreadable sidecar JSON ({first_line(e)})") from None
    if not isinstance(data, dict):
        raise DeblurGANError(f"{path}: sidecar JSON is not an object")
    return data


def check_compatible(sidecar: dict, trt_version: str, gpu: dict[str, str], where: Path | str) -> None:
    """Refuse an engine whose sidecar names another TensorRT version or GPU (engines are not portable)."""
    built_trt = sidecar.get("tensorrt_version")
    if built_trt and built_trt != trt_version:
        raise DeblurGANError(
            f"{where} was built with TensorRT {built_trt}, this is TensorRT {trt_version}: rebuild the engine"
        )
    built_gpu = sidecar.get("gpu") or {}
    for key in ("name", "compute_capability"):
        if built_gpu.get(key) and built_gpu[key] != gpu.get(key):
            raise DeblurGANError(
                f"{where} was built for GPU {built_gpu.get('name')} (sm {built_gpu.get('compute_capability')}), "
                f"this is {gpu.get('name')} (sm {gpu.get('compute_capability')}): rebuild the engine on this GPU"
            )


def _torch_dtype(trt_dtype) -> torch.dtype:
    name = getattr(trt_dtype, "name", str(trt_dtype)).split(".")[-1].upper()
    if name not in _TRT_TO_TORCH:
        raise DeblurGANError(f"unsupported TensorRT I/O dtype {trt_dtype}")
    return _TRT_TO_TORCH[name]


def detect_runtime(path: str | os.PathLike) -> str:
    """The runtime a file belongs to, from its suffix (a folder from export.onnx_stats: onnx)."""
    from .onnx_stats import is_stats_model

    if is_stats_model(path):
        return "onnx"
    suffix = Path(path).suffix.lower()
    for runtime, suffixes in SUFFIXES.items():
        if suffix in suffixes:
            return runtime
    raise DeblurGANError(f"{path}: cannot tell the runtime from the suffix {suffix!r}; pass --runtime")


def load_runner(
    path_or_checkpoint: str | os.PathLike,
    runtime: str = "auto",
    device: str | torch.device = "cpu",
    fp16: bool = False,
    *,
    precision: str = "auto",
    backend: str | None = None,
) -> Runner:
    """Open any model file as a runner; every failure is a one-line DeblurGANError.

    `backend=` is the older name of `runtime`; `fp16=True` that of `precision="fp16"` (torch runtime).
    """
    if backend is not None:
        runtime = backend
    path = Path(path_or_checkpoint)
    if runtime == "auto":
        runtime = detect_runtime(path)
    if runtime not in RUNTIMES:
        raise DeblurGANError(f"unknown runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}")
    if runtime == "onnx" and path.is_dir():
        from .onnx_stats import OnnxStatsRunner, is_stats_model

        if not is_stats_model(path):
            raise DeblurGANError(f"{path} is a folder, not an ONNX model (nor one written by export.onnx_stats)")
        _require("onnxruntime", "pip install onnxruntime")
        if fp16 or precision not in ("auto", "fp32"):
            raise DeblurGANError("--precision applies to the torch runtime; this ONNX model computes in fp32")
        return OnnxStatsRunner(path, device=device)
    if not path.is_file():
        raise DeblurGANError(f"{runtime} model not found: {path}")
    found = _suffix_runtime(path)
    if found is not None and found != runtime:
        raise DeblurGANError(f"{path} is a file for the {found} runtime, not {runtime}: use --runtime {found}")
    if runtime == "torch":
        return TorchRunner.from_checkpoint(path, device=device, fp16=fp16, precision=precision)
    if fp16 or precision not in ("auto", "fp32"):
        raise DeblurGANError(
            f"--precision {'fp16' if fp16 else precision} applies to the torch runtime; "
            f"a {runtime} model's precision is set when it is exported"
        )
    if runtime == "onnx":
        _require("onnxruntime", "pip install onnxruntime")
        return OnnxRunner(path, device=device)
    if runtime == "aoti":
        return AOTIRunner(path, device=device)
    return TensorRTRunner(path, device="cuda" if torch.device(device).type == "cpu" else device)


def _suffix_runtime(path: Path) -> str | None:
    try:
        return detect_runtime(path)
    except DeblurGANError:
        return None


def _require(module: str, hint: str) -> None:
    try:
        __import__(module)
    except ImportError:
        raise DeblurGANError(f"{module} is not installed: {hint}") from None
