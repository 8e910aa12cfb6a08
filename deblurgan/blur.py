"""Realistic camera-shake blur (DeblurGAN, Kupyn et al. 2018, after Boracchi & Foi 2012).

    rng = np.random.default_rng(0)
    traj = random_trajectory(rng)                  # complex positions (x = column, y = row), shape (2000,)
    psfs = trajectory_to_psfs(traj)                # (4, 64, 64): exposure fractions 1/100, 1/10, 1/2, 1
    many = random_psfs(rng, 256)                   # (256, 4, 64, 64), batched over trajectories
    blurred = blur_image(image, psfs[-1])          # HxW[xC] float in [0, 1] -> same shape
    batch = blur_batch(crops, torch.from_numpy(many[:, -1]))   # (B, C, H, W) on CPU or CUDA, via FFT

Conventions (all paths agree with `scipy.ndimage.convolve(image, psf, mode="mirror")`):
- A PSF is `canvas x canvas`, non-negative, sums to 1; its origin (the pixel that maps onto itself) is
  `(canvas // 2, canvas // 2)`, and every trajectory's bounding box is centred there.
- Borders are reflected without repeating the edge pixel (numpy/torch "reflect" = scipy.ndimage "mirror").
- Differences from the authors' script: PSFs are normalised to sum 1 and images are not min-max stretched,
  any image size works, and the PSF's sample weights use the exposure time `fraction * (iters - 1)`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from .errors import DeblurGANError

EXPL_CHOICES = (0.01, 0.009, 0.008, 0.007, 0.005, 0.003)  # the authors' exposure parameters
FRACTIONS = (0.01, 0.1, 0.5, 1.0)
SCALAR_LOOP_MAX = 24  # up to this many trajectories a plain-Python step loop beats the numpy batch loop

__all__ = [
    "EXPL_CHOICES",
    "FRACTIONS",
    "add_noise",
    "blur_batch",
    "blur_image",
    "centre_psf",
    "centred_psf",
    "psf_sheet",
    "random_psfs",
    "random_trajectories",
    "random_trajectory",
    "trajectory_to_psfs",
    "trajectories_to_psfs",
]


# ----------------------------------------------------------------------------------------------- trajectories
def random_trajectory(
    rng: np.random.Generator, canvas: int = 64, iters: int = 2000, max_len: float = 60, expl: float | None = None
) -> np.ndarray:
    """One random camera-shake trajectory: complex positions of shape (iters,), centred on the canvas."""
    return random_trajectories(rng, 1, canvas=canvas, iters=iters, max_len=max_len, expl=expl)[0]


def random_trajectories(
    rng: np.random.Generator,
    n: int,
    canvas: int = 64,
    iters: int = 2000,
    max_len: float = 60,
    expl: float | None = None,
) -> np.ndarray:
    """`n` independent trajectories, shape (n, iters), complex128 (real = column, imag = row).

    Algorithm 1 of the paper with the authors' parameters: per trajectory a centripetal pull 0.7*U, a big-shake
    probability 0.2*U (times `expl`), a gaussian shake 10*U and a uniform initial angle; each step the velocity
    is renormalised so the path length is `max_len`. `expl=None` draws it from EXPL_CHOICES per trajectory.
    All random numbers are drawn up front, so the result does not depend on which loop runs it.
    """
    _check_trajectory_args(n, canvas, iters, max_len, expl)
    if expl is None:
        expls = rng.choice(np.asarray(EXPL_CHOICES), size=n)
    else:
        expls = np.full(n, float(expl))
    params = rng.random((n, 4))
    u_big = rng.random((n, iters - 1))
    u_angle = rng.random((n, iters - 1))
    noise = rng.standard_normal((n, iters - 1, 2))

    centripetal = 0.7 * params[:, 0]
    p_big = 0.2 * params[:, 1] * expls
    shake = (10.0 * params[:, 2])[:, None] * (noise[..., 0] + 1j * noise[..., 1])  # gaussian term, (n, iters-1)
    angle = np.deg2rad(360.0 * params[:, 3])
    step = max_len / (iters - 1)
    v0 = np.cos(angle) + 1j * np.sin(angle)
    v0 = np.where(expls > 0, v0 * expls, v0 * step)
    big = u_big < p_big[:, None]
    # Abrupt, roughly reversing, change of direction; computed only where a big shake happens.
    turn = np.zeros(big.shape, dtype=np.complex128)
    turn[big] = np.exp(1j * (np.pi + (u_angle[big] - 0.5)))
    drift = (expls * step)[:, None] * shake  # the gaussian part of the velocity change
    pull = expls * step * centripetal  # the centripetal part, times the position

    if n <= SCALAR_LOOP_MAX:
        x = np.stack([_walk_scalar(v0[i], big[i], turn[i], drift[i], pull[i], step) for i in range(n)])
    else:
        x = _walk_batched(v0, big, turn, drift, pull, step)
    return _centre(x, canvas)


def _walk_scalar(v, big, turn, drift, pull, step) -> np.ndarray:
    # Plain Python complex arithmetic: several times cheaper per step than numpy calls on length-1 arrays.
    v, pull, step = complex(v), float(pull), float(step)
    kicks = [None] * len(drift)
    for t in np.flatnonzero(big).tolist():
        kicks[t] = 2 * complex(turn[t])
    last = v * (step / abs(v)) if v else complex(step)  # the direction kept if a step ever cancels the velocity
    x = 0j
    xs = [x]
    for d, k in zip(drift.tolist(), kicks, strict=True):
        if k is not None:
            v = v + v * k
        v = v + (d - pull * x)
        a = abs(v)
        if a:
            v = last = v * (step / a)
        else:
            v = last
        x = x + v
        xs.append(x)
    return np.asarray(xs, dtype=np.complex128)


def _walk_batched(v, big, turn, drift, pull, step) -> np.ndarray:
    n, steps = drift.shape
    xs = np.zeros((n, steps + 1), dtype=np.complex128)
    x = np.zeros(n, dtype=np.complex128)
    v = v.astype(np.complex128)
    a = np.abs(v)
    last = np.where(a > 0, v * (step / np.where(a > 0, a, 1)), step + 0j)
    kicks = 2 * turn
    any_kick = big.any(axis=0).tolist()
    for t in range(steps):
        if any_kick[t]:
            v = v + np.where(big[:, t], v * kicks[:, t], 0)
        v = v + (drift[:, t] - pull * x)
        a = np.abs(v)
        if a.all():
            v = last = v * (step / a)
        else:
            v = last = np.where(a > 0, v * (step / np.where(a > 0, a, 1)), last)
        x = x + v
        xs[:, t + 1] = x
    return xs


def _centre(x: np.ndarray, canvas: int) -> np.ndarray:
    """Shift each path so its bounding box is centred on the PSF origin (canvas // 2, canvas // 2)."""
    lo = x.real.min(axis=-1, keepdims=True) + 1j * x.imag.min(axis=-1, keepdims=True)
    hi = x.real.max(axis=-1, keepdims=True) + 1j * x.imag.max(axis=-1, keepdims=True)
    c = canvas // 2
    return x - (lo + hi) / 2 + (c + 1j * c)


def _check_trajectory_args(n: int, canvas: int, iters: int, max_len: float, expl: float | None) -> None:
    if n < 0:
        raise DeblurGANError(f"number of trajectories must be >= 0 (got {n})")
    if canvas < 4:
        raise DeblurGANError(f"canvas must be >= 4 pixels (got {canvas})")
    if iters < 2:
        raise DeblurGANError(f"iters must be >= 2 (got {iters})")
    # The box is centred on canvas // 2, so its half extent must fit before the last row/column.
    limit = 2 * (canvas - 1 - canvas // 2)
    if not 0 < max_len <= limit:
        raise DeblurGANError(f"max_len must be in (0, {limit}] for canvas {canvas} (got {max_len})")
    if expl is not None and not (expl == 0 or 1e-6 <= expl <= 1):  # tinier values lose the velocity's precision
        raise DeblurGANError(f"expl must be 0 or in [1e-6, 1] (got {expl})")


# ----------------------------------------------------------------------------------------------- PSFs
def trajectory_to_psfs(trajectory: np.ndarray, canvas: int = 64, fractions: Sequence[float] = FRACTIONS) -> np.ndarray:
    """PSFs of one trajectory: (len(fractions), canvas, canvas) float32, each summing to 1.

    PSF j integrates the bilinearly splatted positions over the first `fractions[j]` of the exposure.
    """
    trajectory = np.asarray(trajectory)
    if trajectory.ndim != 1:
        raise DeblurGANError(f"a trajectory is a 1-D complex array (got shape {trajectory.shape})")
    return trajectories_to_psfs(trajectory[None], canvas, fractions)[0]


def trajectories_to_psfs(
    trajectories: np.ndarray, canvas: int = 64, fractions: Sequence[float] = FRACTIONS
) -> np.ndarray:
    """Batched `trajectory_to_psfs`: (n, iters) complex -> (n, len(fractions), canvas, canvas) float32."""
    traj = np.asarray(trajectories, dtype=np.complex128)
    if traj.ndim != 2 or traj.shape[1] < 2:
        raise DeblurGANError(f"trajectories must have shape (n, iters >= 2) (got {traj.shape})")
    fr = _check_fractions(fractions)
    n, iters = traj.shape
    cols, rows = traj.real, traj.imag
    if not np.isfinite(traj).all():
        raise DeblurGANError("trajectory has non-finite positions")
    if n and (min(cols.min(), rows.min()) < 0 or max(cols.max(), rows.max()) > canvas - 1):
        raise DeblurGANError(
            f"trajectory leaves the {canvas}x{canvas} canvas (positions must lie in [0, {canvas - 1}])"
        )

    # Bilinear (triangle) splat: each sample spreads over its 4 neighbouring pixels.
    c0 = np.minimum(np.floor(cols), canvas - 2).astype(np.int64)
    r0 = np.minimum(np.floor(rows), canvas - 2).astype(np.int64)
    fc, frow = cols - c0, rows - r0
    base = np.arange(n, dtype=np.int64)[:, None] * canvas * canvas + r0 * canvas + c0
    idx = np.stack([base, base + 1, base + canvas, base + canvas + 1])  # (4, n, iters)
    corner = np.stack([(1 - fc) * (1 - frow), fc * (1 - frow), (1 - fc) * frow, fc * frow])

    # Sample t stands for the time interval [t-1, t]; exposure fraction f ends at time f * (iters - 1).
    # Splat only the samples of each interval between consecutive fractions, then accumulate over time.
    ends = np.asarray(fr) * (iters - 1)
    starts = np.concatenate([[0.0], ends[:-1]])
    out = np.empty((len(fr), n * canvas * canvas))
    for j, (a, b) in enumerate(zip(starts, ends, strict=True)):
        t = np.arange(max(1, math.floor(a)), min(iters - 1, math.ceil(b) + 1) + 1)
        w = np.clip(np.minimum(t, b) - np.maximum(t - 1, a), 0.0, None)
        out[j] = np.bincount(idx[:, :, t].ravel(), (corner[:, :, t] * w).ravel(), minlength=n * canvas * canvas)
    for j in range(1, len(fr)):
        out[j] += out[j - 1]
    out = out.reshape(len(fr), n, canvas, canvas).transpose(1, 0, 2, 3)
    out /= out.sum(axis=(2, 3), keepdims=True)
    return out.astype(np.float32)


def random_psfs(
    rng: np.random.Generator,
    n: int,
    canvas: int = 64,
    iters: int = 2000,
    max_len: float = 60,
    expl: float | None = None,
    fractions: Sequence[float] = FRACTIONS,
) -> np.ndarray:
    """PSFs of `n` fresh random trajectories: (n, len(fractions), canvas, canvas) float32."""
    traj = random_trajectories(rng, n, canvas=canvas, iters=iters, max_len=max_len, expl=expl)
    return trajectories_to_psfs(traj, canvas, fractions)


def centre_psf(psf: np.ndarray) -> np.ndarray:
    """The PSF moved (bilinear, sub-pixel) so its centroid sits on the origin (canvas // 2, canvas // 2).

    Trajectories are centred by their bounding box, not their mass, so a PSF (most of all a short exposure's) also
    translates the image by its centroid: no deblurring can infer that shift from the blurred frame, and PSNR/SSIM
    punish it as if it were blur. Mass moved past the canvas edge is dropped and the PSF renormalised to sum 1
    (`centred_psf` pads first so that none is).
    """
    psf = np.asarray(psf, dtype=np.float64)
    k = psf.shape[-1]
    yy, xx = np.mgrid[:k, :k]
    total = psf.sum()
    dy, dx = k // 2 - (psf * yy).sum() / total, k // 2 - (psf * xx).sum() / total
    iy, ix = int(np.floor(dy)), int(np.floor(dx))
    fy, fx = dy - iy, dx - ix
    out = np.zeros_like(psf)
    for sy, sx, w in ((iy, ix, (1 - fy) * (1 - fx)), (iy + 1, ix, fy * (1 - fx)), (iy, ix + 1, (1 - fy) * fx),
                      (iy + 1, ix + 1, fy * fx)):  # fmt: skip
        if w == 0 or abs(sy) >= k or abs(sx) >= k:
            continue
        src = psf[max(0, -sy) : k - max(0, sy), max(0, -sx) : k - max(0, sx)]
        out[max(0, sy) : max(0, sy) + src.shape[0], max(0, sx) : max(0, sx) + src.shape[1]] += w * src
    return out / out.sum()


def centred_psf(psf: np.ndarray) -> np.ndarray:
    """`centre_psf` on a padded canvas (no mass lost), trimmed to the smallest odd square around the origin."""
    k = psf.shape[-1]
    out = centre_psf(np.pad(np.asarray(psf, dtype=np.float64), k // 2))
    c = out.shape[-1] // 2
    nz = np.argwhere(out > 1e-12 * out.max())
    r = int(np.abs(nz - c).max()) if len(nz) else 0
    return out[c - r : c + r + 1, c - r : c + r + 1].astype(np.float32)


def _check_fractions(fractions: Sequence[float]) -> list[float]:
    fr = [float(f) for f in fractions]
    if not fr or any(not 0 < f <= 1 for f in fr) or any(b <= a for a, b in zip(fr[:-1], fr[1:], strict=True)):
        raise DeblurGANError(f"fractions must be increasing values in (0, 1] (got {list(fractions)})")
    return fr


# ----------------------------------------------------------------------------------------------- blurring
def blur_image(
    image: np.ndarray,
    psf: np.ndarray,
    gamma: float | None = None,
    noise_std: float = 0.0,
    poisson_peak: float | None = None,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Blur an HxW or HxWxC image with one PSF ('same' size, reflected borders), channel by channel.

    Float images are taken as [0, 1]; uint8/uint16 are scaled by their maximum. Returns float32 (float64 stays
    float64) in [0, 1]. `gamma` (e.g. 2.2) blurs in linear light; noise (gaussian `noise_std`, and/or Poisson
    with `poisson_peak` photons at white) is added in the same light as the blur, then values are clipped.
    """
    img = _as_float_image(image)
    psf = np.asarray(psf)
    if psf.ndim != 2:
        raise DeblurGANError(f"a PSF is a 2-D array (got shape {psf.shape})")
    x = torch.from_numpy(np.ascontiguousarray(img if img.ndim == 3 else img[..., None])).permute(2, 0, 1)[None]
    k = torch.from_numpy(np.ascontiguousarray(psf, dtype=img.dtype))[None]
    gen = None
    if noise_std or poisson_peak:
        seed = (rng if rng is not None else np.random.default_rng()).integers(2**63)
        gen = torch.Generator().manual_seed(int(seed))
    y = blur_batch(x, k, gamma=gamma, noise_std=noise_std, poisson_peak=poisson_peak, generator=gen)
    y = y[0].permute(1, 2, 0).numpy()
    return y if img.ndim == 3 else y[..., 0]


def blur_batch(
    images: torch.Tensor,
    psfs: torch.Tensor,
    gamma: float | None = None,
    noise_std: float = 0.0,
    poisson_peak: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Blur (B, C, H, W) images in [0, 1] with (B, k, k) or (k, k) PSFs via FFT, on the images' device.

    Same convention as `blur_image`; PSFs are trimmed to their support first (symmetrically about the origin,
    so nothing shifts). Noise and gamma as in `blur_image`; `generator` seeds the noise.
    """
    if images.ndim != 4 or not images.is_floating_point():
        raise DeblurGANError(f"images must be a float (B, C, H, W) tensor (got {tuple(images.shape)}, {images.dtype})")
    if psfs.ndim == 2:
        psfs = psfs.expand(images.shape[0], -1, -1)
    if psfs.ndim != 3 or psfs.shape[0] != images.shape[0] or psfs.shape[1] != psfs.shape[2]:
        raise DeblurGANError(f"psfs must be (B, k, k) with B = {images.shape[0]} (got {tuple(psfs.shape)})")
    psfs = _trim(psfs.to(device=images.device, dtype=images.dtype))
    x = images.clamp(0, 1) ** gamma if gamma else images
    y = _fft_conv_reflect(x, psfs)
    if noise_std or poisson_peak:
        y = add_noise(y, noise_std, poisson_peak, generator)
    y = y.clamp(0, 1)
    return y ** (1.0 / gamma) if gamma else y


def add_noise(
    images: torch.Tensor,
    noise_std: float = 0.0,
    poisson_peak: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Poisson shot noise (`poisson_peak` photons at value 1) then gaussian noise of std `noise_std`."""
    if noise_std < 0 or (poisson_peak is not None and poisson_peak <= 0):
        raise DeblurGANError("noise_std must be >= 0 and poisson_peak > 0")
    y = images
    on = generator.device if generator is not None else y.device  # draw where the generator lives
    if poisson_peak:
        rates = (y.clamp(min=0) * poisson_peak).to(on)
        y = (torch.poisson(rates, generator=generator) / poisson_peak).to(images.device)
    if noise_std:
        y = y + noise_std * torch.randn(y.shape, generator=generator, dtype=y.dtype, device=on).to(y.device)
    return y


def _trim(psfs: torch.Tensor) -> torch.Tensor:
    """Crop (B, k, k) kernels to the smallest window, symmetric about the origin k//2, that holds all support."""
    k = psfs.shape[-1]
    nz = (psfs != 0).any(dim=0)
    if not bool(nz.any()):
        raise DeblurGANError("PSF is all zeros")
    rows = torch.nonzero(nz.any(dim=1)).flatten()
    cols = torch.nonzero(nz.any(dim=0)).flatten()
    c = k // 2
    r = int(max(c - rows.min(), rows.max() - c, c - cols.min(), cols.max() - c))
    lo, hi = c - r, min(k, c + r + 1)  # hi may be k for even k (no element at c + r beyond the array)
    return psfs[:, lo:hi, lo:hi] if (lo, hi) != (0, k) else psfs


def _reflect_index(n: int, before: int, after: int, device: torch.device) -> torch.Tensor:
    """Indices that pad a length-n axis by reflection (no edge repeat), for any pad width."""
    i = torch.arange(-before, n + after, device=device)
    if n == 1:
        return torch.zeros_like(i)
    period = 2 * (n - 1)
    i = torch.remainder(i, period)
    return torch.where(i >= n, period - i, i)


def _fft_conv_reflect(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    b, ch, h, w = x.shape
    ks = k.shape[-1]
    c = ks // 2  # origin; valid convolution of the padded image needs ks-1-c pixels before and c after
    before, after = ks - 1 - c, c
    xp = x.index_select(2, _reflect_index(h, before, after, x.device))
    xp = xp.index_select(3, _reflect_index(w, before, after, x.device))
    fh, fw = _fast_len(xp.shape[2]), _fast_len(xp.shape[3])
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    fx = torch.fft.rfft2(xp.to(compute), s=(fh, fw))
    fk = torch.fft.rfft2(k.to(compute), s=(fh, fw))[:, None]
    y = torch.fft.irfft2(fx * fk, s=(fh, fw))
    return y[:, :, ks - 1 : ks - 1 + h, ks - 1 : ks - 1 + w].to(x.dtype).contiguous()


def _fast_len(n: int) -> int:
    """Smallest 2^a 3^b 5^c >= n (FFT-friendly)."""
    best = 1 << (n - 1).bit_length()
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            m = p35
            while m < n:
                m *= 2
            best = min(best, m)
            p35 *= 3
        p5 *= 5
    return best


def _as_float_image(image: np.ndarray) -> np.ndarray:
    img = np.asarray(image)
    if img.ndim not in (2, 3):
        raise DeblurGANError(f"an image is HxW or HxWxC (got shape {img.shape})")
    if img.dtype == np.uint8 or img.dtype == np.uint16:
        return img.astype(np.float32) / np.iinfo(img.dtype).max
    if img.dtype == np.float64:
        return img
    if np.issubdtype(img.dtype, np.floating):
        return img.astype(np.float32)
    raise DeblurGANError(f"unsupported image dtype {img.dtype} (use float in [0, 1], uint8 or uint16)")


def psf_sheet(psfs: np.ndarray, cols: int = 8, pad: int = 2) -> np.ndarray:
    """A uint8 contact sheet of (N, k, k) PSFs, each scaled to its own maximum, for people to look at."""
    psfs = np.asarray(psfs, dtype=np.float64)
    n, k = psfs.shape[0], psfs.shape[-1]
    cols = max(1, min(cols, n))
    rows = max(1, math.ceil(n / cols))
    sheet = np.zeros((rows * (k + pad) + pad, cols * (k + pad) + pad), dtype=np.uint8)
    for i, p in enumerate(psfs):
        r, c = divmod(i, cols)
        peak = p.max()
        tile = (255 * np.sqrt(p / peak)) if peak > 0 else p  # sqrt: faint tails stay visible
        y, x = pad + r * (k + pad), pad + c * (k + pad)
        sheet[y : y + k, x : x + k] = np.clip(tile, 0, 255).astype(np.uint8)
    return sheet
