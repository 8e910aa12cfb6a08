"""The kernels switch (torch | triton | auto): generator and critic built with 'torch' and 'triton' agree
(outputs, gradients, state dicts, a few WGAN-GP training steps). CPU runs use the Triton interpreter, so the
networks are tiny."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported (conftest does it too)

import pytest  # noqa: E402
from torch import nn  # noqa: E402

pytest.importorskip("triton")

from deblurgan.config import CriticConfig, GeneratorConfig  # noqa: E402
from deblurgan.layers import resolve_kernels  # noqa: E402
from deblurgan.networks import Critic, Generator  # noqa: E402
from kernels.gradient_penalty import gradient_penalty, gradient_penalty_reference  # noqa: E402
from kernels.instance_norm import InstanceNormAct  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
GEN = dict(ngf=4, n_blocks=2, dropout=0.0)  # dropout off: both implementations must see the same network
CRIT = dict(ndf=4, n_layers=2)


def _pair(cls, cfg_cls, **cfg):
    """(module with kernels="torch", module with kernels="triton"), identical weights."""
    torch.manual_seed(0)
    ref = cls(cfg_cls(kernels="torch", **cfg)).to(DEVICE)
    with torch.no_grad():  # larger than the 0.02 init so that differences would show
        for p in ref.parameters():
            p.normal_(0.0, 0.2)
    fused = cls(cfg_cls(kernels="triton", **cfg)).to(DEVICE)
    fused.load_state_dict(ref.state_dict())  # strict: checkpoints are interchangeable
    return ref, fused


def _assert_close_scaled(a, b, rel=1e-4):
    scale = max(t.abs().max().item() for t in b)
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, atol=rel * scale, rtol=1e-3)


def test_resolve_kernels(monkeypatch):
    from kernels import triton_runs_on

    assert resolve_kernels("torch") == "torch"
    assert resolve_kernels("triton") == "triton"
    assert resolve_kernels("auto", "cuda") == "triton" and triton_runs_on("cuda")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert resolve_kernels("auto", "cpu") == "torch" and not triton_runs_on("cpu")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert resolve_kernels("auto", "cpu") == "triton" and triton_runs_on("cpu")
    with pytest.raises(ValueError, match="kernels must be one of"):
        resolve_kernels("backend")


def test_former_names_still_work():
    from deblurgan import config, layers

    assert layers.resolve_backend is resolve_kernels and config.KERNEL_BACKENDS is config.KERNEL_IMPLS


def test_fused_layers_replace_every_instance_norm():
    _, gen = _pair(Generator, GeneratorConfig, **GEN)
    _, crit = _pair(Critic, CriticConfig, **CRIT)
    # generator: 3 before the blocks, 2 per block, 2 after; critic: one per layer after the first
    assert sum(isinstance(m, InstanceNormAct) for m in gen.modules()) == 3 + 2 * GEN["n_blocks"] + 2
    assert sum(isinstance(m, InstanceNormAct) for m in crit.modules()) == CRIT["n_layers"]
    assert not any(isinstance(m, nn.InstanceNorm2d) for m in [*gen.modules(), *crit.modules()])


@pytest.mark.parametrize(
    "cls,cfg_cls,cfg,size", [(Generator, GeneratorConfig, GEN, 16), (Critic, CriticConfig, CRIT, 24)]
)
def test_same_outputs_and_gradients(cls, cfg_cls, cfg, size):
    ref, fused = _pair(cls, cfg_cls, **cfg)
    assert ref.state_dict().keys() == fused.state_dict().keys()
    x = torch.rand(2, 3, size, size, device=DEVICE) * 2 - 1
    out_ref, out = ref(x), fused(x)
    torch.testing.assert_close(out, out_ref, atol=1e-5, rtol=1e-4)
    dy = torch.randn_like(out)
    g_ref = torch.autograd.grad(out_ref, list(ref.parameters()), dy)
    g = torch.autograd.grad(out, list(fused.parameters()), dy)
    _assert_close_scaled(g, g_ref)


def test_training_steps_agree():
    """Three WGAN-GP steps (critic with GP, then generator) with Adam: both implementations track each other."""
    g_ref, g_fused = _pair(Generator, GeneratorConfig, **GEN)
    d_ref, d_fused = _pair(Critic, CriticConfig, **CRIT)
    runs = {
        "torch": (g_ref, d_ref, gradient_penalty_reference),
        "triton": (g_fused, d_fused, gradient_penalty),
    }
    torch.manual_seed(1)
    batches = [(torch.rand(2, 3, 16, 16, device=DEVICE) * 2 - 1, torch.rand(2, 3, 16, 16, device=DEVICE) * 2 - 1)]
    batches *= 3
    eps = torch.rand(2, 1, 1, 1, device=DEVICE)
    losses = {}
    for name, (gen, crit, gp_fn) in runs.items():
        opt_g = torch.optim.Adam(gen.parameters(), lr=1e-3, betas=(0.5, 0.999))
        opt_d = torch.optim.Adam(crit.parameters(), lr=1e-3, betas=(0.5, 0.999))
        losses[name] = []
        for blurred, sharp in batches:
            fake = gen(blurred)
            loss_d = (
                crit(fake.detach()).mean() - crit(sharp).mean() + gp_fn(crit, sharp, fake.detach(), 10.0, "sample", eps)
            )
            opt_d.zero_grad()
            loss_d.backward()
            opt_d.step()
            loss_g = -crit(fake).mean() + 100 * (fake - sharp).abs().mean()
            opt_g.zero_grad()
            loss_g.backward()
            opt_g.step()
            losses[name].append(torch.stack([loss_d.detach(), loss_g.detach()]))
        losses[name].append(torch.cat([gen(batches[0][0]).flatten(), crit(batches[0][1]).flatten()]).detach())
    # Conv biases right before an IN get ~1e-9 noise gradients that Adam amplifies to full steps; they do not
    # change any output (IN removes them), so the comparison is on losses and outputs, not on raw weights.
    for a, b in zip(losses["triton"], losses["torch"], strict=True):
        torch.testing.assert_close(a, b, atol=1e-3, rtol=1e-3)


def test_checkpoint_roundtrip_between_kernels(tmp_path):
    from deblurgan.checkpoint import load_generator, save_generator

    ref, _ = _pair(Generator, GeneratorConfig, **GEN)
    path = save_generator(ref, tmp_path / "g.pt")
    fused = load_generator(path, kernels="triton").to(DEVICE)
    assert any(isinstance(m, InstanceNormAct) for m in fused.modules())
    x = torch.rand(1, 3, 16, 16, device=DEVICE) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(fused(x), ref.eval()(x), atol=1e-5, rtol=1e-4)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_full_size_networks_gpu(full_fp32):
    """The authors' generator (11.4 M params) and critic at 256x256, both implementations (full fp32: with TF32
    convolutions, PyTorch's default, rounding differences between the two grow past these bounds)."""
    for cls, cfg_cls, cfg in [(Generator, GeneratorConfig, dict(dropout=0.0)), (Critic, CriticConfig, {})]:
        ref, fused = _pair(cls, cfg_cls, **cfg)
        x = torch.rand(2, 3, 256, 256, device=DEVICE) * 2 - 1
        out_ref, out = ref(x), fused(x)
        torch.testing.assert_close(out, out_ref, atol=1e-4, rtol=1e-3)
        dy = torch.randn_like(out)
        _assert_close_scaled(
            torch.autograd.grad(out, list(fused.parameters()), dy),
            torch.autograd.grad(out_ref, list(ref.parameters()), dy),
            rel=1e-3,
        )


