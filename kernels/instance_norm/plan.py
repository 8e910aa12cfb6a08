"""Launch plans and layout choice of the instance-norm kernels (host side), and their settings."""

from __future__ import annotations

import torch

from .._triton import tl, triton

FUSED_MAX = 4096  # planes up to this many elements are normalized by one program (all in registers)
TILE = 1024  # elements per loop step in the chunked kernels
TARGET_PROGRAMS = 1024  # chunks are sized so that N*C*chunks reaches about this many programs
MAX_CHUNK = 65536  # elements per chunk chosen automatically, at most
MAX_CHUNKS = 1024  # chunks per plane, at most (forced chunk sizes are raised to respect it)
# How channels_last inputs are computed (a setting, so that bench/test_bench_kernels.py can compare the three):
#   "tiled"   native NHWC kernels: [pixels x channels] tiles with contiguous rows, no copies (the default)
#   "copy"    the NCHW kernels on an NCHW copy, result copied back (two extra read+write passes per direction,
#             three in the backward: x, dy in, dx out)
#   "strided" the NCHW kernels reading in place with a stride of C between a plane's elements (uncoalesced)
# "tiled" is the default by reasoning (coalesced reads, the passes of the chunked NCHW path, no copies).
CHANNELS_LAST_MODE = "tiled"
CHANNELS_LAST_MODES = ("tiled", "copy", "strided")
NHWC_BLOCK_C = 64  # channels per program in the tiled kernels (a tile row = 128 B in fp16/bf16)
SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def is_channels_last(x: torch.Tensor) -> bool:
    """channels_last-contiguous and not NCHW-contiguous.

    Tensors that are both (C == 1, or 1x1 planes) are the same memory either way and take the NCHW kernels.
    """
    return not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


def cl_mode(x: torch.Tensor) -> str | None:
    """The CHANNELS_LAST_MODE that applies to x; None when x is not channels_last."""
    if not is_channels_last(x):
        return None
    if CHANNELS_LAST_MODE not in CHANNELS_LAST_MODES:
        raise ValueError(f"CHANNELS_LAST_MODE must be one of {CHANNELS_LAST_MODES}, got {CHANNELS_LAST_MODE!r}")
    return CHANNELS_LAST_MODE


def layout(x: torch.Tensor) -> tuple[torch.Tensor, torch.memory_format]:
    """(x as the NCHW kernels read it, its memory format).

    NCHW-contiguous, or channels_last in place in the "strided" mode: H*W has a single stride either way.
    """
    if x.is_contiguous():
        return x, torch.contiguous_format
    if cl_mode(x) == "strided":
        return x, torch.channels_last
    return x.contiguous(), torch.contiguous_format


def stats_dtype(x: torch.Tensor) -> torch.dtype:
    """Accumulation dtype, also of the saved statistics and of dw, db: fp32, or fp64 for fp64 inputs (gradcheck)."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def acc_dtypes(x: torch.Tensor) -> tuple[torch.dtype, object]:
    """(torch, triton) accumulation dtypes of x; the triton one is None without triton."""
    acc = stats_dtype(x)
    if triton is None:
        return acc, None
    return acc, tl.float64 if acc == torch.float64 else tl.float32


def affine_operands(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None):
    """(has_w, w, b) as the kernels take them: contiguous, or x as a never-read stand-in without a weight."""
    if weight is None:
        return False, x, x
    return True, weight.contiguous(), bias.contiguous()


def _checked_chunk(chunk_size: int) -> int:
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    return triton.next_power_of_2(chunk_size)


def plan_nchw(nc: int, hw: int, chunk_size: int | None) -> tuple[int, int, int]:
    """(chunk, chunks per plane, tile) of the NCHW kernels; chunk == 0: one fused program per plane."""
    if chunk_size is None:
        if hw <= FUSED_MAX:
            return 0, 1, 0
        want = triton.cdiv(hw, max(1, TARGET_PROGRAMS // nc))
        chunk = min(max(triton.next_power_of_2(want), TILE), MAX_CHUNK)
    else:
        chunk = _checked_chunk(chunk_size)
    # at most MAX_CHUNKS per plane: every program merges all partials of its plane in registers
    chunk = max(chunk, triton.next_power_of_2(triton.cdiv(hw, MAX_CHUNKS)))
    return chunk, triton.cdiv(hw, chunk), min(TILE, chunk)


def plan_nhwc(n: int, c: int, hw: int, chunk_size: int | None) -> tuple[int, int, int, int]:
    """(block_c, tile_p, chunk, chunks per plane) of the tiled channels_last kernels; chunk and tile_p in pixels.

    A tile holds about TILE elements; chunks are sized so that N * cdiv(C, block_c) * chunks reaches about
    TARGET_PROGRAMS, with at most MAX_CHUNK elements per program and MAX_CHUNKS chunks per plane. Small planes
    get one chunk (K = 1).
    """
    block_c = min(triton.next_power_of_2(c), NHWC_BLOCK_C)
    tile_p = max(TILE // block_c, 1)
    if chunk_size is None:
        want = triton.cdiv(hw, max(1, TARGET_PROGRAMS // (n * triton.cdiv(c, block_c))))
        chunk = min(max(triton.next_power_of_2(want), tile_p), max(MAX_CHUNK // block_c, tile_p))
    else:
        chunk = _checked_chunk(chunk_size)
    chunk = max(chunk, triton.next_power_of_2(triton.cdiv(hw, MAX_CHUNKS)))
    return block_c, min(tile_p, chunk), chunk, triton.cdiv(hw, chunk)
