"""Deblurring images of any size and mode with any runner: padding, tiling with blended seams, modes.

    from deblurgan.inference import Deblurrer
    d = Deblurrer("model.pt", device="cuda", fp16=True)
    sharp = d.deblur(read_image("blurry.png"))      # uint8/uint16, gray/RGB/RGBA in -> same out

A *runner* is a callable `runner(x) -> y` on N x 3 x H x W float tensors in [-1, 1] (H, W multiples of 4)
on `runner.device`, with attributes `device`, `dtype`, `max_batch` (None = any) and `name`. `TorchRunner`
wraps a `Generator`; ONNX/AOTInductor/TensorRT runners live in `export.runtime` and go through the same
pre/post-processing here.

Tiling. Instance norm normalises by per-image statistics, so cutting an image into tiles and normalising
each tile by itself changes the result (mildly, but visibly at seams on non-uniform images). With a torch
runner the default `tile_stats="global"` is exact instead: the statistics of every IN layer are computed
over the whole image, layer after layer, from tiles (pass k runs each tile up to IN layer k with the
statistics of layers < k already frozen, and accumulates sums over the part of the tile it owns), and then
a final pass runs every tile with all statistics frozen. With frozen statistics the generator is a local
operator whose reach is its receptive field, so a tile whose context margin covers the receptive field
gives exactly the untiled values there (up to float rounding). Tile states are kept in host memory between
passes when they fit (`cache_budget`), so each pass starts at the module holding its IN layer rather than
at the input: about 2x the work of one pass over the tiles (12x without the cache). `tile_stats="tile"`
(the only choice for non-torch runners) normalises each tile by itself: one pass, feathered seams,
approximate.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .errors import DeblurGANError
from .networks import Generator, ResnetBlock

CPU_MEMORY_BUDGET = 4 * 2**30  # bytes of activations allowed on CPU before tiling kicks in
DEFAULT_TILE_OVERLAP = 32  # per-tile statistics: overlap of neighbouring tiles, blended linearly
LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601, as PIL's convert("L")


# --- runners -----------------------------------------------------------------------------------------


class TorchRunner:
    """Run a `Generator` in PyTorch: eval mode, optional fp16 (CUDA autocast) and test-time dropout."""

    def __init__(
        self,
        generator: Generator,
        device: str | torch.device = "cpu",
        fp16: bool = False,
        max_batch: int | None = None,
        test_time_dropout: bool = False,
    ) -> None:
        self.device = resolve_device(device)
        if fp16 and self.device.type != "cuda":
            raise DeblurGANError("--fp16 needs a CUDA device (use fp32 on CPU)")
        self.fp16 = fp16
        self.dtype = torch.float32  # input dtype; fp16 runs under autocast (instance norm stays fp32)
        self.max_batch = max_batch
        self.name = "torch-fp16" if fp16 else "torch"
        self.generator = generator.to(self.device).eval()
        set_test_time_dropout(self.generator, test_time_dropout)

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike,
        device: str | torch.device = "cpu",
        fp16: bool = False,
        kernels: str | None = None,
        use_ema: bool = True,
        test_time_dropout: bool = False,
        max_batch: int | None = None,
    ) -> TorchRunner:
        from .checkpoint import load_generator

        gen = load_generator(path, map_location="cpu", kernels=kernels, use_ema=use_ema)
        return cls(gen, device, fp16, max_batch=max_batch, test_time_dropout=test_time_dropout)

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        with _autocast(self):
            return self.generator(x.to(self.device, self.dtype)).float()


def _autocast(runner: object) -> torch.autocast:
    dev = torch.device(getattr(runner, "device", "cpu"))
    return torch.autocast(dev.type, dtype=torch.float16, enabled=bool(getattr(runner, "fp16", False)))


def resolve_device(device: str | torch.device) -> torch.device:
    """A torch.device, with a clear error when CUDA is asked for but absent."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise DeblurGANError(f"unknown device {device!r} (use cpu or cuda)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DeblurGANError("CUDA was requested but is not available (use --device cpu)")
    return dev


def set_test_time_dropout(module: nn.Module, enabled: bool) -> None:
    """Keep Dropout layers in train mode (the paper's pix2pix-style inference) or eval mode."""
    for m in module.modules():
        if isinstance(m, nn.Dropout):
            m.train(enabled)


# --- image <-> tensor ----------------------------------------------------------------------------------


@dataclass
class _Mode:
    dtype: np.dtype
    gray: bool  # input was HxW or HxWx1
    squeeze: bool  # input was HxW (not HxWx1)
    alpha: np.ndarray | None


