"""Export a DeblurGAN generator to ONNX (dynamic batch, height and width), in fp32, fp16 or bf16.

Usage:
    python -m export.onnx --checkpoint latest_net_G.pth --out deblurgan.onnx
    python -m export.onnx --checkpoint C --out deblurgan_fp16.onnx --fp16   # the input to python -m export.trt
    python -m export.onnx --checkpoint C --out deblurgan_u8.onnx --io uint8   # camera frames in, frames out

`--io float` (default): input "input" N x 3 x H x W float32 RGB in [-1, 1], output "output" the same.
`--io uint8`: input "image" H x W x 3 uint8 RGB, output "image_out" the same (scaling and rounding baked in).
`--fp16` / `--bf16`: weights and activations in that type, every instance norm computed in fp32 (casts around
it), inputs and outputs still float32; the graph's metadata says the precision. Without --checkpoint the
shipped model is exported. H and W must be multiples of 4 (>= 8). The graph passes `onnx.checker` and is
verified before it is written: fp32 against PyTorch on random inputs (max abs <= --atol), fp16/bf16 against
fp32 PyTorch on natural photographs (PSNR >= --min-psnr), run by ONNX Runtime, or by
`onnx.reference.ReferenceEvaluator` where ONNX Runtime has no CPU kernel for the type (bf16 convolutions).
"""

from __future__ import annotations

import argparse
import copy
import logging
import math
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from deblurgan.checkpoint import load_generator
from deblurgan.cli import run_cli
from deblurgan.errors import DeblurGANError
from deblurgan.fsutil import atomic_path
from deblurgan.networks import Generator
from deblurgan.pretrained import resolve_checkpoint

from .metadata import IO_MODES, MAX_SIZE, MIN_SIZE, PRECISIONS, SIZE_MULTIPLE, artifact_metadata

OPSET = 18
BF16_OPSET = 22  # ONNX allows bfloat16 in Conv, ConvTranspose and InstanceNormalization from opset 22
REQUIRED_OPS = ("InstanceNormalization", "Pad", "ConvTranspose")
FORBIDDEN_OPS = ("BatchNormalization",)
TORCH_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
DEFAULT_MIN_PSNR = 45.0
EXIT_VERIFY_FAILED = 1


class VerificationFailed(DeblurGANError):
    """The exported graph does not match PyTorch within the limit."""


class Uint8IO(nn.Module):
    """H x W x 3 uint8 RGB in, the same out: the Deblurrer's pre/post-processing inside the graph."""

    def __init__(self, generator: nn.Module) -> None:
        super().__init__()
        self.generator = generator

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = image.permute(2, 0, 1).unsqueeze(0).to(torch.float32) / 127.5 - 1.0
        y = self.generator(x)[0]
        y = torch.clamp(torch.round((y + 1.0) * 127.5), 0.0, 255.0).to(torch.uint8)
        return y.permute(1, 2, 0)


class Fp32Norm(nn.Module):
    """An instance norm computed in fp32 inside a reduced-precision network (fp16 statistics overflow)."""

    def __init__(self, norm: nn.Module) -> None:
        super().__init__()
        self.norm = norm.float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.float()).to(x.dtype)


class ReducedPrecision(nn.Module):
    """float32 in and out; weights and activations in fp16/bf16 inside; instance norm in fp32."""

    def __init__(self, generator: Generator, precision: str) -> None:
        super().__init__()
        if precision not in TORCH_DTYPES:
            raise DeblurGANError(f"reduced precision must be one of {tuple(TORCH_DTYPES)} (got {precision!r})")
        self.dtype = TORCH_DTYPES[precision]
        self.generator = copy.deepcopy(generator).to(self.dtype)
        wrapped = 0
        for parent in list(self.generator.modules()):
            for name, child in list(parent.named_children()):
                if isinstance(child, nn.InstanceNorm2d):
                    setattr(parent, name, Fp32Norm(child))
                    wrapped += 1
        if wrapped == 0:
            raise DeblurGANError("no InstanceNorm2d layers to keep in fp32: load the generator with kernels='torch'")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.generator(x.to(self.dtype)).to(x.dtype)


def io_names(io: str) -> tuple[str, str]:
    """(input name, output name) of an exported graph."""
    return ("image", "image_out") if io == "uint8" else ("input", "output")


