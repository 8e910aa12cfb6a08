"""Training configuration: typed dataclasses, presets, YAML files and `--key value` overrides.

Precedence: preset < YAML file (`--config F`) < command-line overrides. Keys may be dotted
(`--optim.lr 2e-4`) or a field name that is unique across sections (`--lr 2e-4`, `--gp-norm pixel`).
Unknown keys, wrong types and out-of-range values raise DeblurGANError before any work starts.
The networks' settings are `deblurgan.config`'s GeneratorConfig and CriticConfig (`model.generator`, `model.critic`);
config files of the earlier flat layout (`model.ngf`, `model.n_layers_d`, ...) still load.
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from deblurgan.config import CriticConfig, GeneratorConfig
from deblurgan.errors import DeblurGANError, first_line
from deblurgan.fsutil import atomic_write_text


@dataclass
class ModelConfig:
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    critic: CriticConfig = field(default_factory=CriticConfig)
    zero_init_last: bool = False  # zero the last conv: with learn_residual the generator starts as the identity
    kernels: str = "torch"  # IN+activation and GP implementation: torch | triton | auto (resolved per device)


# Fields of the network configs that the trainer sets itself (RGB data, instance norm, the resolved `kernels`).
TRAINER_SET = frozenset({"in_channels", "out_channels", "norm", "kernels"})
NETWORK_CONFIGS = (GeneratorConfig, CriticConfig)
# The earlier flat `model` section: key -> (network, field).
LEGACY_MODEL_KEYS = {"ngf": ("generator", "ngf"), "n_blocks": ("generator", "n_blocks"),
                     "dropout": ("generator", "dropout"), "learn_residual": ("generator", "learn_residual"),
                     "ndf": ("critic", "ndf"), "n_layers_d": ("critic", "n_layers")}  # fmt: skip


def _fields(cls: type) -> list[dataclasses.Field]:
    """The config keys of a section (network configs without the fields the trainer sets)."""
    return [f for f in fields(cls) if not (cls in NETWORK_CONFIGS and f.name in TRAINER_SET)]


@dataclass
class LossConfig:
    content_weight: float = 100.0  # perceptual (VGG) term; 0 skips the VGG entirely
    adv_weight: float = 1.0  # WGAN term -mean D(G(B)); the paper: 1
    pixel_weight: float = 0.0  # L1(G(B), S) in [-1, 1]; the paper: 0 (not in its loss)
    gp_weight: float = 10.0
    gp_norm: str = "sample"  # sample: the paper (norm over C*H*W); pixel: the authors' code
    vgg_weights: str = "imagenet"  # imagenet | auto | random | PATH
    vgg_normalize: bool = False  # the authors fed [-1, 1] to VGG without ImageNet mean/std


@dataclass
class OptimConfig:
    lr: float = 1e-4
    beta1: float = 0.5
    beta2: float = 0.999
    critic_updates: int = 5
    epochs_constant: int = 150
    epochs_decay: int = 150
    fused_adam: bool = True  # used on CUDA only


@dataclass
class DataConfig:
    train: str | None = None  # a data spec (gopro:PATH, synthetic:PATH, combined:...); None = bundled samples
    val: str | None = None  # None = the validation split of `train`
    crop: int = 256
    batch_size: int = 1
    num_workers: int = 4
    val_max_images: int = 0  # 0 = all
    blur_max_len: float = 60.0  # synthetic blur: camera-shake trajectory length in pixels; the paper: 60


@dataclass
class TrainConfig:
    preset: str = "paper"
    name: str | None = None  # run folder name; None = a timestamp
    out_dir: str = "runs"
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    max_steps: int = 0  # 0 = run all epochs; >0 stops after this many generator steps
    time_limit_s: float = 0.0  # 0 = none; >0 stops after this many seconds of this process (validates, saves)
    threads: int = 0  # CPU runs: torch intra-op threads; 0 = the idle cores at start (or OMP_NUM_THREADS)
    save_every: int = 1000  # checkpoint every N steps (plus one per epoch)
    keep_last: int = 3  # step checkpoints kept (plus best.pt)
    log_every: int = 50
    val_every_epochs: int = 1
    samples: int = 4  # images in the sample grid
    ema: float = 0.0  # 0 = off; e.g. 0.999
    amp: str = "off"  # off | bf16
    channels_last: bool = False
    compile: bool = False
    cuda_graph: bool = False  # capture the whole iteration once and replay it (CUDA, one process, no compile)
    cudnn_benchmark: bool = True  # CUDA: let cuDNN time its algorithms for the fixed crop size once, then reuse
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)


PRESETS: dict[str, dict[str, Any]] = {
    "paper": {},
    # A 3-minute CPU run (see docs/training.md, "What the demo optimises"): a small model that starts as the
    # identity, an L1 term on top of the paper's loss, one critic step per generator step, EMA weights.
    "demo": {
        "name": None,
        "save_every": 100,
        "log_every": 16,
        "ema": 0.99,
        "loss": {"vgg_weights": "auto", "pixel_weight": 100.0},
        "model": {"generator": {"ngf": 32, "n_blocks": 6, "dropout": 0.0}, "zero_init_last": True},
        "optim": {"beta1": 0.9, "epochs_constant": 3, "epochs_decay": 1, "critic_updates": 1},
        "data": {"crop": 64, "num_workers": 0, "val_max_images": 4},
    },
    # A short run for one H200 at the paper's architecture, stopped by wall time (python -m engine.ship sets
    # time_limit_s and drives the learning rate by elapsed time); each choice is justified in docs/model.md.
    "h200": {
        "name": None,
        "amp": "bf16",
        "cuda_graph": True,
        "ema": 0.999,
        "log_every": 100,
        "save_every": 1_000_000,
        "val_every_epochs": 1_000_000,
        "loss": {"vgg_weights": "auto", "pixel_weight": 100.0},
        "model": {"generator": {"ngf": 64, "n_blocks": 9, "dropout": 0.0}, "zero_init_last": True, "kernels": "auto"},
        "optim": {"lr": 2e-4, "beta1": 0.9, "critic_updates": 1, "epochs_constant": 1_000_000, "epochs_decay": 0},
        "data": {"crop": 256, "batch_size": 16, "num_workers": 12, "val_max_images": 8},
    },
}

CHOICES = {
    "preset": tuple(PRESETS),
    "model.kernels": ("torch", "triton", "auto"),
    "loss.gp_norm": ("sample", "pixel"),
    "amp": ("off", "bf16"),
}


# What the paper optimises (loss, optimiser, init), as opposed to scale (model size, crop, epochs, batch).
RECIPE_KEYS = ["loss.adv_weight", "loss.content_weight", "loss.pixel_weight", "loss.gp_weight", "loss.gp_norm",
               "optim.lr", "optim.beta1", "optim.beta2", "optim.critic_updates", "model.generator.dropout",
               "model.generator.learn_residual", "model.zero_init_last", "data.blur_max_len"]  # fmt: skip


def recipe_deviations(cfg: TrainConfig) -> list[str]:
    """'key value (paper: value)' for each recipe key that differs from the paper's; [] for the paper recipe."""
    ours, paper = flatten(to_dict(cfg)), flatten(to_dict(TrainConfig()))
    return [f"{k} {ours[k]:g} (paper: {paper[k]:g})" if isinstance(ours[k], float) else
            f"{k} {ours[k]} (paper: {paper[k]})" for k in RECIPE_KEYS if ours[k] != paper[k]]  # fmt: skip


