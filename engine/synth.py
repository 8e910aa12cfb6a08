"""Write a paired blurred/sharp dataset from a folder of sharp images (camera-shake blur, DeblurGAN style).

Usage:
    python -m engine.synth SHARP_DIR --out OUT_DIR [--seed 0] [--per-image 1] [--fraction random]
                           [--gamma [2.2]] [--noise STD] [--poisson PEAK] [--canvas 64] [--quiet]

Writes (subfolders of SHARP_DIR are mirrored; all files are written atomically):
    OUT/blur/<rel>/<name>.png     the blurred image (name_<k>.png when --per-image > 1)
    OUT/sharp/<rel>/<name>.png    the sharp image, same size and name (alpha dropped)
    OUT/psf/<rel>/<name>.npy      the 64x64 float32 PSF used (sums to 1)
    OUT/psf_sheet.png             the first 64 PSFs, for a person to look at
    OUT/manifest.json             seed, settings, and one record per pair (+ the files that failed)
Read it back with `deblurgan.data.build_dataset("paired:OUT/blur,OUT/sharp")`.
Every image's kernels depend only on --seed and its relative path, so reruns and added files change nothing else.
A bad image is reported on one line and skipped; the exit code is 1 if any failed.
"""

from __future__ import annotations

import argparse
import json
import sys
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from deblurgan.blur import FRACTIONS, blur_image, psf_sheet, random_psfs
from deblurgan.cli import run_cli
from deblurgan.errors import DeblurGANError
from deblurgan.fsutil import atomic_path, atomic_write_text
from deblurgan.io import list_images, read_image, write_image

