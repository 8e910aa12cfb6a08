"""Train the shipped model for a fixed wall time, then write its weights, continuation state and evaluation.

Usage:
    python -m engine.ship train --pack data/pack --seconds 400 --out OUT [--from-scratch] [--key value ...]
    python -m engine.ship join --from OUT

`train` runs the `h200` preset (engine.config; any config key can be overridden as `--key value`) on the pack's
crops (engine.photos), blurred on the fly, for `--seconds` of training, with the learning rate held for the first
half of that time and decayed linearly to 0 over the second half. It continues from the shipped weights
(deblurgan/weights/deblurgan.pt, generator and EMA) and `model/continuation.pt` (critic) when both exist, unless
`--from-scratch`. Into OUT it writes:

    deblurgan.pt            fp16 EMA generator, our checkpoint format (the package's shipped weights)
    continuation.pt         fp16 critic and the training history (what a later run continues from)
    eval.json, eval.md      engine.evalset on the full evaluation frames
    train_log.csv           the run's loss log
    SHIPPED.json            sha256 of every file; files over --piece-mib are split into NAME.partNN pieces

`join` checks every piece and file against SHIPPED.json, joins the pieces and installs the weights at
deblurgan/weights/deblurgan.pt and the state at model/continuation.pt (atomically; nothing is written when a
checksum differs).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from deblurgan.cli import run_cli
from deblurgan.data import SyntheticDataset
from deblurgan.errors import DeblurGANError
from deblurgan.fsutil import atomic_path, atomic_write_text
from deblurgan.pretrained import SHIPPED_WEIGHTS

from .config import TrainConfig, make_config, parse_overrides, recipe_deviations, to_dict

ROOT = Path(__file__).resolve().parent.parent
WEIGHTS = SHIPPED_WEIGHTS
CONTINUATION = ROOT / "model" / "continuation.pt"
PIECE_MIB = 15.0
MAX_FILES, MAX_FILE_MIB = 8, 16.0
CONTINUATION_FORMAT = "deblurgan-engine-continuation"


def lr_time_factor(elapsed: float, seconds: float) -> float:
    """1 for the first half of the time, then linear decay to 0 at `seconds` (the paper's shape, in time)."""
    f = elapsed / seconds if seconds > 0 else 1.0
    return 1.0 if f < 0.5 else max(0.0, 1.0 - (f - 0.5) / 0.5)


def _set_lr(opt, value: float) -> None:
    for group in opt.param_groups:
        if hasattr(group["lr"], "fill_"):  # CUDA graphs: a device tensor the captured step reads
            group["lr"].fill_(value)
        else:
            group["lr"] = value


def time_schedule(trainer, seconds: float, every: int = 10) -> None:
    """Drive both optimizers' learning rates by elapsed training time (every `every` steps and at epoch ends)."""
    base, t0, calls = trainer.cfg.optim.lr, [None], [0]
    step = trainer.train_step

    def factor(_=None) -> float:
        return lr_time_factor(time.perf_counter() - t0[0], seconds) if t0[0] is not None else 1.0

    def timed_step(blur, sharp):
        if t0[0] is None:
            t0[0] = time.perf_counter()
        calls[0] += 1
        if calls[0] % every == 0:
            for opt in (trainer.opt_g, trainer.opt_d):
                _set_lr(opt, base * factor())
        return step(blur, sharp)

    trainer.train_step = timed_step
    for sched in (trainer.sched_g, trainer.sched_d):
        sched.lr_lambdas = [factor]


# --- pieces and checksums ------------------------------------------------------------------------------


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def split_and_manifest(out: Path, piece_mib: float = PIECE_MIB) -> dict:
    """Split every file in `out` larger than `piece_mib` into NAME.partNN; write SHIPPED.json (sha256 of all)."""
    limit = int(piece_mib * 2**20)
    if limit < 1:
        raise DeblurGANError(f"--piece-mib must be > 0 (got {piece_mib})")
    manifest: dict = {"files": {}}
    for path in sorted(p for p in out.iterdir() if p.is_file() and p.name != "SHIPPED.json"):
        entry: dict = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
        if entry["bytes"] > limit:
            pieces = []
            with open(path, "rb") as f:
                for k in range(math.ceil(entry["bytes"] / limit)):
                    data = f.read(limit)
                    piece = out / f"{path.name}.part{k:02d}"
                    piece.write_bytes(data)
                    pieces.append({"name": piece.name, "sha256": hashlib.sha256(data).hexdigest()})
            path.unlink()
            entry["pieces"] = pieces
        manifest["files"][path.name] = entry
    atomic_write_text(out / "SHIPPED.json", json.dumps(manifest, indent=1) + "\n")
    files = [p for p in out.iterdir() if p.is_file()]
    big = [p.name for p in files if p.stat().st_size > MAX_FILE_MIB * 2**20]
    if len(files) > MAX_FILES or big:
        raise DeblurGANError(f"{out}: {len(files)} files (at most {MAX_FILES}), over {MAX_FILE_MIB:g} MiB: {big}")
    return manifest


def join_file(folder: Path, name: str, entry: dict, dest: Path) -> None:
    """Join (or copy) one file of a SHIPPED.json to `dest`, checking every piece and the whole; atomic."""
    h = hashlib.sha256()
    dest.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(dest) as tmp, open(tmp, "wb") as out:
        for piece in entry.get("pieces") or [{"name": name, "sha256": entry["sha256"]}]:
            src = folder / piece["name"]
            if not src.is_file():
                raise DeblurGANError(f"{src}: missing (listed in SHIPPED.json)")
            data = src.read_bytes()
            if hashlib.sha256(data).hexdigest() != piece["sha256"]:
                raise DeblurGANError(f"{src}: sha256 differs from SHIPPED.json (corrupted or wrong file)")
            h.update(data)
            out.write(data)
        if h.hexdigest() != entry["sha256"]:
            raise DeblurGANError(f"{name}: the joined file's sha256 differs from SHIPPED.json")


def join(folder: Path, weights: Path = WEIGHTS, continuation: Path = CONTINUATION) -> list[Path]:
    """Verify and install what a `train` run returned; every check passes before anything is installed."""
    path = folder / "SHIPPED.json"
    if not path.is_file():
        raise DeblurGANError(f"{path}: not found (the folder a `python -m engine.ship train` run wrote)")
    files = json.loads(path.read_text())["files"]
    targets = {"deblurgan.pt": weights, "continuation.pt": continuation}
    missing = [n for n in targets if n not in files]
    if missing:
        raise DeblurGANError(f"{path}: does not list {', '.join(missing)}")
    staged = {n: folder / f".{n}.joined" for n in targets}
    try:
        for n in targets:
            join_file(folder, n, files[n], staged[n])
        for n in ("eval.json", "eval.md", "train_log.csv"):
            if n in files:
                join_file(folder, n, files[n], folder / f".{n}.checked")
                (folder / f".{n}.checked").unlink()
        done = []
        for n, dest in targets.items():
            dest.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(dest) as tmp:
                shutil.copyfile(staged[n], tmp)
            done.append(dest)
        return done
    finally:
        for p in staged.values():
            p.unlink(missing_ok=True)


# --- training --------------------------------------------------------------------------------------------


def ship_config(pack: Path, seconds: float, work: Path, extra: list[str]) -> TrainConfig:
    overrides = parse_overrides(extra)
    forced = {"time_limit_s": float(seconds), "out_dir": str(work), "name": time.strftime("ship-%Y%m%d-%H%M%S")}
    return make_config("h200", [overrides, forced, {"data": {"train": f"synthetic:{pack / 'train'}"}}])


def datasets(cfg: TrainConfig, pack: Path, epoch_steps: int):
    """Training: every pack crop, `per_image` times an epoch (about `epoch_steps` steps); val: a few of them.

    Blur as the evaluation's: the engine's camera shake with centroid-centred PSFs (deblurgan.blur.centred_psf).
    """
    from deblurgan.io import list_images

    files = list_images(pack / "train")
    if not files:
        raise DeblurGANError(f"{pack}/train: no crops (python -m engine.photos build --pack {pack})")
    per_image = max(1, math.ceil(epoch_steps * cfg.data.batch_size / len(files)))
    blur = {"max_len": cfg.data.blur_max_len, "centre": True}
    train = SyntheticDataset(files, "train", cfg.data.crop, cfg.seed, per_image=per_image, **blur)
    every = max(1, len(files) // max(1, cfg.data.val_max_images or 8))
    val = SyntheticDataset(files[::every], "val", None, cfg.seed, **blur)
    return train, val


def load_continuation(trainer, weights: Path, continuation: Path) -> list[dict]:
    """Start the generator (and its EMA) from the shipped weights and the critic from the continuation state."""
    from deblurgan.checkpoint import load_checkpoint, load_state_dict_strict

    state = load_checkpoint(continuation)
    if state.get("format") != CONTINUATION_FORMAT:
        raise DeblurGANError(f"{continuation}: not a continuation state of engine.ship")
    gen = load_checkpoint(weights)["generator"]
    load_state_dict_strict(trainer.gen, gen, str(weights))
    if trainer.ema is not None:  # the EMA restarts from the shipped (EMA) weights too
        trainer.ema.load_state_dict({n: gen[n].float() for n, _ in trainer.gen.named_parameters()})
    load_state_dict_strict(trainer.critic, state["critic"], str(continuation))
    return list(state.get("history", []))


def export(trainer, out: Path, history: list[dict], run: dict) -> None:
    """fp16 EMA generator (deblurgan.pt) and fp16 critic + history (continuation.pt), atomically."""
    from deblurgan.checkpoint import atomic_save, make_checkpoint
    from deblurgan.config import config_to_dict

    model, which = trainer.eval_model()
    steps_total = sum(h["steps"] for h in history) + run["steps"]
    record = {**run, "weights": which, "runs": len(history) + 1, "steps_total": steps_total}
    ckpt = make_checkpoint(model, config=to_dict(trainer.cfg), training=record)
    ckpt["generator"] = {k: v.half() for k, v in ckpt["generator"].items()}
    atomic_save(ckpt, out / "deblurgan.pt")
    state = {
        "format": CONTINUATION_FORMAT,
        "critic": {k: v.detach().cpu().half() for k, v in trainer.critic.state_dict().items()},
        "critic_config": config_to_dict(trainer.critic_config),
        "history": history + [run],
    }
    atomic_save(state, out / "continuation.pt")


def train(args: argparse.Namespace, extra: list[str]) -> dict:
    import torch

    from deblurgan.vgg import load_vgg19_features

    from . import evalset
    from .trainer import Trainer

    pack, out = Path(args.pack), Path(args.out)
    if not (pack / "train").is_dir():
        raise DeblurGANError(f"--pack {pack}: no train/ folder (python -m engine.photos build --pack {pack})")
    if args.seconds <= 0:
        raise DeblurGANError(f"--seconds must be > 0 (got {args.seconds})")
    cfg = ship_config(pack, args.seconds, Path(args.work), extra)
    resume = not args.from_scratch and Path(args.weights).is_file() and Path(args.continuation).is_file()
    out.mkdir(parents=True, exist_ok=True)
    if any(out.iterdir()):
        raise DeblurGANError(f"--out {out} is not empty")
    vgg, vgg_source = load_vgg19_features(cfg.loss.vgg_weights, download=False)  # no network on the GPU machine
    train_set, val_set = datasets(cfg, pack, args.epoch_steps)
    run_dir = Path(cfg.out_dir) / str(cfg.name)
    trainer = Trainer(cfg, run_dir, train_set, val_set, vgg=vgg, vgg_source=vgg_source, progress=False)
    history = load_continuation(trainer, Path(args.weights), Path(args.continuation)) if resume else []
    time_schedule(trainer, args.seconds)
    print(f"ship: {'continuing from the shipped weights' if resume else 'from scratch'}; preset h200; "
          f"{len(train_set)} items/epoch; VGG {vgg_source}; deviations: {'; '.join(recipe_deviations(cfg))}",
          file=sys.stderr)  # fmt: skip
    summary = trainer.fit()
    device = trainer.device
    run = {
        "steps": int(summary["step"]), "seconds": round(float(summary["seconds"]), 1), "vgg": vgg_source,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "batch_size": cfg.data.batch_size, "crop": cfg.data.crop, "date": time.strftime("%Y-%m-%d"),
        "from_scratch": not resume,
    }  # fmt: skip
    export(trainer, out, history, run)
    if (run_dir / "train_log.csv").is_file():
        shutil.copyfile(run_dir / "train_log.csv", out / "train_log.csv")
    result = evalset.evaluate(out / "deblurgan.pt", sources=pack / "eval", device=args.eval_device)
    result["training"] = run
    evalset.write_report(result, out / "eval.json", out / "eval.md")
    split_and_manifest(out, args.piece_mib)
    return result


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m engine.ship", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train for --seconds, write weights, continuation state and evaluation")
    t.add_argument("--pack", default="data/pack", help="the data pack (python -m engine.photos build)")
    t.add_argument("--seconds", type=float, required=True, help="training wall time")
    t.add_argument("--out", required=True, help="an empty folder for what comes back")
    t.add_argument("--work", default="runs", help="where the run folder (full checkpoints, logs) goes")
    t.add_argument("--from-scratch", action="store_true", help="do not continue from the shipped weights")
    t.add_argument("--weights", default=str(WEIGHTS), help=argparse.SUPPRESS)
    t.add_argument("--continuation", default=str(CONTINUATION), help=argparse.SUPPRESS)
    t.add_argument("--epoch-steps", type=int, default=1000, help="steps per epoch (checkpoint interval)")
    t.add_argument("--piece-mib", type=float, default=PIECE_MIB, help="split files larger than this")
    t.add_argument("--eval-device", default="auto")
    j = sub.add_parser("join", help="verify and install what a train run returned")
    j.add_argument("--from", dest="src", required=True, help="the folder holding SHIPPED.json and the pieces")
    j.add_argument("--weights", default=str(WEIGHTS), help=argparse.SUPPRESS)
    j.add_argument("--continuation", default=str(CONTINUATION), help=argparse.SUPPRESS)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point: user errors become one line and exit code 2."""
    return run_cli(_main, argv)


def _main(argv: Sequence[str] | None = None) -> int:
    args, extra = build_parser().parse_known_args(argv)
    if args.cmd == "join":
        if extra:
            raise DeblurGANError(f"unexpected arguments: {' '.join(extra)}")
        for p in join(Path(args.src), Path(args.weights), Path(args.continuation)):
            print(f"installed {p}", file=sys.stderr)
        return 0
    result = train(args, list(extra))
    v = result["verdict"]
    print(f"ship: {result['training']['steps']} steps in {result['training']['seconds']:.0f}s; evaluation "
          f"{v['psnr_gain_db']:+.2f} dB, SSIM {v['ssim_gain']:+.4f}, worst {v['worst_gain_db']:+.2f} dB; "
          f"outputs in {args.out}", file=sys.stderr)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
