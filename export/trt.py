"""Build a TensorRT 10 or 11 engine for a DeblurGAN generator from an ONNX graph that carries its precision.

Usage:
    python -m export.trt --checkpoint latest_net_G.pth --out deblurgan.engine --fp16
    python -m export.trt --onnx deblurgan_fp16.onnx --out deblurgan.engine \\
        --min 1x3x64x64 --opt 1x3x720x1280 --max 8x3x1080x1920 --workspace-gib 8 --timing-cache trt.cache

The network is strongly typed (the STRONGLY_TYPED network creation flag: opted into on TensorRT 10, always on
in 11): every layer computes in the types the ONNX graph declares, and no precision builder flag is used
(TensorRT 11 has none). With --checkpoint, or with no source (the shipped model), the graph is exported first
in the precision asked for (--fp16, --bf16, default fp32), instance norm in fp32; with --onnx the graph's own
precision is used and --fp16/--bf16, when given, must match it. Writes `<out>` and a JSON sidecar `<out>.json`
(shapes, precision, TensorRT and GPU versions); the runtime (`export.runtime.TensorRTRunner`,
`export/cpp/deblur_trt.cpp`) refuses an engine built for another GPU or TensorRT version. Needs TensorRT 10
or 11 and an NVIDIA GPU (`pip install "tensorrt>=10,<12"`); without them it exits 2 with one line saying so.
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
from deblurgan.pretrained import resolve_checkpoint

from .metadata import MIN_SIZE, PRECISIONS, SIZE_MULTIPLE
from .runtime import gpu_info, import_tensorrt, sidecar_path, tensorrt_version

DEFAULT_MIN, DEFAULT_OPT, DEFAULT_MAX = "1x3x64x64", "1x3x720x1280", "8x3x1080x1920"
SIDECAR_FORMAT_VERSION = 2
NO_FP32_NORM_REMOVED = (
    "--no-fp32-norm was removed: an engine computes in the types of its ONNX graph, whose instance norm "
    "export.onnx keeps in fp32 (fp16 statistics overflow), and TensorRT 11 has no per-layer precision setting"
)


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
    """Builder settings; `precision` None takes the graph's, otherwise the graph must be in it."""

    precision: str | None = None
    workspace_gib: float = 4.0
    timing_cache: Path | None = None

    def __post_init__(self) -> None:
        if self.precision is not None and self.precision not in PRECISIONS:
            raise DeblurGANError(f"precision must be one of {PRECISIONS} (got {self.precision!r})")
        if not self.workspace_gib > 0:
            raise DeblurGANError(f"--workspace-gib must be > 0 (got {self.workspace_gib})")


def onnx_precision(path: Path) -> tuple[str, str]:
    """(precision of the weights, precision instance norm computes in) of an ONNX file, from its types."""
    import onnx

    from .onnx import graph_precision

    try:
        model = onnx.load(str(path))
    except Exception as e:  # protobuf decode errors have no common base class
        raise DeblurGANError(f"{path}: not a readable ONNX model ({type(e).__name__})") from None
    return graph_precision(model)


