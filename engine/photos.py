"""The training photographs and the compact data pack for a GPU run, rebuilt from installable packages.

Usage:
    python -m engine.photos build --out data/photos --pack data/pack [--crop 320] [--quality 95] [--pack-mib 24]

Sources (see PHOTOS; docs/model.md lists them): scikit-image's sample photographs and the photographs in the
Debian wallpaper packages mate-backgrounds, plasma-workspace-wallpapers, lomiri-wallpapers-16.04 and
lomiri-wallpapers-20.04 (`apt-get install -y --no-install-recommends PKG`). Illustrations and abstract renders of
those packages are left out. scikit-learn's and matplotlib's sample photographs are never used for training: they
are the evaluation set (engine.evalset), whose sources the pack carries in `eval/`.

`--out` gets a copy of each source (skimage samples as PNG) and `manifest.json` (file, package, licence, sha256 of
the source). `--pack` gets `train/*.jpg`: each photo scaled so its longer side is at most `--max-side` (area
filter: wallpapers are often soft at full size), cut into `--crop`-pixel squares, the most textured first, at most
`--per-photo` per photo, fewer for all photos alike until the JPEGs fit `--pack-mib`; `eval/` with the evaluation
sources as they are; and `MANIFEST.json` (sha256 of every pack file).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import shutil
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from deblurgan.cli import run_cli
from deblurgan.errors import DeblurGANError
from deblurgan.fsutil import atomic_write_text


@dataclass(frozen=True)
class Photo:
    name: str  # file stem in the outputs
    source: str  # "skimage:<name>", "sklearn:<file>", "matplotlib:<file>" or an absolute path
    package: str  # where the file comes from (PyPI or Debian package)
    licence: str
    content: str  # people, nature, city, text, texture, object, space, medical


_WP = "/usr/share/wallpapers/{}/contents/images/{}"
_BG = "/usr/share/backgrounds/{}"
_MATE = "/usr/share/backgrounds/mate/nature/{}.jpg"
_SKI = "scikit-image"
_PLASMA = "plasma-workspace-wallpapers"
_L16, _L20 = "lomiri-wallpapers-16.04", "lomiri-wallpapers-20.04"

PHOTOS: tuple[Photo, ...] = (
    # scikit-image's samples that are photographs (licences as their docstrings state them)
    Photo("ski_astronaut", "skimage:astronaut", _SKI, "public domain (NASA)", "people"),
    Photo("ski_camera", "skimage:camera", _SKI, "CC0-1.0 (Lav Varshney)", "people"),
    Photo("ski_coffee", "skimage:coffee", _SKI, "CC0-1.0 (Rachel Michetti)", "object"),
    Photo("ski_chelsea", "skimage:chelsea", _SKI, "CC0-1.0 (Stefan van der Walt)", "nature"),
    Photo("ski_rocket", "skimage:rocket", _SKI, "public domain (SpaceX)", "city"),
    Photo("ski_hubble", "skimage:hubble_deep_field", _SKI, "public domain (NASA)", "space"),
    Photo("ski_retina", "skimage:retina", _SKI, "CC0-1.0", "medical"),
    Photo("ski_ihc", "skimage:immunohistochemistry", _SKI, "no known copyright restrictions", "medical"),
    Photo("ski_coins", "skimage:coins", _SKI, "no known copyright restrictions", "object"),
    Photo("ski_text", "skimage:text", _SKI, "public domain", "text"),
    Photo("ski_page", "skimage:page", _SKI, "BSD-3-Clause (scikit-image sample data)", "text"),
    Photo("ski_moon", "skimage:moon", _SKI, "BSD-3-Clause (scikit-image sample data)", "space"),
    Photo("ski_brick", "skimage:brick", _SKI, "CC0-1.0 (CC0Textures)", "texture"),
    Photo("ski_grass", "skimage:grass", _SKI, "CC0-1.0 (CC0Textures)", "texture"),
    Photo("ski_gravel", "skimage:gravel", _SKI, "CC0-1.0 (CC0Textures)", "texture"),
    # plasma-workspace-wallpapers (Debian copyright: KDE Visual Design Group, GPL-2+)
    *(Photo(f"kde_{n}", _WP.format(n, s), _PLASMA, "GPL-2+", c) for n, s, c in (
        ("BytheWater", "2560x1600.jpg", "nature"), ("ColdRipple", "2560x1600.jpg", "nature"),
        ("ColorfulCups", "2560x1600.jpg", "object"), ("DarkestHour", "2560x1600.jpg", "nature"),
        ("EveningGlow", "2560x1600.jpg", "nature"), ("FallenLeaf", "2560x1600.jpg", "nature"),
        ("Grey", "2560x1600.jpg", "city"), ("OneStandsOut", "2560x1600.jpg", "texture"),
        ("Path", "2560x1600.jpg", "nature"), ("summer_1am", "2560x1600.jpg", "nature"))),
    # mate-backgrounds, nature/ (Debian copyright: GPL-2+, photographers named there)
    *(Photo(f"mate_{n}", _MATE.format(n), "mate-backgrounds", "GPL-2+", c) for n, c in (
        ("Aqua", "nature"), ("Blinds", "texture"), ("Dune", "nature"), ("FreshFlower", "nature"),
        ("Garden", "nature"), ("GreenMeadow", "texture"), ("LadyBird", "nature"), ("RainDrops", "nature"),
        ("Storm", "nature"), ("TwoWings", "nature"), ("Wood", "texture"), ("YellowFlower", "nature"))),
    # lomiri-wallpapers-16.04 / -20.04 (licence per file in the Debian copyright file)
    *(Photo(f"lomiri_{f.split('_by_')[0]}", _BG.format(f), p, lic, c) for f, p, lic, c in (
        ("aitzgorri_by_Aitzol_Berasategi.jpg", _L16, "CC-BY-4.0 (Aitzol Berasategi)", "nature"),
        ("Bridge_by_Sander_Klootwijk.jpg", _L16, "CC-BY-SA-4.0 (Sander Klootwijk)", "city"),
        ("Dragonfly_by_Bolly.jpg", _L16, "CC-BY-SA-4.0 (Bolly)", "nature"),
        ("free_by_Peter_Nerlich.jpg", _L16, "CC-BY-SA-4.0 (Peter Nerlich)", "object"),
        ("friends_by_Aitzol_Berasategi.jpg", _L16, "CC-BY-4.0 (Aitzol Berasategi)", "city"),
        ("greentock_by_Peter_Nerlich.jpg", _L16, "CC-BY-SA-4.0 (Peter Nerlich)", "object"),
        ("life_by_Aitzol_Berasategi.jpg", _L16, "CC-BY-4.0 (Aitzol Berasategi)", "nature"),
        ("picosdeeuropa_by_Aitzol_Berasategi.jpg", _L16, "CC-BY-4.0 (Aitzol Berasategi)", "nature"),
        ("Picture_0B_by_freespace.jpg", _L16, "CC-BY-4.0 (Trevor Freespace)", "object"),
        ("Picture_1A_by_freespace.jpg", _L16, "CC-BY-4.0 (Trevor Freespace)", "texture"),
        ("seeding_by_Clements_Engelhardt.jpg", _L16, "CC0-1.0 (Clemens Engelhardt)", "nature"),
        ("sunset_by_Aitzol_Berasategi.jpg", _L16, "CC-BY-4.0 (Aitzol Berasategi)", "nature"),
        ("Wine_by_Jakkub_Mede.jpg", _L16, "CC-BY-4.0 (Jakub Mede)", "text"),
        ("Kleiber_by_Lukas_Baubkus.jpg", _L20, "CC-BY-SA-3.0 (Lukas Baubkus)", "nature"))),
)  # fmt: skip

#: The evaluation photographs (never trained on): scikit-learn's and matplotlib's samples.
EVAL_PHOTOS: tuple[Photo, ...] = (
    Photo("china", "sklearn:china.jpg", "scikit-learn", "CC-BY-2.0 (danielbuechele)", "city"),
    Photo("flower", "sklearn:flower.jpg", "scikit-learn", "CC-BY-2.0 (vultilion)", "nature"),
    Photo("grace_hopper", "matplotlib:grace_hopper.jpg", "matplotlib", "public domain (US Navy)", "people"),
)

DEBIAN_PACKAGES = ("mate-backgrounds", _PLASMA, _L16, _L20)


def source_path(photo: Photo) -> Path | None:
    """The file a source names; None for skimage samples (loaded through skimage.data)."""
    kind, _, rest = photo.source.partition(":")
    if kind == "skimage":
        return None
    if kind == "sklearn":
        try:
            import sklearn.datasets
        except ImportError:
            raise DeblurGANError("scikit-learn is not installed (pip install scikit-learn)") from None
        return Path(sklearn.datasets.__file__).parent / "images" / rest
    if kind == "matplotlib":
        try:
            import matplotlib
        except ImportError:
            raise DeblurGANError("matplotlib is not installed (pip install matplotlib)") from None
        return Path(matplotlib.get_data_path()) / "sample_data" / rest
    return Path(photo.source)


def load_photo(photo: Photo) -> np.ndarray:
    """HxWx3 uint8 RGB of a source (gray replicated, alpha dropped); a one-line error when it is missing."""
    from deblurgan.io import read_image

    if photo.source.startswith("skimage:"):
        from deblurgan.data import _skimage_image

        img = _skimage_image(photo.source.split(":", 1)[1])
    else:
        path = source_path(photo)
        if path is None or not path.is_file():
            apt = f" (apt-get install -y --no-install-recommends {photo.package})"
            hint = apt if photo.package in DEBIAN_PACKAGES else ""
            raise DeblurGANError(f"{photo.name}: {path} not found{hint}")
        img = read_image(path)
    return _rgb8(img)


def _rgb8(img: np.ndarray) -> np.ndarray:
    if img.dtype == np.uint16:
        img = np.clip(np.rint(img / 257.0), 0, 255).astype(np.uint8)
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    if img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    return np.ascontiguousarray(img[:, :, :3])


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _png_bytes(img: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def _write_bytes(path: Path, data: bytes) -> None:
    from deblurgan.fsutil import atomic_path

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(data)


def copy_sources(photos: Sequence[Photo], out: Path) -> list[dict]:
    """Copy each source into `out` (skimage samples as PNG); manifest rows with the copy's sha256."""
    rows = []
    for p in photos:
        path = source_path(p)
        if path is None:
            dst = out / f"{p.name}.png"
            _write_bytes(dst, _png_bytes(load_photo(p)))
        else:
            load_photo(p)  # a missing or unreadable file is reported here, with its package
            dst = out / f"{p.name}{path.suffix.lower()}"
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, dst)
        rows.append({**asdict(p), "file": dst.name, "sha256": sha256_file(dst)})
    return rows


