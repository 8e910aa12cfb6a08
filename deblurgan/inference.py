"""Deblurring images of any size and mode with any runner: padding, tiling with blended seams, modes.

    from deblurgan.inference import Deblurrer
    d = Deblurrer("model.pt")                       # Deblurrer() alone: the shipped model
    sharp = d.deblur(read_image("blurry.png"))      # uint8/uint16, gray/RGB/RGBA in -> same out

A *runner* (the `Runner` protocol) is a callable `runner(x) -> y` on N x 3 x H x W float tensors in [-1, 1]
(H, W: `SIZE_MULTIPLE` multiples, at least `MIN_SIZE`) on `runner.device`, with attributes `device`, `dtype`,
`max_batch` (None = any) and `name`. `TorchRunner` wraps a `Generator`; ONNX/AOTInductor/TensorRT runners live
in `export.runtime` and go through the same pre/post-processing here.

Precision (torch runner): "fp32", "bf16" (CPU or CUDA autocast) or "fp16" (CUDA autocast); "auto" is bf16 on
CPUs with native bf16 (AVX512-BF16 or AMX) and fp32 elsewhere. Instance norm always computes its statistics
and normalisation in fp32.

Tiling (`deblurgan.tiling`). An image whose activations do not fit the memory bound runs in pieces. With a torch
runner the default `tile_stats="global"` is exact: every instance-norm layer's statistics are gathered over the
whole image, layer by layer, and each pass runs in bands of rows cut from kept states (on CPU the whole image is
one window; `--tile`, per-tile statistics and CUDA use windows). `tile_stats="tile"` normalises each window by
itself: one pass, feathered seams, approximate.
"""

from __future__ import annotations

import ctypes
import math
import os
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .errors import DeblurGANError
from .networks import Generator
from .precision import autocast, resolve_precision
from .tiling import (  # noqa: F401  (count_instance_norms ... torch_generator: this module's names too)
    ExactTiles,
    TilePlan,
    TorchProgram,
    _autocast,
    _round_up,
    balanced_tile,
    count_instance_norms,
    covered_pixels,
    forward_with_stats,
    frozen_norm,
    generator_program,
    receptive_radius,
    run_modules,
    run_program,
    torch_generator,
)

CPU_MEMORY_BUDGET = 4 * 2**30  # default bound (4 GiB) of a job's host memory on CPU: activations, states, buffers
DEFAULT_TILE_OVERLAP = 32  # per-tile statistics: overlap of neighbouring tiles, blended linearly
LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601, as PIL's convert("L")
SIZE_MULTIPLE, MIN_SIZE = 4, 8  # what the generator takes: H, W multiples of 4 (two stride-2 levels), >= 8
RUNTIMES = ("torch", "onnx", "aoti", "tensorrt")  # inference runtimes (`export.runtime.load_runner`)
IMAGE_BYTES_PER_PIXEL = 41  # host buffers per image pixel besides the model (input, output, blending; measured)
ACTIVATION_BYTES_PER_CHANNEL = 18  # peak activation bytes per pixel per generator ngf channel, fp32 (measured)
STATE_BYTES_PER_CHANNEL = 2  # exact tiling: kept quarter-resolution states (activation + ResBlock input), fp32
BAND_BYTES_MAX = 2**30  # exact tiling: taller bands than this only save a few percent of recomputed halo


def size_ok(height: int, width: int) -> bool:
    """Whether the generator takes an H x W input as is (no padding needed)."""
    return height % SIZE_MULTIPLE == 0 and width % SIZE_MULTIPLE == 0 and min(height, width) >= MIN_SIZE


def size_rule() -> str:
    return f"H and W must be multiples of {SIZE_MULTIPLE} and >= {MIN_SIZE}"


# --- runners -----------------------------------------------------------------------------------------


@runtime_checkable
class Runner(Protocol):
    """What the Deblurrer runs: N x 3 x H x W float in [-1, 1] -> the same, on `device`."""

    device: torch.device
    dtype: torch.dtype
    max_batch: int | None
    name: str

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...


