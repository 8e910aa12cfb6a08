"""The project's own evaluation: photos never trained on, blurred by the engine's camera shake at fixed seeds.

Usage:
    python -m engine.evalset build --out data/evalset [--sources data/pack/eval]
    python -m engine.evalset score [--checkpoint model.pt] [--set data/evalset | --sources DIR] \
        [--json eval.json] [--md eval.md] [--device cpu]

The photos are scikit-learn's and matplotlib's samples (engine.photos.EVAL_PHOTOS), full frames. Each gets one
camera-shake trajectory with the paper's parameters (deblurgan.blur: 64x64 canvas, 2000 steps, length 60 px,
exposure parameter drawn from the authors' choices) from the fixed seed `SEED + index`, and is blurred with the
PSFs of all four exposure fractions (1/100, 1/10, 1/2, 1): `blur/<photo>_t<k>.png` beside `sharp/<photo>_t<k>.png`
(k = 100, 10, 2, 1 for the fraction 1/k), the layout `python -m engine.evaluate --data` reads. `score` runs the
model (the shipped one without --checkpoint) on every blurred frame and writes per-image PSNR/SSIM of restored vs
blurred input (engine.evaluate, deblurgan.metrics), the means, and whether the quality target of docs/model.md is
met, as JSON and as a markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from deblurgan.blur import FRACTIONS, blur_image, centre_psf, random_trajectory, trajectory_to_psfs
from deblurgan.cli import run_cli
from deblurgan.errors import DeblurGANError
from deblurgan.fsutil import atomic_write_text
from deblurgan.io import read_image, write_image

from .photos import EVAL_PHOTOS, Photo, _rgb8, load_photo, sha256_file

SEED = 2018  # trajectory of photo i: np.random.default_rng(SEED + i)
TARGET_GAIN_DB = 3.0  # mean PSNR gain over the blurred inputs (the paper's gain on GoPro)
TARGET_WORST_DB = -0.5  # no image worse than its input by more than this




def _label(fraction: float) -> str:
    return f"t{round(1 / fraction)}"


def eval_frames(
    sources: Path | None = None, centre: bool = True, fractions: Sequence[float] = FRACTIONS
) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, sharp, blurred) uint8 HxWx3 full frames: every evaluation photo at every exposure fraction.

    `centre` (the default) moves each PSF's centroid onto the origin first (`centre_psf`); `fractions` picks a
    subset of FRACTIONS (the PSFs stay those of the full set)."""
    out = []
    for i, photo in enumerate(EVAL_PHOTOS):
        sharp = _source(photo, sources)
        traj = random_trajectory(np.random.default_rng(SEED + i), canvas=64, iters=2000, max_len=60)
        psfs = trajectory_to_psfs(traj, canvas=64, fractions=FRACTIONS)
        for fraction, psf in zip(FRACTIONS, psfs, strict=True):
            if fraction not in fractions:
                continue
            psf = centre_psf(psf) if centre else psf.astype(np.float64)
            blurred = blur_image(sharp.astype(np.float64) / 255.0, psf)
            blurred = np.clip(np.rint(blurred * 255.0), 0, 255).astype(np.uint8)
            out.append((f"{photo.name}_{_label(fraction)}", sharp, blurred))
    return out


def _source(photo: Photo, sources: Path | None) -> np.ndarray:
    if sources is None:
        return load_photo(photo)
    found = sorted(p for p in sources.glob(f"{photo.name}.*") if p.is_file())
    if not found:
        raise DeblurGANError(f"{sources}: no evaluation photo {photo.name}.* (python -m engine.photos build)")
    return _rgb8(read_image(found[0]))


def build(out: Path, sources: Path | None = None, centre: bool = True) -> dict[str, str]:
    """Write the evaluation set (blur/, sharp/ PNGs); returns {blurred file: sha256}."""
    sums = {}
    for name, sharp, blurred in eval_frames(sources, centre):
        write_image(out / "sharp" / f"{name}.png", sharp)
        write_image(out / "blur" / f"{name}.png", blurred)
        sums[f"blur/{name}.png"] = sha256_file(out / "blur" / f"{name}.png")
    return sums


def score_set(checkpoint: str | Path | None, set_dir: Path, device: str = "auto") -> tuple[list[dict], dict]:
    """Per-image rows and the mean row (engine.evaluate's fields) of the model on an evaluation set."""
    import torch

    from deblurgan.inference import Deblurrer
    from deblurgan.pretrained import resolve_checkpoint

    from .evaluate import mean_row, score, test_pairs

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model = Deblurrer(resolve_checkpoint(checkpoint), device=device)
    rows, failed = score(test_pairs(set_dir), model, None, progress=False)
    if failed or not rows:
        raise DeblurGANError(f"{failed} evaluation images could not be scored")
    return rows, mean_row(rows)


def verdict(rows: list[dict], mean: dict) -> dict:
    """The quality target of docs/model.md, checked on these numbers."""
    gains = [r["psnr"] - r["blur_psnr"] for r in rows]
    return {
        "psnr_gain_db": mean["psnr"] - mean["blur_psnr"],
        "ssim_gain": mean["ssim"] - mean["blur_ssim"],
        "worst_gain_db": min(gains),
        "worst_image": rows[int(np.argmin(gains))]["image"],
        "target_met": bool(
            mean["psnr"] - mean["blur_psnr"] >= TARGET_GAIN_DB
            and mean["ssim"] > mean["blur_ssim"]
            and min(gains) >= TARGET_WORST_DB
        ),  # fmt: skip
    }


