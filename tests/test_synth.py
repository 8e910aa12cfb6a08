"""engine.synth: the paired-dataset writer CLI."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deblurgan.data import build_dataset
from engine.synth import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def sharp_dir(tmp_path):
    rng = np.random.default_rng(0)
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    Image.fromarray((rng.random((40, 56, 3)) * 255).astype(np.uint8)).save(src / "a.png")
    Image.fromarray((rng.random((30, 33)) * 255).astype(np.uint8)).save(src / "sub" / "b.png")
    Image.fromarray((rng.random((20, 24, 4)) * 255).astype(np.uint8)).save(src / "sub" / "rgba.png")
    return src


def test_writes_paired_tree_psfs_sheet_and_manifest(sharp_dir, tmp_path):
    out = tmp_path / "out"
    assert main([str(sharp_dir), "--out", str(out), "--per-image", "2", "--seed", "3", "--quiet"]) == 0
    m = json.loads((out / "manifest.json").read_text())
    assert m["seed"] == 3 and len(m["pairs"]) == 6 and m["failed"] == []
    for rec in m["pairs"]:
        blur, sharp = np.asarray(Image.open(out / rec["blur"])), np.asarray(Image.open(out / rec["sharp"]))
        assert blur.shape == sharp.shape and blur.dtype == np.uint8
        psf = np.load(out / rec["psf"])
        assert psf.shape == (64, 64) and abs(psf.sum() - 1) < 1e-5 and (psf >= 0).all()
    assert (out / "blur" / "sub" / "b_1.png").is_file() and (out / "sharp" / "sub" / "rgba_0.png").is_file()
    assert np.asarray(Image.open(out / "sharp" / "sub" / "rgba_0.png")).shape == (20, 24, 3)  # alpha dropped
    assert Image.open(out / "psf_sheet.png").size[0] > 64
    ds = build_dataset(f"paired:{out / 'blur'},{out / 'sharp'}", "val")
    assert len(ds) == 6


def test_blur_file_is_the_saved_psf_applied(sharp_dir, tmp_path):
    from deblurgan.blur import blur_image

    out = tmp_path / "out"
    assert main([str(sharp_dir), "--out", str(out), "--quiet", "--fraction", "1"]) == 0
    sharp = np.asarray(Image.open(out / "sharp" / "a.png"))
    expect = np.round(blur_image(sharp, np.load(out / "psf" / "a.npy")) * 255)
    got = np.asarray(Image.open(out / "blur" / "a.png")).astype(np.float64)
    assert np.abs(got - expect).max() <= 1
    assert np.abs(got - sharp).mean() > 1  # it did blur


def test_same_seed_same_output_other_seed_differs(sharp_dir, tmp_path):
    for name, seed in (("x", "1"), ("y", "1"), ("z", "2")):
        assert main([str(sharp_dir), "--out", str(tmp_path / name), "--seed", seed, "--quiet"]) == 0
    x, y, z = (np.load(tmp_path / n / "psf" / "a.npy") for n in "xyz")
    assert np.array_equal(x, y) and not np.array_equal(x, z)


def test_bad_image_reported_and_skipped(sharp_dir, tmp_path, capsys):
    (sharp_dir / "sub" / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    assert main([str(sharp_dir), "--out", str(out), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "broken.png" in err and "Traceback" not in err
    m = json.loads((out / "manifest.json").read_text())
    assert len(m["pairs"]) == 3 and m["failed"][0]["source"] == "sub/broken.png"


@pytest.mark.parametrize(
    "extra",
    [["--fraction", "0.3"], ["--per-image", "0"], ["--noise", "-1"], ["--canvas", "2"]],
)
def test_bad_options_are_one_line_errors(sharp_dir, tmp_path, capsys, extra):
    assert main([str(sharp_dir), "--out", str(tmp_path / "o"), "--quiet", *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err


def test_missing_folder_via_python_m(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "engine.synth", str(tmp_path / "nope"), "--out", str(tmp_path / "o")],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and r.stderr.strip() == f"error: {tmp_path / 'nope'}: not a folder"
