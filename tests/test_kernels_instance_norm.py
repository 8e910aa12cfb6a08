"""kernels.instance_norm vs the plain-PyTorch reference: output, dx, dw, db and second derivatives.

Without CUDA the kernels run in the Triton CPU interpreter (tests/conftest.py sets TRITON_INTERPRET=1 before
triton is imported), so the shapes here are tiny; full-size versions are marked `gpu`.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported (conftest does it too)

import pytest  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from torch import nn  # noqa: E402

pytest.importorskip("triton")

from kernels.instance_norm import (  # noqa: E402
    InstanceNormAct,
    composite_backward,
    double_backward,
    instance_norm_act,
    instance_norm_act_reference,
    nchw,
    nhwc,
    ops,
    plan,
)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(params=["fast-eager", "custom-op"])
def dispatch(request, monkeypatch):
    """Run a test through both call paths: autograd.Functions (eager) and the torch.library custom ops."""
    monkeypatch.setattr(ops, "FAST_EAGER", request.param == "fast-eager")
    return request.param


# (shape, chunk_size): chunk_size None = the automatic plan
SHAPES = [
    ((2, 3, 5, 7), None),  # odd H and W, batch > 1: one program per plane (fused path)
    ((1, 2, 1, 1), None),  # 1x1 planes: variance 0, y = act(bias), dx = 0
    ((1, 2, 70, 70), 512),  # a 4900-element plane forced over 10 chunks: partial stats + combine
    ((2, 3, 33, 17), 128),  # odd plane over 5 chunks with a partial last chunk, batch > 1
    ((1, 1, 1, 4097), None),  # just above FUSED_MAX: the automatic chunked plan
]
# (dtype, atol, rtol) for y and dx; dw, db are fp32 sums and use the same bounds scaled by the plane size
DTYPES = [
    (torch.float32, 1e-5, 1e-4),
    (torch.float16, 1e-2, 1e-2),
    (torch.bfloat16, 6e-2, 2e-2),
]
# (affine, negative_slope, activation): the generator's IN+ReLU and bare IN, the critic's IN+LeakyReLU(0.2)
CONFIGS = [(False, 0.0, True), (False, 0.0, False), (True, 0.2, True)]


def _inputs(shape, dtype, affine, seed=0):
    g = torch.Generator().manual_seed(seed)
    c = shape[1]
    x = (torch.randn(shape, generator=g) * 2 + 0.5).to(DEVICE, dtype).requires_grad_(True)
    w = (torch.rand(c, generator=g) + 0.5).to(DEVICE).requires_grad_(True) if affine else None
    b = torch.randn(c, generator=g).to(DEVICE).requires_grad_(True) if affine else None
    dy = torch.randn(shape, generator=g).to(DEVICE, dtype)
    return x, w, b, dy


def _check_against_reference(shape, chunk, dtype, atol, rtol, affine, slope, act, memory_format=None):
    """Output, dx, dw, db of the kernels vs the fp32 reference on the same rounded input; returns (y, dx)."""
    x, w, b, dy = _inputs(shape, dtype, affine)
    if memory_format is not None:
        x = x.detach().to(memory_format=memory_format).requires_grad_(True)
    y = instance_norm_act(x, w, b, slope, 1e-5, act, chunk_size=chunk)
    assert y.dtype == dtype and y.shape == x.shape
    # the reference sees the same (rounded) input, computed in fp32
    xr = x.detach().float().requires_grad_(True)
    wr = w.detach().clone().requires_grad_(True) if affine else None
    br = b.detach().clone().requires_grad_(True) if affine else None
    yr = instance_norm_act_reference(xr, wr, br, slope, 1e-5, act)
    torch.testing.assert_close(y.float(), yr, atol=atol, rtol=rtol)
    grads = torch.autograd.grad(y, [x] + ([w, b] if affine else []), dy)
    grads_r = torch.autograd.grad(yr, [xr] + ([wr, br] if affine else []), dy.float())
    assert grads[0].dtype == dtype
    torch.testing.assert_close(grads[0].float(), grads_r[0], atol=atol, rtol=rtol)
    hw = shape[2] * shape[3] * shape[0]
    for g, gr in zip(grads[1:], grads_r[1:], strict=True):
        torch.testing.assert_close(g, gr, atol=atol * hw**0.5, rtol=rtol)
    return y, grads[0]


@pytest.mark.parametrize("affine,slope,act", CONFIGS)
@pytest.mark.parametrize("dtype,atol,rtol", DTYPES, ids=["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("shape,chunk", SHAPES, ids=[f"{s}-chunk{c}" for s, c in SHAPES])
def test_forward_backward_matches_reference(shape, chunk, dtype, atol, rtol, affine, slope, act):
    _check_against_reference(shape, chunk, dtype, atol, rtol, affine, slope, act)


@settings(max_examples=20, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(1, 2),
    c=st.integers(1, 3),
    h=st.integers(1, 13),
    w=st.integers(1, 17),
    chunk=st.sampled_from([None, 4, 16, 64]),
    affine=st.booleans(),
    slope=st.sampled_from([0.0, 0.2]),
)
def test_random_shapes_and_chunkings(n, c, h, w, chunk, affine, slope):
    """Any plane size with any chunking gives the reference's y, dx, dw, db."""
    _check_against_reference((n, c, h, w), chunk, torch.float32, 1e-5, 1e-4, affine, slope, True)


