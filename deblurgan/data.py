"""Datasets that training reads: real pairs (GoPro, aligned AB, paired folders), on-the-fly synthetic blur, mixes.

The contract the training engine calls:

    ds = build_dataset(spec, split="train", crop=256, seed=0)   # a torch Dataset, picklable
    item = ds[i]   # {"blur": FloatTensor 3xHxW in [-1, 1], "sharp": same shape, "path": str}
    item = ds[(i, item_seed)]   # the same, with the training randomness fixed by item_seed (see Randomness)
    print(describe_dataset(ds))

Spec grammar (`DeblurGANError` with a one-line message for anything else):

    None | "skimage"                 sharp colour samples shipped with scikit-image, blurred on the fly
                                     (train: 6 images x 32 random crops; val: "chelsea" with 4 fixed kernels)
    gopro:ROOT                       ROOT/<split>/<sequence>/{blur,sharp}/*.png  (split val also finds "test")
    gopro_gamma:ROOT                 same, but the inputs are the blur_gamma/ folders
    aligned:ROOT                     the authors' side-by-side images: left half blurred, right half sharp;
                                     ROOT/<split>/ when it exists (val also finds "test"), else ROOT
    paired:BLUR_DIR,SHARP_DIR        files matched by relative path, extension ignored
    synthetic:DIR                    every image under DIR is a sharp source, blurred on the fly
    combined:PART+PART[+...][@W:W..] a mix of the parts above with integer weights, e.g.
                                     combined:synthetic:/data/sharp+gopro:/data/GOPRO@2:1 (DeblurGAN-Comb);
                                     for split="val" the parts are simply concatenated (every item once)
    DIR                              a bare folder, read by its layout (`folder_spec`): gopro:DIR when it holds
                                     [train/]<sequence>/{blur,sharp}/, paired:DIR/blur,DIR/sharp when it holds
                                     blur/ and sharp/, else synthetic:DIR (its images are the sharp sources)

Transforms: split="train" takes one random `crop` x `crop` window and a random horizontal flip, the same for both
images of a pair; frames smaller than the crop are reflect-padded (not upscaled: scaling would change the blur
size). `crop=None` keeps full frames. split="val" returns full frames with trailing rows/columns dropped to a
multiple of 4, deterministically (synthetic val draws its kernel from (seed, index): the same every epoch).

Randomness: each item seeds a numpy Generator from (seed, index) and, for training, an item seed. `ds[i]` draws
the item seed from torch's global RNG, so `torch.manual_seed` makes runs repeatable and DataLoader workers (which
torch seeds per worker and epoch) never repeat each other. `ds[(i, item_seed)]` uses the given one instead: the
training engine's sampler passes `item_seeds(run seed, epoch, n)[position]`, so an item's crop, flip and kernel
depend on the seeds, the epoch and its position in the epoch only, never on the worker or process that loads it
(a resumed run sees the same items). Missing partners are reported when the dataset is built; unreadable files and
size mismatches when the item is read, always with the path, or all at once up front by `check_pairs(ds)`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import ConcatDataset, Dataset

from .blur import FRACTIONS, blur_image, centred_psf, random_psfs
from .errors import DeblurGANError
from .io import list_images, read_image

SKIMAGE_TRAIN = ("astronaut", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field", "retina")
SKIMAGE_VAL = ("chelsea",)
SKIMAGE_PER_IMAGE = {"train": 32, "val": 4}
SPLITS = ("train", "val")
_SPLIT_DIRS = {"train": ("train",), "val": ("val", "test")}
_WEIGHTS = re.compile(r"^\d+(:\d+)*$")
PAPER_MAX_LEN = 60.0  # the paper's trajectory length (pixels) on its 64x64 kernel canvas

__all__ = [
    "AlignedDataset",
    "CombinedDataset",
    "PairedDataset",
    "SyntheticDataset",
    "build_dataset",
    "check_pairs",
    "describe_dataset",
    "gopro_pairs",
    "item_seeds",
    "paired_folder_pairs",
    "split_key",
    "takes_item_seed",
]


# ----------------------------------------------------------------------------------------------- pixels
def to_rgb_float(image: np.ndarray) -> np.ndarray:
    """uint8/uint16 gray, RGB or RGBA (as `read_image` returns) -> HxWx3 float32 in [0, 1]; alpha is dropped."""
    img = image.astype(np.float32) / np.iinfo(image.dtype).max
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    return np.ascontiguousarray(img[..., :3])


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """HxWx3 float in [0, 1] -> 3xHxW float32 tensor in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).permute(2, 0, 1).mul(2).sub(1).contiguous()


