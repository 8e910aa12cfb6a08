"""Image and video IO: every mode and depth round-trips exactly, 16-bit PNG vs a spec-written encoder, bad files."""

from __future__ import annotations

import io
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deblurgan.errors import DeblurGANError
from deblurgan.io import encode_png16, read_image, write_image

RNG = np.random.default_rng(1234)


def rand(shape, dtype=np.uint8):
    return RNG.integers(0, np.iinfo(dtype).max + 1, shape, dtype=dtype)


# --- a deliberately naive PNG encoder, written from the spec, to test the decoder's filters ---------


def _paeth(a: int, b: int, c: int) -> int:
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    return a if pa <= pb and pa <= pc else (b if pb <= pc else c)


def _filter_row(ftype: int, row: bytes, prev: bytes, bpp: int) -> bytes:
    out = bytearray()
    for i, x in enumerate(row):
        a = row[i - bpp] if i >= bpp else 0
        b = prev[i]
        c = prev[i - bpp] if i >= bpp else 0
        pred = [0, a, b, (a + b) // 2, _paeth(a, b, c)][ftype]
        out.append((x - pred) % 256)
    return bytes(out)


def naive_png(image: np.ndarray, filters: list[int], colour: int, idat_parts: int = 3) -> bytes:
    h, w = image.shape[:2]
    channels = 1 if image.ndim == 2 else image.shape[2]
    bpp = 2 * channels
    raw, prev = bytearray(), bytes(w * bpp)
    for y in range(h):
        row = b"".join(struct.pack(">H", int(v)) for v in image[y].reshape(-1))
        f = filters[y % len(filters)]
        raw += bytes([f]) + _filter_row(f, row, prev, bpp)
        prev = row
    data = zlib.compress(bytes(raw))
    step = -(-len(data) // idat_parts)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    idats = b"".join(chunk(b"IDAT", data[i : i + step]) for i in range(0, len(data), step))
    text = chunk(b"tEXt", b"Comment\x00made by a test")
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, colour, 0, 0, 0))
        + text
        + idats
        + chunk(b"IEND", b"")
    )


_ADAM7 = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]


def naive_png_interlaced(image: np.ndarray, colour: int) -> bytes:
    """Adam7: seven sub-images (x0, y0, dx, dy), each filtered with Paeth; empty passes have no rows."""
    h, w = image.shape[:2]
    channels = 1 if image.ndim == 2 else image.shape[2]
    raw = bytearray()
    for x0, y0, dx, dy in _ADAM7:
        sub = image[y0::dy, x0::dx]
        if sub.size == 0:
            continue
        prev = bytes(sub.shape[1] * 2 * channels)
        for y in range(sub.shape[0]):
            row = b"".join(struct.pack(">H", int(v)) for v in sub[y].reshape(-1))
            raw += bytes([4]) + _filter_row(4, row, prev, 2 * channels)
            prev = row

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", w, h, 16, colour, 0, 0, 1)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(bytes(raw))) + chunk(b"IEND", b"")


@pytest.mark.parametrize("ftype", [0, 1, 2, 3, 4])
@pytest.mark.parametrize("channels,colour", [(3, 2), (4, 6)])
def test_png16_decoder_each_filter(tmp_path, ftype, channels, colour):
    img = rand((5, 7, channels), np.uint16)
    path = tmp_path / "f.png"
    path.write_bytes(naive_png(img, [ftype], colour))
    out = read_image(path)
    assert out.dtype == np.uint16 and out.shape == img.shape
    np.testing.assert_array_equal(out, img)


def test_png16_decoder_mixed_filters_gray_and_gray_alpha(tmp_path):
    gray = rand((9, 6), np.uint16)
    (tmp_path / "g.png").write_bytes(naive_png(gray, [4, 3, 2, 1, 0], colour=0))
    np.testing.assert_array_equal(read_image(tmp_path / "g.png"), gray)
    la = rand((6, 5, 2), np.uint16)
    (tmp_path / "la.png").write_bytes(naive_png(la, [1, 4], colour=4))
    out = read_image(tmp_path / "la.png")  # gray + alpha -> RGBA, like 8-bit LA files
    assert out.shape == (6, 5, 4)
    np.testing.assert_array_equal(out[..., :3], np.repeat(la[..., :1], 3, axis=2))
    np.testing.assert_array_equal(out[..., 3], la[..., 1])


