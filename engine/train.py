"""Train DeblurGAN (WGAN-GP + VGG19 perceptual loss).

usage:
  python -m engine.train                                   # demo: bundled samples, synthetic blur, CPU-friendly
  python -m engine.train --preset paper --data gopro:/data/GOPRO_Large --vgg-weights vgg19-dcbb9e9d.pth
  python -m engine.train --data my_photos/ --preset demo   # a folder: pairs by layout, else blurred on the fly
  python -m engine.train --config my.yaml --lr 2e-4 --gp-norm pixel --name exp1
  python -m engine.train --resume runs/exp1                # continue from the newest checkpoint
  torchrun --nproc_per_node 4 -m engine.train --preset paper --data gopro:/data/GOPRO_Large --name exp1
  python -m engine.train --print-config                    # show every key and its resolved value

Without --preset, `paper` is used when training data is given (--data), else `demo`; the first line says which.
Any config key can be overridden as `--key value` (dotted, `--optim.lr`, or unique, `--lr`); booleans as
`--channels-last`/`--no-compile`; `--help-all` lists every key.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import yaml

from deblurgan.cli import run_cli
from deblurgan.errors import DeblurGANError

from .config import (
    PRESETS,
    TrainConfig,
    flatten,
    load_yaml,
    make_config,
    parse_overrides,
    recipe_deviations,
    save_yaml,
    to_dict,
)

# The config keys most runs set, listed by --help (every other key: --help-all); (flag, metavar, help).
COMMON_KEYS = [
    ("--data", "SPEC", "training data: a folder (paired by its layout, else sharp images blurred on the fly), "
     "gopro:DIR, paired:BLUR,SHARP, synthetic:DIR, aligned:DIR, combined:A+B@2:1 (default: bundled samples)"),
    ("--name", "NAME", "run folder name under --out-dir (default: a timestamp)"),
    ("--out-dir", "DIR", "where run folders go (default: runs)"),
    ("--vgg-weights", "W", "VGG19 for the perceptual loss: PATH, imagenet (hub cache or download), auto "
     "(imagenet, else random) or random"),
    ("--epochs-constant", "N", "epochs at the full learning rate (paper: 150)"),
    ("--epochs-decay", "N", "epochs of linear decay to 0 after them (paper: 150)"),
    ("--max-steps", "N", "stop after N generator steps (0: all epochs)"),
    ("--time-limit-s", "S", "stop after S seconds of training, then validate and save (0: no limit)"),
    ("--batch-size", "N", "images per step (paper: 1)"),
    ("--crop", "PX", "training crop size, a multiple of 4 (paper: 256)"),
    ("--lr", "LR", "Adam learning rate of both networks (paper: 1e-4)"),
    ("--device", "DEV", "auto, cpu, cuda or cuda:N (default: auto, CUDA when available)"),
    ("--amp", "MODE", "off or bf16 (autocast)"),
    ("--kernels", "IMPL", "instance norm and gradient penalty implementation: torch, triton or auto"),
    ("--threads", "N", "CPU runs: intra-op threads (0: the cores idle at start, or OMP_NUM_THREADS)"),
]  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m engine.train",
        allow_abbrev=False,
        description="Train a DeblurGAN generator (paper recipe or a quick demo).",
        epilog="Every config key is an option: --key value, dotted (--optim.beta1 0.9) or unique (--beta1 0.9); "
        "booleans as --channels-last / --no-channels-last (--compile, --cuda-graph, ...). --help-all lists "
        "them all with their values; --print-config prints the resolved config as YAML.",
    )
    p.add_argument("--preset", choices=list(PRESETS), help="base recipe (default: paper with --data, else demo)")
    p.add_argument("--config", metavar="YAML", help="a config file applied over the preset")
    p.add_argument("--resume", nargs="?", const="", metavar="RUN_DIR", help="continue a run from its newest checkpoint")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("--help-all", action="store_true", help="list every config key with its value and exit")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs still go to the CSV files)")
    g = p.add_argument_group("common config keys (any other: --help-all)")
    for flag, metavar, text in COMMON_KEYS:
        g.add_argument(flag, metavar=metavar, help=text, dest="key:" + flag[2:], default=argparse.SUPPRESS)
    return p


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, list[str]]:
    """Known options, and the config overrides (common keys first, then any other --key value) as argv."""
    args, extra = build_parser().parse_known_args(argv)
    keys = [f"--{k[4:]}={v}" for k, v in vars(args).items() if k.startswith("key:")]
    return args, keys + list(extra)


def help_all(cfg: TrainConfig) -> str:
    """Every config key as an option with its value in `cfg`, one per line."""
    lines = [f"config keys (preset {cfg.preset}); set any as --key value, dotted or by its unique field name:"]
    for key, value in flatten(to_dict(cfg)).items():
        lines.append(f"  --{key.replace('_', '-')} {value}")
    return "\n".join(lines) + "\n"


def resolve(args: argparse.Namespace, extra: list[str]) -> tuple[TrainConfig, Path | None]:
    """The config (preset < run folder config on resume < --config < overrides) and the run folder to resume."""
    overrides = parse_overrides(extra)
    layers: list[dict] = []
    resume_dir = None
    if args.resume is not None:
        name = overrides.get("name") or (load_yaml(args.config).get("name") if args.config else None)
        if args.resume:
            resume_dir = Path(args.resume)
        elif name:
            out = overrides.get("out_dir", "runs")
            resume_dir = Path(out) / name
        else:
            raise DeblurGANError("--resume needs a run folder: --resume runs/NAME (or --resume --name NAME)")
        saved = resume_dir / "config.yaml"
        if not saved.is_file():
            raise DeblurGANError(f"--resume: {saved} not found (is {resume_dir} a run folder?)")
        layers.append(load_yaml(saved))
    if args.config:
        layers.append(load_yaml(args.config))
    layers.append(overrides)
    preset = args.preset
    if preset is None:
        preset = next((d["preset"] for d in reversed(layers) if isinstance(d.get("preset"), str)), None)
    if preset is None:
        has_data = any(isinstance(d.get("data"), dict) and d["data"].get("train") for d in layers)
        preset = "paper" if has_data else "demo"
    for d in layers:
        d.pop("preset", None)
    cfg = make_config(preset, layers)
    if resume_dir is not None:
        cfg.name, cfg.out_dir = resume_dir.name, str(resume_dir.parent)
    return cfg, resume_dir


def resolve_data(cfg: TrainConfig) -> list[str]:
    """Bare folders given as data specs become explicit specs (saved so); one line per folder saying how it reads."""
    from deblurgan.data import folder_spec, is_bare_folder

    notes = []
    for key in ("train", "val"):
        spec = getattr(cfg.data, key)
        if is_bare_folder(spec):
            resolved, why = folder_spec(spec.strip())
            setattr(cfg.data, key, resolved)
            notes.append(f"data.{key}: {spec} read as {resolved} ({why})")
    return notes


def load_datasets(cfg: TrainConfig):
    try:
        from deblurgan.data import build_dataset
    except ImportError as e:
        raise DeblurGANError(f"the data module is not available ({e})") from None
    blur = {"blur_max_len": cfg.data.blur_max_len}  # synthetic blur strength, the same for train and val
    train = build_dataset(cfg.data.train, split="train", crop=cfg.data.crop, seed=cfg.seed, **blur)
    val = build_dataset(cfg.data.val or cfg.data.train, split="val", crop=None, seed=cfg.seed, **blur)  # full frames
    return train, val


def check_run_dir(run_dir: Path, resume: bool) -> None:
    """The run folder can be made and written, and holds no earlier run unless resuming; no file is written."""
    if run_dir.exists() and not run_dir.is_dir():
        raise DeblurGANError(f"run folder {run_dir} exists and is not a folder")
    parent = run_dir
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise DeblurGANError(f"cannot make the run folder {run_dir}: {parent} is a file")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise DeblurGANError(f"cannot make the run folder {run_dir}: {parent} is not writable")
    ckpts = run_dir / "checkpoints"
    if not resume and ckpts.is_dir() and any(ckpts.glob("step_*.pt")):
        raise DeblurGANError(f"{run_dir} already has checkpoints: pass --resume, or choose another --name")


def preset_line(cfg: TrainConfig, args: argparse.Namespace, data_given: bool) -> str:
    """'preset X' and why it applies (the default one depends on --data)."""
    if args.preset is not None:
        return f"preset {cfg.preset}"
    if data_given and cfg.preset == "paper":
        return "preset paper (the default with --data: the paper's full recipe; --preset demo for a short small run)"
    if cfg.preset == "demo":
        return "preset demo (the default without --data: bundled photos, a small model; --preset paper for the paper)"
    return f"preset {cfg.preset}"


def done_lines(summary: dict, run_dir: Path) -> list[str]:
    """The closing lines: the result, the checkpoint to use and the command that deblurs with it."""
    val = summary.get("val") or {}
    msg = f"done: step {summary['step']}, {summary['seconds']:.0f}s"
    if summary.get("stopped_by_time_limit"):
        msg += " (time limit)"
    if val:
        msg += (f", val PSNR {val['psnr']:.2f} dB SSIM {val['ssim']:.3f} ({val['weights']}; blurred input: "
                f"{val['psnr_input']:.2f} dB, {val['ssim_input']:.3f})")  # fmt: skip
    lines = [f"{msg}; logs in {run_dir}"]
    best = run_dir / "checkpoints" / "best.pt"
    if summary.get("best") and best.is_file():
        b = summary["best"]
        ckpt, why = best, f"the best validation PSNR, {b['psnr']:.2f} dB at step {b['step']}"
    elif summary.get("last_checkpoint"):
        ckpt, why = Path(summary["last_checkpoint"]), "the last checkpoint: no validation ran"
    else:
        return lines
    lines.append(f"use {ckpt} ({why}); deblur with:")
    lines.append(f"  python -m engine.deblur IMAGES... --checkpoint {ckpt} --out deblurred/")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point: user errors become `error: <one line>` and exit code 2 (see deblurgan.cli)."""
    return run_cli(_main, argv)


