"""engine.ship: the one GPU command on tiny CPU settings, and the split / join / verify round trip."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_model_data import write_eval_sources, write_photos

from deblurgan.checkpoint import load_checkpoint, load_generator
from deblurgan.errors import DeblurGANError
from engine import photos, ship
from engine.config import make_config

ROOT = Path(__file__).resolve().parent.parent
# The device command of docs/model.md, with tiny model, crops and time instead of the paper's on an H200.
TINY = ["--ngf", "8", "--n-blocks", "1", "--ndf", "8", "--crop", "32", "--batch-size", "2", "--num-workers", "0",
        "--no-cuda-graph", "--amp", "off", "--device", "cpu", "--vgg-weights", "random", "--epoch-steps", "3",
        "--log-every", "2", "--eval-device", "cpu", "--piece-mib", "0.05"]  # fmt: skip


def test_h200_preset_is_the_paper_architecture_on_the_fast_paths():
    cfg = make_config("h200")
    g, d = cfg.model.generator, cfg.model.critic
    assert (g.ngf, g.n_blocks, d.ndf, d.n_layers) == (64, 9, 64, 3)
    assert cfg.amp == "bf16" and cfg.cuda_graph and cfg.model.kernels == "auto" and not cfg.compile
    assert cfg.data.crop == 256 and cfg.data.batch_size == 16


def test_lr_follows_wall_time():
    f = ship.lr_time_factor
    assert f(0, 100) == f(49.9, 100) == 1.0
    assert f(75, 100) == pytest.approx(0.5)
    assert f(100, 100) == f(150, 100) == 0.0


def test_split_join_verify_round_trip_and_a_corrupted_piece(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    big = torch.randint(0, 256, (300_000,), dtype=torch.uint8).numpy().tobytes()
    (out / "deblurgan.pt").write_bytes(big)
    (out / "continuation.pt").write_bytes(big[:1000])
    (out / "eval.json").write_text("{}")
    m = ship.split_and_manifest(out, piece_mib=0.1)
    pieces = m["files"]["deblurgan.pt"]["pieces"]
    assert len(pieces) == 3 and not (out / "deblurgan.pt").exists()
    assert "pieces" not in m["files"]["continuation.pt"]
    w, c = tmp_path / "pkg" / "deblurgan.pt", tmp_path / "model" / "continuation.pt"
    assert ship.join(out, w, c) == [w, c]
    assert w.read_bytes() == big and c.read_bytes() == big[:1000]
    # a corrupted piece: detected, and nothing already installed is touched
    w.write_bytes(b"old weights")
    p = out / pieces[1]["name"]
    data = bytearray(p.read_bytes())
    data[123] ^= 1
    p.write_bytes(bytes(data))
    with pytest.raises(DeblurGANError, match=r"deblurgan.pt.part01: sha256 differs"):
        ship.join(out, w, c)
    assert w.read_bytes() == b"old weights"
    p.unlink()
    with pytest.raises(DeblurGANError, match="missing"):
        ship.join(out, w, c)
    assert not list(w.parent.glob(".*")) and not list(out.glob(".*joined"))  # no temp files left behind


def test_too_many_files_to_bring_back_is_an_error(tmp_path):
    for i in range(9):
        (tmp_path / f"f{i}").write_text("x")
    with pytest.raises(DeblurGANError, match="at most 8"):
        ship.split_and_manifest(tmp_path)


def _run(args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # tiny convs on a shared CPU: one thread is much faster
    return subprocess.run([sys.executable, "-m", "engine.ship", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=600, env=env)  # fmt: skip


@pytest.mark.slow
def test_the_gpu_command_on_tiny_settings_then_join_and_continue(tmp_path):
    srcs = write_photos(tmp_path / "src", 3, size=(96, 128))
    pack = tmp_path / "pack"
    photos.build_pack(srcs, pack, crop=64, per_photo=2, eval_photos=[])
    write_eval_sources(pack / "eval")
    w, c = tmp_path / "pkg" / "deblurgan.pt", tmp_path / "model" / "continuation.pt"
    common = ["--pack", str(pack), "--work", str(tmp_path / "runs"), "--weights", str(w), "--continuation", str(c)]

    out = tmp_path / "out1"
    r = _run(["train", *common, "--seconds", "4", "--out", str(out), *TINY])
    assert r.returncode == 0, r.stderr
    assert "from scratch" in r.stderr
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= ship.MAX_FILES and all((out / f).stat().st_size <= 16 * 2**20 for f in files)
    manifest = json.loads((out / "SHIPPED.json").read_text())["files"]
    assert set(manifest) == {"deblurgan.pt", "continuation.pt", "eval.json", "eval.md", "train_log.csv"}
    assert manifest["deblurgan.pt"]["pieces"]  # split at --piece-mib
    ev = json.loads((out / "eval.json").read_text())
    assert len(ev["rows"]) == 12 and ev["training"]["steps"] >= 1 and ev["training"]["from_scratch"] is True
    assert "| **mean** |" in (out / "eval.md").read_text()

    r = _run(["join", "--from", str(out), "--weights", str(w), "--continuation", str(c)])
    assert r.returncode == 0, r.stderr
    ckpt = load_checkpoint(w)
    assert set(ckpt) >= {"format", "generator", "generator_config", "training"} and "critic" not in ckpt
    assert all(v.dtype == torch.float16 for v in ckpt["generator"].values())
    assert ckpt["generator_config"]["ngf"] == 8 and ckpt["training"]["weights"] == "ema"
    gen = load_generator(w)
    assert gen(torch.rand(1, 3, 32, 32) * 2 - 1).shape == (1, 3, 32, 32)
    state = load_checkpoint(c)
    assert state["format"] == ship.CONTINUATION_FORMAT and len(state["history"]) == 1
    assert all(v.dtype == torch.float16 for v in state["critic"].values())

    # the same command again continues from what was installed
    out2 = tmp_path / "out2"
    r = _run(["train", *common, "--seconds", "4", "--out", str(out2), *TINY])
    assert r.returncode == 0, r.stderr
    assert "continuing from the shipped weights" in r.stderr
    assert _run(["join", "--from", str(out2), "--weights", str(w), "--continuation", str(c)]).returncode == 0
    assert len(load_checkpoint(c)["history"]) == 2
    assert load_checkpoint(w)["training"]["runs"] == 2


def test_bad_input_is_one_line(tmp_path):
    r = _run(["train", "--pack", str(tmp_path / "nope"), "--seconds", "1", "--out", str(tmp_path / "o")])
    assert r.returncode == 2 and r.stderr.startswith("error: ") and r.stderr.count("\n") == 1, r.stderr
    r = _run(["join", "--from", str(tmp_path)])
    assert r.returncode == 2 and "SHIPPED.json" in r.stderr and r.stderr.count("\n") == 1, r.stderr


def test_training_blur_uses_centred_psfs(tmp_path, seen_psfs):
    import numpy as np

    seen = seen_psfs
    srcs = write_photos(tmp_path / "src", 2, size=(96, 128))
    photos.build_pack(srcs, tmp_path / "pack", crop=64, per_photo=2, eval_photos=[])
    cfg = ship.ship_config(tmp_path / "pack", 1, tmp_path / "runs", ["--crop", "32", "--batch-size", "2"])
    train, val = ship.datasets(cfg, tmp_path / "pack", epoch_steps=4)
    assert len(train) == 8 and len(val) >= 1
    item = train[(3, 123)]
    assert item["blur"].shape == item["sharp"].shape == (3, 32, 32)
    val[0]
    assert len(seen) == 2
    for psf in seen:
        k = psf.shape[-1]
        yy, xx = np.mgrid[:k, :k]
        assert k % 2 == 1 and abs(psf.sum() - 1) < 1e-5
        assert abs((psf * yy).sum() - k // 2) < 1e-3 and abs((psf * xx).sum() - k // 2) < 1e-3