def check_input(x: torch.Tensor, runner: Runner) -> None:
    """Raise DeblurGANError for an input a runner cannot take (shape, size rule, batch)."""
    if x.ndim != 4 or x.shape[1] != 3:
        raise DeblurGANError(f"{runner.name}: expected N x 3 x H x W, got {tuple(x.shape)}")
    h, w = x.shape[-2:]
    if not size_ok(h, w):
        raise DeblurGANError(f"{runner.name}: {size_rule()}, got {h}x{w} (pad first)")
    if runner.max_batch is not None and x.shape[0] > runner.max_batch:
        raise DeblurGANError(f"{runner.name}: batch {x.shape[0]} > max_batch {runner.max_batch}")


class TorchRunner:
    """Run a `Generator` in PyTorch: eval mode, a precision (fp32, bf16, fp16; IN in fp32), test-time dropout.

    `fp16=True` is the older spelling of `precision="fp16"`.
    """

    def __init__(
        self,
        generator: Generator,
        device: str | torch.device = "cpu",
        fp16: bool = False,
        max_batch: int | None = None,
        test_time_dropout: bool = False,
        precision: str = "auto",
    ) -> None:
        self.device = resolve_device(device)
        if fp16:
            if precision not in ("auto", "fp16"):
                raise DeblurGANError(f"fp16=True contradicts precision {precision!r}")
            if self.device.type != "cuda":
                raise DeblurGANError("--fp16 needs a CUDA device (use fp32 or bf16 on CPU)")
            precision = "fp16"
        self.precision = resolve_precision(precision, self.device)
        self.dtype = torch.float32  # input dtype; bf16/fp16 run under autocast (instance norm stays fp32)
        self.max_batch = max_batch
        self.name = "torch" if self.precision == "fp32" else f"torch-{self.precision}"
        self.generator = generator.to(self.device).eval()
        set_test_time_dropout(self.generator, test_time_dropout)
        if self.precision != "fp32":
            keep_norms_fp32(self.generator)

    @property
    def fp16(self) -> bool:
        return self.precision == "fp16"

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike | None,
        device: str | torch.device = "cpu",
        fp16: bool = False,
        kernels: str | None = None,
        use_ema: bool = True,
        test_time_dropout: bool = False,
        max_batch: int | None = None,
        precision: str = "auto",
    ) -> TorchRunner:
        """The one way to open a checkpoint for inference (None: the shipped model)."""
        from .checkpoint import load_generator
        from .pretrained import resolve_checkpoint

        path = resolve_checkpoint(path)
        gen = load_generator(path, map_location="cpu", kernels=kernels, use_ema=use_ema, run_device=device)
        return cls(gen, device, fp16, max_batch=max_batch, test_time_dropout=test_time_dropout, precision=precision)

    def autocast(self):  # -> a context manager
        return autocast(self.device, self.precision)

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        with self.autocast():
            return self.generator(x.to(self.device, self.dtype)).float()


def _to_fp32(module: nn.Module, args: tuple) -> tuple:
    return tuple(a.float() if torch.is_tensor(a) else a for a in args)


def keep_norms_fp32(module: nn.Module) -> None:
    """Make every torch InstanceNorm2d take fp32 input, so its statistics are fp32 under bf16/fp16 autocast."""
    for m in module.modules():
        if isinstance(m, nn.InstanceNorm2d) and not getattr(m, "_deblurgan_fp32", False):
            m.register_forward_pre_hook(_to_fp32)
            m._deblurgan_fp32 = True


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


def pad_to_multiple(x: torch.Tensor, multiple: int = SIZE_MULTIPLE, minimum: int = MIN_SIZE) -> torch.Tensor:
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


def padded_size(height: int, width: int, multiple: int = SIZE_MULTIPLE, minimum: int = MIN_SIZE) -> tuple[int, int]:
    """The size `pad_to_multiple` pads an HxW image to."""
    return max(_round_up(height, multiple), minimum), max(_round_up(width, multiple), minimum)


# --- the deblurrer --------------------------------------------------------------------------------------


