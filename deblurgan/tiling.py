"""Tiling the generator: window plans, frozen instance-norm statistics and exact tiling in bands of rows.

Instance norm normalises by per-image statistics, so a tile normalised by itself is not the whole image's
computation. Exact tiling (`ExactTiles`) computes the statistics of every IN layer over the whole image, layer
after layer: pass k runs the image up to IN layer k with the statistics of layers < k frozen, accumulating sums
over the pixels each window owns; a last pass runs with every statistic frozen. With frozen statistics the
generator is a local operator, so any cut of the image, given enough context around it, gives the untiled
values (up to float rounding).

Two cuts, nested:
- *windows* (`TilePlan`): squares overlapping by twice the receptive field, blended afterwards. Each window
  keeps its state (the activation, plus the open ResBlock inputs) in host memory between passes, as row chunks.
- *bands*: each pass runs a window in horizontal bands whose context is only what that pass's layers reach
  (a few pixels), cut from the kept state. Activations are bounded by the band, states by the window, so one
  window can cover a whole 12 MP photo and each layer runs about once per pixel.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

import torch
from torch import nn

from .errors import DeblurGANError
from .networks import Generator, ResnetBlock
from .precision import autocast

_Op = tuple[str, object]  # ("mod", module) | ("norm", (k, eps)) | ("push", None) | ("add", None)
_State = tuple[torch.Tensor, tuple[torch.Tensor, ...]]  # (activation, pending ResBlock inputs)
Stats = Sequence[tuple[torch.Tensor, torch.Tensor]]  # per IN layer: (mean, biased variance) per channel


def _round_up(v: int, m: int) -> int:
    return -(-v // m) * m


# --- window plans ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TilePlan:
    """Windows of `tile` px stepping with at least `overlap` px of overlap over a padded HxW image.

    `margin`: pixels next to an inner window edge that are not trusted (weight 0 when blending). A tile as large
    as the image gives one window.
    """

    height: int
    width: int
    tile: int
    overlap: int
    margin: int

    def starts(self, size: int) -> list[int]:
        if size <= self.tile:
            return [0]
        n = math.ceil((size - self.overlap) / (self.tile - self.overlap))
        return [4 * round(j * (size - self.tile) / (4 * (n - 1))) for j in range(n)]

    def windows(self) -> list[tuple[int, int, int, int]]:
        """(y0, y1, x0, x1) for each window, row-major."""
        th, tw = min(self.tile, self.height), min(self.tile, self.width)
        return [(y, y + th, x, x + tw) for y in self.starts(self.height) for x in self.starts(self.width)]

    def blend_weights(self, size: int, start: int, length: int) -> torch.Tensor:
        """1D feathering weights of one window: 0 within `margin` of an inner edge, then a linear ramp."""
        d = torch.arange(length, dtype=torch.float64) + 0.5
        ramp_len = max(self.overlap - 2 * self.margin, 1)
        w = torch.ones(length, dtype=torch.float64)
        if start > 0:
            w *= ((d - self.margin) / ramp_len).clamp(0, 1)
        if start + length < size:
            w *= ((length - d - self.margin) / ramp_len).clamp(0, 1)
        return w.float()

    def owned(self, size: int) -> list[tuple[int, int]]:
        """A partition of [0, size) into runs of multiples of 4, each run owned by the nearest window centre."""
        starts = self.starts(size)
        length = min(self.tile, size)
        centres = [s + length / 2 for s in starts]
        bounds = [0]
        for a, b in zip(centres, centres[1:], strict=False):
            bounds.append(int(4 * round((a + b) / 8)))
        bounds.append(size)
        return [(bounds[i], bounds[i + 1]) for i in range(len(starts))]


def balanced_tile(height: int, width: int, largest: int, overlap: int) -> int:
    """The smallest tile (multiple of 4, <= largest when possible) with as few windows as `largest` gives.

    Windows of the largest size that fits can cover far more than the image (6 windows of 2048 px over
    4000x3000 cover 25 MP); the same number of windows, each just large enough, covers the least.
    """
    largest = max(largest // 4 * 4, overlap + 8)
    tile = 8
    for size in (height, width):
        if size <= largest:
            tile = max(tile, _round_up(size, 4))
            continue
        n = math.ceil((size - overlap) / (largest - overlap))
        tile = max(tile, _round_up(math.ceil((size + (n - 1) * overlap) / n), 4))
    return min(tile, max(_round_up(height, 4), _round_up(width, 4)))


def covered_pixels(plan: TilePlan) -> int:
    return sum((b - a) * (d - c) for a, b, c, d in plan.windows())


# --- frozen statistics ---------------------------------------------------------------------------------------


def receptive_radius(generator: Generator) -> int:
    """A safe upper bound (input pixels) on how far the generator sees, with IN statistics frozen."""
    r, stride = 0.0, 1.0
    for m in generator.modules():
        if isinstance(m, nn.ConvTranspose2d):
            stride /= m.stride[0]
            r += (m.kernel_size[0] // 2 + 1) * stride
        elif isinstance(m, nn.Conv2d):
            r += (m.kernel_size[0] - 1) // 2 * m.dilation[0] * stride
            stride *= m.stride[0]
    return int(math.ceil(r)) + 4  # + one stride-4 cell for grid alignment


class _Stop(Exception):
    def __init__(self, x: torch.Tensor) -> None:
        self.x = x


def forward_with_stats(generator: Generator, x: torch.Tensor, stats: Stats, stop: int | None = None) -> torch.Tensor:
    """Run `generator` normalising IN layer k with the given (mean, var) per channel instead of its own.

    With `stop=k` (k <= len(stats)), return the input of IN layer k instead (used to gather its statistics).
    """
    try:
        out = run_modules(list(generator.model), x, stats, first=0, stop=stop)
    except _Stop as s:
        return s.x
    if generator.config.learn_residual:
        out = torch.clamp(x + out, -1.0, 1.0)
    return out


def run_modules(
    modules: Sequence[nn.Module], h: torch.Tensor, stats: Stats, first: int, stop: int | None = None
) -> torch.Tensor:
    """Run a slice of a generator's top-level modules with frozen IN statistics.

    `first` is the index of the first IN layer in the slice; reaching IN layer `stop` raises _Stop(input).
    """
    count = first

    def run(seq: Sequence[nn.Module], h: torch.Tensor) -> torch.Tensor:
        nonlocal count
        for m in seq:
            if isinstance(m, ResnetBlock):
                h = h + run(m.conv_block, h)
            elif isinstance(m, nn.InstanceNorm2d):
                if count == stop:
                    raise _Stop(h)
                mean, var = stats[count]
                count += 1
                h = frozen_norm(h, mean, var, m.eps)
            elif "InstanceNorm" in type(m).__name__:  # a fused kernel: cannot take frozen statistics
                raise DeblurGANError("global-statistics tiling needs torch IN layers (kernels='torch')")
            else:
                h = m(h)
        return h

    return run(modules, h)


def frozen_norm(h: torch.Tensor, mean: torch.Tensor, var: torch.Tensor, eps: float) -> torch.Tensor:
    """Instance norm with given per-channel statistics, in fp32 whatever the input's dtype."""
    h = h.float()
    out = h - mean.to(h)[None, :, None, None]  # one new tensor: the input and the output, as nn.InstanceNorm2d
    return out.mul_(torch.rsqrt(var.to(h) + eps)[None, :, None, None])


