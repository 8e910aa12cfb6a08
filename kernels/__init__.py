"""Triton kernels with their plain-PyTorch references. Imports nothing else from this project."""
