"""Exact tiling in bands of rows: equal to the untiled generator, memory bounded by bands and kept states."""

from __future__ import annotations

import pytest
import torch

import deblurgan.tiling as tiling
from deblurgan import Generator, GeneratorConfig
from deblurgan.inference import STATE_BYTES_PER_CHANNEL, Deblurrer, TorchRunner, pad_to_multiple
from deblurgan.tiling import ExactTiles, TilePlan, TorchProgram, _Rows, program_geometry, spoiled

TOL = 1e-4  # float32 outputs in [-1, 1]: only summation order differs (up to ~1e-5 seen); a spoiled band: > 1e-2


@pytest.fixture(autouse=True)
def _auto_is_fp32(monkeypatch):
    import deblurgan.precision

    monkeypatch.setattr(deblurgan.precision, "cpu_has_native_bf16", lambda: False)


@pytest.fixture(scope="module")
def gen() -> Generator:
    """ngf 8, two ResBlocks (a block boundary between kept states), weights ~N(0, 0.2): IN statistics matter."""
    torch.manual_seed(1)
    g = Generator(GeneratorConfig(ngf=8, n_blocks=2, dropout=0.0))
    with torch.no_grad():
        for p in g.parameters():
            p.normal_(0, 0.2)
    return g.eval()


def _untiled(gen: Generator, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return gen(x)


def _tiles(gen, x, tile, overlap=64, cache=2**30, band=None) -> ExactTiles:
    h, w = x.shape[-2:]
    plan = TilePlan(h, w, tile, overlap, min(tiling.receptive_radius(gen), (overlap - 1) // 2))
    return ExactTiles(gen, TorchRunner(gen, precision="fp32"), x, plan, cache, state_cap=None, band_budget=band)


def _blend(tiles: ExactTiles) -> torch.Tensor:
    plan = tiles.plan
    acc = torch.zeros(1, 3, plan.height, plan.width)
    wsum = torch.zeros(1, 1, plan.height, plan.width)
    for (y0, y1, x0, x1), o in zip(tiles.windows, tiles.outputs(), strict=True):
        wt = plan.blend_weights(plan.height, y0, y1 - y0)[:, None] * plan.blend_weights(plan.width, x0, x1 - x0)
        acc[..., y0:y1, x0:x1] += o * wt
        wsum[..., y0:y1, x0:x1] += wt
    return acc / wsum


# shapes: (H, W, tile): one window over a tall, a wide and a square-ish image; then 2x2 and 1x3 windows
CASES = [(92, 60, 256), (40, 124, 256), (100, 100, 256), (120, 136, 84), (64, 200, 96)]


@pytest.mark.parametrize(("h", "w", "tile"), CASES)
@pytest.mark.parametrize("band", [None, 1, 20_000])  # whole windows; 4-row bands (the minimum); a few bands
def test_bands_equal_untiled(gen, h, w, tile, band):
    x = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(h * w)) * 2 - 1
    tiles = _tiles(gen, x, tile, band=band)
    out = _blend(tiles)
    torch.testing.assert_close(out, _untiled(gen, x), atol=TOL, rtol=0)
    passes = (tiles.n_in + 1) * len(tiles.windows)
    assert (tiles.bands_run == passes) if band is None else (tiles.bands_run > passes)
    assert tiles.steps_run == tiles.n_steps * len(tiles.windows)  # every step once per window, bands or not


def test_a_halo_too_small_is_seen(gen, monkeypatch):
    """The test above can fail: bands cut without the context `spoiled` asks for differ from the untiled run."""
    x = torch.rand(1, 3, 100, 100, generator=torch.Generator().manual_seed(5)) * 2 - 1
    monkeypatch.setattr(tiling, "spoiled", lambda *a: 0)
    out = _blend(_tiles(gen, x, 256, band=200_000))  # bands of ~8 rows: slabs tall enough to reflect-pad
    assert (out - _untiled(gen, x)).abs().max() > 1e-2


def test_halo_of_each_pass(gen):
    """A ResBlock's pass reaches one quarter-resolution pixel (4 px); the first pass, the 7x7 convolution."""
    program = TorchProgram(gen)
    scale, reach = program_geometry(program.ops)
    assert scale[0] == 1 and max(scale) == 4 and scale[-1] == 1
    norm = program.norm_at
    assert spoiled(scale, reach, 0, norm[0]) == 4  # pad + 7x7 conv: 3 px, rounded to the 4 px grid
    assert spoiled(scale, reach, norm[3], norm[4]) == 4  # inside a ResBlock: 3x3 conv at quarter resolution
    assert spoiled(scale, reach, 0, program.n_steps) >= tiling.receptive_radius(gen) - 4


def test_kept_rows_are_freed_as_bands_pass(gen, monkeypatch):
    """One window in many bands: the old state's rows go as the new state grows, so kept states peak near one
    state, not two (the old and the new, as at a ResBlock's end without freeing)."""
    x = torch.rand(1, 3, 160, 96, generator=torch.Generator().manual_seed(2)) * 2 - 1

    def peak() -> float:
        tiles = _tiles(gen, x, 256, band=1)
        tiles.step_bytes = [b if b <= 16 else float("inf") for b in tiles.step_bytes]  # as the Deblurrer: <= 2 ngf
        _blend(tiles)
        return tiles.peak_cached / (16 * 160 * 96)  # the largest kept state: 2 ngf bytes per pixel

    assert peak() < 1.3
    monkeypatch.setattr(_Rows, "free_before", lambda self, row: None)
    assert peak() > 1.6


def test_work_cap_makes_recomputing_bands_taller(gen):
    """With nothing kept, pass k reruns every earlier layer: its estimate is capped at a whole forward's peak."""
    x = torch.rand(1, 3, 200, 64, generator=torch.Generator().manual_seed(6)) * 2 - 1
    counts = []
    for cap in (None, 8 * 18):  # ngf x ACTIVATION_BYTES_PER_CHANNEL, as the Deblurrer passes it
        h, w = x.shape[-2:]
        plan = TilePlan(h, w, 256, 64, 31)
        runner = TorchRunner(gen, precision="fp32")
        tiles = ExactTiles(gen, runner, x, plan, 0, band_budget=400_000, work_cap=cap)
        torch.testing.assert_close(_blend(tiles), _untiled(gen, x), atol=TOL, rtol=0)
        counts.append(tiles.bands_run)
    assert counts[1] < counts[0]


def test_rows_cut_across_chunks():
    t = torch.arange(2 * 3 * 10 * 4, dtype=torch.float32).reshape(2, 3, 10, 4)
    rows = _Rows()
    for a, b in ((0, 3), (3, 7), (7, 10)):
        rows.append(a, t[..., a:b, :].clone())
    torch.testing.assert_close(rows.rows(2, 9), t[..., 2:9, :], atol=0, rtol=0)
    assert rows.rows(0, 2).shape[-2] == 2 and rows.rows(8, 10).shape[-2] == 2  # chunks outside left out
    rows.free_before(7)
    assert [r for r, _ in rows.chunks] == [7] and rows.nbytes == 2 * 3 * 3 * 4 * 4


def test_cache_budget_changes_cost_not_numbers(gen):
    """States kept (all, some, none) within the budget: the cost changes, never the numbers, with bands too."""
    x = torch.rand(1, 3, 120, 136, generator=torch.Generator().manual_seed(3)) * 2 - 1
    outs, steps = {}, {}
    covered = 4 * 84 * 84  # 2 x 2 windows
    for name, budget in (("all", 2**30), ("some", 24 * covered), ("none", 0)):  # some: no full-resolution state
        tiles = _tiles(gen, x, 84, cache=budget, band=20_000)
        outs[name] = _blend(tiles)
        steps[name] = tiles.steps_run
        assert tiles.peak_cached <= budget
    assert steps["all"] < steps["some"] < steps["none"]
    torch.testing.assert_close(outs["some"], outs["all"], atol=TOL, rtol=0)
    torch.testing.assert_close(outs["none"], outs["all"], atol=TOL, rtol=0)


def test_a_12mp_photo_runs_as_one_window_in_the_default_bound(monkeypatch):
    """4000x3000 with the default 4 GiB: the kept states of the whole image fit, so no window overlap is paid."""
    import deblurgan.inference as inf

    monkeypatch.setattr(inf, "resident_memory", lambda: 400 * 2**20)
    d = Deblurrer(runner=TorchRunner(Generator(GeneratorConfig()), precision="fp32"))
    plan = d.plan(3000, 4000)
    assert plan is not None and len(plan.windows()) == 1
    states, band = d._exact_budgets(plan)
    x = torch.empty(1, 3, 3000, 4000)
    cap = STATE_BYTES_PER_CHANNEL * 64  # as the Deblurrer: quarter-resolution states only
    tiles = ExactTiles(d.runner.generator, d.runner, x, plan, states, state_cap=cap, band_budget=band)
    a, b = tiles.norm_at[4], tiles.norm_at[5]  # across a ResBlock boundary: the largest old + new states
    halo = spoiled(tiles.scale, tiles.reach, a, b)
    frac = (max(r1 - r0 for r0, r1 in tiles._bands(0, a, b, halo)) + 2 * halo) / 3000
    assert tiles._keep_step(0, a, b, frac) == b  # the quarter-resolution states are kept: each layer runs once
    assert states + band + inf.IMAGE_BYTES_PER_PIXEL * 12e6 + 400 * 2**20 <= inf.CPU_MEMORY_BUDGET
    big = d.plan(6000, 8000)  # 48 MP: the whole image's states do not fit (recomputed); windows would not help
    assert big is not None and len(big.windows()) == 1


def test_deblurrer_bands_match_untiled(gen, monkeypatch):
    """Through the Deblurrer's own budgets: a bound too small for the image, one window in bands."""
    import deblurgan.inference as inf

    monkeypatch.setattr(inf, "resident_memory", lambda: 0)
    x = torch.rand(1, 3, 150, 190, generator=torch.Generator().manual_seed(4)) * 2 - 1
    bound = 152 * 192 * (inf.IMAGE_BYTES_PER_PIXEL + 8 * inf.ACTIVATION_BYTES_PER_CHANNEL // 2)
    d = Deblurrer(runner=TorchRunner(gen, precision="fp32"), max_memory=bound)
    plan = d.plan(152, 192)
    assert plan is not None and len(plan.windows()) == 1
    torch.testing.assert_close(d.deblur_tensor(x), _untiled(gen, pad_to_multiple(x))[..., :150, :190], atol=TOL, rtol=0)