def count_instance_norms(generator: nn.Module) -> int:
    return sum(isinstance(m, nn.InstanceNorm2d) for m in generator.modules())


def torch_generator(generator: Generator) -> Generator:
    """`generator` itself if it uses torch IN layers, else a torch-kernel copy with the same weights."""
    if generator.config.kernels == "torch":
        return generator
    p = next(generator.parameters())
    copy = Generator(replace(generator.config, kernels="torch")).to(p.device, p.dtype)
    copy.load_state_dict(generator.state_dict())
    copy.train(generator.training)
    for a, b in zip(copy.modules(), generator.modules(), strict=True):
        a.training = b.training
    return copy


# --- the generator as a program of steps ---------------------------------------------------------------------


def generator_program(gen: Generator) -> list[_Op]:
    """The generator as a flat list of steps, so a window's state can be kept and resumed between any two."""
    ops: list[_Op] = []
    count = 0

    def walk(seq: Sequence[nn.Module]) -> None:
        nonlocal count
        for m in seq:
            if isinstance(m, ResnetBlock):
                ops.append(("push", None))
                walk(m.conv_block)
                ops.append(("add", None))
            elif isinstance(m, nn.InstanceNorm2d):
                ops.append(("norm", (count, m.eps)))
                count += 1
            elif "InstanceNorm" in type(m).__name__:  # a fused kernel: cannot take frozen statistics
                raise DeblurGANError("global-statistics tiling needs torch IN layers (kernels='torch')")
            else:
                ops.append(("mod", m))

    walk(gen.model)
    return ops


