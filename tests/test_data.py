"""deblurgan.data: every layout from tiny fixtures built here; pairs stay aligned through crop, pad and flip."""

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from deblurgan.blur import blur_image
from deblurgan.data import (
    CombinedDataset,
    SyntheticDataset,
    build_dataset,
    check_pairs,
    describe_dataset,
    item_seeds,
    split_key,
    takes_item_seed,
)
from deblurgan.errors import DeblurGANError

# Fixtures store blur = 255 - sharp pixel by pixel, so in [-1, 1] an aligned pair satisfies blur == -sharp exactly.


def _rand(rng, h, w):
    return (rng.random((h, w, 3)) * 255).astype(np.uint8)


def _save(path: Path, a: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a).save(path)


@pytest.fixture
def gopro(tmp_path):
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for seq in ("GOPR0001_11_00", "GOPR0002_11_01"):
            for i in range(2):
                s = _rand(rng, 42, 53)
                _save(tmp_path / split / seq / "sharp" / f"{i:06d}.png", s)
                _save(tmp_path / split / seq / "blur" / f"{i:06d}.png", 255 - s)
                _save(tmp_path / split / seq / "blur_gamma" / f"{i:06d}.png", 255 - s)
    return tmp_path


def _assert_aligned(item):
    assert item["blur"].shape == item["sharp"].shape and item["blur"].shape[0] == 3
    torch.testing.assert_close(item["blur"], -item["sharp"], atol=1e-6, rtol=0)
    assert item["blur"].dtype == torch.float32 and item["blur"].abs().max() <= 1


@pytest.mark.parametrize("kind", ["gopro", "gopro_gamma"])
def test_gopro_train_crops_stay_aligned(gopro, kind):
    ds = build_dataset(f"{kind}:{gopro}", "train", crop=16, seed=1)
    assert len(ds) == 4
    for i in range(len(ds)):
        item = ds[i]
        _assert_aligned(item)
        assert item["blur"].shape == (3, 16, 16)
        assert kind.replace("gopro_gamma", "blur_gamma").replace("gopro", "blur") in item["path"]


def test_gopro_val_is_full_frame_multiple_of_4_and_uses_test_folder(gopro):
    ds = build_dataset(f"gopro:{gopro}", "val")
    assert len(ds) == 4 and all("/test/" in str(b) for b, _ in ds.pairs)
    item = ds[0]
    _assert_aligned(item)
    assert item["blur"].shape == (3, 40, 52)
    assert torch.equal(ds[1]["blur"], ds[1]["blur"])


def test_train_crop_is_a_window_of_the_frame_maybe_flipped(gopro):
    ds = build_dataset(f"gopro:{gopro}", "train", crop=16)
    sharp = np.asarray(Image.open(ds.pairs[0][1]), dtype=np.float32) / 255 * 2 - 1
    seen_flip = seen_plain = False
    for _ in range(12):
        crop = ds[0]["sharp"].permute(1, 2, 0).numpy()
        for flipped, c in ((False, crop), (True, crop[:, ::-1])):
            hits = [
                (y, x)
                for y in range(sharp.shape[0] - 15)
                for x in range(sharp.shape[1] - 15)
                if np.allclose(sharp[y : y + 16, x : x + 16], c, atol=1e-6)
            ]
            if hits:
                seen_flip |= flipped
                seen_plain |= not flipped
                break
        else:
            pytest.fail("crop is not a window of the frame")
    assert seen_flip and seen_plain


def test_small_frames_are_reflect_padded(tmp_path):
    rng = np.random.default_rng(1)
    s = _rand(rng, 10, 12)
    _save(tmp_path / "b" / "x.png", 255 - s)
    _save(tmp_path / "s" / "x.png", s)
    item = build_dataset(f"paired:{tmp_path / 'b'},{tmp_path / 's'}", "train", crop=16)[0]
    assert item["blur"].shape == (3, 16, 16)
    _assert_aligned(item)


def test_aligned_ab_halves(tmp_path):
    rng = np.random.default_rng(2)
    for split in ("train", "test"):
        for i in range(3):
            s = _rand(rng, 24, 20)
            _save(tmp_path / split / f"{i}.png", np.concatenate([255 - s, s], axis=1))
    ds = build_dataset(f"aligned:{tmp_path}", "train", crop=8)
    assert len(ds) == 3
    for i in range(3):
        _assert_aligned(ds[i])
    val = build_dataset(f"aligned:{tmp_path}", "val")
    assert val[0]["blur"].shape == (3, 24, 20)
    _assert_aligned(val[0])


