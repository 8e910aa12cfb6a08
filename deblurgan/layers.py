"""Building blocks shared by the generator and the critic.

`norm_act` is the one place where the instance-norm + activation implementation ("kernels") is chosen, so the
Triton kernels replace it without changing module structure or state-dict keys (IN has no parameters or
buffers here, and the activation slot becomes an Identity when fused).
"""

from __future__ import annotations

import torch
from torch import nn

from .config import KERNEL_IMPLS


def resolve_kernels(kernels: str, device: torch.device | str | None = None) -> str:
    """'torch' or 'triton' for `kernels`: 'auto' is 'triton' where the Triton kernels run on `device`."""
    if kernels not in KERNEL_IMPLS:
        raise ValueError(f"kernels must be one of {KERNEL_IMPLS} (got {kernels!r})")
    if kernels != "auto":
        return kernels
    from kernels import triton_runs_on  # imports triton: only when 'auto' asks for it

    return "triton" if triton_runs_on(device) else "torch"


resolve_backend = resolve_kernels  # the former name


def norm_act(num_features: int, negative_slope: float | None, kernels: str = "torch") -> list[nn.Module]:
    """[norm, activation] modules. `negative_slope=None` means no activation (the slot is an Identity)."""
    kernels = resolve_kernels(kernels)
    if kernels == "triton":
        from kernels.instance_norm import InstanceNormAct

        fused = InstanceNormAct(
            num_features, negative_slope=negative_slope or 0.0, activation=negative_slope is not None
        )
        return [fused, nn.Identity()]
    norm = nn.InstanceNorm2d(num_features, affine=False, track_running_stats=False)
    if negative_slope is None:
        act: nn.Module = nn.Identity()
    elif negative_slope == 0.0:
        act = nn.ReLU()
    else:
        act = nn.LeakyReLU(negative_slope)
    return [norm, act]
