"""Image files in and out: every mode users feed (gray, RGB, RGBA, 8/16-bit), clear errors, atomic writes."""

from __future__ import annotations

import os
import struct
import threading
import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import DeblurGANError, first_line
from .fsutil import atomic_path

MAX_PIXELS = 2**30  # 1 gigapixel: larger files are refused rather than risk exhausting memory
_PIL_LIMIT_LOCK = threading.Lock()
# PIL's defaults (JPEG quality 75 with 4:2:0 chroma) would visibly undo a deblurring; keep outputs near-lossless.
_SAVE_OPTIONS = {"JPEG": {"quality": 95, "subsampling": 0}, "WEBP": {"quality": 95}}
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def is_image_file(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files under `folder`, recursively, in sorted order."""
    folder = Path(folder)
    return sorted(p for p in folder.rglob("*") if p.is_file() and is_image_file(p))


def read_image(path: str | os.PathLike, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Read an image as stored: uint8 or uint16, shape HxW (gray), HxWx3 (RGB) or HxWx4 (RGBA).

    Raises DeblurGANError with the path for missing, truncated or non-image files, and for images above
    `max_pixels` (PIL's own decompression-bomb limit, ~179 MP, is raised to this for the call).
    """
    path = Path(path)
    header = _png_header(path)
    if header is not None and header[2] == 16:
        if header[0] * header[1] > max_pixels:
            raise DeblurGANError(f"{path}: {header[0]}x{header[1]} is above the {max_pixels} pixel limit")
        return read_png16(path)
    try:
        with _PIL_LIMIT_LOCK, warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            old, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, max_pixels // 2  # PIL errors above 2x this
            try:
                with Image.open(path) as im:
                    im = ImageOps.exif_transpose(im)
                    im.load()
                    return _pil_to_array(im)
            finally:
                Image.MAX_IMAGE_PIXELS = old
    except Image.DecompressionBombError:
        raise DeblurGANError(f"{path}: image is above the {max_pixels} pixel limit") from None
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
    image = np.asarray(image)
    png16 = image.dtype == np.uint16 and fmt == "PNG"
    if image.dtype == np.uint16 and image.ndim == 3 and image.shape[2] != 1 and not png16:
        raise DeblurGANError(f"{path}: 16-bit colour images can only be written as PNG")
    with atomic_path(path) as tmp:
        if png16:
            tmp.write_bytes(encode_png16(image))
        else:
            _array_to_pil(image).save(tmp, format=fmt, **_SAVE_OPTIONS.get(fmt, {}))
    return path


def _array_to_pil(image: np.ndarray) -> Image.Image:
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (3, 4))):
        raise DeblurGANError(f"cannot write an image of shape {image.shape} (HxW, HxWx3 or HxWx4)")
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


# --- 16-bit PNG ------------------------------------------------------------------------------------
# PIL reads 16-bit RGB(A) PNGs as 8-bit (dropping the low byte) and cannot write them, so every 16-bit PNG
# goes through libpng (imagecodecs).

_PNG_SIG = b"\x89PNG\r\n\x1a\n"
# zlib level 1, RLE, Sub (OpenCV's settings per imagecodecs' docs); timed against zlib defaults in docs/deblur.md.
def _imagecodecs():
    """imagecodecs, imported on first 16-bit PNG (8-bit images and other formats need only PIL)."""
    try:
        import imagecodecs
    except ImportError:
        raise DeblurGANError("16-bit PNG needs the imagecodecs package: pip install imagecodecs") from None
    return imagecodecs


def _png16_encode_options() -> dict:
    codecs = _imagecodecs()
    return {
        "level": codecs.PNG.COMPRESSION.SPEED,
        "strategy": codecs.PNG.STRATEGY.RLE,
        "filter": codecs.PNG.FILTER.SUB,
    }


def _png_header(path: Path) -> tuple[int, int, int] | None:
    """(width, height, bit depth) from IHDR, or None if not a readable PNG."""
    try:
        with open(path, "rb") as f:
            head = f.read(29)
    except OSError:
        return None
    if len(head) < 29 or head[:8] != _PNG_SIG or head[12:16] != b"IHDR":
        return None
    return struct.unpack(">IIB", head[16:25])


def read_png16(path: str | os.PathLike) -> np.ndarray:
    """Decode a 16-bit PNG: uint16 HxW (gray), HxWx3 (RGB) or HxWx4 (RGBA; gray+alpha becomes RGBA)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DeblurGANError(f"{path}: file not found") from None
    except OSError as e:
        raise DeblurGANError(f"{path}: unreadable image ({e.strerror or e})") from None
    return _decode_png16(data, path)


def _decode_png16(data: bytes, path: str | os.PathLike) -> np.ndarray:
    codecs = _imagecodecs()
    try:
        img = codecs.png_decode(data)
    except Exception as e:  # imagecodecs.PngError (libpng's message), ValueError for non-PNG data
        raise DeblurGANError(f"{path}: corrupt or truncated PNG ({first_line(e)})") from None
    if img.dtype != np.uint16:
        raise DeblurGANError(f"{path}: not a 16-bit PNG ({img.dtype})")
    if img.ndim == 3 and img.shape[2] == 2:  # gray + alpha -> RGBA, like the 8-bit path
        return np.concatenate([np.repeat(img[:, :, :1], 3, axis=2), img[:, :, 1:]], axis=2)
    return img




def encode_png16(image: np.ndarray) -> bytes:
    """Encode uint16 HxW, HxWx3 or HxWx4 as a 16-bit PNG."""
    image = np.asarray(image)
    if image.dtype != np.uint16:
        raise DeblurGANError(f"expected uint16 pixels, got {image.dtype}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (3, 4))):
        raise DeblurGANError(f"cannot write a 16-bit PNG of shape {image.shape} (HxW, HxWx3 or HxWx4)")
    return bytes(_imagecodecs().png_encode(np.ascontiguousarray(image), **_png16_encode_options()))