def test_png16_decoder_interlaced(tmp_path):
    img = rand((11, 13, 3), np.uint16)
    (tmp_path / "i.png").write_bytes(naive_png_interlaced(img, colour=2))
    np.testing.assert_array_equal(read_image(tmp_path / "i.png"), img)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("shape", [(13, 11), (13, 11, 3), (8, 9, 4), (1, 1, 3), (300, 257, 4)])
def test_roundtrip_every_mode_and_depth(tmp_path, shape, dtype):
    img = rand(shape, dtype)
    out = read_image(write_image(tmp_path / "x.png", img))
    assert out.dtype == dtype and out.shape == img.shape
    np.testing.assert_array_equal(out, img)


@pytest.mark.parametrize("shape", [(13, 11), (13, 11, 3), (8, 9, 4)])
def test_png16_keeps_the_low_byte(tmp_path, shape):
    """Guards against 16 -> 8 bit truncation anywhere on the way (PIL's own 16-bit colour path does it)."""
    img = (rand(shape, np.uint16) | 1).astype(np.uint16)  # every sample has low-byte content
    out = read_image(write_image(tmp_path / "x.png", img))
    assert out.dtype == np.uint16
    assert (out & 0xFF).any(), "low bytes lost: 16-bit truncated to 8-bit"
    np.testing.assert_array_equal(out, img)


def test_gray_alpha_read_as_rgba(tmp_path):
    la8 = rand((6, 5, 2))
    Image.fromarray(la8, mode="LA").save(tmp_path / "la8.png")
    la16 = rand((6, 5, 2), np.uint16)
    (tmp_path / "la16.png").write_bytes(naive_png(la16, [0, 2], colour=4))
    for name, la in (("la8.png", la8), ("la16.png", la16)):
        out = read_image(tmp_path / name)
        assert out.shape == (6, 5, 4) and out.dtype == la.dtype
        np.testing.assert_array_equal(out[..., :3], np.repeat(la[..., :1], 3, axis=2))
        np.testing.assert_array_equal(out[..., 3], la[..., 1])


def test_png16_written_file_is_valid_for_pil(tmp_path):
    """PIL decodes our 16-bit RGB file independently (to 8 bits: the high byte of each sample)."""
    img = rand((10, 12, 3), np.uint16)
    write_image(tmp_path / "x.png", img)
    with Image.open(tmp_path / "x.png") as im:
        assert im.size == (12, 10)
        np.testing.assert_array_equal(np.asarray(im.convert("RGB")), (img >> 8).astype(np.uint8))
    gray = rand((10, 12), np.uint16)
    write_image(tmp_path / "g.png", gray)
    with Image.open(tmp_path / "g.png") as im:  # 16-bit gray: PIL decodes it exactly
        np.testing.assert_array_equal(np.asarray(im, dtype=np.uint16), gray)


def test_png16_gray_from_pil_encoder(tmp_path):
    """A 16-bit gray PNG written by PIL's encoder (zlib + its own filter choice) decodes exactly."""
    img = rand((17, 23), np.uint16)
    Image.fromarray(img).save(tmp_path / "g.png")
    np.testing.assert_array_equal(read_image(tmp_path / "g.png"), img)


