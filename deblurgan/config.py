"""Model configs: one dataclass per network, stored in every checkpoint."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

KERNEL_IMPLS = ("torch", "triton", "auto")  # the IN+activation implementations ("kernels")
KERNEL_BACKENDS = KERNEL_IMPLS  # the former name


@dataclass
class GeneratorConfig:
    """ResNet generator of DeblurGAN (Kupyn et al. 2018), defaults = the authors' release."""

    in_channels: int = 3
    out_channels: int = 3
    ngf: int = 64  # width of the first conv; doubled by each of the 2 downsamplings
    n_blocks: int = 9
    dropout: float = 0.5  # inside every ResBlock, as in the authors' code (pix2pix heritage)
    norm: str = "instance"  # InstanceNorm2d(affine=False), no running stats
    learn_residual: bool = True  # out = clamp(input + tanh(...), -1, 1)
    kernels: str = "torch"  # IN+activation implementation: torch | triton | auto

    def __post_init__(self) -> None:
        _check(self)


@dataclass
class CriticConfig:
    """PatchGAN critic (no sigmoid: WGAN-GP), defaults = the authors' release."""

    in_channels: int = 3
    ndf: int = 64
    n_layers: int = 3
    norm: str = "instance"
    negative_slope: float = 0.2
    kernels: str = "torch"

    def __post_init__(self) -> None:
        _check(self)


def _check(cfg: Any) -> None:
    if cfg.norm != "instance":
        raise ValueError(f"norm must be 'instance' (got {cfg.norm!r})")
    if cfg.kernels not in KERNEL_IMPLS:
        raise ValueError(f"kernels must be one of {KERNEL_IMPLS} (got {cfg.kernels!r})")
    for f in fields(cfg):
        v = getattr(cfg, f.name)
        if f.type == "int" and (not isinstance(v, int) or v < 1):
            raise ValueError(f"{type(cfg).__name__}.{f.name} must be a positive int (got {v!r})")
    if hasattr(cfg, "dropout") and not 0.0 <= cfg.dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1) (got {cfg.dropout!r})")


def config_to_dict(cfg: Any) -> dict:
    return asdict(cfg)


def config_from_dict(cls: type, d: dict) -> Any:
    """Build a config from a dict, rejecting unknown keys (a typo must not be ignored)."""
    names = {f.name for f in fields(cls)}
    unknown = set(d) - names
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys: {sorted(unknown)}")
    return cls(**d)
