"""Image files as FashionMNIST sees its garments: grayscale, trimmed to the garment, letterboxed to a square with
the background's colour (never squashed), 28 x 28, a light garment on a dark background."""

from __future__ import annotations

from pathlib import Path

import numpy as np

SIDE = 28
# How far from the background's intensity a pixel must be to count as garment (photos have noisy backgrounds).
GARMENT_CONTRAST = 0.1


def background_of(pixels: np.ndarray) -> float:
    """The background's intensity: the median of the outermost pixel ring (a garment that touches the edge does
    not move it); above 0.5 means a light background (a photo on white)."""
    ring = np.concatenate([pixels[0], pixels[-1], pixels[1:-1, 0], pixels[1:-1, -1]])
    return float(np.median(ring))


def trimmed(pixels: np.ndarray, background: float) -> np.ndarray:
    """The smallest box holding every pixel that differs from the background (the whole image if none does)."""
    rows, cols = np.nonzero(np.abs(pixels - background) > GARMENT_CONTRAST)
    if len(rows) == 0:
        return pixels
    return pixels[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]


def letterboxed(pixels: np.ndarray, background: float) -> np.ndarray:
    """The image centred on a square of the background's intensity: its aspect ratio kept."""
    height, width = pixels.shape
    side = max(height, width)
    square = np.full((side, side), background, dtype=np.float32)
    top, left = (side - height) // 2, (side - width) // 2
    square[top : top + height, left : left + width] = pixels
    return square


def resized(pixels: np.ndarray) -> np.ndarray:
    """A square image scaled to SIDE x SIDE (Lanczos: sharp when shrinking a photo)."""
    from PIL import Image

    image = Image.fromarray(np.round(pixels * 255).astype(np.uint8))
    return np.asarray(image.resize((SIDE, SIDE), Image.Resampling.LANCZOS), dtype=np.float32) / 255.0


def read_image(path: Path, invert: str = "auto") -> np.ndarray:
    """An image file of any size or colour mode as float32 (1, 28, 28) in [0, 1], like a FashionMNIST image:
    trimmed to the garment, letterboxed, resized; inverted when `invert` is yes, or auto and the background is
    light (a photo on white)."""
    from PIL import Image

    with Image.open(path) as image:
        pixels = np.asarray(image.convert("L"), dtype=np.float32) / 255.0
    background = background_of(pixels)
    square = resized(letterboxed(trimmed(pixels, background), background))
    if invert == "yes" or (invert == "auto" and background > 0.5):
        square = 1.0 - square
    return square[None]
