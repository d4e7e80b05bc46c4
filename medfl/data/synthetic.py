"""Synthetic chest X-rays for the demo and the tests: deterministic by seed, non-IID by site.

Each image has a bright thorax, two dark lung fields, the mediastinum and spine, and curved
ribs; the positive class (pneumonia) adds focal opacities (one to three blobs inside a lung) or
a diffuse haze over a lower lobe. Normal images carry faint vessel-like blobs, so the task needs
shape and extent, not just brightness. Each hospital has its own scanner and population
(:class:`SiteShift`: contrast, brightness, noise, blur, class balance), which makes a federation
on this data non-IID.
"""

from __future__ import annotations

import pathlib
from dataclasses import dataclass

import numpy as np

__all__ = ["SiteShift", "generate", "hospital_shifts", "write_image_folder"]

CLASS_NAMES = ("NORMAL", "PNEUMONIA")


@dataclass(frozen=True)
class SiteShift:
    """A hospital's acquisition and population differences."""

    contrast: float = 1.0
    brightness: float = 0.0
    noise_std: float = 0.04
    blur: float = 0.0
    positive_fraction: float = 0.5


def hospital_shifts(n_sites: int, *, seed: int) -> list[SiteShift]:
    """Distinct site shifts for ``n_sites`` hospitals (deterministic by seed).

    Parameters
    ----------
    n_sites : int
        Number of hospitals.
    seed : int
        Seed of the draw.
    """
    rng = np.random.default_rng([seed, 0x5173])
    out = []
    for i in range(n_sites):
        out.append(SiteShift(
            contrast=float(rng.uniform(0.75, 1.25)),
            brightness=float(rng.uniform(-0.08, 0.08)),
            noise_std=float(rng.uniform(0.02, 0.07)),
            blur=float(rng.choice([0.0, 0.6, 1.2])),
            positive_fraction=float([0.35, 0.6, 0.5, 0.45][i % 4] + rng.uniform(-0.05, 0.05)),
        ))
    return out


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    if sigma <= 0:
        return img
    radius = max(1, int(3 * sigma))
    x = np.arange(-radius, radius + 1)
    k = np.exp(-(x ** 2) / (2 * sigma ** 2))
    k /= k.sum()
    img = np.apply_along_axis(lambda r: np.convolve(r, k, mode="same"), 1, img)
    return np.apply_along_axis(lambda c: np.convolve(c, k, mode="same"), 0, img)


