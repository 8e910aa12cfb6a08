"""Fused instance norm + activation (ReLU / LeakyReLU / none) in Triton, twice differentiable.

    y = act((x - mean) * rstd * w + b),  mean/var over H*W of every (n, c) plane, rstd = 1/sqrt(var + eps)

Forward: planes of up to `FUSED_MAX` elements are done by one program each (one read, one write). Larger
planes are split into chunks over a (N*C, chunks) grid: a statistics pass writes per-chunk (mean, M2)
partials, and the normalize pass combines them (Chan et al.'s parallel variance, fp32) before writing y,
so N=1, C=64 at 720p still spreads over the whole GPU.

Backward: dx (and dw, db) from x, dy and the saved mean/rstd: one program per small plane, or a reduction
pass (sum dz, sum dz*xhat per chunk) plus a dx pass for large planes.

channels_last inputs (CHANNELS_LAST_MODE = "tiled", the default): tiled NHWC kernels read the tensor as
(N, H*W, C), one program per (sample, BLOCK_C channels, chunk of pixels), with the same statistics pass,
partials layout and backward sums as the chunked NCHW path; "copy" and "strided" keep the NCHW kernels.

Double backward (needed by the WGAN-GP critic step): the backward is itself a custom op whose derivative is
a third op with Triton kernels (closed-form formulas above `_dbwd_load`: a reduction of five per-plane sums,
then one elementwise pass writing the gradients w.r.t. dy and x). Third and higher orders, which training
never needs, fall back to torch.func vjps of `composite_double_backward`, so every order stays correct.

Both ops are registered with `torch.library.custom_op` (namespace `deblurgan_kernels`) with fake
implementations, so torch.compile and torch.export trace them without graph breaks.

Importing this module needs neither triton nor CUDA; running the kernels needs triton and either CUDA
tensors or `TRITON_INTERPRET=1` set before triton is imported (CPU interpreter, for tests).
"""

from __future__ import annotations

import contextlib
import os

import torch
from torch import nn

from ._triton import jit as _jit
from ._triton import tl, triton

FUSED_MAX = 4096  # planes up to this many elements are normalized by one program (all in registers)
TILE = 1024  # elements per loop step in the chunked kernels
TARGET_PROGRAMS = 1024  # chunks are sized so that N*C*chunks reaches about this many programs
MAX_CHUNK = 65536  # elements per chunk chosen automatically, at most
MAX_CHUNKS = 1024  # chunks per plane, at most (forced chunk sizes are raised to respect it)
# How channels_last inputs are computed (a switch, so that the GPU benchmark can compare the three):
#   "tiled"   native NHWC kernels: [pixels x channels] tiles with contiguous rows, no copies (the default)
#   "copy"    the NCHW kernels on an NCHW copy, result copied back (two extra read+write passes per direction,
#             three in the backward: x, dy in, dx out)
#   "strided" the NCHW kernels reading in place with a stride of C between a plane's elements (uncoalesced)
# "tiled" is the default by reasoning (coalesced reads, the passes of the chunked NCHW path, no copies), not by
# a measurement: none of the three has been timed on a GPU yet (bench/test_bench_kernels.py compares them).
CHANNELS_LAST_MODE = "tiled"
CHANNELS_LAST_MODES = ("tiled", "copy", "strided")
NHWC_BLOCK_C = 64  # channels per program in the tiled kernels (a tile row = 128 B in fp16/bf16)
FAST_EAGER = True  # False: always go through the custom ops (for testing that path in eager mode)
SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


# ----------------------------------------------------------------------------------------------- kernels
@_jit
def _act(z, slope, ACT: tl.constexpr):
    if ACT:
        z = tl.where(z > 0, z, z * slope)
    return z


@_jit
def _fwd_fused_kernel(
    X,  # input, (N, C, H, W) with H*W addressable as one stride (NCHW or channels_last)
    Y,  # output, same strides as X
    W,  # weight (C,) or a dummy when HAS_W is False
    B,  # bias (C,) or a dummy when HAS_W is False
    MEAN,  # fp32 (N*C,) out: per-plane mean
    RSTD,  # fp32 (N*C,) out: per-plane 1/sqrt(var + eps)
    C,  # channels
    HW,  # elements per plane
    stride_n,  # element strides of X / Y
    stride_c,
    stride_hw,
    slope,  # negative slope of the LeakyReLU (0.0 = ReLU)
    eps,  # variance epsilon
    HAS_W: tl.constexpr,  # affine
    ACT: tl.constexpr,  # apply the activation
    BLOCK: tl.constexpr,  # >= HW: one program holds the whole plane
    ACC: tl.constexpr,  # accumulation dtype: fp32, or fp64 for fp64 inputs (gradcheck)
):
    pid = tl.program_id(0)
    n = pid // C
    c = pid % C
    base = n.to(tl.int64) * stride_n + c.to(tl.int64) * stride_c
    offs = tl.arange(0, BLOCK)
    mask = offs < HW
    ptr_off = base + offs.to(tl.int64) * stride_hw
    x = tl.load(X + ptr_off, mask=mask, other=0.0).to(ACC)
    mean = tl.sum(x, axis=0) / HW
    d = tl.where(mask, x - mean, 0.0)  # two-pass variance: the plane is already in registers
    var = tl.sum(d * d, axis=0) / HW
    rstd = 1.0 / tl.sqrt(var + eps)
    z = d * rstd
    if HAS_W:
        z = z * tl.load(W + c).to(ACC) + tl.load(B + c).to(ACC)
    y = _act(z, slope, ACT)
    tl.store(Y + ptr_off, y.to(Y.dtype.element_ty), mask=mask)
    tl.store(MEAN + pid, mean)
    tl.store(RSTD + pid, rstd)


