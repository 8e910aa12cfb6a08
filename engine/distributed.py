"""torchrun set-up and the collectives the trainer uses by hand."""

from __future__ import annotations

import os

import torch
from torch import nn

from deblurgan.errors import DeblurGANError


def setup_distributed(device: str) -> tuple[int, int, torch.device]:
    """(rank, world_size, device); initialises torch.distributed when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = f"cuda:{local}" if torch.cuda.is_available() else "cpu"
    elif device == "cuda" and world > 1:
        device = f"cuda:{local}"
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DeblurGANError(f"device {device} requested but CUDA is not available")
        torch.cuda.set_device(dev)
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    rank = torch.distributed.get_rank() if world > 1 else 0
    return rank, world, dev


def broadcast_module(module: nn.Module) -> None:
    """Rank 0's parameters and buffers to every rank."""
    for t in module.state_dict().values():
        torch.distributed.broadcast(t, src=0)


def average_gradients(module: nn.Module, world: int) -> None:
    """Average gradients over ranks with one all-reduce (for modules outside DDP, e.g. the critic)."""
    if world == 1:
        return
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in grads])
    torch.distributed.all_reduce(flat)
    flat /= world
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()
