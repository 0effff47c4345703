"""Transformations under which a candidate may copy a training image. The reference (train) set is
transformed once and searched as one index, so a query is extracted once whatever the set size."""

from __future__ import annotations

from typing import Callable, Literal

import numpy as np

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
    transform ``t``. ``dihedral`` is the 8 flips and 90-degree rotations (square images only)."""
    if invariance == "none":
        return [("identity", lambda x: x)]
    if invariance == "dihedral":
        return _dihedral()
    raise ValueError(f"unknown invariance {invariance!r}")


def apply(images: np.ndarray, transform: Transform) -> np.ndarray:
    return np.ascontiguousarray(transform(images))