# ----------------------------------------------------------------------------------------------- channels_last
# plan.CHANNELS_LAST_MODE: "tiled" (native NHWC kernels, the default), "copy" (NCHW kernels on an NCHW copy),
# "strided" (NCHW kernels reading in place with a stride of C)
CL_MODES = ["tiled", "copy", "strided"]
# (shape, chunk_size) of channels_last inputs; the tiled kernels use BLOCK_C = min(next_pow2(C), 64) channels
CL_SHAPES = [
    ((2, 3, 6, 5), None),  # C=3 in a 4-wide channel block (one masked column), batch > 1, one chunk (K = 1)
    ((1, 5, 9, 7), 8),  # C=5 in an 8-wide block, 63-pixel planes forced over 8 chunks (the last one 7 pixels)
    ((2, 70, 3, 5), None),  # C=70: two 64-channel blocks, the second holding 6 channels; batch > 1
    ((2, 3, 11, 1), 4),  # 11x1 planes over 3 chunks (the last partial), batch > 1
]
TILED_KERNELS = ("_nhwc_stats_kernel", "_combine_kernel", "_nhwc_norm_act_kernel", "_nhwc_bwd_reduce_kernel",
                 "_nhwc_bwd_dx_kernel")  # fmt: skip
NCHW_KERNELS = ("_fwd_fused_kernel", "_stats_kernel", "_norm_act_kernel", "_bwd_fused_kernel", "_bwd_reduce_kernel",
                "_bwd_dx_kernel", "_dbwd_fused_kernel", "_dbwd_reduce_kernel", "_dbwd_apply_kernel")  # fmt: skip


class _Spy:
    """Stands in for a Triton kernel: records the layout of its first tensor argument at every launch."""

    def __init__(self, kernel):
        self.kernel, self.layouts = kernel, []

    def __getitem__(self, grid):
        launch = self.kernel[grid]

        def run(*args, **kwargs):
            self.layouts.append("nchw" if args[0].is_contiguous() else "channels_last")
            return launch(*args, **kwargs)

        return run


def _home(name):
    """The module that defines (and launches) the kernel `name`."""
    return nhwc if name in TILED_KERNELS else double_backward if name.startswith("_dbwd") else nchw


@pytest.fixture
def launches(monkeypatch):
    """{kernel name: [layout of its X at each launch]} for every instance-norm kernel launched in the test."""
    spies = {name: _Spy(getattr(_home(name), name)) for name in TILED_KERNELS + NCHW_KERNELS}
    for name, spy in spies.items():
        monkeypatch.setattr(_home(name), name, spy)
    return {name: spy.layouts for name, spy in spies.items()}