def metadata(generator: Generator, io: str, precision: str = "fp32") -> dict[str, str]:
    """The `metadata_props` every ONNX export carries (export.metadata plus the instance norm's precision)."""
    return artifact_metadata(generator, io=io, precision=precision, norm_precision="fp32")


def default_opset(precision: str) -> int:
    return BF16_OPSET if precision == "bf16" else OPSET


class OnnxExporter:
    """Trace a generator with the dynamo ONNX exporter and write a checked `.onnx` file atomically."""

    def __init__(
        self, generator: Generator, io: str = "float", opset: int | None = None, precision: str = "fp32"
    ) -> None:
        if io not in IO_MODES:
            raise DeblurGANError(f"--io must be one of {IO_MODES} (got {io!r})")
        if precision not in PRECISIONS:
            raise DeblurGANError(f"precision must be one of {PRECISIONS} (got {precision!r})")
        opset = default_opset(precision) if opset is None else opset
        if opset < OPSET:  # the dynamo exporter cannot down-convert reflect Pad below 18
            raise DeblurGANError(f"--opset must be >= {OPSET} (got {opset})")
        if precision == "bf16" and opset < BF16_OPSET:
            raise DeblurGANError(f"--bf16 needs --opset >= {BF16_OPSET} (ONNX has bfloat16 convolutions from there)")
        self.generator = generator.eval()
        self.io = io
        self.opset = opset
        self.precision = precision

    def module(self) -> nn.Module:
        """The module to trace: the generator, in reduced precision if asked, behind uint8 I/O if asked."""
        module: nn.Module = self.generator
        if self.precision != "fp32":
            module = ReducedPrecision(self.generator, self.precision).eval()
        return Uint8IO(module) if self.io == "uint8" else module

    def module_and_example(self) -> tuple[nn.Module, torch.Tensor, dict]:
        """The module to trace, an example input, and its dynamic shapes."""
        dim = torch.export.Dim
        h4 = dim("h4", min=MIN_SIZE // SIZE_MULTIPLE, max=MAX_SIZE // SIZE_MULTIPLE)
        w4 = dim("w4", min=MIN_SIZE // SIZE_MULTIPLE, max=MAX_SIZE // SIZE_MULTIPLE)
        module = self.module()
        if self.io == "uint8":
            example = torch.randint(0, 256, (32, 48, 3), dtype=torch.uint8)
            return module, example, {"image": {0: 4 * h4, 1: 4 * w4}}
        # batch 2, not 1: torch.export specialises a size-1 dimension to a constant
        example = torch.rand(2, 3, 32, 48) * 2 - 1
        batch = dim("batch", min=1, max=1024)
        return module, example, {"x": {0: batch, 2: 4 * h4, 3: 4 * w4}}

    def to_model_proto(self):  # -> onnx.ModelProto
        import onnx

        module, example, dynamic = self.module_and_example()
        in_name, out_name = io_names(self.io)
        quiet = logging.getLogger("torch.onnx._internal.exporter._registration")  # "torchvision not installed"
        level = quiet.level
        quiet.setLevel(logging.ERROR)
        try:
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")
                program = torch.onnx.export(
                    module,
                    (example,),
                    dynamo=True,
                    dynamic_shapes=dynamic,
                    input_names=[in_name],
                    output_names=[out_name],
                    opset_version=self.opset,
                    optimize=True,
                    verbose=False,
                )
        finally:
            quiet.setLevel(level)
        model = program.model_proto
        model.doc_string = "DeblurGAN generator (Kupyn et al. 2018), exported by deblurgan-engine"
        onnx.helper.set_model_props(model, metadata(self.generator, self.io, self.precision))
        check_graph(model, self.precision, self.io)
        return model

    def export(self, out: str | os.PathLike) -> Path:
        """Write the model to `out` (temp file + rename: an old file survives any failure)."""
        return atomic_save_onnx(self.to_model_proto(), out)


_ELEM_PRECISION = {1: "fp32", 10: "fp16", 16: "bf16"}  # onnx.TensorProto FLOAT, FLOAT16, BFLOAT16


def graph_precision(model) -> tuple[str, str]:
    """(precision of the convolution weights, precision the instance norms compute in), read from the types.

    Each is "fp32", "fp16", "bf16", "mixed" or "none" (no such layers)."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    g = inferred.graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*g.value_info, *g.input, *g.output]}
    types.update({init.name: init.data_type for init in g.initializer})

    def precision_of(names: list[str]) -> str:
        found = {_ELEM_PRECISION.get(types.get(n, 0), "other") for n in names}
        return "none" if not found else found.pop() if len(found) == 1 else "mixed"

    weights = [n.input[1] for n in g.node if n.op_type in ("Conv", "ConvTranspose")]
    norm_inputs = [n.input[0] for n in g.node if n.op_type == "InstanceNormalization"]
    return precision_of(weights), precision_of(norm_inputs)


def check_graph(model, precision: str = "fp32", io: str = "float") -> None:
    """onnx.checker plus the op-set, precision and I/O-type rules an inference engine relies on."""
    import onnx

    onnx.checker.check_model(model, full_check=True)
    ops = {n.op_type for n in model.graph.node}
    missing = [op for op in REQUIRED_OPS if op not in ops]
    bad = [op for op in FORBIDDEN_OPS if op in ops]
    if missing or bad:
        raise RuntimeError(f"unexpected ONNX graph: missing {missing}, forbidden {bad}; ops: {sorted(ops)}")
    for n in model.graph.node:
        if n.op_type == "Pad":
            mode = next((a.s for a in n.attribute if a.name == "mode"), b"constant")
            if mode != b"reflect":
                raise RuntimeError(f"Pad node {n.name} has mode {mode!r}, expected reflect")
    weights, norm = graph_precision(model)
    if weights != precision or norm != "fp32":
        raise RuntimeError(f"ONNX graph computes in {weights} with instance norm in {norm}; expected {precision}/fp32")
    io_type = onnx.TensorProto.UINT8 if io == "uint8" else onnx.TensorProto.FLOAT
    for v in (*model.graph.input, *model.graph.output):
        if v.type.tensor_type.elem_type != io_type:
            raise RuntimeError(f"ONNX graph {v.name} has element type {v.type.tensor_type.elem_type}, not {io_type}")


def atomic_save_onnx(model, out: str | os.PathLike) -> Path:
    import onnx

    with atomic_path(out) as tmp:
        onnx.save_model(model, str(tmp))  # < 2 GB: one self-contained file, no external data
    return Path(out)


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The `metadata_props` of an ONNX file (without loading the weights into a session)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}


def run_graph(path: str | os.PathLike, feeds: dict[str, np.ndarray], evaluator: str = "auto") -> tuple[list, str]:
    """Run an ONNX file on CPU: (outputs, evaluator name).

    `evaluator="auto"`: ONNX Runtime, or `onnx.reference.ReferenceEvaluator` where ONNX Runtime has no CPU
    kernel for a type in the graph (bf16 convolutions); "onnxruntime" or "reference" force one."""
    if evaluator not in ("auto", "onnxruntime", "reference"):
        raise ValueError(f"unknown evaluator {evaluator!r}")
    if evaluator != "reference":
        import onnxruntime as ort
        from onnxruntime.capi.onnxruntime_pybind11_state import NotImplemented as OrtNotImplemented

        try:
            session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except OrtNotImplemented:
            if evaluator == "onnxruntime":
                raise
        else:
            return session.run(None, feeds), "onnxruntime"
    import onnx
    from onnx.reference import ReferenceEvaluator

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # numpy's float16 reductions warn on overflow: the result shows it
        return ReferenceEvaluator(onnx.load(str(path))).run(None, feeds), "onnx.reference"


def natural_images(sizes: Sequence[tuple[int, int]]) -> list[np.ndarray]:
    """Two natural photographs per size (scikit-image's bundled astronaut and coffee), H x W x 3 uint8 crops."""
    import skimage.data

    photos = [skimage.data.astronaut(), skimage.data.coffee()]
    crops = []
    for h, w in sizes:
        for photo in photos:
            ph, pw = photo.shape[:2]
            crop = photo[(ph - min(h, ph)) // 2 :, (pw - min(w, pw)) // 2 :][:h, :w]
            crop = np.pad(crop, ((0, h - crop.shape[0]), (0, w - crop.shape[1]), (0, 0)), mode="symmetric")
            crops.append(np.ascontiguousarray(crop))
    return crops


def to_float_batch(frames: Sequence[np.ndarray]) -> torch.Tensor:
    """H x W x 3 uint8 frames of one size -> N x 3 x H x W float32 in [-1, 1]."""
    return torch.stack([torch.from_numpy(f).permute(2, 0, 1) for f in frames]).float() / 127.5 - 1.0


def verify_onnx(
    path: str | os.PathLike,
    generator: Generator,
    sizes: Sequence[tuple[int, int]] = ((64, 64), (96, 128)),
    batch: int = 2,
    seed: int = 0,
) -> float:
    """Run an fp32 file in ONNX Runtime (CPU) and PyTorch on random inputs; return the max abs difference.

    For uint8 graphs the difference is in 8-bit levels (0 or 1 from rounding ties is expected).
    """
    io = read_metadata(path).get("deblurgan.io", "float")
    in_name, _ = io_names(io)
    gen = torch.Generator().manual_seed(seed)
    worst = 0.0
    for h, w in sizes:
        if io == "uint8":
            x = torch.randint(0, 256, (h, w, 3), dtype=torch.uint8, generator=gen)
            with torch.no_grad():
                ref = Uint8IO(generator.eval())(x).numpy().astype(np.int32)
            got = run_graph(path, {in_name: x.numpy()}, "onnxruntime")[0][0].astype(np.int32)
        else:
            x = torch.rand(batch, 3, h, w, generator=gen) * 2 - 1
            with torch.no_grad():
                ref = generator.eval()(x).numpy()
            got = run_graph(path, {in_name: x.numpy()}, "onnxruntime")[0][0]
        if got.shape != ref.shape:
            raise RuntimeError(f"onnxruntime output shape {got.shape} != PyTorch {ref.shape} at {h}x{w}")
        worst = max(worst, float(np.abs(got - ref).max()))
    return worst


def psnr(a: np.ndarray, b: np.ndarray, peak_to_peak: float = 2.0) -> float:
    """PSNR in dB of two arrays on a range of `peak_to_peak` (2 for [-1, 1])."""
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * math.log10(peak_to_peak**2 / mse)


def verify_precision(
    path: str | os.PathLike,
    generator: Generator,
    sizes: Sequence[tuple[int, int]] = ((64, 64), (96, 128)),
    evaluator: str = "auto",
) -> tuple[float, str]:
    """(worst PSNR in dB, evaluator) of a graph vs fp32 PyTorch on natural photographs at each size."""
    io = read_metadata(path).get("deblurgan.io", "float")
    in_name, _ = io_names(io)
    generator = generator.float().eval()
    worst, used = float("inf"), evaluator
    for h, w in sizes:
        frames = natural_images([(h, w)])
        if io == "uint8":
            for frame in frames:
                with torch.no_grad():
                    ref = Uint8IO(generator)(torch.from_numpy(frame)).numpy()
                outs, used = run_graph(path, {in_name: frame}, evaluator)
                worst = min(worst, psnr(outs[0], ref, 255.0))
            continue
        x = to_float_batch(frames)
        with torch.no_grad():
            ref = generator(x).numpy()
        outs, used = run_graph(path, {in_name: x.numpy()}, evaluator)
        if outs[0].shape != ref.shape:
            raise RuntimeError(f"{used} output shape {outs[0].shape} != PyTorch {ref.shape} at {h}x{w}")
        worst = min(worst, psnr(outs[0], ref))
    return worst, used


def parse_size(text: str) -> tuple[int, int]:
    """'HxW' -> (H, W), both multiples of 4 and >= 8."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise DeblurGANError(f"size must look like 256x256 (HxW), got {text!r}") from None
    for v in (h, w):
        if v < MIN_SIZE or v % SIZE_MULTIPLE:
            raise DeblurGANError(f"size {text!r}: H and W must be multiples of {SIZE_MULTIPLE} and >= {MIN_SIZE}")
    return h, w


def export_checkpoint(
    checkpoint: str | os.PathLike | None, out: str | os.PathLike, io: str = "float", precision: str = "fp32"
) -> Path:
    """Load a checkpoint (ours, the authors' release, or the shipped model when None) and export it unverified."""
    generator = load_generator(resolve_checkpoint(checkpoint), kernels="torch")  # Triton IN has no ONNX form
    return OnnxExporter(generator, io=io, precision=precision).export(out)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m export.onnx", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", help="our checkpoint or the authors' latest_net_G.pth (default: the shipped model)")
    p.add_argument("--out", default="deblurgan.onnx", help="output .onnx file (default: %(default)s)")
    p.add_argument("--io", choices=IO_MODES, default="float", help="float: NCHW float32 in [-1, 1]; uint8: HWC frames")
    prec = p.add_mutually_exclusive_group()
    prec.add_argument("--fp16", action="store_true", help="fp16 weights and activations, instance norm in fp32")
    prec.add_argument("--bf16", action="store_true", help=f"bf16 likewise (needs opset >= {BF16_OPSET})")
    p.add_argument("--opset", type=int, help=f"ONNX opset (default: {OPSET}; {BF16_OPSET} with --bf16)")
    p.add_argument("--no-verify", action="store_true", help="write the graph without comparing it with PyTorch")
    p.add_argument(
        "--verify-sizes",
        default="64x64,96x128",
        help="comma-separated HxW sizes for the check (default: %(default)s)",
    )
    p.add_argument("--atol", type=float, default=1e-4, help="fp32 graphs: max abs error allowed (default: %(default)g)")
    p.add_argument(
        "--min-psnr",
        type=float,
        default=DEFAULT_MIN_PSNR,
        help="fp16/bf16 graphs: least PSNR vs fp32 PyTorch on natural images, in dB (default: %(default)g)",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point: bad input is one line on stderr and exit 2; a failed verification exit 1."""
    return run_cli(_main, argv)


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    sizes = [parse_size(s) for s in args.verify_sizes.split(",") if s.strip()]
    if not args.no_verify and not sizes:
        raise DeblurGANError("--verify-sizes names no size (or pass --no-verify)")
    if not args.atol >= 0:
        raise DeblurGANError(f"--atol must be >= 0 (got {args.atol})")
    out = Path(args.out)
    if out.suffix.lower() != ".onnx":
        raise DeblurGANError(f"--out must end in .onnx (got {out})")
    precision = "fp16" if args.fp16 else "bf16" if args.bf16 else "fp32"
    generator = load_generator(resolve_checkpoint(args.checkpoint), kernels="torch")
    exporter = OnnxExporter(generator, io=args.io, opset=args.opset, precision=precision)
    model = exporter.to_model_proto()
    try:
        with atomic_path(out) as tmp:  # verified before it replaces anything at `out`
            import onnx

            onnx.save_model(model, str(tmp))
            size_mb = tmp.stat().st_size / 1e6
            if not args.no_verify:
                _verify(tmp, generator, sizes, precision, args, out)
    except VerificationFailed as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_VERIFY_FAILED
    print(f"wrote {out} ({size_mb:.1f} MB, {precision}, io={args.io}, opset {exporter.opset})")
    return 0


def _verify(path: Path, generator: Generator, sizes, precision: str, args, out: Path) -> None:
    """Print the comparison with PyTorch; raise VerificationFailed past the limit."""
    not_written = f"{out} was not written (--no-verify writes it unchecked)"
    if precision == "fp32":
        err = verify_onnx(path, generator, sizes)
        limit = 1.0 if args.io == "uint8" else args.atol
        unit = "8-bit levels" if args.io == "uint8" else "max abs"
        print(f"onnxruntime vs PyTorch at {args.verify_sizes}: {err:.3g} {unit} (limit {limit:g})")
        if not err <= limit:
            raise VerificationFailed(
                f"exported model differs from PyTorch by {err:.3g} {unit} (> {limit:g}); {not_written}"
            )
        return
    db, evaluator = verify_precision(path, generator, sizes)
    print(f"{evaluator} ({precision}) vs fp32 PyTorch on natural images at {args.verify_sizes}: {db:.1f} dB PSNR")
    if not db >= args.min_psnr:
        raise VerificationFailed(
            f"{precision} model reaches {db:.1f} dB PSNR against fp32 PyTorch (< {args.min_psnr:g} dB); {not_written}"
        )


if __name__ == "__main__":
    sys.exit(main())