def _downscale(img: np.ndarray, max_side: int) -> np.ndarray:
    from PIL import Image

    h, w = img.shape[:2]
    s = max_side / max(h, w)
    if s >= 1:
        return img
    size = (max(1, round(w * s)), max(1, round(h * s)))
    return np.asarray(Image.fromarray(img).resize(size, Image.Resampling.BOX))


FLAT = 1.5  # mean absolute luminance gradient (levels per pixel) under which a crop counts as flat


def texture_score(crop: np.ndarray) -> float:
    """Mean absolute gradient of the luminance: flat sky scores low, foliage and text high."""
    g = crop.astype(np.float32).mean(axis=2)
    return float(np.abs(np.diff(g, axis=0)).mean() + np.abs(np.diff(g, axis=1)).mean())


def candidate_crops(img: np.ndarray, crop: int) -> list[tuple[float, np.ndarray]]:
    """Crops on a grid covering the image (edge crops flush with the border), most textured first; crops of
    nearly flat regions (sky, fog) are dropped unless nothing else is left. A side shorter than `crop` is kept
    whole (not padded: training pads it as the engine does for any small frame)."""
    h, w = img.shape[:2]
    ch, cw = min(h, crop), min(w, crop)

    def starts(n: int, c: int) -> list[int]:
        k = max(1, round(n / c))
        return sorted({round(i * (n - c) / (k - 1)) for i in range(k)}) if k > 1 else [(n - c) // 2]

    out = [img[y : y + ch, x : x + cw] for y in starts(h, ch) for x in starts(w, cw)]
    scored = sorted(((texture_score(c), c) for c in out), key=lambda t: -t[0])
    return [t for t in scored if t[0] >= FLAT] or scored[:1]


def _jpeg(img: np.ndarray, quality: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=quality, subsampling=0)
    return buf.getvalue()


def _check_pack_args(crop: int, quality: int) -> None:
    if crop < 64 or crop % 4:
        raise DeblurGANError(f"--crop must be a multiple of 4 and >= 64 (got {crop})")
    if not 1 <= quality <= 100:
        raise DeblurGANError(f"--quality must be in [1, 100] (got {quality})")


def build_pack(
    photos: Sequence[Photo],
    pack: Path,
    crop: int = 320,
    quality: int = 95,
    max_side: int = 1600,
    per_photo: int = 24,
    pack_mib: float = 24.0,
    eval_photos: Sequence[Photo] = EVAL_PHOTOS,
) -> dict:
    """Write the pack (train/ JPEG crops, eval/ sources, MANIFEST.json); returns the manifest."""
    _check_pack_args(crop, quality)
    encoded: list[list[bytes]] = []
    for p in photos:
        img = _downscale(load_photo(p), max_side)
        encoded.append([_jpeg(c, quality) for _, c in candidate_crops(img, crop)[:per_photo]])
    budget = pack_mib * 2**20
    take = per_photo
    while take > 1 and sum(len(b) for crops in encoded for b in crops[:take]) > budget:
        take -= 1
    total = sum(len(b) for crops in encoded for b in crops[:take])
    if total > budget:
        raise DeblurGANError(f"one crop per photo is {total / 2**20:.1f} MiB, over --pack-mib {pack_mib:g}")
    if pack.exists():
        shutil.rmtree(pack)
    files: dict[str, str] = {}
    for p, crops in zip(photos, encoded, strict=True):
        for i, b in enumerate(crops[:take]):
            rel = f"train/{p.name}_{i:02d}.jpg"
            _write_bytes(pack / rel, b)
            files[rel] = hashlib.sha256(b).hexdigest()
    for row in copy_sources(eval_photos, pack / "eval"):
        files[f"eval/{row['file']}"] = row["sha256"]
    manifest = {
        "crop": crop, "quality": quality, "max_side": max_side, "per_photo": take, "photos": len(photos),
        "train_crops": sum(1 for k in files if k.startswith("train/")), "bytes": sum(
            (pack / k).stat().st_size for k in files), "files": files,
    }  # fmt: skip
    atomic_write_text(pack / "MANIFEST.json", json.dumps(manifest, indent=1) + "\n")
    return manifest


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m engine.photos", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="copy the training photos and cut the data pack")
    b.add_argument("--out", default="data/photos", help="folder for the source copies and manifest.json")
    b.add_argument("--pack", default="data/pack", help="folder for the compact data pack")
    b.add_argument("--crop", type=int, default=320, help="pack crop size in px (training crops are cut from these)")
    b.add_argument("--quality", type=int, default=95, help="JPEG quality of the pack crops")
    b.add_argument("--max-side", type=int, default=1600, help="scale photos down to this longer side first")
    b.add_argument("--per-photo", type=int, default=24, help="at most this many crops per photo")
    b.add_argument("--pack-mib", type=float, default=24.0, help="size budget of the pack's JPEG crops")
    b.add_argument("--limit", type=int, default=0, help="use only the first N photos (tests)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point: user errors become one line and exit code 2."""
    return run_cli(_main, argv)


def _main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    photos = PHOTOS[: args.limit] if args.limit > 0 else PHOTOS
    _check_pack_args(args.crop, args.quality)
    for p in photos:  # every source is checked before anything is written
        load_photo(p)
    out = Path(args.out)
    rows = copy_sources(photos, out)
    atomic_write_text(out / "manifest.json", json.dumps(rows, indent=1) + "\n")
    m = build_pack(photos, Path(args.pack), args.crop, args.quality, args.max_side, args.per_photo, args.pack_mib)
    print(f"{len(rows)} photos in {out}; pack {args.pack}: {m['train_crops']} crops of {m['crop']} px "
          f"({m['per_photo']} per photo), {m['bytes'] / 2**20:.1f} MiB", file=sys.stderr)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
