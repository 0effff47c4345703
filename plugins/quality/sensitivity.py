"""Per-sample sensitivity of a quality measure to a graded perturbation: can it rank a degraded slice
below its own clean original, slice by slice? A set mean moving with severity can hide a measure that
cannot tell one broken sample from a good one; these two numbers cannot."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import stats

#: per-sample values that mean "undefined" (the measures' sentinel) are left out of the pooled rho
UNDEFINED = -1.0


def pooled_rho(levels: Sequence[np.ndarray]) -> float:
    """Spearman rho between severity (0 = clean, then each level) and the measure, over every slice at
    every severity: ``levels[s][i]`` is slice ``i`` at severity ``s``. 0 where it is undefined."""
    sev = np.concatenate([np.full(len(v), s, dtype=float) for s, v in enumerate(levels)])
    val = np.concatenate([np.asarray(v, dtype=float) for v in levels])
    keep = np.isfinite(val) & (val != UNDEFINED)
    if keep.sum() < 3 or np.ptp(val[keep]) == 0 or np.ptp(sev[keep]) == 0:
        return 0.0
    r = stats.spearmanr(sev[keep], val[keep]).statistic
    return float(r) if np.isfinite(r) else 0.0


def monotonic_share(levels: Sequence[np.ndarray], sign: float) -> float:
    """Share of slices whose measure moves strictly in the direction ``sign`` (+1 up, -1 down) at every step
    of severity; a slice with an undefined value at any step does not count as monotonic."""
    v = np.stack([np.asarray(x, dtype=float) for x in levels])  # [severities, slices]
    if v.shape[1] == 0 or sign == 0:
        return 0.0
    defined = (np.isfinite(v) & (v != UNDEFINED)).all(axis=0)
    steps = np.diff(v, axis=0) * np.sign(sign)
    return float(((steps > 0).all(axis=0) & defined).mean())


def per_sample_matrices(series: dict[str, Sequence[dict[str, np.ndarray]]]) -> tuple[dict, dict]:
    """``series[perturbation][s][metric]``: per-slice values at severity ``s``. Returns the pooled rho and
    the monotonic share (in the direction of that rho) for every metric and perturbation."""
    rho: dict[str, dict[str, float]] = {}
    mono: dict[str, dict[str, float]] = {}
    for pert, steps in series.items():
        for metric in steps[0]:
            levels = [step[metric] for step in steps]
            r = pooled_rho(levels)
            rho.setdefault(metric, {})[pert] = round(r, 4)
            mono.setdefault(metric, {})[pert] = round(monotonic_share(levels, np.sign(r)), 4)
    return rho, mono


def sees(rho: float, share: float, better: int, threshold: float, min_share: float) -> bool:
    """A measure sees a failure per sample when it ranks severity across slices (|rho| >= threshold), moves
    monotonically on at least ``min_share`` of the slices, and does not read the failure as an improvement
    (``better``: +1 higher is better, -1 lower, 0 no side)."""
    return abs(rho) >= threshold and share >= min_share and not (better and better * rho > 0)
