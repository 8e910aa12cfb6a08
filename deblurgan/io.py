"""Image files in and out: every mode users feed (gray, RGB, RGBA, 8/16-bit), clear errors, atomic writes."""

from __future__ import annotations

import os
import struct
import threading
import warnings
import zlib
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import DeblurGANError
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
    colour16 = image.dtype == np.uint16 and image.ndim == 3
    if colour16 and fmt != "PNG":
        raise DeblurGANError(f"{path}: 16-bit colour images can only be written as PNG")
    with atomic_path(path) as tmp:
        if colour16:
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
# PIL reads 16-bit RGB(A) PNGs as 8-bit (dropping the low byte) and cannot write them, so 16-bit PNGs
# of every colour type are decoded here (zlib + the five PNG row filters) and 16-bit colour is encoded here.

_PNG_SIG = b"\x89PNG\r\n\x1a\n"
_PNG_CHANNELS = {0: 1, 2: 3, 4: 2, 6: 4}  # colour type -> samples per pixel (palette never is 16-bit)


def _png_header(path: Path) -> tuple[int, int, int, int, int] | None:
    """(width, height, bit depth, colour type, interlace) from IHDR, or None if not a readable PNG."""
    try:
        with open(path, "rb") as f:
            head = f.read(33)
    except OSError:
        return None
    if len(head) < 33 or head[:8] != _PNG_SIG or head[12:16] != b"IHDR":
        return None
    w, h, depth, ctype, _, _, interlace = struct.unpack(">IIBBBBB", head[16:29])
    return w, h, depth, ctype, interlace


