"""WGAN-GP gradient penalty (Gulrajani et al. 2017) as used by DeblurGAN.

`gradient_penalty_reference` is the plain-autograd definition every faster path is tested against.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ._triton import check_runnable, device_guard, tl, triton
from ._triton import jit as _jit

GP_MODES = ("sample", "pixel")


def draw_eps(batch: int, mode: str, device: torch.device, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Interpolation weights, shape (B, 1, 1, 1): one per sample ('sample'), one per batch ('pixel')."""
    if mode == "sample":
        return torch.rand(batch, 1, 1, 1, device=device, dtype=dtype)
    if mode == "pixel":
        return torch.rand(1, 1, 1, 1, device=device, dtype=dtype).expand(batch, 1, 1, 1)
    raise ValueError(f"mode must be one of {GP_MODES} (got {mode!r})")


def _check_pair(real: torch.Tensor, fake: torch.Tensor, mode: str) -> None:
    if mode not in GP_MODES:
        raise ValueError(f"mode must be one of {GP_MODES} (got {mode!r})")
    if real.shape != fake.shape:
        raise ValueError(f"real and fake shapes differ: {tuple(real.shape)} vs {tuple(fake.shape)}")


def gradient_penalty_reference(
    critic: Callable[[torch.Tensor], torch.Tensor],
    real: torch.Tensor,
    fake: torch.Tensor,
    weight: float = 10.0,
    mode: str = "sample",
    eps: torch.Tensor | None = None,
) -> torch.Tensor:
    """weight * mean((||grad D(x_hat)|| - 1)^2), x_hat = eps*real + (1-eps)*fake (a detached leaf).

    mode 'sample': the paper's norm over C*H*W per sample.
    mode 'pixel': the authors' code, norm over channels at every pixel (`gradients.norm(2, dim=1)`).
    The result is differentiable w.r.t. the critic's parameters (double backward).
    """
    _check_pair(real, fake, mode)
    if eps is None:
        eps = draw_eps(real.shape[0], mode, real.device, real.dtype)
    x_hat = (eps * real.detach() + (1 - eps) * fake.detach()).requires_grad_(True)
    scores = critic(x_hat)
    (grad,) = torch.autograd.grad(scores.sum(), x_hat, create_graph=True)
    if mode == "sample":
        norm = grad.flatten(1).norm(2, dim=1)
    else:
        norm = grad.norm(2, dim=1)
    return weight * ((norm - 1) ** 2).mean()


# ================================================================================ Triton path
# The interpolation and the penalty reduction (and its backward) are fused kernels; the critic in between
# runs whatever it is built with (with kernels='triton' its IN layers use kernels.instance_norm, whose
# backward is itself differentiable, so the double backward runs through the fused IN kernels too).

_BLOCK = 1024  # elements per program (interpolation, sample-mode reduction, backward)
_PIX_BLOCK = 256  # pixels per program in pixel mode
_GP_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


