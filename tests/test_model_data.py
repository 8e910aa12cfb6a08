"""The training photos, the data pack and the evaluation set of the shipped model (engine.photos, engine.evalset)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deblurgan.blur import FRACTIONS, random_trajectory, trajectory_to_psfs
from deblurgan.errors import DeblurGANError
from engine import evalset, photos
from engine.photos import EVAL_PHOTOS, PHOTOS, Photo

ROOT = Path(__file__).resolve().parent.parent


def textured(h: int, w: int, seed: int) -> np.ndarray:
    """A random photo-like uint8 image: smooth colour fields plus fine detail."""
    rng = np.random.default_rng(seed)
    coarse = rng.random((h // 8 + 1, w // 8 + 1, 3))
    img = np.kron(coarse, np.ones((8, 8, 1)))[:h, :w] * 0.7 + rng.random((h, w, 3)) * 0.3
    return (img * 255).astype(np.uint8)


def write_photos(folder: Path, n: int, size=(200, 300)) -> list[Photo]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        path = folder / f"p{i}.png"
        Image.fromarray(textured(*size, seed=i)).save(path)
        out.append(Photo(f"p{i}", str(path), "test", "CC0-1.0", "texture"))
    return out


def write_eval_sources(folder: Path, size=(68, 92)) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, p in enumerate(EVAL_PHOTOS):
        Image.fromarray(textured(*size, seed=100 + i)).save(folder / f"{p.name}.png")
    return folder


def test_photo_table_is_varied_and_never_uses_the_evaluation_sources():
    assert len(PHOTOS) >= 50
    assert len({p.name for p in PHOTOS}) == len(PHOTOS)
    assert len({p.source for p in PHOTOS}) == len(PHOTOS)
    assert {"people", "nature", "city", "text", "texture"} <= {p.content for p in PHOTOS}
    for p in PHOTOS:
        assert not p.source.startswith(("sklearn:", "matplotlib:")), p
        assert p.licence and p.package
    assert {p.source.split(":")[0] for p in EVAL_PHOTOS} == {"sklearn", "matplotlib"}
    assert not {p.name for p in EVAL_PHOTOS} & {p.name for p in PHOTOS}


def test_missing_package_file_names_the_package():
    p = Photo("x", "/usr/share/backgrounds/mate/nature/NoSuchFile.jpg", "mate-backgrounds", "GPL-2+", "nature")
    with pytest.raises(DeblurGANError, match="apt-get install -y --no-install-recommends mate-backgrounds"):
        photos.load_photo(p)


def test_crops_skip_flat_regions_and_keep_small_sides_whole():
    img = np.full((400, 800, 3), 128, np.uint8)
    img[:, 400:] = textured(400, 400, 0)  # the right half is textured, the left flat
    crops = photos.candidate_crops(img, 200)
    assert len(crops) == 4 and all(c.shape == (200, 200, 3) for _, c in crops)
    assert [s for s, _ in crops] == sorted((s for s, _ in crops), reverse=True)
    assert all(s >= photos.FLAT for s, _ in crops)
    flat = photos.candidate_crops(np.full((300, 300, 3), 7, np.uint8), 200)
    assert len(flat) == 1  # nothing textured: the best crop is still kept
    small = photos.candidate_crops(textured(120, 500, 1), 200)
    assert all(c.shape == (120, 200, 3) for _, c in small)  # not padded


def test_pack_manifest_budget_and_checksums(tmp_path):
    srcs = write_photos(tmp_path / "src", 3, size=(400, 600))
    ev = [Photo("e", str(tmp_path / "src" / "p0.png"), "test", "CC0-1.0", "people")]
    m = photos.build_pack(srcs, tmp_path / "pack", crop=128, per_photo=6, pack_mib=10, eval_photos=ev)
    assert m["per_photo"] == 6 and m["train_crops"] == 18
    for rel, digest in m["files"].items():
        assert hashlib.sha256((tmp_path / "pack" / rel).read_bytes()).hexdigest() == digest
    assert json.loads((tmp_path / "pack" / "MANIFEST.json").read_text())["files"] == m["files"]
    with Image.open(tmp_path / "pack" / "train" / "p1_00.jpg") as im:
        assert im.size == (128, 128) and im.format == "JPEG"
    one = max(len((tmp_path / "pack" / r).read_bytes()) for r in m["files"] if r.startswith("train/"))
    budget = 3.5 * one * 3 / 2**20  # room for about 3 crops per photo: fewer per photo, for every photo
    m2 = photos.build_pack(srcs, tmp_path / "pack2", crop=128, per_photo=6, pack_mib=budget, eval_photos=ev)
    train_bytes = sum((tmp_path / "pack2" / r).stat().st_size for r in m2["files"] if r.startswith("train/"))
    assert 1 <= m2["per_photo"] < 6 and train_bytes <= budget * 2**20
    with pytest.raises(DeblurGANError, match="over --pack-mib"):
        photos.build_pack(srcs, tmp_path / "pack3", crop=128, pack_mib=0.001, eval_photos=ev)


def test_photos_cli_error_is_one_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "engine.photos", "build", "--out", str(tmp_path / "o"), "--pack",
                        str(tmp_path / "p"), "--crop", "30", "--limit", "1"], capture_output=True, text=True,
                       cwd=ROOT)  # fmt: skip
    assert r.returncode == 2 and r.stderr.startswith("error: ") and r.stderr.count("\n") == 1, r.stderr
    assert not (tmp_path / "o").exists()  # checked before anything is written


def test_centre_psf_puts_the_centroid_on_the_origin():
    k = 64
    yy, xx = np.mgrid[:k, :k]
    for seed in range(20):
        for psf in trajectory_to_psfs(random_trajectory(np.random.default_rng(seed))):
            c = evalset.centre_psf(psf)
            assert c.min() >= 0 and abs(c.sum() - 1) < 1e-9
            assert abs((c * yy).sum() - k // 2) < 1e-6 and abs((c * xx).sum() - k // 2) < 1e-6
    delta = np.zeros((k, k))
    delta[k // 2 + 3, k // 2 - 5] = 1
    want = np.zeros((k, k))
    want[k // 2, k // 2] = 1
    np.testing.assert_allclose(evalset.centre_psf(delta), want, atol=1e-12)


def test_evaluation_set_is_deterministic_and_covers_every_fraction(tmp_path):
    src = write_eval_sources(tmp_path / "src")
    a = evalset.build(tmp_path / "a", src)
    b = evalset.build(tmp_path / "b", src)
    assert a == b and len(a) == len(EVAL_PHOTOS) * len(FRACTIONS)
    assert {n.rsplit("_", 1)[1] for n in a} == {"t100.png", "t10.png", "t2.png", "t1.png"}
    raw = evalset.build(tmp_path / "raw", src, centre=False)
    assert raw != a  # the engine's uncentred PSFs shift the frame as well
    sharp = np.asarray(Image.open(tmp_path / "a" / "sharp" / "china_t1.png"))
    assert sharp.shape == (68, 92, 3)  # full frames, not crops


def test_score_writes_per_image_rows_means_and_the_verdict(tmp_path, tiny_ckpt):
    src = write_eval_sources(tmp_path / "src")
    out = tmp_path / "r"
    r = subprocess.run([sys.executable, "-m", "engine.evalset", "score", "--checkpoint", str(tiny_ckpt), "--sources",
                        str(src), "--json", str(out / "e.json"), "--md", str(out / "e.md"), "--device", "cpu"],
                       capture_output=True, text=True, cwd=ROOT)  # fmt: skip
    assert r.returncode == 0, r.stderr
    res = json.loads((out / "e.json").read_text())
    assert len(res["rows"]) == 12 and res["centred_psfs"] is True
    means = {k: float(np.mean([row[k] for row in res["rows"]])) for k in ("psnr", "ssim", "blur_psnr", "blur_ssim")}
    for k, v in means.items():
        assert res["mean"][k] == pytest.approx(v)
    assert res["verdict"]["psnr_gain_db"] == pytest.approx(means["psnr"] - means["blur_psnr"])
    assert res["verdict"]["target_met"] is False  # a random tiny generator
    md = (out / "e.md").read_text()
    assert md.count("\n| ") == 12 + 2 and "**mean**" in md and "not met" in md