_NO_TRITON_SCRIPT = """
import sys
sys.modules["triton"] = None  # import triton now raises ImportError
import torch
from deblurgan.layers import resolve_kernels
from kernels import triton_runs_on
from kernels.gradient_penalty import gradient_penalty
from kernels.instance_norm import InstanceNormAct, instance_norm_act
from kernels.instance_norm_act import InstanceNormAct as Alias
assert Alias is InstanceNormAct
assert resolve_kernels("auto", "cuda") == "torch" and not triton_runs_on("cuda")
try:
    gradient_penalty(lambda x: x.sum(), torch.rand(1, 3, 4, 4), torch.rand(1, 3, 4, 4))
except RuntimeError as e:
    assert "triton" in str(e), e
else:
    raise AssertionError("no error without triton")
layer = InstanceNormAct(2)
try:
    layer(torch.randn(1, 2, 3, 3))
except RuntimeError as e:
    assert "triton" in str(e), e
    print("clear error:", e)
else:
    raise AssertionError("no error without triton")
"""


def test_importable_without_triton():
    import subprocess
    import sys

    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")])))
    proc = subprocess.run(
        [sys.executable, "-c", _NO_TRITON_SCRIPT], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "clear error" in proc.stdout


# ----------------------------------------------------------------------------------------------- real GPU compile
# Every kernel is also compiled for sm_90 without a GPU (tests/sm90.py): a compile error or a register spill fails CI.
_COMPILE_SCRIPT = """
import triton.language as tl
from kernels import gradient_penalty as gp
from kernels.instance_norm import double_backward as dbwd, nchw
from sm90 import compile_sm90

DATA = {"X", "Y", "DY", "DX", "DDX", "DDY_OUT", "DX_OUT", "REAL", "FAKE", "OUT", "G", "DG"}
fused = dict(HAS_W=True, ACT=True, BLOCK=4096, ACC=tl.float32)
chunked = dict(HAS_W=True, ACT=True, CHUNK=65536, TILE=1024, ACC=tl.float32)
cases = [
    (nchw._fwd_fused_kernel, fused, 8),
    (nchw._fwd_fused_kernel, fused | dict(HAS_W=False, ACC=tl.float64), 8),
    (nchw._stats_kernel, dict(CHUNK=65536, TILE=1024, ACC=tl.float32), 4),
    (nchw._norm_act_kernel, chunked | dict(BLOCK_K=16), 4),
    (nchw._bwd_fused_kernel, fused, 8),
    (nchw._bwd_reduce_kernel, chunked, 4),
    (nchw._bwd_dx_kernel, chunked | dict(BLOCK_K=16), 4),
    (dbwd._dbwd_fused_kernel, fused, 8),
    (dbwd._dbwd_reduce_kernel, chunked, 4),
    (dbwd._dbwd_apply_kernel, chunked | dict(BLOCK_K=16), 4),
    (gp._lerp_kernel, dict(BLOCK=1024), 4),
    (gp._sumsq_kernel, dict(BLOCK=1024), 4),
    (gp._pixel_norm_kernel, dict(C=3, BLOCK=256), 4),
    (gp._penalty_bwd_kernel, dict(PIXEL=True, BLOCK=1024), 4),
]
for fn, consts, warps in cases:
    compile_sm90(fn, consts, warps, DATA)
    print("ok", fn.__name__)
"""


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU the other tests compile and run the kernels")
def test_kernels_compile_for_sm90_without_spills():
    from sm90 import run_script

    assert run_script(_COMPILE_SCRIPT).count("ok ") == 14
