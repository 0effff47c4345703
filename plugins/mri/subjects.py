"""Distinct synthetic subjects from the real MNI152 template shipped in nilearn.

The template is one population-average brain, so train and test sets cut from it would share a
subject. Each synthetic subject is the template under its own seeded smooth 3D deformation (a random
displacement field, low-pass filtered, a few millimetres), a small global scaling and rotation, a
smooth multiplicative bias field and a gamma change of contrast. Splitting by subject then keeps train
and test anatomically distinct, while every image is still real MRI signal.
"""

from __future__ import annotations

import dataclasses
from functools import lru_cache

import numpy as np
from scipy import ndimage as ndi

SLICE_SIZE = 128


@lru_cache(maxsize=1)
def template_volume() -> np.ndarray:
    """The 1 mm MNI152 T1 template (skull-stripped), resampled to 1.5 mm, float32 in [0, 1]."""
    from nilearn import datasets

    t1 = np.asarray(datasets.load_mni152_template(resolution=1).dataobj, dtype=np.float32)
    t1 = ndi.zoom(t1, 1 / 1.5, order=1)
    return np.clip(t1 / max(float(t1.max()), 1e-6), 0, 1).astype(np.float32)


LABELS = {"background": 0, "CSF": 1, "GM": 2, "WM": 3}


@lru_cache(maxsize=1)
def template_labels() -> np.ndarray:
    """Tissue labels of the template on the same grid: 0 background, 1 CSF, 2 GM, 3 WM. GM and WM come
    from nilearn's MNI152 probability maps; CSF is what the brain mask (T1 > 0.2, as nilearn defines it)
    holds beyond them. Each voxel takes the most probable class."""
    from nilearn import datasets

    def load(img) -> np.ndarray:
        return ndi.zoom(np.asarray(img.dataobj, dtype=np.float32), 1 / 1.5, order=1)

    t1 = load(datasets.load_mni152_template(resolution=1))
    gm = load(datasets.load_mni152_gm_template(resolution=1))
    wm = load(datasets.load_mni152_wm_template(resolution=1))
    brain = t1 / max(float(t1.max()), 1e-6) > 0.2
    csf = np.clip(1.0 - gm - wm, 0, 1)
    labels = np.argmax(np.stack([csf, gm, wm]), axis=0).astype(np.uint8) + 1
    labels[~brain] = 0
    return labels


@dataclasses.dataclass(frozen=True)
class SubjectParams:
    displacement_mm: float = 4.0   # standard deviation of the smooth displacement field
    smoothness_mm: float = 12.0    # Gaussian width of that field
    scale_sd: float = 0.06         # global size variation
    rotation_deg: float = 4.0      # rotation about the vertical axis
    bias_sd: float = 0.08          # smooth multiplicative intensity bias
    gamma_sd: float = 0.12         # log-normal gamma of the contrast


def make_subject(seed: int, params: SubjectParams = SubjectParams()) -> np.ndarray:
    """One synthetic subject volume on the 1.5 mm grid (deterministic in ``seed``)."""
    return make_labelled_subject(seed, params, with_labels=False)[0]