def _assert_path(launches, mode, chunks):
    """The kernels of `mode` ran (forward and backward once each), and no others."""
    nchw = [layout for name in NCHW_KERNELS for layout in launches[name]]
    if mode == "tiled":
        for name in ("_nhwc_stats_kernel", "_nhwc_norm_act_kernel", "_nhwc_bwd_reduce_kernel", "_nhwc_bwd_dx_kernel"):
            assert launches[name] == ["channels_last"], name
        assert len(launches["_combine_kernel"]) == (chunks > 1)  # K == 1: the stats kernel writes mean/rstd
        assert nchw == []
    else:
        assert all(launches[name] == [] for name in TILED_KERNELS)
        assert len(nchw) >= 2 and set(nchw) == {"nchw" if mode == "copy" else "channels_last"}


@pytest.mark.parametrize("affine,slope,act", CONFIGS)
@pytest.mark.parametrize("shape,chunk", CL_SHAPES, ids=[f"{s}-chunk{c}" for s, c in CL_SHAPES])
@pytest.mark.parametrize("mode", CL_MODES)
def test_channels_last_matches_reference(mode, shape, chunk, affine, slope, act, launches, monkeypatch):
    """Every channels_last setting gives the reference's y, dx, dw, db, keeps the layout and runs its own kernels."""
    monkeypatch.setattr(plan, "CHANNELS_LAST_MODE", mode)
    y, dx = _check_against_reference(shape, chunk, torch.float32, 1e-5, 1e-4, affine, slope, act, torch.channels_last)
    assert y.is_contiguous(memory_format=torch.channels_last) and dx.is_contiguous(memory_format=torch.channels_last)
    n, c, h, w = shape
    _assert_path(launches, mode, plan.plan_nhwc(n, c, h * w, chunk)[3])


@pytest.mark.parametrize("dtype,atol,rtol", DTYPES[1:], ids=["fp16", "bf16"])
@pytest.mark.parametrize("shape,chunk", CL_SHAPES[1:3], ids=[f"{s}-chunk{c}" for s, c in CL_SHAPES[1:3]])
def test_channels_last_tiled_low_precision(shape, chunk, dtype, atol, rtol, launches):
    """fp16 / bf16 through the tiled kernels (the default setting): forced chunks, two channel blocks."""
    y, dx = _check_against_reference(shape, chunk, dtype, atol, rtol, True, 0.2, True, torch.channels_last)
    assert y.is_contiguous(memory_format=torch.channels_last) and dx.is_contiguous(memory_format=torch.channels_last)
    n, c, h, w = shape
    _assert_path(launches, "tiled", plan.plan_nhwc(n, c, h * w, chunk)[3])


def test_channels_last_1x1_planes(launches):
    """1x1 planes are NCHW- and channels_last-contiguous at once (the same memory): the public call takes the
    NCHW kernels, and the tiled kernels are checked on such planes directly (y = act(b), dx = 0, dw = 0)."""
    shape = (2, 3, 1, 1)
    _check_against_reference(shape, None, torch.float32, 1e-5, 1e-4, True, 0.2, True, torch.channels_last)
    assert all(launches[name] == [] for name in TILED_KERNELS)
    x, w, b, dy = _inputs(shape, torch.float32, True, seed=5)
    x = x.detach().to(memory_format=torch.channels_last).requires_grad_(True)
    y, mean, rstd = nhwc.forward(x.detach(), w.detach(), b.detach(), 0.2, 1e-5, True, 0)
    dx, dw, db = nhwc.backward(dy, x.detach(), w.detach(), b.detach(), mean, rstd, 0.2, True, 0)
    assert launches["_nhwc_stats_kernel"] and launches["_nhwc_bwd_dx_kernel"]
    yr = instance_norm_act_reference(x, w, b, 0.2)
    torch.testing.assert_close(y, yr, atol=1e-5, rtol=1e-4)
    for g, gr in zip((dx, dw, db), torch.autograd.grad(yr, [x, w, b], dy), strict=True):
        torch.testing.assert_close(g, gr, atol=1e-5, rtol=1e-4)


