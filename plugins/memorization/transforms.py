"""Transformations under which a candidate may copy a training image. The reference (train) set is
transformed once and searched as one index, so a query is extracted once whatever the set size."""

from __future__ import annotations

from typing import Callable, Literal

import numpy as np
from scipy import ndimage as ndi

Invariance = Literal["none", "dihedral"]
Transform = Callable[[np.ndarray], np.ndarray]  # on a batch [n, H, W]


def _dihedral() -> list[tuple[str, Transform]]:
    out: list[tuple[str, Transform]] = []
    for k in range(4):
        rot = (lambda x, k=k: np.rot90(x, k, axes=(1, 2)))
        out.append((f"rot{90 * k}", rot))
        out.append((f"rot{90 * k}+hflip", lambda x, rot=rot: rot(x)[:, :, ::-1]))
    return out


def transform_set(invariance: Invariance) -> list[tuple[str, Transform]]:
    """The identity comes first: row ``t * N + i`` of a reference index is train image ``i`` under
    transform ``t``. ``dihedral`` is the 8 flips and 90-degree rotations (square images: see gate_plugins.toolkit.canvas)."""
    if invariance == "none":
        return [("identity", lambda x: x)]
    if invariance == "dihedral":
        return _dihedral()
    raise ValueError(f"unknown invariance {invariance!r}")


def apply(images: np.ndarray, transform: Transform) -> np.ndarray:
    return np.ascontiguousarray(transform(images))


# Misalignments a generator can introduce. They are not searched (they are continuous); the detector
# learns to ignore them by whitening against the feature changes they cause (see maths.fit_whitener).

def random_shift(img: np.ndarray, rng: np.random.Generator, max_fraction: float = 0.1) -> np.ndarray:
    h, w = img.shape
    d = (rng.uniform(-max_fraction, max_fraction) * h, rng.uniform(-max_fraction, max_fraction) * w)
    return ndi.shift(img, d, order=1, mode="constant")


def random_zoom(img: np.ndarray, rng: np.random.Generator, low: float = 0.9, high: float = 1.1) -> np.ndarray:
    z = rng.uniform(low, high)
    c = (np.array(img.shape) - 1) / 2
    return ndi.affine_transform(img, np.eye(2) / z, offset=c - c / z, order=1, mode="constant")


def random_elastic(img: np.ndarray, rng: np.random.Generator, alpha_px: float = 2.0,
                   sigma_px: float = 8.0) -> np.ndarray:
    """A mild elastic deformation: a smooth random displacement of about ``alpha_px`` pixels."""
    fields = []
    for _ in range(2):
        f = ndi.gaussian_filter(rng.standard_normal(img.shape), sigma_px)
        fields.append(f / (f.std() + 1e-12) * alpha_px)
    yy, xx = np.indices(img.shape, dtype=np.float64)
    return ndi.map_coordinates(img, [yy + fields[0], xx + fields[1]], order=1, mode="constant")


def misalign(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Shift (up to 10 % of the field of view), zoom (0.9-1.1) and a mild elastic warp, in that order."""
    return random_elastic(random_zoom(random_shift(img, rng), rng), rng)
