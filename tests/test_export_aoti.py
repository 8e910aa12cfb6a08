"""AOTInductor export (CPU) and the C++ runner built with CMake, both checked against PyTorch.

One small-config package is compiled per module (about 30 s on 2 cores) and the C++ example is built once
(about 15 s); the GPU/fp16 variant is gpu-marked.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from deblurgan import Generator, GeneratorConfig
from deblurgan.checkpoint import load_generator, save_generator
from deblurgan.errors import DeblurGANError
from deblurgan.precision import exact_fp32
from export import aoti as aoti_export
from export import onnx as onnx_export
from export.aoti import AotiExporter, main
from export.runtime import AOTIRunner, load_runner

ROOT = Path(__file__).resolve().parents[1]
FP32_ATOL = 1e-4


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    d = tmp_path_factory.mktemp("aoti")
    torch.manual_seed(0)
    g = Generator(GeneratorConfig(ngf=8, n_blocks=2))
    with torch.no_grad():
        for p in g.parameters():
            p.add_(torch.randn_like(p) * 0.05)  # random biases too
    ckpt = save_generator(g, d / "g.pth")
    assert main(["--checkpoint", str(ckpt), "--out", str(d / "g.pt2"), "--device", "cpu", "--max-batch", "4"]) == 0
    return d / "g.pt2", load_generator(ckpt)


@pytest.mark.parametrize("shape", [(1, 3, 64, 64), (3, 3, 44, 100)])
def test_aoti_matches_eager(package, shape):
    path, g = package
    runner = load_runner(path, "aoti")
    assert isinstance(runner, AOTIRunner) and runner.device.type == "cpu" and runner.max_batch == 4
    x = torch.rand(shape, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        ref = g(x)
    got = runner(x)
    assert got.shape == ref.shape and ref.std() > 0.05
    assert (got - ref).abs().max().item() <= FP32_ATOL


def test_package_metadata_and_errors(package, tmp_path, capsys):
    path, _ = package
    meta = torch._inductor.aoti_load_package(str(path)).get_metadata()
    assert meta["deblurgan.device"] == "cpu" and meta["deblurgan.precision"] == "fp32"
    assert meta["deblurgan.input_range"] == "[-1, 1]"
    with pytest.raises(DeblurGANError, match="compiled for cpu"):
        AOTIRunner(path, device="cuda")
    with pytest.raises(DeblurGANError, match="max_batch"):
        load_runner(path, "aoti")(torch.zeros(5, 3, 8, 8))
    with pytest.raises(DeblurGANError, match="fp16 needs --device cuda|--fp16 needs"):
        AotiExporter(Generator(GeneratorConfig(ngf=8, n_blocks=1)), device="cpu", fp16=True)
    bad = tmp_path / "bad.pt2"
    bad.write_bytes(b"not a zip")
    with pytest.raises(DeblurGANError, match="not a loadable AOTInductor package"):
        load_runner(bad, "aoti")
    assert main(["--checkpoint", str(tmp_path / "none.pth"), "--out", str(tmp_path / "x.pt2"), "--device", "cpu"]) == 2
    assert capsys.readouterr().err.startswith("error: checkpoint not found")
    assert main(["--checkpoint", str(tmp_path / "none.pth"), "--out", str(tmp_path / "x.zip")]) == 2
    assert ".pt2" in capsys.readouterr().err


def test_every_option_has_help():
    for action in aoti_export.build_parser()._actions:
        assert action.help, action.option_strings
    device = next(a for a in aoti_export.build_parser()._actions if a.dest == "device")
    assert "compiled for" in device.help


def test_checkpoint_defaults_to_the_shipped_model(tmp_path, capsys):
    assert main(["--out", str(tmp_path / "x.pt2"), "--device", "cpu"]) == 2  # no weights ship yet
    err = capsys.readouterr().err
    assert err.startswith("error: no trained model ships") and err.count("\n") == 1
    assert not list(tmp_path.iterdir())


def test_metadata_has_one_definition():
    """ONNX graphs and AOTI packages describe themselves with the same keys (export/metadata.py)."""
    g = Generator(GeneratorConfig(ngf=8, n_blocks=1))
    aoti = AotiExporter(g, device="cpu").metadata()
    onnx_meta = onnx_export.metadata(g, "float")
    assert set(aoti) - set(onnx_meta) == {"deblurgan.device", "deblurgan.max_batch"}
    assert set(onnx_meta) - set(aoti) == {"deblurgan.norm_precision"}
    assert all(aoti[k] == onnx_meta[k] for k in set(aoti) & set(onnx_meta))


# --- C++ ----------------------------------------------------------------------------------------------


def _write_ppm(path: Path, rgb: np.ndarray) -> None:
    h, w, _ = rgb.shape
    path.write_bytes(b"P6\n# test image\n%d %d\n255\n" % (w, h) + rgb.tobytes())


def _read_ppm(path: Path) -> np.ndarray:
    data = path.read_bytes()
    magic, w, h, maxval, raster = data.split(maxsplit=4)
    assert magic == b"P6" and maxval == b"255"
    return np.frombuffer(raster, np.uint8).reshape(int(h), int(w), 3)


def python_reference(path: Path, rgb: np.ndarray) -> np.ndarray:
    """The C++ example's pipeline in Python: [-1, 1], reflect-pad bottom/right to x4, run, crop, round."""
    h, w, _ = rgb.shape
    x = torch.from_numpy(rgb.copy()).permute(2, 0, 1)[None].float() / 127.5 - 1
    x = F.pad(x, (0, -w % 4, 0, -h % 4), mode="reflect")
    with torch.no_grad():
        y = torch._inductor.aoti_load_package(str(path))(x)[0, :, :h, :w]
    return torch.clamp(torch.round((y + 1) * 127.5), 0, 255).to(torch.uint8).permute(1, 2, 0).numpy()