# (mode, fast_eager): both call paths for the default; copy / strided (existing NCHW kernels) through one
@pytest.mark.parametrize("mode,fast_eager", [("tiled", True), ("tiled", False), ("copy", True), ("strided", True)])
def test_channels_last_gradgradcheck_float64(mode, fast_eager, launches, monkeypatch):
    """float64 gradcheck + gradgradcheck on a channels_last input (C=3 ragged block, 3 chunks, affine, LeakyReLU).
    tiled: first backward on the tiled kernels, double backward on the NCHW kernels over contiguous copies."""
    monkeypatch.setattr(plan, "CHANNELS_LAST_MODE", mode)
    monkeypatch.setattr(ops, "FAST_EAGER", fast_eager)
    x, w, b, _ = _inputs((1, 3, 3, 4), torch.float64, True, seed=6)
    x = x.detach().to(memory_format=torch.channels_last).requires_grad_(True)
    w = w.detach().double().requires_grad_(True)
    b = b.detach().double().requires_grad_(True)
    fn = lambda x_, w_, b_: instance_norm_act(x_, w_, b_, 0.2, 1e-5, True, 4)
    assert torch.autograd.gradcheck(fn, (x, w, b), atol=1e-6, rtol=1e-4, fast_mode=True)
    assert torch.autograd.gradgradcheck(fn, (x, w, b), atol=1e-6, rtol=1e-4, fast_mode=True)
    tiled = launches["_nhwc_stats_kernel"] and launches["_nhwc_bwd_dx_kernel"]
    assert bool(tiled) == (mode == "tiled")
    assert set(launches["_dbwd_apply_kernel"]) == {"channels_last" if mode == "strided" else "nchw"}


def test_channels_last_mode_is_checked(monkeypatch):
    monkeypatch.setattr(plan, "CHANNELS_LAST_MODE", "nhwc")
    with pytest.raises(ValueError, match="CHANNELS_LAST_MODE"):
        instance_norm_act(torch.randn(1, 3, 4, 4, device=DEVICE).to(memory_format=torch.channels_last))


def test_launch_plan_channels_last():
    """Tiled plan: 720p with C=64 spreads over hundreds of chunks; small planes get one; bounds respected."""
    block_c, tile_p, chunk, k = plan.plan_nhwc(1, 64, 720 * 1280, None)
    assert block_c == 64 and k >= 512 and chunk % tile_p == 0 and chunk * k >= 720 * 1280
    assert chunk * block_c <= plan.MAX_CHUNK and tile_p * block_c == plan.TILE
    assert plan.plan_nhwc(2, 3, 30, None)[3] == 1  # (2, 3, 6, 5): one chunk, mean/rstd from the stats kernel
    assert plan.plan_nhwc(1, 5, 63, 8) == (8, 8, 8, 8)  # a forced chunk size is honoured, tiles no larger
    assert plan.plan_nhwc(1, 1, 16384 * 16384, None)[3] <= plan.MAX_CHUNKS
    with pytest.raises(ValueError, match="chunk_size"):
        plan.plan_nhwc(1, 3, 30, 0)


# The interpreter does not type-check like the compiler: compile the tiled kernels for sm_90 (Triton ships ptxas),
# with the 16-divisibility Triton gives C = 64 and aligned pointers at launch. No register spills, and the tile
# loads and stores must come out as 128-bit vector accesses (coalesced rows of 8 fp16 per thread).
_NHWC_COMPILE_SCRIPT = """
import triton.language as tl
from kernels.instance_norm import nhwc
from sm90 import compile_sm90

tiles = dict(CHUNK=1024, TILE_P=16, BLOCK_C=64, ACC=tl.float32)
cases = [
    (nhwc._nhwc_stats_kernel, tiles | dict(FINAL=False)),
    (nhwc._nhwc_stats_kernel, tiles | dict(FINAL=True, ACC=tl.float64)),
    (nhwc._combine_kernel, dict(CHUNK=1024, BLOCK_K=1024, ACC=tl.float32)),
    (nhwc._nhwc_norm_act_kernel, tiles | dict(HAS_W=True, ACT=True)),
    (nhwc._nhwc_bwd_reduce_kernel, tiles | dict(HAS_W=True, ACT=True)),
    (nhwc._nhwc_bwd_dx_kernel, tiles | dict(HAS_W=False, ACT=True)),
]
for fn, consts in cases:
    ptx = compile_sm90(fn, consts, aligned=True)
    if "X" in fn.arg_names:
        assert "ld.global.v4" in ptx, fn.__name__ + " tile loads are not vectorised"
    if "Y" in fn.arg_names or "DX" in fn.arg_names:
        assert "st.global.v4" in ptx, fn.__name__ + " tile stores are not vectorised"
    print("ok", fn.__name__)
"""


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU the other tests compile and run the kernels")
def test_tiled_kernels_compile_for_sm90_vectorised():
    from sm90 import run_script

    assert run_script(_NHWC_COMPILE_SCRIPT).count("ok ") == 6