def _main(argv: Sequence[str] | None = None) -> int:
    args, extra = parse_args(argv)
    cfg, resume_dir = resolve(args, extra)
    if args.help_all:
        print(help_all(cfg), end="")
        return 0
    if args.print_config:
        print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
        return 0
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if cfg.name is None:
        if world > 1:
            raise DeblurGANError("with torchrun, give the run a --name so every process uses the same folder")
        cfg.name = time.strftime("%Y%m%d-%H%M%S")
    run_dir = Path(cfg.out_dir) / cfg.name
    # every input is checked before any download or file: data specs and their files, then the run folder
    data_notes = resolve_data(cfg)
    train_set, val_set = load_datasets(cfg)
    check_run_dir(run_dir, resume_dir is not None)
    is_main = int(os.environ.get("RANK", "0")) == 0
    say = (lambda line: print(line, file=sys.stderr)) if is_main else (lambda line: None)
    say(preset_line(cfg, args, data_given=cfg.data.train is not None))
    for line in data_notes:
        say(line)
    changed = recipe_deviations(cfg)
    if changed:
        say(f"note: not the paper's training recipe: {'; '.join(changed)} (see docs/training.md)")

    import torch

    from deblurgan.vgg import load_vgg19_features

    from .threads import set_cpu_threads
    from .trainer import Trainer  # heavy imports after the config checks

    on_cpu = cfg.device == "cpu" or (cfg.device == "auto" and not torch.cuda.is_available())
    if on_cpu:
        say(set_cpu_threads(cfg.threads, processes=int(os.environ.get("LOCAL_WORLD_SIZE", world))))
    vgg, vgg_source = load_vgg19_features(cfg.loss.vgg_weights)
    try:
        trainer = Trainer(
            cfg, run_dir, train_set, val_set, resume=resume_dir is not None, vgg=vgg, vgg_source=vgg_source,
            progress=not args.no_progress,
        )  # fmt: skip
        if trainer.is_main:
            save_yaml(cfg, run_dir / "config.yaml")
            say(f"run folder {run_dir}")
        summary = trainer.fit()
    finally:
        # torchrun: leave the process group before the interpreter shuts down; otherwise gloo's worker threads can
        # abort the process at exit ("terminate called without an active exception", pytorch/pytorch#190489)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    if trainer.is_main and "seconds" in summary:
        for line in done_lines(summary, run_dir):
            say(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