def test_aligned_odd_width_reported(tmp_path):
    _save(tmp_path / "x.png", _rand(np.random.default_rng(3), 8, 9))
    with pytest.raises(DeblurGANError, match="x.png"):
        build_dataset(f"aligned:{tmp_path}", "train", crop=4)[0]


def test_paired_matches_by_relative_path_ignoring_extension(tmp_path):
    rng = np.random.default_rng(4)
    for name in ("a", "sub/b"):
        s = _rand(rng, 20, 20)
        _save(tmp_path / "blur" / f"{name}.png", 255 - s)
        _save(tmp_path / "sharp" / f"{name}.bmp", s)
    ds = build_dataset(f"paired:{tmp_path / 'blur'},{tmp_path / 'sharp'}", "val")
    assert len(ds) == 2
    for i in range(2):
        _assert_aligned(ds[i])
    assert check_pairs(ds) == []


def test_missing_partner_reported_with_path(gopro):
    (gopro / "train" / "GOPR0002_11_01" / "sharp" / "000001.png").unlink()
    with pytest.raises(DeblurGANError, match=r"GOPR0002_11_01/blur/000001.png: no sharp partner"):
        build_dataset(f"gopro:{gopro}", "train")


def test_size_mismatch_and_corrupt_file_reported_with_path(tmp_path):
    rng = np.random.default_rng(5)
    _save(tmp_path / "b" / "m.png", _rand(rng, 20, 20))
    _save(tmp_path / "s" / "m.png", _rand(rng, 20, 24))
    (tmp_path / "b" / "c.png").write_bytes(b"\x89PNG truncated")
    _save(tmp_path / "s" / "c.png", _rand(rng, 20, 20))
    ds = build_dataset(f"paired:{tmp_path / 'b'},{tmp_path / 's'}", "train", crop=8)
    problems = check_pairs(ds)
    assert len(problems) == 2 and any("c.png: unreadable" in p for p in problems)
    assert any(p.endswith("m.png (24x20)") for p in problems)
    names = [b.name for b, _ in ds.pairs]
    with pytest.raises(DeblurGANError, match=r"m.png: size 20x20 differs .*m.png \(24x20\)"):
        ds[names.index("m.png")]
    with pytest.raises(DeblurGANError, match=r"c.png"):
        ds[names.index("c.png")]


@pytest.fixture
def sharp_dir(tmp_path):
    rng = np.random.default_rng(6)
    for i in range(3):
        _save(tmp_path / "sharp" / f"{i}.png", _rand(rng, 90, 100))
    return tmp_path / "sharp"


def test_synthetic_crop_equals_crop_of_full_frame_blur(sharp_dir):
    ds = SyntheticDataset(sorted(sharp_dir.iterdir()), "train", crop=24)
    img = np.asarray(Image.open(ds.sources[0]), dtype=np.float32) / 255
    rng = np.random.default_rng(7)
    psf = np.random.default_rng(8).random((64, 64)) ** 8
    psf /= psf.sum()
    blur, sharp = ds._blur_crop(img, psf, rng)
    r = np.random.default_rng(7)  # _blur_crop draws the window first
    y, x = int(r.integers(0, 90 - 24 + 1)), int(r.integers(0, 100 - 24 + 1))
    np.testing.assert_array_equal(sharp, img[y : y + 24, x : x + 24])
    np.testing.assert_allclose(blur, blur_image(img, psf)[y : y + 24, x : x + 24], atol=2e-6)


def test_synthetic_val_same_blur_every_epoch_train_repeatable_with_torch_seed(sharp_dir):
    val = build_dataset(f"synthetic:{sharp_dir}", "val")
    a, b = val[1], val[1]
    assert torch.equal(a["blur"], b["blur"]) and a["blur"].shape == (3, 88, 100)
    assert not torch.equal(a["blur"], a["sharp"])
    train = build_dataset(f"synthetic:{sharp_dir}", "train", crop=32)
    torch.manual_seed(0)
    first = train[0]["blur"]
    torch.manual_seed(0)
    assert torch.equal(first, train[0]["blur"])
    assert not torch.equal(first, train[0]["blur"])  # a new draw: another crop/kernel