class Deblurrer:
    """Deblur numpy images of any size and mode with a checkpoint (torch), any runner, or the shipped model.

    precision: "auto" (bf16 on CPUs with native bf16, else fp32), "fp32", "bf16", "fp16" (CUDA); torch only.
    tile: window size in px (multiple of 4); None = automatic (tiles only when the image does not fit the
    memory bound: `max_memory` bytes of host memory on CPU, 4 GiB by default; 60% of free CUDA memory on GPU).
    overlap: px shared by neighbouring windows (multiple of 4); None = automatic (exact for global stats).
    tile_stats: "global" (exact, torch only) or "tile" (per-window IN, one pass).
    memory_budget / cache_budget: explicit bytes for activations / kept window states (override max_memory).
    """

    def __init__(
        self,
        checkpoint: str | os.PathLike | None = None,
        *,
        runner: object | None = None,
        device: str | torch.device = "cpu",
        fp16: bool = False,
        precision: str = "auto",
        batch_size: int = 4,
        tile: int | None = None,
        overlap: int | None = None,
        tile_stats: str = "global",
        max_memory: int | None = None,
        memory_budget: int | None = None,
        cache_budget: int | None = None,
        test_time_dropout: bool = False,
        seed: int | None = None,
        kernels: str | None = None,
        use_ema: bool = True,
    ) -> None:
        if checkpoint is not None and runner is not None:
            raise DeblurGANError("give either a checkpoint or a runner, not both")
        if max_memory is not None and max_memory <= 0:
            raise DeblurGANError(f"max_memory must be a positive number of bytes (got {max_memory})")
        if runner is None:
            runner = TorchRunner.from_checkpoint(
                None if checkpoint is None else Path(checkpoint),
                device,
                fp16,
                kernels=kernels,
                use_ema=use_ema,
                test_time_dropout=test_time_dropout,
                precision=precision,
            )
        else:
            if fp16 or precision not in ("auto", "fp32"):
                if precision not in ("auto", "fp32", "bf16", "fp16"):
                    resolve_precision(precision, "cpu")  # the one-line error for an unknown name
                if getattr(runner, "precision", None) != ("fp16" if fp16 else precision):
                    raise DeblurGANError(
                        f"precision {'fp16' if fp16 else precision} applies to the torch runtime; "
                        "an exported model's precision is set when it is exported"
                    )
            if test_time_dropout:
                if not isinstance(getattr(runner, "generator", None), nn.Module):
                    raise DeblurGANError("--test-time-dropout needs the torch runtime (exported models: no dropout)")
                set_test_time_dropout(runner.generator, True)
        self.runner = runner
        if tile is not None and (tile < MIN_SIZE or tile % SIZE_MULTIPLE):
            raise DeblurGANError(f"tile must be a multiple of {SIZE_MULTIPLE} and >= {MIN_SIZE} (got {tile})")
        if overlap is not None and (overlap < 0 or overlap % SIZE_MULTIPLE):
            raise DeblurGANError(f"overlap must be a non-negative multiple of {SIZE_MULTIPLE} (got {overlap})")
        if tile_stats not in ("global", "tile"):
            raise DeblurGANError(f"tile_stats must be 'global' or 'tile' (got {tile_stats!r})")
        if batch_size < 1:
            raise DeblurGANError(f"batch size must be >= 1 (got {batch_size})")
        self.generator = getattr(runner, "generator", None)
        if tile_stats == "global" and not self._exact_capable():
            tile_stats = "tile"  # plain exported graphs cannot take frozen statistics
        self.tile, self.overlap, self.tile_stats = tile, overlap, tile_stats
        self.batch_size = min(batch_size, getattr(runner, "max_batch", None) or batch_size)
        self.max_memory = max_memory
        self.memory_budget = memory_budget
        self.cache_budget = cache_budget
        self.test_time_dropout, self.seed = test_time_dropout, seed

    @property
    def precision(self) -> str:
        """The precision the runner computes in (exported runners: what their name says, fp32 when unsaid)."""
        return getattr(self.runner, "precision", "fp32")

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
        margin_needed = self._margin() if self.tile_stats == "global" else 0
        overlap = self.overlap
        if overlap is None:
            overlap = _round_up(2 * margin_needed + 8, 4) if self.tile_stats == "global" else DEFAULT_TILE_OVERLAP
        if tile is None:
            if self._fits(height, width, batch):
                return None
            tile = self._auto_tile(height, width, overlap)
            if height <= tile and width <= tile and not self._banded():
                return None
        elif height <= tile and width <= tile:
            return None
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

    def _auto_tile(self, height: int, width: int, overlap: int) -> int:
        """The window size for an image that does not fit whole.

        Exact tiling in bands on CPU: one window, the whole image (states that do not fit their share of the
        bound are recomputed from earlier ones). Otherwise: the whole activation budget for one window.
        """
        budget, per_px = self._budget(height, width), self._bytes_per_pixel()
        largest = max(8, int(math.sqrt(budget / per_px)))
        if not self._shares_host_memory():
            return balanced_tile(height, width, largest, overlap)
        ngf = self.generator.config.ngf if isinstance(self.generator, Generator) else 64
        state_px = STATE_BYTES_PER_CHANNEL * ngf
        if self._banded():  # bands bound the activations; more windows would only add overlap to keep
            return max(_round_up(height, 4), _round_up(width, 4))
        for candidate in range(largest // 4 * 4, overlap + 8, -32):  # whole windows: activations + states
            tile = balanced_tile(height, width, candidate, overlap)
            covered = covered_pixels(TilePlan(height, width, tile, overlap, 0))
            if min(tile, height) * min(tile, width) * per_px + covered * state_px <= budget:
                return tile
            if tile <= 2 * overlap + 8:
                break
        return balanced_tile(height, width, max(8, int(math.sqrt(budget / 2 / per_px))), overlap)

    def _banded(self) -> bool:
        """Exact tiling whose passes can run in bands of rows (the program knows each step's reach)."""
        if self.tile_stats != "global":
            return False
        if isinstance(self.generator, Generator):
            return True
        program = getattr(self.runner, "program", None)
        return callable(program) and getattr(program(), "reach", None) is not None

    def _exact_split(self, height: int, width: int) -> tuple[int, int]:
        """(kept states, one band's activations): the CPU bound's shares for exact tiling in bands."""
        total = self._budget(height, width)
        band = min(total // 3, BAND_BYTES_MAX)
        return total - band, band

    def _exact_capable(self) -> bool:
        """A torch generator, or a runner made of segments that take IN statistics (export.onnx_stats)."""
        return isinstance(self.generator, Generator) or callable(getattr(self.runner, "program", None))

    def _program(self) -> tuple[object, bool]:
        """The steps of exact tiling and whether the output adds the input (learn_residual)."""
        if isinstance(self.generator, Generator):
            gen = torch_generator(self.generator)
            return TorchProgram(gen), gen.config.learn_residual
        return self.runner.program(), bool(getattr(self.runner, "learn_residual", False))

    def _margin(self) -> int:
        if isinstance(self.generator, Generator):
            return receptive_radius(self.generator)
        return int(getattr(self.runner, "receptive_radius", 0))

    def _bytes_per_pixel(self) -> int:
        """Peak activation bytes per image pixel of one forward pass: the runner's own figure (exported runtimes),
        else the torch estimate (fp32 measurement; halved for fp16)."""
        own = getattr(self.runner, "bytes_per_pixel", None)
        if own:
            return int(own)
        ngf = self.generator.config.ngf if isinstance(self.generator, Generator) else 64
        per_channel = ACTIVATION_BYTES_PER_CHANNEL // 2 if self.precision == "fp16" else ACTIVATION_BYTES_PER_CHANNEL
        return ngf * per_channel

    def _fits(self, height: int, width: int, batch: int) -> bool:
        return height * width * self._bytes_per_pixel() * batch <= self._budget(height, width)

    def _shares_host_memory(self) -> bool:
        """Whether activations and kept window states share one host-memory bound (CPU, exact tiling)."""
        return (
            self.memory_budget is None
            and self.tile_stats == "global"
            and torch.device(getattr(self.runner, "device", "cpu")).type == "cpu"
        )

    def _budget(self, height: int = 0, width: int = 0) -> int:
        """Bytes of activations allowed for one forward pass over an HxW image."""
        if self.memory_budget is not None:
            return self.memory_budget
        dev = torch.device(getattr(self.runner, "device", "cpu"))
        if dev.type == "cuda":
            free, _ = torch.cuda.mem_get_info(dev)
            return int(free * 0.6)
        return max(self._host_bound() - IMAGE_BYTES_PER_PIXEL * height * width, 0)

    def _host_bound(self) -> int:
        """Host bytes this job may add to the process's current resident memory."""
        bound = self.max_memory if self.max_memory is not None else CPU_MEMORY_BUDGET
        return max(bound - resident_memory(), bound // 8)

    def _exact_budgets(self, plan: TilePlan) -> tuple[int, int | None]:
        """(bytes for kept window states, bytes for one band's activations) of exact tiling."""
        shared = self._shares_host_memory()
        states, band = self._exact_split(plan.height, plan.width) if shared else (0, self._budget())
        if self.cache_budget is not None:
            states = self.cache_budget
        elif self.memory_budget is not None and self.max_memory is None:
            states = available_memory() // 2
        elif not shared:  # activations elsewhere (GPU): the host bound is the states'
            states = max(self._host_bound() - IMAGE_BYTES_PER_PIXEL * plan.height * plan.width, 0)
        if not self._banded():
            band = None
        return states, band

    def _window_batch(self, plan: TilePlan) -> int:
        """Windows per forward pass: at most batch_size, and only as many as the memory budget holds."""
        share = self._budget(plan.height, plan.width) // (2 if self._shares_host_memory() else 1)
        fits = share // max(1, min(plan.tile, plan.height) * min(plan.tile, plan.width) * self._bytes_per_pixel())
        return max(1, min(self.batch_size, int(fits)))

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            y = self.runner(x.to(self.runner.device, self.runner.dtype))
        return y.float().cpu()

    def _run_tiled(self, x: torch.Tensor, plan: TilePlan) -> torch.Tensor:
        windows = plan.windows()
        return_freed_memory()
        if self.tile_stats == "global":
            states, band = self._exact_budgets(plan)
            program, residual = self._program()
            ngf = self.generator.config.ngf if isinstance(self.generator, Generator) else 64
            cap = STATE_BYTES_PER_CHANNEL * ngf  # the quarter-resolution states; full-resolution ones are cheap to redo
            work_cap = self._bytes_per_pixel()
            tiles = ExactTiles(program, self.runner, x, plan, states, residual, cap, band, work_cap)
            outs = tiles.outputs()
            if len(windows) == 1:
                return next(outs)  # the whole image: nothing to blend
        else:
            bs = self._window_batch(plan)
            outs = (
                o
                for i in range(0, len(windows), bs)
                for o in self._run(torch.cat([x[..., a:b, c:d] for a, b, c, d in windows[i : i + bs]])).split(1)
            )
        acc = torch.zeros(1, 3, plan.height, plan.width)
        wsum = torch.zeros(1, 1, plan.height, plan.width)
        for (y0, y1, x0, x1), o in zip(windows, outs, strict=True):
            wy = plan.blend_weights(plan.height, y0, y1 - y0)
            wx = plan.blend_weights(plan.width, x0, x1 - x0)
            wt = wy[:, None] * wx[None, :]
            acc[..., y0:y1, x0:x1] += o * wt
            wsum[0, 0, y0:y1, x0:x1] += wt
        return acc.div_(wsum.clamp_min_(1e-12))


_M_MMAP_THRESHOLD = -3  # glibc mallopt parameter
_mmap_threshold_set = False


def return_freed_memory() -> None:
    """glibc: serve allocations of 4 MiB and more with mmap, so freed window states leave the process at once.

    With glibc's default (a threshold that grows up to 32 MiB as large blocks are freed) the per-window
    tensors of exact tiling stayed in the heap: one run peaked at 2.10 GB resident where 1.35 GB were live
    (measured, 1600x1200, 1.5 GiB bound). Process-wide and only on Linux with glibc; elsewhere nothing changes.
    """
    global _mmap_threshold_set
    if _mmap_threshold_set or not sys.platform.startswith("linux"):
        return
    _mmap_threshold_set = True
    try:
        ctypes.CDLL("libc.so.6").mallopt(_M_MMAP_THRESHOLD, 4 * 2**20)
    except (OSError, AttributeError):
        pass


def available_memory() -> int:
    """Bytes of host memory currently available (Linux; 8 GiB assumed elsewhere)."""
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 8 * 2**30


def resident_memory() -> int:
    """Resident bytes of this process (Linux /proc; 0 where unknown)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError, AttributeError):
        return 0