def test_matches_torch_modules():
    """Same numbers as nn.InstanceNorm2d + nn.LeakyReLU, the layers it replaces."""
    x = torch.randn(2, 4, 9, 6, device=DEVICE) * 3 - 1
    ref = nn.Sequential(nn.InstanceNorm2d(4), nn.LeakyReLU(0.2))
    torch.testing.assert_close(InstanceNormAct(4, 0.2)(x), ref(x), atol=1e-5, rtol=1e-4)


def test_large_mean_is_stable():
    """A large offset must not wreck the variance (no E[x^2] - E[x]^2 cancellation), also across chunks."""
    # fp32 spacing at 1e4 is ~1e-3: atol 2e-3 allows about two ulps of error in the fp32 mean (seeded: observed
    # errors over random draws ranged 2.5e-4 .. 1.6e-3)
    g = torch.Generator().manual_seed(7)
    x = (torch.randn(1, 2, 40, 40, generator=g, dtype=torch.float64).float() + 1e4).to(DEVICE)
    ref = instance_norm_act_reference(x.double(), activation=False).float()
    for chunk in (None, 256):
        for fmt in (torch.contiguous_format, torch.channels_last):  # NCHW kernels / tiled NHWC kernels
            y = instance_norm_act(x.contiguous(memory_format=fmt), activation=False, chunk_size=chunk)
            torch.testing.assert_close(y, ref, atol=2e-3, rtol=1e-3)


# (shape, chunk_size, memory format, affine): each place where eps enters rstd: the fused NCHW kernel, the chunk
# merge of the NCHW path, the tiled statistics kernel (one chunk) and the tiled merge kernel (several chunks)
EPS_CASES = [
    ((2, 3, 5, 7), None, torch.contiguous_format, False),
    ((1, 2, 9, 7), 16, torch.contiguous_format, True),
    ((2, 3, 6, 5), None, torch.channels_last, True),
    ((1, 5, 9, 7), 8, torch.channels_last, False),
]


@pytest.mark.parametrize("shape,chunk,fmt,affine", EPS_CASES, ids=["fused", "chunked", "tiled", "tiled-chunked"])
def test_variance_near_eps_matches_torch(shape, chunk, fmt, affine):
    """Planes of variance ~1e-5 (= eps) against F.instance_norm, forward and backward: eps sits inside the square
    root. (At variance ~4, as elsewhere in this file, eps outside it changes results by ~5e-6 only.)"""
    g = torch.Generator().manual_seed(9)
    x = (torch.randn(shape, generator=g) * 3e-3 + 0.1).to(DEVICE).contiguous(memory_format=fmt).requires_grad_(True)
    dy = torch.randn(shape, generator=g).to(DEVICE)
    c = shape[1]
    w = (torch.rand(c, generator=g) + 0.5).to(DEVICE).requires_grad_(True) if affine else None
    b = torch.randn(c, generator=g).to(DEVICE).requires_grad_(True) if affine else None
    y = instance_norm_act(x, w, b, 0.2, 1e-5, True, chunk)
    xr = x.detach().clone().requires_grad_(True)
    wr = w.detach().clone().requires_grad_(True) if affine else None
    br = b.detach().clone().requires_grad_(True) if affine else None
    yr = nn.functional.leaky_relu(nn.functional.instance_norm(xr, weight=wr, bias=br, eps=1e-5), 0.2)
    torch.testing.assert_close(y, yr, atol=1e-5, rtol=1e-4)
    grads = torch.autograd.grad(y, [x] + ([w, b] if affine else []), dy)
    grads_r = torch.autograd.grad(yr, [xr] + ([wr, br] if affine else []), dy)
    scale = grads_r[0].abs().max().item()  # dx ~ rstd ~ 200 here
    torch.testing.assert_close(grads[0], grads_r[0], atol=1e-5 * scale, rtol=1e-4)
    for a, r in zip(grads[1:], grads_r[1:], strict=True):
        torch.testing.assert_close(a, r, atol=1e-4, rtol=1e-4)