@pytest.fixture(scope="module")
def deblur_aoti(tmp_path_factory):
    if shutil.which("cmake") is None or shutil.which("c++") is None:
        pytest.skip("cmake and a C++ compiler are needed to build export/cpp")
    build = tmp_path_factory.mktemp("cpp_build")
    prefix = torch.utils.cmake_prefix_path
    subprocess.run(
        ["cmake", "-S", str(ROOT / "export" / "cpp"), "-B", str(build), f"-DCMAKE_PREFIX_PATH={prefix}"],
        check=True,
        capture_output=True,
    )
    subprocess.run(["cmake", "--build", str(build), "-j", "2"], check=True, capture_output=True)
    return build / "deblur_aoti"


def test_cpp_runner_matches_python(package, deblur_aoti, tmp_path):
    path, _ = package
    rgb = np.random.default_rng(0).integers(0, 256, (30, 42, 3), dtype=np.uint8)  # not multiples of 4: pads
    _write_ppm(tmp_path / "in.ppm", rgb)
    proc = subprocess.run(
        [str(deblur_aoti), str(path), str(tmp_path / "in.ppm"), str(tmp_path / "out.ppm")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    got = _read_ppm(tmp_path / "out.ppm").astype(np.int32)
    ref = python_reference(path, rgb).astype(np.int32)
    assert got.shape == ref.shape == rgb.shape
    diff = np.abs(got - ref)
    assert diff.max() <= 1 and (diff == 0).mean() > 0.99  # only float rounding ties may differ
    assert np.abs(got - rgb.astype(np.int32)).mean() > 1  # the model did change the image


def test_cpp_runner_errors_are_one_line(package, deblur_aoti, tmp_path):
    path, _ = package
    (tmp_path / "bad.ppm").write_bytes(b"P6\n4 4\n255\n\x00\x01")  # truncated raster
    for args, msg in (
        ([str(path), str(tmp_path / "bad.ppm"), str(tmp_path / "o.ppm")], "truncated"),
        ([str(path), str(tmp_path / "missing.ppm"), str(tmp_path / "o.ppm")], "cannot open"),
        ([str(path)], "usage"),
    ):
        proc = subprocess.run([str(deblur_aoti), *args], capture_output=True, text=True, timeout=120)
        assert proc.returncode != 0 and msg in proc.stderr and proc.stderr.count("\n") == 1
    assert not (tmp_path / "o.ppm").exists()


# --- GPU ----------------------------------------------------------------------------------------------


def natural_batch(device: str) -> torch.Tensor:
    """Two natural photographs from scikit-image (bundled, no download), cropped to 256x256, in [-1, 1]."""
    import skimage.data

    ims = [skimage.data.astronaut()[:256, 128:384], skimage.data.coffee()[:256, :256]]
    x = torch.stack([torch.from_numpy(np.ascontiguousarray(im)).permute(2, 0, 1) for im in ims])
    return (x.float() / 127.5 - 1).to(device)


@pytest.mark.gpu
@pytest.mark.slow  # an AOTInductor CUDA compile: bench/gpu_check.sh runs it after the benchmarks
def test_cuda_fp16_package_psnr(tmp_path):
    """fp16 package vs fp32 eager on natural images: >= 45 dB. A 2-block ngf=32 generator keeps the CUDA
    compile short enough for bench/gpu_check.sh's GPU-test budget; the full model is timed in bench/."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    torch.manual_seed(0)
    g = Generator(GeneratorConfig(ngf=32, n_blocks=2)).eval()
    ckpt = save_generator(g, tmp_path / "g.pth")
    out = tmp_path / "g.pt2"
    assert main(["--checkpoint", str(ckpt), "--out", str(out), "--device", "cuda", "--fp16", "--no-verify"]) == 0
    runner = load_runner(out, "aoti", device="cuda")
    assert runner.name == "aoti-fp16"
    x = natural_batch("cuda")
    with torch.no_grad(), exact_fp32():  # the reference in full fp32, not TF32
        ref = g.cuda()(x)
    mse = (runner(x) - ref).pow(2).mean().item()
    assert 10 * np.log10(4.0 / max(mse, 1e-20)) >= 45.0


def test_compile_failure_is_one_line_and_keeps_old_file(tmp_path, monkeypatch):
    out = tmp_path / "g.pt2"
    out.write_bytes(b"previous package")

    def boom(*args, **kwargs):
        raise RuntimeError("C++ compile error: g++ not found\nlong log ...")

    monkeypatch.setattr(torch._inductor, "aoti_compile_and_package", boom)
    with pytest.raises(DeblurGANError, match="compilation failed .C\\+\\+ compile error: g\\+\\+ not found.; it needs"):
        AotiExporter(Generator(GeneratorConfig(ngf=8, n_blocks=1))).export(out)
    assert out.read_bytes() == b"previous package" and [p.name for p in tmp_path.iterdir()] == ["g.pt2"]