# ----------------------------------------------------------------------------------------------- item seeds
_ITEM_SEED_TAG = 0x17E35EED  # keeps the item-seed stream apart from other streams seeded by (seed, epoch)


def item_seeds(seed: int, epoch: int, count: int) -> list[int]:
    """The item seeds of positions 0..count-1 of an epoch: a function of (seed, epoch, position) only.

    Raw PCG64 outputs, so position p gets the same seed whatever `count` is (a prefix of a longer list).
    """
    bits = np.random.PCG64([seed % 2**64, epoch, _ITEM_SEED_TAG]).random_raw(count)
    return (bits >> np.uint64(1)).astype(np.int64).tolist()  # 63 bits: non-negative Python ints


def split_key(key: int | tuple[int, int]) -> tuple[int, int | None]:
    """(index, item_seed) of a dataset key: a plain index (item_seed None) or an (index, item_seed) pair."""
    if isinstance(key, tuple):
        index, item_seed = key
        return int(index), int(item_seed)
    return key, None


def takes_item_seed(ds: Dataset) -> bool:
    """Whether `ds[(index, item_seed)]` works: the datasets of this module (not torch's ConcatDataset/Subset)."""
    return bool(getattr(ds, "takes_item_seed", False))


def _item_rng(seed: int, index: int, split: str, item_seed: int | None = None) -> np.random.Generator:
    if split == "val":  # deterministic: the same item every epoch, whatever seed the caller passes
        return np.random.default_rng([seed, index])
    if item_seed is None:
        item_seed = int(torch.randint(0, 2**62, ()).item())
    return np.random.default_rng([seed, index, item_seed])


def _pad_to(img: np.ndarray, h: int, w: int) -> np.ndarray:
    """Reflect-pad (bottom/right) to at least h x w."""
    ph, pw = max(0, h - img.shape[0]), max(0, w - img.shape[1])
    return np.pad(img, ((0, ph), (0, pw), (0, 0)), mode="reflect") if ph or pw else img


def _mult4(img: np.ndarray, what: str) -> np.ndarray:
    h, w = img.shape[0] // 4 * 4, img.shape[1] // 4 * 4
    if h == 0 or w == 0:
        raise DeblurGANError(f"{what}: image of {img.shape[1]}x{img.shape[0]} is smaller than 4x4")
    return img[:h, :w]


def _pair_transform(
    blur: np.ndarray, sharp: np.ndarray, split: str, crop: int | None, rng: np.random.Generator, what: str
) -> tuple[np.ndarray, np.ndarray]:
    """Crop/flip (train) or cut to a multiple of 4 (val), identically for both images."""
    if split == "val" or crop is None:
        blur, sharp = _mult4(blur, what), _mult4(sharp, what)
    else:
        blur, sharp = _pad_to(blur, crop, crop), _pad_to(sharp, crop, crop)
        y = int(rng.integers(0, blur.shape[0] - crop + 1))
        x = int(rng.integers(0, blur.shape[1] - crop + 1))
        blur, sharp = blur[y : y + crop, x : x + crop], sharp[y : y + crop, x : x + crop]
    if split == "train" and rng.random() < 0.5:
        blur, sharp = blur[:, ::-1], sharp[:, ::-1]
    return blur, sharp


def _item(blur: np.ndarray, sharp: np.ndarray, path: str) -> dict:
    return {"blur": to_tensor(blur), "sharp": to_tensor(sharp), "path": path}


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise DeblurGANError(f"split must be one of {SPLITS} (got {split!r})")