def image_to_tensor(image: np.ndarray) -> tuple[torch.Tensor, _Mode]:
    """uint8/uint16/float([0,1]) gray, RGB or RGBA -> 1x3xHxW float32 in [-1, 1], plus what restores it."""
    image = np.asarray(image)
    if image.dtype == np.uint8:
        scale = 255.0
    elif image.dtype == np.uint16:
        scale = 65535.0
    elif image.dtype in (np.float32, np.float64):
        scale = 1.0
    else:
        raise DeblurGANError(f"unsupported pixel type {image.dtype} (use uint8, uint16 or float in [0, 1])")
    squeeze = image.ndim == 2
    if squeeze:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4) or min(image.shape[:2]) < 1:
        raise DeblurGANError(f"expected an HxW, HxWx1, HxWx3 or HxWx4 image, got shape {image.shape}")
    alpha = image[:, :, 3].copy() if image.shape[2] == 4 else None
    rgb = image[:, :, :3] if image.shape[2] >= 3 else np.repeat(image, 3, axis=2)
    x = torch.from_numpy(np.array(rgb, dtype=np.float32)).permute(2, 0, 1)[None]  # a copy: scaled in place
    x.mul_(2.0 / scale).sub_(1.0)
    mode = _Mode(image.dtype, gray=image.shape[2] == 1, squeeze=squeeze, alpha=alpha)
    return x, mode


def tensor_to_image(y: torch.Tensor, mode: _Mode, squeeze: bool) -> np.ndarray:
    """Inverse of image_to_tensor for one image (1x3xHxW or 3xHxW in [-1, 1])."""
    y = y[0] if y.ndim == 4 else y
    rgb = y.float().cpu().clamp(-1, 1).add_(1.0).mul_(0.5).permute(1, 2, 0).numpy()  # one new buffer, in place
    if mode.gray:
        out = rgb @ np.asarray(LUMA, dtype=np.float32)
        out = out if squeeze else out[:, :, None]
    else:
        out = rgb
    if mode.dtype == np.uint8 or mode.dtype == np.uint16:
        scale = 255.0 if mode.dtype == np.uint8 else 65535.0
        np.multiply(out, scale, out=out)
        np.rint(out, out=out)
        out = np.clip(out, 0, scale, out=out).astype(mode.dtype)
    else:
        out = out.astype(mode.dtype)
    if mode.alpha is not None:
        out = np.concatenate([out, mode.alpha[:, :, None]], axis=2)
    return out


def pad_to_multiple(x: torch.Tensor, multiple: int = 4, minimum: int = 8) -> torch.Tensor:
    """Reflect-pad bottom/right so H and W are multiples of `multiple` (and >= `minimum`).

    Falls back to edge replication for images too small to reflect. Crop back with `[..., :H, :W]`.
    """
    h, w = x.shape[-2:]
    th, tw = padded_size(h, w, multiple, minimum)
    ph, pw = th - h, tw - w
    if ph == 0 and pw == 0:
        return x
    mode = "reflect" if ph < h and pw < w else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode)


def padded_size(height: int, width: int, multiple: int = 4, minimum: int = 8) -> tuple[int, int]:
    """The size `pad_to_multiple` pads an HxW image to."""
    return max(_round_up(height, multiple), minimum), max(_round_up(width, multiple), minimum)


