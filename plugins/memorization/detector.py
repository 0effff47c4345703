"""The memorization detector: an extractor, the transformations to be invariant to, and the
Calibrated Memorization Index, with reference features cached by content."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from gate.imageset import content_digest
from gate.featurecache import FeatureCache, cache_key
from gate_plugins.memorization import maths
from gate_plugins.toolkit.extractors import FeatureExtractor
from gate_plugins.memorization.transforms import Invariance, apply, misalign, transform_set
from gate_plugins.memorization.verification import VerifySettings, verify_pairs

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


def _device_part(extractor) -> dict:
    """Features computed on another device differ in the last bits: they are other cache entries. The CPU's
    keys stay as they were (nothing cached before devices existed is lost)."""
    kind = getattr(getattr(extractor, "device", None), "type", "cpu")
    return {} if kind == "cpu" else {"device": kind}


def _flat_index(rows: np.ndarray):
    """Exact inner-product search over unit rows."""
    import faiss

    index = faiss.IndexFlatIP(rows.shape[1])
    index.add(np.ascontiguousarray(rows, dtype=np.float32))
    return index


@dataclasses.dataclass(frozen=True)
class Verified:
    similarity: np.ndarray     # [n] best aligned similarity over the retrieved reference images
    nn_index: np.ndarray       # [n] the reference image of that pair
    nn_transform: np.ndarray   # [n] the transform of the invariance set it was retrieved under


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
    #: distinct train images retrieved per sample and verified by registration (0: retrieval only, the
    #: paper's); needs a holdout, whose images are retrieved and verified the same way as the null
    verify_k: int = 3
    verify_settings: VerifySettings = dataclasses.field(default_factory=VerifySettings)
    #: verification scores a sample by its membership contrast (aligned similarity to train against that to
    #: the holdout's images, maths.membership_contrast); False: by the similarity to train alone
    verify_contrast: bool = True

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
        key = self._reference_key(train, digest) if self.cache_dir is not None else None
        self.cache_status_ = "off"  # hit | miss | tampered (a forged or damaged entry, recomputed) | off
        if key is not None:
            self.cache_status_, hit = self._cached_reference(key)
            if hit is not None:
                progress(len(train) * (len(transforms) + self.nuisance_copies))
                return hit[0], hit[1], True
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

    def cached_reference_features(self, train: np.ndarray, digest: str | None = None) -> list[np.ndarray] | None:
        """The train features under every transform (transform-major, as :meth:`reference_features`) when the
        cache already holds them (the memorization check computed them), else None: never computes them, so a
        caller that needs only the identity rows can extract those alone instead of every transform's. Sets
        ``cache_status_`` as :meth:`reference_features` does."""
        self.cache_status_ = "off"
        if self.cache_dir is None:
            return None
        self.cache_status_, hit = self._cached_reference(self._reference_key(train, digest))
        return hit[0] if hit is not None else None

    def _reference_key(self, train: np.ndarray, digest: str | None) -> str:
        return cache_key(kind="memorization-reference", format=2, train=digest or content_digest(train),
                         extractor=self.extractor.name, weights=self.extractor.weights_sha256(),
                         prefilter=getattr(self.extractor, "prefilter_sigma", 0.0),
                         layers=list(self.extractor.layers), transforms=self.transforms,
                         nuisance_copies=self.nuisance_copies, **_device_part(self.extractor))

    def _cached_reference(self, key: str) -> tuple[str, tuple[list[np.ndarray], list[np.ndarray]] | None]:
        """The cache's status for ``key`` and, on a whole authentic entry, (reference, nuisance) per layer."""
        n_layers = len(self.extractor.layers)
        lookup = FeatureCache(self.cache_dir).load(key)
        hit = lookup.arrays
        names = [f"ref_{k}" for k in range(n_layers)] + [f"nuis_{k}" for k in range(n_layers)]
        if hit is not None and not all(k in hit for k in names):
            return "tampered", None  # authentic but incomplete: recomputed like a forged one
        if hit is None:
            return lookup.status, None
        return lookup.status, ([hit[f"ref_{k}"] for k in range(n_layers)], [hit[f"nuis_{k}"] for k in range(n_layers)])

    def fit(self, train: np.ndarray, *, digest: str | None = None, calibration: np.ndarray | None = None,
            calibration_groups: Sequence[object] | None = None, progress: Progress = lambda _n: None) -> "Detector":
        """``calibration_groups`` names the subject of each calibration (holdout) image, so that a holdout
        image's non-members exclude its own subject's other slices (``None``: each image its own group)."""
        reference, nuisance, self.cache_hit_ = self.reference_features(train, digest, progress)
        n = len(train)
        train_layers = [r[:n] for r in reference]  # transform 0 is the identity
        cal = self.features(calibration, progress) if calibration is not None else None
        self.calibration_features_ = cal
        self.index_ = maths.MemorizationIndex(self.covariance, self.null_splits, self.null_seed, self.tail).fit(
            train_layers, reference, len(self.transforms), cal, nuisance if self.nuisance_copies else None)
        self.train_images_ = train
        self.verified_null_ = self.verified_tail_ = None
        if self.verify_k and cal is not None:
            # built once: the holdout, the candidates and the planted copies all retrieve from it
            self.reference_index_ = _flat_index(self.reference_embedding())
            to_train = self.verify(calibration, cal, progress)
            self.verified_train_null_ = to_train.similarity
            to_holdout = None
            if self.verify_contrast:
                groups = np.arange(len(calibration)) if calibration_groups is None else \
                    np.unique(np.asarray([str(g) for g in calibration_groups]), return_inverse=True)[1]
                if len(groups) != len(calibration):
                    raise ValueError(f"{len(groups)} calibration groups for {len(calibration)} calibration images")
                if groups.max() < 1:
                    raise ValueError("the holdout holds one subject only: a holdout image's non-members must come "
                                     "from other subjects, so give a holdout of at least 2 subjects")
                self.holdout_images_, self.holdout_groups_ = calibration, groups
                views = [cal] + [self.features(_Transformed(calibration, fn), progress)
                                 for _, fn in transform_set(self.invariance)[1:]]
                self.holdout_index_ = _flat_index(np.concatenate([self.embed(v) for v in views]))
                to_holdout = self.verify_non_members(calibration, cal, progress, exclude_groups=groups).similarity
            self.verified_null_ = self.verification_statistic(to_train.similarity, to_holdout)
            self.verified_tail_ = maths.fit_tail(self.verified_null_) if self.tail else None
        return self

    def fit_work(self, n_train: int, n_calibration: int) -> int:
        """The progress ticks :meth:`fit` reports: one per feature extraction or verified image."""
        t = len(self.transforms)
        work = n_train * (t + self.nuisance_copies) + n_calibration
        if self.verify_k and n_calibration:
            work += n_calibration * (1 + ((t - 1) + 1 if self.verify_contrast else 0))
        return work

    @property
    def verify_passes(self) -> int:
        """Verification passes per scored image (train, and with the contrast the holdout too)."""
        return 2 if self.verify_contrast else 1

    @property
    def verifying(self) -> bool:
        return getattr(self, "verified_null_", None) is not None

    def verify(self, images: np.ndarray, layers: list[np.ndarray], progress: Progress = lambda _n: None) -> "Verified":
        """Retrieve then verify: the ``verify_k`` distinct train images nearest to each sample in the
        joint embedding (each under the transform it matched best), each registered to the sample by a
        similarity transform and compared by rank NMI; a sample keeps its best pair."""
        return self._retrieve_and_verify(images, self.embed(layers), self.reference_index_, self.train_images_,
                                         progress)

    def verify_non_members(self, images: np.ndarray, layers: list[np.ndarray], progress: Progress = lambda _n: None,
                           exclude_groups: np.ndarray | None = None) -> "Verified":
        """As :meth:`verify`, against the holdout; ``exclude_groups[j]`` (a holdout image's own subject)
        is skipped for query ``j``."""
        exclude = None if exclude_groups is None else (np.asarray(exclude_groups), self.holdout_groups_)
        return self._retrieve_and_verify(images, self.embed(layers), self.holdout_index_, self.holdout_images_,
                                         progress, exclude)

    def _retrieve_and_verify(self, images: np.ndarray, embedded: np.ndarray, index, reference: np.ndarray,
                             progress: Progress, exclude: tuple[np.ndarray, np.ndarray] | None = None) -> "Verified":
        pairs = self.retrieve_pairs(embedded, index, len(reference), exclude)
        transforms = transform_set(self.invariance)
        best = np.full(len(images), -np.inf)
        best_ref, best_transform = np.zeros(len(images), np.int64), np.zeros(len(images), np.int64)
        for start in range(0, len(images), self.batch_size):
            batch = [(j, i, t) for j in range(start, min(start + self.batch_size, len(images))) for i, t in pairs[j]]
            if batch:
                queries = np.stack([images[j] for j, _, _ in batch])
                refs = np.stack([apply(reference[i][None], transforms[t][1])[0] for _, i, t in batch])
                sim = verify_pairs(queries, refs, settings=self.verify_settings).similarity
                for (j, i, t), v in zip(batch, sim):
                    if v > best[j]:
                        best[j], best_ref[j], best_transform[j] = v, i, t
            progress(min(start + self.batch_size, len(images)) - start)
        return Verified(similarity=np.where(np.isfinite(best), best, 0.0), nn_index=best_ref,
                        nn_transform=best_transform)

    def retrieve_pairs(self, embedded: np.ndarray, index, n_ref: int,
                       exclude: tuple[np.ndarray, np.ndarray] | None = None) -> list[list[tuple[int, int]]]:
        """For each query, the ``verify_k`` distinct reference images nearest to it in ``index`` (rows
        transform-major over ``n_ref`` images), each as (image, transform it matched under). ``exclude``
        is (the query's group, each reference image's group): a query skips its own group."""
        k = min(self.verify_k, n_ref)
        # several transforms of one image can crowd the top, and an excluded subject fills it: search deeper
        skipped = 0 if exclude is None else int(np.bincount(exclude[1]).max())
        depth = min(index.ntotal, (k + skipped) * len(self.transforms))
        _, rows = index.search(np.ascontiguousarray(embedded, dtype=np.float32), depth)
        out = []
        for j in range(len(rows)):
            found: list[tuple[int, int]] = []
            for row in rows[j]:
                i = int(row % n_ref)
                if row < 0 or any(i == f for f, _ in found) or (exclude is not None and exclude[1][i] == exclude[0][j]):
                    continue
                found.append((i, int(row // n_ref)))
                if len(found) == k:
                    break
            out.append(found)
        return out

    def score(self, images: np.ndarray, progress: Progress = lambda _n: None,
              layers: list[np.ndarray] | None = None, verify_progress: Progress = lambda _n: None) -> maths.Scores:
        """The index's scores; with verification, ``p_value`` combines the retrieval and verification
        p-values (Bonferroni), ``verified`` holds each sample's best aligned similarity to train and
        ``verified_non_member`` (with the contrast) its best to the holdout."""
        layers = self.features(images, progress) if layers is None else layers
        scores = self.index_.score(layers)
        if not self.verifying:
            return scores
        found = self.verify(images, layers, verify_progress)
        other = self.verify_non_members(images, layers, verify_progress) if self.verify_contrast else None
        p_verified = self.verified_p_values(found.similarity, None if other is None else other.similarity)
        return dataclasses.replace(scores, p_value=maths.bonferroni_pair(scores.p_value, p_verified),
                                   verified=found.similarity, p_retrieval=scores.p_value, p_verified=p_verified,
                                   verified_non_member=None if other is None else other.similarity,
                                   verified_nn_index=found.nn_index, verified_nn_transform=found.nn_transform)

    def verification_statistic(self, to_train: np.ndarray, to_non_members: np.ndarray | None) -> np.ndarray:
        """The statistic the verification null is made of: the membership contrast, or the train
        similarity's Fisher z without it."""
        if self.verify_contrast:
            return maths.membership_contrast(to_train, to_non_members)
        return maths.fisher_z(to_train)

    def verified_p_values(self, to_train: np.ndarray, to_non_members: np.ndarray | None = None) -> np.ndarray:
        return maths.tail_p_values(self.verification_statistic(to_train, to_non_members), self.verified_null_,
                                   self.verified_tail_)

    def null_leave_one_out_p_values(self) -> np.ndarray:
        """Each holdout image's p-value against the other holdout images, by the same rule as a sample's."""
        p = maths.leave_one_out_tail_p_values(maths.fisher_z(self.index_.null_), tail=self.tail)
        if self.verifying:
            p = maths.bonferroni_pair(p, maths.leave_one_out_tail_p_values(self.verified_null_, tail=self.tail))
        return p

    def reference_embedding(self) -> np.ndarray:
        """The reference rows (every transform of every train image) in the joint embedding."""
        return np.ascontiguousarray(np.concatenate(self.index_.reference_, axis=1) / np.sqrt(len(self.index_.reference_)),
                                    dtype=np.float32)

    def embed(self, layers: list[np.ndarray]) -> np.ndarray:
        """One unit vector per image: the whitened, L2-normalised layers side by side, scaled by
        1/sqrt(layers). The baselines are computed in this space."""
        z = [maths.whiten(f, w) for f, w in zip(layers, self.index_.whiteners_)]
        return np.concatenate(z, axis=1).astype(np.float64) / np.sqrt(len(z))

    def train_embedding(self) -> np.ndarray:
        return np.concatenate(self.index_.train_, axis=1).astype(np.float64) / np.sqrt(len(self.index_.train_))
