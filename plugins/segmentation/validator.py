"""The downstream-segmentation validator: train a segmenter on the candidate's labelled images, test it on
the real labelled holdout, and compare with a segmenter trained on real train slices with the same
budget (same number of slices, epochs and seed). Image metrics can look fine while anatomy is wrong for
its labels; this check sees that, because a segmenter learns the anatomy the labels describe."""

from __future__ import annotations

import hashlib
import json
import time
from typing import ClassVar, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from gate.errors import InputError
from gate.featurecache import FeatureCache
from gate.imageset import ImageSet
from gate.validators import CheckContext, CheckOutput, Figure, MetricDef, Plan
from gate_plugins.segmentation import metrics as M
from gate_plugins.toolkit.device import describe, device_problem, resolve_device

_SCALARS = {
    "dice_mean": "mean Dice over the foreground classes of the segmenter trained on the candidate, on real holdout",
    "dice_mean_lower": "lower end of the 95 % bootstrap interval of dice_mean (over holdout cases)",
    "dice_mean_upper": "upper end of the 95 % bootstrap interval of dice_mean",
    "dice_worst_class": "the lowest per-class mean Dice (a class the synthetic data teaches badly)",
    "hd95_mean": "mean 95th-percentile Hausdorff distance in pixels over the foreground classes",
    "hd95_mean_lower": "lower end of the 95 % bootstrap interval of hd95_mean",
    "hd95_mean_upper": "upper end of the 95 % bootstrap interval of hd95_mean",
    "baseline_dice_mean": "mean Dice of the real-only baseline (same budget) on the same holdout",
    "dice_drop": "baseline Dice minus candidate Dice, mean over holdout cases",
    "dice_drop_lower": "lower end of the 95 % paired-bootstrap interval of dice_drop",
    "dice_drop_upper": "upper end of the 95 % paired-bootstrap interval of the Dice lost by training on the "
                       "candidate instead of real images (a rule `dice_drop_upper lte 0.05` bounds the loss)",
    "hd95_increase": "candidate HD95 minus baseline HD95, mean over holdout cases",
    "hd95_increase_lower": "lower end of the 95 % paired-bootstrap interval of hd95_increase",
    "hd95_increase_upper": "upper end of the 95 % paired-bootstrap interval of the HD95 increase (pixels) from "
                           "training on the candidate instead of real images",
    "mixed_dice_mean": "mean Dice of a segmenter trained on real + synthetic (when params.real_plus_synthetic)",
    "mixed_dice_gain": "mixed_dice_mean minus baseline_dice_mean (positive: the synthetic data helps)",
}


class SegmentationParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    backend: Literal["monai", "nnunet"] = Field("monai", description="segmenter: MONAI 2D UNet, or nnU-Net v2 "
                                                                     "(optional extra gate-mri[nnunet])")
    epochs: int = Field(20, ge=1, le=1000, description="training epochs (each model)")
    batch_size: int = Field(8, ge=1, le=256)
    learning_rate: float = Field(1e-3, gt=0, le=1)
    channels: tuple[int, ...] = Field((16, 32, 64, 128), min_length=2, max_length=6,
                                      description="UNet features per level (MONAI back end)")
    class_names: dict[int, str] = Field({}, description="names of the label classes in the report (e.g. 1: CSF)")
    nnunet_iterations: int = Field(25, ge=1, le=250, description="nnU-Net: training iterations per epoch "
                                                                  "(nnU-Net's own default is 250)")
    baseline: bool = Field(True, description="train the real-only baseline (needs labelled train images)")
    real_plus_synthetic: bool = Field(False, description="also train on real + synthetic and report the gain")
    max_test_slices: int = Field(256, ge=4, description="holdout slices scored (seeded subsample beyond that)")
    bootstrap: int = Field(2000, ge=100, le=100000, description="bootstrap resamples for the intervals")
    time_budget_s: float = Field(900, gt=0, description="wall-clock budget of the whole check; when it runs "
                                                        "out the check ends in error (and blocks)")
    cache: bool = Field(True, description="reuse the baseline's results across candidates")