def _round_up(v: int, m: int) -> int:
    return -(-v // m) * m


# --- tiling ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TilePlan:
    """Windows of `tile` px stepping with at least `overlap` px of overlap over a padded HxW image.

    `margin`: pixels next to an inner window edge that are not trusted (weight 0 when blending).
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


def forward_with_stats(
    generator: Generator, x: torch.Tensor, stats: Sequence[tuple[torch.Tensor, torch.Tensor]], stop: int | None = None
) -> torch.Tensor:
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
    modules: Sequence[nn.Module],
    h: torch.Tensor,
    stats: Sequence[tuple[torch.Tensor, torch.Tensor]],
    first: int,
    stop: int | None = None,
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
                h = (h - mean.to(h)[None, :, None, None]) * torch.rsqrt(var.to(h) + m.eps)[None, :, None, None]
            elif "InstanceNorm" in type(m).__name__:  # a fused kernel: cannot take frozen statistics
                raise DeblurGANError("global-statistics tiling needs torch IN layers (kernels='torch')")
            else:
                h = m(h)
        return h

    return run(modules, h)


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


# --- the deblurrer --------------------------------------------------------------------------------------


class Deblurrer:
    """Deblur numpy images of any size and mode with a checkpoint (torch) or any runner.

    tile: window size in px (multiple of 4); None = automatic (tiles only when the estimated activation
    memory exceeds `memory_budget` bytes: free CUDA memory x 0.6, or 4 GiB on CPU).
    overlap: px shared by neighbouring windows (multiple of 4); None = automatic (exact for global stats).
    tile_stats: "global" (exact, torch only) or "tile" (per-window IN, one pass).
    """

    def __init__(
        self,
        checkpoint: str | os.PathLike | None = None,
        *,
        runner: object | None = None,
        device: str | torch.device = "cpu",
        fp16: bool = False,
        batch_size: int = 4,
        tile: int | None = None,
        overlap: int | None = None,
        tile_stats: str = "global",
        memory_budget: int | None = None,
        cache_budget: int | None = None,
        test_time_dropout: bool = False,
        seed: int | None = None,
        kernels: str | None = None,
        use_ema: bool = True,
    ) -> None:
        if (checkpoint is None) == (runner is None):
            raise DeblurGANError("give either a checkpoint or a runner")
        if runner is None:
            runner = TorchRunner.from_checkpoint(
                Path(checkpoint), device, fp16, kernels=kernels, use_ema=use_ema, test_time_dropout=test_time_dropout
            )
        elif test_time_dropout:
            if not isinstance(getattr(runner, "generator", None), nn.Module):
                raise DeblurGANError("--test-time-dropout needs the torch backend (exported models have no dropout)")
            set_test_time_dropout(runner.generator, True)
        self.runner = runner
        if tile is not None and (tile < 8 or tile % 4):
            raise DeblurGANError(f"tile must be a multiple of 4 and >= 8 (got {tile})")
        if overlap is not None and (overlap < 0 or overlap % 4):
            raise DeblurGANError(f"overlap must be a non-negative multiple of 4 (got {overlap})")
        if tile_stats not in ("global", "tile"):
            raise DeblurGANError(f"tile_stats must be 'global' or 'tile' (got {tile_stats!r})")
        if batch_size < 1:
            raise DeblurGANError(f"batch size must be >= 1 (got {batch_size})")
        self.generator = getattr(runner, "generator", None)
        if tile_stats == "global" and not isinstance(self.generator, Generator):
            tile_stats = "tile"  # exported graphs cannot take frozen statistics
        self.tile, self.overlap, self.tile_stats = tile, overlap, tile_stats
        self.batch_size = min(batch_size, getattr(runner, "max_batch", None) or batch_size)
        self.memory_budget = memory_budget
        self.cache_budget = cache_budget  # None: half of the host memory available when a job runs
        self.test_time_dropout, self.seed = test_time_dropout, seed

    # -- public API

    def deblur(self, image: np.ndarray) -> np.ndarray:
        """One image (uint8/uint16/float, HxW, HxWx1, HxWx3 or HxWx4) -> the deblurred image, same mode."""
        return self.deblur_batch([image])[0]

    def deblur_batch(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Several images; equal sizes run together in batches of `batch_size`."""
        converted = [image_to_tensor(im) for im in images]
        out: list[np.ndarray | None] = [None] * len(images)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, (x, _) in enumerate(converted):
            groups.setdefault(tuple(x.shape[-2:]), []).append(i)
        for idx in groups.values():
            xs = [converted[i][0] for i in idx]
            y = self.deblur_tensor(xs[0] if len(xs) == 1 else torch.cat(xs))
            for j, i in enumerate(idx):
                mode = converted[i][1]
                out[i] = tensor_to_image(y[j], mode, mode.squeeze)
        return out  # type: ignore[return-value]

    def deblur_tensor(self, x: torch.Tensor) -> torch.Tensor:
        """N x 3 x H x W float in [-1, 1], any H and W -> same shape (float32, CPU)."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise DeblurGANError(f"expected an N x 3 x H x W tensor, got {tuple(x.shape)}")
        h, w = x.shape[-2:]
        xp = pad_to_multiple(x.float().cpu())
        bs = min(len(xp), self.batch_size)
        while bs > 1 and not self._fits(*xp.shape[-2:], batch=bs):
            bs //= 2  # a smaller batch of whole images beats tiling each of them
        plan = self.plan(*xp.shape[-2:], batch=bs)
        if self.test_time_dropout and self.seed is not None:
            torch.manual_seed(self.seed)
        if plan is None:
            outs = [self._run(xp[i : i + bs]) for i in range(0, len(xp), bs)]
            y = torch.cat(outs)
        else:
            y = torch.cat([self._run_tiled(xp[i : i + 1], plan) for i in range(len(xp))])
        return y[..., :h, :w]

    def plan(self, height: int, width: int, batch: int = 1) -> TilePlan | None:
        """The tiling used for a padded HxW image, or None when it runs whole."""
        tile = self.tile
        if tile is None:
            if self._fits(height, width, batch):
                return None
            tile = max(8, int(math.sqrt(self._budget() / self._bytes_per_pixel())) // 4 * 4)
        if height <= tile and width <= tile:
            return None
        margin_needed = self._margin() if self.tile_stats == "global" else 0
        overlap = self.overlap
        if overlap is None:
            overlap = _round_up(2 * margin_needed + 8, 4) if self.tile_stats == "global" else DEFAULT_TILE_OVERLAP
        if self.tile_stats == "global":
            if overlap < 2 * margin_needed + 8:
                warnings.warn(
                    f"overlap {overlap} is below {2 * margin_needed + 8} px (twice the receptive field): "
                    "tiles will not match the untiled result exactly",
                    stacklevel=2,
                )
            margin = min(margin_needed, max((overlap - 1) // 2, 0))
        else:
            margin = overlap // 4
        if tile < overlap + 8:
            if self.tile is not None:
                raise DeblurGANError(f"tile {tile} is too small for an overlap of {overlap} px (use >= {overlap + 8})")
            tile = 2 * overlap + 8  # automatic: spend at most half of each window on overlap
        return TilePlan(height, width, tile, overlap, margin)

    # -- internals

    def _margin(self) -> int:
        return receptive_radius(self.generator) if isinstance(self.generator, Generator) else 0

    def _bytes_per_pixel(self) -> int:
        ngf = self.generator.config.ngf if isinstance(self.generator, Generator) else 64
        itemsize = 2 if getattr(self.runner, "fp16", False) else 4
        return ngf * itemsize * 4  # ~3 live full-resolution activations of ngf channels, plus slack

    def _fits(self, height: int, width: int, batch: int) -> bool:
        return height * width * self._bytes_per_pixel() * batch <= self._budget()

    def _budget(self) -> int:
        return self.memory_budget if self.memory_budget is not None else self._default_budget()

    def _default_budget(self) -> int:
        dev = torch.device(getattr(self.runner, "device", "cpu"))
        if dev.type == "cuda":
            free, _ = torch.cuda.mem_get_info(dev)
            return int(free * 0.6)
        return CPU_MEMORY_BUDGET

    def _window_batch(self, plan: TilePlan) -> int:
        """Windows per forward pass: at most batch_size, and only as many as the memory budget holds."""
        fits = self._budget() // max(
            1, min(plan.tile, plan.height) * min(plan.tile, plan.width) * self._bytes_per_pixel()
        )
        return max(1, min(self.batch_size, int(fits)))

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            y = self.runner(x.to(self.runner.device, self.runner.dtype))
        return y.float().cpu()

    def _run_tiled(self, x: torch.Tensor, plan: TilePlan) -> torch.Tensor:
        windows = plan.windows()
        bs = self._window_batch(plan)
        if self.tile_stats == "global":
            budget = self.cache_budget if self.cache_budget is not None else available_memory() // 2
            outs = _ExactTiles(torch_generator(self.generator), self.runner, x, plan, bs, budget).run()
        else:
            outs = (
                self._run(torch.cat([x[..., a:b, c:d] for a, b, c, d in windows[i : i + bs]]))
                for i in range(0, len(windows), bs)
            )
        acc = torch.zeros(1, 3, plan.height, plan.width)
        wsum = torch.zeros(1, 1, plan.height, plan.width)
        for (y0, y1, x0, x1), o in zip(windows, (o for batch in outs for o in batch), strict=True):
            wy = plan.blend_weights(plan.height, y0, y1 - y0)
            wx = plan.blend_weights(plan.width, x0, x1 - x0)
            wt = wy[:, None] * wx[None, :]
            acc[0, :, y0:y1, x0:x1] += o * wt
            wsum[0, 0, y0:y1, x0:x1] += wt
        return acc.div_(wsum.clamp_min_(1e-12))


def available_memory() -> int:
    """Bytes of host memory currently available (Linux; 8 GiB assumed elsewhere)."""
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 8 * 2**30


class _ExactTiles:
    """Tiles with whole-image IN statistics, gathered layer by layer (see the module docstring).

    Pass k runs every window up to IN layer k. To avoid re-running the whole prefix each time, the windows'
    states at the start of the top-level module that holds IN layer k are kept in host memory when they fit
    in `cache_budget` bytes (quarter-resolution ResBlock inputs are cheap: 1/16 of the pixels), so a pass
    starts from there. Caching changes the cost, never the numbers.
    """

    def __init__(self, gen: Generator, runner, x: torch.Tensor, plan: TilePlan, bs: int, cache_budget: int) -> None:
        self.gen, self.runner, self.x, self.plan, self.bs = gen, runner, x, plan, bs
        self.windows = plan.windows()
        self.modules = list(gen.model)
        self.first_in = []  # index of the first IN layer in each top-level module (and one past the end)
        n = 0
        for m in self.modules:
            self.first_in.append(n)
            n += count_instance_norms(m)
        self.first_in.append(n)
        self.n_in = n
        self.budget = cache_budget
        self.shapes = _boundary_shapes(gen)
        self.cache: list[torch.Tensor] | None = None  # per window, the input of module `cache_at`
        self.cache_at = 0

    def run(self) -> list[torch.Tensor]:
        stats: list[tuple[torch.Tensor, torch.Tensor]] = []
        for k in range(self.n_in):
            module = max(j for j in range(len(self.modules)) if self.first_in[j] <= k and self.first_in[j + 1] > k)
            stats.append(self._stats_of(k, module, stats))
        outs = []
        for chunk in self._chunks():
            with torch.inference_mode(), _autocast(self.runner):
                h = run_modules(self.modules[self.cache_at :], self._state(chunk), stats, self.first_in[self.cache_at])
                if self.gen.config.learn_residual:
                    h = torch.clamp(self._input(chunk) + h, -1.0, 1.0)
            outs.append(h.float().cpu())
        return outs

    def _chunks(self) -> list[list[int]]:
        idx = list(range(len(self.windows)))
        return [idx[i : i + self.bs] for i in range(0, len(idx), self.bs)]

    def _input(self, chunk: list[int]) -> torch.Tensor:
        batch = torch.cat([self.x[..., a:b, c:d] for a, b, c, d in (self.windows[j] for j in chunk)])
        return batch.to(self.runner.device, self.runner.dtype)

    def _state(self, chunk: list[int]) -> torch.Tensor:
        if self.cache is None:
            return self._input(chunk)
        return torch.cat([self.cache[j] for j in chunk]).to(self.runner.device)

    def _cache_bytes(self, module: int) -> int:
        channels, stride = self.shapes[module]
        itemsize = 2 if getattr(self.runner, "fp16", False) else 4
        px = sum((b - a) * (d - c) for a, b, c, d in self.windows) / (stride * stride)
        return int(channels * px * itemsize)

    def _stats_of(self, k: int, module: int, stats: list) -> tuple[torch.Tensor, torch.Tensor]:
        advance = module > self.cache_at and self._cache_bytes(module) <= self.budget
        new_cache: list[torch.Tensor] = []
        rows, cols = self.plan.owned(self.plan.height), self.plan.owned(self.plan.width)
        nx = len(self.plan.starts(self.plan.width))
        s1 = s2 = None
        n = 0
        for chunk in self._chunks():
            with torch.inference_mode(), _autocast(self.runner):
                h = self._state(chunk)
                start = self.cache_at
                if advance:
                    h = run_modules(self.modules[start:module], h, stats, self.first_in[start])
                    new_cache += list(h.cpu().split(1))
                    start = module
                try:
                    run_modules(self.modules[start:], h, stats, self.first_in[start], stop=k)
                    raise AssertionError("IN layer not reached")  # pragma: no cover
                except _Stop as s:
                    act = s.x
            for j, a in zip(chunk, act, strict=True):
                y0, y1, x0, _ = self.windows[j]
                (r0, r1), (c0, c1) = rows[j // nx], cols[j % nx]
                f = (y1 - y0) // a.shape[-2]  # this layer's downsampling factor
                part = a[:, (r0 - y0) // f : (r1 - y0) // f, (c0 - x0) // f : (c1 - x0) // f].double()
                ps1, ps2 = part.sum(dim=(1, 2)), (part * part).sum(dim=(1, 2))
                s1, s2 = (ps1, ps2) if s1 is None else (s1 + ps1, s2 + ps2)
                n += part.shape[1] * part.shape[2]
        if advance:
            self.cache, self.cache_at = new_cache, module
        mean = s1 / n
        var = (s2 / n - mean * mean).clamp_min(0)
        return mean.float(), var.float()


def _boundary_shapes(gen: Generator) -> list[tuple[int, int]]:
    """(channels, stride) of the tensor entering each top-level module of the generator."""
    shapes, c, s = [], gen.config.in_channels, 1.0
    for m in gen.model:
        shapes.append((c, max(int(s), 1)))
        for sub in m.modules():
            if isinstance(sub, nn.ConvTranspose2d):
                c, s = sub.out_channels, s / sub.stride[0]
            elif isinstance(sub, nn.Conv2d):
                c, s = sub.out_channels, s * sub.stride[0]
    return shapes
