"""The authors' motion-blur kernel generator, reimplemented step by step for comparison (speed and statistics).

Source: KupynOrest/DeblurGAN, `motion_blur/generate_trajectory.py` (class Trajectory, method fit) and
`motion_blur/generate_PSF.py` (class PSF, method fit). This is our own transcription of that per-sample Python
loop, kept deliberately unvectorised (scalar numpy random draws, one step and one splat at a time) so the
benchmark times what the authors ran. Only deviations, none of which change the timing:
- random numbers come from a numpy Generator (seedable) instead of the global `np.random` state;
- the PSF array gets one spare row/column, because the authors' clamping can index `canvas` for nearly straight
  paths (an IndexError in their script); the spare is dropped before returning.
Like the original: PSFs accumulate over the fractions and are divided by `iters` (they sum to about 1, not 1),
and the path is centred with the authors' integer offsets. Parameters are the ones the issue fixes (and the
authors' dataset script used): `expl` drawn from AUTHORS_EXPL, fractions 1/100, 1/10, 1/2, 1 (their PSF class
defaults to 1/1000 for the first one).
"""

from __future__ import annotations

import math

import numpy as np

AUTHORS_EXPL = (0.01, 0.009, 0.008, 0.007, 0.005, 0.003)


def reference_trajectory(
    rng: np.random.Generator, canvas: int = 64, iters: int = 2000, max_len: float = 60, expl: float | None = None
) -> tuple[np.ndarray, float, int]:
    """(positions, total length, number of big shakes), one Markov step at a time."""
    if expl is None:
        expl = float(rng.choice(AUTHORS_EXPL))
    tot_length = 0.0
    big_count = 0
    centripetal = 0.7 * rng.uniform(0, 1)
    prob_big_shake = 0.2 * rng.uniform(0, 1)
    gaussian_shake = 10 * rng.uniform(0, 1)
    init_angle = 360 * rng.uniform(0, 1)
    v0 = complex(np.cos(np.deg2rad(init_angle)), np.sin(np.deg2rad(init_angle)))
    v = v0 * max_len / (iters - 1)
    if expl > 0:
        v = v0 * expl
    x = np.array([0j] * iters)
    for t in range(iters - 1):
        if rng.uniform() < prob_big_shake * expl:
            next_direction = 2 * v * np.exp(complex(0, np.pi + (rng.uniform() - 0.5)))
            big_count += 1
        else:
            next_direction = 0
        dv = next_direction + expl * (
            gaussian_shake * complex(rng.standard_normal(), rng.standard_normal()) - centripetal * x[t]
        ) * (max_len / (iters - 1))
        v += dv
        v = (v / float(np.abs(v))) * (max_len / float(iters - 1))
        x[t + 1] = x[t] + v
        tot_length = tot_length + abs(x[t + 1] - x[t])
    x += complex(-np.min(x.real), -np.min(x.imag))
    x = x - complex(x[0].real % 1.0, x[0].imag % 1.0) + complex(1, 1)
    x += complex(math.ceil((canvas - max(x.real)) / 2), math.ceil((canvas - max(x.imag)) / 2))
    return x, tot_length, big_count


def reference_psfs(trajectory: np.ndarray, canvas: int = 64, fractions=(0.01, 0.1, 0.5, 1.0)) -> list[np.ndarray]:
    """One PSF per fraction, accumulated over time, with the authors' per-sample time weights and splat."""
    psf = np.zeros((canvas + 1, canvas + 1))
    iters = len(trajectory)
    out = []

    def tri(d):
        return np.maximum(0, 1 - np.abs(d))

    for j in range(len(fractions)):
        prev = 0 if j == 0 else fractions[j - 1]
        for t in range(iters):
            if fractions[j] * iters >= t and prev * iters < t - 1:
                w = 1
            elif fractions[j] * iters >= t - 1 and prev * iters < t - 1:
                w = fractions[j] * iters - (t - 1)
            elif fractions[j] * iters >= t and prev * iters < t:
                w = t - prev * iters
            elif fractions[j] * iters >= t - 1 and prev * iters < t:
                w = (fractions[j] - prev) * iters
            else:
                w = 0
            m2 = int(np.minimum(canvas - 1, np.maximum(1, math.floor(trajectory[t].real))))
            m1 = int(np.minimum(canvas - 1, np.maximum(1, math.floor(trajectory[t].imag))))
            big2, big1 = m2 + 1, m1 + 1
            re, im = trajectory[t].real, trajectory[t].imag
            psf[m1, m2] += w * tri(re - m2) * tri(im - m1)
            psf[m1, big2] += w * tri(re - big2) * tri(im - m1)
            psf[big1, m2] += w * tri(re - m2) * tri(im - big1)
            psf[big1, big2] += w * tri(re - big2) * tri(im - big1)
        out.append(psf[:canvas, :canvas] / iters)
    return out


def reference_kernel(rng: np.random.Generator, canvas: int = 64) -> list[np.ndarray]:
    """What the authors' script computes per image: one trajectory, then its 4 PSFs."""
    x, _, _ = reference_trajectory(rng, canvas=canvas)
    return reference_psfs(x, canvas=canvas)