def test_encode_png16_rejects_bad_input():
    with pytest.raises(DeblurGANError):
        encode_png16(rand((4, 4, 3)))  # uint8
    with pytest.raises(DeblurGANError):
        encode_png16(rand((4, 4, 2), np.uint16))
    assert encode_png16(rand((4, 4, 1), np.uint16))[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_hxwx1_written_as_gray(tmp_path, dtype):
    img = rand((6, 5, 1), dtype)
    np.testing.assert_array_equal(read_image(write_image(tmp_path / "x.png", img)), img[:, :, 0])


@pytest.mark.parametrize("ext", [".tif", ".bmp", ".ppm"])
def test_8bit_other_formats_roundtrip(tmp_path, ext):
    img = rand((9, 7, 3))
    np.testing.assert_array_equal(read_image(write_image(tmp_path / f"x{ext}", img)), img)


def test_16bit_colour_only_png(tmp_path):
    with pytest.raises(DeblurGANError, match="PNG"):
        write_image(tmp_path / "x.tif", rand((4, 4, 3), np.uint16))
    assert not list(tmp_path.iterdir())


# --- bad files --------------------------------------------------------------------------------------


def test_missing_and_not_an_image(tmp_path):
    with pytest.raises(DeblurGANError, match="not found"):
        read_image(tmp_path / "nope.png")
    (tmp_path / "text.png").write_text("hello")
    with pytest.raises(DeblurGANError, match="not an image"):
        read_image(tmp_path / "text.png")


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("keep", [0.5, -40, 40])
def test_truncated_png(tmp_path, dtype, keep):
    path = write_image(tmp_path / "x.png", rand((40, 40, 3), dtype))
    data = path.read_bytes()
    path.write_bytes(data[: keep if isinstance(keep, int) else int(len(data) * keep)])  # -40: into the image data
    with pytest.raises(DeblurGANError, match=str(path.name)) as e:
        read_image(path)
    assert "\n" not in str(e.value)


def test_truncated_jpeg(tmp_path):
    path = write_image(tmp_path / "x.jpg", rand((64, 64, 3)))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(DeblurGANError):
        read_image(path)


def test_png16_bad_crc(tmp_path):
    path = write_image(tmp_path / "x.png", rand((32, 32, 3), np.uint16))
    data = bytearray(path.read_bytes())
    start = data.index(b"IDAT") + 4
    (length,) = struct.unpack(">I", data[start - 8 : start - 4])
    for pos, match in ((start + length // 2, "x.png"), (start + length, "CRC")):  # in the body; in the CRC
        bad = data.copy()
        bad[pos] ^= 0xFF
        path.write_bytes(bytes(bad))
        with pytest.raises(DeblurGANError, match=match) as e:
            read_image(path)
        assert str(e.value).startswith(str(path)) and "\n" not in str(e.value)


def test_png16_corrupt_and_not_16bit(tmp_path):
    from deblurgan.io import _decode_png16

    with pytest.raises(DeblurGANError, match="bad.png"):
        _decode_png16(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "bad.png")
    buf = io.BytesIO()
    Image.fromarray(rand((4, 4, 3))).save(buf, format="PNG")
    with pytest.raises(DeblurGANError, match="not a 16-bit PNG"):
        _decode_png16(buf.getvalue(), "x.png")


def test_write_is_atomic_and_keeps_old_file_on_failure(tmp_path, monkeypatch):
    old = rand((5, 5, 3))
    path = write_image(tmp_path / "x.png", old)

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", boom)
    with pytest.raises(OSError):
        write_image(path, rand((5, 5, 3)))
    monkeypatch.undo()
    np.testing.assert_array_equal(read_image(path), old)
    assert [p.name for p in tmp_path.iterdir()] == ["x.png"]  # no temp file left behind


def test_png16_write_is_atomic_on_failure(tmp_path, monkeypatch):
    import imagecodecs

    old = rand((5, 5, 3), np.uint16)
    path = write_image(tmp_path / "x.png", old)

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(imagecodecs, "png_encode", boom)
    with pytest.raises(OSError):
        write_image(path, rand((5, 5, 3), np.uint16))
    monkeypatch.undo()
    np.testing.assert_array_equal(read_image(path), old)
    assert [p.name for p in tmp_path.iterdir()] == ["x.png"]


def test_write_rejects_bad_arrays(tmp_path):
    with pytest.raises(DeblurGANError):
        write_image(tmp_path / "x.png", rand((4, 4, 2)))
    with pytest.raises(DeblurGANError):
        write_image(tmp_path / "x.png", np.zeros((4, 4, 3), np.float32))
    with pytest.raises(DeblurGANError, match="extension"):
        write_image(tmp_path / "x.xyz", rand((4, 4, 3)))


# --- video ------------------------------------------------------------------------------------------


def test_video_roundtrip(tmp_path):
    pytest.importorskip("av")
    from deblurgan.video import VideoReader, VideoWriter

    frames = [smooth_frame(24, 32, t) for t in range(7)]
    with VideoWriter(tmp_path / "v.mp4", 15, 32, 24) as w:
        for f in frames:
            w.write(f)
    assert [p.name for p in tmp_path.iterdir()] == ["v.mp4"]
    with VideoReader(tmp_path / "v.mp4") as r:
        assert r.fps == 15 and (r.width, r.height) == (32, 24)
        got = list(r)
    assert len(got) == 7 and got[0].shape == (24, 32, 3) and got[0].dtype == np.uint8
    # lossy codec (4:2:0, crf 18): close on smooth content, not exact; frame order kept
    errors = [np.abs(a.astype(int) - b).mean() for a, b in zip(got, frames, strict=True)]
    assert max(errors) < 6
    assert np.abs(got[0].astype(int) - frames[3]).mean() > 2 * max(errors)


def smooth_frame(h: int, w: int, t: int) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    r = 127 + 100 * np.sin(x / 5.0 + t)
    g = 127 + 100 * np.cos(y / 4.0 - t)
    b = (x + y) * 3 % 256
    return np.stack([r, g, b], axis=2).astype(np.uint8)


def test_video_writer_abort_leaves_nothing(tmp_path):
    pytest.importorskip("av")
    from deblurgan.video import VideoWriter

    with pytest.raises(RuntimeError):
        with VideoWriter(tmp_path / "v.mp4", 10, 16, 16) as w:
            w.write(rand((16, 16, 3)))
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_bad_video(tmp_path):
    pytest.importorskip("av")
    from deblurgan.video import VideoReader

    (tmp_path / "v.mp4").write_bytes(b"\x00" * 100)
    with pytest.raises(DeblurGANError, match="v.mp4"):
        VideoReader(tmp_path / "v.mp4")


def test_video_without_pyav(tmp_path, monkeypatch):
    from deblurgan.video import VideoReader

    monkeypatch.setitem(sys.modules, "av", None)  # makes `import av` fail
    with pytest.raises(DeblurGANError, match=r"deblurgan-engine\[video\]"):
        VideoReader(Path(tmp_path / "v.mp4"))


def test_jpeg_written_at_high_quality(tmp_path):
    y, x = np.mgrid[0:64, 0:64]
    img = np.stack([x * 4, y * 4, (x * y) % 256], axis=2).astype(np.uint8)
    out = read_image(write_image(tmp_path / "x.jpg", img))
    assert np.abs(out.astype(int) - img).mean() < 5  # PIL's defaults (quality 75, 4:2:0) give ~15 here


def test_pixel_limit(tmp_path):
    img = rand((40, 50, 3))
    write_image(tmp_path / "x.png", img)
    write_image(tmp_path / "y.png", rand((40, 50, 3), np.uint16))
    np.testing.assert_array_equal(read_image(tmp_path / "x.png"), img)
    old = Image.MAX_IMAGE_PIXELS
    for name in ("x.png", "y.png"):
        with pytest.raises(DeblurGANError, match="pixel limit"):
            read_image(tmp_path / name, max_pixels=500)
    assert Image.MAX_IMAGE_PIXELS == old  # PIL's global setting is restored


def test_above_pils_default_bomb_limit(tmp_path):
    """~180 MP of 1-bit pixels (small on disk): PIL alone refuses; our limit (1 GP) reads it."""
    Image.new("1", (15000, 12000)).save(tmp_path / "big.png")
    with pytest.raises(Image.DecompressionBombError):
        Image.open(tmp_path / "big.png")
    assert read_image(tmp_path / "big.png").shape == (12000, 15000)


def test_without_imagecodecs_8bit_works_and_16bit_says_what_to_install(tmp_path, monkeypatch):
    """imagecodecs is imported on first 16-bit PNG only: machines without it still read and write 8-bit images."""
    rng = np.random.default_rng(7)
    im8 = rng.integers(0, 256, (9, 11, 3), dtype=np.uint8)
    im16 = rng.integers(0, 65536, (9, 11, 3), dtype=np.uint16)
    write_image(tmp_path / "b.png", im16)
    monkeypatch.setitem(sys.modules, "imagecodecs", None)  # import now raises ImportError
    write_image(tmp_path / "a.png", im8)
    np.testing.assert_array_equal(read_image(tmp_path / "a.png"), im8)
    with pytest.raises(DeblurGANError, match="pip install imagecodecs"):
        read_image(tmp_path / "b.png")
    with pytest.raises(DeblurGANError, match="pip install imagecodecs"):
        write_image(tmp_path / "c.png", im16)
    assert not (tmp_path / "c.png").exists()
