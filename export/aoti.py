"""Compile a DeblurGAN generator ahead of time with AOTInductor: a `.pt2` package for Python and C++.

Usage:
    python -m export.aoti --checkpoint latest_net_G.pth --out deblurgan.pt2 --device cuda --fp16
    python -m export.aoti --checkpoint C --out deblurgan_cpu.pt2 --device cpu

Without --checkpoint the shipped model is compiled. The package takes N x 3 x H x W float32 RGB in
[-1, 1] (H, W multiples of 4, >= 8; batch 1..--max-batch) and returns the same; with --fp16 the weights
and compute are half precision inside (CUDA only) while the I/O stays float32. Load it with
`torch._inductor.aoti_load_package(path)` (Python, see export.runtime.AOTIRunner) or
`torch::inductor::AOTIModelPackageLoader` (C++, see export/cpp/deblur_aoti.cpp). A package runs only on the
device type it was compiled for. Compiling the full generator takes minutes on a small CPU.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from deblurgan.checkpoint import load_generator
from deblurgan.cli import run_cli
from deblurgan.errors import DeblurGANError
from deblurgan.fsutil import atomic_path
from deblurgan.networks import Generator
from deblurgan.precision import exact_fp32
from deblurgan.pretrained import resolve_checkpoint

from .metadata import MAX_SIZE, MIN_SIZE, SIZE_MULTIPLE, artifact_metadata


class HalfPrecision(nn.Module):
    """float32 in and out, fp16 inside: one I/O convention for every artifact."""

    def __init__(self, generator: nn.Module) -> None:
        super().__init__()
        self.generator = generator.half()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.generator(x.half()).float()


class AotiExporter:
    """torch.export with dynamic batch/H/W (H, W = 4 * k), then AOTInductor packaging."""

    def __init__(self, generator: Generator, device: str = "cpu", fp16: bool = False, max_batch: int = 64) -> None:
        self.device = torch.device(device)
        if self.device.type not in ("cpu", "cuda"):
            raise DeblurGANError(f"--device must be cpu or cuda (got {device!r})")
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise DeblurGANError("--device cuda: no CUDA device is available (compile on the GPU you deploy to)")
        if fp16 and self.device.type != "cuda":
            raise DeblurGANError("--fp16 needs --device cuda (half-precision convolutions are slow or missing on CPU)")
        if max_batch < 2:
            raise DeblurGANError("--max-batch must be >= 2")
        self.generator = generator.eval()
        self.fp16 = fp16
        self.max_batch = max_batch

    def exported_program(self) -> torch.export.ExportedProgram:
        module: nn.Module = self.generator.to(self.device)
        if self.fp16:
            module = HalfPrecision(module)
        dim = torch.export.Dim
        batch = dim("batch", min=1, max=self.max_batch)
        h4 = dim("h4", min=MIN_SIZE // SIZE_MULTIPLE, max=MAX_SIZE // SIZE_MULTIPLE)
        w4 = dim("w4", min=MIN_SIZE // SIZE_MULTIPLE, max=MAX_SIZE // SIZE_MULTIPLE)
        # batch 2, not 1: torch.export specialises size-1 dimensions
        example = (torch.rand(2, 3, 32, 48, device=self.device) * 2 - 1,)
        with torch.no_grad():
            return torch.export.export(module, example, dynamic_shapes=({0: batch, 2: 4 * h4, 3: 4 * w4},))

    def metadata(self) -> dict[str, str]:
        """export.metadata's keys plus the device and batch limit the package was compiled for."""
        precision = "fp16" if self.fp16 else "fp32"
        return artifact_metadata(self.generator, precision=precision, device=self.device.type, max_batch=self.max_batch)

    def export(self, out: str | os.PathLike) -> Path:
        """Compile and write the package to `out` atomically (an old file survives any failure)."""
        out = Path(out)
        program = self.exported_program()
        try:
            with atomic_path(out) as tmp, warnings.catch_warnings():  # the temp name keeps the .pt2 suffix
                warnings.simplefilter("ignore")
                torch._inductor.aoti_compile_and_package(
                    program, package_path=str(tmp), inductor_configs={"aot_inductor.metadata": self.metadata()}
                )
        except BaseException as e:
            if isinstance(e, Exception) and not isinstance(e, (DeblurGANError, OSError)):
                # most often a missing/broken C++ compiler: say so in one line instead of a long traceback
                first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
                raise DeblurGANError(
                    f"AOTInductor compilation failed ({first}); it needs a working C++ compiler (g++/clang++)"
                ) from e
            raise
        return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m export.aoti", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", help="our checkpoint or the authors' latest_net_G.pth (default: the shipped model)")
    p.add_argument("--out", default="deblurgan.pt2", help="output .pt2 package (default: %(default)s)")
    p.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="device type the package is compiled for and runs on only (default here: %(default)s)",
    )
    p.add_argument("--fp16", action="store_true", help="half-precision weights and compute (CUDA only)")
    p.add_argument("--max-batch", type=int, default=64, help="largest batch the package accepts (default: 64)")
    p.add_argument("--no-verify", action="store_true", help="skip the check against eager PyTorch")
    return p


def verify_package(path: str | os.PathLike, generator: Generator, device: str, batch: int = 2) -> tuple[float, float]:
    """(max abs difference, PSNR in dB on the [-1, 1] range) of the package vs eager fp32 PyTorch, random inputs."""
    model = torch._inductor.aoti_load_package(str(path))
    gen = torch.Generator().manual_seed(0)
    worst, mse = 0.0, 0.0
    generator = generator.to(device).float().eval()
    for h, w in ((64, 64), (48, 80)):
        x = (torch.rand(batch, 3, h, w, generator=gen) * 2 - 1).to(device)
        with torch.no_grad(), exact_fp32():  # TF32 convolutions (CUDA default) alone would exceed 1e-4
            diff = model(x).float() - generator(x)
        worst = max(worst, diff.abs().max().item())
        mse = max(mse, diff.pow(2).mean().item())
    psnr = float("inf") if mse == 0 else 10 * math.log10(4.0 / mse)
    return worst, psnr


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    out = Path(args.out)
    if out.suffix != ".pt2":
        raise DeblurGANError(f"--out must end in .pt2 (got {out})")
    checkpoint = resolve_checkpoint(args.checkpoint)
    generator = load_generator(checkpoint, kernels="torch")
    exporter = AotiExporter(generator, device=args.device, fp16=args.fp16, max_batch=args.max_batch)
    print(f"compiling for {args.device} ({'fp16' if args.fp16 else 'fp32'}); this can take minutes ...", flush=True)
    path = exporter.export(out)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
    if not args.no_verify:
        reference = load_generator(checkpoint, kernels="torch")
        err, psnr = verify_package(path, reference, args.device)
        print(f"AOTI vs eager fp32 PyTorch (random inputs): {err:.3g} max abs, {psnr:.1f} dB PSNR")
        limit = 1e-4
        if not args.fp16 and err > limit:  # fp16 is judged by PSNR on natural images (bench/gpu_check.sh)
            print(f"error: compiled package differs from PyTorch by {err:.3g} (> {limit:g})", file=sys.stderr)
            return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point: errors become one line on stderr and exit 2."""
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
