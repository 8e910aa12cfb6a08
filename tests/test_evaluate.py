"""`python -m engine.evaluate`: GoPro layout and parallel folders, CSV + mean, blurred baseline, bad pairs."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from deblurgan import Generator, GeneratorConfig
from deblurgan.checkpoint import save_generator
from deblurgan.inference import Deblurrer
from deblurgan.io import read_image, write_image
from engine.evaluate import main, to_rgb8

RNG = np.random.default_rng(11)


@pytest.fixture(autouse=True)
def _auto_is_fp32(monkeypatch):
    """These tests compare with fp32 references: "auto" means fp32 here on every CPU (bf16: test_precision.py)."""
    import deblurgan.precision

    monkeypatch.setattr(deblurgan.precision, "cpu_has_native_bf16", lambda: False)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    torch.manual_seed(1)
    return save_generator(Generator(GeneratorConfig(ngf=8, n_blocks=1)), tmp_path_factory.mktemp("ck") / "g.pt")


@pytest.fixture
def gopro(tmp_path) -> Path:
    root = tmp_path / "test"
    for seq in ("GOPR0384_11_00", "GOPR0385_11_01"):
        for i in range(2):
            sharp = RNG.integers(0, 256, (20, 28, 3), dtype=np.uint8)
            blur = np.clip(sharp.astype(int) + RNG.integers(-30, 31, sharp.shape), 0, 255).astype(np.uint8)
            write_image(root / seq / "sharp" / f"{i:06d}.png", sharp)
            write_image(root / seq / "blur" / f"{i:06d}.png", blur)
    return root


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def sk(a, b):
    return peak_signal_noise_ratio(a, b, data_range=255), structural_similarity(a, b, channel_axis=2, data_range=255)


def test_data_mode_runs_model_and_scores(ckpt, gopro, tmp_path, capsys):
    out_csv = tmp_path / "scores.csv"
    assert main(["--data", str(gopro), "--checkpoint", str(ckpt), "--csv", str(out_csv), "--device", "cpu"]) == 0
    rows = read_csv(out_csv)
    assert [r["image"] for r in rows] == [
        "GOPR0384_11_00/000000",
        "GOPR0384_11_00/000001",
        "GOPR0385_11_01/000000",
        "GOPR0385_11_01/000001",
        "mean",
    ]
    d = Deblurrer(ckpt)
    for r in rows[:-1]:
        seq, name = r["image"].split("/")
        sharp = read_image(gopro / seq / "sharp" / f"{name}.png")
        blur = read_image(gopro / seq / "blur" / f"{name}.png")
        p, s = sk(d.deblur(blur), sharp)
        bp, bs = sk(blur, sharp)
        assert float(r["psnr"]) == pytest.approx(p, abs=1e-6) and float(r["ssim"]) == pytest.approx(s, abs=1e-6)
        assert float(r["blur_psnr"]) == pytest.approx(bp, abs=1e-6)
        assert float(r["blur_ssim"]) == pytest.approx(bs, abs=1e-6)
    mean = np.mean([float(r["psnr"]) for r in rows[:-1]])
    assert float(rows[-1]["psnr"]) == pytest.approx(mean, abs=1e-5)
    out = capsys.readouterr().out
    assert "restored:" in out and "blurred input:" in out and f"{mean:.4f}" in out


def test_restored_mode_equals_data_mode(ckpt, gopro, tmp_path):
    main(
        [
            "--data",
            str(gopro),
            "--checkpoint",
            str(ckpt),
            "--csv",
            str(tmp_path / "a.csv"),
            "--save",
            str(tmp_path / "r"),
        ]
    )
    args = [
        "--restored",
        str(tmp_path / "r"),
        "--sharp",
        str(gopro),
        "--blur",
        str(gopro),
        "--csv",
        str(tmp_path / "b.csv"),
    ]
    assert main(args) == 0
    assert read_csv(tmp_path / "a.csv") == read_csv(tmp_path / "b.csv")


def test_ssim_gaussian_option(gopro, tmp_path):
    args = ["--restored", str(gopro), "--sharp", str(gopro), "--blur", str(gopro)]  # restored = the blurred
    main([*args, "--csv", str(tmp_path / "a.csv")])
    main([*args, "--csv", str(tmp_path / "g.csv"), "--ssim-gaussian"])
    plain, gauss = read_csv(tmp_path / "a.csv"), read_csv(tmp_path / "g.csv")
    seq, name = plain[0]["image"].split("/")
    sharp = read_image(gopro / seq / "sharp" / f"{name}.png")
    blur = read_image(gopro / seq / "blur" / f"{name}.png")
    expected = structural_similarity(
        blur, sharp, channel_axis=2, data_range=255, gaussian_weights=True, sigma=1.5, use_sample_covariance=False
    )
    assert float(gauss[0]["ssim"]) == pytest.approx(expected, abs=1e-6)
    assert plain[0]["psnr"] == gauss[0]["psnr"] and plain[0]["ssim"] != gauss[0]["ssim"]


def test_parallel_folders_and_missing_pairs(tmp_path, capsys):
    sharp_dir, res_dir = tmp_path / "sharp", tmp_path / "restored"
    for name in ("a", "b"):
        img = RNG.integers(0, 256, (16, 16, 3), dtype=np.uint8)
        write_image(sharp_dir / f"{name}.png", img)
        write_image(res_dir / f"{name}.png", np.clip(img.astype(int) + 5, 0, 255).astype(np.uint8))
    write_image(res_dir / "orphan.png", RNG.integers(0, 256, (16, 16, 3), dtype=np.uint8))
    code = main(["--restored", str(res_dir), "--sharp", str(sharp_dir), "--csv", str(tmp_path / "s.csv")])
    assert code == 1
    assert "skipped orphan: no matching sharp image" in capsys.readouterr().err
    rows = read_csv(tmp_path / "s.csv")
    assert [r["image"] for r in rows] == ["a", "b", "mean"]
    assert rows[0]["blur_psnr"] == ""  # no --blur: no baseline column values


def test_size_mismatch_is_skipped(tmp_path, capsys):
    write_image(tmp_path / "s" / "x.png", RNG.integers(0, 256, (16, 16, 3), dtype=np.uint8))
    write_image(tmp_path / "r" / "x.png", RNG.integers(0, 256, (16, 20, 3), dtype=np.uint8))
    assert main(["--restored", str(tmp_path / "r"), "--sharp", str(tmp_path / "s")]) == 2  # nothing scored
    err = capsys.readouterr().err
    assert "skipped x: image sizes differ" in err and err.strip().splitlines()[-1].startswith("error: ")


def test_usage_errors(tmp_path, capsys):
    for argv in (
        [],
        ["--data", str(tmp_path), "--restored", str(tmp_path)],
        ["--restored", str(tmp_path)],
        ["--restored", str(tmp_path), "--sharp", str(tmp_path), "--save", str(tmp_path / "s")],
    ):
        assert main(argv) == 2
    assert main(["--data", str(tmp_path), "--checkpoint", "x.pt"]) == 2
    assert "SEQ/blur" in capsys.readouterr().err


def test_to_rgb8():
    g16 = RNG.integers(0, 65536, (8, 8), dtype=np.uint16)
    out = to_rgb8(g16)
    assert out.shape == (8, 8, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[..., 0], np.rint(g16 / 257).astype(np.uint8))
    rgba = RNG.integers(0, 256, (8, 8, 4), dtype=np.uint8)
    np.testing.assert_array_equal(to_rgb8(rgba), rgba[..., :3])


def test_blur_and_sharp_folders_directly_and_the_shipped_model(ckpt, gopro, tmp_path, capsys, monkeypatch):
    """--data ROOT with ROOT/blur + ROOT/sharp; without --checkpoint the shipped model runs (one line while none)."""
    import deblurgan.pretrained as pretrained

    seq = gopro / "GOPR0384_11_00"
    monkeypatch.setattr(pretrained, "SHIPPED_WEIGHTS", tmp_path / "none.pt")
    assert main(["--data", str(seq), "--precision", "fp32"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no trained model ships" in err[0]
    monkeypatch.setattr(pretrained, "SHIPPED_WEIGHTS", ckpt)
    out_csv = tmp_path / "s.csv"
    assert main(["--data", str(seq), "--precision", "fp32", "--csv", str(out_csv), "--no-progress"]) == 0
    rows = read_csv(out_csv)
    assert [r["image"] for r in rows] == ["000000", "000001", "mean"]
    d = Deblurrer(ckpt, precision="fp32")
    blur, sharp = read_image(seq / "blur" / "000000.png"), read_image(seq / "sharp" / "000000.png")
    assert float(rows[0]["psnr"]) == pytest.approx(sk(d.deblur(blur), sharp)[0], abs=1e-6)
