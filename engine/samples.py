"""The validation sample grid: one row per image, columns blurred | restored | sharp, each labelled with its PSNR."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

LABEL_HEIGHT = 14  # pixels of the label strip above each row


def labeled_row(
    blurred: np.ndarray, restored: np.ndarray, sharp: np.ndarray, psnr_in: float, psnr_out: float
) -> np.ndarray:
    """Three HxWx3 uint8 images side by side under a strip: 'blurred NN.NN dB | restored NN.NN dB | sharp'."""
    row = np.concatenate([blurred, restored, sharp], axis=1)
    w = blurred.shape[1]
    strip = Image.new("RGB", (row.shape[1], LABEL_HEIGHT), (0, 0, 0))
    draw = ImageDraw.Draw(strip)
    font = ImageFont.load_default()
    labels = (f"blurred {psnr_in:.2f} dB", f"restored {psnr_out:.2f} dB", "sharp")
    for k, text in enumerate(labels):
        draw.text((k * w + 3, 1), text, fill=(255, 255, 255), font=font)
    return np.concatenate([np.asarray(strip), row], axis=0)


def stack_rows(rows: list[np.ndarray]) -> np.ndarray:
    """Rows of different widths stacked top to bottom (padded with black on the right)."""
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0))) for r in rows]
    return np.concatenate(rows, axis=0)