# gradgradcheck cases in float64: (shape, chunk_size, affine, slope, activation, fast_mode)
GRADGRAD_CASES = [
    ((1, 2, 3, 4), None, False, 0.0, True, False),  # fused path, ReLU
    ((2, 1, 3, 3), None, True, 0.2, True, False),  # fused path, affine, LeakyReLU
    # chunked path (4 chunks, the last one partial); fast mode (random projections) keeps the interpreter quick
    ((1, 1, 3, 5), 4, True, 0.2, True, True),
    ((1, 1, 3, 5), 4, False, 0.0, False, True),
]


@pytest.mark.parametrize("shape,chunk,affine,slope,act,fast", GRADGRAD_CASES)
def test_gradcheck_and_gradgradcheck_float64(shape, chunk, affine, slope, act, fast, dispatch):
    x, w, b, _ = _inputs(shape, torch.float64, affine, seed=1)
    if affine:
        w = w.detach().double().requires_grad_(True)
        b = b.detach().double().requires_grad_(True)
        fn = lambda x_, w_, b_: instance_norm_act(x_, w_, b_, slope, 1e-5, act, chunk)
        args = (x, w, b)
    else:
        fn = lambda x_: instance_norm_act(x_, None, None, slope, 1e-5, act, chunk)
        args = (x,)
    assert torch.autograd.gradcheck(fn, args, atol=1e-6, rtol=1e-4, fast_mode=fast)
    assert torch.autograd.gradgradcheck(fn, args, atol=1e-6, rtol=1e-4, fast_mode=fast)


@pytest.mark.parametrize("chunk", [None, 16])
def test_second_derivatives_match_reference_fp32(chunk, dispatch):
    """d/d(x, dy, w, b) of <dx, v> and of <dw, u>: what the WGAN-GP double backward needs."""
    shape = (2, 3, 7, 9)
    x, w, b, dy = _inputs(shape, torch.float32, True, seed=2)
    dy.requires_grad_(True)
    v = torch.randn(shape, device=DEVICE)
    u = torch.randn(shape[1], device=DEVICE)

    def second(f):
        y = f(x, w, b, 0.2, 1e-5, True)
        gx, gw, _ = torch.autograd.grad(y, [x, w, b], dy, create_graph=True)
        return torch.autograd.grad((gx * v).sum() + (gw * u).sum(), [x, dy, w, b], materialize_grads=True)

    fused = second(lambda *a: instance_norm_act(*a, chunk_size=chunk))
    ref = second(instance_norm_act_reference)
    for a, r in zip(fused, ref, strict=True):
        torch.testing.assert_close(a, r, atol=2e-4, rtol=1e-3)


@pytest.mark.parametrize("affine", [False, True])
def test_third_order_matches_reference_float64(affine, dispatch):
    """Beyond the double backward (which is Triton) the derivatives come from composite ops: still exact."""
    x, w, b, dy = _inputs((2, 3, 4, 5), torch.float64, affine, seed=4)
    dy.requires_grad_(True)
    if affine:
        w, b = w.detach().double().requires_grad_(True), b.detach().double().requires_grad_(True)
    v, u = torch.randn_like(x), torch.randn_like(x)

    def third(f):
        (gx,) = torch.autograd.grad(f(x, w, b, 0.2), x, dy, create_graph=True)
        g2 = torch.autograd.grad((gx * v).sum(), [x, dy], create_graph=True)
        return torch.autograd.grad(sum((g * u).sum() for g in g2), [x, dy] + ([w, b] if affine else []))

    for a, r in zip(third(instance_norm_act), third(instance_norm_act_reference), strict=True):
        torch.testing.assert_close(a, r, atol=1e-10, rtol=1e-8)


