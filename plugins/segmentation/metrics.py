"""Segmentation metrics per test case and their bootstrap intervals (pure functions over label arrays).

Dice and HD95 are MONAI's (``compute_dice``, ``compute_hausdorff_distance`` at the 95th percentile), per
class, background left out. Intervals are percentile bootstraps over test cases; the drop against the
baseline resamples the *same* cases for both models (a paired bootstrap), so the interval reflects the
difference between the models, not the spread of the cases.
"""

from __future__ import annotations

import numpy as np
import torch


def _one_hot(labels: np.ndarray, n_classes: int) -> torch.Tensor:
    t = torch.from_numpy(np.asarray(labels, dtype=np.int64))[:, None]
    return torch.zeros((t.shape[0], n_classes, *t.shape[2:]), dtype=torch.float32).scatter_(1, t, 1.0)


def per_case(pred: np.ndarray, truth: np.ndarray, n_classes: int) -> dict[str, np.ndarray]:
    """``dice`` and ``hd95`` as [cases, classes - 1] (background left out). A class absent from both
    prediction and truth has Dice 1 and HD95 0 (nothing to find, nothing found); absent from one only,
    Dice 0 and HD95 the image diagonal (the worst a slice allows), so that no value is NaN."""
    if pred.shape != truth.shape:
        raise ValueError(f"prediction {pred.shape} and labels {truth.shape} differ in shape")
    p, t = _one_hot(pred, n_classes), _one_hot(truth, n_classes)
    dice = _dice(p, t)
    with np.errstate(invalid="ignore"):
        hd = compute_hd95(p, t)
    diagonal = float(np.hypot(*truth.shape[1:]))
    present_p, present_t = p[:, 1:].flatten(2).any(2).numpy(), t[:, 1:].flatten(2).any(2).numpy()
    hd = np.where(present_p & present_t, hd, np.where(present_p | present_t, diagonal, 0.0))
    return {"dice": dice, "hd95": np.nan_to_num(hd, nan=diagonal, posinf=diagonal)}


def _dice(p: torch.Tensor, t: torch.Tensor) -> np.ndarray:
    from monai.metrics import compute_dice

    d = compute_dice(p, t, include_background=False, ignore_empty=False).numpy()
    both_empty = ~(p[:, 1:].flatten(2).any(2) | t[:, 1:].flatten(2).any(2)).numpy()
    return np.where(both_empty, 1.0, np.nan_to_num(d, nan=0.0))


def compute_hd95(p: torch.Tensor, t: torch.Tensor) -> np.ndarray:
    import warnings

    from monai.metrics import compute_hausdorff_distance

    with warnings.catch_warnings():
        # an empty class is expected and given its value by per_case
        warnings.filterwarnings("ignore", message=".*is all 0.*")
        warnings.filterwarnings("ignore", category=FutureWarning)
        return compute_hausdorff_distance(p, t, include_background=False, percentile=95).numpy()


def bootstrap_interval(values: np.ndarray, rng: np.random.Generator, reps: int = 2000,
                       level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean over cases (axis 0)."""
    values = np.asarray(values, dtype=np.float64)
    idx = rng.integers(len(values), size=(reps, len(values)))
    means = values[idx].mean(1)
    tail = (1 - level) / 2
    return float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail))


def summarise(synthetic: dict[str, np.ndarray], baseline: dict[str, np.ndarray] | None, class_names: list[str],
              seed: int, reps: int = 2000) -> dict[str, float]:
    """Set-level numbers: per class and mean Dice and HD95 with 95 % intervals, and (with a baseline)
    the drop in mean Dice (baseline minus synthetic) with its paired-bootstrap interval."""
    rng = np.random.default_rng(seed)
    out: dict[str, float] = {}
    for metric in ("dice", "hd95"):
        v = synthetic[metric]
        for k, name in enumerate(class_names):
            out[f"{metric}_{name}"] = float(v[:, k].mean())
        case_mean = v.mean(1)
        out[f"{metric}_mean"] = float(case_mean.mean())
        out[f"{metric}_mean_lower"], out[f"{metric}_mean_upper"] = bootstrap_interval(case_mean, rng, reps)
    if baseline is not None:
        b = baseline["dice"].mean(1)
        drop = b - synthetic["dice"].mean(1)
        out["baseline_dice_mean"] = float(b.mean())
        out["dice_drop"] = float(drop.mean())
        out["dice_drop_lower"], out["dice_drop_upper"] = bootstrap_interval(drop, rng, reps)
        hd_drop = synthetic["hd95"].mean(1) - baseline["hd95"].mean(1)  # larger HD95 is worse
        out["hd95_increase"] = float(hd_drop.mean())
        out["hd95_increase_lower"], out["hd95_increase_upper"] = bootstrap_interval(hd_drop, rng, reps)
    return out
