"""Fused IN+activation and gradient-penalty kernels vs PyTorch eager and torch.compile, in one run.

    pytest bench/test_bench_kernels.py --benchmark

On CUDA: the issue's shapes (1x64x720x1280, 1x256x180x320, 16x256x64x64) and a critic update at batch 1, 256^2.
channels_last inputs (`--channels-last` training): the Triton kernels under each `CHANNELS_LAST_MODE` setting
("triton-nhwc-tiled" / "-copy" / "-strided") against eager on the same channels_last tensor.
On CPU: tiny stand-ins, torch paths only (the Triton interpreter is not worth timing). Every benchmark checks
what it timed against the reference. `bytes` = the minimal traffic of the op (see bench/FLOORS.md); the report
derives GB/s and % of this run's copy bandwidth from it. On CUDA every timed call follows an L2 flush (a 256 MiB
write, outside the timed interval): 1x256x180x320 and 16x256x64x64 in fp16 (~30 MB) would otherwise be read
from the 50 MB L2 of an H100/H200 and overstate "% of copy bandwidth".
"""

import pytest
import torch
from torch import nn

from bench import timing
from bench.timing import device, on_gpu, tensor_bytes, tf32_convs
from deblurgan.config import CriticConfig
from deblurgan.networks import Critic
from kernels.gradient_penalty import gradient_penalty, gradient_penalty_reference
from kernels.instance_norm import instance_norm_act, instance_norm_act_reference, plan


def measure(benchmark, fn, **kwargs):
    """bench.timing.measure with an L2 flush before every call (CUDA; a no-op on CPU)."""
    return timing.measure(benchmark, fn, flush_l2=True, **kwargs)


BACKENDS = ["eager", "compile", "triton"]
# (shape, dtype, also under torch.compile): compile runs are limited to keep the GPU suite inside its time budget
FWD_CASES_CUDA = [
    ((1, 64, 720, 1280), torch.float16, True),  # the headline case (generator's first IN+ReLU at 720p)
    ((1, 64, 720, 1280), torch.bfloat16, False),
    ((1, 64, 720, 1280), torch.float32, False),
    ((1, 256, 180, 320), torch.float16, True),  # the ResBlocks at 720p
    ((16, 256, 64, 64), torch.float16, False),  # ResBlocks of a training batch of 256^2 crops
]
FWD_BWD_CASES_CUDA = [((1, 64, 720, 1280), torch.float16, True), ((1, 256, 180, 320), torch.float16, True)]
CPU_CASES = [((1, 8, 36, 64), torch.float32, True)]
CRITIC_FWD_GFLOP_256 = 7.220  # torch.utils.flop_counter, the authors' critic on one 3x256x256 crop


def _cases(cuda_cases):
    cases = cuda_cases if on_gpu() else CPU_CASES
    return [
        pytest.param(shape, dtype, backend, id=f"{'x'.join(map(str, shape))}-{str(dtype)[6:]}-{backend}")
        for shape, dtype, with_compile in cases
        for backend in BACKENDS
        if backend != "compile" or with_compile
    ]


def _in_relu(backend, channels):
    """IN + ReLU as the backend runs it (eager: nn.InstanceNorm2d + ReLU, the generator's torch layers)."""
    if backend == "triton":
        if not on_gpu():
            pytest.skip("triton kernels are benchmarked on CUDA only (CPU runs the interpreter)")
        return lambda x: instance_norm_act(x)
    eager = nn.Sequential(nn.InstanceNorm2d(channels), nn.ReLU())
    return torch.compile(eager, dynamic=False) if backend == "compile" else eager


# (atol, rtol) of the correctness check before timing, per dtype: output rounding of the low-precision types
TOL = {torch.float32: (1e-4, 1e-4), torch.float16: (1e-2, 1e-2), torch.bfloat16: (6e-2, 2e-2)}


def _input(shape, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g) * 2 + 0.5).to(device(), dtype)


@pytest.mark.parametrize("shape,dtype,backend", _cases(FWD_CASES_CUDA))
def test_bench_in_relu_fwd(benchmark, shape, dtype, backend):
    benchmark.group = "kernels"
    x = _input(shape, dtype)
    fn = _in_relu(backend, shape[1])
    with torch.no_grad():
        y = fn(x)  # compile / autotune outside the timed region
        atol, rtol = TOL[dtype]
        torch.testing.assert_close(y.float(), instance_norm_act_reference(x.float()), atol=atol, rtol=rtol)
        measure(
            benchmark, lambda: fn(x), case="in_relu fwd", backend=backend, shape=shape, dtype=dtype,
            bytes=2 * tensor_bytes(x),  # floor: read x once, write y once
        )  # fmt: skip


