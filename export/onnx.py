"""Export a DeblurGAN generator to ONNX (dynamic batch, height and width).

Usage:
    python -m export.onnx --checkpoint latest_net_G.pth --out deblurgan.onnx
    python -m export.onnx --checkpoint C --out deblurgan_u8.onnx --io uint8   # camera frames in, frames out

`--io float` (default): input "input" N x 3 x H x W float32 RGB in [-1, 1], output "output" the same.
`--io uint8`: input "image" H x W x 3 uint8 RGB, output "image_out" the same (scaling and rounding baked in).
H and W must be multiples of 4 (>= 8). The exported graph uses InstanceNormalization, Pad(mode=reflect)
and ConvTranspose (opset 18), passes `onnx.checker`, and is verified against PyTorch with onnxruntime
at two sizes before the command succeeds (disable with --no-verify).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from deblurgan import __version__
from deblurgan.checkpoint import load_generator
from deblurgan.cli import run_cli
from deblurgan.config import config_to_dict
from deblurgan.errors import DeblurGANError
from deblurgan.fsutil import atomic_path
from deblurgan.networks import Generator

OPSET = 18
SIZE_MULTIPLE = 4
MIN_SIZE = 8  # H/4 must be >= 2 for the ResBlocks' reflection padding
MAX_SIZE = 16384
IO_MODES = ("float", "uint8")
REQUIRED_OPS = ("InstanceNormalization", "Pad", "ConvTranspose")
FORBIDDEN_OPS = ("BatchNormalization",)


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


def io_names(io: str) -> tuple[str, str]:
    """(input name, output name) of an exported graph."""
    return ("image", "image_out") if io == "uint8" else ("input", "output")


def metadata(generator: Generator, io: str) -> dict[str, str]:
    """The `metadata_props` every export carries: what an app needs to feed the model correctly."""
    if io == "uint8":
        layout, value_range = "HWC RGB uint8 (one frame)", "[0, 255]"
    else:
        layout, value_range = "NCHW RGB float32", "[-1, 1]"
    return {
        "deblurgan.io": io,
        "deblurgan.layout": layout,
        "deblurgan.input_range": value_range,
        "deblurgan.output_range": value_range,
        "deblurgan.size_multiple": str(SIZE_MULTIPLE),
        "deblurgan.min_size": str(MIN_SIZE),
        "deblurgan.size_rule": f"H, W multiples of {SIZE_MULTIPLE}, >= {MIN_SIZE}: pad (reflect), then crop",
        "deblurgan.engine_version": str(__version__),
        "deblurgan.torch_version": str(torch.__version__),
        "deblurgan.generator_config": json.dumps(config_to_dict(generator.config), sort_keys=True),
    }


class OnnxExporter:
    """Trace a generator with the dynamo ONNX exporter and write a checked `.onnx` file atomically."""

    def __init__(self, generator: Generator, io: str = "float", opset: int = OPSET) -> None:
        if io not in IO_MODES:
            raise DeblurGANError(f"--io must be one of {IO_MODES} (got {io!r})")
        if opset < OPSET:  # the dynamo exporter cannot down-convert reflect Pad below 18
            raise DeblurGANError(f"--opset must be >= {OPSET} (got {opset})")
        self.generator = generator.eval()
        self.io = io
        self.opset = opset

    def module_and_example(self) -> tuple[nn.Module, torch.Tensor, dict]:
        """The module to trace, an example input, and its dynamic shapes."""
        dim = torch.export.Dim
        h4 = dim("h4", min=MIN_SIZE // SIZE_MULTIPLE, max=MAX_SIZE // SIZE_MULTIPLE)
        w4 = dim("w4", min=MIN_SIZE // SIZE_MULTIPLE, max=MAX_SIZE // SIZE_MULTIPLE)
        if self.io == "uint8":
            example = torch.randint(0, 256, (32, 48, 3), dtype=torch.uint8)
            return Uint8IO(self.generator), example, {"image": {0: 4 * h4, 1: 4 * w4}}
        # batch 2, not 1: torch.export specialises a size-1 dimension to a constant
        example = torch.rand(2, 3, 32, 48) * 2 - 1
        batch = dim("batch", min=1, max=1024)
        return self.generator, example, {"x": {0: batch, 2: 4 * h4, 3: 4 * w4}}

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
        onnx.helper.set_model_props(model, metadata(self.generator, self.io))
        check_graph(model)
        return model

    def export(self, out: str | os.PathLike) -> Path:
        """Write the model to `out` (temp file + rename: an old file survives any failure)."""
        return atomic_save_onnx(self.to_model_proto(), out)


def check_graph(model) -> None:
    """onnx.checker plus the op-set rules an inference engine relies on."""
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


def verify_onnx(
    path: str | os.PathLike,
    generator: Generator,
    sizes: Sequence[tuple[int, int]] = ((64, 64), (96, 128)),
    batch: int = 2,
    seed: int = 0,
) -> float:
    """Run the file in onnxruntime (CPU) and PyTorch on random inputs; return the max abs difference.

    For uint8 graphs the difference is in 8-bit levels (0 or 1 from rounding ties is expected).
    """
    import onnxruntime as ort

    io = read_metadata(path).get("deblurgan.io", "float")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    in_name, _ = io_names(io)
    gen = torch.Generator().manual_seed(seed)
    worst = 0.0
    for h, w in sizes:
        if io == "uint8":
            x = torch.randint(0, 256, (h, w, 3), dtype=torch.uint8, generator=gen)
            with torch.no_grad():
                ref = Uint8IO(generator.eval())(x).numpy().astype(np.int32)
            got = sess.run(None, {in_name: x.numpy()})[0].astype(np.int32)
        else:
            x = torch.rand(batch, 3, h, w, generator=gen) * 2 - 1
            with torch.no_grad():
                ref = generator.eval()(x).numpy()
            got = sess.run(None, {in_name: x.numpy()})[0]
        if got.shape != ref.shape:
            raise RuntimeError(f"onnxruntime output shape {got.shape} != PyTorch {ref.shape} at {h}x{w}")
        worst = max(worst, float(np.abs(got - ref).max()))
    return worst


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


def export_checkpoint(checkpoint: str | os.PathLike, out: str | os.PathLike, io: str = "float") -> Path:
    """Load a checkpoint (ours or the authors' release) and export it; used by the TensorRT builder too."""
    generator = load_generator(checkpoint, kernels="torch")  # the Triton IN kernel has no ONNX form
    return OnnxExporter(generator, io=io).export(out)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="deblurgan-export-onnx", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="our checkpoint or the authors' latest_net_G.pth")
    p.add_argument("--out", default="deblurgan.onnx", help="output .onnx file (default: %(default)s)")
    p.add_argument("--io", choices=IO_MODES, default="float", help="float NCHW [-1,1] or uint8 HWC frames")
    p.add_argument("--opset", type=int, default=OPSET, help="ONNX opset (default: %(default)s)")
    p.add_argument("--no-verify", action="store_true", help="skip the onnxruntime-vs-PyTorch check")
    p.add_argument(
        "--verify-sizes",
        default="64x64,96x128",
        help="comma-separated HxW sizes for the check (default: %(default)s)",
    )
    p.add_argument("--atol", type=float, default=1e-4, help="max abs error allowed in float mode (default: 1e-4)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point: errors become one line on stderr and exit 2."""
    return run_cli(_main, argv)


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    sizes = [parse_size(s) for s in args.verify_sizes.split(",") if s.strip()]
    out = Path(args.out)
    if out.suffix.lower() != ".onnx":
        raise DeblurGANError(f"--out must end in .onnx (got {out})")
    generator = load_generator(args.checkpoint, kernels="torch")
    path = OnnxExporter(generator, io=args.io, opset=args.opset).export(out)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB, io={args.io}, opset {args.opset})")
    if not args.no_verify:
        err = verify_onnx(path, generator, sizes)
        limit = 1.0 if args.io == "uint8" else args.atol
        unit = "8-bit levels" if args.io == "uint8" else "max abs"
        print(f"onnxruntime vs PyTorch at {args.verify_sizes}: {err:.3g} {unit} (limit {limit:g})")
        if err > limit:
            print(f"error: exported model differs from PyTorch by {err:.3g} (> {limit:g})", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