def test_skimage_default_holds_out_val():
    train = build_dataset(None, "train", crop=32)
    val = build_dataset(None, "val")
    assert len(train) == 6 * 32 and len(val) == 4
    assert not set(train.sources) & set(val.sources)
    item = train[5]
    assert item["blur"].shape == (3, 32, 32) and item["path"].startswith("skimage:")
    assert torch.equal(val[0]["blur"], val[0]["blur"])
    assert "synthetic blur" in describe_dataset(train)
    assert describe_dataset(None, "val").startswith("synthetic blur: 4 items")


def test_combined_ratio_and_coverage(gopro, sharp_dir):
    ds = build_dataset(f"combined:synthetic:{sharp_dir}+gopro:{gopro}@2:1", "train", crop=16)
    assert isinstance(ds, CombinedDataset) and ds.weights == [2, 1]
    located = [ds.locate(i) for i in range(len(ds))]
    parts = [p for p, _ in located]
    assert parts.count(0) == 2 * parts.count(1)
    for k, part in enumerate(ds.parts):
        assert {i for p, i in located if p == k} == set(range(len(part)))
    for i in (0, 2):
        assert ds[i]["blur"].shape == (3, 16, 16)
    _assert_aligned(ds[2])  # index 2 is the gopro slot of the 2:1 pattern
    assert "combined" in describe_dataset(ds)
    equal = build_dataset(f"combined:synthetic:{sharp_dir}+gopro:{gopro}", "train")
    assert equal.weights == [1, 1]
    val = build_dataset(f"combined:synthetic:{sharp_dir}+gopro:{gopro}@2:1", "val")
    assert len(val) == 3 + 4  # every item once
    _assert_aligned(val[3])
    assert "7 items" in describe_dataset(val)


@pytest.mark.parametrize(
    "spec",
    [
        "nonsense",
        "gopro:",
        "flickr:/data",
        "gopro:/does/not/exist",
        "paired:/only/one",
        "combined:skimage",
        "combined:skimage+skimage@2:1:1",
        "combined:skimage+combined:skimage+skimage",
    ],
)
def test_bad_specs_are_one_line_user_errors(spec):
    with pytest.raises(DeblurGANError) as e:
        build_dataset(spec)
    assert "\n" not in str(e.value)


def test_bad_split_and_crop():
    with pytest.raises(DeblurGANError):
        build_dataset(None, "test")
    with pytest.raises(DeblurGANError):
        build_dataset(None, "train", crop=0)


def test_picklable_and_works_with_workers(gopro, sharp_dir):
    ds = build_dataset(f"combined:synthetic:{sharp_dir}+gopro:{gopro}@2:1", "train", crop=16)
    clone = pickle.loads(pickle.dumps(ds))
    assert len(clone) == len(ds)
    torch.manual_seed(0)
    batches = list(DataLoader(ds, batch_size=3, num_workers=2, shuffle=True))
    assert sum(len(b["path"]) for b in batches) == len(ds)
    assert batches[0]["blur"].shape == (3, 3, 16, 16)


def _psf_extent(item) -> int:
    """Largest side of the box of pixels a point light was spread over (the PSF support)."""
    ys, xs = np.nonzero(item["blur"][0].numpy() > -1 + 1e-4)
    return int(max(ys.max() - ys.min(), xs.max() - xs.min())) + 1


def test_blur_max_len_sets_the_psf_support_default_is_the_papers(tmp_path):
    dot = np.zeros((96, 96, 3), np.uint8)
    dot[48, 48] = 255
    _save(tmp_path / "dot.png", dot)
    paper = SyntheticDataset([tmp_path / "dot.png"], "val", per_image=8)
    mild = SyntheticDataset([tmp_path / "dot.png"], "val", per_image=8, max_len=6)
    assert (paper.canvas, paper.max_len, mild.canvas) == (64, 60.0, 10)
    assert max(_psf_extent(mild[i]) for i in range(8)) <= 8  # length 6 (+1 pixel of bilinear spread)
    assert max(_psf_extent(paper[i]) for i in range(8)) > 20
    assert torch.equal(mild[3]["blur"], mild[3]["blur"])  # val stays deterministic per index
    ds = build_dataset(f"synthetic:{tmp_path}", "val", blur_max_len=6)
    assert ds.max_len == 6 and torch.equal(
        ds[0]["blur"], SyntheticDataset([tmp_path / "dot.png"], "val", max_len=6)[0]["blur"]
    )
    assert build_dataset(None, "train", crop=32, blur_max_len=12).max_len == 12
    assert build_dataset(None, "val").max_len == 60 and "blur length 12px" in describe_dataset(
        build_dataset(None, "val", blur_max_len=12)
    )