class TrtEngineBuilder:
    """ONNX -> serialized TensorRT engine: one strongly typed build path for TensorRT 10 and 11."""

    def __init__(self, onnx_path: str | os.PathLike, profile: ShapeProfile, options: BuildOptions, trt=None) -> None:
        self.onnx_path = Path(onnx_path)
        if not self.onnx_path.is_file():
            raise DeblurGANError(f"ONNX model not found: {self.onnx_path}")
        self.profile = profile
        self.options = options
        self.trt = trt if trt is not None else import_tensorrt()
        self.trt_major, self.trt_minor = tensorrt_version(self.trt)  # read once; unsupported versions stop here
        self.trt_version = str(self.trt.__version__)
        self.precision, self.norm_precision = onnx_precision(self.onnx_path)
        if self.precision not in PRECISIONS:
            raise DeblurGANError(f"{self.onnx_path}: weights in {self.precision} precision; not a DeblurGAN export")
        if options.precision is not None and options.precision != self.precision:
            raise DeblurGANError(
                f"{self.onnx_path} is {_a(self.precision)} graph, not {options.precision}: export it with "
                f"python -m export.onnx --{options.precision}, or build from --checkpoint"
            )
        self.logger = self.trt.Logger(self.trt.Logger.WARNING)
        self.input_name = ""
        self.output_name = ""
        self.warnings: list[str] = []
        if self.norm_precision not in ("fp32", "none"):
            self.warnings.append(
                f"instance norm computes in {self.norm_precision} in this graph: statistics can overflow"
            )
        self._cache = None

    def parse_network(self, builder):  # -> (network, parser)
        trt = self.trt
        # TensorRT 10: opt into strong typing; TensorRT 11: always on, the flag is accepted and ignored
        network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
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
        if opts.timing_cache is not None:
            self._attach_timing_cache(config, opts.timing_cache)
        return config

    def _attach_timing_cache(self, config, path: Path) -> None:
        """Use the cache at `path` if TensorRT accepts it, else a fresh one; say when the file was ignored."""
        blob = path.read_bytes() if path.is_file() else b""
        cache = config.create_timing_cache(blob)
        if cache is not None and config.set_timing_cache(cache, ignore_mismatch=False):
            self._cache = cache  # TensorRT needs it alive until the engine is built
            return
        if blob:
            self.warnings.append(
                f"timing cache {path} was ignored (made on another GPU or TensorRT version, or damaged); "
                "this build's cache replaces it"
            )
            cache = config.create_timing_cache(b"")
            if cache is not None and config.set_timing_cache(cache, ignore_mismatch=False):
                self._cache = cache
                return
        self.warnings.append(f"TensorRT accepted no timing cache: building without one ({path} left unchanged)")

    def build(self, out: str | os.PathLike) -> Path:
        """Build, then write the engine and its sidecar (atomically); then update the timing cache, if any."""
        trt, out = self.trt, Path(out)
        gpu = gpu_info()
        builder = trt.Builder(self.logger)
        network, _parser = self.parse_network(builder)  # the parser must outlive the network
        config = self.configure(builder, network)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise DeblurGANError("TensorRT failed to build the engine (see the TensorRT log above)")
        atomic_write_bytes(out, bytes(serialized))
        write_sidecar(out, self.sidecar(gpu))
        if self._cache is not None:
            self._save_timing_cache(config, self.options.timing_cache)
        return out

    def _save_timing_cache(self, config, path: Path) -> None:
        """Write the builder's timing cache; the engine is already written, so trouble here is only a warning."""
        cache = config.get_timing_cache()
        if cache is None:
            self.warnings.append(f"TensorRT returned no timing cache: {path} left unchanged")
            return
        try:
            atomic_write_bytes(path, bytes(cache.serialize()))
        except Exception as e:  # noqa: BLE001 - the engine is written; a cache failure must not undo that
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            self.warnings.append(f"could not write timing cache {path} ({first})")

    def sidecar(self, gpu: dict[str, str]) -> dict:
        return make_sidecar(
            onnx=self.onnx_path,
            input_name=self.input_name,
            output_name=self.output_name,
            profile=self.profile,
            precision=self.precision,
            norm_precision=self.norm_precision,
            workspace_gib=self.options.workspace_gib,
            trt_version=self.trt_version,
            gpu=gpu,
        )


def make_sidecar(
    *,
    onnx: Path,
    input_name: str,
    output_name: str,
    profile: ShapeProfile,
    precision: str,
    norm_precision: str,
    workspace_gib: float,
    trt_version: str,
    gpu: dict[str, str],
) -> dict:
    """Everything needed to check an engine before use and to rebuild it."""
    return {
        "format": "deblurgan-tensorrt",
        "format_version": SIDECAR_FORMAT_VERSION,
        "engine_version": str(__version__),
        "onnx": onnx.name,
        "input": input_name,
        "output": output_name,
        "layout": "NCHW RGB float32",
        "input_range": "[-1, 1]",
        "size_multiple": SIZE_MULTIPLE,
        "profile": {k: list(v) for k, v in asdict(profile).items()},
        "typing": "strong",
        "precision": precision,
        "norm_precision": norm_precision,
        "workspace_gib": workspace_gib,
        "tensorrt_version": trt_version,
        "gpu": gpu,
    }