def run_program(ops: Sequence[_Op], state: _State, start: int, stop: int, stats: Stats) -> _State:
    """Run steps [start, stop) of a generator program with frozen IN statistics."""
    h, skips = state
    own = False  # whether h is this call's own temporary (an IN output), so later steps may work in place
    for kind, arg in ops[start:stop]:
        if kind == "mod" and own and type(arg) is nn.ReLU:
            h = torch.relu_(h)
        elif kind == "mod":
            h, own = arg(h), False  # type: ignore[operator]
        elif kind == "norm":
            k, eps = arg  # type: ignore[misc]
            h, own = frozen_norm(h, *stats[k], eps), True
        elif kind == "push":
            skips, own = (*skips, h), False
        else:
            h = h.add_(skips[-1]) if own else skips[-1] + h
            skips = skips[:-1]
    return h, skips


def program_geometry(ops: Sequence[_Op]) -> tuple[list[int], list[int]]:
    """Per step: the state's downsampling factor before it (plus one after the last step), and its reach.

    Reach: how many input pixels next to a cut a step spoils when the cut is padded instead of continued (its
    kernel's half-width at its own scale, rounded up to its output's pixel grid).
    """
    scale, reach = [1], []
    for kind, m in ops:
        s, r = scale[-1], 0
        if kind == "mod" and isinstance(m, nn.ConvTranspose2d):
            s = s // m.stride[0]
            r = (m.kernel_size[0] // 2 + 1) * s
        elif kind == "mod" and isinstance(m, nn.Conv2d):
            r = (m.kernel_size[0] - 1) // 2 * m.dilation[0] * s
            s = s * m.stride[0]
            r = _round_up(r, s)
        scale.append(s)
        reach.append(r)
    return scale, reach


def spoiled(scale: Sequence[int], reach: Sequence[int], start: int, stop: int) -> int:
    """Input pixels next to a cut that steps [start, stop) spoil together (the halo a band needs)."""
    g = 0
    for i in range(start, stop):
        g = _round_up(g + reach[i], scale[i + 1])
    return _round_up(g, 4)


class TorchProgram:
    """A generator program as steps for exact tiling: `run(state, start, stop, stats)`, `n_steps`, `norm_at`,
    and its geometry (`scale`, `reach`: see `program_geometry`), which lets a pass run in bands of rows."""

    def __init__(self, gen: Generator) -> None:
        self.ops = generator_program(gen)
        self.n_steps = len(self.ops)
        self.norm_at = [i for i, (kind, _) in enumerate(self.ops) if kind == "norm"]  # state before: IN k's input
        self.scale, self.reach = program_geometry(self.ops)

    def run(self, state: _State, start: int, stop: int, stats: Stats) -> _State:
        return run_program(self.ops, state, start, stop, stats)


# --- exact tiling ----------------------------------------------------------------------------------------------


class _Rows:
    """A N x C x h x w tensor kept as chunks of rows, so rows no longer needed can be freed early."""

    def __init__(self) -> None:
        self.chunks: list[tuple[int, torch.Tensor]] = []  # (first row, chunk)

    def append(self, row: int, t: torch.Tensor) -> None:
        self.chunks.append((row, t))

    def rows(self, a: int, b: int) -> torch.Tensor:
        spans = [(t, max(a, r) - r, min(b, r + t.shape[-2]) - r) for r, t in self.chunks]
        parts = [t[..., lo:hi, :] for t, lo, hi in spans if hi > lo]
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=-2)

    def free_before(self, row: int) -> None:
        self.chunks = [(r, t) for r, t in self.chunks if r + t.shape[-2] > row]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for _, t in self.chunks)


_Kept = tuple[_Rows, tuple[_Rows, ...]]  # a window's kept state: activation and open ResBlock inputs


def _kept_bytes(states: Sequence[_Kept | None]) -> int:
    seen: dict[int, int] = {}
    for s in states:
        if s is not None:
            for r in (s[0], *s[1]):
                seen[id(r)] = r.nbytes
    return sum(seen.values())


def _state_bytes(state: _State) -> int:
    seen: dict[int, int] = {}
    for t in (state[0], *state[1]):
        seen[t.data_ptr()] = t.numel() * t.element_size()
    return sum(seen.values())


