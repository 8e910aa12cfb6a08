"""Build a TensorRT 10 engine for a DeblurGAN generator (from an ONNX file or straight from a checkpoint).

Usage:
    python -m export.trt --checkpoint latest_net_G.pth --out deblurgan.engine --fp16
    python -m export.trt --onnx deblurgan.onnx --out deblurgan.engine --fp16 \\
        --min 1x3x64x64 --opt 1x3x720x1280 --max 8x3x1080x1920 --workspace-gib 8 --timing-cache trt.cache

Writes `<out>` and a JSON sidecar `<out>.json` (shapes, precision, TensorRT and GPU versions); the runtime
(`export.runtime.TensorRTRunner`, `export/cpp/deblur_trt.cpp`) refuses an engine built for another GPU or
TensorRT version. In --fp16/--bf16 the instance-norm layers stay fp32 (precision constraints) unless
--no-fp32-norm: fp16 variance overflow is a known failure of fp16 instance norm. Needs TensorRT 10 and an
NVIDIA GPU (`pip install "deblurgan-engine[trt]"`); without them it exits 2 with one line saying so.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from deblurgan import __version__
from deblurgan.cli import run_cli
from deblurgan.errors import DeblurGANError
from deblurgan.fsutil import atomic_write_bytes

from .runtime import gpu_info, import_tensorrt, sidecar_path

PRECISIONS = ("fp32", "fp16", "bf16")
SIZE_MULTIPLE, MIN_SIZE = 4, 8
DEFAULT_MIN, DEFAULT_OPT, DEFAULT_MAX = "1x3x64x64", "1x3x720x1280", "8x3x1080x1920"


@dataclass(frozen=True)
class ShapeProfile:
    """The optimization profile of the single NCHW input: min <= opt <= max, H/W multiples of 4."""

    min: tuple[int, int, int, int]
    opt: tuple[int, int, int, int]
    max: tuple[int, int, int, int]

    def __post_init__(self) -> None:
        for name in ("min", "opt", "max"):
            shape = getattr(self, name)
            n, c, h, w = shape
            if n < 1 or c != 3:
                raise DeblurGANError(f"--{name} {format_shape(shape)}: batch must be >= 1 and channels 3")
            if h % SIZE_MULTIPLE or w % SIZE_MULTIPLE or h < MIN_SIZE or w < MIN_SIZE:
                raise DeblurGANError(
                    f"--{name} {format_shape(shape)}: H and W must be multiples of {SIZE_MULTIPLE} and >= {MIN_SIZE}"
                )
        for i, axis in enumerate("NCHW"):
            if not self.min[i] <= self.opt[i] <= self.max[i]:
                raise DeblurGANError(
                    f"shape profile: need min <= opt <= max on {axis} (got {self.min[i]}, {self.opt[i]}, {self.max[i]})"
                )

    @classmethod
    def parse(cls, min: str, opt: str, max: str) -> ShapeProfile:
        return cls(parse_shape(min, "min"), parse_shape(opt, "opt"), parse_shape(max, "max"))


def parse_shape(text: str, name: str = "shape") -> tuple[int, int, int, int]:
    """'1x3x256x256' -> (1, 3, 256, 256)."""
    try:
        dims = tuple(int(v) for v in text.lower().replace(",", "x").split("x"))
    except ValueError:
        dims = ()
    if len(dims) != 4:
        raise DeblurGANError(f"--{name} must look like 1x3x256x256 (NxCxHxW), got {text!r}")
    return dims  # type: ignore[return-value]


def format_shape(shape: Sequence[int]) -> str:
    return "x".join(str(v) for v in shape)


@dataclass
class BuildOptions:
    precision: str = "fp32"
    fp32_norm: bool = True  # keep InstanceNormalization in fp32 under fp16/bf16
    workspace_gib: float = 4.0
    timing_cache: Path | None = None

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise DeblurGANError(f"precision must be one of {PRECISIONS} (got {self.precision!r})")
        if not self.workspace_gib > 0:
            raise DeblurGANError(f"--workspace-gib must be > 0 (got {self.workspace_gib})")


class TrtEngineBuilder:
    """ONNX -> serialized TensorRT engine with one optimization profile (TensorRT 10 Python API)."""

    def __init__(self, onnx_path: str | os.PathLike, profile: ShapeProfile, options: BuildOptions, trt=None) -> None:
        self.onnx_path = Path(onnx_path)
        if not self.onnx_path.is_file():
            raise DeblurGANError(f"ONNX model not found: {self.onnx_path}")
        self.profile = profile
        self.options = options
        self.trt = trt if trt is not None else import_tensorrt()
        self.logger = self.trt.Logger(self.trt.Logger.WARNING)
        self.input_name = ""
        self.output_name = ""
        self.norm_layers_pinned = 0

    def parse_network(self, builder):  # -> (network, parser)
        trt = self.trt
        network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
        parser = trt.OnnxParser(network, self.logger)
        parser.set_flag(trt.OnnxParserFlag.NATIVE_INSTANCENORM)  # INormalizationLayer, not a plugin
        if not parser.parse(self.onnx_path.read_bytes(), str(self.onnx_path)):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise DeblurGANError(f"{self.onnx_path}: TensorRT could not parse the ONNX model ({errors[:300]})")
        if network.num_inputs != 1 or network.num_outputs != 1:
            raise DeblurGANError(f"{self.onnx_path}: expected one input and one output")
        inp = network.get_input(0)
        if len(inp.shape) != 4:
            raise DeblurGANError(f"{self.onnx_path}: TensorRT needs the NCHW float export (python -m export.onnx)")
        self.input_name, self.output_name = inp.name, network.get_output(0).name
        return network, parser

    def configure(self, builder, network):  # -> IBuilderConfig
        trt, opts = self.trt, self.options
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(opts.workspace_gib * (1 << 30)))
        profile = builder.create_optimization_profile()
        profile.set_shape(self.input_name, self.profile.min, self.profile.opt, self.profile.max)
        config.add_optimization_profile(profile)
        if opts.precision == "fp16":
            config.set_flag(trt.BuilderFlag.FP16)
        elif opts.precision == "bf16":
            config.set_flag(trt.BuilderFlag.BF16)
        if opts.precision != "fp32" and opts.fp32_norm:
            self.norm_layers_pinned = pin_norm_precision(trt, network)
            config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
        if opts.timing_cache is not None:
            blob = opts.timing_cache.read_bytes() if opts.timing_cache.is_file() else b""
            cache = config.create_timing_cache(blob)
            config.set_timing_cache(cache, ignore_mismatch=False)
        return config

    def build(self, out: str | os.PathLike) -> Path:
        """Build, then write the engine, its sidecar and the timing cache (each atomically)."""
        trt, out = self.trt, Path(out)
        builder = trt.Builder(self.logger)
        network, _parser = self.parse_network(builder)  # the parser must outlive the network
        config = self.configure(builder, network)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise DeblurGANError("TensorRT failed to build the engine (see the TensorRT log above)")
        atomic_write_bytes(out, bytes(serialized))
        if self.options.timing_cache is not None:
            atomic_write_bytes(self.options.timing_cache, bytes(config.get_timing_cache().serialize()))
        write_sidecar(out, self.sidecar(trt.__version__, gpu_info()))
        return out

    def sidecar(self, trt_version: str, gpu: dict[str, str]) -> dict:
        return make_sidecar(
            onnx=self.onnx_path,
            input_name=self.input_name,
            output_name=self.output_name,
            profile=self.profile,
            options=self.options,
            trt_version=trt_version,
            gpu=gpu,
            norm_layers_pinned=self.norm_layers_pinned,
        )


def pin_norm_precision(trt, network) -> int:
    """Run every normalization layer in fp32 with an fp32 output; returns how many were pinned."""
    pinned = 0
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if layer.type != trt.LayerType.NORMALIZATION:
            continue
        layer = _as_normalization(trt, layer)
        layer.precision = trt.float32
        layer.set_output_type(0, trt.float32)
        if hasattr(layer, "compute_precision"):
            layer.compute_precision = trt.float32
        pinned += 1
    if pinned == 0:
        raise DeblurGANError("no InstanceNormalization layers found to keep in fp32 (is this a DeblurGAN ONNX?)")
    return pinned


def _as_normalization(trt, layer):
    # the Python API hands out ILayer; downcast to reach INormalizationLayer.compute_precision
    try:
        layer.__class__ = trt.INormalizationLayer
    except (AttributeError, TypeError):
        pass  # already the subclass, or the bindings do not allow it: precision/output type still apply
    return layer


def make_sidecar(
    *,
    onnx: Path,
    input_name: str,
    output_name: str,
    profile: ShapeProfile,
    options: BuildOptions,
    trt_version: str,
    gpu: dict[str, str],
    norm_layers_pinned: int = 0,
) -> dict:
    """Everything needed to check an engine before use and to rebuild it."""
    pinned = options.precision != "fp32" and options.fp32_norm
    return {
        "format": "deblurgan-tensorrt",
        "format_version": 1,
        "engine_version": str(__version__),
        "onnx": onnx.name,
        "input": input_name,
        "output": output_name,
        "layout": "NCHW RGB float32",
        "input_range": "[-1, 1]",
        "size_multiple": SIZE_MULTIPLE,
        "profile": {k: list(v) for k, v in asdict(profile).items()},
        "precision": options.precision,
        "norm_precision": "fp32" if pinned or options.precision == "fp32" else options.precision,
        "norm_layers_pinned": norm_layers_pinned,
        "workspace_gib": options.workspace_gib,
        "tensorrt_version": trt_version,
        "gpu": gpu,
    }


def write_sidecar(engine: str | os.PathLike, data: dict) -> Path:
    path = sidecar_path(engine)
    atomic_write_bytes(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())
    return path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="deblurgan-export-trt", description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--onnx", help="a float-I/O ONNX file from python -m export.onnx")
    src.add_argument("--checkpoint", help="a checkpoint; exported to ONNX first")
    p.add_argument("--out", default="deblurgan.engine", help="output engine (default: %(default)s)")
    prec = p.add_mutually_exclusive_group()
    prec.add_argument("--fp16", action="store_true", help="allow fp16 kernels")
    prec.add_argument("--bf16", action="store_true", help="allow bf16 kernels")
    p.add_argument(
        "--fp32-norm",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="keep instance norm in fp32 under --fp16/--bf16 (default: on)",
    )
    p.add_argument("--min", default=DEFAULT_MIN, help="smallest input NxCxHxW (default: %(default)s)")
    p.add_argument("--opt", default=DEFAULT_OPT, help="input shape to tune for (default: %(default)s)")
    p.add_argument("--max", default=DEFAULT_MAX, help="largest input NxCxHxW (default: %(default)s)")
    p.add_argument("--workspace-gib", type=float, default=4.0, help="builder workspace limit (default: 4)")
    p.add_argument("--timing-cache", help="timing cache file, read if present and updated (speeds up rebuilds)")
    return p


def options_from_args(args: argparse.Namespace) -> tuple[ShapeProfile, BuildOptions]:
    profile = ShapeProfile.parse(args.min, args.opt, args.max)
    precision = "fp16" if args.fp16 else "bf16" if args.bf16 else "fp32"
    cache = Path(args.timing_cache) if args.timing_cache else None
    return profile, BuildOptions(precision, args.fp32_norm, args.workspace_gib, cache)


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    profile, options = options_from_args(args)
    out = Path(args.out)
    source = Path(args.onnx or args.checkpoint)
    if not source.is_file():
        raise DeblurGANError(f"{'ONNX model' if args.onnx else 'checkpoint'} not found: {source}")
    trt = import_tensorrt()  # before the (slow) ONNX step: say what is missing first
    if args.onnx:
        return _build(args.onnx, out, profile, options, trt)
    from .onnx import export_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = export_checkpoint(args.checkpoint, Path(tmp) / f"{out.stem}.onnx")
        print(f"exported {args.checkpoint} to ONNX")
        return _build(onnx_path, out, profile, options, trt)


def _build(onnx_path, out: Path, profile: ShapeProfile, options: BuildOptions, trt) -> int:
    print(f"building {options.precision} engine for {format_shape(profile.min)}..{format_shape(profile.max)} ...")
    builder = TrtEngineBuilder(onnx_path, profile, options, trt=trt)
    path = builder.build(out)
    print(f"wrote {path} and {sidecar_path(path).name}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point: errors become one line on stderr and exit 2."""
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