def write_sidecar(engine: str | os.PathLike, data: dict) -> Path:
    path = sidecar_path(engine)
    atomic_write_bytes(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())
    return path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m export.trt", description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group()
    src.add_argument("--onnx", help="a float-I/O ONNX file from python -m export.onnx; its precision is used")
    src.add_argument("--checkpoint", help="a checkpoint, exported to ONNX first (default: the shipped model)")
    p.add_argument("--out", default="deblurgan.engine", help="output engine (default: %(default)s)")
    prec = p.add_mutually_exclusive_group()
    prec.add_argument("--fp16", action="store_true", help="an fp16 engine (instance norm in fp32)")
    prec.add_argument("--bf16", action="store_true", help="a bf16 engine (instance norm in fp32)")
    p.add_argument("--fp32-norm", action="store_true", help=argparse.SUPPRESS)  # what always happens now
    p.add_argument("--no-fp32-norm", action="store_true", help=argparse.SUPPRESS)  # removed: one-line error
    p.add_argument("--min", default=DEFAULT_MIN, help="smallest input NxCxHxW (default: %(default)s)")
    p.add_argument("--opt", default=DEFAULT_OPT, help="input shape to tune for (default: %(default)s)")
    p.add_argument("--max", default=DEFAULT_MAX, help="largest input NxCxHxW (default: %(default)s)")
    p.add_argument("--workspace-gib", type=float, default=4.0, help="builder workspace limit (default: 4)")
    p.add_argument("--timing-cache", help="timing cache file, read if present and updated (speeds up rebuilds)")
    return p


def options_from_args(args: argparse.Namespace) -> tuple[ShapeProfile, BuildOptions]:
    profile = ShapeProfile.parse(args.min, args.opt, args.max)
    precision = "fp16" if args.fp16 else "bf16" if args.bf16 else None
    cache = Path(args.timing_cache) if args.timing_cache else None
    return profile, BuildOptions(precision, args.workspace_gib, cache)


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    if args.no_fp32_norm:
        raise DeblurGANError(NO_FP32_NORM_REMOVED)
    profile, options = options_from_args(args)
    out = Path(args.out)
    if args.onnx:
        if not Path(args.onnx).is_file():
            raise DeblurGANError(f"ONNX model not found: {args.onnx}")
    else:
        checkpoint = resolve_checkpoint(args.checkpoint)
        if not checkpoint.is_file():
            raise DeblurGANError(f"checkpoint not found: {checkpoint}")
    trt = import_tensorrt()  # before the (slow) ONNX step: say what is missing first
    if args.onnx:
        return _build(Path(args.onnx), out, profile, options, trt)
    from .onnx import export_checkpoint

    precision = options.precision or "fp32"
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = export_checkpoint(checkpoint, Path(tmp) / f"{out.stem}.onnx", precision=precision)
        print(f"exported {checkpoint} to {_a(precision)} ONNX graph (instance norm in fp32)")
        return _build(onnx_path, out, profile, options, trt)


def _a(precision: str) -> str:
    """'an fp16', 'a bf16'."""
    return f"{'a' if precision.startswith('b') else 'an'} {precision}"


def _build(onnx_path: Path, out: Path, profile: ShapeProfile, options: BuildOptions, trt) -> int:
    builder = TrtEngineBuilder(onnx_path, profile, options, trt=trt)
    print(
        f"building a strongly typed {builder.precision} engine with TensorRT {builder.trt_version} for "
        f"{format_shape(profile.min)}..{format_shape(profile.max)} ..."
    )
    try:
        path = builder.build(out)
    finally:
        for warning in builder.warnings:
            print(f"warning: {warning}", file=sys.stderr)
    print(f"wrote {path} and {sidecar_path(path).name}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point: errors become one line on stderr and exit 2."""
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
