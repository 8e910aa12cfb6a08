"""The checkpoint format, atomic writes, and strict loading (ours and the authors' release).

Format (a dict, saved with `torch.save`, read with `torch.load(weights_only=True)`):

    format          "deblurgan-engine"
    format_version  1
    generator       generator state dict (float tensors)
    generator_config  GeneratorConfig as a dict
    critic, critic_config        optional (training checkpoints)
    ema             optional EMA generator state dict (preferred for inference when present)
    train_state     optional: step, epoch, optimizer/scheduler states, RNG states, best metric ...
    config          optional: the resolved training config (plain dict)
    versions        {"deblurgan": ..., "torch": ...}

Only plain containers, numbers, strings and tensors are stored, so `weights_only=True` loads it.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import torch

from .config import GeneratorConfig, config_from_dict, config_to_dict
from .errors import CheckpointError
from .fsutil import atomic_path
from .networks import Generator

FORMAT = "deblurgan-engine"
FORMAT_VERSION = 1


def versions() -> dict[str, str]:
    from . import __version__

    return {"deblurgan": str(__version__), "torch": str(torch.__version__)}


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """torch.save to a temp file in the same folder, fsync, then rename over `path`.

    A crash at any moment leaves either the old file or the new one, never a partial file.
    """
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)
    return Path(path)


def make_checkpoint(generator: Generator, **extra: Any) -> dict:
    """A checkpoint dict for `generator` plus optional fields (critic, ema, train_state, config)."""
    ckpt = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "generator": _cpu_state(generator),
        "generator_config": config_to_dict(generator.config),
        "versions": versions(),
    }
    ckpt.update(extra)
    return ckpt


def _cpu_state(module: torch.nn.Module) -> dict:
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


def save_generator(generator: Generator, path: str | os.PathLike, **extra: Any) -> Path:
    return atomic_save(make_checkpoint(generator, **extra), path)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Read any checkpoint file safely (weights_only) with a clear error for bad files."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # any failure to unpickle means a bad file, whatever torch raised
        raise CheckpointError(f"{path}: not a readable checkpoint ({_why_unreadable(e)})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict checkpoint, found {type(obj).__name__}")
    return obj


def _why_unreadable(e: Exception) -> str:
    """A short reason for a failed safe load; never torch's hint to load unsafely."""
    text = str(e)
    if "zip archive" in text or "central directory" in text or isinstance(e, EOFError):
        return "truncated or corrupt file"
    if isinstance(e, pickle.UnpicklingError) or "weights_only" in text or "Weights only" in text:
        return "not a PyTorch checkpoint, or one holding Python objects beyond tensors and plain containers"
    return f"{type(e).__name__}; expected a file written by torch.save"