class SegmentationValidator:
    name: ClassVar[str] = "segmentation"
    blind_spots: ClassVar[tuple[str, ...]] = (
        "It measures one downstream task (tissue segmentation of the classes in the labels) on the holdout given; "
        "other tasks, scanners and populations are not covered.",
        "A small holdout gives wide intervals: read the Dice intervals, not only the means.",
    )
    advice: ClassVar[dict[str, str]] = {
        "*": "A segmenter trained on the candidate's images does not work on real scans: its labels and images "
             "disagree (misaligned or implausible anatomy). Look at Dice per class and the worst cases, check "
             "that the generator's label maps match its images, and retrain.",
    }
    Params: ClassVar[type[BaseModel]] = SegmentationParams
    columns: ClassVar[tuple[str, ...]] = ("sample_id", "classes_present", "foreground_fraction")
    metrics: ClassVar[tuple[MetricDef, ...]] = tuple(
        MetricDef(k, None, "scalar", v) for k, v in _SCALARS.items()) + (
        MetricDef("foreground_fraction_mean", "foreground_fraction", "mean",
                  "mean share of labelled (non-background) pixels in the candidate's label maps"),)

    def preflight(self, plan: Plan, params: SegmentationParams) -> list[str]:
        device = device_problem(plan.device)
        return _label_problems(plan.candidate_labelled, plan.candidate_shape, plan.holdout,
                               plan.train if params.baseline else None) + ([device] if device else [])

    def run(self, context: CheckContext, params: SegmentationParams) -> CheckOutput:
        deadline = time.monotonic() + params.time_budget_s
        cand, holdout, train = context.candidate, context.holdout, context.train
        n_classes, class_ids = _check_labels(cand, holdout, train if params.baseline else None)
        rng = np.random.default_rng(context.seed + 31337)
        test_idx = np.sort(rng.choice(len(holdout), size=min(len(holdout), params.max_test_slices), replace=False))
        test_images, test_labels = holdout.images[test_idx], holdout.labels[test_idx]
        device = resolve_device(context.device)
        backend = _backend(params, str(device))
        names = [params.class_names.get(c, f"class{c}") for c in class_ids[1:]]

        synthetic = backend.fit_score(cand.images, cand.labels, test_images, test_labels, n_classes, params,
                                      context.seed, deadline, context.progress("segmentation: train on candidate",
                                                                               params.epochs))
        baseline, cache_hit, cache_status = None, False, "off"
        if params.baseline:
            pick = np.sort(np.random.default_rng(context.seed).choice(
                len(train), size=min(len(train), len(cand)), replace=False))
            key = _baseline_key(train, holdout, pick, test_idx, n_classes, params, context.seed, device.type)
            cache = FeatureCache(context.cache_dir) if params.cache and context.cache_dir else None
            lookup = cache.load(f"segmentation-baseline-{key}") if cache else None
            cache_status = lookup.status if lookup else "off"
            if lookup is not None and lookup.arrays is not None and {"dice", "hd95"} <= set(lookup.arrays):
                baseline, cache_hit = {"dice": lookup.arrays["dice"], "hd95": lookup.arrays["hd95"]}, True
            else:
                baseline = backend.fit_score(train.images[pick], train.labels[pick], test_images, test_labels,
                                             n_classes, params, context.seed, deadline,
                                             context.progress("segmentation: real-only baseline", params.epochs))
                if cache is not None:  # atomic and authenticated (parallel validations may write the same one)
                    cache.store(f"segmentation-baseline-{key}", {k: baseline[k] for k in ("dice", "hd95")})
        scalars = M.summarise(synthetic, baseline, names, context.seed, reps=params.bootstrap)
        per_class = {n: round(scalars[f"dice_{n}"], 4) for n in names}
        scalars["dice_worst_class"] = min(per_class.values())
        if params.real_plus_synthetic and baseline is not None:
            mixed = backend.fit_score(np.concatenate([train.images[pick], cand.images]),
                                      np.concatenate([train.labels[pick], cand.labels]), test_images, test_labels,
                                      n_classes, params, context.seed, deadline,
                                      context.progress("segmentation: real + synthetic", params.epochs))
            scalars["mixed_dice_mean"] = float(mixed["dice"].mean())
            scalars["mixed_dice_gain"] = scalars["mixed_dice_mean"] - scalars["baseline_dice_mean"]

        fg = (cand.labels > 0).reshape(len(cand), -1).mean(1)
        present = [int(len(np.unique(lab))) for lab in cand.labels]
        table = pd.DataFrame({"sample_id": list(cand.ids), "classes_present": present, "foreground_fraction": fg})
        cases = pd.DataFrame({"holdout_id": [holdout.ids[i] for i in test_idx]})
        for k, n in enumerate(names):
            cases[f"dice_{n}"] = synthetic["dice"][:, k]
            if baseline is not None:
                cases[f"baseline_dice_{n}"] = baseline["dice"][:, k]
        diagnostics = {
            "classes": class_ids, "dice_per_class": per_class,
            "hd95_per_class": {n: round(scalars[f"hd95_{n}"], 3) for n in names},
            "baseline_dice_per_class": ({n: round(float(baseline["dice"][:, k].mean()), 4)
                                         for k, n in enumerate(names)} if baseline is not None else None),
            "test_slices": len(test_idx), "train_slices_per_model": len(cand), "baseline_cache_hit": cache_hit, "baseline_cache": cache_status,
            "worst_cases": cases.assign(mean=synthetic["dice"].mean(1)).nsmallest(WORST_CASES, "mean").round(4)
            .to_dict("records"),
            "seconds": round(params.time_budget_s - (deadline - time.monotonic()), 1),
        }
        figures = [Figure("Dice per class on real holdout", _dice_figure(synthetic, baseline, names),
                          "Mean Dice per class of the segmenter trained on the candidate's images and labels and of "
                          "the real-only baseline (same slices count, epochs and seed), with 95 % bootstrap "
                          "intervals over the holdout cases.")]
        if synthetic.get("prediction") is not None:
            worst = np.argsort(synthetic["dice"].mean(1), kind="stable")[:WORST_CASES]
            figures.append(Figure(
                f"The {len(worst)} worst holdout cases of the segmenter trained on the candidate",
                _worst_cases_figure(test_images[worst], test_labels[worst], synthetic["prediction"][worst],
                                    synthetic["dice"][worst].mean(1), n_classes),
                "Each real holdout slice with its true labels (top) and the labels predicted by the segmenter "
                "trained on the candidate's images (bottom), worst mean Dice first. Outlines, one colour per class.",
                shows_real_images=True))
        return CheckOutput(table=table, figures=figures, scalars={k: float(scalars.get(k, np.nan)) for k in _SCALARS},
                           diagnostics=diagnostics,
                           provenance={"backend": params.backend, "device": describe(device), **backend.versions()})