def to_dict(cfg: Any) -> dict:
    """The config as nested plain dicts (what config.yaml and checkpoints hold)."""
    out = {}
    for f in _fields(type(cfg)):
        v = getattr(cfg, f.name)
        out[f.name] = to_dict(v) if dataclasses.is_dataclass(v) else copy.deepcopy(v)
    return out


def make_config(preset: str = "paper", overrides: list[dict] | None = None) -> TrainConfig:
    """A validated config: the preset, then each override dict (nested) in order."""
    if preset not in PRESETS:
        raise DeblurGANError(f"unknown preset {preset!r} (choose from {', '.join(PRESETS)})")
    cfg = TrainConfig()
    _merge(cfg, PRESETS[preset], "")
    cfg.preset = preset
    for o in overrides or []:
        _merge(cfg, o, "")
    validate(cfg)
    return cfg


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise DeblurGANError(f"config file not found: {path}") from None
    except yaml.YAMLError as e:
        raise DeblurGANError(f"{path}: invalid YAML ({first_line(e)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise DeblurGANError(f"{path}: expected a mapping of config keys")
    return data


def save_yaml(cfg: TrainConfig, path: str | Path) -> None:
    atomic_write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))


def parse_overrides(args: list[str]) -> dict:
    """['--lr', '2e-4', '--channels-last', '--no-compile', '--data.crop=128'] -> a nested dict of raw strings."""
    out: dict = {}
    i = 0
    while i < len(args):
        a = args[i]
        if not a.startswith("--") or len(a) < 3:
            raise DeblurGANError(f"unexpected argument {a!r} (options look like --key value)")
        key, value = a[2:], None
        if "=" in key:
            key, value = key.split("=", 1)
        elif i + 1 < len(args) and not (args[i + 1].startswith("--") and len(args[i + 1]) > 2):
            value = args[i + 1]
            i += 1
        i += 1
        key = key.replace("-", "_")
        if value is None:  # a bare flag
            value = "false" if key.startswith("no_") else "true"
            key = key[3:] if key.startswith("no_") else key
        path = resolve_key(key)
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return out