def load_generator(
    path: str | os.PathLike,
    map_location: str | torch.device = "cpu",
    kernels: str | None = None,
    use_ema: bool = True,
    learn_residual: bool | None = None,
    run_device: str | torch.device | None = None,
) -> Generator:
    """A ready generator (eval mode) from our checkpoint or the authors' `latest_net_G.pth`.

    Loading is strict: missing, unexpected or mis-shaped weights raise CheckpointError.
    `kernels` overrides the IN+activation implementation (weights are interchangeable between them); without it,
    the saved choice is kept where it runs on `run_device` (default: `map_location`), else plain PyTorch is used,
    so a checkpoint trained with Triton kernels on a GPU loads for a CPU run.
    `learn_residual` applies to original checkpoints only (the authors' release used it).
    """
    obj = load_checkpoint(path, map_location)
    if obj.get("format") == FORMAT:
        if obj.get("format_version", 0) > FORMAT_VERSION:
            raise CheckpointError(f"{path}: checkpoint format v{obj['format_version']} is newer than this engine")
        try:
            cfg = config_from_dict(GeneratorConfig, dict(obj["generator_config"]))
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"{path}: bad generator_config ({e})") from None
        state = obj.get("ema") if use_ema and obj.get("ema") is not None else obj.get("generator")
        if not isinstance(state, dict):
            raise CheckpointError(f"{path}: checkpoint has no generator weights")
    elif _looks_like_state_dict(obj):
        cfg = GeneratorConfig()
        if learn_residual is not None:
            cfg.learn_residual = learn_residual
        state = convert_original_state_dict(obj)
        # The authors' options --ngf / --which_model_netG / --input_nc change these; read them off the weights.
        top = [k for k in state if k.startswith("model.") and k.count(".") == 2 and k.endswith(".weight")]
        last_key = max(top, key=lambda k: int(k.split(".")[1]) if k.split(".")[1].isdigit() else -1, default="")
        first, last = state.get("model.1.weight"), state.get(last_key)
        if first is not None and first.ndim == 4:
            cfg.ngf, cfg.in_channels = int(first.shape[0]), int(first.shape[1])
        if last is not None and last.ndim == 4:
            cfg.out_channels = int(last.shape[0])
        cfg.n_blocks = _count_blocks(state)
        cfg.dropout = cfg.dropout if _has_dropout_layout(state) else 0.0
        state = _normalise_block_layout(state)
    else:
        raise CheckpointError(f"{path}: not a DeblurGAN checkpoint (keys: {sorted(obj)[:5]})")
    if kernels is not None:
        cfg.kernels = kernels
    else:
        cfg.kernels = _kernels_for(cfg.kernels, run_device if run_device is not None else map_location)
    gen = Generator(cfg)
    load_state_dict_strict(gen, state, str(path))
    return gen.eval()


def _kernels_for(saved: str, device: str | torch.device) -> str:
    """The saved kernels choice where it runs compiled on `device` (CUDA), else 'torch' (the weights are the same)."""
    from .layers import resolve_kernels

    if saved not in ("triton", "auto"):
        return saved
    return resolve_kernels("auto", device) if torch.device(device).type == "cuda" else "torch"


def load_state_dict_strict(module: torch.nn.Module, state: dict, where: str) -> None:
    """load_state_dict(strict=True) with a one-line, readable error."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        raise CheckpointError(
            f"{where}: weights do not match the model "
            f"({len(missing)} missing, e.g. {missing[:3]}; {len(unexpected)} unexpected, e.g. {unexpected[:3]})"
        )
    for k, v in own.items():
        if tuple(state[k].shape) != tuple(v.shape):
            raise CheckpointError(f"{where}: {k} has shape {tuple(state[k].shape)}, model expects {tuple(v.shape)}")
        if not torch.is_floating_point(state[k]):
            raise CheckpointError(f"{where}: {k} is {state[k].dtype}, expected a float tensor")
    module.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)


# --- the authors' release -------------------------------------------------------------------------

_STALE = ("running_mean", "running_var", "num_batches_tracked")


def _looks_like_state_dict(obj: dict) -> bool:
    return bool(obj) and all(isinstance(k, str) and torch.is_tensor(v) for k, v in obj.items())


def convert_original_state_dict(state: dict) -> dict:
    """Strip DataParallel's `module.` prefix and stale InstanceNorm buffers of old PyTorch versions."""
    out = {}
    for k, v in state.items():
        k = k[len("module.") :] if k.startswith("module.") else k
        if k.endswith(_STALE):
            continue
        out[k] = v
    return out


def _count_blocks(state: dict) -> int:
    blocks = {k.split(".")[1] for k in state if ".conv_block." in k}
    return max(len(blocks), 1)


def _has_dropout_layout(state: dict) -> bool:
    # With dropout the second conv of a block is conv_block.6; without (--no_dropout) it is conv_block.5.
    return not any(".conv_block.5." in k for k in state)


def _normalise_block_layout(state: dict) -> dict:
    """Map the no-dropout layout (second conv at .5) onto ours (an Identity keeps it at .6)."""
    if _has_dropout_layout(state):
        return state
    return {k.replace(".conv_block.5.", ".conv_block.6."): v for k, v in state.items()}