def markdown(rows: list[dict], mean: dict, v: dict) -> str:
    lines = ["| image | PSNR restored | PSNR blurred | gain | SSIM restored | SSIM blurred |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]  # fmt: skip
    for r in rows + [mean]:
        name = f"**{r['image']}**" if r is mean else r["image"]
        lines.append(f"| {name} | {r['psnr']:.2f} | {r['blur_psnr']:.2f} | {r['psnr'] - r['blur_psnr']:+.2f} | "
                     f"{r['ssim']:.4f} | {r['blur_ssim']:.4f} |")  # fmt: skip
    lines.append("")
    lines.append(f"Mean gain {v['psnr_gain_db']:+.2f} dB PSNR, {v['ssim_gain']:+.4f} SSIM; worst image "
                 f"{v['worst_image']} {v['worst_gain_db']:+.2f} dB; target (>= +{TARGET_GAIN_DB:g} dB, SSIM up, none "
                 f"below {TARGET_WORST_DB:g} dB): {'met' if v['target_met'] else 'not met'}.")  # fmt: skip
    return "\n".join(lines) + "\n"


def evaluate(
    checkpoint: str | Path | None,
    set_dir: Path | None = None,
    sources: Path | None = None,
    device: str = "auto",
    centre: bool = True,
) -> dict:
    """Build the set when no `set_dir` is given, score the model; {rows, mean, verdict, inputs_sha256}."""
    with tempfile.TemporaryDirectory(prefix="deblurgan-evalset-") as tmp:
        if set_dir is None:
            set_dir = Path(tmp)
            sums = build(set_dir, sources, centre)
        else:
            sums = {f"blur/{p.name}": sha256_file(p) for p in sorted((set_dir / "blur").glob("*.png"))}
        rows, mean = score_set(checkpoint, set_dir, device)
    return {"rows": rows, "mean": mean, "verdict": verdict(rows, mean), "inputs_sha256": sums, "seed": SEED,
            "centred_psfs": centre}  # fmt: skip


def crops_check(checkpoint: str | Path, crop: int = 96, per_image: int = 2, sources: Path | None = None) -> dict:
    """Mean PSNR of restored and blurred on a few small crops (longest exposure) of the evaluation set, on CPU.

    The crops are cut from the blurred full frames (the blur sees the whole photo), at fixed places.
    """
    import torch

    from deblurgan.checkpoint import load_generator
    from deblurgan.metrics import psnr

    gen = load_generator(checkpoint, kernels="torch")
    restored, blurred = [], []
    for _, sharp, blur in eval_frames(sources, fractions=FRACTIONS[-1:]):
        h, w = sharp.shape[:2]
        for k in range(per_image):
            y, x = (h - crop) * (k + 1) // (per_image + 1), (w - crop) * (per_image - k) // (per_image + 1)
            s, b = sharp[y : y + crop, x : x + crop], blur[y : y + crop, x : x + crop]
            t = torch.from_numpy(b).permute(2, 0, 1)[None].float() / 127.5 - 1
            with torch.no_grad():
                out = gen(t)[0].clamp(-1, 1)
            r = ((out + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
            restored.append(psnr(r, s))
            blurred.append(psnr(b, s))
    return {"psnr": float(np.mean(restored)), "blur_psnr": float(np.mean(blurred)), "crops": len(restored)}


def write_report(result: dict, json_path: Path | None, md_path: Path | None) -> None:
    if json_path is not None:
        atomic_write_text(json_path, json.dumps(result, indent=1) + "\n")
    if md_path is not None:
        atomic_write_text(md_path, markdown(result["rows"], result["mean"], result["verdict"]))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m engine.evalset", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="write the blurred evaluation set")
    b.add_argument("--out", required=True)
    b.add_argument("--sources", help="folder with the evaluation photos (a pack's eval/); default: the packages")
    b.add_argument("--uncentred", action="store_true", help="the engine's PSFs as they are (see centre_psf)")
    s = sub.add_parser("score", help="score a model on the evaluation set")
    s.add_argument("--checkpoint", help="generator checkpoint (default: the shipped model)")
    s.add_argument("--set", help="an evaluation set written by build (default: built on the fly)")
    s.add_argument("--sources", help="folder with the evaluation photos, when the set is built on the fly")
    s.add_argument("--json", help="write the full result here")
    s.add_argument("--md", help="write the markdown table here")
    s.add_argument("--uncentred", action="store_true", help="build with the engine's PSFs as they are")
    s.add_argument("--device", default="auto")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point: user errors become one line and exit code 2."""
    return run_cli(_main, argv)


def _main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    sources = Path(args.sources) if args.sources else None
    if args.cmd == "build":
        sums = build(Path(args.out), sources, not args.uncentred)
        print(f"{len(sums)} blurred frames in {args.out}", file=sys.stderr)
        return 0
    if args.set and not Path(args.set, "blur").is_dir():
        raise DeblurGANError(f"--set {args.set}: no blur/ folder (python -m engine.evalset build --out DIR)")
    result = evaluate(args.checkpoint, Path(args.set) if args.set else None, sources, args.device, not args.uncentred)
    write_report(result, Path(args.json) if args.json else None, Path(args.md) if args.md else None)
    print(markdown(result["rows"], result["mean"], result["verdict"]), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
