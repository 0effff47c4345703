"""The paper's controlled-duplication protocol: a test set in which a fraction of the slices is
replaced by (possibly augmented) train slices. Used by the benchmark and the tests."""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np
from scipy import ndimage as ndi

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
    aug = CONDITIONS[condition]
    copies = np.stack([np.clip(aug(train[s].astype(np.float64), rng), 0.0, 1.0) for s in sources]).astype(np.float32)
    return Contamination(positions=positions, sources=sources, copies=copies)
