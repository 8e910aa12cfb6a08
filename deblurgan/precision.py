"""Numerical precision: exact-fp32 comparisons (TF32 off) and the inference precision (fp32, bf16, fp16)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from .errors import DeblurGANError


@contextlib.contextmanager
def exact_fp32() -> Iterator[None]:
    """Run CUDA float32 convolutions and matmuls in full fp32 inside the block, not TF32.

    PyTorch lets cuDNN use TF32 (10-bit mantissa) for float32 convolutions by default; through the generator's 24
    convolutions that is expected to move outputs well past 1e-4 (not measured on a GPU yet), so comparisons meant
    to hold to 1e-4 (exporters, kernels, tiling) run inside this. The previous settings are restored on exit.
    No effect on CPU.
    """
    conv, matmul = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = conv, matmul


# --- inference precision --------------------------------------------------------------------------------

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX tiles), as PyTorch's CPU capability check says."""
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except (AttributeError, RuntimeError):  # private helpers: absent in another torch means "not known to be native"
        return False


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """fp32, bf16 or fp16 for `precision` on `device`; auto = bf16 on CPUs with native bf16, fp32 elsewhere.

    Raises DeblurGANError (one line) for an unknown name or fp16 on a CPU.
    """
    dev = torch.device(device)
    if precision not in PRECISIONS:
        raise DeblurGANError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        return "bf16" if dev.type == "cpu" and cpu_has_native_bf16() else "fp32"
    if precision == "fp16" and dev.type != "cuda":
        raise DeblurGANError("precision fp16 needs a CUDA device (on CPU use bf16 or fp32)")
    return precision


def compute_dtype(precision: str) -> torch.dtype:
    """The dtype convolutions run in for a resolved precision."""
    return _DTYPES.get(precision, torch.float32)


def autocast(device: torch.device | str, precision: str) -> contextlib.AbstractContextManager:
    """torch.autocast for a resolved bf16/fp16 precision on `device`; a no-op context for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=_DTYPES[precision])
