"""Double-backward kernels of the instance norm (what the WGAN-GP critic step differentiates), NCHW layout.

With m = act'(z) (1 or slope, piecewise constant), dz = dy*m, g = w*dz and the backward
dx = r*(g - mean(g) - xhat*mean(g*xhat)), the upstream gradients (ddx, ddw, ddb) of (dx, dw, db) give
  h     = r*(ddx - mean(ddx) - xhat*mean(ddx*xhat))                    (the IN backward applied to ddx)
  d_dy  = m*(w*h + ddw*xhat + ddb)
  d_w   = sum_{n,hw} dz*h,  d_b = 0
  d_x   = r*(F - mean(F) - xhat*mean(F*xhat)) - (r^2/M)*xhat*E,   with
  F     = -(r/M)*(w*dz*S_ddx + ddx*w*S_dzx) + ddw*dz
  E     = w*S_dzdd - w*S_dz*S_dd/M - w*S_dzx*S_ddx/M
where M = H*W and the per-plane sums are S_dz = sum dz, S_dzx = sum dz*xhat, S_dd = sum ddx,
S_ddx = sum ddx*xhat, S_dzdd = sum dz*ddx (mean(F) and mean(F*xhat) follow from them in closed form).
Small planes: one program each; large planes: a reduction pass (the five sums per chunk) and an apply pass.
"""

from __future__ import annotations

import torch

from .._triton import jit as _jit
from .._triton import tl, triton
from . import plan
from .nchw import _nchw_saved, _nchw_tile


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
    MEAN,  # (N*C,) saved mean
    RSTD,  # (N*C,) saved rstd
    C,  # channels
    HW,  # elements per plane
    stride_n,  # element stride between samples (of X and every operand of X's shape)
    stride_c,  # element stride between channels
    stride_hw,  # element stride between a plane's elements
    slope,  # negative slope of the LeakyReLU
    HAS_W: tl.constexpr,  # affine
    ACT: tl.constexpr,  # the forward applied the activation
    BLOCK: tl.constexpr,  # >= HW
    ACC: tl.constexpr,  # accumulation dtype
):
    pid, _, c, base, mean, rstd, w, b = _nchw_saved(MEAN, RSTD, W, B, C, stride_n, stride_c, HAS_W, False, ACC)
    ptr_off, mask = _nchw_tile(base, tl.arange(0, BLOCK), HW, stride_hw)
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
    X,  # forward input
    DY,  # first-backward upstream gradient
    DDX,  # upstream gradient of dx
    SUMS,  # out (5, N*C, K): per-chunk S_dz, S_dzx, S_dd, S_ddx, S_dzdd
    W,  # weight (C,) or dummy
    B,  # bias (C,) or dummy
    MEAN,  # (N*C,) saved mean
    RSTD,  # (N*C,) saved rstd
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
    ACC: tl.constexpr,  # accumulation dtype
):
    pid, k, _, base, mean, rstd, w, b = _nchw_saved(MEAN, RSTD, W, B, C, stride_n, stride_c, HAS_W, False, ACC)
    a_dz = tl.zeros([TILE], dtype=ACC)
    a_dzx = tl.zeros([TILE], dtype=ACC)
    a_dd = tl.zeros([TILE], dtype=ACC)
    a_ddx = tl.zeros([TILE], dtype=ACC)
    a_dzdd = tl.zeros([TILE], dtype=ACC)
    start = k * CHUNK
    for i in range(0, CHUNK, TILE):
        ptr_off, mask = _nchw_tile(base, start + i + tl.arange(0, TILE), HW, stride_hw)
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
    X,  # forward input
    DY,  # first-backward upstream gradient
    DDX,  # upstream gradient of dx
    DDY_OUT,  # out: gradient w.r.t. dy
    DX_OUT,  # out: gradient w.r.t. x
    DW_PART,  # out (N*C, K): per-chunk sum of dz*h
    SUMS,  # (5, N*C, K) from _dbwd_reduce_kernel
    W,  # weight (C,) or dummy
    B,  # bias (C,) or dummy
    DDW,  # (C,) upstream gradient of dw (zeros when unused)
    DDB,  # (C,) upstream gradient of db (zeros when unused)
    MEAN,  # (N*C,) saved mean
    RSTD,  # (N*C,) saved rstd
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
    ACC: tl.constexpr,  # accumulation dtype
):
    # reverse of the reduction pass's launch order: the chunks it read last are likely still in L2
    pid, k, c, base, mean, rstd, w, b = _nchw_saved(MEAN, RSTD, W, B, C, stride_n, stride_c, HAS_W, True, ACC)
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
        ptr_off, mask = _nchw_tile(base, start + i + tl.arange(0, TILE), HW, stride_hw)
        xhat, dz, m, ddx = _dbwd_load(X, DY, DDX, ptr_off, mask, mean, rstd, w, b, slope, ACT, ACC)
        d_dy, d_x, dzh = _dbwd_elem(xhat, dz, m, ddx, s_dz, s_dzx, s_dd, s_ddx, s_dzdd, HW, rstd, w, ddw, ddb, ACC)
        tl.store(DDY_OUT + ptr_off, d_dy.to(DDY_OUT.dtype.element_ty), mask=mask)
        tl.store(DX_OUT + ptr_off, d_x.to(DX_OUT.dtype.element_ty), mask=mask)
        acc += tl.where(mask, dzh, 0.0)
    tl.store(DW_PART + pid * K + k, tl.sum(acc, axis=0))


def launch(
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
    activation: bool,
    chunk_size: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(d_dy, d_x, d_w) by the kernels above; x NCHW, or channels_last read with a stride of C."""
    x, fmt = plan.layout(x)
    dy = dy.contiguous(memory_format=fmt)
    ddx = ddx.contiguous(memory_format=fmt)
    n, c, h, w = x.shape
    nc, hw = n * c, h * w
    acc, acc_tl = plan.acc_dtypes(x)
    has_w, wt, bt = plan.affine_operands(x, weight, bias)
    ddw = torch.zeros(c, device=x.device, dtype=acc) if ddw is None else ddw.to(acc).contiguous()
    ddb = torch.zeros(c, device=x.device, dtype=acc) if ddb is None else ddb.to(acc).contiguous()
    d_dy = torch.empty_like(x)
    d_x = torch.empty_like(x)
    sn, sc, _, sw = x.stride()
    chunk, k, tile = plan.plan_nchw(nc, hw, chunk_size or None)
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