def make_labelled_subject(seed: int, params: SubjectParams = SubjectParams(),
                          with_labels: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """A synthetic subject and its tissue labels, warped by the same deformation (labels by nearest
    neighbour), so that the labels are the subject's anatomy, not the template's."""
    vol = template_volume()
    rng = np.random.default_rng(seed)
    shape = np.array(vol.shape)
    voxel = 1.5
    sigma = params.smoothness_mm / voxel
    disp = [f * (params.displacement_mm / voxel) for f in _smooth_fields(rng, vol.shape, sigma, 3)]
    scale = 1 + rng.normal(0, params.scale_sd)
    theta = np.deg2rad(rng.normal(0, params.rotation_deg))
    centre = (shape - 1) / 2
    grid = np.indices(vol.shape, dtype=np.float32)
    x, y, z = (grid[i] - centre[i] for i in range(3))
    xr = (np.cos(theta) * x - np.sin(theta) * y) / scale
    yr = (np.sin(theta) * x + np.cos(theta) * y) / scale
    coords = [xr + centre[0] + disp[0], yr + centre[1] + disp[1], z / scale + centre[2] + disp[2]]
    warped = ndi.map_coordinates(vol, coords, order=1, mode="constant", cval=0.0)
    bias = np.exp(_smooth_fields(rng, vol.shape, 20 / voxel, 1)[0] * params.bias_sd)
    gamma = float(np.exp(rng.normal(0, params.gamma_sd)))
    out = np.clip(warped * np.clip(bias, 0.7, 1.3), 0, 1) ** gamma
    labels = ndi.map_coordinates(template_labels(), coords, order=0, mode="constant", cval=0) if with_labels else None
    return out.astype(np.float32), labels


def _smooth_fields(rng, shape, sigma: float, count: int, factor: int = 4) -> list[np.ndarray]:
    """Unit-variance Gaussian random fields of width ``sigma`` voxels, drawn on a grid ``factor`` times
    coarser (the fields are smooth, so this loses nothing) and upsampled."""
    small = tuple(int(np.ceil(s / factor)) for s in shape)
    out = []
    for _ in range(count):
        f = ndi.gaussian_filter(rng.standard_normal(small), sigma / factor, mode="wrap")
        f = ndi.zoom(f, [s / c for s, c in zip(shape, small)], order=1)[: shape[0], : shape[1], : shape[2]]
        out.append(((f - f.mean()) / (f.std() + 1e-12)).astype(np.float32))
    return out


def _square(img: np.ndarray, size: int, order: int = 1) -> np.ndarray:
    h, w = img.shape
    s = max(h, w)
    pad = np.zeros((s, s), img.dtype)
    pad[(s - h) // 2:(s - h) // 2 + h, (s - w) // 2:(s - w) // 2 + w] = img
    return ndi.zoom(pad, size / s, order=order)


def _slice_indices(nz: int, n_slices: int) -> np.ndarray:
    return np.linspace(0.22 * nz, 0.68 * nz, n_slices).round().astype(int)


def axial_slices(volume: np.ndarray, n_slices: int, size: int = SLICE_SIZE) -> np.ndarray:
    """``n_slices`` evenly spaced axial slices through the brain (from 22 % to 68 % of the field of
    view: above the skull base, below the vertex), squared and resized, in [0, 1]."""
    zs = _slice_indices(volume.shape[2], n_slices)
    slices = np.stack([_square(volume[:, :, z].T[::-1], size) for z in zs])
    return np.clip(slices, 0, 1).astype(np.float32)


def axial_label_slices(labels: np.ndarray, n_slices: int, size: int = SLICE_SIZE) -> np.ndarray:
    """The label slices matching :func:`axial_slices` (resized by nearest neighbour)."""
    zs = _slice_indices(labels.shape[2], n_slices)
    return np.stack([_square(labels[:, :, z].T[::-1], size, order=0) for z in zs]).astype(np.uint8)


def subject_slices(seeds: list[int] | range, n_slices: int, size: int = SLICE_SIZE) -> tuple[np.ndarray, list[str]]:
    """Slices of several subjects, with ids ``subj{seed}_z{k}``."""
    images, ids = [], []
    for seed in seeds:
        images.append(axial_slices(make_subject(seed), n_slices, size))
        ids += [f"subj{seed:04d}_z{k:02d}" for k in range(n_slices)]
    return np.concatenate(images), ids


def labelled_subject_slices(seeds: list[int] | range, n_slices: int,
                            size: int = SLICE_SIZE) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """As :func:`subject_slices`, with each slice's tissue labels (0 bg, 1 CSF, 2 GM, 3 WM)."""
    images, labels, ids = [], [], []
    for seed in seeds:
        vol, lab = make_labelled_subject(seed)
        images.append(axial_slices(vol, n_slices, size))
        labels.append(axial_label_slices(lab, n_slices, size))
        ids += [f"subj{seed:04d}_z{k:02d}" for k in range(n_slices)]
    return np.concatenate(images), np.concatenate(labels), ids