def _check_max_len(max_len: float) -> None:
    if isinstance(max_len, bool) or not isinstance(max_len, (int, float)) or not 0 < max_len <= 1000:
        raise DeblurGANError(f"blur max_len must be a trajectory length in pixels in (0, 1000] (got {max_len!r})")


def blur_canvas(max_len: float) -> int:
    """The kernel canvas for trajectories of length `max_len`: the paper's 64 for 60, smaller for milder blur."""
    return 2 * math.ceil(max_len / 2) + 4


def _check_crop(crop: int | None) -> None:
    if crop is not None and (not isinstance(crop, int) or crop < 4):
        raise DeblurGANError(f"crop must be an integer >= 4 or None (got {crop!r})")


# ----------------------------------------------------------------------------------------------- real pairs
class PairedDataset(Dataset):
    """(blurred file, sharp file) pairs read from disk."""

    takes_item_seed = True

    def __init__(
        self, pairs: Sequence[tuple[Path, Path]], split: str = "train", crop: int | None = 256, seed: int = 0
    ) -> None:
        _check_split(split)
        _check_crop(crop)
        if not pairs:
            raise DeblurGANError("no image pairs found")
        self.pairs = [(Path(b), Path(s)) for b, s in pairs]
        self.split, self.crop, self.seed = split, crop, seed

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        index, item_seed = split_key(key)
        bpath, spath = self.pairs[index]
        blur, sharp = to_rgb_float(read_image(bpath)), to_rgb_float(read_image(spath))
        if blur.shape != sharp.shape:
            raise DeblurGANError(
                f"{bpath}: size {blur.shape[1]}x{blur.shape[0]} differs from its sharp partner "
                f"{spath} ({sharp.shape[1]}x{sharp.shape[0]})"
            )
        rng = _item_rng(self.seed, index, self.split, item_seed)
        blur, sharp = _pair_transform(blur, sharp, self.split, self.crop, rng, str(bpath))
        return _item(blur, sharp, str(bpath))


class AlignedDataset(Dataset):
    """The authors' "aligned" format: each file holds [blurred | sharp] side by side."""

    takes_item_seed = True

    def __init__(self, files: Sequence[Path], split: str = "train", crop: int | None = 256, seed: int = 0) -> None:
        _check_split(split)
        _check_crop(crop)
        if not files:
            raise DeblurGANError("no aligned images found")
        self.files = [Path(f) for f in files]
        self.split, self.crop, self.seed = split, crop, seed

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        index, item_seed = split_key(key)
        path = self.files[index]
        ab = to_rgb_float(read_image(path))
        if ab.shape[1] % 2:
            raise DeblurGANError(f"{path}: aligned image width {ab.shape[1]} is odd; expected [blurred | sharp] halves")
        half = ab.shape[1] // 2
        rng = _item_rng(self.seed, index, self.split, item_seed)
        blur, sharp = _pair_transform(ab[:, :half], ab[:, half:], self.split, self.crop, rng, str(path))
        return _item(blur, sharp, str(path))


def _split_root(root: Path, split: str) -> Path:
    for name in _SPLIT_DIRS[split]:
        if (root / name).is_dir():
            return root / name
    return root


def _existing_dir(path: str, kind: str) -> Path:
    p = Path(path).expanduser()
    if not p.is_dir():
        raise DeblurGANError(f"{kind}: {p} is not a folder")
    return p


def _stem_index(folder: Path) -> dict[Path, Path]:
    return {f.relative_to(folder).with_suffix(""): f for f in list_images(folder)}


def _match(blur_dir: Path, sharp_dir: Path) -> tuple[list[tuple[Path, Path]], list[Path]]:
    sharp = _stem_index(sharp_dir)
    pairs, missing = [], []
    for key, b in _stem_index(blur_dir).items():
        (pairs.append((b, sharp[key])) if key in sharp else missing.append(b))
    return pairs, missing


def _report_missing(missing: list[Path], where: Path) -> None:
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise DeblurGANError(f"{missing[0]}: no sharp partner in {where}{more}")