def _all_keys() -> dict[str, list[tuple[str, ...]]]:
    leaves: dict[str, list[tuple[str, ...]]] = {}

    def walk(cls: type, prefix: tuple[str, ...]) -> None:
        hints = typing.get_type_hints(cls)
        for f in _fields(cls):
            if dataclasses.is_dataclass(hints[f.name]):
                walk(hints[f.name], prefix + (f.name,))
            else:
                leaves.setdefault(f.name, []).append(prefix + (f.name,))

    walk(TrainConfig, ())
    return leaves


ALIASES = {"data": ("data", "train"), "n_layers_d": ("model", "critic", "n_layers")}  # --data gopro:PATH
ALIASES.update({f"model.{k}": ("model", *v) for k, v in LEGACY_MODEL_KEYS.items()})  # the earlier flat keys


def resolve_key(key: str) -> tuple[str, ...]:
    """'lr' -> ('optim', 'lr'); 'data.crop' -> ('data', 'crop'); unknown or ambiguous keys are errors."""
    if key in ALIASES:
        return ALIASES[key]
    leaves = _all_keys()
    if "." in key:
        path = tuple(key.split("."))
        if path in [p for ps in leaves.values() for p in ps]:
            return path
    elif key in leaves:
        if len(leaves[key]) > 1:
            opts = ", ".join("--" + ".".join(p) for p in leaves[key])
            raise DeblurGANError(f"--{key} is ambiguous: use one of {opts}")
        return leaves[key][0]
    raise DeblurGANError(f"unknown config key --{key.replace('_', '-')} (see --print-config for all keys)")


def _merge(cfg: Any, d: dict, prefix: str) -> None:
    if not isinstance(d, dict):
        raise DeblurGANError(f"config section {prefix.rstrip('.') or '<root>'} must be a mapping")
    hints = typing.get_type_hints(type(cfg))
    names = {f.name for f in _fields(type(cfg))}
    for k, v in d.items():
        if isinstance(cfg, ModelConfig) and k in LEGACY_MODEL_KEYS:  # a config.yaml of the earlier flat layout
            net, name = LEGACY_MODEL_KEYS[k]
            _merge(getattr(cfg, net), {name: v}, f"{prefix}{net}.")
            continue
        if k not in names:
            raise DeblurGANError(f"unknown config key {prefix}{k}")
        t = hints[k]
        if dataclasses.is_dataclass(t):
            _merge(getattr(cfg, k), v, f"{prefix}{k}.")
        else:
            setattr(cfg, k, _coerce(v, t, f"{prefix}{k}"))


