"""NCHW kernels of the instance norm: forward and backward, fused (one program per plane) or chunked.

    y = act((x - mean) * rstd * w + b),  mean/var over H*W of every (n, c) plane, rstd = 1/sqrt(var + eps)

Planes of up to FUSED_MAX elements: one program each (one read, one write). Larger planes: a (N*C, chunks) grid,
a statistics pass writing per-chunk (mean, M2) partials that the normalize pass merges (Chan et al.), and in the
backward a reduction pass (sum dz, sum dz*xhat per chunk) plus a dx pass. The kernels take any layout whose H*W
elements share one stride (NCHW, or channels_last read with a stride of C). Also home of the element helpers
that the NHWC and double-backward kernels share.
"""

from __future__ import annotations

import torch

from .._triton import jit as _jit
from .._triton import tl, triton
from . import plan


# ----------------------------------------------------------------------------------------------- shared helpers
@_jit
def _act(z, slope, ACT: tl.constexpr):
    """LeakyReLU(slope) of z when ACT (slope 0: ReLU), else z."""
    if ACT:
        z = tl.where(z > 0, z, z * slope)
    return z


@_jit
def _xhat_dz(X, DY, off, mask, mean, rstd, w, b, slope, ACT: tl.constexpr, ACC: tl.constexpr):
    """(xhat, dz = dy * act'(z)) at offsets off, dz zero where masked."""
    xhat = (tl.load(X + off, mask=mask, other=0.0).to(ACC) - mean) * rstd
    dz = tl.load(DY + off, mask=mask, other=0.0).to(ACC)
    if ACT:
        dz = tl.where(xhat * w + b > 0, dz, dz * slope)
    return xhat, tl.where(mask, dz, 0.0)


@_jit
def _combine_stats(MEAN_PART, M2_PART, pid, HW, K, eps, CHUNK: tl.constexpr, BLOCK_K: tl.constexpr, ACC: tl.constexpr):
    """(mean, rstd) of plane pid from its K chunk partials (Chan merge)."""
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