def _check_labels(cand: ImageSet, holdout: ImageSet | None, train: ImageSet | None) -> tuple[int, list[int]]:
    """The class indices the holdout defines; every labelled set must use exactly those (bar none)."""
    for s in (cand, holdout, train):
        if s is not None and not np.isfinite(s.images).all():
            raise InputError(f"{s.name} images contain non-finite values (NaN or inf)")
    problems = _label_problems(cand.labels is not None, cand.shape, holdout, train)
    if not problems:
        problems = _class_problems([cand], holdout)
    if problems:
        raise InputError(problems[0])
    classes = _classes(holdout)
    return max(classes) + 1, classes


def _label_problems(candidate_labelled: bool, candidate_shape, holdout: ImageSet | None,
                    train: ImageSet | None) -> list[str]:
    """What the check needs before it can train anything: labels on every set, one grid, two classes,
    and train labels that use exactly the holdout's classes (``train`` is None without a baseline)."""
    problems = []
    if not candidate_labelled:
        problems.append("the segmentation check needs labelled candidates: set spec.candidate.mode to conditional "
                        "or paired, or give --samples a folder with images/ and labels/")
    if holdout is None or holdout.labels is None:
        problems.append("the segmentation check needs a labelled holdout: spec.data.holdout with images/ and "
                        "labels/ (real scans the generator never saw)")
    if train is not None and train.labels is None:
        problems.append("the real-only baseline needs labelled train images (spec.data.train with images/ and "
                        "labels/), or set params.baseline: false")
    if holdout is None or holdout.labels is None:
        return problems
    if candidate_shape is not None and tuple(candidate_shape) != tuple(holdout.shape):
        problems.append(f"candidate images are {tuple(candidate_shape)} but the holdout's are {holdout.shape}")
    classes = _classes(holdout)
    if len(classes) < 2:
        problems.append(f"{holdout.name}: the holdout labels hold a single class ({classes}): nothing to segment")
    elif train is not None and train.labels is not None:
        problems += _class_problems([train], holdout)
    return problems


