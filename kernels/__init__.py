"""Triton kernels with their plain-PyTorch references. Imports nothing else from this project.

- `kernels.instance_norm`: `instance_norm_act`, `InstanceNormAct` (fused IN + ReLU/LeakyReLU, twice
  differentiable in Triton), `instance_norm_act_reference` (`kernels.instance_norm_act` is an alias).
- `kernels.gradient_penalty`: `gradient_penalty` (fused interpolation and penalty), `gradient_penalty_reference`,
  `draw_eps`, `gp_interpolate`.
- `triton_runs_on(device)`: whether the Triton kernels run there; `device_guard(tensor)`: the CUDA device
  context Triton launches need.

Importing needs neither triton nor CUDA; running a kernel needs triton and CUDA tensors (or TRITON_INTERPRET=1
set before triton is imported, for the CPU interpreter). See docs/kernels.md.
"""

from ._triton import device_guard, triton_runs_on

__all__ = ["device_guard", "triton_runs_on"]
