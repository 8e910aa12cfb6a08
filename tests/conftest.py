"""Shared pytest setup. Without CUDA, Triton kernels run in the CPU interpreter: TRITON_INTERPRET must be
set before triton is first imported, so it is set here, for the whole test process."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