def _classes(holdout: ImageSet) -> list[int]:
    return sorted(int(c) for c in np.unique(holdout.labels))


def _class_problems(sets: list[ImageSet], holdout: ImageSet) -> list[str]:
    classes = _classes(holdout)
    problems = []
    for s in sets:
        used = set(int(c) for c in np.unique(s.labels))
        extra = sorted(used - set(classes))
        if extra:
            problems.append(f"{s.name} labels use class {extra[0]}, which the holdout labels lack "
                            f"(holdout classes: {classes})")
        empty = sorted(set(classes) - used)
        if empty:
            problems.append(f"{s.name} labels never contain class {empty[0]} (holdout classes: {classes}): a "
                            "segmenter trained on them cannot learn it")
    return problems


def _baseline_key(train: ImageSet, holdout: ImageSet, pick, test_idx, n_classes, params, seed,
                  device: str = "cpu") -> str:
    import monai
    import torch

    relevant = params.model_dump(mode="json", include={"backend", "epochs", "batch_size", "learning_rate", "channels",
                                                       "nnunet_iterations"})
    blob = json.dumps({"train": train.manifest_sha256(), "holdout": holdout.manifest_sha256(),
                       "pick": np.asarray(pick).tolist(), "test": np.asarray(test_idx).tolist(),
                       "classes": n_classes, "params": relevant, "seed": seed,
                       "torch": torch.__version__, "monai": monai.__version__,
                       # another device's arithmetic gives other scores; the CPU's keys stay as they were
                       **({"device": device} if device != "cpu" else {})}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _backend(params: SegmentationParams, device: str):
    if params.backend == "nnunet":
        from gate_plugins.segmentation.nnunet_backend import NnUNetBackend

        return NnUNetBackend(device)
    from gate_plugins.segmentation.monai_backend import MonaiBackend

    return MonaiBackend(device)


#: holdout cases drawn in the worst-cases figure
WORST_CASES = 5


def _worst_cases_figure(images: np.ndarray, truth: np.ndarray, pred: np.ndarray, dice: np.ndarray,
                        n_classes: int) -> bytes:
    """Label outlines over the image: a filled overlay would hide the anatomy it is judged against."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from gate_plugins.toolkit.figures import png as _png

    colours = plt.get_cmap("tab10")
    fig, axes = plt.subplots(2, len(images), figsize=(2.0 * len(images), 4.2), squeeze=False)
    for j in range(len(images)):
        for row, (labels, name) in enumerate(((truth[j], "true"), (pred[j], "predicted"))):
            ax = axes[row, j]
            ax.imshow(images[j], cmap="gray")
            for c in range(1, n_classes):
                if (labels == c).any():
                    ax.contour(labels == c, levels=[0.5], colors=[colours(c - 1)], linewidths=0.8)
            ax.set_title(f"{name}" + (f" (Dice {dice[j]:.2f})" if row == 1 else ""), fontsize=7)
            ax.axis("off")
    return _png(fig)


def _dice_figure(synthetic, baseline, names) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from gate_plugins.toolkit.figures import png as _png

    rng = np.random.default_rng(0)
    series = [("candidate", synthetic)] + ([("real-only baseline", baseline)] if baseline is not None else [])
    fig, ax = plt.subplots(figsize=(1.6 * len(names) + 2, 3))
    width = 0.8 / len(series)
    for j, (label, res) in enumerate(series):
        means = res["dice"].mean(0)
        ci = np.array([M.bootstrap_interval(res["dice"][:, k], rng, 500) for k in range(len(names))])
        x = np.arange(len(names)) + j * width
        ax.bar(x, means, width, label=label, yerr=[means - ci[:, 0], ci[:, 1] - means], capsize=3)
    ax.set_xticks(np.arange(len(names)) + width * (len(series) - 1) / 2, names)
    ax.set_ylim(0, 1)
    ax.set_ylabel("Dice")
    ax.legend(fontsize=7)
    return _png(fig)
