"""PNG figures for the report: MI/ONI against the null, and the most similar candidate/train pairs."""

from __future__ import annotations

import numpy as np

from gate_plugins.toolkit.figures import png as _png


def histograms(mi: np.ndarray, null_mi: np.ndarray, paper_null_mi: np.ndarray, calibration: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3))
    lo = float(min(mi.min(), null_mi.min(), paper_null_mi.min()))
    hi = float(max(mi.max(), null_mi.max(), paper_null_mi.max()))
    bins = np.linspace(lo, hi + 1e-9, 40)
    axes[0].hist(null_mi, bins=bins, alpha=0.5, density=True, label=f"calibration null ({calibration})")
    if calibration != "train_halves":
        axes[0].hist(paper_null_mi, bins=bins, histtype="step", density=True, label="paper's null (train halves)")
    axes[0].hist(mi, bins=bins, alpha=0.6, density=True, label="candidate")
    axes[0].set_xlabel("MI (z-score)"); axes[0].legend(fontsize=7)
    axes[1].hist(-np.tanh(null_mi), bins=40, range=(-1, 1), alpha=0.5, density=True, label="null")
    axes[1].hist(-np.tanh(mi), bins=40, range=(-1, 1), alpha=0.6, density=True, label="candidate")
    axes[1].set_xlabel("ONI (-1 copy, +1 novel)"); axes[1].legend(fontsize=7)
    return _png(fig)


def top_pairs(candidate: np.ndarray, train: np.ndarray, pairs: list[tuple[int, int, str, str]]) -> bytes:
    """``pairs``: (candidate row, train row, candidate caption, train caption)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = max(len(pairs), 1)
    fig, axes = plt.subplots(2, n, figsize=(1.7 * n, 4.2), squeeze=False)
    for j, (ci, ti, ctext, ttext) in enumerate(pairs):
        axes[0, j].imshow(candidate[ci], cmap="gray"); axes[0, j].set_title(ctext, fontsize=6)
        axes[1, j].imshow(train[ti], cmap="gray"); axes[1, j].set_title(ttext, fontsize=6)
    for ax in axes.ravel():
        ax.axis("off")
    return _png(fig)
