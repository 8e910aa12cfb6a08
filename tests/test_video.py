"""Video beyond the pixels: audio carried over in sync, display rotation, per-frame timestamps, atomic writes.

Every input clip is written here with PyAV: 64x48 frames of a moving smooth pattern (never flat), and a
440 Hz sine tone as audio.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from deblurgan.inference import Deblurrer
from deblurgan.io import read_image
from engine.deblur import main

av = pytest.importorskip("av")

from deblurgan.video import VideoReader, VideoWriter  # noqa: E402

W, H, N, FPS, SR = 64, 48, 10, 10, 44100
TONE = 440.0


@pytest.fixture(scope="module")
def ckpt(tiny_ckpt) -> Path:
    return tiny_ckpt


def frame(t: int, h: int = H, w: int = W) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    r = 127 + 100 * np.sin(x / 5.0 + t)
    g = 127 + 100 * np.cos(y / 4.0 - t)
    b = (x * 3 + y * 2 + 20 * t) % 256
    return np.stack([r, g, b], axis=2).astype(np.uint8)


def make_clip(
    path: Path,
    audio: str | None = "aac",
    times: list[Fraction] | None = None,
    audio_start: float = 0.0,
    audio_seconds: float = N / FPS,
    rotation: tuple[int, bool, bool] | None = None,
    fmt: str | None = None,
) -> list[np.ndarray]:
    """Write an H.264 clip (frames at `times` seconds, default N frames at FPS) with a mono sine track."""
    times = times if times is not None else [Fraction(i, FPS) for i in range(N)]
    frames = [frame(i) for i in range(len(times))]
    out = av.open(str(path), "w", format=fmt)
    vs = out.add_stream("libx264", rate=FPS)
    vs.width, vs.height, vs.pix_fmt = W, H, "yuv420p"
    vs.codec_context.time_base = Fraction(1, 1000)
    if rotation is not None:
        vs.set_display_rotation(rotation[0], hflip=rotation[1], vflip=rotation[2])
    aus = None
    if audio is not None:
        aus = out.add_stream(audio, rate=SR)
        aus.layout = "mono"
    for f, t in zip(frames, times, strict=True):
        vf = av.VideoFrame.from_ndarray(f, format="rgb24")
        vf.pts, vf.time_base = round(t * 1000), Fraction(1, 1000)
        for p in vs.encode(vf):
            out.mux(p)
    for p in vs.encode():
        out.mux(p)
    if aus is not None:
        fmt_name = aus.codec_context.format.name
        start, total = round(audio_start * SR), round(audio_seconds * SR)
        for k in range(0, total, 1000):  # 1000-sample frames: PyAV re-chunks them for the encoder
            x = 0.5 * np.sin(2 * np.pi * TONE * np.arange(k, min(k + 1000, total)) / SR)
            if fmt_name.startswith(("s16", "s32")):
                bits = 15 if fmt_name.startswith("s16") else 31
                data = (x * (2**bits - 1)).astype(np.int16 if bits == 15 else np.int32)
            else:
                data = x.astype(np.float32)
            af = av.AudioFrame.from_ndarray(data[None], format=fmt_name, layout="mono")
            af.sample_rate, af.pts, af.time_base = SR, start + k, Fraction(1, SR)
            for p in aus.encode(af):
                out.mux(p)
        for p in aus.encode():
            out.mux(p)
    out.close()
    return frames


def probe(path: Path) -> dict:
    """Streams, audio packets (bytes and times), decoded audio samples and video frame times of a file."""
    info: dict = {"audio_packets": [], "samples": [], "video_times": []}
    with av.open(str(path)) as c:
        info["streams"] = [(s.type, codec_name(s)) for s in c.streams if s.type in ("video", "audio")]
        for packet in c.demux(*c.streams.audio):
            if packet.size:
                info["audio_packets"].append((bytes(packet), float(packet.pts * packet.time_base)))
    with av.open(str(path)) as c:
        if c.streams.audio:
            for f in c.decode(audio=0):
                info["samples"].append(f.to_ndarray().reshape(-1))
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        for f in c.decode(v):
            info["video_times"].append(float(f.pts * f.time_base))
            info.setdefault("rotation", getattr(f, "rotation", 0))
        info["size"] = (v.codec_context.width, v.codec_context.height)
    return info


def codec_name(stream) -> str:
    codec = stream.codec_context.codec
    return getattr(codec, "canonical_name", None) or codec.name  # PyAV < 13 (?): the decoder's (mp3float)


def dominant_hz(samples: list[np.ndarray]) -> float:
    x = np.concatenate(samples).astype(np.float64)
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spectrum) * SR / len(x))


def run(src: Path, out: Path, ckpt: Path, *extra: str) -> int:
    return main([str(src), "--checkpoint", str(ckpt), "--out", str(out), "--device", "cpu", *extra])


# --- audio ------------------------------------------------------------------------------------------


def test_audio_copied_packet_for_packet_in_sync(ckpt, tmp_path, capsys):
    make_clip(tmp_path / "clip.mp4")
    assert run(tmp_path / "clip.mp4", tmp_path / "out", ckpt, "--batch-size", "3") == 0
    assert "warning" not in capsys.readouterr().err
    src, dst = probe(tmp_path / "clip.mp4"), probe(tmp_path / "out" / "clip.mp4")
    assert dst["streams"] == [("video", "h264"), ("audio", "aac")]
    # copied, not re-encoded: the same packets, with the same times (the first is AAC priming, before 0)
    assert [p[0] for p in dst["audio_packets"]] == [p[0] for p in src["audio_packets"]]
    np.testing.assert_allclose([p[1] for p in dst["audio_packets"]], [p[1] for p in src["audio_packets"]], atol=1e-4)
    np.testing.assert_allclose(dst["video_times"], src["video_times"], atol=1e-4)
    assert len(dst["video_times"]) == N
    # the audio lasts as long as the video, within a frame, and is still the tone
    n_samples = sum(len(s) for s in dst["samples"])
    assert abs(n_samples / SR - N / FPS) <= 1 / FPS
    assert abs(dominant_hz(dst["samples"]) - TONE) < 5


def test_audio_offset_and_variable_frame_rate_kept(tmp_path):
    """Frame times come from the source (VFR stays VFR); audio starting late keeps its offset to the video."""
    times = [Fraction(t, 100) for t in (0, 10, 30, 35, 40, 70, 80, 81, 90, 120)]
    src = tmp_path / "vfr.mkv"
    make_clip(src, audio="pcm_s16le", times=times, audio_start=0.25, audio_seconds=1.0)
    with VideoReader(src) as r:
        with VideoWriter(tmp_path / "out.mkv", r.fps, r.width, r.height, source=r) as w:
            for f in r:
                w.write(255 - f)
    a, b = probe(src), probe(tmp_path / "out.mkv")
    assert b["streams"] == [("video", "h264"), ("audio", "pcm_s16le")]
    np.testing.assert_allclose(b["video_times"], [float(t) for t in times], atol=1e-3)
    assert b["audio_packets"][0][1] == pytest.approx(0.25, abs=1e-3)
    assert [p[0] for p in b["audio_packets"]] == [p[0] for p in a["audio_packets"]]
    # the written frames (negatives: a stand-in for the model) are what came out, in order
    with VideoReader(src) as r:
        decoded = list(r)
    with VideoReader(tmp_path / "out.mkv") as r:
        written = list(r)
    errors = [np.abs(o.astype(int) - (255 - i.astype(int))).mean() for o, i in zip(written, decoded, strict=True)]
    assert max(errors) < 6


def test_audio_reencoded_to_aac_when_the_container_cannot_hold_it(ckpt, tmp_path, capsys):
    # An .m4v file is written by FFmpeg's "ipod" muxer, which takes no MP3: the MP3 track becomes AAC.
    if "libmp3lame" not in av.codecs_available:
        pytest.skip("this FFmpeg has no MP3 encoder to write the input")
    make_clip(tmp_path / "clip.m4v", audio="libmp3lame", fmt="mp4")
    assert run(tmp_path / "clip.m4v", tmp_path / "out", ckpt) == 0
    err = capsys.readouterr().err
    with av.open(str(tmp_path / "clip.m4v")) as c:
        mp3 = codec_name(c.streams.audio[0])  # "mp3float" on older PyAV
    assert f"note: {tmp_path / 'clip.m4v'}: audio stream 1 ({mp3}) re-encoded to AAC" in err
    src, dst = probe(tmp_path / "clip.m4v"), probe(tmp_path / "out" / "clip.m4v")
    assert src["streams"][1] == ("audio", mp3) and dst["streams"] == [("video", "h264"), ("audio", "aac")]
    n_src, n_dst = (sum(len(s) for s in p["samples"]) for p in (src, dst))
    assert abs(n_dst - n_src) <= 2048  # encoder frames are 1152 (MP3) and 1024 (AAC) samples
    assert abs(n_dst / SR - N / FPS) <= 1 / FPS
    assert abs(dominant_hz(dst["samples"]) - TONE) < 5
    assert abs(dst["audio_packets"][0][1] - src["audio_packets"][0][1]) < 0.03
    assert len(dst["video_times"]) == N


def test_audio_that_cannot_be_carried_is_dropped_with_a_warning(ckpt, tmp_path, capsys):
    # A .webm file that is really Matroska with PCM audio: WebM takes neither PCM nor AAC.
    make_clip(tmp_path / "clip.webm", audio="pcm_s16le", fmt="matroska")
    assert run(tmp_path / "clip.webm", tmp_path / "out", ckpt) == 0
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("warning")]
    why = "audio stream 1 (pcm_s16le) dropped: a .webm file cannot hold it, nor AAC"
    assert lines == [f"warning: {tmp_path / 'clip.webm'}: {why}"]
    dst = probe(tmp_path / "out" / "clip.webm")
    assert [kind for kind, _ in dst["streams"]] == ["video"] and len(dst["video_times"]) == N


def test_clip_without_audio(ckpt, tmp_path, capsys):
    make_clip(tmp_path / "clip.mp4", audio=None)
    assert run(tmp_path / "clip.mp4", tmp_path / "out", ckpt) == 0
    assert "warning" not in capsys.readouterr().err
    dst = probe(tmp_path / "out" / "clip.mp4")
    assert dst["streams"] == [("video", "h264")] and len(dst["video_times"]) == N


# --- rotation ---------------------------------------------------------------------------------------

needs_rotation_writer = pytest.mark.skipif(
    not hasattr(av.video.stream.VideoStream, "set_display_rotation"),
    reason="this PyAV cannot write a display matrix (no set_display_rotation)",
)


@needs_rotation_writer
@pytest.mark.parametrize(
    "degrees,hflip,vflip",
    [(0, False, False), (90, False, False), (180, False, False), (270, False, False),  # the 4 rotations
     (0, True, False), (0, False, True), (90, True, False), (90, False, True)],  # and 4 mirrored (EXIF 2,4,5,7)
)  # fmt: skip
def test_reader_turns_frames_upright(tmp_path, degrees, hflip, vflip):
    """PyAV's documented meaning of the display matrix: turn `degrees` counter-clockwise, then mirror."""
    make_clip(tmp_path / "r.mp4", audio=None, rotation=(degrees, hflip, vflip))
    with av.open(str(tmp_path / "r.mp4")) as c:
        stored = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    with VideoReader(tmp_path / "r.mp4") as r:
        got = list(r)
        size = (r.width, r.height)
    turned = [np.rot90(s, degrees // 90) for s in stored]
    expected = [t[:: -1 if vflip else 1, :: -1 if hflip else 1] for t in turned]
    assert size == (expected[0].shape[1], expected[0].shape[0]) and len(got) == N
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_array_equal(g, e)
        assert g.flags.c_contiguous
    # the pattern is not symmetric: any other of the 8 orientations would have failed
    others = [np.rot90(stored[3], k)[:: -1 if v else 1] for k in range(4) for v in (False, True)]
    assert sum(o.shape == got[3].shape and np.array_equal(o, got[3]) for o in others) == 1


@needs_rotation_writer
def test_rotated_phone_clip_comes_out_upright(ckpt, tmp_path):
    # A phone held upright records landscape frames with "turn 90 degrees clockwise to show" (-90 here).
    make_clip(tmp_path / "clip.mp4", rotation=(-90, False, False))
    assert run(tmp_path / "clip.mp4", tmp_path / "out", ckpt) == 0
    assert run(tmp_path / "clip.mp4", tmp_path / "frames", ckpt, "--frames") == 0
    dst = probe(tmp_path / "out" / "clip.mp4")
    assert dst["size"] == (H, W) and dst["rotation"] == 0  # portrait pixels, no rotation left to apply
    assert dst["streams"] == [("video", "h264"), ("audio", "aac")]
    pngs = sorted((tmp_path / "frames" / "clip").glob("*.png"))
    assert len(pngs) == N
    with av.open(str(tmp_path / "clip.mp4")) as c:
        stored = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    d = Deblurrer(ckpt)
    for png, raw in zip(pngs, stored, strict=True):  # the model ran on the upright (clockwise-turned) frame
        assert np.abs(read_image(png).astype(int) - d.deblur(np.ascontiguousarray(np.rot90(raw, -1)))).max() <= 1
    with VideoReader(tmp_path / "out" / "clip.mp4") as r:
        written = list(r)
    # the random model's output is noise-like, which H.264 at CRF 18 keeps only roughly: the video frames
    # are nearer the PNGs than the PNGs turned upside down
    for out, png in zip(written, pngs, strict=True):
        ref = read_image(png).astype(int)
        assert np.abs(out - ref).mean() < 0.6 * np.abs(out - ref[::-1, ::-1]).mean()


# --- atomic writes ----------------------------------------------------------------------------------


def test_interrupted_write_leaves_no_partial_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    import deblurgan.video as video

    make_clip(tmp_path / "clip.mp4")
    out = tmp_path / "out"
    out.mkdir()
    (out / "clip.mp4").write_bytes(b"older result")
    with VideoReader(tmp_path / "clip.mp4") as r:  # interrupted between frames
        with pytest.raises(KeyboardInterrupt):
            with VideoWriter(out / "clip.mp4", r.fps, r.width, r.height, source=r) as w:
                for i, f in enumerate(r):
                    w.write(f)
                    if i == 5:
                        raise KeyboardInterrupt
    assert [p.name for p in out.iterdir()] == ["clip.mp4"] and (out / "clip.mp4").read_bytes() == b"older result"

    def broken_commit(tmp, path):
        raise OSError("disk full")

    monkeypatch.setattr(video, "commit", broken_commit)
    with VideoReader(tmp_path / "clip.mp4") as r:  # failing while finishing the file
        w = VideoWriter(out / "clip.mp4", r.fps, r.width, r.height, source=r)
        for f in r:
            w.write(f)
        with pytest.raises(OSError, match="disk full"):
            w.close()
    assert [p.name for p in out.iterdir()] == ["clip.mp4"] and (out / "clip.mp4").read_bytes() == b"older result"
