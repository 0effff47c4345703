"""Two demo generators that follow gate's contract: an honest one and a copying one."""

from __future__ import annotations

import numpy as np

from gate.generator import ImageGenerator
from gate_plugins.mri.subjects import axial_slices, make_subject

#: subject seeds of the honest generator start here, far from the demo's train and holdout subjects
NOVEL_SUBJECT_BASE = 1_000_000


class NovelSubjectGenerator(ImageGenerator):
    """Stands in for a well-generalising generator: every call renders slices of brand-new synthetic
    subjects (new deformations of the real MNI152 template), so no output is a training image."""

    def __init__(self, slices_per_subject: int = 24, size: int = 128):
        self.slices_per_subject, self.size = slices_per_subject, size

    def generate(self, n: int, seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        out = []
        while len(out) < n:
            subject = NOVEL_SUBJECT_BASE + int(rng.integers(0, 1_000_000))
            slices = axial_slices(make_subject(subject), self.slices_per_subject, self.size)
            take = rng.choice(len(slices), size=min(8, n - len(out)), replace=False)
            out.extend(slices[take])
        return np.stack(out).astype(np.float32)


class CopyingGenerator(ImageGenerator):
    """Stands in for a memorising generator: returns training slices, lightly augmented (Gaussian
    noise sd 0.01 and an intensity scale in [0.9, 1.1]) so that they are not byte-identical."""

    def load_context(self, context):
        self.train = np.load(context.artifacts["train_slices"])

    def generate(self, n: int, seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        idx = rng.choice(len(self.train), size=n, replace=n > len(self.train))
        imgs = self.train[idx] * rng.uniform(0.9, 1.1, (n, 1, 1)) + rng.normal(0, 0.01, (n, *self.train.shape[1:]))
        return np.clip(imgs, 0, 1).astype(np.float32)
