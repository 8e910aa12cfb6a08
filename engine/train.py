"""Train DeblurGAN (WGAN-GP + VGG19 perceptual loss).

usage:
  python -m engine.train                                   # demo: bundled samples, synthetic blur, CPU-friendly
  python -m engine.train --preset paper --data gopro:/data/GOPRO_Large --vgg-weights vgg19-dcbb9e9d.pth
  python -m engine.train --config my.yaml --lr 2e-4 --gp-norm pixel --name exp1
  python -m engine.train --resume runs/exp1                # continue from the newest checkpoint
  torchrun --nproc_per_node 4 -m engine.train --preset paper --data gopro:/data/GOPRO_Large --name exp1
  python -m engine.train --print-config                    # show every key and its resolved value

Without --preset, `paper` is used when training data is given (--data), else `demo`. Any config key can be
overridden as `--key value` (dotted, `--optim.lr`, or unique, `--lr`); booleans as `--channels-last`/`--no-compile`.
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

from .config import TrainConfig, load_yaml, make_config, parse_overrides, recipe_deviations, save_yaml, to_dict


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m engine.train",
        allow_abbrev=False,
        description="Train a DeblurGAN generator (paper recipe or a quick demo).",
        epilog="Other options: any config key as --key value (see --print-config).",
    )
    p.add_argument("--preset", choices=["paper", "demo"], help="base recipe (default: paper with --data, else demo)")
    p.add_argument("--config", metavar="YAML", help="a config file applied over the preset")
    p.add_argument("--resume", nargs="?", const="", metavar="RUN_DIR", help="continue a run from its newest checkpoint")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs still go to the CSV files)")
    return p


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


def load_datasets(cfg: TrainConfig):
    try:
        from deblurgan.data import build_dataset
    except ImportError as e:
        raise DeblurGANError(f"the data module is not available ({e})") from None
    blur = {"blur_max_len": cfg.data.blur_max_len}  # synthetic blur strength, the same for train and val
    train = build_dataset(cfg.data.train, split="train", crop=cfg.data.crop, seed=cfg.seed, **blur)
    val = build_dataset(cfg.data.val or cfg.data.train, split="val", crop=None, seed=cfg.seed, **blur)  # full frames
    return train, val


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point: user errors become `error: <one line>` and exit code 2 (see deblurgan.cli)."""
    return run_cli(_main, argv)


def _main(argv: Sequence[str] | None = None) -> int:
    args, extra = build_parser().parse_known_args(argv)
    cfg, resume_dir = resolve(args, list(extra))
    if args.print_config:
        print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
        return 0
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if cfg.name is None:
        if world > 1:
            raise DeblurGANError("with torchrun, give the run a --name so every process uses the same folder")
        cfg.name = time.strftime("%Y%m%d-%H%M%S")
    run_dir = Path(cfg.out_dir) / cfg.name
    print(f"preset {cfg.preset}; run folder {run_dir}", file=sys.stderr)
    changed = recipe_deviations(cfg)
    if changed:
        print(f"note: not the paper's training recipe: {'; '.join(changed)} (see docs/training.md)", file=sys.stderr)

    import torch

    from deblurgan.vgg import load_vgg19_features

    from .trainer import Trainer  # heavy imports after the config checks

    vgg, vgg_source = load_vgg19_features(cfg.loss.vgg_weights)
    train_set, val_set = load_datasets(cfg)
    try:
        trainer = Trainer(
            cfg, run_dir, train_set, val_set, resume=resume_dir is not None, vgg=vgg, vgg_source=vgg_source,
            progress=not args.no_progress,
        )  # fmt: skip
        if trainer.is_main:
            save_yaml(cfg, run_dir / "config.yaml")
        summary = trainer.fit()
    finally:
        # torchrun: leave the process group before the interpreter shuts down; otherwise gloo's worker threads can
        # abort the process at exit ("terminate called without an active exception", pytorch/pytorch#190489)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    if trainer.is_main and "seconds" in summary:
        val = summary.get("val") or {}
        msg = f"done: step {summary['step']}, {summary['seconds']:.0f}s"
        if val:
            msg += (f", val PSNR {val['psnr']:.2f} dB SSIM {val['ssim']:.3f} ({val['weights']}; blurred input: "
                    f"{val['psnr_input']:.2f} dB, {val['ssim_input']:.3f})")  # fmt: skip
        print(f"{msg}; checkpoint {summary['last_checkpoint']}; logs in {run_dir}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
