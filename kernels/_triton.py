"""The optional triton import, the "can the kernels run here" check and the CUDA device guard.

Without triton, `triton` is None, `jit` leaves kernel functions as plain Python and `tl.constexpr` still parses in
their signatures, so every kernel file imports; calling a kernel then raises `check_runnable`'s clear error.
"""

from __future__ import annotations

import contextlib
import os

import torch

try:
    import triton
    import triton.language as tl
except ImportError:
    triton = None

    class tl:  # noqa: N801 - stands in for triton.language
        constexpr = object

    def jit(fn):
        return fn
else:
    jit = triton.jit

__all__ = ["check_runnable", "device_guard", "jit", "tl", "triton", "triton_runs_on"]


def _interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def triton_runs_on(device: torch.device | str | None = None) -> bool:
    """Whether the Triton kernels run on `device` (None: the default CUDA device if any).

    True when triton is installed and the device is CUDA, or TRITON_INTERPRET=1 (the CPU interpreter).
    """
    if triton is None:
        return False
    on_cuda = torch.device(device).type == "cuda" if device is not None else torch.cuda.is_available()
    return on_cuda or _interpreted()


def check_runnable(t: torch.Tensor, what: str, instead: str) -> None:
    """One-line RuntimeError when `what` cannot run on `t`; `instead` names the plain-PyTorch alternative."""
    if triton is None:
        raise RuntimeError(f"{what} needs the `triton` package (use {instead})")
    if t.device.type != "cuda" and not _interpreted():
        raise RuntimeError(
            f"{what} runs on CUDA tensors (got a {t.device.type} tensor); use {instead}, "
            "or set TRITON_INTERPRET=1 before importing triton"
        )


def device_guard(t: torch.Tensor) -> contextlib.AbstractContextManager:
    """`torch.cuda.device(t.device)` for a CUDA tensor, else a no-op: Triton launches on the current device."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()