@pytest.mark.parametrize("bad", [0, -3, float("nan"), 5000, "10", True])
def test_bad_blur_max_len_is_a_one_line_error(bad):
    with pytest.raises(DeblurGANError) as e:
        build_dataset(None, "val", blur_max_len=bad)
    assert "\n" not in str(e.value) and "max_len" in str(e.value)


# --- item seeds: training randomness fixed by the caller (the engine's sampler), not by the loading worker ----------
def _kinds(gopro, sharp_dir, tmp_path) -> dict:
    rng = np.random.default_rng(9)
    for i in range(3):
        s = _rand(rng, 40, 36)
        _save(tmp_path / "ab" / f"{i}.png", np.concatenate([255 - s, s], axis=1))
    return {  # crops smaller than the frames, so windows, flips and (synthetic) kernels are all random
        "paired": build_dataset(f"gopro:{gopro}", "train", crop=16, seed=3),
        "aligned": build_dataset(f"aligned:{tmp_path / 'ab'}", "train", crop=16, seed=3),
        "synthetic": build_dataset(f"synthetic:{sharp_dir}", "train", crop=24, seed=3, blur_max_len=8),
        "combined": build_dataset(f"combined:synthetic:{sharp_dir}+gopro:{gopro}@2:1", "train", crop=16, seed=3),
    }


def _same(a: dict, b: dict) -> bool:
    return torch.equal(a["blur"], b["blur"]) and torch.equal(a["sharp"], b["sharp"]) and a["path"] == b["path"]


def test_item_seeds_are_a_function_of_seed_epoch_and_position() -> None:
    a = item_seeds(5, 2, 10)
    assert a == item_seeds(5, 2, 10) and item_seeds(5, 2, 4) == a[:4]  # any count: a prefix
    assert all(type(s) is int and 0 <= s < 2**63 for s in a) and len(set(a)) == 10
    assert set(a).isdisjoint(item_seeds(5, 3, 10)) and set(a).isdisjoint(item_seeds(6, 2, 10))
    assert split_key(4) == (4, None) and split_key((np.int64(4), 7)) == (4, 7)


def test_seeded_items_are_the_same_in_any_process_or_worker(gopro, sharp_dir, tmp_path) -> None:
    for name, ds in _kinds(gopro, sharp_dir, tmp_path).items():
        assert takes_item_seed(ds), name
        keys = list(zip(range(len(ds)), item_seeds(0, 1, len(ds)), strict=True))
        torch.manual_seed(0)
        here = [ds[k] for k in keys]
        torch.manual_seed(1)  # torch's RNG (the main process's, or the workers') plays no part
        assert all(_same(ds[k], h) for k, h in zip(keys, here, strict=True)), name
        # in two worker processes, in two orders: keys land on other workers, at other places in their RNG streams
        for shift in (0, 1):
            order = keys[shift:] + keys[:shift]
            loader = DataLoader(ds, batch_size=None, sampler=order, num_workers=2)
            for k, item in zip(order, loader, strict=True):
                assert _same(item, here[k[0]]), (name, k)


def test_seeded_items_differ_between_epochs_and_plain_indices_follow_torch_rng(gopro, sharp_dir, tmp_path) -> None:
    for name, ds in _kinds(gopro, sharp_dir, tmp_path).items():
        n = len(ds)
        epochs = [[ds[(i, s)] for i, s in enumerate(item_seeds(0, e, n))] for e in (0, 1)]
        differ = sum(not _same(a, b) for a, b in zip(*epochs, strict=True))
        assert differ >= n - 1, (name, differ)  # (two draws can pick the same crop of a small frame by chance)
        assert all(a["path"] == b["path"] for a, b in zip(*epochs, strict=True))
        # plain indices: today's behaviour, a draw from torch's global RNG per item
        torch.manual_seed(0)
        first = [ds[i] for i in range(n)]
        torch.manual_seed(0)
        assert all(_same(ds[i], f) for i, f in enumerate(first)), name
        assert sum(not _same(ds[i], f) for i, f in enumerate(first)) >= n - 1, name  # the next draws: new items
        # a plain shuffled DataLoader in a user's loop gets fresh randomness every epoch (same order here)
        e0, e1 = (next(iter(DataLoader(ds, n, shuffle=True, generator=torch.Generator().manual_seed(1)))) for _ in "ab")
        assert e0["path"] == e1["path"] and not torch.equal(e0["blur"], e1["blur"]), name


