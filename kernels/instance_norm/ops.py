"""Custom ops, autograd wiring and the public function of the fused instance norm + activation.

Three ops (namespace `deblurgan_kernels`): in_act_fwd, in_act_bwd (its derivative is in_act_bwd2) and
in_act_bwd2 (third and higher orders, which training never needs, are torch.func vjps of
`composite_double_backward`). Each has a fake implementation, so torch.compile and torch.export trace them as
single nodes. Plain eager calls take autograd.Functions built from the same pieces (FAST_EAGER).
"""

from __future__ import annotations

import torch

from .._triton import check_runnable, device_guard
from . import double_backward, nchw, nhwc, plan

FAST_EAGER = True  # False: always go through the custom ops (for testing that path in eager mode)


# ----------------------------------------------------------------------------------------------- implementations
def _fwd_impl(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    negative_slope: float,
    eps: float,
    activation: bool,
    chunk_size: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(y, mean, rstd) through the kernels that CHANNELS_LAST_MODE picks for x's layout."""
    mode = plan.cl_mode(x)
    if mode == "tiled":
        return nhwc.forward(x, weight, bias, negative_slope, eps, activation, chunk_size)
    if mode == "copy":  # computed in NCHW, returned in the input's layout
        y, mean, rstd = nchw.forward(x.contiguous(), weight, bias, negative_slope, eps, activation, chunk_size)
        return y.contiguous(memory_format=torch.channels_last), mean, rstd
    return nchw.forward(x, weight, bias, negative_slope, eps, activation, chunk_size)


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
    args = (mean, rstd, negative_slope, activation, chunk_size)
    mode = plan.cl_mode(x)
    if mode == "tiled":
        return nhwc.backward(dy, x, weight, bias, *args)
    if mode == "copy":  # computed in NCHW, dx returned in the input's layout
        dx, dw, db = nchw.backward(dy.contiguous(), x.contiguous(), weight, bias, *args)
        return dx.contiguous(memory_format=torch.channels_last), dw, db
    return nchw.backward(dy, x, weight, bias, *args)


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
    """Gradients w.r.t. (dy, x, weight) of <ddx, dx> + <ddw, dw> + <ddb, db> (bias: zero)."""
    args = (weight, bias, mean, rstd, negative_slope, activation, chunk_size)
    if plan.cl_mode(x) in ("tiled", "copy"):
        # No NHWC double backward: channels_last goes through the NCHW kernels on contiguous copies (mean/rstd
        # mean the same in every path), results returned channels_last.
        d_dy, d_x, d_w = double_backward.launch(ddx.contiguous(), ddw, ddb, dy.contiguous(), x.contiguous(), *args)
        cl = torch.channels_last
        return d_dy.contiguous(memory_format=cl), d_x.contiguous(memory_format=cl), d_w
    return double_backward.launch(ddx, ddw, ddb, dy, x, *args)


# ----------------------------------------------------------------------------------------------- custom ops
_in_act_fwd = torch.library.custom_op("deblurgan_kernels::in_act_fwd", _fwd_impl, mutates_args=())
_in_act_bwd = torch.library.custom_op("deblurgan_kernels::in_act_bwd", _bwd_impl, mutates_args=())
_in_act_bwd2 = torch.library.custom_op("deblurgan_kernels::in_act_bwd2", _bwd2_impl, mutates_args=())


@_in_act_fwd.register_fake
def _(x, weight, bias, negative_slope, eps, activation, chunk_size):
    stats = x.new_empty(x.shape[0] * x.shape[1], dtype=plan.stats_dtype(x))
    return torch.empty_like(x), stats, torch.empty_like(stats)


@_in_act_bwd.register_fake
def _(dy, x, weight, bias, mean, rstd, negative_slope, eps, activation, chunk_size):
    ch = x.new_empty(x.shape[1], dtype=plan.stats_dtype(x))
    return torch.empty_like(x), ch, torch.empty_like(ch)


@_in_act_bwd2.register_fake
def _(ddx, ddw, ddb, dy, x, weight, bias, mean, rstd, negative_slope, eps, activation, chunk_size):
    return torch.empty_like(x), torch.empty_like(x), x.new_empty(x.shape[1], dtype=plan.stats_dtype(x))


# ----------------------------------------------------------------------------------------------- composites
def composite_backward(
    dy: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    negative_slope: float,
    eps: float,
    activation: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dx, dw, db) of instance_norm_act in differentiable torch ops (fp32; fp64 for fp64)."""
    acc = plan.stats_dtype(x)
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
    acc = plan.stats_dtype(x)
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


# ----------------------------------------------------------------------------------------------- autograd
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


def _bwd2_setup(ctx, inputs, output):
    ddx, ddw, ddb, dy, x, weight, bias, _mean, _rstd, negative_slope, eps, activation, _ = inputs
    ctx.save_for_backward(ddx, ddw, ddb, dy, x, weight, bias)
    ctx.args = (negative_slope, eps, activation)


def _bwd2_backward(ctx, g_dy, g_x, g_w):
    # Third order and beyond (not needed by training): the vjp of the composite double backward.
    order = ("ddx", "ddw", "ddb", "dy", "x", "weight", "bias")
    saved = dict(zip(order, ctx.saved_tensors, strict=True))
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
    return (*(grads.get(k) for k in order), None, None, None, None, None, None)


_in_act_fwd.register_autograd(_fwd_backward, setup_context=_fwd_setup)
_in_act_bwd.register_autograd(_bwd_backward, setup_context=_bwd_setup)
_in_act_bwd2.register_autograd(_bwd2_backward, setup_context=_bwd2_setup)


# Eager fast path: the same implementations, setup and backward functions as the custom ops, wrapped in
# autograd.Functions. A custom-op call costs tens of microseconds of host time (dispatcher, schema checks);
# torch.compile, torch.export and torch.func see the custom ops instead (their tensors are subclasses, or a
# compile / functorch transform is active).
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
    with device_guard(first):
        return fn.apply(*args) if FAST_EAGER and _plain_eager(first) else op(*args)


# ----------------------------------------------------------------------------------------------- public API
def _check_input(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None) -> None:
    if x.dim() != 4:
        raise ValueError(f"instance_norm_act expects an (N, C, H, W) tensor, got shape {tuple(x.shape)}")
    if x.dtype not in plan.SUPPORTED_DTYPES:
        raise TypeError(f"instance_norm_act supports float32, float16, bfloat16 and float64 tensors, got {x.dtype}")
    if (weight is None) != (bias is None):
        raise ValueError("instance_norm_act needs both weight and bias, or neither")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and tuple(t.shape) != (x.shape[1],):
            raise ValueError(f"{name} must have shape ({x.shape[1]},), got {tuple(t.shape)}")


def instance_norm_act(
    x: torch.Tensor,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    negative_slope: float = 0.0,
    eps: float = 1e-5,
    activation: bool = True,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """act(instance_norm(x) * weight + bias) in Triton; act = ReLU (slope 0), LeakyReLU (slope > 0) or none.

    x: (N, C, H, W), NCHW or channels_last, float32/float16/bfloat16 (float64 for gradcheck); statistics in
    fp32 (fp64 for fp64). `chunk_size`: split planes into chunks of that many elements (rounded up to a power
    of two); None picks from the shape.
    """
    _check_input(x, weight, bias)
    check_runnable(x, "instance_norm_act (kernels='triton')", "kernels='torch' or 'auto'")
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
    """The same function in plain PyTorch (fp32 math; fp64 for fp64): what the kernels are tested against.

    Unlike F.instance_norm it also accepts 1x1 planes (output act(bias), gradient zero).
    """
    acc = plan.stats_dtype(x)
    xf = x.to(acc)
    var, mean = torch.var_mean(xf, dim=(2, 3), unbiased=False, keepdim=True)
    y = (xf - mean) * torch.rsqrt(var + eps)
    if weight is not None:
        y = y * weight.to(acc).view(1, -1, 1, 1) + bias.to(acc).view(1, -1, 1, 1)
    if activation:
        y = torch.nn.functional.leaky_relu(y, negative_slope) if negative_slope else torch.relu(y)
    return y.to(x.dtype)