def _one(rng: np.random.Generator, positive: bool, s: int, shift: SiteShift) -> np.ndarray:
    y, x = np.mgrid[-1:1:complex(0, s), -1:1:complex(0, s)]
    body = np.clip(1 - (x / 0.92) ** 2 - (y / 1.15) ** 2, 0, 1) ** 0.4 * 0.75
    img = 0.08 + body
    lungs = np.zeros_like(x)
    centers = []
    for side in (-1, 1):
        cx = side * (0.36 + rng.uniform(-0.04, 0.04))
        cy = -0.08 + rng.uniform(-0.05, 0.05)
        rx, ry = 0.27 + rng.uniform(-0.03, 0.03), 0.55 + rng.uniform(-0.05, 0.05)
        r = np.sqrt(((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2)
        lungs = np.maximum(lungs, 1 / (1 + np.exp((r - 1) / 0.07)))
        centers.append((cx, cy, rx, ry))
    img -= 0.42 * lungs
    img += 0.22 * np.exp(-(x / 0.11) ** 2) * (y > -0.85)
    for k in range(9):
        yk = -0.75 + k * 0.17 + rng.uniform(-0.02, 0.02)
        curve = yk + 0.18 * x ** 2
        img += 0.09 * np.exp(-((y - curve) / 0.025) ** 2) * (np.abs(x) < 0.8) * (0.4 + lungs)
    for _ in range(rng.integers(2, 6)):  # vessels and nodules that are not pneumonia
        cx, cy, rx, ry = centers[rng.integers(2)]
        bx, by = cx + rng.uniform(-0.6, 0.6) * rx, cy + rng.uniform(-0.6, 0.6) * ry
        rad = rng.uniform(0.03, 0.07)
        img += rng.uniform(0.03, 0.10) * np.exp(-((x - bx) ** 2 + (y - by) ** 2) / (2 * rad ** 2)) * lungs
    if positive:
        if rng.random() < 0.55:  # focal consolidation
            for _ in range(rng.integers(1, 4)):
                cx, cy, rx, ry = centers[rng.integers(2)]
                bx, by = cx + rng.uniform(-0.55, 0.55) * rx, cy + rng.uniform(-0.5, 0.6) * ry
                rad = rng.uniform(0.08, 0.17)
                img += rng.uniform(0.07, 0.30) * np.exp(-((x - bx) ** 2 + (y - by) ** 2) / (2 * rad ** 2)) * lungs
        else:  # diffuse lower-lobe haze
            cx, cy, rx, ry = centers[rng.integers(2)]
            lower = 1 / (1 + np.exp(-(y - (cy + 0.1 * ry)) / 0.12))
            side = 1 / (1 + np.exp(-np.sign(cx) * (x - 0.0) / 0.05))
            haze = _blur(rng.normal(0, 1, x.shape), 2.0 * s / 64)
            img += (rng.uniform(0.06, 0.24) + 0.05 * haze) * lungs * lower * side
    low = _blur(rng.normal(0, 1, x.shape), 4.0 * s / 64)
    img += 0.03 * low
    img = _blur(img, shift.blur * s / 64)
    img = (img - 0.4) * shift.contrast + 0.4 + shift.brightness
    img += rng.normal(0, shift.noise_std, x.shape)
    return np.clip(img, 0, 1).astype(np.float32)


def generate(n: int, *, seed: int, image_size: int = 64, shift: SiteShift | None = None
             ) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``n`` labelled images.

    Parameters
    ----------
    n : int
        Number of images.
    seed : int
        Seed; the same seed gives the same images.
    image_size : int
        Side in pixels.
    shift : SiteShift, optional
        The hospital's shift (default: none, balanced classes).

    Returns
    -------
    images : ndarray, float32, shape (n, 1, image_size, image_size), values in [0, 1]
    labels : ndarray, int64, shape (n,), 1 = pneumonia
    """
    if n < 0 or image_size < 16:
        raise ValueError(f"need n >= 0 and image_size >= 16, got n={n}, image_size={image_size}")
    shift = shift or SiteShift()
    rng = np.random.default_rng([seed, 0xC0FFEE])
    labels = (rng.random(n) < shift.positive_fraction).astype(np.int64)
    images = np.empty((n, 1, image_size, image_size), np.float32)
    for i in range(n):
        images[i, 0] = _one(rng, bool(labels[i]), image_size, shift)
    return images, labels


def write_image_folder(root: str | pathlib.Path, *, n_train: int, n_val: int, n_test: int, seed: int,
                       image_size: int = 64, shift: SiteShift | None = None) -> pathlib.Path:
    """Write 8-bit PNGs in the pediatric-pneumonia layout: root/{train,val,test}/{NORMAL,PNEUMONIA}.

    Parameters
    ----------
    root : str or Path
        Destination folder.
    n_train, n_val, n_test : int
        Images per split (a split with 0 images is not written).
    seed : int
        Seed of the draw.
    image_size : int
        Side in pixels.
    shift : SiteShift, optional
        The hospital's shift.
    """
    from PIL import Image

    root = pathlib.Path(root)
    for k, (split, n) in enumerate((("train", n_train), ("val", n_val), ("test", n_test))):
        if n <= 0:
            continue
        images, labels = generate(n, seed=seed * 7 + k, image_size=image_size, shift=shift)
        for c in CLASS_NAMES:
            (root / split / c).mkdir(parents=True, exist_ok=True)
        for i, (img, lab) in enumerate(zip(images, labels, strict=True)):
            Image.fromarray((img[0] * 255).round().astype(np.uint8), mode="L").save(
                root / split / CLASS_NAMES[lab] / f"{split}-{i:05d}.png")
    return root
