"""kernels.gradient_penalty (Triton interpolation + penalty reduction) vs gradient_penalty_reference.

Compared: the penalty and its gradients w.r.t. the critic's parameters (what training uses), in both modes,
with a small real DeblurGAN critic built with each IN implementation (kernels='torch' / 'triton'). CPU runs use
the Triton interpreter.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported (conftest does it too)

import pytest  # noqa: E402

pytest.importorskip("triton")

from deblurgan.config import CriticConfig  # noqa: E402
from deblurgan.networks import Critic  # noqa: E402
from kernels.gradient_penalty import (  # noqa: E402
    draw_eps,
    gp_interpolate,
    gradient_penalty,
    gradient_penalty_reference,
)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

# (mode, batch, H, W)
CASES = [
    ("sample", 2, 16, 16),  # the paper's per-sample norm, batch > 1
    ("pixel", 2, 16, 16),  # the authors' per-pixel norm over channels
    ("sample", 1, 12, 20),  # batch 1, non-square
    ("pixel", 3, 10, 14),  # odd batch, pixel count not a multiple of the block
]


def _critics(kernels: str, seed: int = 0, **cfg):
    """A critic with `kernels` and a plain-torch twin with the same weights (weights scaled up from the
    authors' N(0, 0.02) init so that the penalty is far from its minimum and gradients are informative)."""
    torch.manual_seed(seed)
    config = dict(ndf=4, n_layers=2) | cfg
    critic = Critic(CriticConfig(kernels=kernels, **config)).to(DEVICE)
    with torch.no_grad():
        for p in critic.parameters():
            p.normal_(0.0, 0.3)
    twin = Critic(CriticConfig(kernels="torch", **config)).to(DEVICE)
    twin.load_state_dict(critic.state_dict())
    return critic, twin


def _images(b, h, w, seed=1, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    real = torch.rand(b, 3, h, w, generator=g) * 2 - 1
    fake = torch.rand(b, 3, h, w, generator=g) * 2 - 1
    eps = torch.rand(b, 1, 1, 1, generator=g)
    return real.to(DEVICE, dtype), fake.to(DEVICE, dtype), eps.to(DEVICE)


def _param_grads(loss, module):
    return torch.autograd.grad(loss, list(module.parameters()), materialize_grads=True)


def _assert_grads_close(grads, grads_ref, rel=1e-4):
    # Convs followed by IN have a zero true bias gradient (IN removes it): compare on the global scale.
    scale = max(g.abs().max().item() for g in grads_ref)
    assert scale > 0
    for g, r in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(g, r, atol=rel * scale, rtol=1e-3)


@pytest.mark.parametrize("kernels", ["torch", "triton"])  # the critic's IN: plain torch or the fused kernel
@pytest.mark.parametrize("mode,b,h,w", CASES)
def test_matches_reference(mode, b, h, w, kernels):
    critic, twin = _critics(kernels)
    real, fake, eps = _images(b, h, w)
    if mode == "pixel":
        eps = eps[:1].expand(b, 1, 1, 1)  # one value per batch, as draw_eps gives in this mode
    gp = gradient_penalty(critic, real, fake, 10.0, mode, eps)
    gp_ref = gradient_penalty_reference(twin, real, fake, 10.0, mode, eps)
    assert gp.shape == () and gp.dtype == torch.float32
    torch.testing.assert_close(gp, gp_ref, atol=1e-5, rtol=1e-5)
    _assert_grads_close(_param_grads(gp, critic), _param_grads(gp_ref, twin))


def _own_eps(b, mode, seed):
    """The interpolation weights drawn here, not by draw_eps: b of them ('sample'), one for the batch ('pixel')."""
    torch.manual_seed(seed)
    return torch.rand(b if mode == "sample" else 1, 1, 1, 1, device=DEVICE).expand(b, 1, 1, 1)


@pytest.mark.parametrize("fn", [gradient_penalty, gradient_penalty_reference])
@pytest.mark.parametrize("mode", ["sample", "pixel"])
def test_drawn_eps_one_per_sample_or_one_per_batch(mode, fn):
    """eps=None gives the penalty of eps drawn by the test itself from the same seed (its own draw, so that one
    eps shared by the whole batch in 'sample' mode cannot pass by being drawn the same way on both sides)."""
    critic, twin = _critics("torch")
    real, fake, _ = _images(3, 8, 8)
    torch.manual_seed(123)
    gp = fn(critic, real, fake, 10.0, mode)
    gp_ref = gradient_penalty_reference(twin, real, fake, 10.0, mode, _own_eps(3, mode, 123))
    torch.testing.assert_close(gp, gp_ref, atol=1e-5, rtol=1e-5)


def test_draw_eps():
    """One uniform weight per sample in 'sample' mode (all different), one for the whole batch in 'pixel' mode."""
    torch.manual_seed(5)
    eps = draw_eps(4, "sample", torch.device(DEVICE))
    assert eps.shape == (4, 1, 1, 1) and eps.unique().numel() == 4 and ((eps >= 0) & (eps < 1)).all()
    torch.testing.assert_close(eps, _own_eps(4, "sample", 5))
    eps = draw_eps(4, "pixel", torch.device(DEVICE))
    assert eps.shape == (4, 1, 1, 1) and eps.unique().numel() == 1


# (dtype, atol): the interpolation is computed in fp32 and rounded once
@pytest.mark.parametrize("dtype,atol", [(torch.float32, 1e-6), (torch.float16, 1e-3), (torch.bfloat16, 8e-3)])
def test_interpolation(dtype, atol):
    real, fake, eps = _images(3, 5, 7, dtype=dtype)
    out = gp_interpolate(real, fake, eps)
    expected = eps * real.float() + (1 - eps) * fake.float()
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), expected, atol=atol, rtol=0)