class ExactTiles:
    """Windows with whole-image IN statistics, each pass run in bands of rows (see the module docstring).

    cache_budget: host bytes for kept window states (all windows; a state that does not fit is recomputed
    from an earlier one, or the input: the cost changes, never the numbers). band_budget: bytes of
    activations one band may take (None: a band is a whole window). state_cap: states larger than this many
    bytes per window pixel are never kept (the cheap full-resolution ones). work_cap: the model's peak bytes per
    pixel for a whole forward, which bounds a long run of steps' estimate (recomputing from the input).
    """

    def __init__(
        self,
        program,
        runner,
        x: torch.Tensor,
        plan: TilePlan,
        cache_budget: float,
        learn_residual: bool | None = None,
        state_cap: float | None = None,
        band_budget: float | None = None,
        work_cap: float | None = None,
    ) -> None:
        if isinstance(program, Generator):
            learn_residual = program.config.learn_residual if learn_residual is None else learn_residual
            program = TorchProgram(program)
        self.program, self.learn_residual = program, bool(learn_residual)
        self.runner, self.x, self.plan = runner, x, plan
        self.windows = plan.windows()
        self.n_steps = program.n_steps
        self.norm_at = list(program.norm_at)
        self.n_in = len(self.norm_at)
        self.budget = cache_budget
        self.band_budget = band_budget if getattr(program, "reach", None) is not None else None
        self.work_cap = work_cap  # bytes per pixel no run of steps exceeds (a whole forward's measured peak)
        self.step_bytes, self.work, self.shape_ok = self._dry_run()
        self.scale = list(getattr(program, "scale", None) or [1] * (self.n_steps + 1))
        self.reach = list(getattr(program, "reach", None) or [0] * self.n_steps)
        if state_cap is not None:  # states larger than this per window pixel are recomputed, never kept
            self.step_bytes = [b if b <= state_cap else math.inf for b in self.step_bytes]
        n = len(self.windows)
        self.pos = [0] * n  # per window: the program step its kept state is at (0: the input, not kept)
        self.state: list[_Kept | None] = [None] * n
        self.total_px = sum(self._window_px(j) for j in range(n))
        self.peak_cached = 0
        self.steps_run = 0  # program steps run over all windows and passes (a cost measure for tests)
        self.bands_run = 0
        self._scratch: torch.Tensor | None = None  # float64 buffer for the statistics

    def run(self) -> list[torch.Tensor]:
        """Every window's output (1 x 3 x h x w, float32, CPU), in window order."""
        return list(self.outputs())

    def outputs(self) -> Iterator[torch.Tensor]:
        """The windows' outputs one by one, each as soon as its last pass is done."""
        stats: list[tuple[torch.Tensor, torch.Tensor]] = []
        for k in range(self.n_in):
            stats.append(self._stats_of(k, stats))
        for j, (y0, y1, x0, x1) in enumerate(self.windows):
            out = torch.empty(1, 3, y1 - y0, x1 - x0)
            for r0, r1, h in self._sweep(j, self.n_steps, stats, keep=False):
                if self.learn_residual:
                    with torch.inference_mode(), _autocast(self.runner):
                        h = torch.clamp(self._input(j, r0, r1) + h, -1.0, 1.0)
                out[..., r0:r1, :] = h.float().cpu()
            self.state[j], self.pos[j] = None, 0
            yield out

    # -- costs

    def _dry_run(self) -> tuple[list[float], list[float], list[bool]]:
        """Per step, per window pixel, at 16x16: host bytes of the state before it (0 for the input, never
        kept), bytes the step allocates (its output; a transposed convolution's columns too), and whether
        the state there has the window's own size (not a padded one, so it can be kept in bands)."""
        size = 16
        x = torch.zeros(1, 3, size, size, device=self.runner.device)
        kept: list[float] = [0.0]
        work: list[float] = []
        ok = [True]
        state: _State = (x, ())
        stats: list[tuple[torch.Tensor, torch.Tensor]] = []
        ops = getattr(self.program, "ops", None)
        scale = getattr(self.program, "scale", None)
        with torch.inference_mode(), _autocast(self.runner):
            for i in range(self.n_steps):
                if i in self.norm_at:  # any statistics do for sizes: this window's own
                    h = state[0].double()
                    stats.append((h.mean((0, 2, 3)).float(), h.var((0, 2, 3), unbiased=False).float()))
                before = state[0]
                state = self.program.run(state, i, i + 1, stats)
                cols = 0
                if ops is not None and ops[i][0] == "mod" and isinstance(ops[i][1], nn.ConvTranspose2d):
                    m = ops[i][1]
                    cols = m.out_channels * m.kernel_size[0] * m.kernel_size[1] * before[0, 0].numel() * 4
                out = state[0]
                made = out.numel() * out.element_size() + cols
                if ops is None:  # an opaque segment (ONNX): a few tensors of its input's or output's size inside
                    made = 4 * max(made, before.numel() * before.element_size())
                work.append(made / (size * size))
                kept.append(_state_bytes(state) / (size * size))
                ok.append(scale is None or out.shape[-2] * scale[i + 1] == size)
        return kept, work, ok

    def _window_px(self, j: int) -> int:
        a, b, c, d = self.windows[j]
        return (b - a) * (d - c)

    def _bands(self, j: int, start: int, stop: int, halo: int) -> list[tuple[int, int]]:
        """Row ranges (window px, multiples of 4) that run one at a time, each within the band budget."""
        y0, y1, x0, x1 = self.windows[j]
        height, width = y1 - y0, x1 - x0
        if self.band_budget is None:
            return [(0, height)]
        made = sum(self.work[start:stop])  # everything the steps allocate, or at most a whole forward's peak
        per_px = 12 + self.step_bytes[start] + (made if self.work_cap is None else min(made, self.work_cap))
        rows = int(self.band_budget / (per_px * width)) - 2 * halo
        rows = max(4, min(height, rows // 4 * 4))
        n = math.ceil(height / rows)
        bounds = [4 * round(i * height / (4 * n)) for i in range(n + 1)]
        return [(a, b) for a, b in zip(bounds, bounds[1:], strict=False) if b > a]

    def _keep_step(self, j: int, start: int, stop: int, band_frac: float) -> int:
        """The furthest step <= stop whose state fits this window's share of the budget (start: none)."""
        px = self._window_px(j)
        room = self.budget * px / self.total_px  # every window's fair share: none falls back to its input
        old = self.step_bytes[start] * px * band_frac  # old rows still held while the new state is built
        for i in range(stop, start, -1):
            if self.shape_ok[i] and self.step_bytes[i] * px + old <= room:
                return i
        return start

    # -- passes

    def _input(self, j: int, r0: int, r1: int) -> torch.Tensor:
        y0, _, x0, x1 = self.windows[j]
        return self.x[..., y0 + r0 : y0 + r1, x0:x1].to(self.runner.device, self.runner.dtype)

    def _sweep(self, j: int, stop: int, stats: Stats, keep: bool) -> Iterator[tuple[int, int, torch.Tensor]]:
        """Run window j from its kept step to `stop`, band by band: yields (r0, r1, the state at `stop` for
        window rows r0:r1). With `keep`, the state at the furthest step <= stop that fits replaces the kept one."""
        start, old = self.pos[j], self.state[j]
        height = self.windows[j][1] - self.windows[j][0]
        halo = spoiled(self.scale, self.reach, start, stop) if self.band_budget is not None else 0
        bands = self._bands(j, start, stop, halo)
        longest = max(b - a for a, b in bands) + 2 * halo
        to = self._keep_step(j, start, stop, min(1.0, longest / height)) if keep else start
        fa, ft, fb = self.scale[start], self.scale[to], self.scale[stop]
        new: _Kept | None = None
        fresh: list[tuple[_Rows, int]] = []  # the new state's own tensors: (rows, -1 for h or skip index)
        dev = self.runner.device
        for n, (r0, r1) in enumerate(bands):
            s0, s1 = max(0, r0 - halo), min(height, r1 + halo)
            if old is None:
                state: _State = (self._input(j, s0, s1), ())
            else:
                cut = [r.rows(s0 // fa, s1 // fa).to(dev) for r in (old[0], *old[1])]
                state = (cut[0], tuple(cut[1:]))
            with torch.inference_mode(), _autocast(self.runner):
                if to > start:
                    skips_in = state[1]
                    state = self.program.run(state, start, to, stats)
                    if new is None:
                        new, fresh = _layout(state, skips_in, old)
                    for rows, i in fresh:
                        t = state[0] if i < 0 else state[1][i]
                        rows.append(r0 // ft, _keep(t[..., (r0 - s0) // ft : (r1 - s0) // ft, :]))
                state = self.program.run(state, to, stop, stats)
            self.bands_run += 1
            self.peak_cached = max(self.peak_cached, _kept_bytes([*self.state, new]))
            yield r0, r1, state[0][..., (r0 - s0) // fb : (r1 - s0) // fb, :]
            if new is not None and old is not None and n + 1 < len(bands):  # old rows no later band needs
                shared = {id(r) for r in (new[0], *new[1])}
                for r in (old[0], *old[1]):
                    if id(r) not in shared:
                        r.free_before(max(0, bands[n + 1][0] - halo) // fa)
        self.steps_run += stop - start
        if new is not None:
            self.state[j], self.pos[j] = new, to

    def _moments(self, part: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel mean and sum of squared deviations of C x h x w, in float64 (a few channels at a time
        through one reused buffer: no fresh float64 copy of the band)."""
        n = part.shape[1] * part.shape[2]
        if self._scratch is None or self._scratch.device != part.device:
            self._scratch = torch.empty(max(2**22, n), dtype=torch.float64, device=part.device)
        elif self._scratch.numel() < n:
            self._scratch = torch.empty(n, dtype=torch.float64, device=part.device)
        step = max(1, self._scratch.numel() // n)
        means, m2s = [], []
        for c in part.split(step):
            buf = self._scratch[: c.numel()].view(c.shape).copy_(c)
            var, mean = torch.var_mean(buf, dim=(1, 2), correction=0)
            means.append(mean.cpu())
            m2s.append(var.cpu() * n)
        return torch.cat(means), torch.cat(m2s)

    def _stats_of(self, k: int, stats: list) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, biased variance) of IN layer k's input over the image, from the pixels each window owns."""
        at = self.norm_at[k]
        rows, cols = self.plan.owned(self.plan.height), self.plan.owned(self.plan.width)
        nx = len(self.plan.starts(self.plan.width))
        count, mean, m2 = 0, None, None
        for j in range(len(self.windows)):
            y0, _, x0, _ = self.windows[j]
            (o0, o1), (c0, c1) = rows[j // nx], cols[j % nx]
            for r0, r1, act in self._sweep(j, at, stats, keep=True):
                a0, a1 = max(r0, o0 - y0), min(r1, o1 - y0)
                if a0 >= a1:
                    continue
                ff = (r1 - r0) // act.shape[-2]  # this layer's downsampling factor
                part = act[0, :, (a0 - r0) // ff : (a1 - r0) // ff, (c0 - x0) // ff : (c1 - x0) // ff].float()
                n_b = part.shape[1] * part.shape[2]
                mean_b, m2_b = self._moments(part)
                if mean is None:
                    count, mean, m2 = n_b, mean_b, m2_b
                else:  # Chan et al.'s pairwise update, in float64
                    total = count + n_b
                    delta = mean_b - mean
                    mean = mean + delta * (n_b / total)
                    m2 = m2 + m2_b + delta * delta * (count * n_b / total)
                    count = total
        return mean.float(), (m2 / count).clamp_min(0).float()


def _autocast(runner: object):  # -> a context manager
    """The runner's own autocast (torch runners), else none."""
    fn = getattr(runner, "autocast", None)
    return fn() if callable(fn) else autocast(getattr(runner, "device", "cpu"), "fp32")


def _layout(state: _State, skips_in: tuple[torch.Tensor, ...], old: _Kept | None) -> tuple[_Kept, list]:
    """A new kept state for `state`: ResBlock inputs carried over from the old state stay shared, the rest
    are new row chunks (returned with -1 for the activation or their skip index, to fill band by band)."""
    by_id: dict[int, _Rows] = {}
    if old is not None:
        by_id.update((id(t), r) for t, r in zip(skips_in, old[1], strict=True))
    fresh: list[tuple[_Rows, int]] = []

    def rows_of(t: torch.Tensor, i: int) -> _Rows:
        if id(t) not in by_id:
            by_id[id(t)] = _Rows()
            fresh.append((by_id[id(t)], i))
        return by_id[id(t)]

    skips = tuple(rows_of(t, i) for i, t in enumerate(state[1]))
    return (rows_of(state[0], -1), skips), fresh


def _keep(t: torch.Tensor) -> torch.Tensor:
    """A band's rows to keep on the host: a copy unless the view already is most of its tensor."""
    t = t.cpu()
    base = t._base if t._base is not None else t
    return t.clone() if t.numel() * 10 < base.numel() * 9 else t