@pytest.mark.parametrize("shape,dtype,backend", _cases(FWD_BWD_CASES_CUDA))
def test_bench_in_relu_fwd_bwd(benchmark, shape, dtype, backend):
    benchmark.group = "kernels"
    x = _input(shape, dtype).requires_grad_(True)
    dy = _input(shape, dtype, seed=1)
    _check_and_time_fwd_bwd(benchmark, _in_relu(backend, shape[1]), x, dy, "in_relu fwd+bwd", backend, dtype)


def _check_and_time_fwd_bwd(benchmark, fn, x, dy, case, backend, dtype, channels_last=False):
    """dx of IN+ReLU checked against the reference (and its layout, for the Triton channels_last paths), then
    forward+backward timed."""

    def step():
        (dx,) = torch.autograd.grad(fn(x), x, dy)
        return dx

    dx = step()
    if channels_last and backend != "eager":
        assert dx.is_contiguous(memory_format=torch.channels_last)
    (dx_ref,) = torch.autograd.grad(instance_norm_act_reference(x.float()), x, dy.float())
    atol, rtol = TOL[dtype]
    torch.testing.assert_close(dx.float(), dx_ref.float(), atol=atol, rtol=rtol)
    measure(
        benchmark, step, case=case, backend=backend, shape=list(x.shape), dtype=dtype,
        bytes=5 * tensor_bytes(x),  # floor: fwd reads x, writes y; bwd reads x and dy, writes dx
    )  # fmt: skip


# channels_last IN + ReLU: (shape, dtype). CUDA: the generator's first IN+ReLU at 720p (fp16) and at a training
# batch of 256^2 crops (bf16, what `--channels-last` training feeds it); CPU: a tiny stand-in, eager only.
NHWC_CASES_CUDA = [((1, 64, 720, 1280), torch.float16), ((16, 64, 256, 256), torch.bfloat16)]
NHWC_CASES_CPU = [((1, 8, 36, 64), torch.float32)]
NHWC_BACKENDS = ["eager", "triton-nhwc-tiled", "triton-nhwc-copy", "triton-nhwc-strided"]


def _nhwc_cases():
    return [
        pytest.param(shape, dtype, backend, id=f"{'x'.join(map(str, shape))}-{str(dtype)[6:]}-{backend}")
        for shape, dtype in (NHWC_CASES_CUDA if on_gpu() else NHWC_CASES_CPU)
        for backend in NHWC_BACKENDS
    ]


def _in_relu_nhwc(backend, channels, monkeypatch):
    """IN + ReLU on a channels_last tensor: eager torch layers, or the Triton kernels in one CHANNELS_LAST_MODE."""
    if backend == "eager":
        return nn.Sequential(nn.InstanceNorm2d(channels), nn.ReLU())
    if not on_gpu():
        pytest.skip("triton kernels are benchmarked on CUDA only (CPU runs the interpreter)")
    monkeypatch.setattr(plan, "CHANNELS_LAST_MODE", backend.removeprefix("triton-nhwc-"))
    return lambda x: instance_norm_act(x)


def _channels_last_input(shape, dtype, seed=0):
    x = _input(shape, dtype, seed).contiguous(memory_format=torch.channels_last)
    assert not x.is_contiguous()  # a real channels_last tensor, not one that is NCHW-contiguous as well
    return x


@pytest.mark.parametrize("shape,dtype,backend", _nhwc_cases())
def test_bench_in_relu_nhwc_fwd(benchmark, monkeypatch, shape, dtype, backend):
    benchmark.group = "kernels"
    x = _channels_last_input(shape, dtype)
    fn = _in_relu_nhwc(backend, shape[1], monkeypatch)
    with torch.no_grad():
        y = fn(x)  # autotune / compile outside the timed region
        if backend != "eager":  # the Triton paths keep the layout (eager's output layout is torch's business)
            assert y.is_contiguous(memory_format=torch.channels_last)
        atol, rtol = TOL[dtype]
        torch.testing.assert_close(y.float(), instance_norm_act_reference(x.float()), atol=atol, rtol=rtol)
        measure(
            benchmark, lambda: fn(x), case="in_relu fwd channels_last", backend=backend, shape=shape, dtype=dtype,
            bytes=2 * tensor_bytes(x),  # floor: read x once, write y once (FLOORS.md: what each setting moves)
        )  # fmt: skip


