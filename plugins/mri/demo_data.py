"""The demo's train and holdout folders, written as one .npy per slice."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gate_plugins.mri.subjects import subject_slices

TRAIN_SUBJECTS = range(1, 9)        # 8 subjects
HOLDOUT_SUBJECTS = range(201, 205)  # 4 other subjects
SLICES_PER_SUBJECT = 24


def write_slices(folder: Path, images: np.ndarray, ids: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.npy"):
        old.unlink()
    for img, sid in zip(images, ids):
        np.save(folder / f"{sid}.npy", img.astype(np.float32))


def build_demo_data(root: Path) -> dict[str, Path]:
    """Write ``root/train`` and ``root/holdout`` (subject-disjoint) and ``root/train_slices.npy``."""
    train, train_ids = subject_slices(TRAIN_SUBJECTS, SLICES_PER_SUBJECT)
    holdout, holdout_ids = subject_slices(HOLDOUT_SUBJECTS, SLICES_PER_SUBJECT)
    write_slices(root / "train", train, train_ids)
    write_slices(root / "holdout", holdout, holdout_ids)
    np.save(root / "train_slices.npy", train)
    return {"train": root / "train", "holdout": root / "holdout", "train_slices": root / "train_slices.npy"}