SHEET_MAX = 64


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m engine.synth", description=__doc__.split("\n")[0])
    p.add_argument("sharp_dir", type=Path, metavar="SHARP_DIR", help="folder of sharp images (searched recursively)")
    p.add_argument(
        "--out", type=Path, required=True, metavar="OUT_DIR", help="output folder (blur/, sharp/, psf/, manifest.json)"
    )
    p.add_argument("--seed", type=int, default=0, metavar="S", help="random seed (default 0)")
    p.add_argument("--per-image", type=int, default=1, metavar="N", help="blurred versions per sharp image (default 1)")
    p.add_argument(
        "--fraction",
        default="random",
        metavar="F",
        help="exposure fraction of the trajectory: one of 0.01, 0.1, 0.5, 1 or 'random' (uniform, the default)",
    )
    p.add_argument(
        "--gamma",
        type=float,
        nargs="?",
        const=2.2,
        default=None,
        metavar="G",
        help="blur in linear light with this gamma (2.2 when given alone; put it after SHARP_DIR)",
    )
    p.add_argument(
        "--noise", type=float, default=0.0, metavar="STD", help="gaussian noise std in [0, 1] units (default 0)"
    )
    p.add_argument(
        "--poisson", type=float, default=None, metavar="PEAK", help="Poisson noise: photons at white (e.g. 1000)"
    )
    p.add_argument("--canvas", type=int, default=64, metavar="K", help="PSF size in pixels (default 64)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def synthesize(
    sharp_dir: Path,
    out: Path,
    seed: int = 0,
    per_image: int = 1,
    fraction: str = "random",
    gamma: float | None = None,
    noise: float = 0.0,
    poisson: float | None = None,
    canvas: int = 64,
    progress: bool = True,
) -> dict:
    """Blur every image under `sharp_dir` into `out`; returns the manifest (also written to out/manifest.json)."""
    if not sharp_dir.is_dir():
        raise DeblurGANError(f"{sharp_dir}: not a folder")
    if per_image < 1:
        raise DeblurGANError(f"--per-image must be >= 1 (got {per_image})")
    choice = _fraction_index(fraction)
    if noise < 0 or (poisson is not None and poisson <= 0):
        raise DeblurGANError("--noise must be >= 0 and --poisson > 0")
    random_psfs(np.random.default_rng(0), 1, canvas=canvas)  # rejects a bad --canvas before any work
    files = list_images(sharp_dir)
    if not files:
        raise DeblurGANError(f"{sharp_dir}: no images found")
    out = out.resolve()
    if out == sharp_dir.resolve() or sharp_dir.resolve() in out.parents:
        raise DeblurGANError(f"--out {out} is inside the input folder; pick another folder")

    records, failed, sheet = [], [], []
    taken: dict[Path, Path] = {}  # output stem -> the input that claimed it ("a.png" and "a.jpg" would clash)
    for path in tqdm(files, desc="synth", unit="img", disable=not progress, file=sys.stderr):
        rel = path.relative_to(sharp_dir)
        try:
            if rel.with_suffix("") in taken:
                raise DeblurGANError(f"{path}: same output name as {taken[rel.with_suffix('')]}; rename one of them")
            taken[rel.with_suffix("")] = path
            sharp = _rgb_or_gray(read_image(path))
            rng = np.random.default_rng([seed, zlib.crc32(rel.as_posix().encode())])
            psfs = random_psfs(rng, per_image, canvas=canvas)
            for k in range(per_image):
                j = int(rng.integers(len(FRACTIONS))) if choice is None else choice
                psf = psfs[k, j]
                blurred = blur_image(sharp, psf, gamma=gamma, noise_std=noise, poisson_peak=poisson, rng=rng)
                name = rel.with_suffix("") if per_image == 1 else rel.with_name(f"{rel.stem}_{k}")
                write_image(out / "blur" / name.with_suffix(".png"), _to_dtype(blurred, sharp.dtype))
                write_image(out / "sharp" / name.with_suffix(".png"), sharp)
                _save_npy(out / "psf" / name.with_suffix(".npy"), psf)
                records.append(
                    {
                        "source": rel.as_posix(),
                        "blur": f"blur/{name.as_posix()}.png",
                        "sharp": f"sharp/{name.as_posix()}.png",
                        "psf": f"psf/{name.as_posix()}.npy",
                        "fraction": FRACTIONS[j],
                    }
                )
                if len(sheet) < SHEET_MAX:
                    sheet.append(psf)
        except DeblurGANError as e:
            failed.append({"source": rel.as_posix(), "error": str(e)})
            tqdm.write(f"skipped: {e}", file=sys.stderr)

    manifest = {
        "tool": "deblurgan engine.synth",
        "seed": seed,
        "settings": {
            "per_image": per_image,
            "fraction": fraction,
            "gamma": gamma,
            "noise_std": noise,
            "poisson_peak": poisson,
            "canvas": canvas,
            "fractions": list(FRACTIONS),
        },
        "source_dir": str(sharp_dir),
        "pairs": records,
        "failed": failed,
    }
    if sheet:
        write_image(out / "psf_sheet.png", psf_sheet(np.stack(sheet)))
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "manifest.json", json.dumps(manifest, indent=1))
    return manifest


def _fraction_index(fraction: str) -> int | None:
    if fraction == "random":
        return None
    try:
        return [float(f) for f in FRACTIONS].index(float(fraction))
    except ValueError:
        raise DeblurGANError(f"--fraction must be 'random' or one of {list(FRACTIONS)} (got {fraction!r})") from None


def _rgb_or_gray(image: np.ndarray) -> np.ndarray:
    """Drop alpha; 16-bit colour becomes 8-bit (the image writer stores 16-bit only for gray)."""
    if image.ndim == 3:
        image = image[..., :3]
        if image.dtype == np.uint16:
            image = (image.astype(np.float64) / 257).round().astype(np.uint8)
    return np.ascontiguousarray(image)


def _to_dtype(image: np.ndarray, dtype: np.dtype) -> np.ndarray:
    top = np.iinfo(dtype).max
    return (np.clip(image, 0, 1) * top).round().astype(dtype)


def _save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, array)


def _main(argv: Sequence[str] | None = None) -> int:
    a = parse_args(argv)
    m = synthesize(
        a.sharp_dir, a.out, a.seed, a.per_image, a.fraction, a.gamma, a.noise, a.poisson, a.canvas, not a.quiet
    )
    print(f"wrote {len(m['pairs'])} pairs to {a.out}" + (f"; {len(m['failed'])} images failed" if m["failed"] else ""))
    return 1 if m["failed"] else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point (also the `deblurgan-synth` console script): user errors exit 2 with one line, no traceback."""
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
