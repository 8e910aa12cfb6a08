"""Numerical-precision switches shared by verification code and tests."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


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