@_jit
def _lerp_kernel(
    REAL,  # (B, L) contiguous, L = C*H*W
    FAKE,  # (B, L) contiguous
    EPS,  # (B,) interpolation weight of each sample
    OUT,  # (B, L) out: eps*real + (1-eps)*fake
    L,  # elements per sample
    BLOCK: tl.constexpr,  # elements per program
):
    b = tl.program_id(0)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < L
    base = b.to(tl.int64) * L
    e = tl.load(EPS + b).to(tl.float32)
    r = tl.load(REAL + base + offs, mask=mask, other=0.0).to(tl.float32)
    f = tl.load(FAKE + base + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(OUT + base + offs, (e * r + (1.0 - e) * f).to(OUT.dtype.element_ty), mask=mask)


@_jit
def _sumsq_kernel(
    G,  # (B, L) contiguous gradient of the critic w.r.t. x_hat
    PART,  # fp32 (B, K) out: sum of squares of each block of L
    L,  # elements per sample
    K,  # blocks per sample
    BLOCK: tl.constexpr,  # elements per program
):
    b = tl.program_id(0)
    k = tl.program_id(1)
    offs = k * BLOCK + tl.arange(0, BLOCK)
    g = tl.load(G + b.to(tl.int64) * L + offs, mask=offs < L, other=0.0).to(tl.float32)
    tl.store(PART + b * K + k, tl.sum(g * g, axis=0))


@_jit
def _pixel_norm_kernel(
    G,  # (B, C, HW) contiguous
    NORM,  # fp32 (B, HW) out: L2 norm over channels at each pixel
    PART,  # fp32 (B, K) out: sum over this block's pixels of (norm - 1)^2
    HW,  # pixels per sample
    K,  # pixel blocks per sample
    C: tl.constexpr,  # channels (3 for images): a constant, so the channel loop is unrolled
    BLOCK: tl.constexpr,  # pixels per program
):
    b = tl.program_id(0)
    k = tl.program_id(1)
    offs = k * BLOCK + tl.arange(0, BLOCK)
    mask = offs < HW
    base = b.to(tl.int64) * C * HW
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for c in tl.static_range(C):
        g = tl.load(G + base + c * HW + offs, mask=mask, other=0.0).to(tl.float32)
        acc += g * g
    norm = tl.sqrt(acc)
    tl.store(NORM + b * HW + offs, norm, mask=mask)
    d = tl.where(mask, norm - 1.0, 0.0)
    tl.store(PART + b * K + k, tl.sum(d * d, axis=0))


@_jit
def _penalty_bwd_kernel(
    G,  # (B, L) contiguous
    NORM,  # fp32 (B,) per-sample norms, or (B, HW) per-pixel norms when PIXEL
    DG,  # (B, L) out: d penalty / d G
    SCALE,  # fp32 (1,): grad_out * weight * 2 / number_of_norms
    L,  # elements per sample (C*H*W)
    HW,  # pixels per sample
    PIXEL: tl.constexpr,  # per-pixel norms ('pixel' mode)
    BLOCK: tl.constexpr,  # elements per program
):
    b = tl.program_id(0)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < L
    base = b.to(tl.int64) * L
    g = tl.load(G + base + offs, mask=mask, other=0.0).to(tl.float32)
    if PIXEL:
        norm = tl.load(NORM + b * HW + offs % HW, mask=mask, other=1.0)
    else:
        norm = tl.load(NORM + b)
    # d/dg (norm - 1)^2 = 2 (norm - 1) g / norm; zero where the norm is zero (as torch's norm backward)
    coef = tl.where(norm > 0, (norm - 1.0) / tl.where(norm > 0, norm, 1.0), 0.0)
    dg = tl.load(SCALE) * coef * g
    tl.store(DG + base + offs, dg.to(DG.dtype.element_ty), mask=mask)


@torch.library.custom_op("deblurgan_kernels::gp_interpolate", mutates_args=())
def gp_interpolate(real: torch.Tensor, fake: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """eps*real + (1-eps)*fake with eps of shape (B, 1, 1, 1), in one pass (fp32 arithmetic)."""
    real, fake = real.contiguous(), fake.contiguous()
    b = real.shape[0]
    n = real[0].numel()
    out = torch.empty_like(real)
    e = eps.reshape(b).to(torch.float32).contiguous()
    _lerp_kernel[(b, triton.cdiv(n, _BLOCK))](real, fake, e, out, n, BLOCK=_BLOCK)
    return out


@gp_interpolate.register_fake
def _(real, fake, eps):
    return torch.empty_like(real, memory_format=torch.contiguous_format)


@torch.library.custom_op("deblurgan_kernels::gp_penalty", mutates_args=())
def _gp_penalty(g: torch.Tensor, weight: float, pixel: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight * mean((norm - 1)^2) as an fp32 scalar, the fp32 norms)."""
    g = g.contiguous()
    b, c = g.shape[0], g.shape[1]
    hw = g[0, 0].numel()
    if pixel:
        k = triton.cdiv(hw, _PIX_BLOCK)
        norm = torch.empty(b, hw, device=g.device, dtype=torch.float32)
        part = torch.empty(b, k, device=g.device, dtype=torch.float32)
        _pixel_norm_kernel[(b, k)](g, norm, part, hw, k, C=c, BLOCK=_PIX_BLOCK)
        return part.sum() * (weight / (b * hw)), norm
    n = c * hw
    k = triton.cdiv(n, _BLOCK)
    part = torch.empty(b, k, device=g.device, dtype=torch.float32)
    _sumsq_kernel[(b, k)](g, part, n, k, BLOCK=_BLOCK)
    norm = part.sum(dim=1).sqrt()
    return ((norm - 1.0) ** 2).mean() * weight, norm


@_gp_penalty.register_fake
def _(g, weight, pixel):
    b = g.shape[0]
    shape = (b, g[0, 0].numel()) if pixel else (b,)
    return g.new_empty((), dtype=torch.float32), g.new_empty(shape, dtype=torch.float32)


@torch.library.custom_op("deblurgan_kernels::gp_penalty_bwd", mutates_args=())
def _gp_penalty_bwd(
    grad: torch.Tensor, g: torch.Tensor, norm: torch.Tensor, weight: float, pixel: bool
) -> torch.Tensor:
    g = g.contiguous()
    b = g.shape[0]
    n = g[0].numel()
    hw = g[0, 0].numel()
    scale = (grad.float() * (2.0 * weight / norm.numel())).reshape(1).contiguous()
    dg = torch.empty_like(g)
    _penalty_bwd_kernel[(b, triton.cdiv(n, _BLOCK))](g, norm, dg, scale, n, hw, PIXEL=pixel, BLOCK=_BLOCK)
    return dg


@_gp_penalty_bwd.register_fake
def _(grad, g, norm, weight, pixel):
    return torch.empty_like(g, memory_format=torch.contiguous_format)


def _gp_setup(ctx, inputs, output):
    g, weight, pixel = inputs
    ctx.save_for_backward(g, output[1])
    ctx.args = (weight, pixel)
    ctx.mark_non_differentiable(output[1])


def _gp_backward(ctx, grad, _dnorm):
    g, norm = ctx.saved_tensors
    return _gp_penalty_bwd(grad, g, norm, *ctx.args), None, None


_gp_penalty.register_autograd(_gp_backward, setup_context=_gp_setup)


def gradient_penalty(
    critic: Callable[[torch.Tensor], torch.Tensor],
    real: torch.Tensor,
    fake: torch.Tensor,
    weight: float = 10.0,
    mode: str = "sample",
    eps: torch.Tensor | None = None,
) -> torch.Tensor:
    """`gradient_penalty_reference` with the interpolation and the penalty reduction in Triton kernels.

    Returns an fp32 scalar, differentiable w.r.t. the critic's parameters. `eps` (B, 1, 1, 1) makes it
    reproducible; None draws one per sample ('sample') or one per batch ('pixel').
    """
    _check_pair(real, fake, mode)
    if real.dim() != 4:
        raise ValueError(f"gradient_penalty expects (B, C, H, W) images, got shape {tuple(real.shape)}")
    if real.dtype not in _GP_DTYPES or fake.dtype != real.dtype:
        raise TypeError(f"gradient_penalty expects real and fake of one float dtype, got {real.dtype}, {fake.dtype}")
    check_runnable(real, "gradient_penalty", "gradient_penalty_reference")
    b = real.shape[0]
    if eps is None:
        eps = draw_eps(b, mode, real.device, real.dtype)  # as the reference draws it
    elif tuple(eps.shape) != (b, 1, 1, 1):
        raise ValueError(f"eps must have shape ({b}, 1, 1, 1), got {tuple(eps.shape)}")
    with device_guard(real):
        x_hat = gp_interpolate(real.detach(), fake.detach(), eps.detach()).requires_grad_(True)
        scores = critic(x_hat)
        (grad,) = torch.autograd.grad(scores.sum(), x_hat, create_graph=True)
        penalty, _ = _gp_penalty(grad, float(weight), mode == "pixel")
    return penalty
