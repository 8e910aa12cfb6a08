"""Video files in and out through PyAV (the `video` extra): frames as uint8 RGB arrays, atomic writes."""

from __future__ import annotations

import os
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from types import ModuleType

import numpy as np

from .errors import DeblurGANError
from .fsutil import commit, temp_beside

VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".mkv", ".avi", ".webm")
_INSTALL_HINT = 'video needs PyAV: pip install "deblurgan-engine[video]"'


def is_video_file(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


def _av() -> ModuleType:
    try:
        import av
    except ImportError:
        raise DeblurGANError(_INSTALL_HINT) from None
    return av


class VideoReader:
    """Decode the first video stream of a file as uint8 RGB HxWx3 frames.

    `fps` is the stream's average frame rate (a Fraction), `frames` an estimate (0 when unknown).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        av = _av()
        self.path = Path(path)
        try:
            self._container = av.open(str(self.path))
        except FileNotFoundError:
            raise DeblurGANError(f"{self.path}: file not found") from None
        except Exception as e:  # PyAV raises many FFmpeg error types for bad files
            raise DeblurGANError(f"{self.path}: not a readable video ({_one_line(e)})") from None
        if not self._container.streams.video:
            self._container.close()
            raise DeblurGANError(f"{self.path}: no video stream")
        self._stream = self._container.streams.video[0]
        self.fps: Fraction = Fraction(self._stream.average_rate or self._stream.guessed_rate or 25)
        self.frames: int = int(self._stream.frames or 0)
        self.width, self.height = self._stream.codec_context.width, self._stream.codec_context.height

    def __iter__(self) -> Iterator[np.ndarray]:
        try:
            for frame in self._container.decode(self._stream):
                yield frame.to_ndarray(format="rgb24")
        except DeblurGANError:
            raise
        except Exception as e:
            raise DeblurGANError(f"{self.path}: corrupt video ({_one_line(e)})") from None

    def close(self) -> None:
        self._container.close()

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class VideoWriter:
    """Encode uint8 RGB frames to `path` (H.264 when available, else MPEG-4) at `fps`.

    Written to a temp file in the same folder and renamed on `close()`, so an interrupted job never
    leaves a half-written video under the final name. Odd frame sizes use 4:4:4 chroma (4:2:0 needs
    even sizes), which some players do not support.
    """

    def __init__(self, path: str | os.PathLike, fps: Fraction | float, width: int, height: int, crf: int = 18) -> None:
        av = _av()
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = temp_beside(self.path)
        try:
            self._container = av.open(str(self._tmp), mode="w")
            codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
            if self.path.suffix.lower() == ".webm":
                codec = "libvpx-vp9" if "libvpx-vp9" in av.codecs_available else "libvpx"
            rate = Fraction(fps).limit_denominator(100000)
            self._stream = self._container.add_stream(codec, rate=rate)
            self._stream.width, self._stream.height = width, height
            odd = width % 2 or height % 2
            self._stream.pix_fmt = "yuv444p" if odd and codec == "libx264" else "yuv420p"
            if codec == "libx264":
                self._stream.options = {"crf": str(crf)}
            elif codec == "mpeg4":
                self._stream.bit_rate = 8_000_000
        except DeblurGANError:
            raise
        except Exception as e:
            self._discard()
            raise DeblurGANError(f"{self.path}: cannot write video ({_one_line(e)})") from None
        self._av = av
        self._closed = False

    def write(self, frame: np.ndarray) -> None:
        vf = self._av.VideoFrame.from_ndarray(np.ascontiguousarray(frame, dtype=np.uint8), format="rgb24")
        for packet in self._stream.encode(vf):
            self._container.mux(packet)

    def close(self) -> None:
        """Flush, close and move the file into place."""
        if self._closed:
            return
        self._closed = True
        for packet in self._stream.encode():
            self._container.mux(packet)
        self._container.close()
        commit(self._tmp, self.path)

    def abort(self) -> None:
        """Drop the partial file (the final path is left untouched)."""
        if not self._closed:
            self._closed = True
            try:
                self._container.close()
            except Exception:
                pass
            self._discard()

    def _discard(self) -> None:
        if os.path.exists(self._tmp):
            os.unlink(self._tmp)

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def _one_line(e: BaseException) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:200]