def paired_folder_pairs(blur_dir: str | Path, sharp_dir: str | Path) -> list[tuple[Path, Path]]:
    """Pairs from two folders, matched by relative path with the extension ignored."""
    b, s = _existing_dir(str(blur_dir), "paired"), _existing_dir(str(sharp_dir), "paired")
    pairs, missing = _match(b, s)
    _report_missing(missing, s)
    if not pairs:
        raise DeblurGANError(f"paired: no images in {b}")
    return pairs


def gopro_pairs(root: str | Path, split: str = "train", blur_dir: str = "blur") -> list[tuple[Path, Path]]:
    """GoPro layout: ROOT/<split>/<sequence>/{blur|blur_gamma,sharp}/ (ROOT may also be the split folder)."""
    base = _split_root(_existing_dir(str(root), "gopro"), split)
    seqs = sorted(p for p in base.iterdir() if (p / "sharp").is_dir())
    if not seqs:
        raise DeblurGANError(f"gopro: no <sequence>/sharp folders under {base}")
    pairs: list[tuple[Path, Path]] = []
    for seq in seqs:
        if not (seq / blur_dir).is_dir():
            raise DeblurGANError(f"gopro: {seq / blur_dir} is missing")
        found, missing = _match(seq / blur_dir, seq / "sharp")
        _report_missing(missing, seq / "sharp")
        pairs += found
    if not pairs:
        raise DeblurGANError(f"gopro: no images under {base}")
    return pairs


def check_pairs(ds: Dataset) -> list[str]:
    """Problems of a dataset's files without decoding pixels (headers only): one line with the path per problem.

    Checks that every file opens as an image and that paired files have the same size (aligned files: even
    width). Call it before a long training run; an empty list means nothing was found.
    """
    from PIL import Image

    def size(path: Path) -> tuple[int, int] | None:
        try:
            with Image.open(path) as im:
                return im.size
        except (OSError, SyntaxError, ValueError) as e:
            problems.append(f"{path}: unreadable image ({type(e).__name__})")
            return None

    problems: list[str] = []
    parts = getattr(ds, "parts", None) or getattr(ds, "datasets", None) or [ds]
    for part in parts:
        if isinstance(part, PairedDataset):
            for b, sh in part.pairs:
                bs, ss = size(b), size(sh)
                if bs and ss and bs != ss:
                    problems.append(f"{b}: size {bs[0]}x{bs[1]} differs from its sharp partner {sh} ({ss[0]}x{ss[1]})")
        elif isinstance(part, AlignedDataset):
            for f in part.files:
                fs = size(f)
                if fs and fs[0] % 2:
                    problems.append(f"{f}: aligned image width {fs[0]} is odd")
        elif isinstance(part, SyntheticDataset):
            for src in part.sources:
                if not src.startswith("skimage:"):
                    size(Path(src))
    return problems