def read_png16(path: str | os.PathLike) -> np.ndarray:
    """Decode a 16-bit PNG: uint16 HxW (gray), HxWx3 (RGB) or HxWx4 (RGBA; gray+alpha becomes RGBA)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DeblurGANError(f"{path}: unreadable image ({e.strerror or e})") from None
    return _decode_png16(data, path)


def _decode_png16(data: bytes, path: Path) -> np.ndarray:
    if data[:8] != _PNG_SIG:
        raise DeblurGANError(f"{path}: not a PNG file")
    pos, idat, ihdr, ended = 8, [], None, False
    while pos + 8 <= len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        ctype = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        crc = data[pos + 8 + length : pos + 12 + length]
        if len(body) < length or len(crc) < 4:
            raise DeblurGANError(f"{path}: truncated PNG (chunk {ctype.decode('latin-1')!r} cut short)")
        if zlib.crc32(ctype + body) != struct.unpack(">I", crc)[0]:
            raise DeblurGANError(f"{path}: corrupt PNG (bad CRC in chunk {ctype.decode('latin-1')!r})")
        if ctype == b"IHDR":
            ihdr = struct.unpack(">IIBBBBB", body[:13])
        elif ctype == b"IDAT":
            idat.append(body)
        elif ctype == b"IEND":
            ended = True
            break
        pos += 12 + length
    if ihdr is None:
        raise DeblurGANError(f"{path}: PNG without IHDR")
    if not ended:
        raise DeblurGANError(f"{path}: truncated PNG (no IEND chunk)")
    w, h, depth, colour, _, _, interlace = ihdr
    if depth != 16 or colour not in _PNG_CHANNELS:
        raise DeblurGANError(f"{path}: not a 16-bit gray/RGB/RGBA PNG (depth {depth}, colour type {colour})")
    if interlace:
        raise DeblurGANError(f"{path}: interlaced 16-bit PNGs are not supported; re-save without interlacing")
    channels = _PNG_CHANNELS[colour]
    bpp, stride = 2 * channels, 2 * channels * w
    try:
        raw = zlib.decompress(b"".join(idat))
    except zlib.error as e:
        raise DeblurGANError(f"{path}: corrupt PNG image data ({e})") from None
    if len(raw) < h * (stride + 1):
        raise DeblurGANError(f"{path}: truncated PNG image data")
    rows = np.frombuffer(raw, dtype=np.uint8, count=h * (stride + 1)).reshape(h, stride + 1)
    ftypes = rows[:, 0]
    if ftypes.max(initial=0) > 4:
        raise DeblurGANError(f"{path}: corrupt PNG (unknown row filter {int(ftypes.max())})")
    if np.isin(ftypes, (3, 4)).any():
        out = _unfilter_wavefront(rows[:, 1:], ftypes, bpp)
    else:
        out = np.empty((h, stride), dtype=np.uint8)
        prev = np.zeros(stride, dtype=np.uint8)
        for y in range(h):
            out[y] = prev = _unfilter_row(int(ftypes[y]), rows[y, 1:], prev, bpp, path)
    img = out.view(">u2").reshape(h, w, channels).astype(np.uint16)
    if channels == 1:
        return img[:, :, 0]
    if channels == 2:  # gray + alpha -> RGBA, like the 8-bit path
        return np.concatenate([np.repeat(img[:, :, :1], 3, axis=2), img[:, :, 1:]], axis=2)
    return img


def _unfilter_wavefront(filtered: np.ndarray, ftypes: np.ndarray, bpp: int) -> np.ndarray:
    """Undo any mix of the five filters, one anti-diagonal of pixels at a time.

    Pixel (y, x) depends on its left, upper and upper-left neighbours only, so all pixels with the same
    x + y can be reconstructed together: H + W vectorised steps instead of H x W Python iterations.
    """
    h = filtered.shape[0]
    w = filtered.shape[1] // bpp
    f = filtered.reshape(h, w, bpp).astype(np.int32)
    r = np.zeros((h + 1, w + 1, bpp), dtype=np.int32)  # a zero row on top and a zero column on the left
    t = ftypes.astype(np.int32)
    for d in range(h + w - 1):
        ys = np.arange(max(0, d - w + 1), min(h, d + 1))
        xs = d - ys
        a, b, c = r[ys + 1, xs], r[ys, xs + 1], r[ys, xs]
        p = a + b - c
        pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - c)
        paeth = np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))
        ft = t[ys][:, None]
        pred = np.select([ft == 1, ft == 2, ft == 3, ft == 4], [a, b, (a + b) >> 1, paeth], 0)
        r[ys + 1, xs + 1] = (f[ys, xs] + pred) & 0xFF
    return r[1:, 1:].reshape(h, w * bpp).astype(np.uint8)


def _unfilter_row(ftype: int, row: np.ndarray, prev: np.ndarray, bpp: int, path: Path) -> np.ndarray:
    if ftype == 0:
        return row.copy()
    if ftype == 2:
        return row + prev  # uint8 arithmetic wraps mod 256, as PNG specifies
    if ftype == 1:  # Sub: a running sum along the row, per byte lane
        return (np.cumsum(row.reshape(-1, bpp), axis=0, dtype=np.int64) & 0xFF).astype(np.uint8).ravel()
    raise DeblurGANError(f"{path}: corrupt PNG (unknown row filter {ftype})")


def encode_png16(image: np.ndarray) -> bytes:
    """Encode uint16 HxW, HxWx3 or HxWx4 as a 16-bit PNG (filter 0 on every row, zlib level 6)."""
    image = np.asarray(image)
    if image.dtype != np.uint16:
        raise DeblurGANError(f"expected uint16 pixels, got {image.dtype}")
    if image.ndim == 2:
        image = image[:, :, None]
    h, w, c = image.shape
    colour = {1: 0, 3: 2, 4: 6}.get(c)
    if colour is None:
        raise DeblurGANError(f"cannot write a 16-bit PNG with {c} channels")
    rows = image.astype(">u2").reshape(h, w * c).view(np.uint8)
    raw = np.concatenate([np.zeros((h, 1), np.uint8), rows], axis=1).tobytes()

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", w, h, 16, colour, 0, 0, 0)
    return _PNG_SIG + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")
