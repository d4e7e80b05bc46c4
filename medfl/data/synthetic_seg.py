"""Synthetic segmentation data: multi-modal brain-like MR volumes and liver-like CT slices.

Deterministic by seed and non-IID by site, for the demo, the tests and the benchmarks, with the
layouts of the two public challenges this issue targets:

- **brain** (BraTS-like): four co-registered sequences (t1, t1ce, t2, flair) of a head with a
  skull, grey/white matter and ventricles, and a tumour with three sub-regions as BraTS labels
  them: 1 necrotic core, 2 peritumoural oedema, 4 enhancing tumour (label 3 is unused in BraTS;
  loaders map 4 -> 3 so classes are contiguous). Each sub-region has its own contrast in each
  sequence, as in the BraTS description (oedema bright on flair/t2, enhancing rim bright on
  t1ce, necrosis dark on t1ce), so the task needs several sequences.
- **liver** (MSD Task03-like): axial abdominal CT slices in Hounsfield units with the body,
  spine, kidneys and a liver, and 0-3 hypodense lesions; labels 0 background, 1 liver, 2 lesion.

Sites differ by contrast, noise and intensity offset (acquisition) and by tumour size and
prevalence (population), through :class:`medfl.data.synthetic.SiteShift`.

References
----------
.. [1] B. H. Menze et al., "The Multimodal Brain Tumor Image Segmentation Benchmark (BRATS)",
   IEEE TMI 34(10), 2015 (sub-regions, sequences, labels 1/2/4).
.. [2] M. Antonelli et al., "The Medical Segmentation Decathlon", Nature Communications 13, 2022
   (Task01 BrainTumour and Task03 Liver layouts).
"""

from __future__ import annotations

import json
import pathlib

import numpy as np

from medfl.data.synthetic import SiteShift

__all__ = ["BRATS_LABELS", "MODALITIES", "brain_volumes", "liver_slices", "write_brats", "write_msd"]

#: BraTS sequence names, in the channel order medfl uses.
MODALITIES = ("t1", "t1ce", "t2", "flair")
#: BraTS label values on disk -> medfl's contiguous classes.
BRATS_LABELS = {0: 0, 1: 1, 2: 2, 4: 3}

# intensity of each tissue in each sequence (t1, t1ce, t2, flair), roughly as MR shows them
_TISSUE = {
    "csf": (0.15, 0.15, 0.95, 0.10),
    "grey": (0.55, 0.55, 0.60, 0.55),
    "white": (0.75, 0.75, 0.45, 0.45),
    "skull": (0.85, 0.85, 0.30, 0.30),
    "oedema": (0.45, 0.45, 0.85, 0.95),
    "enhancing": (0.55, 1.00, 0.70, 0.70),
    "necrosis": (0.25, 0.20, 0.90, 0.50),
}


