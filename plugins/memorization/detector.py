"""The memorization detector: an extractor, the transformations to be invariant to, and the
Calibrated Memorization Index, with reference features cached by content."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

import numpy as np

from gate.imageset import content_digest
from gate.featurecache import FeatureCache, cache_key
from gate_plugins.memorization import maths
from gate_plugins.memorization.extractors import FeatureExtractor
from gate_plugins.memorization.transforms import Invariance, apply, misalign, transform_set

Progress = Callable[[int], None]


class _Transformed:
    """A transformed view of an image array, materialised one batch at a time."""

    def __init__(self, images: np.ndarray, fn):
        self.images, self.fn = images, fn

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, sl: slice) -> np.ndarray:
        return apply(self.images[sl], self.fn)


class _Misaligned:
    """Misaligned copies of ``images[src]``, drawn in order from ``rng`` one batch at a time."""

    def __init__(self, images: np.ndarray, src: np.ndarray, rng: np.random.Generator):
        self.images, self.src, self.rng = images, src, rng

    def __len__(self) -> int:
        return len(self.src)

    def __getitem__(self, sl: slice) -> np.ndarray:
        return np.stack([misalign(self.images[i].astype(np.float64), self.rng) for i in self.src[sl]]).astype(np.float32)


@dataclasses.dataclass
class Detector:
    extractor: FeatureExtractor
    invariance: Invariance = "dihedral"
    covariance: maths.Covariance = "ledoit_wolf"
    null_splits: int = 10
    null_seed: int = 1234
    batch_size: int = 32
    cache_dir: Path | None = None
    #: misaligned copies of each train image whose feature changes the whitening learns to ignore
    nuisance_copies: int = 2
    #: p-values beyond the null's largest value from its fitted tail (False: conformal only, the floor 1/(n+1))
    tail: bool = True

    @property
    def transforms(self) -> list[str]:
        return [name for name, _ in transform_set(self.invariance)]

    def features(self, images: np.ndarray, progress: Progress = lambda _n: None) -> list[np.ndarray]:
        feats = self.extractor.extract(images, self.batch_size, progress)
        return [feats[k] for k in self.extractor.layers]

    def reference_features(self, train: np.ndarray, digest: str | None = None,
                           progress: Progress = lambda _n: None) -> tuple[list[np.ndarray], list[np.ndarray], bool]:
        """Train features under every transform (transform-major) and the nuisance feature changes,
        from the cache when possible."""
        transforms = transform_set(self.invariance)
        if len(transforms) > 1 and train.shape[1] != train.shape[2]:
            raise ValueError(f"invariance '{self.invariance}' needs square images, got {train.shape[1:]}")
        n_layers = len(self.extractor.layers)
        key = None
        self.cache_status_ = "off"  # hit | miss | tampered (a forged or damaged entry, recomputed) | off
        if self.cache_dir is not None:
            key = cache_key(kind="memorization-reference", format=2, train=digest or content_digest(train),
                                  extractor=self.extractor.name, weights=self.extractor.weights_sha256(),
                                  prefilter=getattr(self.extractor, "prefilter_sigma", 0.0),
                                  layers=list(self.extractor.layers), transforms=self.transforms,
                                  nuisance_copies=self.nuisance_copies)
            lookup = FeatureCache(self.cache_dir).load(key)
            self.cache_status_ = lookup.status
            hit = lookup.arrays
            names = [f"ref_{k}" for k in range(n_layers)] + [f"nuis_{k}" for k in range(n_layers)]
            if hit is not None and not all(k in hit for k in names):
                self.cache_status_ = "tampered"  # authentic but incomplete: recomputed like a forged one
            elif hit is not None:
                progress(len(train) * (len(transforms) + self.nuisance_copies))
                return ([hit[f"ref_{k}"] for k in range(n_layers)], [hit[f"nuis_{k}"] for k in range(n_layers)], True)
        parts = [self.features(_Transformed(train, fn), progress) for _, fn in transforms]
        reference = [np.concatenate([p[k] for p in parts]) for k in range(n_layers)]
        nuisance = [np.zeros((0, r.shape[1])) for r in reference]
        if self.nuisance_copies:
            rng = np.random.default_rng(0)  # fixed: the same train set always gives the same whitening
            src = np.tile(np.arange(len(train)), self.nuisance_copies)
            feats = self.features(_Misaligned(train, src, rng), progress)
            nuisance = [f - r[src] for f, r in zip(feats, reference)]  # rows 0..N-1 are the identity
        if key is not None:
            FeatureCache(self.cache_dir).store(key, {**{f"ref_{k}": r for k, r in enumerate(reference)},
                                               **{f"nuis_{k}": d for k, d in enumerate(nuisance)}})
        return reference, nuisance, False

    def fit(self, train: np.ndarray, *, digest: str | None = None, calibration: np.ndarray | None = None,
            progress: Progress = lambda _n: None) -> "Detector":
        reference, nuisance, self.cache_hit_ = self.reference_features(train, digest, progress)
        n = len(train)
        train_layers = [r[:n] for r in reference]  # transform 0 is the identity
        cal = self.features(calibration, progress) if calibration is not None else None
        self.calibration_features_ = cal
        self.index_ = maths.MemorizationIndex(self.covariance, self.null_splits, self.null_seed, self.tail).fit(
            train_layers, reference, len(self.transforms), cal, nuisance if self.nuisance_copies else None)
        return self

    def score(self, images: np.ndarray, progress: Progress = lambda _n: None) -> maths.Scores:
        return self.index_.score(self.features(images, progress))

    def embed(self, layers: list[np.ndarray]) -> np.ndarray:
        """One unit vector per image: the whitened, L2-normalised layers side by side, scaled by
        1/sqrt(layers). The baselines are computed in this space."""
        z = [maths.whiten(f, w) for f, w in zip(layers, self.index_.whiteners_)]
        return np.concatenate(z, axis=1).astype(np.float64) / np.sqrt(len(z))

    def train_embedding(self) -> np.ndarray:
        return np.concatenate(self.index_.train_, axis=1).astype(np.float64) / np.sqrt(len(self.index_.train_))
