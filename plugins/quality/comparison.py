"""Candidate against real, per metric: where the candidate's mean falls relative to the spread that two
real sets of the candidate's size show between themselves (the real-vs-real band)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from gate_plugins.quality.iqms import UNDEFINED


def real_band(real: np.ndarray, n: int, rng: np.random.Generator, reps: int = 2000,
              level: float = 0.95) -> tuple[float, float]:
    """Central ``level`` interval of the mean of ``n`` values drawn (with replacement) from the real
    values: how far a real set of the candidate's size strays by sampling alone."""
    real = np.asarray(real, dtype=np.float64)
    if real.size == 0 or n < 1:
        return (float("nan"), float("nan"))
    means = real[rng.integers(real.size, size=(reps, n))].mean(1)
    tail = (1 - level) / 2
    return float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail))


def compare(candidate: pd.DataFrame, real: pd.DataFrame, metrics: list[str], seed: int) -> dict[str, dict]:
    """Per metric: candidate mean, real mean, the band, and whether the candidate lies inside it.
    Sentinel values (undefined on a slice) are left out on both sides."""
    rng = np.random.default_rng(seed)
    out = {}
    for m in metrics:
        c = candidate[m].to_numpy(float)
        r = real[m].to_numpy(float)
        c, r = c[(c != UNDEFINED) & np.isfinite(c)], r[(r != UNDEFINED) & np.isfinite(r)]
        lo, hi = real_band(r, len(c), rng)
        mean = float(c.mean()) if c.size else float("nan")
        out[m] = {"candidate_mean": round(mean, 5), "real_mean": round(float(r.mean()), 5) if r.size else None,
                  "band_low": round(lo, 5), "band_high": round(hi, 5),
                  "inside_band": bool(lo <= mean <= hi) if np.isfinite([mean, lo, hi]).all() else None,
                  "n_defined": {"candidate": int(c.size), "real": int(r.size)}}
    return out


def distribution_figure(candidate: pd.DataFrame, real: pd.DataFrame, train: pd.DataFrame,
                        summary: dict[str, dict]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from gate_plugins.toolkit.figures import png as _png

    metrics = list(summary)
    cols = 4
    rows = -(-len(metrics) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 2.4 * rows), squeeze=False)
    for ax, m in zip(axes.ravel(), metrics):
        sets = [("train", train[m]), ("real", real[m]), ("candidate", candidate[m])]
        data = [s.to_numpy(float) for _, s in sets]
        data = [d[(d != UNDEFINED) & np.isfinite(d)] for d in data]
        ax.boxplot([d if d.size else [np.nan] for d in data], showfliers=False)
        ax.set_xticks([1, 2, 3], [name for name, _ in sets], fontsize=7)
        s = summary[m]
        if s["band_low"] is not None and np.isfinite([s["band_low"], s["band_high"]]).all():
            ax.axhspan(s["band_low"], s["band_high"], color="tab:green", alpha=0.25, label="real-vs-real band")
        if np.isfinite(s["candidate_mean"]):
            ax.plot([3], [s["candidate_mean"]], "o", color="tab:red" if not s["inside_band"] else "tab:blue")
        ax.set_title(m, fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in axes.ravel()[len(metrics):]:
        ax.axis("off")
    fig.tight_layout()
    return _png(fig)