def _check(n: int, size: int, least: int, what: str) -> None:
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"{what}: n must be an integer >= 0, got {n!r}")
    if not isinstance(size, int) or size < least:
        raise ValueError(f"{what}: size must be an integer >= {least}, got {size!r}")


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], scale: int) -> np.ndarray:
    """Unit-variance noise varying over about ``scale`` voxels (a coarse grid, zoomed and smoothed)."""
    from scipy import ndimage

    coarse = rng.normal(0, 1, tuple(max(2, s // scale + 1) for s in shape))
    up = ndimage.zoom(coarse, [s / c for s, c in zip(shape, coarse.shape, strict=True)], order=1)
    up = ndimage.gaussian_filter(up[tuple(slice(0, s) for s in shape)], sigma=max(0.5, scale / 4))
    return up / (up.std() + 1e-8)


def _one_brain(rng: np.random.Generator, s: int, shift: SiteShift) -> tuple[np.ndarray, np.ndarray]:
    z, y, x = np.mgrid[-1:1:complex(0, s), -1:1:complex(0, s), -1:1:complex(0, s)]
    head = (x / 0.85) ** 2 + (y / 0.95) ** 2 + (z / 0.8) ** 2
    brain = head < 0.78
    skull = (head >= 0.82) & (head < 1.0)
    wobble = 0.12 * _smooth_noise(rng, (s, s, s), max(2, s // 4))
    white = brain & ((x / 0.55) ** 2 + (y / 0.7) ** 2 + (z / 0.5) ** 2 + wobble < 0.6)
    ventricles = brain & (((np.abs(x) - 0.12) / 0.08) ** 2 + (y / 0.3) ** 2 + (z / 0.18) ** 2 < 1)
    labels = np.zeros((s, s, s), np.int64)
    tumour = rng.random() < shift.positive_fraction + 0.4  # most BraTS-like cases carry a tumour
    if tumour:
        # centre inside a hemisphere, radius from the site's population (larger where positive_fraction is high)
        cx, cy, cz = rng.uniform(0.2, 0.45) * rng.choice([-1, 1]), rng.uniform(-0.35, 0.35), rng.uniform(-0.3, 0.3)
        r = rng.uniform(0.2, 0.3) * (0.8 + 0.6 * shift.positive_fraction)
        irregular = 0.25 * _smooth_noise(rng, (s, s, s), max(2, s // 6))
        d = np.sqrt(((x - cx) / 1.1) ** 2 + (y - cy) ** 2 + ((z - cz) / 0.9) ** 2) / r + 0.15 * irregular
        labels[(d < 2.0) & brain] = 2  # oedema around the core
        labels[(d < 1.0) & brain] = 4  # enhancing rim
        labels[(d < 0.6) & brain] = 1  # necrotic core
    vol = np.zeros((4, s, s, s), np.float32)
    for c in range(4):
        img = np.zeros((s, s, s))
        img[skull] = _TISSUE["skull"][c]
        img[brain] = _TISSUE["grey"][c]
        img[white] = _TISSUE["white"][c]
        img[ventricles] = _TISSUE["csf"][c]
        img[labels == 2] = _TISSUE["oedema"][c]
        img[labels == 4] = _TISSUE["enhancing"][c]
        img[labels == 1] = _TISSUE["necrosis"][c]
        bias = 1 + 0.08 * _smooth_noise(rng, (s, s, s), max(2, s // 2))  # scanner bias field
        img = img * bias
        img = (img - 0.5) * shift.contrast + 0.5 + shift.brightness
        img = img + rng.normal(0, shift.noise_std, img.shape)
        img[~(brain | skull)] = rng.normal(0, shift.noise_std / 4, int((~(brain | skull)).sum()))
        vol[c] = np.clip(img, 0, None)
    return vol, labels


def brain_volumes(n: int, *, seed: int, size: int = 32, shift: SiteShift | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``n`` four-sequence head volumes with BraTS-labelled tumours.

    Parameters
    ----------
    n : int
        Number of cases.
    seed : int
        The same seed gives the same cases.
    size : int
        Side of the cubic volume in voxels (>= 16).
    shift : SiteShift, optional
        The site's acquisition and population.

    Returns
    -------
    images : ndarray, float32, (n, 4, size, size, size), channels in :data:`MODALITIES` order
    labels : ndarray, int64, (n, size, size, size), BraTS values 0, 1, 2, 4
    """
    _check(n, size, 16, "brain_volumes")
    shift = shift or SiteShift()
    rng = np.random.default_rng([seed, 0xB4A15])
    images = np.empty((n, 4, size, size, size), np.float32)
    labels = np.empty((n, size, size, size), np.int64)
    for i in range(n):
        images[i], labels[i] = _one_brain(rng, size, shift)
    return images, labels


def _one_liver(rng: np.random.Generator, s: int, shift: SiteShift) -> tuple[np.ndarray, np.ndarray]:
    y, x = np.mgrid[-1:1:complex(0, s), -1:1:complex(0, s)]
    hu = np.full((s, s), -1000.0)  # air
    body = (x / 0.9) ** 2 + (y / 0.7) ** 2 < 1
    hu[body] = -80  # fat
    muscle = body & ((x / 0.82) ** 2 + (y / 0.62) ** 2 > 0.85)
    hu[muscle] = 50
    spine = (x / 0.09) ** 2 + ((y - 0.5) / 0.09) ** 2 < 1
    hu[spine] = 700
    for side in (-1, 1):
        kidney = ((x - side * 0.3) / 0.1) ** 2 + ((y - 0.35) / 0.15) ** 2 < 1
        hu[kidney] = 150
    wobble = 0.15 * _smooth_noise(rng, (s, s), max(2, s // 4))
    cx, cy = -0.3 + rng.uniform(-0.05, 0.05), -0.05 + rng.uniform(-0.05, 0.05)
    liver = body & (((x - cx) / 0.42) ** 2 + ((y - cy) / 0.38) ** 2 + wobble < 1) & ~spine
    hu[liver] = 60 + rng.uniform(-10, 10)
    labels = np.zeros((s, s), np.int64)
    labels[liver] = 1
    n_lesions = int(rng.binomial(3, min(0.95, shift.positive_fraction)))
    for _ in range(n_lesions):
        lx, ly = cx + rng.uniform(-0.25, 0.25), cy + rng.uniform(-0.2, 0.2)
        r = rng.uniform(0.04, 0.1) * (0.8 + 0.6 * shift.positive_fraction)
        lesion = liver & (((x - lx) ** 2 + (y - ly) ** 2) < r ** 2)
        hu[lesion] = 20 + rng.uniform(-10, 10)  # hypodense
        labels[lesion] = 2
    hu = hu * shift.contrast + 200 * shift.brightness
    hu = hu + rng.normal(0, 250 * shift.noise_std, hu.shape)
    return hu.astype(np.float32), labels


def liver_slices(n: int, *, seed: int, size: int = 64, shift: SiteShift | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``n`` axial CT slices (Hounsfield units) with liver and lesion labels.

    Returns
    -------
    images : ndarray, float32, (n, 1, size, size), HU
    labels : ndarray, int64, (n, size, size): 0 background, 1 liver, 2 lesion
    """
    _check(n, size, 16, "liver_slices")
    shift = shift or SiteShift()
    rng = np.random.default_rng([seed, 0x11BE4])
    images = np.empty((n, 1, size, size), np.float32)
    labels = np.empty((n, size, size), np.int64)
    for i in range(n):
        images[i, 0], labels[i] = _one_liver(rng, size, shift)
    return images, labels


def _save_nifti(path: pathlib.Path, array: np.ndarray, spacing: tuple[float, ...]) -> None:
    import nibabel as nib

    affine = np.diag([*spacing, 1.0])
    nib.save(nib.Nifti1Image(array, affine), str(path))


def write_brats(root: str | pathlib.Path, *, n: int, seed: int, size: int = 32, shift: SiteShift | None = None,
                prefix: str = "BraTS-SYN") -> pathlib.Path:
    """Write ``n`` cases in the BraTS layout: ``<case>/<case>_{t1,t1ce,t2,flair,seg}.nii.gz``.

    Volumes are stored (x, y, z) as BraTS does, at 1 mm isotropic spacing.
    """
    root = pathlib.Path(root)
    images, labels = brain_volumes(n, seed=seed, size=size, shift=shift)
    for i in range(n):
        case = f"{prefix}-{seed:04d}-{i:03d}"
        d = root / case
        d.mkdir(parents=True, exist_ok=True)
        for c, mod in enumerate(MODALITIES):
            _save_nifti(d / f"{case}_{mod}.nii.gz", images[i, c].transpose(2, 1, 0), (1.0, 1.0, 1.0))
        _save_nifti(d / f"{case}_seg.nii.gz", labels[i].transpose(2, 1, 0).astype(np.uint8), (1.0, 1.0, 1.0))
    return root


def write_msd(root: str | pathlib.Path, *, task: str, n: int, seed: int, size: int | None = None,
              shift: SiteShift | None = None) -> pathlib.Path:
    """Write ``n`` training cases in the Medical Segmentation Decathlon layout.

    ``task`` "brain" writes Task01-like 4-D images (x, y, z, modality) with labels 0..3; "liver"
    writes Task03-like CT volumes of a few slices (x, y, z) with labels 0..2. Both come with the
    ``dataset.json`` the challenge ships (name, modality, labels, training pairs).
    """
    root = pathlib.Path(root)
    (root / "imagesTr").mkdir(parents=True, exist_ok=True)
    (root / "labelsTr").mkdir(parents=True, exist_ok=True)
    training: list[dict[str, str]] = []
    meta: dict[str, object]
    if task == "brain":
        images, labels = brain_volumes(n, seed=seed, size=size or 32, shift=shift)
        labels = np.vectorize(BRATS_LABELS.get)(labels) if labels.size else labels
        meta = {"name": "BrainTumour", "modality": {str(i): m.upper() for i, m in enumerate(("flair", "t1", "t1ce",
                                                                                            "t2"))},
                "labels": {"0": "background", "1": "edema", "2": "non-enhancing tumor", "3": "enhancing tumour"}}
        # MSD Task01 orders channels FLAIR, T1w, T1gd, T2w and labels 1 oedema, 2 non-enhancing, 3 enhancing
        order = [MODALITIES.index(m) for m in ("flair", "t1", "t1ce", "t2")]
        remap = np.array([0, 2, 1, 3])  # medfl classes (1 necrosis, 2 oedema, 3 enhancing) -> MSD values
        for i in range(n):
            name = f"BRATS_{seed:03d}{i:03d}"
            img = images[i][order].transpose(3, 2, 1, 0)  # (x, y, z, c)
            _save_nifti(root / "imagesTr" / f"{name}.nii.gz", img, (1.0, 1.0, 1.0))
            _save_nifti(root / "labelsTr" / f"{name}.nii.gz", remap[labels[i]].transpose(2, 1, 0).astype(np.uint8),
                        (1.0, 1.0, 1.0))
            training.append({"image": f"./imagesTr/{name}.nii.gz", "label": f"./labelsTr/{name}.nii.gz"})
    elif task == "liver":
        side = size or 64
        meta = {"name": "Liver", "modality": {"0": "CT"}, "labels": {"0": "background", "1": "liver", "2": "cancer"}}
        for i in range(n):
            imgs, labs = liver_slices(4, seed=seed * 1000 + i, size=side, shift=shift)
            name = f"liver_{seed:03d}{i:03d}"
            _save_nifti(root / "imagesTr" / f"{name}.nii.gz", imgs[:, 0].transpose(2, 1, 0), (0.8, 0.8, 2.5))
            _save_nifti(root / "labelsTr" / f"{name}.nii.gz", labs.transpose(2, 1, 0).astype(np.uint8),
                        (0.8, 0.8, 2.5))
            training.append({"image": f"./imagesTr/{name}.nii.gz", "label": f"./labelsTr/{name}.nii.gz"})
    else:
        raise ValueError(f"write_msd: task must be 'brain' or 'liver', got {task!r}")
    meta.update({"tensorImageSize": "4D" if task == "brain" else "3D", "numTraining": n, "numTest": 0,
                 "training": training, "test": []})
    (root / "dataset.json").write_text(json.dumps(meta, indent=2))
    return root