@pytest.mark.parametrize("mode", ["sample", "pixel"])
def test_zero_gradient_gives_weight_and_zero_gradient(mode):
    """A critic flat in its input at these weights (D(x) = (lin - 2) * sum(x), lin = 2): every norm is 0, the
    penalty is `weight`, and its gradient w.r.t. lin is 0 as in the reference (PyTorch's norm backward is 0 at 0),
    not NaN and not another finite value (d grad / d lin is not 0 here, so a wrong slope at a zero norm shows)."""
    lin = torch.nn.Parameter(torch.tensor(2.0, device=DEVICE))
    critic = lambda x: (lin - 2) * x.sum(dim=(1, 2, 3))
    real, fake, eps = _images(2, 4, 4)
    gp = gradient_penalty(critic, real, fake, 10.0, mode, eps)
    torch.testing.assert_close(gp, torch.tensor(10.0, device=DEVICE))
    (g,) = torch.autograd.grad(gp, [lin], materialize_grads=True)
    (g_ref,) = torch.autograd.grad(gradient_penalty_reference(critic, real, fake, 10.0, mode, eps), [lin])
    assert torch.isfinite(g).all()
    torch.testing.assert_close(g, torch.zeros_like(g), atol=1e-6, rtol=0)
    torch.testing.assert_close(g, g_ref, atol=1e-6, rtol=0)


def test_compile_traces_the_penalty_ops():
    real, fake, eps = _images(2, 4, 4)
    compiled = torch.compile(gp_interpolate, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(real, fake, eps), gp_interpolate(real, fake, eps))


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        (dict(mode="channel"), ValueError, "mode"),
        (dict(fake=torch.zeros(2, 3, 8, 9)), ValueError, "shapes differ"),
        (dict(eps=torch.rand(2)), ValueError, "eps must have shape"),
        (dict(real=torch.zeros(2, 3, 8), fake=torch.zeros(2, 3, 8)), ValueError, "B, C, H, W"),
        (dict(real=torch.zeros(2, 3, 8, 8, dtype=torch.int64)), TypeError, "float"),
    ],
    ids=["mode", "shape", "eps", "rank", "dtype"],
)
def test_bad_input_gives_clear_errors(kwargs, exc, match):
    args = dict(critic=lambda x: x.sum(), real=torch.rand(2, 3, 8, 8), fake=torch.rand(2, 3, 8, 8)) | kwargs
    args = {k: v.to(DEVICE) if isinstance(v, torch.Tensor) else v for k, v in args.items()}
    with pytest.raises(exc, match=match):
        gradient_penalty(**args)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("mode", ["sample", "pixel"])
@pytest.mark.parametrize("b", [1, 4])
def test_full_size_gpu(mode, b, full_fp32):
    """The authors' critic (ndf 64, 3 layers) on 256x256 crops, fused IN inside (full fp32, not TF32)."""
    critic, twin = _critics("triton", ndf=64, n_layers=3)
    real, fake, eps = _images(b, 256, 256)
    if mode == "pixel":
        eps = eps[:1].expand(b, 1, 1, 1)
    gp = gradient_penalty(critic, real, fake, 10.0, mode, eps)
    gp_ref = gradient_penalty_reference(twin, real, fake, 10.0, mode, eps)
    torch.testing.assert_close(gp, gp_ref, atol=1e-4, rtol=1e-4)
    _assert_grads_close(_param_grads(gp, critic), _param_grads(gp_ref, twin), rel=1e-3)
