"""The optional triton import shared by the kernel files, so they stay importable without triton.

Without triton, `triton` is None (calling a kernel raises a clear error in the launchers), `jit` leaves the
kernel functions as plain Python, and `tl.constexpr` still parses in their signatures.
"""

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

__all__ = ["jit", "tl", "triton"]