def test_combined_passes_the_item_seed_to_its_part_and_val_ignores_it(gopro, sharp_dir) -> None:
    ds = build_dataset(f"combined:synthetic:{sharp_dir}+gopro:{gopro}@2:1", "train", crop=16, seed=3)
    for i, s in enumerate(item_seeds(4, 0, len(ds))):
        part, inner = ds.locate(i)
        assert _same(ds[(i, s)], ds.parts[part][(inner, s)])
    val = build_dataset(f"synthetic:{sharp_dir}", "val", seed=3)
    assert _same(val[(1, 123)], val[1]) and _same(val[(1, 456)], val[1])


def test_a_bare_folder_is_read_by_its_layout(gopro, sharp_dir, tmp_path):
    """--data DIR: GoPro layout, blur/ + sharp/ folders, else sharp images blurred on the fly."""
    from deblurgan.data import PairedDataset, folder_spec, is_bare_folder

    assert folder_spec(gopro)[0] == f"gopro:{gopro}"
    assert folder_spec(gopro / "train")[0] == f"gopro:{gopro / 'train'}"  # the split folder itself
    assert len(build_dataset(str(gopro), "train", crop=16)) == 4
    paired = tmp_path / "mine"
    rng = np.random.default_rng(1)
    for i in range(3):
        s = _rand(rng, 20, 24)
        _save(paired / "sharp" / f"{i}.png", s)
        _save(paired / "blur" / f"{i}.jpg" if i == 0 else paired / "blur" / f"{i}.png", 255 - s)
    assert folder_spec(paired)[0] == f"paired:{paired / 'blur'},{paired / 'sharp'}"
    ds = build_dataset(str(paired), "val", crop=None)
    assert isinstance(ds, PairedDataset) and len(ds) == 3
    spec, why = folder_spec(sharp_dir)
    assert spec == f"synthetic:{sharp_dir}" and "blurred on the fly" in why
    assert isinstance(build_dataset(str(sharp_dir), "train", crop=16), SyntheticDataset)
    assert is_bare_folder(str(sharp_dir)) and not is_bare_folder(f"gopro:{gopro}") and not is_bare_folder(None)
    with pytest.raises(DeblurGANError, match="no such folder") as e:
        build_dataset(str(tmp_path / "nope"))
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("centre", [True, False])
def test_synthetic_kernels_are_centred_on_their_mass_by_default(centre, seen_psfs) -> None:
    """Blurred and sharp stay aligned: the kernel's centroid is the origin (uncentred kernels shift the image)."""
    from deblurgan.data import SyntheticDataset

    seen = seen_psfs
    ds = SyntheticDataset(["skimage:astronaut"], "train", crop=32, per_image=12, max_len=20, centre=centre)
    offsets = []
    for i in range(len(ds)):
        ds[(i, 7)]
        psf = seen[-1].astype(np.float64)
        k = psf.shape[-1]
        yy, xx = np.mgrid[:k, :k]
        assert abs(psf.sum() - 1) < 1e-5
        offsets.append(np.hypot((psf * yy).sum() - k // 2, (psf * xx).sum() - k // 2))
    if centre:
        assert max(offsets) < 1e-3
    else:
        assert max(offsets) > 0.25  # the raw synthesis moves some kernels' mass off the origin


def test_centred_psf_keeps_the_shape_of_the_blur() -> None:
    """centred_psf only translates: a kernel that is already centred comes back unchanged (trimmed)."""
    from deblurgan.blur import centred_psf

    rng = np.random.default_rng(3)
    psf = np.zeros((15, 15))
    psf[7, 4:11] = rng.random(7) + 0.5
    psf[7, 4:11] += psf[7, 4:11][::-1]  # symmetric about the origin: centroid already at (7, 7)
    psf /= psf.sum()
    out = centred_psf(psf)
    assert out.shape == (7, 7)
    np.testing.assert_allclose(out, psf[4:11, 4:11], atol=1e-6)
