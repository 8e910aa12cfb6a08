"""Shared pytest setup. Without CUDA, Triton kernels run in the CPU interpreter: TRITON_INTERPRET must be
set before triton is first imported, so it is set here, for the whole test process."""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture
def full_fp32():
    """CUDA float32 convolutions and matmuls without TF32 during the test (PyTorch's default lets cuDNN use TF32).

    A context manager rather than monkeypatch: torch.backends.cuda.matmul has no real `allow_tf32` attribute, and
    pytest 9.2's monkeypatch fails to restore it.
    """
    from deblurgan.precision import exact_fp32

    with exact_fp32():
        yield


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory):
    """A checkpoint of a small generator (ngf 8, one block) with N(0, 0.2) weights: outputs visibly differ from
    the input, unlike the paper's N(0, 0.02) init."""
    from deblurgan import Generator, GeneratorConfig
    from deblurgan.checkpoint import save_generator

    torch.manual_seed(0)
    g = Generator(GeneratorConfig(ngf=8, n_blocks=1))
    with torch.no_grad():
        for p in g.parameters():
            p.normal_(0, 0.2)
    return save_generator(g, tmp_path_factory.mktemp("ck") / "g.pt")


@pytest.fixture(autouse=True)
def _auto_precision_is_fp32(monkeypatch):
    """Tests compare with fp32 references: precision "auto" means fp32 in every test, also on CPUs with native
    bf16 (tests/test_precision.py patches the detection itself where bf16 is the point)."""
    import deblurgan.precision

    monkeypatch.setattr(deblurgan.precision, "cpu_has_native_bf16", lambda: False)


@pytest.fixture
def seen_psfs(monkeypatch) -> list:
    """The PSFs SyntheticDataset blurs with, in order (its `_blur` spied on, behaviour unchanged)."""
    from deblurgan.data import SyntheticDataset

    seen: list = []
    original = SyntheticDataset._blur

    def spy(self, sharp, psf, rng):
        seen.append(psf)
        return original(self, sharp, psf, rng)

    monkeypatch.setattr(SyntheticDataset, "_blur", spy)
    return seen