def test_composite_backward_is_the_backward():
    x, w, b, dy = _inputs((2, 3, 4, 5), torch.float32, True, seed=3)
    yr = instance_norm_act_reference(x, w, b, 0.2)
    expected = torch.autograd.grad(yr, [x, w, b], dy)
    for a, r in zip(composite_backward(dy, x, w, b, 0.2, 1e-5, True), expected, strict=True):
        torch.testing.assert_close(a, r, atol=1e-5, rtol=1e-4)


def test_dispatch_paths(dispatch):
    """Plain eager calls take the low-overhead autograd.Function path; otherwise the custom op."""
    y = instance_norm_act(torch.randn(1, 2, 3, 3, device=DEVICE, requires_grad=True))
    expected = "_InActFwdBackward" if dispatch == "fast-eager" else "in_act_fwd"
    assert expected in type(y.grad_fn).__name__ or expected in y.grad_fn.name()


def test_launch_plan():
    """N=1, C=64 at 720p is spread over hundreds of programs; small planes take the fused path; chunks bounded."""
    chunk, k, tile = plan.plan_nchw(64, 720 * 1280, None)
    assert 64 * k >= 512 and chunk % tile == 0 and chunk * k >= 720 * 1280
    assert plan.plan_nchw(16 * 256, 64 * 64, None)[0] == 0  # 64x64 planes: one program each
    assert plan.plan_nchw(1, 16384 * 16384, None)[1] <= plan.MAX_CHUNKS
    assert plan.plan_nchw(2, 4900, 512) == (512, 10, 512)  # a forced chunk size is honoured
    with pytest.raises(ValueError, match="chunk_size"):
        plan.plan_nchw(2, 4900, 0)


def test_module_state_dict_matches_instance_norm2d():
    assert InstanceNormAct(8).state_dict().keys() == nn.InstanceNorm2d(8).state_dict().keys() == set()
    assert list(InstanceNormAct(8).parameters()) == []
    ref = nn.InstanceNorm2d(8, affine=True)
    nn.init.normal_(ref.weight)
    nn.init.normal_(ref.bias)
    mod = InstanceNormAct(8, affine=True, activation=False)
    mod.load_state_dict(ref.state_dict())  # strict: same keys and shapes
    x = torch.randn(2, 8, 5, 5, device=DEVICE)
    torch.testing.assert_close(mod.to(DEVICE)(x), ref.to(DEVICE)(x), atol=1e-5, rtol=1e-4)


