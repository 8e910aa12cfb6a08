"""`python -m engine.deblur`: folders, modes, bad files, outputs never overwrite inputs, video, backends."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from deblurgan.inference import Deblurrer
from deblurgan.io import read_image, write_image
from engine.deblur import main

RNG = np.random.default_rng(5)
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _auto_is_fp32(monkeypatch):
    """These tests compare with fp32 references: "auto" means fp32 here on every CPU (bf16: test_precision.py)."""
    import deblurgan.precision

    monkeypatch.setattr(deblurgan.precision, "cpu_has_native_bf16", lambda: False)


@pytest.fixture(scope="module")
def ckpt(tiny_ckpt) -> Path:
    return tiny_ckpt


@pytest.fixture
def inputs(tmp_path) -> Path:
    src = tmp_path / "in"
    write_image(src / "rgb.png", RNG.integers(0, 256, (21, 33, 3), dtype=np.uint8))
    write_image(src / "photo.jpg", RNG.integers(0, 256, (16, 16, 3), dtype=np.uint8))
    write_image(src / "sub" / "gray.png", RNG.integers(0, 256, (17, 9), dtype=np.uint8))
    write_image(src / "sub" / "rgba.png", RNG.integers(0, 256, (12, 15, 4), dtype=np.uint8))
    write_image(src / "sub" / "deep" / "c16.png", RNG.integers(0, 65536, (13, 11, 3), dtype=np.uint16))
    (src / "notes.txt").write_text("ignored: not an image")
    (src / "._rgb.png").write_bytes(b"AppleDouble metadata")  # hidden files and folders are ignored
    write_image(src / ".thumbs" / "t.png", RNG.integers(0, 256, (8, 8, 3), dtype=np.uint8))
    return src


def test_folder_mirrors_and_keeps_modes(ckpt, inputs, tmp_path, capsys):
    out = tmp_path / "out"
    assert main([str(inputs), "--checkpoint", str(ckpt), "--out", str(out), "--device", "cpu"]) == 0
    expected = ["photo.jpg", "rgb.png", "sub/deep/c16.png", "sub/gray.png", "sub/rgba.png"]
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == expected
    d = Deblurrer(ckpt)
    for rel in expected:
        src, dst = read_image(inputs / rel), read_image(out / rel)
        assert src.shape == dst.shape and src.dtype == dst.dtype, rel
        if rel.endswith(".png"):  # lossless: exactly what the API gives
            np.testing.assert_array_equal(dst, d.deblur(src))
    assert "deblurred 5 of 5" in capsys.readouterr().err


def test_bad_files_are_skipped_and_exit_code_1(ckpt, inputs, tmp_path, capsys):
    (inputs / "text.png").write_text("not a png")
    good = inputs / "rgb.png"
    trunc = inputs / "trunc.png"
    trunc.write_bytes(good.read_bytes()[:60])
    missing = tmp_path / "missing.png"
    code = main([str(inputs), str(missing), "--checkpoint", str(ckpt), "--out", str(tmp_path / "o"), "--device", "cpu"])
    assert code == 1
    err = capsys.readouterr().err
    skipped = [line for line in err.splitlines() if line.startswith("skipped ")]
    assert len(skipped) == 3, err
    assert any("text.png: not an image" in s for s in skipped)
    assert any("trunc.png" in s for s in skipped) and any("missing.png: file not found" in s for s in skipped)
    assert "Traceback" not in err
    assert (tmp_path / "o" / "rgb.png").is_file()  # the rest was done


def test_suffix_ext_side_by_side(ckpt, inputs, tmp_path):
    out = tmp_path / "o"
    args = ["--checkpoint", str(ckpt), "--out", str(out), "--suffix", "_d", "--ext", "png", "--side-by-side"]
    assert main([str(inputs / "rgb.png"), str(inputs / "photo.jpg"), *args, "--device", "cpu"]) == 0
    sbs = read_image(out / "rgb_d.png")
    src = read_image(inputs / "rgb.png")
    assert sbs.shape == (21, 66, 3)
    np.testing.assert_array_equal(sbs[:, :33], src)
    np.testing.assert_array_equal(sbs[:, 33:], Deblurrer(ckpt).deblur(src))
    assert (out / "photo_d.png").is_file()


def test_never_overwrites_inputs(ckpt, inputs, tmp_path, capsys):
    before = {p: p.read_bytes() for p in inputs.rglob("*") if p.is_file()}
    assert main([str(inputs), "--checkpoint", str(ckpt), "--out", str(inputs)]) == 2
    assert "input folder" in capsys.readouterr().err
    # a file whose output path is itself
    assert main([str(inputs / "rgb.png"), "--checkpoint", str(ckpt), "--out", str(inputs)]) == 2
    assert "overwrite an input" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in inputs.rglob("*") if p.is_file()} == before
    # with a suffix the same folder is fine, and earlier outputs inside --out are not re-read
    assert main([str(inputs / "rgb.png"), "--checkpoint", str(ckpt), "--out", str(inputs), "--suffix", "_d"]) == 0
    assert (inputs / "rgb_d.png").is_file()


def test_usage_errors_exit_2_with_one_line(ckpt, inputs, tmp_path, capsys):
    cases = [
        ["--checkpoint", str(tmp_path / "nope.pt")],
        [],  # no checkpoint
        ["--checkpoint", str(ckpt), "--tile", "30"],
        ["--checkpoint", str(ckpt), "--fp16", "--device", "cpu"],
        ["--backend", "onnx"],  # no model
        ["--runtime", "onnx"],
        ["--checkpoint", str(ckpt), "--precision", "fp8"],  # argparse errors are one line too
        ["--checkpoint", str(ckpt), "--max-memory", "lots"],
        ["--checkpoint", str(ckpt), "--fp16", "--precision", "bf16"],
    ]
    for extra in cases:
        assert main([str(inputs), "--out", str(tmp_path / "o"), *extra]) == 2, extra
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: "), (extra, err)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([str(empty), "--checkpoint", str(ckpt), "--out", str(tmp_path / "o")]) == 2
    assert not (tmp_path / "o").exists()


def test_module_entry_point_no_traceback(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"junk")
    r = subprocess.run(
        [sys.executable, "-m", "engine.deblur", str(tmp_path), "--checkpoint", str(bad), "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr and r.stderr.startswith("error: ")


def test_tile_option_matches_untiled(ckpt, tmp_path, capsys):
    img = RNG.integers(0, 256, (90, 150, 3), dtype=np.uint8)
    write_image(tmp_path / "big.png", img)
    main([str(tmp_path / "big.png"), "--checkpoint", str(ckpt), "--out", str(tmp_path / "a"), "--device", "cpu"])
    main([str(tmp_path / "big.png"), "--checkpoint", str(ckpt), "--out", str(tmp_path / "b"), "--tile", "96"])
    assert "note: 150x90 runs in 3 tiles of 96 px" in capsys.readouterr().err
    a, b = read_image(tmp_path / "a" / "big.png"), read_image(tmp_path / "b" / "big.png")
    assert np.abs(a.astype(int) - b).max() <= 1


def test_small_max_memory_runs_in_bands_and_matches_untiled(ckpt, tmp_path, capsys):
    """A bound too small for the image: one window in bands of rows, the same pixels as untiled."""
    img = RNG.integers(0, 256, (94, 146, 3), dtype=np.uint8)  # a size no other test notes (noted once per size)
    write_image(tmp_path / "big.png", img)
    main([str(tmp_path / "big.png"), "--checkpoint", str(ckpt), "--out", str(tmp_path / "a")])
    main([str(tmp_path / "big.png"), "--checkpoint", str(ckpt), "--out", str(tmp_path / "b"), "--max-memory", "8M"])
    assert "note: 146x94 runs in bands of rows within --max-memory" in capsys.readouterr().err
    a, b = read_image(tmp_path / "a" / "big.png"), read_image(tmp_path / "b" / "big.png")
    assert np.abs(a.astype(int) - b).max() <= 1


def _video(path: Path, n: int = 5, h: int = 24, w: int = 32, fps: int = 12) -> list[np.ndarray]:
    from deblurgan.video import VideoWriter

    frames = []
    y, x = np.mgrid[0:h, 0:w]
    with VideoWriter(path, fps, w, h) as vw:
        for t in range(n):
            f = np.stack([127 + 100 * np.sin(x / 4 + t), 127 + 100 * np.cos(y / 3 - t), (x + y) * 4 % 256], 2)
            frames.append(f.astype(np.uint8))
            vw.write(frames[-1])
    return frames


def test_video_to_video_and_frames(ckpt, tmp_path):
    pytest.importorskip("av")
    from deblurgan.video import VideoReader

    _video(tmp_path / "in" / "clip.mp4")
    out = tmp_path / "out"
    base = ["--checkpoint", str(ckpt), "--device", "cpu", "--batch-size", "2"]
    assert main([str(tmp_path / "in"), "--out", str(out), *base]) == 0
    with VideoReader(out / "clip.mp4") as r:
        assert r.fps == 12 and (r.width, r.height) == (32, 24) and len(list(r)) == 5
    assert main([str(tmp_path / "in" / "clip.mp4"), "--out", str(out), "--frames", "--side-by-side", *base]) == 0
    frames = sorted((out / "clip").glob("*.png"))
    assert [f.name for f in frames] == [f"frame_{i:06d}.png" for i in range(1, 6)]
    with VideoReader(tmp_path / "in" / "clip.mp4") as r:
        decoded = list(r)
    d = Deblurrer(ckpt)
    for f, src in zip(frames, decoded, strict=True):  # frames are the deblurred decoded frames, in order
        got = read_image(f)
        np.testing.assert_array_equal(got[:, :32], src)
        # batch of 2 vs 1 frame: float noise may flip a rounding by one level
        assert np.abs(got[:, 32:].astype(int) - d.deblur(src)).max() <= 1


def test_corrupt_video_skipped(ckpt, tmp_path, capsys):
    pytest.importorskip("av")
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "broken.mp4").write_bytes(os.urandom(2000))
    write_image(tmp_path / "in" / "ok.png", RNG.integers(0, 256, (8, 8, 3), dtype=np.uint8))
    assert main([str(tmp_path / "in"), "--checkpoint", str(ckpt), "--out", str(tmp_path / "o")]) == 1
    assert "skipped" in capsys.readouterr().err and not (tmp_path / "o" / "broken.mp4").exists()


@pytest.mark.slow
def test_onnx_backend_same_result(ckpt, tmp_path):
    """The ONNX artifact goes through the same padding/tiling; results equal torch within 1 level."""
    pytest.importorskip("onnxruntime")
    export_onnx = pytest.importorskip("export.onnx")
    onnx_path = export_onnx.export_checkpoint(ckpt, tmp_path / "g.onnx")
    img = RNG.integers(0, 256, (37, 45, 3), dtype=np.uint8)
    write_image(tmp_path / "x.png", img)
    assert (
        main([str(tmp_path / "x.png"), "--backend", "onnx", "--model", str(onnx_path), "--out", str(tmp_path / "o")])
        == 0
    )
    got = read_image(tmp_path / "o" / "x.png").astype(int)
    assert np.abs(got - Deblurrer(ckpt, precision="fp32").deblur(img)).max() <= 1
    args = [
        "--backend",
        "onnx",
        "--model",
        str(onnx_path),
        "--tile",
        "32",
        "--overlap",
        "8",
        "--out",
        str(tmp_path / "t"),
    ]
    assert main([str(tmp_path / "x.png"), *args]) == 0  # per-tile statistics: runs, approximate
    assert read_image(tmp_path / "t" / "x.png").shape == img.shape


def test_unexpected_failure_on_one_file_is_skipped(ckpt, inputs, tmp_path, capsys, monkeypatch):
    import engine.deblur as cli

    real = cli.deblur_image_file

    def flaky(job, deblurrer, side_by_side):
        if job.src.name == "rgb.png":
            raise RuntimeError("CUDA out of memory. Tried to allocate 20 GiB\nmore details")
        return real(job, deblurrer, side_by_side)

    monkeypatch.setattr(cli, "deblur_image_file", flaky)
    assert main([str(inputs), "--checkpoint", str(ckpt), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert "skipped" in err and "rgb.png: RuntimeError: CUDA out of memory. Tried to allocate 20 GiB" in err
    assert "more details" not in err and (tmp_path / "o" / "sub" / "gray.png").is_file()


def test_existing_file_as_out_is_one_error(ckpt, inputs, tmp_path, capsys):
    out = tmp_path / "taken.png"
    out.write_bytes(b"not a folder")
    assert main([str(inputs / "rgb.png"), "--checkpoint", str(ckpt), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: --out {out} is a file: give a folder (outputs keep their input names)"]
    assert out.read_bytes() == b"not a folder"


def test_help_texts_and_the_same_program_name(monkeypatch):
    from engine import deblur, evaluate

    for module in (deblur, evaluate):
        usages = set()
        for argv0 in ("/usr/bin/deblurgan-deblur", "deblur.py", "-m"):
            monkeypatch.setattr(sys, "argv", [argv0])
            usages.add(module.build_parser().format_usage())
        assert len(usages) == 1 and usages.pop().startswith(f"usage: {module.PROG} ")
        parser = module.build_parser()
        assert "--backend" not in parser.format_help()  # the older spelling is accepted but not advertised
        for action in parser._actions:  # every option says what it does
            assert action.help, (module.PROG, action.option_strings)
        assert {"runtime", "precision", "max_memory", "no_progress"} <= {a.dest for a in parser._actions}


def test_runtime_and_its_older_spelling(ckpt, tmp_path, monkeypatch):
    import engine.deblur as cli

    seen = []
    monkeypatch.setattr(cli, "run_jobs", lambda jobs, d, args: seen.append((d, args.runtime)) or 0)
    img = tmp_path / "x.png"
    write_image(img, RNG.integers(0, 256, (16, 16, 3), dtype=np.uint8))
    for flag in ("--runtime", "--backend"):
        assert main([str(img), "--checkpoint", str(ckpt), "--out", str(tmp_path / "o"), flag, "torch"]) == 0
    assert [r for _, r in seen] == ["torch", "torch"]
    assert main([str(img), "--checkpoint", str(ckpt), "--out", str(tmp_path / "o"), "--precision", "bf16"]) == 0
    assert seen[-1][0].precision == "bf16" and seen[-1][0].runner.name == "torch-bf16"
    assert main([str(img), "--checkpoint", str(ckpt), "--out", str(tmp_path / "o"), "--max-memory", "1.5G"]) == 0
    assert seen[-1][0].max_memory == int(1.5 * 2**30)


def test_parse_bytes():
    import argparse

    from engine.deblur import parse_bytes

    assert parse_bytes("4G") == 4 * 2**30 and parse_bytes("512M") == 512 * 2**20 and parse_bytes("2048") == 2048
    assert parse_bytes("4GiB") == parse_bytes("4gb") == 4 * 2**30
    for bad in ("", "0", "-1G", "4X", "G"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_bytes(bad)


def test_without_checkpoint_the_shipped_model_runs(ckpt, tmp_path, capsys, monkeypatch):
    import deblurgan.pretrained as pretrained

    img = tmp_path / "x.png"
    write_image(img, RNG.integers(0, 256, (16, 20, 3), dtype=np.uint8))
    monkeypatch.setattr(pretrained, "SHIPPED_WEIGHTS", tmp_path / "none.pt")
    assert main([str(img), "--out", str(tmp_path / "a")]) == 2  # none ships yet: one line that says so
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no trained model ships" in err[0]
    with pytest.raises(pretrained.NoShippedModel):
        Deblurrer()
    monkeypatch.setattr(pretrained, "SHIPPED_WEIGHTS", Path(ckpt))
    assert main([str(img), "--out", str(tmp_path / "b"), "--precision", "fp32"]) == 0
    expected = Deblurrer(ckpt, precision="fp32").deblur(read_image(img))
    np.testing.assert_array_equal(read_image(tmp_path / "b" / "x.png"), expected)
    np.testing.assert_array_equal(Deblurrer(precision="fp32").deblur(read_image(img)), expected)
