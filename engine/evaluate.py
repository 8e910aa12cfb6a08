"""Score deblurring: PSNR and SSIM (scikit-image, uint8 RGB) per image, their mean, and the blurred baseline.

Usage:
    python -m engine.evaluate --data GOPRO_Large/test --checkpoint model.pt [--csv scores.csv] [--save DIR]
    python -m engine.evaluate --restored results/ --sharp GOPRO_Large/test --blur GOPRO_Large/test [--csv F]

--data accepts the GoPro test layout (SEQ/blur/*.png + SEQ/sharp/*.png) or a folder holding blur/ and
sharp/ directly; it runs the model on every blurred image. --restored/--sharp/--blur score existing images,
paired by relative path (file extension ignored); each of them may also be a GoPro-layout root, in which
case its SEQ/sharp (for --sharp) or SEQ/blur (for --blur, --restored) images are used. The CSV (written
atomically) has one row per image and a final `mean` row. Exit code 1 when some pairs could not be scored.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deblurgan.cli import ArgumentParser, run_cli
from deblurgan.data import gopro_pairs, paired_folder_pairs
from deblurgan.errors import DeblurGANError, first_line
from deblurgan.fsutil import atomic_write_text
from deblurgan.io import list_images, read_image, write_image
from deblurgan.metrics import psnr, ssim

from .deblur import add_model_args, make_deblurrer

FIELDS = ("image", "psnr", "ssim", "blur_psnr", "blur_ssim")
PROG = "python -m engine.evaluate"  # the same usage line for the deblurgan-evaluate console script


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog=PROG, description="PSNR/SSIM of deblurred images.")
    p.add_argument("--data", help="GoPro-layout test folder (SEQ/blur, SEQ/sharp): runs the model")
    p.add_argument("--restored", help="folder of already deblurred images to score")
    p.add_argument("--sharp", help="folder of ground-truth sharp images (with --restored)")
    p.add_argument("--blur", help="folder of blurred inputs, for the baseline column (with --restored)")
    p.add_argument("--csv", help="write per-image scores and the mean here")
    p.add_argument("--save", help="with --data: also write the restored images to this folder")
    p.add_argument(
        "--ssim-gaussian",
        action="store_true",
        help="SSIM with an 11x11 Gaussian window, sigma 1.5 (Wang et al., as MATLAB) instead of skimage's 7x7 default",
    )
    add_model_args(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar (shown only on a terminal)")
    return p


@dataclass
class Pair:
    name: str  # relative path without extension
    sharp: Path
    blur: Path | None = None
    restored: Path | None = None


def main(argv: Sequence[str] | None = None) -> int:
    """Console-script entry point: user errors become one line and exit code 2."""
    return run_cli(_main, argv)


def _main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if bool(args.data) == bool(args.restored):
        raise DeblurGANError("give either --data (run the model) or --restored with --sharp (score files)")
    if args.save and not args.data:
        raise DeblurGANError("--save applies to --data (it writes the restored images)")
    if args.data:
        pairs = test_pairs(Path(args.data))
        deblurrer = make_deblurrer(args)
    else:
        if not args.sharp:
            raise DeblurGANError("--restored needs --sharp")
        pairs = folder_pairs(Path(args.restored), Path(args.sharp), Path(args.blur) if args.blur else None)
        deblurrer = None
    save = Path(args.save) if args.save else None
    rows, failed = score(pairs, deblurrer, save, not args.no_progress, args.ssim_gaussian)
    if not rows:
        raise DeblurGANError("no image pair could be scored")
    mean = mean_row(rows)
    if args.csv:
        write_csv(Path(args.csv), rows + [mean])
    print(summary(mean, len(rows)))
    return 1 if failed else 0


def _images_by_name(folder: Path) -> dict[str, Path]:
    return {str(p.relative_to(folder).with_suffix("")): p for p in list_images(folder)}


def _gopro_split(root: Path, split: str) -> dict[str, Path] | None:
    """SEQ/<split>/img -> {"SEQ/img": path}, or {"img": path} for root/<split>/img; None when absent."""
    if (root / split).is_dir():
        return _images_by_name(root / split)
    seqs = sorted(d for d in root.glob(f"*/{split}") if d.is_dir())
    if not seqs:
        return None
    out = {}
    for d in seqs:
        out.update({f"{d.parent.name}/{k}": v for k, v in _images_by_name(d).items()})
    return out


def test_pairs(root: Path) -> list[Pair]:
    """Blurred/sharp pairs of a GoPro-layout test folder (deblurgan.data.gopro_pairs) or of root/blur + root/sharp."""
    if not root.is_dir():
        raise DeblurGANError(f"--data {root}: not a folder")
    if (root / "blur").is_dir() and (root / "sharp").is_dir():
        found = paired_folder_pairs(root / "blur", root / "sharp")
        base = root / "blur"
        return sorted((Pair(str(b.relative_to(base).with_suffix("")), s, b) for b, s in found), key=_name)
    if not any(d.is_dir() for d in root.glob("*/sharp")) and not any(d.is_dir() for d in root.glob("*/*/sharp")):
        raise DeblurGANError(f"--data {root}: expected SEQ/blur/*.png and SEQ/sharp/*.png (or blur/ and sharp/)")
    pairs = []
    for b, s in gopro_pairs(root, split="val"):  # the "val" split looks for test/ (or ROOT itself)
        blur_dir = next(p for p in b.parents if p.name == "blur")
        pairs.append(Pair(f"{blur_dir.parent.name}/{b.relative_to(blur_dir).with_suffix('')}", s, b))
    return sorted(pairs, key=_name)


def _name(pair: Pair) -> str:
    return pair.name


def folder_pairs(restored: Path, sharp: Path, blur: Path | None) -> list[Pair]:
    """Pairs of restored/sharp(/blur) images matched by relative path without extension."""
    for name, d in (("--restored", restored), ("--sharp", sharp), ("--blur", blur)):
        if d is not None and not d.is_dir():
            raise DeblurGANError(f"{name} {d}: not a folder")

    def load(d: Path, split: str) -> dict[str, Path]:
        found = _gopro_split(d, split)
        return found if found is not None else _images_by_name(d)

    sharp_map, restored_map = load(sharp, "sharp"), load(restored, "blur")
    blur_map = load(blur, "blur") if blur is not None else None
    return _pair(sharp_map, blur=blur_map, restored=restored_map)


def _pair(sharp: dict[str, Path], blur: dict | None = None, restored: dict | None = None) -> list[Pair]:
    keys = sorted(restored if restored is not None else blur)  # type: ignore[arg-type]
    if not keys:
        raise DeblurGANError("no images to score")
    missing = Path("<missing>")
    return [
        Pair(
            k,
            sharp.get(k, missing),
            None if blur is None else blur.get(k, missing),
            None if restored is None else restored.get(k, missing),
        )
        for k in keys
    ]


def to_rgb8(image: np.ndarray) -> np.ndarray:
    """Metrics are defined on uint8 RGB: 16-bit is rounded to 8, gray replicated, alpha dropped."""
    if image.dtype == np.uint16:
        image = np.clip(np.rint(image / 257.0), 0, 255).astype(np.uint8)
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    return np.ascontiguousarray(image[:, :, :3])


def score(
    pairs: list[Pair], deblurrer, save: Path | None, progress: bool, gaussian: bool = False
) -> tuple[list[dict], int]:
    from tqdm import tqdm

    rows, failed = [], 0
    for pair in tqdm(pairs, unit="img", disable=not progress or not sys.stderr.isatty(), file=sys.stderr):
        try:
            if not pair.sharp.is_file():
                raise DeblurGANError("no matching sharp image")
            if pair.blur is not None and not pair.blur.is_file():
                raise DeblurGANError("no matching blurred image")
            sharp = to_rgb8(read_image(pair.sharp))
            blur = to_rgb8(read_image(pair.blur)) if pair.blur is not None else None
            if deblurrer is not None:
                restored = deblurrer.deblur(blur)
                if save is not None:
                    write_image(save / f"{pair.name}.png", restored)
            else:
                restored = to_rgb8(read_image(pair.restored))
            row = {"image": pair.name, "psnr": psnr(restored, sharp), "ssim": ssim(restored, sharp, gaussian)}
            if blur is not None:
                row.update(blur_psnr=psnr(blur, sharp), blur_ssim=ssim(blur, sharp, gaussian))
            rows.append(row)
        except DeblurGANError as e:
            failed += 1
            tqdm.write(f"skipped {pair.name}: {e}", file=sys.stderr)
        except Exception as e:  # e.g. out of memory on one image: report it and go on
            failed += 1
            tqdm.write(f"skipped {pair.name}: {type(e).__name__}: {first_line(e)}", file=sys.stderr)
    return rows, failed


def mean_row(rows: list[dict]) -> dict:
    out: dict = {"image": "mean"}
    for f in FIELDS[1:]:
        vals = [r[f] for r in rows if f in r]
        if vals:
            out[f] = float(np.mean(vals))  # inf (identical images) propagates honestly
    return out


def summary(mean: dict, n: int) -> str:
    line = f"restored:      PSNR {mean['psnr']:.4f} dB  SSIM {mean['ssim']:.4f}  ({n} images)"
    if "blur_psnr" in mean:
        line += f"\nblurred input: PSNR {mean['blur_psnr']:.4f} dB  SSIM {mean['blur_ssim']:.4f}"
    return line


def write_csv(path: Path, rows: list[dict]) -> None:
    """Write the CSV atomically (temp file in the same folder + rename)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=FIELDS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: (_fmt(v) if k != "image" else v) for k, v in r.items()})
    atomic_write_text(path, buf.getvalue())


def _fmt(v: float) -> str:
    return "inf" if math.isinf(v) else f"{v:.6f}"


if __name__ == "__main__":
    sys.exit(main())