# ----------------------------------------------------------------------------------------------- NCHW prologue
@_jit
def _nchw_program(C, stride_n, stride_c, REVERSE: tl.constexpr):
    """(plane pid, chunk k, channel c, int64 offset of the plane) of this program in an (N*C, chunks) grid.

    REVERSE walks the grid backwards: a pass that re-reads what the previous pass read last finds it in L2.
    """
    pid = tl.program_id(0)
    k = tl.program_id(1)
    if REVERSE:
        pid = tl.num_programs(0) - 1 - pid
        k = tl.num_programs(1) - 1 - k
    c = pid % C
    base = (pid // C).to(tl.int64) * stride_n + c.to(tl.int64) * stride_c
    return pid, k, c, base


@_jit
def _nchw_tile(base, offs, HW, stride_hw):
    """(int64 element offsets, mask) of the elements offs of the plane at base."""
    return base + offs.to(tl.int64) * stride_hw, offs < HW


@_jit
def _nchw_affine(W, B, c, HAS_W: tl.constexpr, ACC: tl.constexpr):
    """(w, b) of channel c: the affine parameters, or 1 and 0."""
    if HAS_W:
        w = tl.load(W + c).to(ACC)
        b = tl.load(B + c).to(ACC)
    else:
        w = tl.full((), 1.0, ACC)
        b = tl.full((), 0.0, ACC)
    return w, b


@_jit
def _nchw_saved(MEAN, RSTD, W, B, C, stride_n, stride_c, HAS_W: tl.constexpr, REVERSE: tl.constexpr, ACC: tl.constexpr):
    """_nchw_program's (pid, k, c, base), then the plane's saved (mean, rstd) and the channel's (w, b)."""
    pid, k, c, base = _nchw_program(C, stride_n, stride_c, REVERSE)
    w, b = _nchw_affine(W, B, c, HAS_W, ACC)
    return pid, k, c, base, tl.load(MEAN + pid), tl.load(RSTD + pid), w, b


# ----------------------------------------------------------------------------------------------- forward
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
    stride_n,  # element stride between samples (of X and every operand of X's shape)
    stride_c,  # element stride between channels
    stride_hw,  # element stride between a plane's elements
    slope,  # negative slope of the LeakyReLU (0.0 = ReLU)
    eps,  # variance epsilon
    HAS_W: tl.constexpr,  # affine
    ACT: tl.constexpr,  # apply the activation
    BLOCK: tl.constexpr,  # >= HW: one program holds the whole plane
    ACC: tl.constexpr,  # accumulation dtype: fp32, or fp64 for fp64 inputs (gradcheck)
):
    pid, _, c, base = _nchw_program(C, stride_n, stride_c, False)
    ptr_off, mask = _nchw_tile(base, tl.arange(0, BLOCK), HW, stride_hw)
    x = tl.load(X + ptr_off, mask=mask, other=0.0).to(ACC)
    mean = tl.sum(x, axis=0) / HW
    d = tl.where(mask, x - mean, 0.0)  # two-pass variance: the plane is already in registers
    var = tl.sum(d * d, axis=0) / HW
    rstd = 1.0 / tl.sqrt(var + eps)
    z = d * rstd
    if HAS_W:
        w, b = _nchw_affine(W, B, c, HAS_W, ACC)
        z = z * w + b
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
    stride_n,  # element stride between samples (of X and every operand of X's shape)
    stride_c,  # element stride between channels
    stride_hw,  # element stride between a plane's elements
    CHUNK: tl.constexpr,  # elements per chunk, a multiple of TILE
    TILE: tl.constexpr,  # elements per loop step
    ACC: tl.constexpr,  # accumulation dtype: fp32, or fp64 for fp64 inputs (gradcheck)
):
    pid, k, _, base = _nchw_program(C, stride_n, stride_c, False)
    start = k * CHUNK
    # Per-lane Welford, then a Chan merge of the lanes: stable however large the chunk. A lane that is masked
    # off stays off for the rest of the loop, so every active lane has seen exactly i // TILE + 1 values and
    # the Welford step needs one scalar reciprocal per tile instead of a division per element.
    cnt = tl.zeros([TILE], dtype=ACC)
    mean = tl.zeros([TILE], dtype=ACC)
    m2 = tl.zeros([TILE], dtype=ACC)
    one = tl.full((), 1.0, ACC)
    for i in range(0, CHUNK, TILE):
        ptr_off, mask = _nchw_tile(base, start + i + tl.arange(0, TILE), HW, stride_hw)
        x = tl.load(X + ptr_off, mask=mask, other=0.0).to(ACC)
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
def _norm_act_kernel(
    X,  # input
    Y,  # output, same strides as X
    W,  # weight (C,) or dummy
    B,  # bias (C,) or dummy
    MEAN_PART,  # fp32 (N*C, K) chunk means from _stats_kernel
    M2_PART,  # fp32 (N*C, K) chunk M2 from _stats_kernel
    MEAN,  # fp32 (N*C,) out, written by chunk 0
    RSTD,  # fp32 (N*C,) out, written by chunk 0
    HW,  # elements per plane
    C,  # channels
    K,  # chunks per plane
    stride_n,  # element stride between samples (of X and every operand of X's shape)
    stride_c,  # element stride between channels
    stride_hw,  # element stride between a plane's elements
    slope,  # negative slope of the LeakyReLU (0.0 = ReLU)
    eps,  # variance epsilon
    HAS_W: tl.constexpr,  # affine
    ACT: tl.constexpr,  # apply the activation
    CHUNK: tl.constexpr,  # elements per chunk
    TILE: tl.constexpr,  # elements per loop step
    BLOCK_K: tl.constexpr,  # next power of two >= K
    ACC: tl.constexpr,  # accumulation dtype: fp32, or fp64 for fp64 inputs (gradcheck)
):
    # reverse of the statistics pass's launch order: the chunks it read last are likely still in L2
    pid, k, c, base = _nchw_program(C, stride_n, stride_c, True)
    mean, rstd = _combine_stats(MEAN_PART, M2_PART, pid, HW, K, eps, CHUNK, BLOCK_K, ACC)
    if k == 0:
        tl.store(MEAN + pid, mean)
        tl.store(RSTD + pid, rstd)
    scale = rstd
    shift = -mean * rstd
    if HAS_W:
        w, b = _nchw_affine(W, B, c, HAS_W, ACC)
        scale = scale * w
        shift = shift * w + b
    start = k * CHUNK
    for i in range(0, CHUNK, TILE):
        ptr_off, mask = _nchw_tile(base, start + i + tl.arange(0, TILE), HW, stride_hw)
        x = tl.load(X + ptr_off, mask=mask, other=0.0).to(ACC)
        y = _act(x * scale + shift, slope, ACT)
        tl.store(Y + ptr_off, y.to(Y.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------------------------- backward
@_jit
def _bwd_fused_kernel(
    X,  # forward input
    DY,  # upstream gradient, same strides as X
    DX,  # out: input gradient, same strides as X
    W,  # weight (C,) or dummy
    B,  # bias (C,) or dummy
    MEAN,  # fp32 (N*C,) saved by the forward
    RSTD,  # fp32 (N*C,) saved by the forward
    S1,  # fp32 (N*C,) out: sum(dz) per plane (-> db)
    S2,  # fp32 (N*C,) out: sum(dz * xhat) per plane (-> dw)
    C,  # channels
    HW,  # elements per plane
    stride_n,  # element stride between samples (of X and every operand of X's shape)
    stride_c,  # element stride between channels
    stride_hw,  # element stride between a plane's elements
    slope,  # negative slope of the LeakyReLU
    HAS_W: tl.constexpr,  # affine
    ACT: tl.constexpr,  # the forward applied the activation
    BLOCK: tl.constexpr,  # >= HW
    ACC: tl.constexpr,  # accumulation dtype: fp32, or fp64 for fp64 inputs (gradcheck)
):
    pid, _, _, base, mean, rstd, w, b = _nchw_saved(MEAN, RSTD, W, B, C, stride_n, stride_c, HAS_W, False, ACC)
    ptr_off, mask = _nchw_tile(base, tl.arange(0, BLOCK), HW, stride_hw)
    xhat, dz = _xhat_dz(X, DY, ptr_off, mask, mean, rstd, w, b, slope, ACT, ACC)
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
    W,  # weight (C,) or dummy
    B,  # bias (C,) or dummy
    MEAN,  # fp32 (N*C,) saved by the forward
    RSTD,  # fp32 (N*C,) saved by the forward
    S1_PART,  # fp32 (N*C, K) out: sum(dz) per chunk
    S2_PART,  # fp32 (N*C, K) out: sum(dz * xhat) per chunk
    HW,  # elements per plane
    C,  # channels
    K,  # chunks per plane
    stride_n,  # element stride between samples (of X and every operand of X's shape)
    stride_c,  # element stride between channels
    stride_hw,  # element stride between a plane's elements
    slope,  # negative slope of the LeakyReLU
    HAS_W: tl.constexpr,  # affine
    ACT: tl.constexpr,  # the forward applied the activation
    CHUNK: tl.constexpr,  # elements per chunk
    TILE: tl.constexpr,  # elements per loop step
    ACC: tl.constexpr,  # accumulation dtype: fp32, or fp64 for fp64 inputs (gradcheck)
):
    pid, k, _, base, mean, rstd, w, b = _nchw_saved(MEAN, RSTD, W, B, C, stride_n, stride_c, HAS_W, False, ACC)
    acc1 = tl.zeros([TILE], dtype=ACC)
    acc2 = tl.zeros([TILE], dtype=ACC)
    start = k * CHUNK
    for i in range(0, CHUNK, TILE):
        ptr_off, mask = _nchw_tile(base, start + i + tl.arange(0, TILE), HW, stride_hw)
        xhat, dz = _xhat_dz(X, DY, ptr_off, mask, mean, rstd, w, b, slope, ACT, ACC)
        acc1 += dz
        acc2 += dz * xhat
    tl.store(S1_PART + pid * K + k, tl.sum(acc1, axis=0))
    tl.store(S2_PART + pid * K + k, tl.sum(acc2, axis=0))


@_jit
def _bwd_dx_kernel(
    X,  # forward input
    DY,  # upstream gradient, same strides as X
    DX,  # out: input gradient, same strides as X
    W,  # weight (C,) or dummy
    B,  # bias (C,) or dummy
    MEAN,  # fp32 (N*C,) saved by the forward
    RSTD,  # fp32 (N*C,) saved by the forward
    S1_PART,  # fp32 (N*C, K) sum(dz) per chunk, from _bwd_reduce_kernel
    S2_PART,  # fp32 (N*C, K) sum(dz * xhat) per chunk
    HW,  # elements per plane
    C,  # channels
    K,  # chunks per plane
    stride_n,  # element stride between samples (of X and every operand of X's shape)
    stride_c,  # element stride between channels
    stride_hw,  # element stride between a plane's elements
    slope,  # negative slope of the LeakyReLU
    HAS_W: tl.constexpr,  # affine
    ACT: tl.constexpr,  # the forward applied the activation
    CHUNK: tl.constexpr,  # elements per chunk
    TILE: tl.constexpr,  # elements per loop step
    BLOCK_K: tl.constexpr,  # next power of two >= K
    ACC: tl.constexpr,  # accumulation dtype: fp32, or fp64 for fp64 inputs (gradcheck)
):
    # reverse of the reduction pass's launch order: the chunks it read last are likely still in L2
    pid, k, _, base, mean, rstd, w, b = _nchw_saved(MEAN, RSTD, W, B, C, stride_n, stride_c, HAS_W, True, ACC)
    ks = tl.arange(0, BLOCK_K)
    m1 = tl.sum(tl.load(S1_PART + pid * K + ks, mask=ks < K, other=0.0), axis=0) / HW
    m2 = tl.sum(tl.load(S2_PART + pid * K + ks, mask=ks < K, other=0.0), axis=0) / HW
    start = k * CHUNK
    for i in range(0, CHUNK, TILE):
        ptr_off, mask = _nchw_tile(base, start + i + tl.arange(0, TILE), HW, stride_hw)
        xhat, dz = _xhat_dz(X, DY, ptr_off, mask, mean, rstd, w, b, slope, ACT, ACC)
        dx = (w * rstd) * (dz - m1 - xhat * m2)
        tl.store(DX + ptr_off, dx.to(DX.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------------------------- launchers
def forward(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    negative_slope: float,
    eps: float,
    activation: bool,
    chunk_size: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(y, mean, rstd) by the NCHW kernels; chunk_size 0 = the automatic plan."""
    x, _ = plan.layout(x)
    n, c, h, w = x.shape
    nc, hw = n * c, h * w
    y = torch.empty_like(x)
    acc, acc_tl = plan.acc_dtypes(x)
    mean = torch.empty(nc, device=x.device, dtype=acc)
    rstd = torch.empty_like(mean)
    has_w, wt, bt = plan.affine_operands(x, weight, bias)
    sn, sc, _, sw = x.stride()
    chunk, k, tile = plan.plan_nchw(nc, hw, chunk_size or None)
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


def backward(
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
    """(dx, dw, db) by the NCHW kernels; dw and db are (C,) sums in the accumulation dtype."""
    x, fmt = plan.layout(x)
    dy = dy.contiguous(memory_format=fmt)
    n, c, h, w = x.shape
    nc, hw = n * c, h * w
    dx = torch.empty_like(x)
    has_w, wt, bt = plan.affine_operands(x, weight, bias)
    sn, sc, _, sw = x.stride()
    chunk, k, tile = plan.plan_nchw(nc, hw, chunk_size or None)
    acc, acc_tl = plan.acc_dtypes(x)
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