def _coerce(v: Any, t: Any, key: str) -> Any:
    """Convert a YAML value or a command-line string to type `t`, or raise a one-line error."""
    args = typing.get_args(t)
    if typing.get_origin(t) in (typing.Union, types.UnionType) and type(None) in args:
        if v is None or (isinstance(v, str) and v.lower() in ("none", "null", "")):
            return None
        (t,) = [a for a in args if a is not type(None)]
    bad = DeblurGANError(f"{key} must be {getattr(t, '__name__', t)} (got {v!r})")
    if t is bool:
        if isinstance(v, bool):
            return v
        if isinstance(v, str) and v.lower() in ("true", "yes", "1", "on", "false", "no", "0", "off"):
            return v.lower() in ("true", "yes", "1", "on")
        raise bad
    if t in (int, float):
        if isinstance(v, bool):
            raise bad
        if isinstance(v, int) or (t is float and isinstance(v, float)):
            return t(v)
        if isinstance(v, str):
            try:
                return t(v)
            except ValueError:
                raise bad from None
        raise bad
    if t is str:
        if isinstance(v, str):
            return v
        raise bad
    raise bad


def validate(cfg: TrainConfig) -> None:
    """Reject values that would fail (or silently misbehave) later."""
    flat = flatten(to_dict(cfg))
    for key, allowed in CHOICES.items():
        if flat[key] not in allowed:
            raise DeblurGANError(f"{key} must be one of {', '.join(allowed)} (got {flat[key]!r})")
    positive = ["model.generator.ngf", "model.generator.n_blocks", "model.critic.ndf", "model.critic.n_layers",
                "optim.critic_updates",
                "data.batch_size", "save_every", "keep_last", "log_every", "val_every_epochs"]  # fmt: skip
    for key in positive:
        if flat[key] < 1:
            raise DeblurGANError(f"{key} must be >= 1 (got {flat[key]})")
    non_negative = ["max_steps", "time_limit_s", "threads", "samples", "data.num_workers", "data.val_max_images",
                    "optim.epochs_constant",
                    "optim.epochs_decay", "loss.content_weight", "loss.gp_weight", "loss.adv_weight",
                    "loss.pixel_weight"]  # fmt: skip
    for key in non_negative:
        if flat[key] < 0:
            raise DeblurGANError(f"{key} must be >= 0 (got {flat[key]})")
    if cfg.loss.adv_weight + cfg.loss.content_weight + cfg.loss.pixel_weight == 0:
        raise DeblurGANError("loss.adv_weight, loss.content_weight and loss.pixel_weight are all 0: nothing to train")
    if cfg.time_limit_s != cfg.time_limit_s:
        raise DeblurGANError("time_limit_s must be a number of seconds (got nan)")
    if cfg.optim.epochs_constant + cfg.optim.epochs_decay < 1:
        raise DeblurGANError("optim.epochs_constant + optim.epochs_decay must be >= 1")
    if cfg.cuda_graph and cfg.compile:
        raise DeblurGANError("cuda_graph captures the eager step: it cannot be combined with compile")
    if cfg.cuda_graph and cfg.device == "cpu":
        raise DeblurGANError("cuda_graph needs a CUDA device (device is cpu)")
    if not cfg.optim.lr > 0 or cfg.optim.lr != cfg.optim.lr:
        raise DeblurGANError(f"optim.lr must be > 0 (got {cfg.optim.lr})")
    for key in ("optim.beta1", "optim.beta2", "model.generator.dropout", "model.critic.negative_slope"):
        if not 0.0 <= flat[key] < 1.0:
            raise DeblurGANError(f"{key} must be in [0, 1) (got {flat[key]})")
    if not 0.0 <= cfg.ema < 1.0:
        raise DeblurGANError(f"ema must be in [0, 1), e.g. 0.999 (got {cfg.ema})")
    if not 0 < cfg.data.blur_max_len <= 1000:
        raise DeblurGANError(
            f"data.blur_max_len must be in (0, 1000] pixels, the paper: 60 (got {cfg.data.blur_max_len})"
        )
    if cfg.data.crop < 4 or cfg.data.crop % 4:
        raise DeblurGANError(f"data.crop must be a multiple of 4 and >= 4 (got {cfg.data.crop})")
    dev = cfg.device
    if not (dev in ("auto", "cpu", "cuda") or (dev.startswith("cuda:") and dev[5:].isdigit())):
        raise DeblurGANError(f"device must be auto, cpu, cuda or cuda:N (got {dev!r})")
    if cfg.name is not None and (not cfg.name or "/" in cfg.name or cfg.name in (".", "..")):
        raise DeblurGANError(f"name must be a plain folder name (got {cfg.name!r})")


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
