"""Triton kernels with their plain-PyTorch references. Imports nothing else from this project.

- `kernels.instance_norm_act`: `instance_norm_act`, `InstanceNormAct` (fused IN + ReLU/LeakyReLU, twice
  differentiable in Triton), `instance_norm_act_reference`.
- `kernels.gradient_penalty`: `gradient_penalty` (fused interpolation and penalty), `gradient_penalty_reference`,
  `draw_eps`, `gp_interpolate`.

Importing needs neither triton nor CUDA; running a kernel needs triton and CUDA tensors (or TRITON_INTERPRET=1
set before triton is imported, for the CPU interpreter). See docs/kernels.md.
"""
