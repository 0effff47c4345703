"""The paper's controlled-duplication protocol: a test set in which a fraction of the slices is
replaced by (possibly augmented) train slices. Used by the benchmark and the tests."""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np
from scipy import ndimage as ndi

from gate_plugins.memorization.transforms import random_elastic, random_shift, random_zoom

Augment = Callable[[np.ndarray, np.random.Generator], np.ndarray]


def _rotate(max_deg: float) -> Augment:
    def f(img, rng):
        return ndi.rotate(img, rng.uniform(-max_deg, max_deg), reshape=False, order=1, mode="constant")
    return f


def _noise(sd: float) -> Augment:
    return lambda img, rng: img + rng.normal(0.0, sd, img.shape)


#: the 8 conditions of the paper (Table 4); flips are always applied (the released code flips with p=0.5)
CONDITIONS: dict[str, Augment] = {
    "clean": lambda img, rng: img,
    "noise_0.01": _noise(0.01),
    "noise_0.02": _noise(0.02),
    "rotation_3": _rotate(3.0),
    "rotation_5": _rotate(5.0),
    "hflip": lambda img, rng: img[:, ::-1],
    "vflip": lambda img, rng: img[::-1, :],
    "intensity": lambda img, rng: img * rng.uniform(0.9, 1.1),
}

def _gamma(img, rng):
    return np.clip(img, 0, 1) ** np.exp(rng.uniform(np.log(0.75), np.log(1.33)))


def _blur(img, rng):
    return ndi.gaussian_filter(img, rng.uniform(0.5, 1.5))


def _gamma_wide(img, rng):
    return np.clip(img, 0, 1) ** np.exp(rng.uniform(np.log(0.7), np.log(1.4)))


def _shift_px(low: float, high: float) -> Augment:
    """A shift of ``low``-``high`` pixels in a random direction (never a near-zero one)."""
    def f(img, rng):
        r, a = rng.uniform(low, high), rng.uniform(0, 2 * np.pi)
        return ndi.shift(img, (r * np.sin(a), r * np.cos(a)), order=1, mode="constant")
    return f


def _random_flip(img, rng):
    return img[:, ::-1] if rng.uniform() < 0.5 else img


def _then(*augs: Augment) -> Augment:
    def f(img, rng):
        for a in augs:
            img = a(img, rng)
        return img
    return f


#: beyond the paper: misalignment, contrast and smoothing a generator (or augmentation) may add
EXTRA_CONDITIONS: dict[str, Augment] = {
    "shift_10pct": random_shift,
    "zoom_0.9-1.1": random_zoom,
    "gamma_0.75-1.33": _gamma,
    "blur_0.5-1.5": _blur,
    "elastic_2px": random_elastic,
    "hflip+shift": _then(CONDITIONS["hflip"], random_shift),
    "rotation_5+zoom": _then(CONDITIONS["rotation_5"], random_zoom),
    "vflip+elastic": _then(CONDITIONS["vflip"], random_elastic),
    "noise_0.02+gamma": _then(_gamma, CONDITIONS["noise_0.02"]),
    # the conditions that escaped retrieval on held-out real MRI (issue 12): drawn unlike the nuisance copies
    "shift_4-10px": _shift_px(4.0, 10.0),
    "gamma_0.7-1.4": _gamma_wide,
    "rot5+shift+int+noise+flip": _then(CONDITIONS["rotation_5"], _shift_px(4.0, 10.0), CONDITIONS["intensity"],
                                       CONDITIONS["noise_0.02"], _random_flip),
}

ALL_CONDITIONS: dict[str, Augment] = {**CONDITIONS, **EXTRA_CONDITIONS}

LEVELS = (0.05, 0.15, 0.30, 0.45)

#: the paper's Table 4 (mean per-sample AUC over its datasets and levels), for side-by-side reporting
PAPER_AUC = {"clean": 1.000, "noise_0.01": 1.000, "noise_0.02": 1.000, "intensity": 1.000,
             "rotation_3": 0.871, "rotation_5": 0.758, "hflip": 0.733, "vflip": 0.727}


@dataclasses.dataclass(frozen=True)
class Contamination:
    """Positions in the test set replaced by augmented copies of train rows, nested across levels:
    level p replaces the first ``round(p * M)`` of ``positions``."""

    positions: np.ndarray
    sources: np.ndarray
    copies: np.ndarray  # augmented train images, aligned with positions

    def at(self, level: float, n_test: int) -> tuple[np.ndarray, np.ndarray]:
        k = int(round(level * n_test))
        labels = np.zeros(n_test, dtype=bool)
        labels[self.positions[:k]] = True
        return labels, np.arange(k)


def contaminate(train: np.ndarray, n_test: int, condition: str, max_level: float, seed: int) -> Contamination:
    rng = np.random.default_rng(seed)
    k = int(round(max_level * n_test))
    if k > len(train):
        raise ValueError(f"cannot replace {k} test slices with distinct train slices out of {len(train)}")
    positions = rng.permutation(n_test)[:k]
    sources = rng.permutation(len(train))[:k]
    aug = ALL_CONDITIONS[condition]
    copies = np.stack([np.clip(aug(train[s].astype(np.float64), rng), 0.0, 1.0) for s in sources]).astype(np.float32)
    return Contamination(positions=positions, sources=sources, copies=copies)