def test_compile_traces_without_graph_breaks():
    """The ops are torch.library custom ops with fake kernels: fullgraph tracing (fwd + bwd) must succeed."""
    x = torch.randn(2, 3, 5, 6, device=DEVICE, requires_grad=True)
    fn = lambda t: instance_norm_act(t * 2.0, negative_slope=0.2).sum()
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    out = compiled(x)
    (g,) = torch.autograd.grad(out, x)
    out_r = instance_norm_act_reference(x * 2.0, negative_slope=0.2).sum()
    (g_r,) = torch.autograd.grad(out_r, x)
    torch.testing.assert_close(out, out_r, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(g, g_r, atol=1e-5, rtol=1e-4)


def test_compile_traces_channels_last_tiled(launches):
    """Traced (fake) and real outputs agree on the layout: channels_last in, channels_last y and dx out."""
    x = torch.randn(2, 3, 5, 6, device=DEVICE).to(memory_format=torch.channels_last).requires_grad_(True)
    fn = lambda t: instance_norm_act(t * 2.0, negative_slope=0.2)
    y = torch.compile(fn, fullgraph=True, backend="aot_eager")(x)
    (g,) = torch.autograd.grad(y, x, torch.ones_like(y))
    assert y.is_contiguous(memory_format=torch.channels_last) and g.is_contiguous(memory_format=torch.channels_last)
    assert launches["_nhwc_norm_act_kernel"] and launches["_nhwc_bwd_dx_kernel"]
    yr = instance_norm_act_reference(x * 2.0, negative_slope=0.2)
    (g_r,) = torch.autograd.grad(yr, x, torch.ones_like(yr))
    torch.testing.assert_close(y, yr, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(g, g_r, atol=1e-5, rtol=1e-4)


def test_export_keeps_the_op():
    """torch.export sees one deblurgan_kernels.in_act_fwd node per layer, and the exported program runs."""
    model = nn.Sequential(nn.Conv2d(3, 4, 3), InstanceNormAct(4, 0.2)).to(DEVICE)
    x = torch.randn(1, 3, 8, 8, device=DEVICE)
    ep = torch.export.export(model, (x,))
    assert "deblurgan_kernels.in_act_fwd" in str(ep.graph)
    ref = nn.Sequential(model[0], nn.InstanceNorm2d(4), nn.LeakyReLU(0.2))
    torch.testing.assert_close(ep.module()(x), ref(x), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(
    "make,exc,match",
    [
        (lambda: (torch.randn(3, 4, 4),), ValueError, "N, C, H, W"),
        (lambda: (torch.randint(0, 5, (1, 2, 3, 3)),), TypeError, "float"),
        (lambda: (torch.randn(1, 2, 3, 3), torch.ones(3), torch.zeros(3)), ValueError, "shape"),
        (lambda: (torch.randn(1, 2, 3, 3), torch.ones(2), None), ValueError, "both"),
        (lambda: (torch.randn(0, 2, 3, 3),), ValueError, "empty"),
    ],
    ids=["rank3", "int", "weight-shape", "weight-no-bias", "empty"],
)
def test_bad_input_gives_clear_errors(make, exc, match):
    args = [a.to(DEVICE) if a is not None else None for a in make()]
    with pytest.raises(exc, match=match):
        instance_norm_act(*args)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU-only behaviour")
def test_cpu_without_interpreter_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(RuntimeError, match="CUDA"):
        instance_norm_act(torch.randn(1, 2, 3, 3))


# ----------------------------------------------------------------------------------------------- full size, GPU
# (shape, dtype, atol, rtol, affine, slope, activation): few cases, since each Triton specialisation compiles once
GPU_CASES = [
    ((1, 64, 720, 1280), *DTYPES[1], False, 0.0, True),  # the generator's first IN+ReLU at 720p, fp16
    ((1, 64, 720, 1280), *DTYPES[0], False, 0.0, False),  # same plane in fp32, no activation
    ((1, 256, 180, 320), *DTYPES[2], True, 0.2, True),  # ResBlock planes at 720p, bf16, affine + LeakyReLU
    ((16, 256, 64, 64), *DTYPES[1], False, 0.0, True),  # a training batch (fused one-program-per-plane path)
    ((1, 512, 33, 33), *DTYPES[0], False, 0.2, True),  # the critic's last IN at 256^2 crops (odd plane)
]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("shape,dtype,atol,rtol,affine,slope,act", GPU_CASES)
def test_full_size_gpu(shape, dtype, atol, rtol, affine, slope, act):
    _check_against_reference(shape, None, dtype, atol, rtol, affine, slope, act)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("mode", CL_MODES)
def test_full_size_gpu_channels_last(mode, launches, monkeypatch):
    monkeypatch.setattr(plan, "CHANNELS_LAST_MODE", mode)
    shape = (1, 64, 360, 640)
    y, dx = _check_against_reference(shape, None, torch.float16, 1e-2, 1e-2, False, 0.0, True, torch.channels_last)
    assert y.is_contiguous(memory_format=torch.channels_last) and dx.is_contiguous(memory_format=torch.channels_last)
    _assert_path(launches, mode, plan.plan_nhwc(1, 64, 360 * 640, None)[3])
