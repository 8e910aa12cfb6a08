"""Building blocks shared by the generator and the critic.

`norm_act` is the one place where the instance-norm + activation implementation is chosen, so the
Triton backend replaces it without changing module structure or state-dict keys (IN has no
parameters or buffers here, and the activation slot becomes an Identity when fused).
"""

from __future__ import annotations

import os

import torch
from torch import nn


def resolve_backend(backend: str, device: torch.device | str | None = None) -> str:
    """Map 'auto' to 'triton' on CUDA (or under TRITON_INTERPRET=1) and 'torch' elsewhere."""
    if backend != "auto":
        return backend
    if device is not None:
        on_cuda = torch.device(device).type == "cuda"
    else:
        on_cuda = torch.cuda.is_available()
    if on_cuda or os.environ.get("TRITON_INTERPRET") == "1":
        return "triton" if _triton_available() else "torch"
    return "torch"


def _triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def norm_act(num_features: int, negative_slope: float | None, backend: str = "torch") -> list[nn.Module]:
    """[norm, activation] modules. `negative_slope=None` means no activation (the slot is an Identity)."""
    backend = resolve_backend(backend)
    if backend == "triton":
        from kernels.instance_norm_act import InstanceNormAct

        fused = InstanceNormAct(
            num_features, negative_slope=negative_slope or 0.0, activation=negative_slope is not None
        )
        return [fused, nn.Identity()]
    if backend != "torch":
        raise ValueError(f"unknown kernels backend {backend!r}")
    norm = nn.InstanceNorm2d(num_features, affine=False, track_running_stats=False)
    if negative_slope is None:
        act: nn.Module = nn.Identity()
    elif negative_slope == 0.0:
        act = nn.ReLU()
    else:
        act = nn.LeakyReLU(negative_slope)
    return [norm, act]
