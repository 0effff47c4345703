"""The demo's train and holdout folders: ``images/`` and ``labels/`` with one .npy per slice (tissue
labels 0 background, 1 CSF, 2 GM, 3 WM)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gate_plugins.mri.subjects import labelled_subject_slices

TRAIN_SUBJECTS = range(1, 9)        # 8 subjects
HOLDOUT_SUBJECTS = range(201, 205)  # 4 other subjects
SLICES_PER_SUBJECT = 24


def write_slices(folder: Path, images: np.ndarray, ids: list[str], labels: np.ndarray | None = None) -> None:
    """One .npy per slice in ``folder`` (or in ``folder/images`` and ``folder/labels`` with labels)."""
    targets = [(folder, images, np.float32)] if labels is None else \
        [(folder / "images", images, np.float32), (folder / "labels", labels, np.uint8)]
    for where, arrays, dtype in targets:
        where.mkdir(parents=True, exist_ok=True)
        for old in where.glob("*.npy"):
            old.unlink()
        for arr, sid in zip(arrays, ids):
            np.save(where / f"{sid}.npy", arr.astype(dtype))


def build_demo_data(root: Path) -> dict[str, Path]:
    """Write ``root/train`` and ``root/holdout`` (subject-disjoint, labelled), and the train slices and
    labels as single arrays for the copying generator."""
    train, train_labels, train_ids = labelled_subject_slices(TRAIN_SUBJECTS, SLICES_PER_SUBJECT)
    holdout, holdout_labels, holdout_ids = labelled_subject_slices(HOLDOUT_SUBJECTS, SLICES_PER_SUBJECT)
    write_slices(root / "train", train, train_ids, train_labels)
    write_slices(root / "holdout", holdout, holdout_ids, holdout_labels)
    np.save(root / "train_slices.npy", train)
    np.save(root / "train_labels.npy", train_labels)
    return {"train": root / "train", "holdout": root / "holdout", "train_slices": root / "train_slices.npy",
            "train_labels": root / "train_labels.npy"}
