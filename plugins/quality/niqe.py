"""NIQE (Mittal et al. 2013) with the pristine model fitted on the user's real MRI ("MRI-NIQE").

Features per patch, at two scales: the generalised-Gaussian fit of the mean-subtracted contrast-
normalised (MSCN) coefficients (2) and asymmetric-generalised-Gaussian fits of their products with
the four neighbours (4 x 4): 18 per scale, 36 in all. The pristine model is the mean and covariance
of these features over patches of real slices; a slice's score is the distance between its patches'
Gaussian and the pristine one (lower = closer to the real data). Background patches (mostly zero)
are left out, so a skull-stripped slice is judged on its anatomy. Block size 32 suits 128-256 px.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import ndimage as ndi
from scipy.special import gamma as G

_ALPHAS = np.arange(0.2, 10.0, 0.001)
_R_GGD = G(1 / _ALPHAS) * G(3 / _ALPHAS) / G(2 / _ALPHAS) ** 2


def mscn(img: np.ndarray, sigma: float = 7 / 6) -> np.ndarray:
    mu = ndi.gaussian_filter(img, sigma, mode="nearest")
    sd = np.sqrt(np.abs(ndi.gaussian_filter(img * img, sigma, mode="nearest") - mu * mu))
    return (img - mu) / (sd + 1.0 / 255)


def _ggd(x: np.ndarray) -> tuple[float, float]:
    s2 = np.mean(x * x)
    e = np.mean(np.abs(x))
    r = s2 / max(e * e, 1e-12)
    return float(_ALPHAS[np.argmin(np.abs(_R_GGD - r))]), float(s2)


def _aggd(x: np.ndarray) -> tuple[float, float, float, float]:
    left, right = x[x < 0], x[x >= 0]
    sl = np.sqrt(np.mean(left ** 2)) if left.size else 1e-6
    sr = np.sqrt(np.mean(right ** 2)) if right.size else 1e-6
    gh = sl / max(sr, 1e-12)
    rh = np.mean(np.abs(x)) ** 2 / max(np.mean(x * x), 1e-12)
    rn = rh * (gh ** 3 + 1) * (gh + 1) / (gh ** 2 + 1) ** 2
    alpha = float(_ALPHAS[np.argmin(np.abs(_R_GGD ** -1 - rn))])
    mean = (sr - sl) * G(2 / alpha) / G(1 / alpha) * np.sqrt(G(1 / alpha) / G(3 / alpha))
    return alpha, float(mean), float(sl ** 2), float(sr ** 2)


def _patch_features(m: np.ndarray) -> list[float]:
    feats = list(_ggd(m))
    for shift in ((0, 1), (1, 0), (1, 1), (1, -1)):
        feats.extend(_aggd(m * np.roll(m, shift, axis=(0, 1))))
    return feats


def patch_features(img: np.ndarray, block: int = 32, min_foreground: float = 0.5) -> np.ndarray:
    """``[n_patches, 36]`` for the patches whose foreground share is at least ``min_foreground``."""
    img = np.asarray(img, dtype=np.float64)
    fg = img > 0.05 * (img.max() or 1.0)
    small = ndi.zoom(img, 0.5, order=1)
    m1, m2 = mscn(img), mscn(small)
    rows = []
    for y in range(0, img.shape[0] - block + 1, block):
        for x in range(0, img.shape[1] - block + 1, block):
            if fg[y:y + block, x:x + block].mean() < min_foreground:
                continue
            b2 = block // 2
            f1 = _patch_features(m1[y:y + block, x:x + block])
            f2 = _patch_features(m2[y // 2:y // 2 + b2, x // 2:x // 2 + b2])
            rows.append(f1 + f2)
    return np.array(rows, dtype=np.float64).reshape(-1, 36)


@dataclasses.dataclass(frozen=True)
class NiqeModel:
    mean: np.ndarray
    cov: np.ndarray
    block: int
    n_patches: int


def fit_niqe(images: np.ndarray, block: int = 32) -> NiqeModel:
    feats = np.concatenate([patch_features(im, block) for im in images])
    feats = feats[np.isfinite(feats).all(1)]
    if len(feats) < 40:
        raise ValueError(f"only {len(feats)} foreground patches of {block} px to fit NIQE: need at least 40 "
                         "(more real slices, or a smaller block)")
    return NiqeModel(feats.mean(0), np.cov(feats, rowvar=False), block, len(feats))


def niqe_score(img: np.ndarray, model: NiqeModel) -> float:
    """Distance of the slice's patch statistics to the pristine model. A slice with no foreground patch
    scores against its whole-image patches instead; one with no finite patch feature at all (a
    constant image) gets the sentinel -1 (undefined), never NaN."""
    f = patch_features(img, model.block)
    if len(f) == 0:
        f = patch_features(img, model.block, min_foreground=0.0)
    f = f[np.isfinite(f).all(1)]
    if len(f) == 0:
        return -1.0
    mu = f.mean(0)
    cov = np.cov(f, rowvar=False) if len(f) > 1 else np.zeros_like(model.cov)
    d = model.mean - mu
    return float(np.sqrt(max(d @ np.linalg.pinv((model.cov + cov) / 2) @ d, 0.0)))
