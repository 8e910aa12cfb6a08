"""Video files in and out through PyAV (the `video` extra): frames as uint8 RGB arrays, atomic writes.

A `VideoWriter` given `source=reader` keeps what the model does not touch: each frame's timestamp (so
variable-frame-rate clips stay in sync) and the audio streams (copied, else re-encoded to AAC, else dropped
with a warning). The reader turns frames upright from the stream's display matrix (phone videos).
"""

from __future__ import annotations

import math
import os
import struct
import sys
from collections import deque
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from .errors import DeblurGANError, first_line
from .fsutil import commit, temp_beside

VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".mkv", ".avi", ".webm")
_INSTALL_HINT = 'video needs PyAV: pip install "deblurgan-engine[video]"'

# How to show a decoded frame upright: numpy versions of the filters FFmpeg's own CLI inserts (autorotate).
_TRANSFORMS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "none": lambda a: a,
    "cclock": lambda a: np.rot90(a, 1),  # a quarter turn counter-clockwise
    "clock": lambda a: np.rot90(a, -1),  # a quarter turn clockwise
    "rot180": lambda a: a[::-1, ::-1],
    "hflip": lambda a: a[:, ::-1],
    "vflip": lambda a: a[::-1],
    "transpose": lambda a: a.swapaxes(0, 1),  # FFmpeg's cclock_flip
    "antitranspose": lambda a: a[::-1, ::-1].swapaxes(0, 1),  # FFmpeg's clock_flip
}
_SWAPS_SIZE = ("cclock", "clock", "transpose", "antitranspose")
# Channel layouts FFmpeg's AAC encoder takes, by channel count (those it also takes are kept as they are).
_AAC_LAYOUTS = {1: "mono", 2: "stereo", 3: "3.0", 4: "4.0", 5: "5.0", 6: "5.1", 8: "7.1"}


