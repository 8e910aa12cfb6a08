"""Image files in and out: every mode users feed (gray, RGB, RGBA, 8/16-bit), clear errors, atomic writes."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import DeblurGANError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def is_image_file(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files under `folder`, recursively, in sorted order."""
    folder = Path(folder)
    return sorted(p for p in folder.rglob("*") if p.is_file() and is_image_file(p))


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image as stored: uint8 or uint16, shape HxW (gray), HxWx3 (RGB) or HxWx4 (RGBA).

    Raises DeblurGANError with the path for missing, truncated or non-image files.
    """
    path = Path(path)
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            im.load()
            return _pil_to_array(im)
    except FileNotFoundError:
        raise DeblurGANError(f"{path}: file not found") from None
    except UnidentifiedImageError:
        raise DeblurGANError(f"{path}: not an image file") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise DeblurGANError(f"{path}: unreadable image ({e})") from None


def _pil_to_array(im: Image.Image) -> np.ndarray:
    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L"):
        return np.asarray(im, dtype=np.uint16)
    if mode == "I":  # 16-bit gray PNGs often open as 32-bit ints
        return np.clip(np.asarray(im), 0, 65535).astype(np.uint16)
    if mode in ("L", "RGB", "RGBA"):
        return np.asarray(im).copy()
    if mode in ("LA", "PA") or (mode == "P" and "transparency" in im.info):
        return np.asarray(im.convert("RGBA")).copy()
    if mode == "1":
        return np.asarray(im.convert("L")).copy()
    if mode == "F":
        raise DeblurGANError("floating-point images are not supported; save as 8- or 16-bit")
    return np.asarray(im.convert("RGB")).copy()


def write_image(path: str | os.PathLike, image: np.ndarray) -> Path:
    """Write uint8/uint16 HxW[xC] atomically (temp file + rename): a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None:
        raise DeblurGANError(f"{path}: unknown image extension {path.suffix!r}")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        _array_to_pil(image).save(tmp, format=fmt)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _array_to_pil(image: np.ndarray) -> Image.Image:
    if image.dtype == np.uint16:
        if image.ndim == 2:
            return Image.fromarray(image)  # I;16
        raise DeblurGANError("16-bit colour images can only be written as PNG")
    if image.dtype != np.uint8:
        raise DeblurGANError(f"expected uint8 or uint16 pixels, got {image.dtype}")
    return Image.fromarray(image)


def iter_inputs(inputs: Iterable[str | os.PathLike]) -> list[tuple[Path, Path]]:
    """Expand files and folders into (file, path relative to its root) pairs, mirroring folders."""
    out: list[tuple[Path, Path]] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            out += [(f, f.relative_to(p)) for f in list_images(p)]
        else:
            out.append((p, Path(p.name)))
    return out
