"""Distribution-level metrics between feature sets: FID, KID, MMD (from the memorization baselines)
and precision, recall, density, coverage (Naeem et al. 2020, k nearest neighbours)."""

from __future__ import annotations

import numpy as np

from gate_plugins.toolkit.baselines import BLOCK_BYTES, frechet_distance, kid, mmd_rbf, sq_dists


def _kth_radius(x: np.ndarray, k: int, block_bytes: int = BLOCK_BYTES) -> np.ndarray:
    """Each row's distance to its k-th nearest other row, a block of rows at a time: memory follows
    ``len(x)``, never ``len(x)^2`` (a set without a holdout is the whole train set)."""
    kth = min(k, len(x) - 1)  # column 0 of a sorted row is the point itself
    block = max(1, block_bytes // (8 * max(len(x), 1)))
    return np.concatenate([np.sqrt(np.partition(sq_dists(x[s:s + block], x), kth, axis=1)[:, kth])
                           for s in range(0, len(x), block)])


def prdc(real: np.ndarray, fake: np.ndarray, k: int = 5) -> dict[str, float]:
    radius = _kth_radius(real, k)
    d = np.sqrt(sq_dists(fake, real))
    inside = d <= radius[None, :]
    fake_radius = _kth_radius(fake, k)
    d_rf = d.T  # real x fake
    return {
        "precision": float(inside.any(1).mean()),
        "recall": float((d_rf <= fake_radius[None, :]).any(1).mean()),
        "density": float(inside.sum(1).mean() / k),
        "coverage": float((d.min(0) <= radius).mean()),
    }


def distribution_metrics(train: np.ndarray, holdout: np.ndarray | None, cand: np.ndarray) -> dict[str, float]:
    """Candidate against the holdout (else train), and the real-vs-real baseline (train against holdout)
    so that rules can be relative: ``fid_ratio = fid / fid_real``."""
    real = holdout if holdout is not None else train
    out = {"fid": frechet_distance(real, cand), "kid": kid(real, cand), "mmd": mmd_rbf(real, cand), **prdc(real, cand)}
    if holdout is not None:
        base = {"fid": frechet_distance(train, holdout), "kid": kid(train, holdout), "mmd": mmd_rbf(train, holdout)}
        for name, value in base.items():
            out[f"{name}_real"] = value
            out[f"{name}_ratio"] = out[name] / value if value > 0 else float("nan")
    return out