def is_video_file(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


def _av() -> ModuleType:
    try:
        import av
    except ImportError:
        raise DeblurGANError(_INSTALL_HINT) from None
    return av


class VideoReader:
    """Decode the first video stream of a file as uint8 RGB HxWx3 frames, turned upright.

    `fps` is the stream's average frame rate (a Fraction), `frames` an estimate (0 when unknown).
    `orientation` names what was done to show frames as a player would (see `_TRANSFORMS`); `width` and
    `height` are those of the upright frames. `start_time` is the container's start in seconds.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        av = _av()
        self.path = Path(path)
        try:
            self._container = av.open(str(self.path))
        except FileNotFoundError:
            raise DeblurGANError(f"{self.path}: file not found") from None
        except Exception as e:  # PyAV raises many FFmpeg error types for bad files
            raise DeblurGANError(f"{self.path}: not a readable video ({first_line(e)})") from None
        try:
            if not self._container.streams.video:
                raise DeblurGANError(f"{self.path}: no video stream")
            self._stream = self._container.streams.video[0]
            self.fps: Fraction = _frac(self._stream.average_rate or self._stream.guessed_rate or 25)
            self.frames: int = int(self._stream.frames or 0)
            start = self._container.start_time  # in AV_TIME_BASE (microseconds), None when unknown
            self.start_time = Fraction(start, 1_000_000) if start is not None else Fraction(0)
            # Frame times (seconds) of the frames handed out and not yet written; a VideoWriter with
            # source=self switches this on and consumes it.
            self._times: deque[Fraction | None] | None = None
            self._decoded = self._decode()
            self._first = next(self._decoded, None)  # peeked: the orientation is in the frames' side data
            self.orientation = "none"
            width, height = self._stream.codec_context.width, self._stream.codec_context.height
            if self._first is not None:
                self.orientation = _orientation(self._first, self._stream, self.path)
                width, height = self._first.width, self._first.height
        except BaseException:
            self._container.close()
            raise
        if self.orientation in _SWAPS_SIZE:
            width, height = height, width
        self.width, self.height = width, height

    def _decode(self) -> Iterator[Any]:
        try:
            yield from self._container.decode(self._stream)
        except Exception as e:
            raise DeblurGANError(f"{self.path}: corrupt video ({first_line(e)})") from None

    def __iter__(self) -> Iterator[np.ndarray]:
        # Turned upright here, before the model, rather than writing the same display matrix to the output:
        # the output then looks like the input in every player (including those that ignore the matrix),
        # --frames PNGs and --side-by-side come out upright too, and the model sees upright content, as
        # it was trained on. Output videos carry no rotation metadata.
        transform = _TRANSFORMS[self.orientation]
        frames = self._decoded if self._first is None else _chain(self._first, self._decoded)
        self._first = None
        for frame in frames:
            if self._times is not None:
                pts, tb = frame.pts, frame.time_base
                self._times.append(None if pts is None or tb is None else _frac(tb) * pts)
            yield np.ascontiguousarray(transform(frame.to_ndarray(format="rgb24")))

    def close(self) -> None:
        self._container.close()

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class VideoWriter:
    """Encode uint8 RGB frames to `path` (H.264 when available, else MPEG-4) at `fps`.

    Written to a temp file in the same folder and renamed on `close()`, so an interrupted job never
    leaves a half-written video under the final name (and an older file there stays until the rename).
    Odd frame sizes use 4:4:4 chroma (4:2:0 needs even sizes), which some players do not support.

    With `source=reader`, the i-th written frame gets the timestamp of the i-th frame the reader handed
    out (frames must be written in reading order, one per frame read), and the source file's audio
    streams are carried over: copied packet for packet when the output container can hold the codec,
    else re-encoded to AAC (a note on stderr), else dropped (a warning on stderr). Audio is read by a
    second demuxer over the source file and muxed as the video packets come out of the encoder, so the
    file stays interleaved. All streams keep their offsets to each other, shifted together so that the
    source's start time becomes 0.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        fps: Fraction | float,
        width: int,
        height: int,
        crf: int = 18,
        source: VideoReader | None = None,
    ) -> None:
        av = _av()
        self._av = av
        self.path = Path(path)
        self._rate = Fraction(fps).limit_denominator(100000)
        self._size = (width, height)
        self._crf = crf
        self._source = source
        self._offset = source.start_time if source is not None else Fraction(0)
        self._times: deque[Fraction | None] | None = None
        if source is not None:
            self._times = source._times = deque()
        self._closed = False
        self._audio: _Audio | None = None
        self._tmp = temp_beside(self.path)
        try:
            self._open(with_audio=source is not None)
            try:
                self._container.start_encoding()  # the header now, so a stream it refuses can still be dropped
            except Exception as e:
                if self._audio is None:
                    raise
                names = ", ".join(self._audio.names)
                self._drop_all()
                self._tmp = temp_beside(self.path)
                self._open(with_audio=False)
                self._container.start_encoding()
                _warn(f"{self._source.path}: audio ({names}) dropped: {first_line(e)}")
        except DeblurGANError:
            self._drop_all()
            raise
        except Exception as e:
            self._drop_all()
            raise DeblurGANError(f"{self.path}: cannot write video ({first_line(e)})") from None
        self._last_pts: int | None = None
        self._last_time: Fraction | None = None

    def _open(self, with_audio: bool) -> None:
        av = self._av
        self._container = av.open(str(self._tmp), mode="w")
        codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
        if self.path.suffix.lower() == ".webm":
            codec = "libvpx-vp9" if "libvpx-vp9" in av.codecs_available else "libvpx"
        self._stream = self._container.add_stream(codec, rate=self._rate)
        width, height = self._size
        self._stream.width, self._stream.height = width, height
        odd = width % 2 or height % 2
        self._stream.pix_fmt = "yuv444p" if odd and codec == "libx264" else "yuv420p"
        if codec == "libx264":
            self._stream.options = {"crf": str(self._crf)}
        elif codec == "mpeg4":
            self._stream.bit_rate = 8_000_000
        # Frame timestamps: in the source's time base when there is one (exact copies of its pts, so a
        # variable frame rate survives), else 1/fps. AVI has no timestamps, only frame slots at a fixed rate
        # (there, a frame goes to the slot nearest its time). MPEG-4 Part 2 allows denominators <= 65535.
        tb = Fraction(1, 1) / self._rate
        if self._source is not None and self._container.format.name != "avi":
            tb = _frac(self._source._stream.time_base or tb)
            if codec == "mpeg4" and tb.denominator > 65535:
                tb = Fraction(1, 60000)
        self._tb = tb
        self._stream.codec_context.time_base = tb
        self._stream.time_base = tb
        if with_audio and self._source is not None:
            self._audio = _Audio(av, self._source.path, self._container, self.path, self._offset)
            if not self._audio.names:
                self._audio.close()
                self._audio = None

    def write(self, frame: np.ndarray) -> None:
        vf = self._av.VideoFrame.from_ndarray(np.ascontiguousarray(frame, dtype=np.uint8), format="rgb24")
        t = self._times.popleft() if self._times else None
        if t is None:  # no source, or a frame without a timestamp: one frame period after the last one
            t = self._offset if self._last_time is None else self._last_time + 1 / self._rate
        self._last_time = t
        pts = round((t - self._offset) / self._tb)
        if self._last_pts is not None and pts <= self._last_pts:
            pts = self._last_pts + 1  # encoders need increasing pts (duplicate or rounded-together times)
        self._last_pts = pts
        vf.pts, vf.time_base = pts, self._tb
        for packet in self._stream.encode(vf):
            self._mux_video(packet)

    def _mux_video(self, packet: Any) -> None:
        horizon = None if packet.dts is None else _frac(packet.time_base) * packet.dts
        self._container.mux(packet)
        if self._audio is not None and horizon is not None:
            self._audio.pump(until=horizon)

    def close(self) -> None:
        """Flush, add the rest of the audio, close and move the file into place."""
        if self._closed:
            return
        try:
            for packet in self._stream.encode():
                self._mux_video(packet)
            if self._audio is not None:
                self._audio.pump(until=None)
            self._closed = True
            self._container.close()
            if self._audio is not None:
                self._audio.close()
            commit(self._tmp, self.path)
        except BaseException:
            self._closed = False
            self.abort()
            raise

    def abort(self) -> None:
        """Drop the partial file (the final path is left untouched)."""
        if not self._closed:
            self._closed = True
            self._drop_all()

    def _drop_all(self) -> None:
        for closer in (getattr(self, "_container", None), self._audio):
            if closer is not None:
                try:
                    closer.close()
                except Exception:
                    pass
        self._audio = None
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


