"""Tiled channels_last (NHWC) kernels of the instance norm: forward and backward.

A channels_last (N, C, H, W) tensor is an (N, H*W, C) array with C contiguous: element (n, p, c) lies at
n*HW*C + p*C + c. Programs run over a (N * cdiv(C, BLOCK_C), chunks) grid; each owns one sample, BLOCK_C channels
and CHUNK pixels, and loads [TILE_P, BLOCK_C] tiles whose rows are BLOCK_C consecutive elements (coalesced),
reducing over the pixel axis into per-channel partials. The partials use the NCHW path's (N*C, K) layout, so
mean and rstd per (n, c) mean the same in both.
"""

from __future__ import annotations

import torch

from .._triton import jit as _jit
from .._triton import tl, triton
from . import plan
from .nchw import _act, _combine_stats, _xhat_dz


# ----------------------------------------------------------------------------------------------- NHWC prologue
@_jit
def _nhwc_program(C, BLOCK_C: tl.constexpr, REVERSE: tl.constexpr):
    """(n, chunk k, channel offsets, channel mask) of this program in a (N * cdiv(C, BLOCK_C), chunks) grid.

    REVERSE walks the grid backwards: a pass that re-reads what the previous pass read last finds it in L2.
    """
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
def _nhwc_saved(MEAN, RSTD, W, B, n, cs, cmask, C, HAS_W: tl.constexpr, BLOCK_C: tl.constexpr, ACC: tl.constexpr):
    """(mean, rstd, w, b) of the channels cs of sample n as [1, BLOCK_C] rows: the backward kernels' prologue."""
    mean = tl.load(MEAN + n * C + cs, mask=cmask, other=0.0)
    rstd = tl.load(RSTD + n * C + cs, mask=cmask, other=0.0)
    w, b = _nhwc_affine(W, B, cs, cmask, HAS_W, BLOCK_C, ACC)
    return mean[None, :], rstd[None, :], w[None, :], b[None, :]


# ----------------------------------------------------------------------------------------------- forward
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
    mean, rstd, w, b = _nhwc_saved(MEAN, RSTD, W, B, n, cs, cmask, C, HAS_W, BLOCK_C, ACC)
    scale = rstd * w
    # (x - mean) * scale + b rather than x * scale + shift: no cancellation between x * scale and the shift when
    # the mean is large compared with the spread
    start = k * CHUNK
    for i in range(0, CHUNK, TILE_P):
        off, mask = _nhwc_tile(n, cs, cmask, start + i + tl.arange(0, TILE_P), HW, C)
        x = tl.load(X + off, mask=mask, other=0.0).to(ACC)
        y = _act((x - mean) * scale + b, slope, ACT)
        tl.store(Y + off, y.to(Y.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------------------------- backward
@_jit
def _nhwc_bwd_reduce_kernel(
    X,  # forward input, channels_last
    DY,  # upstream gradient, channels_last
    W,  # weight (C,) or dummy
    B,  # bias (C,) or dummy
    MEAN,  # (N*C,) saved by the forward
    RSTD,  # (N*C,) saved by the forward
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
    mean, rstd, w, b = _nhwc_saved(MEAN, RSTD, W, B, n, cs, cmask, C, HAS_W, BLOCK_C, ACC)
    acc1 = tl.zeros([TILE_P, BLOCK_C], dtype=ACC)
    acc2 = tl.zeros([TILE_P, BLOCK_C], dtype=ACC)
    start = k * CHUNK
    for i in range(0, CHUNK, TILE_P):
        off, mask = _nhwc_tile(n, cs, cmask, start + i + tl.arange(0, TILE_P), HW, C)
        xhat, dz = _xhat_dz(X, DY, off, mask, mean, rstd, w, b, slope, ACT, ACC)
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
    RSTD,  # (N*C,) saved by the forward
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
    mean, rstd, w, b = _nhwc_saved(MEAN, RSTD, W, B, n, cs, cmask, C, HAS_W, BLOCK_C, ACC)
    plane = n * C + cs
    m1 = (tl.load(S1 + plane, mask=cmask, other=0.0) / HW)[None, :]
    m2 = (tl.load(S2 + plane, mask=cmask, other=0.0) / HW)[None, :]
    scale = w * rstd
    start = k * CHUNK
    for i in range(0, CHUNK, TILE_P):
        off, mask = _nhwc_tile(n, cs, cmask, start + i + tl.arange(0, TILE_P), HW, C)
        xhat, dz = _xhat_dz(X, DY, off, mask, mean, rstd, w, b, slope, ACT, ACC)
        dx = scale * (dz - m1 - xhat * m2)
        tl.store(DX + off, dx.to(DX.dtype.element_ty), mask=mask)


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
    """(y, mean, rstd) of a channels_last x: statistics (+ combine when K > 1), then normalize."""
    n, c, h, w = x.shape
    nc, hw = n * c, h * w
    y = torch.empty_like(x)  # channels_last, dense: element (n, p, c) at n*HW*C + p*C + c, as in x
    acc, acc_tl = plan.acc_dtypes(x)
    mean = torch.empty(nc, device=x.device, dtype=acc)
    rstd = torch.empty_like(mean)
    has_w, wt, bt = plan.affine_operands(x, weight, bias)
    block_c, tile_p, chunk, k = plan.plan_nhwc(n, c, hw, chunk_size or None)
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
    """(dx, dw, db) of a channels_last x: per-chunk sums, then dx."""
    dy = dy.contiguous(memory_format=torch.channels_last)
    n, c, h, w = x.shape
    nc, hw = n * c, h * w
    dx = torch.empty_like(x)
    acc, acc_tl = plan.acc_dtypes(x)
    has_w, wt, bt = plan.affine_operands(x, weight, bias)
    block_c, tile_p, chunk, k = plan.plan_nhwc(n, c, hw, chunk_size or None)
    grid = (n * triton.cdiv(c, block_c), k)
    common = dict(HAS_W=has_w, ACT=activation, CHUNK=chunk, TILE_P=tile_p, BLOCK_C=block_c, ACC=acc_tl, num_warps=4)
    part = torch.empty(2, nc, k, device=x.device, dtype=acc)
    _nhwc_bwd_reduce_kernel[grid](x, dy, wt, bt, mean, rstd, part[0], part[1], hw, c, k, negative_slope, **common)
    sums = part.view(2, nc) if k == 1 else part.sum(dim=2)  # (sum dz, sum dz*xhat) per plane
    _nhwc_bwd_dx_kernel[grid](x, dy, dx, wt, bt, mean, rstd, sums[0], sums[1], hw, c, negative_slope, **common)
    db = sums[0].view(n, c).sum(dim=0)  # two separate tensors: custom-op outputs must not alias each other
    dw = sums[1].view(n, c).sum(dim=0)
    return dx, dw, db
