"""Fused instance norm + ReLU / LeakyReLU / none in Triton, twice differentiable; NCHW and channels_last.

- `plan`: launch plans and the settings (`CHANNELS_LAST_MODE`: "tiled" | "copy" | "strided").
- `nchw`, `nhwc`, `double_backward`: the kernels and their launchers.
- `ops`: the custom ops, autograd wiring, `instance_norm_act`, `instance_norm_act_reference` and the composite
  (plain-PyTorch) backward and double backward.
- `module`: `InstanceNormAct`.

Importing needs neither triton nor CUDA; running needs triton and CUDA tensors, or TRITON_INTERPRET=1 set before
triton is imported (the CPU interpreter). See docs/kernels.md.
"""

from .module import InstanceNormAct
from .ops import composite_backward, composite_double_backward, instance_norm_act, instance_norm_act_reference
from .plan import SUPPORTED_DTYPES

__all__ = [
    "SUPPORTED_DTYPES",
    "InstanceNormAct",
    "composite_backward",
    "composite_double_backward",
    "instance_norm_act",
    "instance_norm_act_reference",
]
