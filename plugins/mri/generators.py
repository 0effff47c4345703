"""Demo generators that follow gate's contract: honest and copying paired generators (image + labels),
and a faithful and a broken label-conditioned one."""

from __future__ import annotations

import numpy as np

from gate.generator import ConditionalImageGenerator, PairedImageGenerator
from gate_plugins.mri.subjects import axial_label_slices, axial_slices, make_labelled_subject

#: subject seeds of the honest generator start here, far from the demo's train and holdout subjects
NOVEL_SUBJECT_BASE = 1_000_000


class NovelSubjectGenerator(PairedImageGenerator):
    """Stands in for a well-generalising generator: every call renders slices of brand-new synthetic
    subjects (new deformations of the real MNI152 template) with their tissue labels, so no output is
    a training image."""

    def __init__(self, slices_per_subject: int = 24, size: int = 128):
        self.slices_per_subject, self.size = slices_per_subject, size

    def generate(self, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(seed)
        images, labels = [], []
        while len(images) < n:
            vol, lab = make_labelled_subject(NOVEL_SUBJECT_BASE + int(rng.integers(0, 1_000_000)))
            slices = axial_slices(vol, self.slices_per_subject, self.size)
            maps = axial_label_slices(lab, self.slices_per_subject, self.size)
            take = rng.choice(len(slices), size=min(8, n - len(images)), replace=False)
            images.extend(slices[take])
            labels.extend(maps[take])
        return np.stack(images).astype(np.float32), np.stack(labels)


class CopyingGenerator(PairedImageGenerator):
    """Stands in for a memorising generator: returns training slices with their labels, lightly
    augmented (Gaussian noise sd 0.01 and an intensity scale in [0.9, 1.1]) so that they are not
    byte-identical."""

    def load_context(self, context):
        self.train = np.load(context.artifacts["train_slices"])
        self.labels = np.load(context.artifacts["train_labels"])

    def generate(self, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(seed)
        idx = rng.choice(len(self.train), size=n, replace=n > len(self.train))
        imgs = self.train[idx] * rng.uniform(0.9, 1.1, (n, 1, 1)) + rng.normal(0, 0.01, (n, *self.train.shape[1:]))
        return np.clip(imgs, 0, 1).astype(np.float32), self.labels[idx]


def render_from_labels(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A plausible T1 slice for each label map: per-class intensities (CSF dark, GM grey, WM bright) with
    per-image jitter, partial-volume blur, a smooth bias field and faint noise. Stands in for a
    label-conditioned generator (a SPADE- or diffusion-style model)."""
    from scipy import ndimage as ndi

    out = []
    for lab in np.asarray(labels):
        means = np.array([0.0, 0.41, 0.67, 0.85]) * rng.uniform(0.95, 1.05)
        img = means[np.clip(lab, 0, 3)] + rng.normal(0, 0.02, lab.shape) * (lab > 0)
        img = ndi.gaussian_filter(img, 0.8)
        field = ndi.gaussian_filter(rng.standard_normal(lab.shape), 24)
        img = img * np.exp(0.5 * field / (field.std() + 1e-12) * 0.05)
        out.append(np.clip(img + rng.normal(0, 0.005, lab.shape) * (img > 0.02), 0, 1))
    return np.stack(out).astype(np.float32)


class LabelRenderingGenerator(ConditionalImageGenerator):
    """Renders an image for each label map it is given: anatomy follows the labels."""

    def generate(self, labels: np.ndarray, seed: int) -> np.ndarray:
        return render_from_labels(labels, np.random.default_rng(seed))


def render_off_labels(labels: np.ndarray, low_px: float, high_px: float, rng: np.random.Generator) -> np.ndarray:
    """Render each label map's anatomy shifted by ``low_px``-``high_px`` pixels in each direction (random
    signs): clean images whose anatomy disagrees with the labels."""
    from scipy import ndimage as ndi

    moved = [ndi.shift(lab, rng.uniform(low_px, high_px, 2) * rng.choice([-1, 1], 2), order=0, mode="constant")
             for lab in np.asarray(labels)]
    return render_from_labels(np.stack(moved), rng)


class MisalignedRenderingGenerator(ConditionalImageGenerator):
    """A broken label-conditioned generator: its images are as clean as the good one's (same renderer,
    same anatomy), but the anatomy sits 4-8 px off the label map it was asked for in each direction, so
    images and labels disagree: the failure image-quality metrics cannot see."""

    def generate(self, labels: np.ndarray, seed: int) -> np.ndarray:
        return render_off_labels(labels, 4, 8, np.random.default_rng(seed))
