"""Deblurrer: modes, padding, batching, dropout, and tiling against the plain untiled PyTorch reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from deblurgan import Generator, GeneratorConfig
from deblurgan.checkpoint import save_generator
from deblurgan.errors import DeblurGANError
from deblurgan.inference import (
    ACTIVATION_BYTES_PER_CHANNEL,
    LUMA,
    Deblurrer,
    TilePlan,
    TorchRunner,
    count_instance_norms,
    forward_with_stats,
    pad_to_multiple,
    receptive_radius,
)

RNG = np.random.default_rng(99)


@pytest.fixture(autouse=True)
def _auto_is_fp32(monkeypatch):
    """These tests compare with fp32 references: "auto" means fp32 here on every CPU (bf16: test_precision.py)."""
    import deblurgan.precision

    monkeypatch.setattr(deblurgan.precision, "cpu_has_native_bf16", lambda: False)
TOL_FP32 = 1e-3  # float32 tensors in [-1, 1]; observed differences are ~1e-5 (summation order)


def tiny_generator(seed: int = 0, dropout: float = 0.5) -> Generator:
    """ngf=8, 1 block; weights ~N(0, 0.2) so the output is far from the identity and IN stats matter."""
    torch.manual_seed(seed)
    g = Generator(GeneratorConfig(ngf=8, n_blocks=1, dropout=dropout))
    with torch.no_grad():
        for p in g.parameters():
            p.normal_(0, 0.2)
    return g.eval()


@pytest.fixture(scope="module")
def gen() -> Generator:
    return tiny_generator()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, gen) -> str:
    return str(save_generator(gen, tmp_path_factory.mktemp("ck") / "g.pt"))


def reference(gen: Generator, x: torch.Tensor) -> torch.Tensor:
    """The plain path: reflect-pad bottom/right to a multiple of 4, run, crop."""
    h, w = x.shape[-2:]
    ph, pw = -h % 4, -w % 4
    with torch.no_grad():
        return gen(F.pad(x, (0, pw, 0, ph), mode="reflect"))[..., :h, :w]


def to_tensor(img: np.ndarray, scale: float) -> torch.Tensor:
    return torch.from_numpy(img.astype(np.float32)).permute(2, 0, 1)[None] * (2 / scale) - 1


def to_image(y: torch.Tensor, scale: float, dtype) -> np.ndarray:
    return np.clip(np.rint((y[0].permute(1, 2, 0).numpy() + 1) / 2 * scale), 0, scale).astype(dtype)


# --- modes ------------------------------------------------------------------------------------------


def test_rgb_uint8_odd_size_matches_reference(ckpt, gen):
    img = RNG.integers(0, 256, (37, 29, 3), dtype=np.uint8)
    out = Deblurrer(ckpt).deblur(img)
    assert out.shape == img.shape and out.dtype == np.uint8
    ref = to_image(reference(gen, to_tensor(img, 255)), 255, np.uint8)
    assert np.abs(out.astype(int) - ref).max() <= 1  # rounding of values within 1e-6 of a .5
    assert np.abs(out.astype(int) - img).mean() > 5  # the model did something


def test_uint16_rgb(ckpt, gen):
    img = RNG.integers(0, 65536, (21, 18, 3), dtype=np.uint16)
    out = Deblurrer(ckpt).deblur(img)
    assert out.dtype == np.uint16 and out.shape == img.shape
    ref = to_image(reference(gen, to_tensor(img, 65535)), 65535, np.uint16)
    assert np.abs(out.astype(int) - ref).max() <= 2  # 1e-6 float noise x 32767 levels


def test_gray_uses_luma_of_rgb_result(ckpt, gen):
    for img in (RNG.integers(0, 256, (19, 23), dtype=np.uint8), RNG.integers(0, 256, (19, 23, 1), dtype=np.uint8)):
        out = Deblurrer(ckpt).deblur(img)
        assert out.shape == img.shape and out.dtype == np.uint8
        rgb = np.repeat(img.reshape(19, 23, 1), 3, axis=2)
        y = (reference(gen, to_tensor(rgb, 255))[0].permute(1, 2, 0).numpy() + 1) / 2
        ref = np.rint(np.clip(y, 0, 1) @ np.array(LUMA, np.float32) * 255)
        assert np.abs(out.reshape(19, 23).astype(int) - ref).max() <= 1


def test_rgba_alpha_passes_through(ckpt):
    img = RNG.integers(0, 256, (16, 20, 4), dtype=np.uint8)
    d = Deblurrer(ckpt)
    out = d.deblur(img)
    assert out.shape == img.shape
    np.testing.assert_array_equal(out[..., 3], img[..., 3])
    np.testing.assert_array_equal(out[..., :3], d.deblur(img[..., :3].copy()))


def test_float_input(ckpt, gen):
    img = RNG.random((12, 16, 3)).astype(np.float32)
    out = Deblurrer(ckpt).deblur(img)
    assert out.dtype == np.float32
    ref = ((reference(gen, to_tensor(img, 1.0)) + 1) / 2)[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(out, ref, atol=1e-5)


@pytest.mark.parametrize("shape", [(1, 1, 3), (3, 5, 3), (2, 40, 3)])
def test_tiny_images(ckpt, shape):
    out = Deblurrer(ckpt).deblur(RNG.integers(0, 256, shape, dtype=np.uint8))
    assert out.shape == shape


def test_pad_to_multiple():
    x = torch.randn(1, 3, 9, 14)
    p = pad_to_multiple(x)
    assert p.shape[-2:] == (12, 16)
    torch.testing.assert_close(p[..., :9, :14], x)
    torch.testing.assert_close(p[..., 9, :14], x[..., 7, :])  # reflection, not edge copy
    assert pad_to_multiple(torch.randn(1, 3, 1, 2)).shape[-2:] == (8, 8)


def test_batch_equals_single(ckpt):
    imgs = [RNG.integers(0, 256, (20, 24, 3), dtype=np.uint8) for _ in range(3)]
    imgs.append(RNG.integers(0, 256, (13, 9, 3), dtype=np.uint8))
    d = Deblurrer(ckpt, batch_size=2)
    batched = d.deblur_batch(imgs)
    for img, b in zip(imgs, batched, strict=True):  # batched convs may flip a rounding by one level
        assert b.shape == img.shape and np.abs(b.astype(int) - d.deblur(img)).max() <= 1


@pytest.mark.parametrize(
    "bad", [np.zeros((4, 4, 2), np.uint8), np.zeros((4, 4, 3), np.int32), np.zeros((2, 4, 4, 3), np.uint8)]
)
def test_bad_images(ckpt, bad):
    with pytest.raises(DeblurGANError):
        Deblurrer(ckpt).deblur(bad)


def test_bad_options(ckpt, tmp_path):
    with pytest.raises(DeblurGANError, match="fp16"):
        Deblurrer(ckpt, fp16=True, device="cpu")
    with pytest.raises(DeblurGANError, match="tile"):
        Deblurrer(ckpt, tile=30)
    with pytest.raises(DeblurGANError, match="overlap"):
        Deblurrer(ckpt, overlap=6)
    with pytest.raises(DeblurGANError, match="not found"):
        Deblurrer(tmp_path / "missing.pt")
    with pytest.raises(DeblurGANError):
        Deblurrer()
    if not torch.cuda.is_available():
        with pytest.raises(DeblurGANError, match="CUDA"):
            Deblurrer(ckpt, device="cuda")


# --- dropout ----------------------------------------------------------------------------------------


def test_eval_mode_is_deterministic_and_dropout_off(ckpt):
    d = Deblurrer(ckpt)
    assert all(not m.training for m in d.runner.generator.modules())
    img = RNG.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    np.testing.assert_array_equal(d.deblur(img), d.deblur(img))


def test_test_time_dropout(ckpt):
    img = RNG.integers(0, 256, (24, 24, 3), dtype=np.uint8)
    d = Deblurrer(ckpt, test_time_dropout=True, seed=3)
    mods = list(d.runner.generator.modules())
    assert any(isinstance(m, nn.Dropout) for m in mods)
    assert all(m.training == isinstance(m, nn.Dropout) for m in mods if not isinstance(m, nn.Sequential | Generator))
    a, b = d.deblur(img), d.deblur(img)
    np.testing.assert_array_equal(a, b)  # seeded: reproducible
    assert not np.array_equal(a, Deblurrer(ckpt, test_time_dropout=True, seed=4).deblur(img))
    assert not np.array_equal(a, Deblurrer(ckpt).deblur(img))


# --- tiling -----------------------------------------------------------------------------------------


def test_forward_with_full_image_stats_equals_generator(gen):
    x = torch.rand(1, 3, 32, 40) * 2 - 1
    stats = []
    with torch.no_grad():
        for k in range(count_instance_norms(gen)):
            a = forward_with_stats(gen, x, stats, stop=k).double()
            stats.append((a.mean((0, 2, 3)).float(), a.var((0, 2, 3), unbiased=False).float()))
        torch.testing.assert_close(forward_with_stats(gen, x, stats), gen(x), atol=1e-4, rtol=0)


def test_receptive_radius_is_an_upper_bound(gen):
    """With frozen statistics, an input change reaches no farther than receptive_radius()."""
    x = torch.rand(1, 3, 96, 96) * 2 - 1
    stats = [(torch.randn(c) * 0.1, torch.rand(c) + 0.5) for c in (8, 16, 32, 32, 32, 16, 8)]
    y0 = forward_with_stats(gen, x, stats)
    x2 = x.clone()
    x2[..., 48, 48] += 1.0
    changed = (forward_with_stats(gen, x2, stats) - y0).abs().amax(1)[0] > 0
    ys, xs = torch.nonzero(changed, as_tuple=True)
    reach = max((ys - 48).abs().max().item(), (xs - 48).abs().max().item())
    r = receptive_radius(gen)
    assert 10 < reach <= r  # it does reach far, and never beyond the bound


@pytest.mark.parametrize("shape", [(150, 190), (97, 261)])
def test_tiled_equals_untiled_global_stats(gen, shape):
    """Exact tiling: whole-image IN statistics + context margins >= the receptive field."""
    x = torch.rand(1, 3, *shape) * 2 - 1
    runner = TorchRunner(gen)
    untiled = Deblurrer(runner=runner).deblur_tensor(x)
    tiled_d = Deblurrer(runner=runner, tile=128, batch_size=3)
    plan = tiled_d.plan(*pad_to_multiple(x).shape[-2:])
    assert plan is not None and len(plan.windows()) >= 3
    tiled = tiled_d.deblur_tensor(x)
    assert (untiled - x).abs().mean() > 0.1  # a model whose IN statistics matter
    diff = (tiled - untiled).abs()
    assert diff.max() < TOL_FP32, diff.max()  # everywhere, not only in the interior


def test_per_tile_stats_is_approximate_but_seams_blend(gen):
    """tile_stats='tile' (exported runners): each window normalised by itself, so not equal to untiled."""
    x = torch.rand(1, 3, 120, 120) * 2 - 1
    runner = TorchRunner(gen)
    untiled = Deblurrer(runner=runner).deblur_tensor(x)
    tiled = Deblurrer(runner=runner, tile=64, overlap=16, tile_stats="tile").deblur_tensor(x)
    assert tiled.shape == untiled.shape and torch.isfinite(tiled).all()
    assert (tiled - untiled).abs().max() > TOL_FP32  # documented as approximate


class PointwiseRunner:
    """A runner without context (y = tanh(2x)): any tiling with normalised blend weights is exact."""

    device, dtype, max_batch, name = torch.device("cpu"), torch.float32, 2, "pointwise"

    def __init__(self) -> None:
        self.calls: list[tuple[int, ...]] = []

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        assert x.shape[-1] % 4 == 0 and x.shape[-2] % 4 == 0 and x.shape[0] <= 2
        self.calls.append(tuple(x.shape))
        return torch.tanh(2 * x)


def test_blending_weights_normalise_with_any_runner():
    x = torch.rand(2, 3, 101, 77) * 2 - 1
    runner = PointwiseRunner()
    out = Deblurrer(runner=runner, tile=32, overlap=8, batch_size=8).deblur_tensor(x)
    torch.testing.assert_close(out, torch.tanh(2 * x), atol=1e-6, rtol=0)
    assert all(s[-2:] == (32, 32) for s in runner.calls) and len(runner.calls) > 4


def test_automatic_tiling_when_memory_is_short(gen):
    runner = TorchRunner(gen)
    x = torch.rand(1, 3, 140, 150) * 2 - 1
    d = Deblurrer(runner=runner, memory_budget=100 * 100 * 8 * 4 * 4)  # room for ~100x100 px
    assert Deblurrer(runner=runner).plan(140, 152) is None
    plan = d.plan(140, 152)
    assert plan is not None and len(plan.windows()) > 1
    torch.testing.assert_close(d.deblur_tensor(x), Deblurrer(runner=runner).deblur_tensor(x), atol=TOL_FP32, rtol=0)


def test_tiled_image_api_uint8(ckpt):
    img = RNG.integers(0, 256, (133, 141, 3), dtype=np.uint8)
    a = Deblurrer(ckpt).deblur(img)
    b = Deblurrer(ckpt, tile=96).deblur(img)
    assert np.abs(a.astype(int) - b).max() <= 1


def test_small_tile_for_overlap_is_refused(gen):
    d = Deblurrer(runner=TorchRunner(gen), tile=64, overlap=60)
    with pytest.raises(DeblurGANError, match="too small"), pytest.warns(UserWarning, match="not match"):
        d.plan(200, 200)


def test_global_stats_with_too_small_overlap_warns_and_differs(gen):
    x = torch.rand(1, 3, 150, 190) * 2 - 1
    runner = TorchRunner(gen)
    with pytest.warns(UserWarning, match="receptive field"):
        tiled = Deblurrer(runner=runner, tile=128, overlap=16).deblur_tensor(x)
    assert (tiled - Deblurrer(runner=runner).deblur_tensor(x)).abs().max() > TOL_FP32


@settings(max_examples=60, deadline=None)
@given(
    size=st.integers(8, 700).map(lambda v: v // 4 * 4 or 8),
    tile=st.integers(4, 64).map(lambda v: v * 4),
    overlap=st.integers(0, 12).map(lambda v: v * 4),
)
def test_tile_plan_geometry(size, tile, overlap):
    if tile < overlap + 8:
        return
    margin = max(overlap - 1, 0) // 2
    plan = TilePlan(size, size, tile, overlap, margin)
    starts = plan.starts(size)
    length = min(tile, size)
    assert starts[0] == 0 and starts[-1] + length == size
    assert all(s % 4 == 0 for s in starts)
    assert all(b - a <= tile - overlap for a, b in zip(starts, starts[1:], strict=False))  # overlap kept
    assert len(starts) == 1 or len(starts) == math.ceil((size - overlap) / (tile - overlap))
    total = torch.zeros(size, dtype=torch.float64)
    for s in starts:
        total[s : s + length] += plan.blend_weights(size, s, length)
    assert (total > 0).all()
    owned = plan.owned(size)
    assert owned[0][0] == 0 and owned[-1][1] == size
    assert all(a[1] == b[0] and a[0] % 4 == 0 for a, b in zip(owned, owned[1:], strict=False))
    for s, (lo, hi) in zip(starts, owned, strict=True):
        assert s <= lo <= hi <= s + length  # each window owns a part of itself


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_fp32_and_fp16_match_cpu(ckpt, full_fp32):
    # full fp32 on the GPU: TF32 convolutions (PyTorch's default) alone can move outputs by 2 levels
    img = RNG.integers(0, 256, (150, 190, 3), dtype=np.uint8)
    cpu = Deblurrer(ckpt).deblur(img).astype(int)
    assert np.abs(Deblurrer(ckpt, device="cuda").deblur(img).astype(int) - cpu).max() <= 1
    half = Deblurrer(ckpt, device="cuda", fp16=True).deblur(img).astype(int)
    assert np.abs(half - cpu).mean() < 2  # fp16 convolutions: a few levels at most, on average well under 2
    x = torch.rand(1, 3, 64, 72, generator=torch.Generator().manual_seed(3)) * 2 - 1
    y32 = Deblurrer(ckpt, device="cuda").deblur_tensor(x)
    y16 = Deblurrer(ckpt, device="cuda", fp16=True).deblur_tensor(x)
    assert not torch.equal(y16, y32)  # fp16 really ran
    assert 10 * math.log10(4.0 / (y16 - y32).pow(2).mean().item()) >= 40  # PSNR over the [-1, 1] range
    d = Deblurrer(ckpt, device="cuda", tile=128, batch_size=3)
    assert d.plan(152, 192) is not None
    assert np.abs(d.deblur(img).astype(int) - cpu).max() <= 1  # exact tiling on the GPU
    frames = [RNG.integers(0, 256, (36, 44, 3), dtype=np.uint8) for _ in range(5)]
    batched = Deblurrer(ckpt, device="cuda", batch_size=4).deblur_batch(frames)
    for f, b in zip(frames, batched, strict=True):
        assert np.abs(b.astype(int) - Deblurrer(ckpt).deblur(f)).max() <= 1


def test_global_stats_with_fused_triton_layers_uses_a_torch_copy(gen):
    """A generator built with the Triton IN kernel is tiled through a torch-IN copy with the same weights."""
    pytest.importorskip("triton")
    from deblurgan.inference import torch_generator

    fused = Generator(GeneratorConfig(ngf=8, n_blocks=1, kernels="triton"))
    fused.load_state_dict(gen.state_dict())
    fused.eval()
    copy = torch_generator(fused)
    assert copy is not fused and copy.config.kernels == "torch" and not copy.training
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(copy(x), gen(x), atol=1e-6, rtol=0)
    with pytest.raises(DeblurGANError, match="kernels='torch'"):
        forward_with_stats(fused, x, [])
    assert torch_generator(gen) is gen


def test_windows_per_pass_respect_the_memory_budget():
    runner = PointwiseRunner()
    per_px = 64 * ACTIVATION_BYTES_PER_CHANNEL  # the estimate for an unknown runner: ngf 64, fp32
    d = Deblurrer(runner=runner, tile=32, overlap=8, batch_size=8, memory_budget=2 * 32 * 32 * per_px)
    x = torch.rand(1, 3, 100, 100) * 2 - 1
    torch.testing.assert_close(d.deblur_tensor(x), torch.tanh(2 * x), atol=1e-6, rtol=0)
    assert max(s[0] for s in runner.calls) == 2  # the runner's max_batch is 2, the budget also allows 2
    runner.calls.clear()
    Deblurrer(runner=runner, tile=32, overlap=8, memory_budget=32 * 32 * per_px).deblur_tensor(x)
    assert max(s[0] for s in runner.calls) == 1


def test_default_memory_bound_covers_kept_states(gen, monkeypatch):
    """max_memory bounds kept states + one band's activations + image buffers; the image runs as one window."""
    import deblurgan.inference as inf

    monkeypatch.setattr(inf, "resident_memory", lambda: 0)
    runner = TorchRunner(gen, precision="fp32")
    per_px = gen.config.ngf * ACTIVATION_BYTES_PER_CHANNEL
    image = inf.IMAGE_BYTES_PER_PIXEL * 400 * 400
    assert Deblurrer(runner=runner, max_memory=image + 200 * 200 * per_px).plan(160, 160) is None  # fits whole
    for bound in (image + 400 * 400 * per_px // 2, image + 400 * 400 * per_px // 20):
        d = Deblurrer(runner=runner, max_memory=bound)
        plan = d.plan(400, 400)
        assert plan is not None and len(plan.windows()) == 1
        states, band = d._exact_budgets(plan)
        assert 0 < band and 0 < states and states + band <= bound - image
    with pytest.raises(DeblurGANError, match="max_memory"):
        Deblurrer(runner=runner, max_memory=0)


def test_balanced_tiles_cover_little_more_than_the_image():
    """Windows just large enough for their count: 4000x3000 in 2048 px windows would cover 25 MP."""
    from deblurgan.tiling import balanced_tile

    tile = balanced_tile(3000, 4000, 2048, 192)
    plan = TilePlan(3000, 4000, tile, 192, 91)
    covered = sum((b - a) * (d - c) for a, b, c, d in plan.windows())
    assert len(plan.windows()) == 6 and covered < 1.3 * 12e6 and tile <= 2048  # square windows of 1596 px
    assert balanced_tile(100, 120, 2048, 192) == 120  # one window


def test_memory_budget_shrinks_the_batch_before_tiling():
    runner = PointwiseRunner()
    per_px = 64 * ACTIVATION_BYTES_PER_CHANNEL
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    d = Deblurrer(runner=runner, batch_size=2, memory_budget=32 * 32 * per_px)  # one whole image fits
    torch.testing.assert_close(d.deblur_tensor(x), torch.tanh(2 * x), atol=1e-6, rtol=0)
    assert runner.calls == [(1, 3, 32, 32), (1, 3, 32, 32)]


class IdentityRunner(PointwiseRunner):
    max_batch = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x.clone()


@settings(max_examples=40, deadline=None)
@given(
    h=st.integers(1, 70),
    w=st.integers(1, 70),
    channels=st.sampled_from([0, 1, 3, 4]),
    dtype=st.sampled_from([np.uint8, np.uint16]),
    tile=st.sampled_from([None, 16, 24]),
)
def test_pre_and_post_processing_are_exact_inverses(h, w, channels, dtype, tile):
    """With an identity model every mode, size and tiling returns the input bit for bit."""
    shape = (h, w) if channels == 0 else (h, w, channels)
    img = RNG.integers(0, np.iinfo(dtype).max + 1, shape, dtype=dtype)
    out = Deblurrer(runner=IdentityRunner(), tile=tile, overlap=8 if tile else None).deblur(img)
    assert out.dtype == img.dtype
    np.testing.assert_array_equal(out, img)
