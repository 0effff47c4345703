"""The segmentation check against the image metrics on the shipped data, and its cost.

Train: 8 labelled synthetic subjects x 24 slices; holdout: 4 others x 24 (the demo's data). Candidates:
64 slices from each of: brand-new subjects with their labels; a faithful renderer of deformed train
label maps (the demo's conditional generator); the same renderer with its anatomy shifted off the
label map by 1-2, 2-4, 4-8 px; and train slices with their own labels (copies). For each: the
segmentation check's Dice, drop against the real-only baseline with its interval, and the quality
check's FID ratio and MRI-NIQE, which should not tell the shifted renderers from the faithful one.

    python benchmarks/segmentation.py
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from gate.imageset import ImageSet
from gate.validators import CheckContext
from gate.workflow import conditioning_labels
from gate_plugins.mri.demo_data import HOLDOUT_SUBJECTS, SLICES_PER_SUBJECT, TRAIN_SUBJECTS
from gate_plugins.mri.generators import NovelSubjectGenerator, render_from_labels, render_off_labels
from gate_plugins.mri.subjects import labelled_subject_slices
from gate_plugins.quality.validator import QualityParams, QualityValidator
from gate_plugins.segmentation.validator import SegmentationParams, SegmentationValidator

N = 64


def labelled(name: str, images: np.ndarray, labels: np.ndarray) -> ImageSet:
    return ImageSet(name, tuple(f"{name}{i:04d}" for i in range(len(images))), images, labels=labels.astype(np.int64))


def main() -> None:
    tr_i, tr_l, _ = labelled_subject_slices(TRAIN_SUBJECTS, SLICES_PER_SUBJECT)
    ho_i, ho_l, _ = labelled_subject_slices(HOLDOUT_SUBJECTS, SLICES_PER_SUBJECT)
    train, holdout = labelled("train", tr_i, tr_l), labelled("holdout", ho_i, ho_l)
    maps = conditioning_labels(train, N, seed=0, deformation_px=4.0)
    novel_i, novel_l = NovelSubjectGenerator().generate(N, seed=0)
    pick = np.random.default_rng(1).choice(len(tr_i), N, replace=False)
    candidates = [
        ("new subjects + their labels (paired)", novel_i, novel_l),
        ("faithful renderer (conditional)", render_from_labels(maps, np.random.default_rng(0)), maps),
        ("renderer, anatomy 1-2 px off its labels", render_off_labels(maps, 1, 2, np.random.default_rng(0)), maps),
        ("renderer, anatomy 2-4 px off", render_off_labels(maps, 2, 4, np.random.default_rng(0)), maps),
        ("renderer, anatomy 4-8 px off (the demo's v4)", render_off_labels(maps, 4, 8, np.random.default_rng(0)), maps),
        ("train slices + their labels (copies)", tr_i[pick], tr_l[pick]),
    ]
    seg_params = SegmentationParams(class_names={1: "CSF", 2: "GM", 3: "WM"})
    rows = []
    with tempfile.TemporaryDirectory() as cache:
        for k, (name, images, labels) in enumerate(candidates):
            ctx = CheckContext(candidate=labelled("candidate", images, labels), train=train, holdout=holdout, seed=0,
                               batch_size=16, cache_dir=Path(cache))
            t0 = time.perf_counter()
            seg = SegmentationValidator().run(ctx, seg_params)
            seconds = time.perf_counter() - t0
            q = QualityValidator().run(ctx, QualityParams(self_test=False))
            s = seg.scalars
            rows.append((name, s["dice_mean"], s["dice_drop"], s["dice_drop_lower"], s["dice_drop_upper"],
                         s["dice_worst_class"], s["hd95_increase"], q.scalars["fid_ratio"], q.scalars["niqe_mean"],
                         seconds, seg.diagnostics["baseline_cache_hit"]))
    print(f"baseline (real-only, {N} train slices, 20 epochs): mean Dice {s['baseline_dice_mean']:.3f} on "
          f"{len(holdout)} holdout slices\n")
    print("| candidate | Dice | drop | drop 95 % CI | worst class | HD95 increase (px) | blocks (drop_upper > 0.05) "
          "| FID ratio | MRI-NIQE | check time (s) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, dice, drop, lo, hi, worst, hd, fid, niqe, sec, hit in rows:
        print(f"| {name} | {dice:.3f} | {drop:+.3f} | [{lo:+.3f}, {hi:+.3f}] | {worst:.3f} | {hd:+.2f} | "
              f"{'yes' if hi > 0.05 else 'no'} | {fid:.2f} | {niqe:.2f} | {sec:.1f}{'' if hit else ' (with baseline)'} |")


if __name__ == "__main__":
    main()