@_jit
def _stats_kernel(
    X,  # input (see _fwd_fused_kernel)
    MEAN_PART,  # fp32 (N*C, K) out: mean of each chunk
    M2_PART,  # fp32 (N*C, K) out: sum of squared deviations of each chunk
    HW,  # elements per plane
    C,  # channels
    K,  # chunks per plane
    stride_n,
    stride_c,
    stride_hw,
    CHUNK: tl.constexpr,  # elements per chunk, a multiple of TILE
    TILE: tl.constexpr,  # elements per loop step
    ACC: tl.constexpr,  # accumulation dtype: fp32, or fp64 for fp64 inputs (gradcheck)
):
    pid = tl.program_id(0)
    k = tl.program_id(1)
    n = pid // C
    c = pid % C
    base = n.to(tl.int64) * stride_n + c.to(tl.int64) * stride_c
    start = k * CHUNK
    # Per-lane Welford, then a Chan merge of the lanes: stable however large the chunk. A lane that is masked
    # off stays off for the rest of the loop, so every active lane has seen exactly i // TILE + 1 values and
    # the Welford step needs one scalar reciprocal per tile instead of a division per element.
    cnt = tl.zeros([TILE], dtype=ACC)
    mean = tl.zeros([TILE], dtype=ACC)
    m2 = tl.zeros([TILE], dtype=ACC)
    one = tl.full((), 1.0, ACC)
    for i in range(0, CHUNK, TILE):
        offs = start + i + tl.arange(0, TILE)
        mask = offs < HW
        x = tl.load(X + base + offs.to(tl.int64) * stride_hw, mask=mask, other=0.0).to(ACC)
        inv = one / (i // TILE + 1)
        cnt += mask.to(ACC)
        delta = tl.where(mask, x - mean, 0.0)
        mean += delta * inv
        m2 += delta * (x - mean)
    total = tl.maximum(tl.sum(cnt, axis=0), 1.0)
    chunk_mean = tl.sum(cnt * mean, axis=0) / total
    dev = mean - chunk_mean
    chunk_m2 = tl.sum(m2 + cnt * dev * dev, axis=0)
    tl.store(MEAN_PART + pid * K + k, chunk_mean)
    tl.store(M2_PART + pid * K + k, chunk_m2)


@_jit
def _combine_stats(MEAN_PART, M2_PART, pid, HW, K, eps, CHUNK: tl.constexpr, BLOCK_K: tl.constexpr, ACC: tl.constexpr):
    """Merge the K chunk partials of plane `pid` into (mean, rstd)."""
    ks = tl.arange(0, BLOCK_K)
    kmask = ks < K
    cnt = tl.where(kmask, tl.minimum(HW - ks * CHUNK, CHUNK), 0).to(ACC)
    means = tl.load(MEAN_PART + pid * K + ks, mask=kmask, other=0.0)
    m2s = tl.load(M2_PART + pid * K + ks, mask=kmask, other=0.0)
    mean = tl.sum(cnt * means, axis=0) / HW
    dev = means - mean
    m2 = tl.sum(m2s + cnt * dev * dev, axis=0)
    rstd = 1.0 / tl.sqrt(m2 / HW + eps)
    return mean, rstd


@_jit
def _norm_act_kernel(
    X,  # input
    Y,  # output, same strides as X
    W,  # weight (C,) or dummy
    B,  # bias (C,) or dummy
    MEAN_PART,  # fp32 (N*C, K) chunk means from _stats_kernel
    M2_PART,  # fp32 (N*C, K) chunk M2 from _stats_kernel
    MEAN,  # fp32 (N*C,) out, written by chunk 0
    RSTD,  # fp32 (N*C,) out, written by chunk 0
    HW,
    C,
    K,
    stride_n,
    stride_c,
    stride_hw,
    slope,
    eps,
    HAS_W: tl.constexpr,
    ACT: tl.constexpr,
    CHUNK: tl.constexpr,
    TILE: tl.constexpr,
    BLOCK_K: tl.constexpr,  # next power of two >= K
    ACC: tl.constexpr,  # accumulation dtype: fp32, or fp64 for fp64 inputs (gradcheck)
):
    # reverse of the reduction pass's launch order: the chunks it read last are likely still in L2
    pid = tl.num_programs(0) - 1 - tl.program_id(0)
    k = tl.num_programs(1) - 1 - tl.program_id(1)
    n = pid // C
    c = pid % C
    mean, rstd = _combine_stats(MEAN_PART, M2_PART, pid, HW, K, eps, CHUNK, BLOCK_K, ACC)
    if k == 0:
        tl.store(MEAN + pid, mean)
        tl.store(RSTD + pid, rstd)
    scale = rstd
    shift = -mean * rstd
    if HAS_W:
        w = tl.load(W + c).to(ACC)
        scale = scale * w
        shift = shift * w + tl.load(B + c).to(ACC)
    base = n.to(tl.int64) * stride_n + c.to(tl.int64) * stride_c
    start = k * CHUNK
    for i in range(0, CHUNK, TILE):
        offs = start + i + tl.arange(0, TILE)
        mask = offs < HW
        ptr_off = base + offs.to(tl.int64) * stride_hw
        x = tl.load(X + ptr_off, mask=mask, other=0.0).to(ACC)
        y = _act(x * scale + shift, slope, ACT)
        tl.store(Y + ptr_off, y.to(Y.dtype.element_ty), mask=mask)


@_jit
def _bwd_fused_kernel(
    X,  # forward input
    DY,  # upstream gradient, same strides as X
    DX,  # out: input gradient, same strides as X
    W,  # weight (C,) or dummy
    B,  # bias (C,) or dummy
    MEAN,  # fp32 (N*C,) saved by the forward
    RSTD,  # fp32 (N*C,)
    S1,  # fp32 (N*C,) out: sum(dz) per plane (-> db)
    S2,  # fp32 (N*C,) out: sum(dz * xhat) per plane (-> dw)
    C,
    HW,
    stride_n,
    stride_c,
    stride_hw,
    slope,
    HAS_W: tl.constexpr,
    ACT: tl.constexpr,
    BLOCK: tl.constexpr,  # >= HW
    ACC: tl.constexpr,  # accumulation dtype: fp32, or fp64 for fp64 inputs (gradcheck)
):
    pid = tl.program_id(0)
    n = pid // C
    c = pid % C
    base = n.to(tl.int64) * stride_n + c.to(tl.int64) * stride_c
    offs = tl.arange(0, BLOCK)
    mask = offs < HW
    ptr_off = base + offs.to(tl.int64) * stride_hw
    mean = tl.load(MEAN + pid)
    rstd = tl.load(RSTD + pid)
    xhat = (tl.load(X + ptr_off, mask=mask, other=0.0).to(ACC) - mean) * rstd
    dz = tl.load(DY + ptr_off, mask=mask, other=0.0).to(ACC)
    w = 1.0
    if HAS_W:
        w = tl.load(W + c).to(ACC)
    if ACT:
        z = xhat
        if HAS_W:
            z = xhat * w + tl.load(B + c).to(ACC)
        dz = tl.where(z > 0, dz, dz * slope)
    dz = tl.where(mask, dz, 0.0)
    s1 = tl.sum(dz, axis=0)
    s2 = tl.sum(dz * xhat, axis=0)
    dx = (w * rstd) * (dz - s1 / HW - xhat * (s2 / HW))
    tl.store(DX + ptr_off, dx.to(DX.dtype.element_ty), mask=mask)
    tl.store(S1 + pid, s1)
    tl.store(S2 + pid, s2)


@_jit
def _bwd_reduce_kernel(
    X,  # forward input
    DY,  # upstream gradient, same strides as X
    W,
    B,
    MEAN,  # fp32 (N*C,)
    RSTD,  # fp32 (N*C,)
    S1_PART,  # fp32 (N*C, K) out: sum(dz) per chunk
    S2_PART,  # fp32 (N*C, K) out: sum(dz * xhat) per chunk
    HW,
    C,
    K,
    stride_n,
    stride_c,
    stride_hw,
    slope,
    HAS_W: tl.constexpr,
    ACT: tl.constexpr,
    CHUNK: tl.constexpr,
    TILE: tl.constexpr,
    ACC: tl.constexpr,  # accumulation dtype: fp32, or fp64 for fp64 inputs (gradcheck)
):
    pid = tl.program_id(0)
    k = tl.program_id(1)
    n = pid // C
    c = pid % C
    base = n.to(tl.int64) * stride_n + c.to(tl.int64) * stride_c
    mean = tl.load(MEAN + pid)
    rstd = tl.load(RSTD + pid)
    w = 1.0
    b = 0.0
    if HAS_W:
        w = tl.load(W + c).to(ACC)
        b = tl.load(B + c).to(ACC)
    acc1 = tl.zeros([TILE], dtype=ACC)
    acc2 = tl.zeros([TILE], dtype=ACC)
    start = k * CHUNK
    for i in range(0, CHUNK, TILE):
        offs = start + i + tl.arange(0, TILE)
        mask = offs < HW
        ptr_off = base + offs.to(tl.int64) * stride_hw
        xhat = (tl.load(X + ptr_off, mask=mask, other=0.0).to(ACC) - mean) * rstd
        dz = tl.load(DY + ptr_off, mask=mask, other=0.0).to(ACC)
        if ACT:
            dz = tl.where(xhat * w + b > 0, dz, dz * slope)
        dz = tl.where(mask, dz, 0.0)
        acc1 += dz
        acc2 += dz * xhat
    tl.store(S1_PART + pid * K + k, tl.sum(acc1, axis=0))
    tl.store(S2_PART + pid * K + k, tl.sum(acc2, axis=0))


@_jit
def _bwd_dx_kernel(
    X,
    DY,
    DX,  # out, same strides as X
    W,
    B,
    MEAN,
    RSTD,
    S1_PART,  # fp32 (N*C, K) from _bwd_reduce_kernel
    S2_PART,
    HW,
    C,
    K,
    stride_n,
    stride_c,
    stride_hw,
    slope,
    HAS_W: tl.constexpr,
    ACT: tl.constexpr,
    CHUNK: tl.constexpr,
    TILE: tl.constexpr,
    BLOCK_K: tl.constexpr,
    ACC: tl.constexpr,  # accumulation dtype: fp32, or fp64 for fp64 inputs (gradcheck)
):
    # reverse of the reduction pass's launch order: the chunks it read last are likely still in L2
    pid = tl.num_programs(0) - 1 - tl.program_id(0)
    k = tl.num_programs(1) - 1 - tl.program_id(1)
    n = pid // C
    c = pid % C
    base = n.to(tl.int64) * stride_n + c.to(tl.int64) * stride_c
    mean = tl.load(MEAN + pid)
    rstd = tl.load(RSTD + pid)
    w = 1.0
    b = 0.0
    if HAS_W:
        w = tl.load(W + c).to(ACC)
        b = tl.load(B + c).to(ACC)
    ks = tl.arange(0, BLOCK_K)
    s1 = tl.sum(tl.load(S1_PART + pid * K + ks, mask=ks < K, other=0.0), axis=0)
    s2 = tl.sum(tl.load(S2_PART + pid * K + ks, mask=ks < K, other=0.0), axis=0)
    m1 = s1 / HW
    m2 = s2 / HW
    start = k * CHUNK
    for i in range(0, CHUNK, TILE):
        offs = start + i + tl.arange(0, TILE)
        mask = offs < HW
        ptr_off = base + offs.to(tl.int64) * stride_hw
        xhat = (tl.load(X + ptr_off, mask=mask, other=0.0).to(ACC) - mean) * rstd
        dz = tl.load(DY + ptr_off, mask=mask, other=0.0).to(ACC)
        if ACT:
            dz = tl.where(xhat * w + b > 0, dz, dz * slope)
        dx = (w * rstd) * (dz - m1 - xhat * m2)
        tl.store(DX + ptr_off, dx.to(DX.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------------------------- channels_last
# Tiled NHWC kernels. A channels_last (N, C, H, W) tensor is an (N, H*W, C) array with C contiguous: element
# (n, p, c) lies at n*HW*C + p*C + c. Programs run over a (N * cdiv(C, BLOCK_C), chunks) grid; each owns one
# sample, BLOCK_C channels and CHUNK pixels, and loads [TILE_P, BLOCK_C] tiles whose rows are BLOCK_C
# consecutive elements (coalesced), reducing over the pixel axis into per-channel partials. The partials are
# written in the NCHW path's (N*C, K) layout, so the statistics (mean, rstd per (n, c)) mean the same in both.
@_jit
def _nhwc_program(C, BLOCK_C: tl.constexpr, REVERSE: tl.constexpr):
    """(n, chunk k, channel offsets, channel mask) of this program in a (N * cdiv(C, BLOCK_C), chunks) grid.

    REVERSE walks the grid backwards: a pass that re-reads what the previous pass read last finds it in L2."""
    pid = tl.program_id(0)
    k = tl.program_id(1)
    if REVERSE:
        pid = tl.num_programs(0) - 1 - pid
        k = tl.num_programs(1) - 1 - k
    blocks = tl.cdiv(C, BLOCK_C)
    n = pid // blocks
    cs = (pid % blocks) * BLOCK_C + tl.arange(0, BLOCK_C)
    return n, k, cs, cs < C


@_jit
def _nhwc_tile(n, cs, cmask, ps, HW, C):
    """(int64 element offsets, mask) of the [TILE_P, BLOCK_C] tile of pixels ps and channels cs of sample n."""
    off = n.to(tl.int64) * HW * C + ps.to(tl.int64)[:, None] * C + cs[None, :]
    return off, (ps < HW)[:, None] & cmask[None, :]


@_jit
def _nhwc_affine(W, B, cs, cmask, HAS_W: tl.constexpr, BLOCK_C: tl.constexpr, ACC: tl.constexpr):
    """(w, b) of the channels cs as [BLOCK_C] vectors: the affine parameters, or ones and zeros."""
    if HAS_W:
        w = tl.load(W + cs, mask=cmask, other=1.0).to(ACC)
        b = tl.load(B + cs, mask=cmask, other=0.0).to(ACC)
    else:
        w = tl.full([BLOCK_C], 1.0, ACC)
        b = tl.zeros([BLOCK_C], dtype=ACC)
    return w, b


@_jit
def _nhwc_stats_kernel(
    X,  # input, channels_last (N, C, H, W) (see above)
    MEAN_PART,  # (N*C, K) out: mean of each chunk (unused when FINAL)
    M2_PART,  # (N*C, K) out: sum of squared deviations of each chunk (unused when FINAL)
    MEAN,  # (N*C,) out when FINAL: per-plane mean
    RSTD,  # (N*C,) out when FINAL: per-plane 1/sqrt(var + eps)
    HW,  # pixels per plane
    C,  # channels
    K,  # chunks per plane
    eps,  # variance epsilon
    FINAL: tl.constexpr,  # K == 1: write mean/rstd directly, no combine launch
    CHUNK: tl.constexpr,  # pixels per chunk, a multiple of TILE_P
    TILE_P: tl.constexpr,  # pixels per loop step (tile rows)
    BLOCK_C: tl.constexpr,  # channels per program (tile columns)
    ACC: tl.constexpr,  # accumulation dtype: fp32, or fp64 for fp64 inputs (gradcheck)
):
    n, k, cs, cmask = _nhwc_program(C, BLOCK_C, False)
    start = k * CHUNK
    # Shifted data: x - (the chunk's first pixel), so that the lane means below stay near zero and their merge
    # does not sum TILE_P values of the size of the mean (the variance is shift-invariant).
    shift = tl.load(X + n.to(tl.int64) * HW * C + start.to(tl.int64) * C + cs, mask=cmask, other=0.0).to(ACC)
    # per-lane Welford as in _stats_kernel: pixel-masked lanes stay off once off (pixels only grow), channel-masked
    # lanes are off throughout, so every active lane has seen i // TILE_P + 1 values
    cnt = tl.zeros([TILE_P, BLOCK_C], dtype=ACC)
    mean = tl.zeros([TILE_P, BLOCK_C], dtype=ACC)
    m2 = tl.zeros([TILE_P, BLOCK_C], dtype=ACC)
    one = tl.full((), 1.0, ACC)
    for i in range(0, CHUNK, TILE_P):
        off, mask = _nhwc_tile(n, cs, cmask, start + i + tl.arange(0, TILE_P), HW, C)
        x = tl.load(X + off, mask=mask, other=0.0).to(ACC) - shift[None, :]
        inv = one / (i // TILE_P + 1)
        cnt += mask.to(ACC)
        delta = tl.where(mask, x - mean, 0.0)
        mean += delta * inv
        m2 += delta * (x - mean)
    total = tl.maximum(tl.sum(cnt, axis=0), 1.0)  # Chan merge of the TILE_P lanes of every channel
    local_mean = tl.sum(cnt * mean, axis=0) / total
    dev = mean - local_mean[None, :]
    chunk_m2 = tl.sum(m2 + cnt * dev * dev, axis=0)
    chunk_mean = shift + local_mean
    plane = n * C + cs
    if FINAL:
        tl.store(MEAN + plane, chunk_mean, mask=cmask)
        tl.store(RSTD + plane, 1.0 / tl.sqrt(chunk_m2 / HW + eps), mask=cmask)
    else:
        row = plane.to(tl.int64) * K + k
        tl.store(MEAN_PART + row, chunk_mean, mask=cmask)
        tl.store(M2_PART + row, chunk_m2, mask=cmask)


@_jit
def _combine_kernel(
    MEAN_PART,  # (N*C, K) chunk means from _nhwc_stats_kernel
    M2_PART,  # (N*C, K) chunk M2
    MEAN,  # (N*C,) out
    RSTD,  # (N*C,) out
    HW,  # pixels per plane
    K,  # chunks per plane
    eps,  # variance epsilon
    CHUNK: tl.constexpr,  # pixels per chunk
    BLOCK_K: tl.constexpr,  # next power of two >= K
    ACC: tl.constexpr,  # accumulation dtype
):
    # One program per plane reading its K contiguous partials. Merging inside each normalize program instead (as
    # the NCHW path does) would load K * BLOCK_C partials per program: K^2 growth, with K ~ 900 at 720p.
    pid = tl.program_id(0)
    mean, rstd = _combine_stats(MEAN_PART, M2_PART, pid, HW, K, eps, CHUNK, BLOCK_K, ACC)
    tl.store(MEAN + pid, mean)
    tl.store(RSTD + pid, rstd)


@_jit
def _nhwc_norm_act_kernel(
    X,  # input, channels_last
    Y,  # output, channels_last
    W,  # weight (C,) or dummy
    B,  # bias (C,) or dummy
    MEAN,  # (N*C,) per-plane mean
    RSTD,  # (N*C,) per-plane 1/sqrt(var + eps)
    HW,  # pixels per plane
    C,  # channels
    slope,  # negative slope of the LeakyReLU (0.0 = ReLU)
    HAS_W: tl.constexpr,  # affine
    ACT: tl.constexpr,  # apply the activation
    CHUNK: tl.constexpr,  # pixels per chunk
    TILE_P: tl.constexpr,  # pixels per loop step
    BLOCK_C: tl.constexpr,  # channels per program
    ACC: tl.constexpr,  # accumulation dtype
):
    # the reverse of the statistics pass's launch order: the chunks it read last are likely still in L2
    n, k, cs, cmask = _nhwc_program(C, BLOCK_C, True)
    mean = tl.load(MEAN + n * C + cs, mask=cmask, other=0.0)
    rstd = tl.load(RSTD + n * C + cs, mask=cmask, other=0.0)
    w, b = _nhwc_affine(W, B, cs, cmask, HAS_W, BLOCK_C, ACC)
    scale = (rstd * w)[None, :]
    # (x - mean) * scale + b rather than x * scale + shift: no cancellation between x * scale and the shift when
    # the mean is large compared with the spread
    start = k * CHUNK
    for i in range(0, CHUNK, TILE_P):
        off, mask = _nhwc_tile(n, cs, cmask, start + i + tl.arange(0, TILE_P), HW, C)
        x = tl.load(X + off, mask=mask, other=0.0).to(ACC)
        y = _act((x - mean[None, :]) * scale + b[None, :], slope, ACT)
        tl.store(Y + off, y.to(Y.dtype.element_ty), mask=mask)


@_jit
def _nhwc_dz(X, DY, off, mask, mean, rstd, w, b, slope, ACT: tl.constexpr, ACC: tl.constexpr):
    """(xhat, dz = dy * act'(z)) of a tile, dz zero where masked; mean, rstd, w, b are [1, BLOCK_C]."""
    xhat = (tl.load(X + off, mask=mask, other=0.0).to(ACC) - mean) * rstd
    dz = tl.load(DY + off, mask=mask, other=0.0).to(ACC)
    if ACT:
        dz = tl.where(xhat * w + b > 0, dz, dz * slope)
    return xhat, tl.where(mask, dz, 0.0)


@_jit
def _nhwc_bwd_reduce_kernel(
    X,  # forward input, channels_last
    DY,  # upstream gradient, channels_last
    W,  # weight (C,) or dummy
    B,  # bias (C,) or dummy
    MEAN,  # (N*C,) saved by the forward
    RSTD,  # (N*C,)
    S1_PART,  # (N*C, K) out: sum(dz) per chunk
    S2_PART,  # (N*C, K) out: sum(dz * xhat) per chunk
    HW,  # pixels per plane
    C,  # channels
    K,  # chunks per plane
    slope,  # negative slope of the LeakyReLU
    HAS_W: tl.constexpr,  # affine
    ACT: tl.constexpr,  # the forward applied the activation
    CHUNK: tl.constexpr,  # pixels per chunk
    TILE_P: tl.constexpr,  # pixels per loop step
    BLOCK_C: tl.constexpr,  # channels per program
    ACC: tl.constexpr,  # accumulation dtype
):
    n, k, cs, cmask = _nhwc_program(C, BLOCK_C, False)
    mean = tl.load(MEAN + n * C + cs, mask=cmask, other=0.0)[None, :]
    rstd = tl.load(RSTD + n * C + cs, mask=cmask, other=0.0)[None, :]
    w, b = _nhwc_affine(W, B, cs, cmask, HAS_W, BLOCK_C, ACC)
    acc1 = tl.zeros([TILE_P, BLOCK_C], dtype=ACC)
    acc2 = tl.zeros([TILE_P, BLOCK_C], dtype=ACC)
    start = k * CHUNK
    for i in range(0, CHUNK, TILE_P):
        off, mask = _nhwc_tile(n, cs, cmask, start + i + tl.arange(0, TILE_P), HW, C)
        xhat, dz = _nhwc_dz(X, DY, off, mask, mean, rstd, w[None, :], b[None, :], slope, ACT, ACC)
        acc1 += dz
        acc2 += dz * xhat
    row = (n * C + cs).to(tl.int64) * K + k
    tl.store(S1_PART + row, tl.sum(acc1, axis=0), mask=cmask)
    tl.store(S2_PART + row, tl.sum(acc2, axis=0), mask=cmask)


@_jit
def _nhwc_bwd_dx_kernel(
    X,  # forward input, channels_last
    DY,  # upstream gradient, channels_last
    DX,  # out: input gradient, channels_last
    W,  # weight (C,) or dummy
    B,  # bias (C,) or dummy
    MEAN,  # (N*C,) saved by the forward
    RSTD,  # (N*C,)
    S1,  # (N*C,) sum(dz) per plane (the K partials summed)
    S2,  # (N*C,) sum(dz * xhat) per plane
    HW,  # pixels per plane
    C,  # channels
    slope,  # negative slope of the LeakyReLU
    HAS_W: tl.constexpr,  # affine
    ACT: tl.constexpr,  # the forward applied the activation
    CHUNK: tl.constexpr,  # pixels per chunk
    TILE_P: tl.constexpr,  # pixels per loop step
    BLOCK_C: tl.constexpr,  # channels per program
    ACC: tl.constexpr,  # accumulation dtype
):
    # the reverse of the reduction pass's launch order: the chunks it read last are likely still in L2
    n, k, cs, cmask = _nhwc_program(C, BLOCK_C, True)
    plane = n * C + cs
    mean = tl.load(MEAN + plane, mask=cmask, other=0.0)
    rstd = tl.load(RSTD + plane, mask=cmask, other=0.0)
    m1 = (tl.load(S1 + plane, mask=cmask, other=0.0) / HW)[None, :]
    m2 = (tl.load(S2 + plane, mask=cmask, other=0.0) / HW)[None, :]
    w, b = _nhwc_affine(W, B, cs, cmask, HAS_W, BLOCK_C, ACC)
    scale = (w * rstd)[None, :]
    start = k * CHUNK
    for i in range(0, CHUNK, TILE_P):
        off, mask = _nhwc_tile(n, cs, cmask, start + i + tl.arange(0, TILE_P), HW, C)
        xhat, dz = _nhwc_dz(X, DY, off, mask, mean[None, :], rstd[None, :], w[None, :], b[None, :], slope, ACT, ACC)
        dx = scale * (dz - m1 - xhat * m2)
        tl.store(DX + off, dx.to(DX.dtype.element_ty), mask=mask)


# Double backward. With m = act'(z) (1 or slope, piecewise constant), dz = dy*m, g = w*dz and the backward
# dx = r*(g - mean(g) - xhat*mean(g*xhat)), the upstream gradients (ddx, ddw, ddb) of (dx, dw, db) give
#   h     = r*(ddx - mean(ddx) - xhat*mean(ddx*xhat))                    (the IN backward applied to ddx)
#   d_dy  = m*(w*h + ddw*xhat + ddb)
#   d_w   = sum_{n,hw} dz*h,  d_b = 0
#   d_x   = r*(F - mean(F) - xhat*mean(F*xhat)) - (r^2/M)*xhat*E,   with
#   F     = -(r/M)*(w*dz*S_ddx + ddx*w*S_dzx) + ddw*dz
#   E     = w*S_dzdd - w*S_dz*S_dd/M - w*S_dzx*S_ddx/M
# where M = H*W and the per-plane sums are S_dz = sum dz, S_dzx = sum dz*xhat, S_dd = sum ddx,
# S_ddx = sum ddx*xhat, S_dzdd = sum dz*ddx (mean(F) and mean(F*xhat) follow from them in closed form).
@_jit
def _dbwd_load(X, DY, DDX, ptr_off, mask, mean, rstd, w, b, slope, ACT: tl.constexpr, ACC: tl.constexpr):
    """(xhat, dz, m, ddx) at ptr_off, zero where masked."""
    xhat = (tl.load(X + ptr_off, mask=mask, other=0.0).to(ACC) - mean) * rstd
    dy = tl.load(DY + ptr_off, mask=mask, other=0.0).to(ACC)
    ddx = tl.load(DDX + ptr_off, mask=mask, other=0.0).to(ACC)
    m = tl.where(mask, 1.0, 0.0).to(ACC)
    if ACT:
        m = tl.where(xhat * w + b > 0, m, m * slope)
    xhat = tl.where(mask, xhat, 0.0)
    return xhat, dy * m, m, ddx


@_jit
def _dbwd_elem(xhat, dz, m, ddx, s_dz, s_dzx, s_dd, s_ddx, s_dzdd, HW, rstd, w, ddw, ddb, ACC: tl.constexpr):
    """(d_dy, d_x, dz*h) of the elements, given the plane sums."""
    inv_m = tl.full((), 1.0, ACC) / HW
    h = rstd * (ddx - s_dd * inv_m - xhat * (s_ddx * inv_m))
    d_dy = m * (w * h + ddw * xhat + ddb)
    c = rstd * inv_m
    f = -c * (w * dz * s_ddx + ddx * (w * s_dzx)) + ddw * dz
    mean_f = (-c * (w * s_dz * s_ddx + s_dd * w * s_dzx) + ddw * s_dz) * inv_m
    mean_fx = (-c * (2.0 * w * s_dzx * s_ddx) + ddw * s_dzx) * inv_m
    e = w * (s_dzdd - s_dz * s_dd * inv_m - s_dzx * s_ddx * inv_m)
    d_x = rstd * (f - mean_f - xhat * mean_fx) - (rstd * rstd * inv_m * e) * xhat
    return d_dy, d_x, dz * h


@_jit
def _dbwd_fused_kernel(
    X,  # forward input
    DY,  # first-backward upstream gradient, same strides as X
    DDX,  # upstream gradient of dx, same strides as X
    DDY_OUT,  # out: gradient w.r.t. dy
    DX_OUT,  # out: gradient w.r.t. x
    DW_PART,  # out (N*C,): sum of dz*h per plane (-> gradient w.r.t. the weight)
    W,  # weight (C,) or dummy
    B,  # bias (C,) or dummy
    DDW,  # (C,) upstream gradient of dw (zeros when unused)
    DDB,  # (C,) upstream gradient of db (zeros when unused)
    MEAN,  # (N*C,) saved statistics
    RSTD,
    C,
    HW,
    stride_n,
    stride_c,
    stride_hw,
    slope,
    HAS_W: tl.constexpr,
    ACT: tl.constexpr,
    BLOCK: tl.constexpr,  # >= HW
    ACC: tl.constexpr,
):
    pid = tl.program_id(0)
    n = pid // C
    c = pid % C
    base = n.to(tl.int64) * stride_n + c.to(tl.int64) * stride_c
    offs = tl.arange(0, BLOCK)
    mask = offs < HW
    ptr_off = base + offs.to(tl.int64) * stride_hw
    mean = tl.load(MEAN + pid)
    rstd = tl.load(RSTD + pid)
    w = 1.0
    b = 0.0
    if HAS_W:
        w = tl.load(W + c).to(ACC)
        b = tl.load(B + c).to(ACC)
    ddw = tl.load(DDW + c).to(ACC)
    ddb = tl.load(DDB + c).to(ACC)
    xhat, dz, m, ddx = _dbwd_load(X, DY, DDX, ptr_off, mask, mean, rstd, w, b, slope, ACT, ACC)
    s_dz = tl.sum(dz, axis=0)
    s_dzx = tl.sum(dz * xhat, axis=0)
    s_dd = tl.sum(ddx, axis=0)
    s_ddx = tl.sum(ddx * xhat, axis=0)
    s_dzdd = tl.sum(dz * ddx, axis=0)
    d_dy, d_x, dzh = _dbwd_elem(xhat, dz, m, ddx, s_dz, s_dzx, s_dd, s_ddx, s_dzdd, HW, rstd, w, ddw, ddb, ACC)
    tl.store(DDY_OUT + ptr_off, d_dy.to(DDY_OUT.dtype.element_ty), mask=mask)
    tl.store(DX_OUT + ptr_off, d_x.to(DX_OUT.dtype.element_ty), mask=mask)
    tl.store(DW_PART + pid, tl.sum(tl.where(mask, dzh, 0.0), axis=0))


@_jit
def _dbwd_reduce_kernel(
    X,
    DY,
    DDX,
    SUMS,  # out (5, N*C, K): per-chunk S_dz, S_dzx, S_dd, S_ddx, S_dzdd
    W,
    B,
    MEAN,
    RSTD,
    HW,
    C,
    K,
    stride_n,
    stride_c,
    stride_hw,
    slope,
    HAS_W: tl.constexpr,
    ACT: tl.constexpr,
    CHUNK: tl.constexpr,
    TILE: tl.constexpr,
    ACC: tl.constexpr,
):
    pid = tl.program_id(0)
    k = tl.program_id(1)
    n = pid // C
    c = pid % C
    base = n.to(tl.int64) * stride_n + c.to(tl.int64) * stride_c
    mean = tl.load(MEAN + pid)
    rstd = tl.load(RSTD + pid)
    w = 1.0
    b = 0.0
    if HAS_W:
        w = tl.load(W + c).to(ACC)
        b = tl.load(B + c).to(ACC)
    a_dz = tl.zeros([TILE], dtype=ACC)
    a_dzx = tl.zeros([TILE], dtype=ACC)
    a_dd = tl.zeros([TILE], dtype=ACC)
    a_ddx = tl.zeros([TILE], dtype=ACC)
    a_dzdd = tl.zeros([TILE], dtype=ACC)
    start = k * CHUNK
    for i in range(0, CHUNK, TILE):
        offs = start + i + tl.arange(0, TILE)
        mask = offs < HW
        ptr_off = base + offs.to(tl.int64) * stride_hw
        xhat, dz, m, ddx = _dbwd_load(X, DY, DDX, ptr_off, mask, mean, rstd, w, b, slope, ACT, ACC)
        a_dz += dz
        a_dzx += dz * xhat
        a_dd += ddx
        a_ddx += ddx * xhat
        a_dzdd += dz * ddx
    plane = tl.num_programs(0) * K  # N*C*K: the stride between the five sums
    idx = pid * K + k
    tl.store(SUMS + idx, tl.sum(a_dz, axis=0))
    tl.store(SUMS + plane + idx, tl.sum(a_dzx, axis=0))
    tl.store(SUMS + 2 * plane + idx, tl.sum(a_dd, axis=0))
    tl.store(SUMS + 3 * plane + idx, tl.sum(a_ddx, axis=0))
    tl.store(SUMS + 4 * plane + idx, tl.sum(a_dzdd, axis=0))


@_jit
def _dbwd_apply_kernel(
    X,
    DY,
    DDX,
    DDY_OUT,  # out: gradient w.r.t. dy
    DX_OUT,  # out: gradient w.r.t. x
    DW_PART,  # out (N*C, K): per-chunk sum of dz*h
    SUMS,  # (5, N*C, K) from _dbwd_reduce_kernel
    W,
    B,
    DDW,
    DDB,
    MEAN,
    RSTD,
    HW,
    C,
    K,
    stride_n,
    stride_c,
    stride_hw,
    slope,
    HAS_W: tl.constexpr,
    ACT: tl.constexpr,
    CHUNK: tl.constexpr,
    TILE: tl.constexpr,
    BLOCK_K: tl.constexpr,
    ACC: tl.constexpr,
):
    # reverse of the reduction pass's launch order: the chunks it read last are likely still in L2
    pid = tl.num_programs(0) - 1 - tl.program_id(0)
    k = tl.num_programs(1) - 1 - tl.program_id(1)
    n = pid // C
    c = pid % C
    base = n.to(tl.int64) * stride_n + c.to(tl.int64) * stride_c
    mean = tl.load(MEAN + pid)
    rstd = tl.load(RSTD + pid)
    w = 1.0
    b = 0.0
    if HAS_W:
        w = tl.load(W + c).to(ACC)
        b = tl.load(B + c).to(ACC)
    ddw = tl.load(DDW + c).to(ACC)
    ddb = tl.load(DDB + c).to(ACC)
    plane = tl.num_programs(0) * K
    ks = tl.arange(0, BLOCK_K)
    kmask = ks < K
    row = SUMS + pid * K + ks
    s_dz = tl.sum(tl.load(row, mask=kmask, other=0.0), axis=0)
    s_dzx = tl.sum(tl.load(row + plane, mask=kmask, other=0.0), axis=0)
    s_dd = tl.sum(tl.load(row + 2 * plane, mask=kmask, other=0.0), axis=0)
    s_ddx = tl.sum(tl.load(row + 3 * plane, mask=kmask, other=0.0), axis=0)
    s_dzdd = tl.sum(tl.load(row + 4 * plane, mask=kmask, other=0.0), axis=0)
    acc = tl.zeros([TILE], dtype=ACC)
    start = k * CHUNK
    for i in range(0, CHUNK, TILE):
        offs = start + i + tl.arange(0, TILE)
        mask = offs < HW
        ptr_off = base + offs.to(tl.int64) * stride_hw
        xhat, dz, m, ddx = _dbwd_load(X, DY, DDX, ptr_off, mask, mean, rstd, w, b, slope, ACT, ACC)
        d_dy, d_x, dzh = _dbwd_elem(xhat, dz, m, ddx, s_dz, s_dzx, s_dd, s_ddx, s_dzdd, HW, rstd, w, ddw, ddb, ACC)
        tl.store(DDY_OUT + ptr_off, d_dy.to(DDY_OUT.dtype.element_ty), mask=mask)
        tl.store(DX_OUT + ptr_off, d_x.to(DX_OUT.dtype.element_ty), mask=mask)
        acc += tl.where(mask, dzh, 0.0)
    tl.store(DW_PART + pid * K + k, tl.sum(acc, axis=0))


# ----------------------------------------------------------------------------------------------- host side
def _check_runnable(x: torch.Tensor) -> None:
    if triton is None:
        raise RuntimeError("the triton kernels backend needs the `triton` package (use kernels='torch')")
    if x.device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError(
            f"the triton kernels backend runs on CUDA tensors (got a {x.device.type} tensor); "
            "use kernels='torch' or 'auto', or set TRITON_INTERPRET=1 before importing triton"
        )


def _check_input(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None) -> None:
    if x.dim() != 4:
        raise ValueError(f"instance_norm_act expects an (N, C, H, W) tensor, got shape {tuple(x.shape)}")
    if x.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"instance_norm_act supports float32, float16, bfloat16 and float64 tensors, got {x.dtype}")
    if (weight is None) != (bias is None):
        raise ValueError("instance_norm_act needs both weight and bias, or neither")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and tuple(t.shape) != (x.shape[1],):
            raise ValueError(f"{name} must have shape ({x.shape[1]},), got {tuple(t.shape)}")


def _is_channels_last(x: torch.Tensor) -> bool:
    """channels_last-contiguous and not NCHW-contiguous. Tensors that are both (C == 1, or 1x1 planes) are the
    same memory either way and take the NCHW kernels."""
    return not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


def _cl_mode(x: torch.Tensor) -> str | None:
    """The CHANNELS_LAST_MODE that applies to x, or None when x is not a channels_last tensor."""
    if not _is_channels_last(x):
        return None
    if CHANNELS_LAST_MODE not in CHANNELS_LAST_MODES:
        raise ValueError(f"CHANNELS_LAST_MODE must be one of {CHANNELS_LAST_MODES}, got {CHANNELS_LAST_MODE!r}")
    return CHANNELS_LAST_MODE


def _layout(x: torch.Tensor) -> tuple[torch.Tensor, torch.memory_format]:
    """x as the NCHW kernels read it: NCHW-contiguous, or channels_last in place in the "strided" mode (H*W
    has a single stride either way), and that format."""
    if x.is_contiguous():
        return x, torch.contiguous_format
    if _cl_mode(x) == "strided":
        return x, torch.channels_last
    return x.contiguous(), torch.contiguous_format


def _acc(x: torch.Tensor) -> tuple[torch.dtype, object]:
    """Accumulation dtype (torch, triton): fp32, or fp64 for fp64 inputs so that gradcheck is meaningful."""
    wide = x.dtype == torch.float64
    if triton is None:
        return (torch.float64 if wide else torch.float32), None
    return (torch.float64, tl.float64) if wide else (torch.float32, tl.float32)


def _plan(nc: int, hw: int, chunk_size: int | None) -> tuple[int, int, int]:
    """(chunk, chunks per plane, tile); chunk == 0 means one fused program per plane."""
    if chunk_size is None:
        if hw <= FUSED_MAX:
            return 0, 1, 0
        want = triton.cdiv(hw, max(1, TARGET_PROGRAMS // nc))
        chunk = min(max(triton.next_power_of_2(want), TILE), MAX_CHUNK)
    elif chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    else:
        chunk = triton.next_power_of_2(chunk_size)
    # at most MAX_CHUNKS per plane: every program merges all partials of its plane in registers
    chunk = max(chunk, triton.next_power_of_2(triton.cdiv(hw, MAX_CHUNKS)))
    return chunk, triton.cdiv(hw, chunk), min(TILE, chunk)


def _plan_nhwc(n: int, c: int, hw: int, chunk_size: int | None) -> tuple[int, int, int, int]:
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
    elif chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    else:
        chunk = triton.next_power_of_2(chunk_size)
    chunk = max(chunk, triton.next_power_of_2(triton.cdiv(hw, MAX_CHUNKS)))
    return block_c, min(tile_p, chunk), chunk, triton.cdiv(hw, chunk)


def _fwd_tiled(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    negative_slope: float,
    eps: float,
    activation: bool,
    chunk_size: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The forward of a channels_last x by the tiled NHWC kernels: statistics (+ combine when K > 1), normalize."""
    n, c, h, w = x.shape
    nc, hw = n * c, h * w
    y = torch.empty_like(x)  # channels_last, dense: element (n, p, c) at n*HW*C + p*C + c, as in x
    acc, acc_tl = _acc(x)
    mean = torch.empty(nc, device=x.device, dtype=acc)
    rstd = torch.empty_like(mean)
    has_w = weight is not None
    wt = weight.contiguous() if has_w else x
    bt = bias.contiguous() if has_w else x
    block_c, tile_p, chunk, k = _plan_nhwc(n, c, hw, chunk_size or None)
    grid = (n * triton.cdiv(c, block_c), k)
    tiles = dict(CHUNK=chunk, TILE_P=tile_p, BLOCK_C=block_c, ACC=acc_tl, num_warps=4)
    part = torch.empty(2, nc, k, device=x.device, dtype=acc) if k > 1 else mean.view(1, nc).expand(2, nc)
    _nhwc_stats_kernel[grid](x, part[0], part[1], mean, rstd, hw, c, k, eps, FINAL=k == 1, **tiles)
    if k > 1:
        _combine_kernel[(nc,)](
            part[0], part[1], mean, rstd, hw, k, eps, CHUNK=chunk, BLOCK_K=triton.next_power_of_2(k), ACC=acc_tl,
            num_warps=4,
        )  # fmt: skip
    _nhwc_norm_act_kernel[grid](
        x, y, wt, bt, mean, rstd, hw, c, negative_slope, HAS_W=has_w, ACT=activation, **tiles
    )  # fmt: skip
    return y, mean, rstd


def _bwd_tiled(
    dy: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    mean: torch.Tensor,
    rstd: torch.Tensor,
    negative_slope: float,
    activation: bool,
    chunk_size: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dx, dw, db) of a channels_last x by the tiled NHWC kernels: per-chunk sums, then dx."""
    dy = dy.contiguous(memory_format=torch.channels_last)
    n, c, h, w = x.shape
    nc, hw = n * c, h * w
    dx = torch.empty_like(x)
    acc, acc_tl = _acc(x)
    has_w = weight is not None
    wt = weight.contiguous() if has_w else x
    bt = bias.contiguous() if has_w else x
    block_c, tile_p, chunk, k = _plan_nhwc(n, c, hw, chunk_size or None)
    grid = (n * triton.cdiv(c, block_c), k)
    common = dict(HAS_W=has_w, ACT=activation, CHUNK=chunk, TILE_P=tile_p, BLOCK_C=block_c, ACC=acc_tl, num_warps=4)
    part = torch.empty(2, nc, k, device=x.device, dtype=acc)
    _nhwc_bwd_reduce_kernel[grid](x, dy, wt, bt, mean, rstd, part[0], part[1], hw, c, k, negative_slope, **common)
    sums = part.view(2, nc) if k == 1 else part.sum(dim=2)  # (sum dz, sum dz*xhat) per plane
    _nhwc_bwd_dx_kernel[grid](x, dy, dx, wt, bt, mean, rstd, sums[0], sums[1], hw, c, negative_slope, **common)
    db = sums[0].view(n, c).sum(dim=0)  # two separate tensors: custom-op outputs must not alias each other
    dw = sums[1].view(n, c).sum(dim=0)
    return dx, dw, db


def _fwd_impl(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    negative_slope: float,
    eps: float,
    activation: bool,
    chunk_size: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    mode = _cl_mode(x)
    if mode == "tiled":
        return _fwd_tiled(x, weight, bias, negative_slope, eps, activation, chunk_size)
    if mode == "copy":  # computed in NCHW, returned in the input's layout
        y, mean, rstd = _fwd_impl(x.contiguous(), weight, bias, negative_slope, eps, activation, chunk_size)
        return y.contiguous(memory_format=torch.channels_last), mean, rstd
    x, _ = _layout(x)
    n, c, h, w = x.shape
    nc, hw = n * c, h * w
    y = torch.empty_like(x)
    acc, acc_tl = _acc(x)
    mean = torch.empty(nc, device=x.device, dtype=acc)
    rstd = torch.empty_like(mean)
    has_w = weight is not None
    wt = weight.contiguous() if has_w else x
    bt = bias.contiguous() if has_w else x
    sn, sc, _, sw = x.stride()
    chunk, k, tile = _plan(nc, hw, chunk_size or None)
    if chunk == 0:
        block = triton.next_power_of_2(hw)
        _fwd_fused_kernel[(nc,)](
            x, y, wt, bt, mean, rstd, c, hw, sn, sc, sw, negative_slope, eps,
            HAS_W=has_w, ACT=activation, BLOCK=block, ACC=acc_tl, num_warps=min(max(block // 256, 1), 8),
        )  # fmt: skip
        return y, mean, rstd
    mean_part = torch.empty(nc, k, device=x.device, dtype=acc)
    m2_part = torch.empty_like(mean_part)
    _stats_kernel[(nc, k)](x, mean_part, m2_part, hw, c, k, sn, sc, sw, CHUNK=chunk, TILE=tile, ACC=acc_tl, num_warps=4)
    _norm_act_kernel[(nc, k)](
        x, y, wt, bt, mean_part, m2_part, mean, rstd, hw, c, k, sn, sc, sw, negative_slope, eps,
        HAS_W=has_w, ACT=activation, CHUNK=chunk, TILE=tile, BLOCK_K=triton.next_power_of_2(k), ACC=acc_tl,
        num_warps=4,
    )  # fmt: skip
    return y, mean, rstd


_in_act_fwd = torch.library.custom_op("deblurgan_kernels::in_act_fwd", _fwd_impl, mutates_args=())


@_in_act_fwd.register_fake
def _(x, weight, bias, negative_slope, eps, activation, chunk_size):
    nc = x.shape[0] * x.shape[1]
    stats = x.new_empty(nc, dtype=torch.float64 if x.dtype == torch.float64 else torch.float32)
    return torch.empty_like(x), stats, torch.empty_like(stats)


def _bwd_impl(
    dy: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    mean: torch.Tensor,
    rstd: torch.Tensor,
    negative_slope: float,
    eps: float,
    activation: bool,
    chunk_size: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dx, dw, db); dw and db are (C,) sums in the accumulation dtype (cheap by-products without a weight)."""
    mode = _cl_mode(x)
    if mode == "tiled":
        return _bwd_tiled(dy, x, weight, bias, mean, rstd, negative_slope, activation, chunk_size)
    if mode == "copy":  # computed in NCHW, dx returned in the input's layout
        args = (mean, rstd, negative_slope, eps, activation, chunk_size)
        dx, dw, db = _bwd_impl(dy.contiguous(), x.contiguous(), weight, bias, *args)
        return dx.contiguous(memory_format=torch.channels_last), dw, db
    x, fmt = _layout(x)
    dy = dy.contiguous(memory_format=fmt)
    n, c, h, w = x.shape
    nc, hw = n * c, h * w
    dx = torch.empty_like(x)
    has_w = weight is not None
    wt = weight.contiguous() if has_w else x
    bt = bias.contiguous() if has_w else x
    sn, sc, _, sw = x.stride()
    chunk, k, tile = _plan(nc, hw, chunk_size or None)
    acc, acc_tl = _acc(x)
    s1 = torch.empty(nc, k, device=x.device, dtype=acc)
    s2 = torch.empty_like(s1)
    if chunk == 0:
        block = triton.next_power_of_2(hw)
        _bwd_fused_kernel[(nc,)](
            x, dy, dx, wt, bt, mean, rstd, s1, s2, c, hw, sn, sc, sw, negative_slope,
            HAS_W=has_w, ACT=activation, BLOCK=block, ACC=acc_tl, num_warps=min(max(block // 256, 1), 8),
        )  # fmt: skip
    else:
        common = dict(HAS_W=has_w, ACT=activation, CHUNK=chunk, TILE=tile, ACC=acc_tl, num_warps=4)
        _bwd_reduce_kernel[(nc, k)](x, dy, wt, bt, mean, rstd, s1, s2, hw, c, k, sn, sc, sw, negative_slope, **common)
        _bwd_dx_kernel[(nc, k)](
            x, dy, dx, wt, bt, mean, rstd, s1, s2, hw, c, k, sn, sc, sw, negative_slope,
            BLOCK_K=triton.next_power_of_2(k), **common,
        )  # fmt: skip
    db = s1.view(n, c, k).sum(dim=(0, 2))
    dw = s2.view(n, c, k).sum(dim=(0, 2))
    return dx, dw, db


_in_act_bwd = torch.library.custom_op("deblurgan_kernels::in_act_bwd", _bwd_impl, mutates_args=())


@_in_act_bwd.register_fake
def _(dy, x, weight, bias, mean, rstd, negative_slope, eps, activation, chunk_size):
    ch = x.new_empty(x.shape[1], dtype=torch.float64 if x.dtype == torch.float64 else torch.float32)
    return torch.empty_like(x), ch, torch.empty_like(ch)


def _bwd2_impl(
    ddx: torch.Tensor,
    ddw: torch.Tensor | None,
    ddb: torch.Tensor | None,
    dy: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    mean: torch.Tensor,
    rstd: torch.Tensor,
    negative_slope: float,
    eps: float,
    activation: bool,
    chunk_size: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Double backward: gradients w.r.t. (dy, x, weight) of <ddx, dx> + <ddw, dw> + <ddb, db> (bias: zero)."""
    if _cl_mode(x) in ("tiled", "copy"):
        # No native NHWC double backward: channels_last goes through the NCHW kernels on contiguous copies
        # (mean/rstd mean the same in every path) and the results are returned channels_last.
        args = (weight, bias, mean, rstd, negative_slope, eps, activation, chunk_size)
        d_dy, d_x, d_w = _bwd2_impl(ddx.contiguous(), ddw, ddb, dy.contiguous(), x.contiguous(), *args)
        cl = torch.channels_last
        return d_dy.contiguous(memory_format=cl), d_x.contiguous(memory_format=cl), d_w
    x, fmt = _layout(x)
    dy = dy.contiguous(memory_format=fmt)
    ddx = ddx.contiguous(memory_format=fmt)
    n, c, h, w = x.shape
    nc, hw = n * c, h * w
    acc, acc_tl = _acc(x)
    has_w = weight is not None
    wt = weight.contiguous() if has_w else x
    bt = bias.contiguous() if has_w else x
    ddw = torch.zeros(c, device=x.device, dtype=acc) if ddw is None else ddw.to(acc).contiguous()
    ddb = torch.zeros(c, device=x.device, dtype=acc) if ddb is None else ddb.to(acc).contiguous()
    d_dy = torch.empty_like(x)
    d_x = torch.empty_like(x)
    sn, sc, _, sw = x.stride()
    chunk, k, tile = _plan(nc, hw, chunk_size or None)
    dw_part = torch.empty(nc, k, device=x.device, dtype=acc)
    if chunk == 0:
        block = triton.next_power_of_2(hw)
        _dbwd_fused_kernel[(nc,)](
            x, dy, ddx, d_dy, d_x, dw_part, wt, bt, ddw, ddb, mean, rstd, c, hw, sn, sc, sw, negative_slope,
            HAS_W=has_w, ACT=activation, BLOCK=block, ACC=acc_tl, num_warps=min(max(block // 256, 1), 8),
        )  # fmt: skip
    else:
        sums = torch.empty(5, nc, k, device=x.device, dtype=acc)
        common = dict(HAS_W=has_w, ACT=activation, CHUNK=chunk, TILE=tile, ACC=acc_tl, num_warps=4)
        _dbwd_reduce_kernel[(nc, k)](
            x, dy, ddx, sums, wt, bt, mean, rstd, hw, c, k, sn, sc, sw, negative_slope, **common
        )  # fmt: skip
        _dbwd_apply_kernel[(nc, k)](
            x, dy, ddx, d_dy, d_x, dw_part, sums, wt, bt, ddw, ddb, mean, rstd, hw, c, k, sn, sc, sw, negative_slope,
            BLOCK_K=triton.next_power_of_2(k), **common,
        )  # fmt: skip
    return d_dy, d_x, dw_part.view(n, c, k).sum(dim=(0, 2))


_in_act_bwd2 = torch.library.custom_op("deblurgan_kernels::in_act_bwd2", _bwd2_impl, mutates_args=())


@_in_act_bwd2.register_fake
def _(ddx, ddw, ddb, dy, x, weight, bias, mean, rstd, negative_slope, eps, activation, chunk_size):
    ch = x.new_empty(x.shape[1], dtype=torch.float64 if x.dtype == torch.float64 else torch.float32)
    return torch.empty_like(x), torch.empty_like(x), ch


def composite_backward(
    dy: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    negative_slope: float,
    eps: float,
    activation: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The backward of instance_norm_act in differentiable torch ops (fp32, fp64 for fp64): (dx, dw, db)."""
    acc = _acc(x)[0]
    xf = x.to(acc)
    var, mean = torch.var_mean(xf, dim=(2, 3), unbiased=False, keepdim=True)
    rstd = torch.rsqrt(var + eps)
    xhat = (xf - mean) * rstd
    dz = dy.to(acc)
    if weight is not None:
        w = weight.to(acc).view(1, -1, 1, 1)
        z = xhat * w + bias.to(acc).view(1, -1, 1, 1)
    else:
        w, z = 1.0, xhat
    if activation:
        dz = torch.where(z > 0, dz, dz * negative_slope)
    g = dz * w
    dx = rstd * (g - g.mean(dim=(2, 3), keepdim=True) - xhat * (g * xhat).mean(dim=(2, 3), keepdim=True))
    return dx.to(x.dtype), (dz * xhat).sum(dim=(0, 2, 3)), dz.sum(dim=(0, 2, 3))


def _fwd_setup(ctx, inputs, output):
    x, weight, bias, negative_slope, eps, activation, chunk_size = inputs
    _, mean, rstd = output
    ctx.save_for_backward(x, weight, bias, mean, rstd)
    ctx.args = (negative_slope, eps, activation, chunk_size)
    ctx.mark_non_differentiable(mean, rstd)


def _fwd_backward(ctx, dy, _dmean, _drstd):
    x, weight, bias, mean, rstd = ctx.saved_tensors
    dx, dw, db = _call(_InActBwd, _in_act_bwd, dy, x, weight, bias, mean, rstd, *ctx.args)
    if weight is None:
        return dx, None, None, None, None, None, None
    return dx, dw.to(weight.dtype), db.to(bias.dtype), None, None, None, None


_in_act_fwd.register_autograd(_fwd_backward, setup_context=_fwd_setup)


def _bwd_setup(ctx, inputs, output):
    dy, x, weight, bias, mean, rstd, negative_slope, eps, activation, chunk_size = inputs
    ctx.save_for_backward(dy, x, weight, bias, mean, rstd)
    ctx.args = (negative_slope, eps, activation, chunk_size)


def _bwd_backward(ctx, ddx, ddw, ddb):
    # mean and rstd are functions of x: the double-backward formula includes their dependence on x, so the
    # saved statistics themselves get no gradient.
    dy, x, weight, bias, mean, rstd = ctx.saved_tensors
    if ddx is None:
        ddx = torch.zeros_like(x)
    d_dy, d_x, d_w = _call(_InActBwd2, _in_act_bwd2, ddx, ddw, ddb, dy, x, weight, bias, mean, rstd, *ctx.args)
    d_w = d_w.to(weight.dtype) if weight is not None else None
    return d_dy, d_x, d_w, None, None, None, None, None, None, None


_in_act_bwd.register_autograd(_bwd_backward, setup_context=_bwd_setup)


def composite_double_backward(
    ddx: torch.Tensor,
    ddw: torch.Tensor | None,
    ddb: torch.Tensor | None,
    dy: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    negative_slope: float,
    eps: float,
    activation: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(d_dy, d_x, d_w) of the double backward in differentiable torch ops (the vjp of composite_backward)."""
    acc = _acc(x)[0]
    c = x.shape[1]
    ddw = torch.zeros(c, device=x.device, dtype=acc) if ddw is None else ddw.to(acc)
    ddb = torch.zeros(c, device=x.device, dtype=acc) if ddb is None else ddb.to(acc)
    if weight is None:
        fn = lambda dy_, x_: composite_backward(dy_, x_, None, None, negative_slope, eps, activation)
        _, vjp = torch.func.vjp(fn, dy, x)
        return (*vjp((ddx, ddw, ddb)), None)
    fn = lambda dy_, x_, w_: composite_backward(dy_, x_, w_, bias, negative_slope, eps, activation)
    _, vjp = torch.func.vjp(fn, dy, x, weight)
    return vjp((ddx, ddw, ddb))


def _bwd2_setup(ctx, inputs, output):
    ddx, ddw, ddb, dy, x, weight, bias, _mean, _rstd, negative_slope, eps, activation, _ = inputs
    ctx.save_for_backward(ddx, ddw, ddb, dy, x, weight, bias)
    ctx.args = (negative_slope, eps, activation)


def _bwd2_backward(ctx, g_dy, g_x, g_w):
    # Third order and beyond (not needed by training): the vjp of the composite double backward.
    saved = dict(zip(("ddx", "ddw", "ddb", "dy", "x", "weight", "bias"), ctx.saved_tensors, strict=True))
    slope, eps, act = ctx.args
    names = [k for k, v in saved.items() if v is not None]

    def fn(*tensors):
        t = saved | dict(zip(names, tensors, strict=True))
        d_dy, d_x, d_w = composite_double_backward(
            t["ddx"], t["ddw"], t["ddb"], t["dy"], t["x"], t["weight"], t["bias"], slope, eps, act
        )
        return (d_dy, d_x) if d_w is None else (d_dy, d_x, d_w)

    outs, vjp = torch.func.vjp(fn, *(saved[k] for k in names))
    cots = tuple(torch.zeros_like(o) if g is None else g for o, g in zip(outs, (g_dy, g_x, g_w), strict=False))
    grads = dict(zip(names, vjp(cots), strict=True))
    order = ("ddx", "ddw", "ddb", "dy", "x", "weight", "bias")
    return (*(grads.get(k) for k in order), None, None, None, None, None, None)


_in_act_bwd2.register_autograd(_bwd2_backward, setup_context=_bwd2_setup)


# Eager fast path: the same implementations, setup and backward functions as the custom ops, wrapped in
# autograd.Functions. A custom-op call costs tens of microseconds of host time (dispatcher, schema checks),
# comparable to the kernels themselves at 1x256x180x320; torch.compile, torch.export and torch.func see the
# custom ops instead (their tensors are subclasses, or a compile / functorch transform is active).
class _InActFwd(torch.autograd.Function):
    forward = staticmethod(_fwd_impl)
    setup_context = staticmethod(_fwd_setup)
    backward = staticmethod(_fwd_backward)


class _InActBwd(torch.autograd.Function):
    forward = staticmethod(_bwd_impl)
    setup_context = staticmethod(_bwd_setup)
    backward = staticmethod(_bwd_backward)


class _InActBwd2(torch.autograd.Function):
    forward = staticmethod(_bwd2_impl)
    setup_context = staticmethod(_bwd2_setup)
    backward = staticmethod(_bwd2_backward)


def _plain_eager(t: torch.Tensor) -> bool:
    return (
        type(t) is torch.Tensor
        and not torch.compiler.is_compiling()
        and torch._C._functorch.peek_interpreter_stack() is None
    )


def _call(fn: type[torch.autograd.Function], op, *args):
    """`fn.apply(*args)` in plain eager mode, else the custom op `op(*args)` (traceable)."""
    first = next(a for a in args if isinstance(a, torch.Tensor))
    with device_guard(first):  # Triton launches on the current CUDA device, which need not be the tensor's
        return fn.apply(*args) if FAST_EAGER and _plain_eager(first) else op(*args)


def device_guard(t: torch.Tensor):
    """`torch.cuda.device(t.device)` for CUDA tensors, else a no-op context."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


# ----------------------------------------------------------------------------------------------- public API
def instance_norm_act(
    x: torch.Tensor,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    negative_slope: float = 0.0,
    eps: float = 1e-5,
    activation: bool = True,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """act(instance_norm(x) * weight + bias); act = ReLU (slope 0), LeakyReLU (slope > 0), or none.

    x: (N, C, H, W), NCHW or channels_last, float32/float16/bfloat16 (float64 for gradcheck).
    Statistics are fp32 (fp64 for fp64 input). `chunk_size` forces planes to be split into chunks of that many elements
    (rounded up to a power of two); None picks a size from the shape.
    """
    _check_input(x, weight, bias)
    _check_runnable(x)
    if x.numel() == 0:
        raise ValueError(f"instance_norm_act got an empty tensor of shape {tuple(x.shape)}")
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    args = (x, weight, bias, float(negative_slope), float(eps), bool(activation), chunk_size or 0)
    y, _, _ = _call(_InActFwd, _in_act_fwd, *args)
    return y


def instance_norm_act_reference(
    x: torch.Tensor,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    negative_slope: float = 0.0,
    eps: float = 1e-5,
    activation: bool = True,
) -> torch.Tensor:
    """The same function in plain PyTorch ops, fp32 math (fp64 for fp64): what the kernels are tested against.

    Unlike F.instance_norm it also accepts 1x1 planes (output act(bias), gradient zero).
    """
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    xf = x.to(acc)
    var, mean = torch.var_mean(xf, dim=(2, 3), unbiased=False, keepdim=True)
    y = (xf - mean) * torch.rsqrt(var + eps)
    if weight is not None:
        y = y * weight.to(acc).view(1, -1, 1, 1) + bias.to(acc).view(1, -1, 1, 1)
    if activation:
        y = torch.nn.functional.leaky_relu(y, negative_slope) if negative_slope else torch.relu(y)
    return y.to(x.dtype)


class InstanceNormAct(nn.Module):
    """Drop-in for InstanceNorm2d(affine, track_running_stats=False) followed by ReLU / LeakyReLU.

    Same state-dict keys as nn.InstanceNorm2d: none when affine=False, `weight` and `bias` otherwise.
    """

    def __init__(
        self,
        num_features: int,
        negative_slope: float = 0.0,
        affine: bool = False,
        eps: float = 1e-5,
        activation: bool = True,
    ) -> None:
        super().__init__()
        self.num_features = num_features
        self.negative_slope = float(negative_slope)
        self.eps = eps
        self.activation = activation
        self.affine = affine
        if affine:
            self.weight = nn.Parameter(torch.ones(num_features))
            self.bias = nn.Parameter(torch.zeros(num_features))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4 and x.shape[1] != self.num_features:
            raise ValueError(f"expected {self.num_features} channels, got input of shape {tuple(x.shape)}")
        return instance_norm_act(x, self.weight, self.bias, self.negative_slope, self.eps, self.activation)

    def extra_repr(self) -> str:
        if not self.activation:
            act = "none"
        else:
            act = "relu" if self.negative_slope == 0 else f"leaky_relu({self.negative_slope})"
        return f"{self.num_features}, eps={self.eps}, affine={self.affine}, activation={act}"