@pytest.mark.parametrize("shape,dtype,backend", _nhwc_cases())
def test_bench_in_relu_nhwc_fwd_bwd(benchmark, monkeypatch, shape, dtype, backend):
    benchmark.group = "kernels"
    x = _channels_last_input(shape, dtype).requires_grad_(True)
    dy = _channels_last_input(shape, dtype, seed=1)  # as a channels_last network's next layer hands it back
    fn = _in_relu_nhwc(backend, shape[1], monkeypatch)
    _check_and_time_fwd_bwd(benchmark, fn, x, dy, "in_relu fwd+bwd channels_last", backend, dtype, channels_last=True)


@pytest.mark.parametrize("backend", ["eager", "triton"])  # torch.compile does not trace double backward
def test_bench_in_lrelu_double_backward(benchmark, backend):
    """The critic step's pattern: dx = d<y, dy>/dx with create_graph, then d<dx, v>/d(x, dy)."""
    benchmark.group = "kernels"
    shape = (16, 256, 64, 64) if on_gpu() else (2, 8, 16, 16)
    x = _input(shape, torch.float32).requires_grad_(True)
    dy = _input(shape, torch.float32, seed=1).requires_grad_(True)
    v = _input(shape, torch.float32, seed=2)
    if backend == "triton" and not on_gpu():
        pytest.skip("triton kernels are benchmarked on CUDA only (CPU runs the interpreter)")
    if backend == "triton":
        fn = lambda t: instance_norm_act(t, negative_slope=0.2)  # noqa: E731
    else:  # the same eager baseline as the forward rows: the critic's torch layers
        fn = nn.Sequential(nn.InstanceNorm2d(shape[1]), nn.LeakyReLU(0.2))

    def step():
        (dx,) = torch.autograd.grad(fn(x), x, dy, create_graph=True)
        return torch.autograd.grad((dx * v).sum(), [x, dy])

    got = step()
    x_ref = x.detach().requires_grad_(True)
    dy_ref = dy.detach().requires_grad_(True)
    (dx_ref,) = torch.autograd.grad(
        instance_norm_act_reference(x_ref, negative_slope=0.2), x_ref, dy_ref, create_graph=True
    )
    ref = torch.autograd.grad((dx_ref * v).sum(), [x_ref, dy_ref])
    for a, r in zip(got, ref, strict=True):
        torch.testing.assert_close(a, r, atol=1e-3, rtol=1e-3)
    measure(
        benchmark, step, case="in_lrelu double bwd", backend=backend, shape=shape, dtype=torch.float32,
        bytes=10 * tensor_bytes(x),  # IN floor (FLOORS.md): fwd 2 + bwd 3 + double bwd 5 tensor passes
    )  # fmt: skip


@pytest.mark.parametrize("mode", ["sample", "pixel"])
@pytest.mark.parametrize("backend", ["eager", "triton"])  # torch.compile does not trace double backward
def test_bench_critic_update_gp(benchmark, backend, mode):
    """One WGAN-GP critic update: D(fake) - D(real) + GP, backward, Adam step (the authors' critic, batch 1)."""
    benchmark.group = "kernels"
    if backend == "triton" and not on_gpu():
        pytest.skip("triton kernels are benchmarked on CUDA only (CPU runs the interpreter)")
    size, cfg = (256, {}) if on_gpu() else (32, dict(ndf=8))
    torch.manual_seed(0)
    critic = Critic(CriticConfig(kernels="triton" if backend == "triton" else "torch", **cfg)).to(device())
    opt = torch.optim.Adam(critic.parameters(), lr=1e-4, betas=(0.5, 0.999))
    real = torch.rand(1, 3, size, size, device=device()) * 2 - 1
    fake = torch.rand(1, 3, size, size, device=device()) * 2 - 1
    eps = torch.rand(1, 1, 1, 1, device=device())
    gp_fn = gradient_penalty if backend == "triton" else gradient_penalty_reference

    def update():
        loss = critic(fake).mean() - critic(real).mean() + gp_fn(critic, real, fake, 10.0, mode, eps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    # check the penalty against the reference on a plain-torch twin of the critic (same weights) before timing
    twin = Critic(CriticConfig(kernels="torch", **cfg)).to(device())
    twin.load_state_dict(critic.state_dict())
    torch.testing.assert_close(
        gp_fn(critic, real, fake, 10.0, mode, eps),
        gradient_penalty_reference(twin, real, fake, 10.0, mode, eps),
        atol=1e-4,
        rtol=1e-4,
    )
    update()
    measure(
        benchmark, update, case=f"critic update + gp ({mode})", backend=backend, shape=[1, 3, size, size],
        dtype=torch.float32, tf32_convs=tf32_convs(),  # the critic's fp32 convs may use TF32 on CUDA (the default)
        flop=12 * CRITIC_FWD_GFLOP_256 * 1e9 if on_gpu() else None,  # ~12 forward-equivalents, see FLOORS.md
    )  # fmt: skip