class _Audio:
    """The audio streams of `src`, carried into the output container `out` in step with its video.

    Each stream is copied when `out` can hold its codec, else re-encoded to AAC, else left out with a
    warning. Timestamps are shifted by `offset` seconds (the source's start time), as the video's are.
    """

    def __init__(self, av: ModuleType, src: Path, out: Any, dst: Path, offset: Fraction) -> None:
        self._src = src
        self._out = out
        self._offset = offset
        self._map: dict[int, tuple[Any, bool]] = {}  # input stream index -> (output stream, re-encode)
        self.names: list[str] = []
        self._pending: Any = None
        self._packets: Iterator[Any] = iter(())
        try:
            self._in = av.open(str(src))
        except Exception as e:
            self._in = None
            _warn(f"{src}: audio not copied (cannot open it again: {first_line(e)})")
            return
        kind = dst.suffix.lower() or out.format.name
        for s in self._in.streams.audio:
            codec = s.codec_context.codec if s.codec_context is not None else None
            name = (getattr(codec, "canonical_name", None) or codec.name) if codec is not None else "unknown"
            o = _try(lambda s=s: _add_copy(out, s))
            if o is not None:
                self._map[s.index] = (o, False)
            else:
                o = _try(lambda s=s: _add_aac(out, s))
                if o is None:
                    _warn(f"{src}: audio stream {s.index} ({name}) dropped: a {kind} file cannot hold it, nor AAC")
                    continue
                self._map[s.index] = (o, True)
                _warn(f"{src}: audio stream {s.index} ({name}) re-encoded to AAC: a {kind} file cannot hold it", "note")
            self.names.append(name)
        streams = [s for s in self._in.streams.audio if s.index in self._map]
        if streams:
            self._packets = self._in.demux(streams)

    def pump(self, until: Fraction | None) -> None:
        """Mux the audio up to `until` seconds of output time (all that is left when None)."""
        try:
            self._pump(until)
        except Exception as e:  # a broken audio stream must not cost the deblurred video
            _warn(f"{self._src}: audio stops early: {first_line(e)}")
            self._packets, self._pending = iter(()), None

    def _pump(self, until: Fraction | None) -> None:
        while True:
            packet = self._pending if self._pending is not None else next(self._packets, None)
            self._pending = None
            if packet is None:
                if until is None:
                    self._flush()
                return
            if packet.dts is None and packet.pts is None:  # the demuxer's empty end-of-stream packets
                continue
            tb = _frac(packet.time_base)
            t = tb * (packet.dts if packet.dts is not None else packet.pts) - self._offset
            if until is not None and t > until:
                self._pending = packet
                return
            stream, reencode = self._map[packet.stream.index]
            if reencode:
                for frame in packet.decode():
                    self._encode(stream, frame)
                continue
            shift = round(self._offset / tb)
            if packet.pts is not None:
                packet.pts -= shift
            if packet.dts is not None:
                packet.dts -= shift
            packet.stream = stream
            self._out.mux(packet)

    def _encode(self, stream: Any, frame: Any) -> None:
        if frame is not None and frame.pts is not None:
            rate = frame.sample_rate
            frame.pts = round((_frac(frame.time_base) * frame.pts - self._offset) * rate)
            frame.time_base = Fraction(1, rate)
        for packet in stream.encode(frame):
            self._out.mux(packet)

    def _flush(self) -> None:
        for index, (stream, reencode) in self._map.items():
            if reencode:
                for frame in self._in.streams[index].decode(None):
                    self._encode(stream, frame)
                self._encode(stream, None)

    def close(self) -> None:
        if self._in is not None:
            self._in.close()
            self._in = None