# ----------------------------------------------------------------------------------------------- synthetic
class SyntheticDataset(Dataset):
    """Sharp images blurred on the fly with fresh camera-shake kernels (`deblurgan.blur`).

    `sources` are image paths or "skimage:<name>". Each source yields `per_image` items per epoch. The kernel is
    one of the exposure `fractions` of a random trajectory, chosen uniformly (the authors' choice). `centre` (the
    default) moves the kernel's centroid onto the origin (`blur.centred_psf`) so blurred and sharp stay aligned:
    otherwise a short exposure's kernel also shifts the image by pixels, which the generator would learn to copy.
    For training the crop is taken first and only it (plus the kernel's reach) is blurred: the result equals
    blurring the whole frame, then cropping.
    """

    takes_item_seed = True

    def __init__(
        self,
        sources: Sequence[str | Path],
        split: str = "train",
        crop: int | None = 256,
        seed: int = 0,
        per_image: int = 1,
        canvas: int | None = None,
        fractions: Sequence[float] = FRACTIONS,
        gamma: float | None = None,
        noise_std: float = 0.0,
        max_len: float = PAPER_MAX_LEN,
        centre: bool = True,
    ) -> None:
        _check_split(split)
        _check_crop(crop)
        _check_max_len(max_len)
        canvas = blur_canvas(max_len) if canvas is None else canvas
        if not sources:
            raise DeblurGANError("synthetic: no sharp images")
        if per_image < 1:
            raise DeblurGANError(f"per_image must be >= 1 (got {per_image})")
        self.sources = [str(s) for s in sources]
        self.split, self.crop, self.seed, self.per_image = split, crop, seed, per_image
        self.canvas, self.fractions, self.gamma, self.noise_std = canvas, tuple(fractions), gamma, noise_std
        self.max_len, self.centre = float(max_len), centre
        self._cache: dict[str, np.ndarray] = {}

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_cache": {}}  # workers reload what they need

    def __len__(self) -> int:
        return len(self.sources) * self.per_image

    def _sharp(self, source: str) -> np.ndarray:
        if source.startswith("skimage:"):
            if source not in self._cache:
                self._cache[source] = to_rgb_float(_skimage_image(source.split(":", 1)[1]))
            return self._cache[source]
        return to_rgb_float(read_image(source))

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        index, item_seed = split_key(key)
        source = self.sources[index // self.per_image]
        sharp = self._sharp(source)
        rng = _item_rng(self.seed, index, self.split, item_seed)
        psfs = random_psfs(rng, 1, canvas=self.canvas, max_len=self.max_len, fractions=self.fractions)[0]
        psf = psfs[rng.integers(len(psfs))]
        if self.centre:
            psf = centred_psf(psf)
        if self.split == "val" or self.crop is None:
            sharp = _mult4(sharp, source)
            blur = self._blur(sharp, psf, rng)
        else:
            sharp = _pad_to(sharp, self.crop, self.crop)
            blur, sharp = self._blur_crop(sharp, psf, rng)
        if self.split == "train" and rng.random() < 0.5:
            blur, sharp = blur[:, ::-1], sharp[:, ::-1]
        return _item(blur, sharp, source)

    def _blur(self, sharp: np.ndarray, psf: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return blur_image(sharp, psf, gamma=self.gamma, noise_std=self.noise_std, rng=rng)

    def _blur_crop(self, sharp: np.ndarray, psf: np.ndarray, rng: np.random.Generator):
        c, (h, w) = self.crop, sharp.shape[:2]
        y, x = int(rng.integers(0, h - c + 1)), int(rng.integers(0, w - c + 1))
        m = psf.shape[-1] // 2 + 1  # a kernel reaches at most half its size away
        y0, x0 = max(0, y - m), max(0, x - m)
        region = sharp[y0 : min(h, y + c + m), x0 : min(w, x + c + m)]
        blur = self._blur(region, psf, rng)[y - y0 : y - y0 + c, x - x0 : x - x0 + c]
        return blur, sharp[y : y + c, x : x + c]


def _skimage_image(name: str) -> np.ndarray:
    import skimage.data

    loader = getattr(skimage.data, name, None)
    if loader is None:
        raise DeblurGANError(f"skimage: no sample image named {name!r}")
    try:
        img = np.asarray(loader())
    except Exception as e:  # some samples need a download (pooch) in some scikit-image versions
        raise DeblurGANError(f"skimage: sample {name!r} is not available offline ({type(e).__name__})") from None
    if img.dtype != np.uint8 and img.dtype != np.uint16:
        img = (np.clip(img, 0, 1) * 255).round().astype(np.uint8)
    return img


def skimage_dataset(
    split: str = "train", crop: int | None = 256, seed: int = 0, blur_max_len: float = PAPER_MAX_LEN
) -> SyntheticDataset:
    """The embedded default: scikit-image's colour samples, blurred on the fly; "chelsea" is held out for val."""
    names = SKIMAGE_TRAIN if split == "train" else SKIMAGE_VAL
    sources = [f"skimage:{n}" for n in names]
    per_image = SKIMAGE_PER_IMAGE.get(split, 1)
    return SyntheticDataset(sources, split=split, crop=crop, seed=seed, per_image=per_image, max_len=blur_max_len)


# ----------------------------------------------------------------------------------------------- mixing
class CombinedDataset(Dataset):
    """Datasets mixed at integer weights (e.g. synthetic:real = 2:1).

    Indices follow a repeating pattern of sum(weights) slots, so every epoch has the exact ratio; the length is
    the smallest multiple of the pattern that visits every item of every part at least once (smaller parts
    repeat). Shuffle in the DataLoader to spread the parts over batches. An (index, item_seed) key passes the seed
    on to its part (a part that takes none, e.g. a foreign dataset, gets the plain index).
    """

    takes_item_seed = True

    def __init__(self, parts: Sequence[Dataset], weights: Sequence[int] | None = None) -> None:
        weights = list(weights) if weights is not None else [1] * len(parts)
        if len(parts) < 1 or len(weights) != len(parts) or any(int(w) != w or w < 1 for w in weights):
            raise DeblurGANError(f"combined: need one positive integer weight per part (got {weights})")
        if any(len(p) == 0 for p in parts):
            raise DeblurGANError("combined: a part is empty")
        self.parts, self.weights = list(parts), [int(w) for w in weights]
        self.period = sum(self.weights)
        self.starts = np.cumsum([0] + self.weights[:-1]).tolist()
        self.rounds = max(math.ceil(len(p) / w) for p, w in zip(self.parts, self.weights, strict=True))

    def __len__(self) -> int:
        return self.rounds * self.period

    def locate(self, index: int) -> tuple[int, int]:
        """(part, index inside that part) of a combined index."""
        if not 0 <= index < len(self):
            raise IndexError(index)
        block, slot = divmod(index, self.period)
        part = max(i for i, s in enumerate(self.starts) if s <= slot)
        inner = block * self.weights[part] + slot - self.starts[part]
        return part, inner % len(self.parts[part])

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        index, item_seed = split_key(key)
        part, inner = self.locate(index)
        ds = self.parts[part]
        return ds[(inner, item_seed)] if item_seed is not None and takes_item_seed(ds) else ds[inner]


# ----------------------------------------------------------------------------------------------- specs
KINDS = ("gopro", "gopro_gamma", "aligned", "paired", "synthetic", "combined", "skimage")


def folder_spec(folder: str | Path) -> tuple[str, str]:
    """The spec a bare folder stands for, and a few words saying why (the layout found)."""
    root = _existing_dir(str(folder), "data")
    base = _split_root(root, "train")
    if any((p / "sharp").is_dir() and (p / "blur").is_dir() for p in base.iterdir() if p.is_dir()):
        return f"gopro:{folder}", "GoPro layout: <sequence>/blur and <sequence>/sharp pairs"
    if (root / "blur").is_dir() and (root / "sharp").is_dir():
        return f"paired:{root / 'blur'},{root / 'sharp'}", "blur/ and sharp/ folders: pairs matched by file name"
    return f"synthetic:{folder}", "no blur/sharp pairs: its images are sharp, blurred on the fly (camera shake)"


def is_bare_folder(spec: str | None) -> bool:
    """Whether a spec is a plain path rather than KIND:... (or the bundled samples)."""
    if spec is None or spec.strip() in ("", "skimage"):
        return False
    return spec.strip().partition(":")[0] not in KINDS


def build_dataset(
    spec: str | None,
    split: str = "train",
    crop: int | None = 256,
    seed: int = 0,
    *,
    blur_max_len: float = PAPER_MAX_LEN,
) -> Dataset:
    """The dataset a spec names (grammar in the module docstring); raises DeblurGANError for a bad spec.

    `blur_max_len` is the camera-shake trajectory length (pixels) of the blur synthesised on the fly (skimage and
    synthetic:DIR parts); the default is the paper's 60 on a 64x64 kernel canvas. Real pairs ignore it.
    """
    _check_split(split)
    _check_crop(crop)
    _check_max_len(blur_max_len)
    if spec is None or spec.strip() in ("", "skimage"):
        return skimage_dataset(split, crop, seed, blur_max_len)
    spec = spec.strip()
    if spec.startswith("combined:"):
        body, weights = spec[len("combined:") :], None
        if "@" in body and _WEIGHTS.match(body.rsplit("@", 1)[1]):
            body, w = body.rsplit("@", 1)
            weights = [int(x) for x in w.split(":")]
        items = [p for p in body.split("+")]
        if len(items) < 2 or any(not p.strip() for p in items):
            raise DeblurGANError(
                f"combined spec needs parts joined by '+', e.g. synthetic:DIR+gopro:DIR@2:1 ({spec!r})"
            )
        if weights is not None and len(weights) != len(items):
            raise DeblurGANError(f"combined spec has {len(items)} parts but {len(weights)} weights ({spec!r})")
        parts = []
        for k, p in enumerate(items):
            if p.strip().startswith("combined:"):
                raise DeblurGANError("combined specs cannot be nested")
            parts.append(
                build_dataset(p, split, crop, seed + 1000 * k, blur_max_len=blur_max_len)
            )  # parts draw independent kernels
        if split == "val":  # validation scores every item once; the ratio only matters for training
            return ConcatDataset(parts)
        return CombinedDataset(parts, weights)
    kind, sep, arg = spec.partition(":")
    if kind not in KINDS:
        if Path(spec).expanduser().is_dir():
            return build_dataset(folder_spec(spec)[0], split, crop, seed, blur_max_len=blur_max_len)
        if not sep or "/" in kind or "\\" in kind:
            raise DeblurGANError(
                f"data {spec!r}: no such folder (give a folder of images, or KIND:PATH with KIND one of "
                f"{', '.join(KINDS[:-1])})"
            )
    if not sep or not arg.strip():
        raise DeblurGANError(
            f"bad dataset spec {spec!r}: expected KIND:PATH (gopro, gopro_gamma, aligned, paired, "
            "synthetic, combined) or 'skimage'"
        )
    arg = arg.strip()
    if kind in ("gopro", "gopro_gamma"):
        pairs = gopro_pairs(arg, split, "blur" if kind == "gopro" else "blur_gamma")
        return PairedDataset(pairs, split, crop, seed)
    if kind == "aligned":
        root = _split_root(_existing_dir(arg, "aligned"), split)
        files = list_images(root)
        if not files:
            raise DeblurGANError(f"aligned: no images under {root}")
        return AlignedDataset(files, split, crop, seed)
    if kind == "paired":
        dirs = arg.split(",")
        if len(dirs) != 2 or not all(d.strip() for d in dirs):
            raise DeblurGANError(f"paired spec is paired:BLUR_DIR,SHARP_DIR (got {spec!r})")
        return PairedDataset(paired_folder_pairs(dirs[0].strip(), dirs[1].strip()), split, crop, seed)
    if kind == "synthetic":
        files = list_images(_existing_dir(arg, "synthetic"))
        if not files:
            raise DeblurGANError(f"synthetic: no images under {arg}")
        return SyntheticDataset(files, split, crop, seed, max_len=blur_max_len)
    raise DeblurGANError(
        f"unknown dataset kind {kind!r} in {spec!r} (gopro, gopro_gamma, aligned, paired, synthetic, combined, skimage)"
    )


def describe_dataset(ds: Dataset | str | None, split: str = "train") -> str:
    """One line for logs: kind, size, split and crop (give a dataset, or a spec to build for `split`)."""
    if ds is None or isinstance(ds, str):
        ds = build_dataset(ds, split)
    if isinstance(ds, ConcatDataset):
        return f"{len(ds)} items: " + " + ".join(f"[{describe_dataset(p)}]" for p in ds.datasets)
    if isinstance(ds, CombinedDataset):
        inner = " + ".join(f"{w}x[{describe_dataset(p)}]" for p, w in zip(ds.parts, ds.weights, strict=True))
        return f"combined, {len(ds)} items per epoch: {inner}"
    kind = {PairedDataset: "paired files", AlignedDataset: "aligned AB", SyntheticDataset: "synthetic blur"}.get(
        type(ds), type(ds).__name__
    )
    extra = ""
    if isinstance(ds, SyntheticDataset):
        extra = f" from {len(ds.sources)} sharp images x{ds.per_image}, blur length {ds.max_len:g}px"
    crop = "full frames" if ds.split == "val" or ds.crop is None else f"{ds.crop}px crops"
    return f"{kind}: {len(ds)} items{extra}, split {ds.split}, {crop}"
