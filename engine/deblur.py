"""Deblur images, folders and videos with a trained generator or an exported artifact.

Usage:
    python -m engine.deblur INPUT... --checkpoint model.pt --out DIR [options]
    python -m engine.deblur clips/ --runtime onnx --model deblurgan.onnx --out DIR --device cuda

INPUT: image files, folders (searched recursively for images and videos) and video files. The output
folder mirrors each input folder; a file input lands directly in --out. Videos come out as a video with
the input's frame timestamps and audio, turned upright if the input carries a rotation (or as PNG frames
with --frames). A bad file is reported as `skipped PATH: reason`
and the job goes on; the exit code is 0 when every file worked, 1 when some failed, 2 for usage errors.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deblurgan.cli import ArgumentParser, run_cli
from deblurgan.errors import DeblurGANError, first_line
from deblurgan.inference import RUNTIMES
from deblurgan.io import is_image_file, read_image, write_image
from deblurgan.precision import PRECISIONS
from deblurgan.video import VideoReader, VideoWriter, is_video_file

PROG = "python -m engine.deblur"  # the same usage line for the deblurgan-deblur console script
_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog=PROG, description="Deblur images, folders and videos.")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders (recursive) or video files")
    p.add_argument("--out", required=True, help="output folder (mirrors input folders)")
    p.add_argument("--suffix", default="", help="added to output file names, e.g. _deblurred")
    p.add_argument("--ext", help="output image format, e.g. png (default: same as the input)")
    p.add_argument("--side-by-side", action="store_true", help="write input|output next to each other")
    p.add_argument("--frames", action="store_true", help="write videos as numbered PNG frames in a folder")
    add_model_args(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def add_model_args(p: argparse.ArgumentParser) -> None:
    """The options that pick and run a model (shared with engine.evaluate)."""
    p.add_argument(
        "--checkpoint", help="generator checkpoint (ours or the authors' latest_net_G.pth); default: the shipped model"
    )
    p.add_argument("--model", help="exported model for --runtime onnx|aoti|tensorrt (default: --checkpoint)")
    p.add_argument(
        "--runtime",
        choices=RUNTIMES,
        help="what runs the model: torch (a checkpoint, exact tiling), or an exported --model for ONNX Runtime, "
        "AOTInductor or TensorRT (default: from --model's suffix, else torch)",
    )
    p.add_argument("--backend", choices=RUNTIMES, dest="runtime", help=argparse.SUPPRESS)  # the older spelling
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (cuda when available)")
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help="torch runtime: auto (bf16 on CPUs with native bf16, else fp32), fp32, bf16, fp16 (CUDA)",
    )
    p.add_argument("--fp16", action="store_true", help="same as --precision fp16 (CUDA, torch runtime)")
    p.add_argument("--batch-size", type=int, default=4, help="frames or tiles per forward pass")
    p.add_argument("--tile", type=int, help="tile size in px (multiple of 4); default: only when memory is short")
    p.add_argument("--overlap", type=int, help="tile overlap in px (multiple of 4); default: automatic")
    p.add_argument(
        "--tile-stats",
        choices=("global", "tile"),
        default="global",
        help="instance-norm statistics of tiles: whole image (exact, torch) or per tile (one pass)",
    )
    p.add_argument(
        "--max-memory",
        type=parse_bytes,
        metavar="SIZE",
        help="bound of the host memory a large image may take on CPU, e.g. 4G or 512M (default 4G): "
        "a larger image runs in bands of rows (exact) or smaller tiles",
    )
    p.add_argument("--test-time-dropout", action="store_true", help="keep dropout on (the paper's inference)")
    p.add_argument("--seed", type=int, help="seed for --test-time-dropout")
    p.add_argument("--no-ema", action="store_true", help="use the raw generator even if the checkpoint has EMA")


def parse_bytes(text: str) -> int:
    """'4G', '512M', '1.5GiB', '2048' -> bytes (K/M/G/T are powers of 1024)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*", text, re.IGNORECASE)
    if not m or float(m.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a memory size (e.g. 4G, 512M)")
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


@dataclass
class Job:
    src: Path
    dst: Path  # for videos with --frames: a folder


def main(argv: Sequence[str] | None = None) -> int:
    """Console-script entry point: user errors become one line and exit code 2."""
    return run_cli(_main, argv)


def _main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = Path(args.out)
    jobs = plan_jobs([Path(p) for p in args.inputs], out, args.suffix, args.ext, args.frames)
    deblurrer = make_deblurrer(args)
    return run_jobs(jobs, deblurrer, args)


def make_deblurrer(args: argparse.Namespace):  # -> deblurgan.inference.Deblurrer
    import torch

    from deblurgan.inference import Deblurrer

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.seed is not None and not args.test_time_dropout:
        print("note: --seed only matters with --test-time-dropout", file=sys.stderr)
    precision = args.precision
    if args.fp16:
        if precision not in ("auto", "fp16"):
            raise DeblurGANError(f"--fp16 contradicts --precision {precision}")
        precision = "fp16"
    opts = dict(
        batch_size=args.batch_size,
        tile=args.tile,
        overlap=args.overlap,
        tile_stats=args.tile_stats,
        max_memory=args.max_memory,
        test_time_dropout=args.test_time_dropout,
        seed=args.seed,
    )
    runtime = args.runtime
    if runtime is None:
        runtime = "torch"
        if args.model:
            from export.runtime import detect_runtime

            runtime = detect_runtime(args.model)
    if runtime == "torch":
        if args.model and not args.checkpoint:
            args.checkpoint = args.model
        return Deblurrer(args.checkpoint, device=device, precision=precision, use_ema=not args.no_ema, **opts)
    path = args.model or args.checkpoint
    if not path:
        raise DeblurGANError(f"give --model (the {runtime} model to run)")
    try:
        from export.runtime import load_runner
    except ImportError as e:
        raise DeblurGANError(f"the {runtime} runtime is not available in this install ({e})") from None
    runner = load_runner(path, runtime, device, precision=precision)
    return Deblurrer(runner=runner, **opts)


def plan_jobs(inputs: list[Path], out: Path, suffix: str, ext: str | None, frames: bool) -> list[Job]:
    """Expand inputs into (source, destination) pairs; refuse outputs that would overwrite an input."""
    if out.exists() and not out.is_dir():
        raise DeblurGANError(f"--out {out} is a file: give a folder (outputs keep their input names)")
    out_r = out.resolve()
    pairs: list[tuple[Path, Path]] = []
    for item in inputs:
        if item.is_dir():
            if item.resolve() == out_r:
                raise DeblurGANError(f"--out {out} is an input folder: choose another folder")
            files = sorted(f for f in item.rglob("*") if f.is_file() and (is_image_file(f) or is_video_file(f)))
            files = [
                f
                for f in files
                if not f.resolve().is_relative_to(out_r)  # earlier outputs inside an input folder
                and not any(part.startswith(".") for part in f.relative_to(item).parts)  # ._x.jpg, .cache/...
            ]
            pairs += [(f, f.relative_to(item)) for f in files]
        else:
            pairs.append((item, Path(item.name)))  # missing files are reported per file later
    if not pairs:
        raise DeblurGANError("no images or videos found in the inputs")
    sources = {p.resolve() for p, _ in pairs}
    jobs, seen = [], {}
    for src, rel in pairs:
        if is_video_file(src) and frames:
            dst = out / rel.parent / (rel.stem + suffix)
        else:
            new_ext = f".{ext.lstrip('.')}" if ext and not is_video_file(src) else rel.suffix
            dst = out / rel.parent / (rel.stem + suffix + new_ext)
        key = dst.resolve()
        if key in sources:
            raise DeblurGANError(f"{src}: output {dst} would overwrite an input (use another --out or a --suffix)")
        if key in seen:
            raise DeblurGANError(f"{src} and {seen[key]} would both be written to {dst} (use separate runs)")
        seen[key] = src
        jobs.append(Job(src, dst))
    return jobs


def run_jobs(jobs: list[Job], deblurrer, args: argparse.Namespace) -> int:
    from tqdm import tqdm

    failed = 0
    show = not args.no_progress and sys.stderr.isatty()
    bar = tqdm(jobs, unit="file", disable=not show or len(jobs) < 2, file=sys.stderr)
    for job in bar:
        try:
            if is_video_file(job.src):
                deblur_video(job, deblurrer, args, show)
            else:
                deblur_image_file(job, deblurrer, args.side_by_side)
        except DeblurGANError as e:
            failed += 1
            tqdm.write(f"skipped {job.src}: {_strip_path(str(e), job.src)}", file=sys.stderr)
        except Exception as e:  # e.g. out of memory on one huge file: report it and go on with the others
            failed += 1
            tqdm.write(f"skipped {job.src}: {type(e).__name__}: {first_line(e)}", file=sys.stderr)
    done = len(jobs) - failed
    print(f"deblurred {done} of {len(jobs)} file(s) into {args.out}", file=sys.stderr)
    return 1 if failed else 0


def deblur_image_file(job: Job, deblurrer, side_by_side: bool) -> None:
    if not job.src.is_file():
        raise DeblurGANError("file not found")
    if not is_image_file(job.src):
        raise DeblurGANError("not an image or video file (unknown extension)")
    image = read_image(job.src)
    _note_tiling(deblurrer, image.shape[0], image.shape[1])
    out = deblurrer.deblur(image)
    write_image(job.dst, np.concatenate([image, out], axis=1) if side_by_side else out)


def deblur_video(job: Job, deblurrer, args: argparse.Namespace, show: bool) -> None:
    from tqdm import tqdm

    if not job.src.is_file():
        raise DeblurGANError("file not found")
    with VideoReader(job.src) as reader:
        width = reader.width * (2 if args.side_by_side else 1)
        _note_tiling(deblurrer, reader.height, reader.width)
        writer = None if args.frames else VideoWriter(job.dst, reader.fps, width, reader.height, source=reader)
        bar = tqdm(total=reader.frames or None, unit="frame", disable=not show, leave=False, file=sys.stderr)
        index = 0
        try:
            batch: list[np.ndarray] = []
            for frame in _with_end(reader):
                if frame is not None:
                    batch.append(frame)
                if batch and (frame is None or len(batch) >= deblurrer.batch_size):
                    for src, out in zip(batch, deblurrer.deblur_batch(batch), strict=True):
                        img = np.concatenate([src, out], axis=1) if args.side_by_side else out
                        index += 1
                        if writer is None:
                            write_image(job.dst / f"frame_{index:06d}.png", img)
                        else:
                            writer.write(img)
                    bar.update(len(batch))
                    batch = []
            if index == 0:
                raise DeblurGANError("video has no frames")
        except BaseException:
            if writer is not None:
                writer.abort()
            raise
        finally:
            bar.close()
        if writer is not None:
            writer.close()


_NOTED: set[tuple[int, int]] = set()


def _note_tiling(deblurrer, height: int, width: int) -> None:
    """Say once per size when an image runs in tiles, and what that costs."""
    from deblurgan.inference import padded_size

    plan = deblurrer.plan(*padded_size(height, width))
    if plan is None or (height, width) in _NOTED:
        return
    _NOTED.add((height, width))
    n = len(plan.windows())
    if deblurrer.tile_stats == "global" and n == 1:
        print(
            f"note: {width}x{height} runs in bands of rows within --max-memory (whole-image IN statistics: exact; "
            "each layer runs about once per pixel while the kept states fit, earlier layers are recomputed otherwise)",
            file=sys.stderr,
        )
        return
    if deblurrer.tile_stats == "global":
        how = (
            "whole-image IN statistics: exact; each layer runs once per tile while the tiles' kept states fit "
            "--max-memory, early layers are recomputed otherwise; --tile-stats tile is one approximate pass"
        )
    else:
        how = "per-tile IN statistics: one pass, blended seams, approximate"
    print(f"note: {width}x{height} runs in {n} tiles of {plan.tile} px ({how})", file=sys.stderr)


def _with_end(reader: VideoReader):
    yield from reader
    yield None


def _strip_path(msg: str, path: Path) -> str:
    """Library errors start with the path; the skip line already names it."""
    prefix = f"{path}: "
    return msg[len(prefix) :] if msg.startswith(prefix) else msg


if __name__ == "__main__":
    sys.exit(main())