def _add_copy(out: Any, template: Any) -> Any:
    """A stream that takes `template`'s packets unchanged (PyAV >= 14 spelling, then PyAV 12/13's)."""
    add = getattr(out, "add_stream_from_template", None)
    return add(template) if add is not None else out.add_stream(template=template)


def _add_aac(out: Any, template: Any) -> Any:
    ctx = template.codec_context
    if "aac" not in _av().codecs_available or ctx is None or not ctx.sample_rate:
        return None
    layout = ctx.layout.name
    if layout not in _AAC_LAYOUTS.values():  # e.g. PCM's "2 channels" (no channel order): the usual one
        layout = _AAC_LAYOUTS.get(len(ctx.layout.channels))
        if layout is None:
            return None
    stream = out.add_stream("aac", rate=ctx.sample_rate)
    stream.layout = layout
    stream.bit_rate = 192_000
    return stream


def _try(make: Callable[[], Any]) -> Any:
    try:
        return make()
    except Exception:
        return None


def _orientation(frame: Any, stream: Any, path: Path) -> str:
    """How to show `frame` upright: from its display matrix, else PyAV's `rotation`, else a `rotate` tag."""
    matrix = _display_matrix(frame)
    if matrix is not None:
        name = _transform_from_matrix(matrix)
    else:
        ccw = getattr(frame, "rotation", None)  # counter-clockwise degrees (PyAV >= 13)
        if not ccw:
            try:  # FFmpeg < 6.1 exported the display matrix as a clockwise `rotate` tag
                ccw = -float(stream.metadata.get("rotate", 0))
            except (TypeError, ValueError):
                ccw = 0
        name = _transform_from_angle(float(ccw))
    if name is None:
        _warn(f"{path}: display rotation is not a multiple of 90 degrees; frames are used as stored")
        return "none"
    return name


def _display_matrix(frame: Any) -> list[int] | None:
    try:
        raw = bytes(frame.side_data["DISPLAYMATRIX"])
    except Exception:  # no such side data, or a PyAV that cannot look it up by name
        return None
    return list(struct.unpack("=9i", raw[:36])) if len(raw) >= 36 else None


def _transform_from_matrix(m: list[int]) -> str | None:
    """FFmpeg's CLI autorotate decision (fftools: get_rotation + the transpose/flip choice) for a matrix.

    `m` is FFmpeg's 3x3 display matrix, row-major, 16.16 fixed point. None for angles that are not a
    multiple of 90 degrees (FFmpeg would use its `rotate` filter; not supported here).
    """
    a, b, c, d = (v / 65536 for v in (m[0], m[1], m[3], m[4]))
    s0, s1 = math.hypot(a, c), math.hypot(b, d)
    if s0 == 0 or s1 == 0:
        return "none"  # degenerate matrix: FFmpeg leaves the frame alone too
    ccw = -math.degrees(math.atan2(b / s1, a / s0))  # av_display_rotation_get
    theta = -round(ccw)
    theta -= 360 * math.floor(theta / 360 + 0.9 / 360)
    if abs(theta - 90) < 1:
        return "transpose" if m[3] > 0 else "clock"
    if abs(theta - 180) < 1:
        flips = (m[0] < 0, m[4] < 0)
        return {(True, True): "rot180", (True, False): "hflip", (False, True): "vflip"}.get(flips, "none")
    if abs(theta - 270) < 1:
        return "antitranspose" if m[3] < 0 else "cclock"
    if abs(theta) > 1:
        return None
    return "vflip" if m[4] < 0 else "none"


def _transform_from_angle(ccw: float) -> str | None:
    """A pure counter-clockwise rotation by `ccw` degrees."""
    turns = ccw / 90
    if abs(turns - round(turns)) > 1 / 90:
        return None
    return ("none", "cclock", "rot180", "clock")[round(turns) % 4]


def _chain(first: Any, rest: Iterator[Any]) -> Iterator[Any]:
    yield first
    yield from rest


def _frac(x: Any) -> Fraction:
    """A Fraction from a Fraction, an int, or PyAV 19's AVRational."""
    if isinstance(x, Fraction | int):
        return Fraction(x)
    return Fraction(x.numerator, x.denominator)


def _warn(msg: str, kind: str = "warning") -> None:
    print(f"{kind}: {msg}", file=sys.stderr)


