"""The memorization detector: an extractor, the transformations to be invariant to, and the
Calibrated Memorization Index, with reference features cached by content."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Callable, Literal, Sequence

import numpy as np

from gate.imageset import content_digest
from gate.featurecache import FeatureCache, cache_key
from gate_plugins.memorization import maths
from gate_plugins.toolkit.engines import LocalEngine
from gate_plugins.toolkit.extractors import FeatureExtractor
from gate_plugins.toolkit.search import EXACT_LIMIT, NeighbourIndex
from gate_plugins.memorization.transforms import Invariance, apply, misalign, transform_set
from gate_plugins.memorization.verification import VerifySettings, verify_pairs

Progress = Callable[[int], None]
#: reference rows per feature shard (16,384 rows of the default extractor's 472 features: 62 MiB)
SHARD_ROWS = 16384


class _Transformed:
    """A transformed view of an image array, materialised one batch at a time."""

    def __init__(self, images: np.ndarray, fn):
        self.images, self.fn = images, fn

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, sl: slice) -> np.ndarray:
        return apply(self.images[sl], self.fn)


class _Rows:
    """Rows ``start:stop`` of an image array or lazy view, still lazy: a shard is never materialised whole."""

    def __init__(self, images, start: int, stop: int):
        self.images, self.start, self.stop = images, start, stop

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, sl: slice) -> np.ndarray:
        a, b, _ = sl.indices(len(self))
        return self.images[self.start + a:self.start + b]


class _Stacked:
    """One array per layer, ``rows`` long, filled in place as features arrive (allocated at the first put,
    when the widths are known): transforms and shards are joined without a second copy of the reference."""

    def __init__(self, rows: int):
        self.rows, self.layers = rows, []

    def put(self, start: int, feats: list[np.ndarray]) -> None:
        if not self.layers and start == 0 and all(len(f) == self.rows for f in feats):
            self.layers = list(feats)  # one put fills every row (one transform, one shard): no copy at all
            return
        if not self.layers:
            self.layers = [np.empty((self.rows, f.shape[1]), f.dtype) for f in feats]
        for out, f in zip(self.layers, feats):
            out[start:start + len(f)] = f


class _Views:
    """The images under several transforms, view-major (all images under the first, then the second...),
    materialised one batch at a time: one extraction job for every view."""

    def __init__(self, images: np.ndarray, fns: list):
        self.images, self.fns = images, fns

    def __len__(self) -> int:
        return len(self.images) * len(self.fns)

    def __getitem__(self, sl: slice) -> np.ndarray:
        n = len(self.images)
        start, stop, _ = sl.indices(len(self))
        parts = []
        while start < stop:
            v, i = divmod(start, n)
            end = min(stop, (v + 1) * n)
            parts.append(apply(self.images[i:i + end - start], self.fns[v]))
            start = end
        return np.concatenate(parts) if parts else self.images[:0]


def inverse_transforms(invariance: Invariance) -> list[int]:
    """For each transform ``t`` of the set, the ``u`` with ``T_u(T_t(x)) == x`` (found on a probe image,
    so it holds for any transform set that is a group)."""
    transforms = transform_set(invariance)
    probe = np.arange(16.0).reshape(1, 4, 4)
    return [next(u for u, (_, g) in enumerate(transforms) if np.array_equal(apply(apply(probe, f), g), probe))
            for _, f in transforms]


MatchSide = Literal["auto", "reference", "query"]


def choose_match_side(n_train: int, n_queries: int, n_transforms: int, null_sample: int) -> str:
    """The cheaper side in feature extractions. The reference side extracts every train image under every
    transform (``T * n_train``, cached by content); the query side extracts the train images once and every
    query, and a fixed sample of train rows for the paper's null, under every transform
    (``n_train + T * (n_queries + null_sample)``). Ties stay on the reference side (the paper's layout)."""
    if n_transforms == 1:
        return "reference"
    reference = n_transforms * n_train
    query = n_train + n_transforms * (n_queries + min(n_train, null_sample))
    return "query" if query < reference else "reference"


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
    #: where the transforms are applied: the reference (every train image under every transform) or the
    #: queries (candidates, holdout, planted copies); auto: the one that extracts fewer images
    match_side: MatchSide = "auto"
    #: train images whose misaligned copies estimate the nuisance covariance: a fixed-size, seeded sample
    #: (all of them when fewer), so the cost does not grow with the train set (benchmarks/nuisance_convergence.py)
    nuisance_images: int = 512
    #: train rows whose transformed views make the paper's null on the query side (a fixed, seeded sample)
    null_sample: int = 256
    #: reference rows up to which search is exact (None: gate_plugins.toolkit.search.EXACT_LIMIT); larger
    #: references get an inverted file whose candidates are re-ranked exactly, kept in the cache
    exact_limit: int | None = None
    #: where features are extracted and the reference searched (gate_plugins.toolkit.engines; None: here)
    engine: object | None = None
    #: reference rows per shard: a larger reference's features are stored in the cache a shard at a time as
    #: they are computed, so that a fit that is killed resumes from the shards written
    shard_rows: int = SHARD_ROWS

    @property
    def transforms(self) -> list[str]:
        return [name for name, _ in transform_set(self.invariance)]

    def resolve_side(self, n_train: int, n_queries: int) -> str:
        if self.match_side != "auto":
            return "reference" if len(self.transforms) == 1 else self.match_side
        return choose_match_side(n_train, n_queries, len(self.transforms), self.null_sample)

    def turned(self, images: np.ndarray, progress: Progress = lambda _n: None) -> list[list[np.ndarray]]:
        """The images' features under the inverse of each transform but the identity (query-side matching)."""
        transforms, inverse = transform_set(self.invariance), inverse_transforms(self.invariance)
        n = len(images)
        feats = self.features(_Views(images, [transforms[inverse[t]][1] for t in range(1, len(transforms))]), progress)
        return [[f[v * n:(v + 1) * n] for f in feats] for v in range(len(transforms) - 1)]

    def nuisance_sources(self, n_train: int) -> np.ndarray:
        """The train images whose misaligned copies are drawn, in draw order: every image when there are at
        most ``nuisance_images`` (as before the sample existed), else a seeded sample of that many."""
        if n_train <= self.nuisance_images:
            return np.arange(n_train)
        return np.sort(np.random.default_rng(0).choice(n_train, self.nuisance_images, replace=False))

    def features(self, images: np.ndarray, progress: Progress = lambda _n: None) -> list[np.ndarray]:
        feats = (self.engine or self.extractor).extract(images, self.batch_size, progress)
        return [feats[k] for k in self.extractor.layers]

    def reference_features(self, train: np.ndarray, digest: str | None = None,
                           progress: Progress = lambda _n: None, side: str = "reference",
                           ) -> tuple[list[np.ndarray], list[np.ndarray], bool]:
        """Train features, on the reference side under every transform (transform-major), on the query side
        untransformed, and the nuisance feature changes, from the cache when possible."""
        transforms = transform_set(self.invariance) if side == "reference" else transform_set("none")
        if len(self.transforms) > 1 and train.shape[1] != train.shape[2]:
            raise ValueError(f"invariance '{self.invariance}' needs square images, got {train.shape[1:]}")
        src = np.tile(self.nuisance_sources(len(train)), self.nuisance_copies)
        key = self._reference_key(train, digest, side) if self.cache_dir is not None else None
        self.cache_status_ = "off"  # hit | miss | tampered (a forged or damaged entry, recomputed) | off
        if key is not None:
            self.cache_status_, hit = self._cached_reference(key)
            if hit is not None:
                progress(len(train) * len(transforms) + len(src))
                return hit[0], hit[1], True
        stacked, shards = _Stacked(len(train) * len(transforms)), []
        for t, (_, fn) in enumerate(transforms):
            shards += self._sharded_features(_Transformed(train, fn), key, t, progress, stacked, t * len(train))
        reference = stacked.layers
        nuisance = [np.zeros((0, r.shape[1])) for r in reference]
        if self.nuisance_copies:
            rng = np.random.default_rng(0)  # fixed: the same train set always gives the same whitening
            feats = self.features(_Misaligned(train, src, rng), progress)
            nuisance = [f - r[src] for f, r in zip(feats, reference)]  # rows 0..N-1 are the identity
        if key is not None:
            # a sharded reference is held by its shards; the entry names them instead of holding a second copy
            rows = {"ref_shards": np.asarray(shards, np.int64)} if shards else \
                {f"ref_{k}": r for k, r in enumerate(reference)}
            FeatureCache(self.cache_dir).store(key, {**rows, **{f"nuis_{k}": d for k, d in enumerate(nuisance)}})
        return reference, nuisance, False

    def _shard_key(self, key: str, transform: int, start: int, stop: int) -> str:
        return cache_key(kind="memorization-shard", format=1, entry=key, transform=transform, rows=[start, stop])

    def _sharded_features(self, images, key: str | None, transform: int, progress: Progress, out: "_Stacked",
                          offset: int) -> list[tuple[int, int, int]]:
        """Put the features of ``images`` (the train set under transform number ``transform``) in ``out`` from
        row ``offset``, and return the (transform, start, stop) of the shards they were stored in: none when
        the set fits one shard or nothing is cached. A shard already in the cache, whole and authentic, is
        read instead of extracted, so a fit killed part-way resumes where it stopped. Shards start at
        multiples of ``shard_rows``; when that is a multiple of ``batch_size`` (the defaults: 16,384 and 32)
        the extractor sees the same batches as in one pass, and the features are the same to the bit."""
        n = len(images)
        if key is None or n <= self.shard_rows:
            out.put(offset, self.features(images, progress))
            return []
        bounds = [(transform, a, min(n, a + self.shard_rows)) for a in range(0, n, self.shard_rows)]
        cache = FeatureCache(self.cache_dir)
        for (_, start, stop), shard_key, feats in self._stored_shards(cache, key, bounds):
            if feats is None:
                feats = self.features(_Rows(images, start, stop), progress)
                cache.store(shard_key, {f"layer_{k}": f for k, f in enumerate(feats)})
            else:
                progress(stop - start)
            out.put(offset + start, feats)
        return bounds

    def _stored_shards(self, cache: FeatureCache, key: str, bounds):
        """(bounds, cache key, features per layer) of each shard named by ``bounds`` (transform, start, stop);
        the features are None when the shard is missing, forged or not the size its bounds name."""
        n_layers = len(self.extractor.layers)
        for transform, start, stop in bounds:
            shard_key = self._shard_key(key, int(transform), int(start), int(stop))
            hit = cache.load(shard_key).arrays
            whole = hit is not None and all(len(hit.get(f"layer_{k}", ())) == stop - start for k in range(n_layers))
            yield (int(transform), int(start), int(stop)), shard_key, \
                [hit[f"layer_{k}"] for k in range(n_layers)] if whole else None

    def cached_reference_features(self, train: np.ndarray, digest: str | None = None) -> list[np.ndarray] | None:
        """The train features (transform-major, identity first, as :meth:`reference_features` on either side)
        when the cache already holds them (the memorization check computed them), else None: never computes
        them, so a caller that needs only the identity rows can extract those alone instead of every
        transform's. Sets ``cache_status_`` as :meth:`reference_features` does."""
        self.cache_status_ = "off"
        if self.cache_dir is None:
            return None
        for side in ("reference", "query"):  # whichever side the memorization check matched on
            self.cache_status_, hit = self._cached_reference(self._reference_key(train, digest, side))
            if hit is not None:
                return hit[0]
        return None

    def _reference_key(self, train: np.ndarray, digest: str | None, side: str = "reference") -> str:
        # the parts added since the layout began enter only when they change the entry, so that entries
        # stored before them stay valid
        extra = {"side": side} if side != "reference" else {}
        if len(train) > self.nuisance_images and self.nuisance_copies:
            extra["nuisance_images"] = self.nuisance_images
        return cache_key(kind="memorization-reference", format=2, train=digest or content_digest(train),
                         extractor=self.extractor.name, weights=self.extractor.weights_sha256(),
                         prefilter=getattr(self.extractor, "prefilter_sigma", 0.0),
                         layers=list(self.extractor.layers), transforms=self.transforms,
                         nuisance_copies=self.nuisance_copies, **extra, **_device_part(self.extractor))

    def _search_key(self, train: np.ndarray, digest: str | None) -> str:
        """The per-layer search indexes over the whitened reference rows: what the reference entry holds, and
        the whitening and the search settings."""
        return cache_key(kind="memorization-search", format=1, reference=self._reference_key(train, digest, self.side_),
                         covariance=self.covariance, exact_limit=self._exact_limit)

    def _cached_searchers(self, key: str, n_rows: int) -> list[NeighbourIndex] | None:
        """The persisted indexes when the reference is above the exact limit and the cache holds them whole."""
        if n_rows <= self._exact_limit:
            return None
        hit = FeatureCache(self.cache_dir).load(key).arrays
        n_layers = len(self.extractor.layers)
        if hit is None or "meta" not in hit or not all(f"index_{k}" in hit for k in range(n_layers)):
            return None
        meta = json.loads(bytes(hit["meta"]).decode())
        return [NeighbourIndex.from_bytes(hit[f"index_{k}"], meta[k]) for k in range(n_layers)]

    def _cached_reference(self, key: str) -> tuple[str, tuple[list[np.ndarray], list[np.ndarray]] | None]:
        """The cache's status for ``key`` and, on a whole authentic entry, (reference, nuisance) per layer."""
        n_layers = len(self.extractor.layers)
        lookup = FeatureCache(self.cache_dir).load(key)
        hit = lookup.arrays
        if hit is None:
            return lookup.status, None
        nuisance = [hit.get(f"nuis_{k}") for k in range(n_layers)]
        reference = [hit.get(f"ref_{k}") for k in range(n_layers)]
        if "ref_shards" in hit:
            reference = self._read_shards(key, hit["ref_shards"])
        if reference is None or any(x is None for x in reference + nuisance):
            return "tampered", None  # authentic but incomplete (or a shard lost): recomputed like a forged one
        return lookup.status, (reference, nuisance)

    def _read_shards(self, key: str, bounds: np.ndarray) -> list[np.ndarray] | None:
        """A sharded reference read back (transform-major, as extracted), or None when a shard is missing,
        forged or not the size its entry names."""
        bounds = np.asarray(bounds, np.int64).reshape(-1, 3)
        stacked, row = _Stacked(int(np.sum(bounds[:, 2] - bounds[:, 1]))), 0
        for (_, start, stop), _key, feats in self._stored_shards(FeatureCache(self.cache_dir), key, bounds):
            if feats is None:
                return None
            stacked.put(row, feats)
            row += stop - start
        return stacked.layers or None

    def fit(self, train: np.ndarray, *, digest: str | None = None, calibration: np.ndarray | None = None,
            calibration_groups: Sequence[object] | None = None, progress: Progress = lambda _n: None,
            n_queries: int = 0) -> "Detector":
        """``calibration_groups`` names the subject of each calibration (holdout) image, so that a holdout
        image's non-members exclude its own subject's other slices (``None``: each image its own group).
        ``n_queries`` (the candidates and planted copies to be scored) decides the side with ``match_side: auto``."""
        n = len(train)
        n_cal = 0 if calibration is None else len(calibration)
        self.side_ = self.resolve_side(n, n_queries + n_cal)
        reference, nuisance, self.cache_hit_ = self.reference_features(train, digest, progress, self.side_)
        train_layers = [r[:n] for r in reference]  # transform 0 is the identity
        cal = self.features(calibration, progress) if calibration is not None else None
        self.calibration_features_ = cal
        query_side = self.side_ == "query"
        cal_turned = null_turned = None
        if query_side:
            rows = np.arange(n) if n <= self.null_sample else \
                np.sort(np.random.default_rng(self.null_seed).choice(n, self.null_sample, replace=False))
            null_turned = maths.Turned(rows, self.turned(train[rows], progress))
            if cal is not None:
                cal_turned = maths.Turned(np.arange(n_cal), self.turned(calibration, progress))
        # an index is persisted only where it lives in this process (an engine's shards live on its cluster)
        local = getattr(self.engine, "name", "local") == "local"
        search_key = self._search_key(train, digest) if self.cache_dir is not None and local else None
        searchers = self._cached_searchers(search_key, len(reference[0])) if search_key is not None else None
        self.index_ = maths.MemorizationIndex(self.covariance, self.null_splits, self.null_seed, self.tail,
                                              self.exact_limit, self._index).fit(
            train_layers, None if query_side else reference, len(self.transforms), cal,
            nuisance if self.nuisance_copies else None, calibration_turned=cal_turned, null_turned=null_turned,
            searchers=searchers)
        self.search_cache_ = "hit" if searchers is not None else "off"
        if searchers is None and search_key is not None and any(x.kind_ != "exact" for x in self.index_.searchers_):
            meta = [x.describe() for x in self.index_.searchers_]
            FeatureCache(self.cache_dir).store(search_key, {
                "meta": np.frombuffer(json.dumps(meta).encode(), np.uint8),
                **{f"index_{k}": x.to_bytes() for k, x in enumerate(self.index_.searchers_)}})
            self.search_cache_ = "stored"
        self.train_images_ = train
        self.verified_null_ = self.verified_tail_ = None
        if self.verify_k and cal is not None:
            # built once: the holdout, the candidates and the planted copies all retrieve from it
            self.reference_index_ = self._index(self.reference_embedding())
            to_train = self.verify(calibration, cal, progress, cal_turned)
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
                # the holdout is a reference here: transformed on the reference side, as train is
                views = [cal] if query_side else [cal] + [self.features(_Transformed(calibration, fn), progress)
                                                          for _, fn in transform_set(self.invariance)[1:]]
                self.holdout_index_ = self._index(np.concatenate([self.embed(v) for v in views]))
                to_holdout = self.verify_non_members(calibration, cal, progress, exclude_groups=groups,
                                                     turned=cal_turned).similarity
            self.verified_null_ = self.verification_statistic(to_train.similarity, to_holdout)
            self.verified_tail_ = maths.fit_tail(self.verified_null_) if self.tail else None
        return self

    @property
    def _exact_limit(self) -> int:
        return EXACT_LIMIT if self.exact_limit is None else self.exact_limit

    def _index(self, rows: np.ndarray):
        """Inner-product search over unit rows: exact up to ``exact_limit`` rows, beyond it re-ranked exactly;
        on the engine's cluster when it has one."""
        return (self.engine or LocalEngine(self.extractor)).index(rows, self._exact_limit)

    def fit_work(self, n_train: int, n_calibration: int, n_queries: int = 0) -> int:
        """The progress ticks :meth:`fit` reports: one per feature extraction or verified image."""
        t = len(self.transforms)
        n_nuisance = len(self.nuisance_sources(n_train)) * self.nuisance_copies
        if self.resolve_side(n_train, n_queries + n_calibration) == "query":
            work = n_train + n_nuisance + min(n_train, self.null_sample) * (t - 1) + n_calibration * t
        else:
            work = n_train * t + n_nuisance + n_calibration + (n_calibration * (t - 1) if self.verify_contrast
                                                               and self.verify_k and n_calibration else 0)
        if self.verify_k and n_calibration:
            work += n_calibration * (2 if self.verify_contrast else 1)
        return work

    @property
    def verify_passes(self) -> int:
        """Verification passes per scored image (train, and with the contrast the holdout too)."""
        return 2 if self.verify_contrast else 1

    @property
    def verifying(self) -> bool:
        return getattr(self, "verified_null_", None) is not None

    def _query_views(self, images: np.ndarray, layers: list[np.ndarray], turned: maths.Turned | None,
                     progress: Progress = lambda _n: None) -> list[np.ndarray]:
        """The queries in the joint embedding, one array per view: the untransformed features, and on the
        query side their views under each transform's inverse (computed unless given)."""
        if self.side_ != "query":
            return [self.embed(layers)]
        turned = turned if turned is not None else maths.Turned(np.arange(len(images)), self.turned(images, progress))
        return [self.embed(layers)] + [self.embed(v) for v in turned.views]

    def verify(self, images: np.ndarray, layers: list[np.ndarray], progress: Progress = lambda _n: None,
               turned: maths.Turned | None = None) -> "Verified":
        """Retrieve then verify: the ``verify_k`` distinct train images nearest to each sample in the
        joint embedding (each under the transform it matched best), each registered to the sample by a
        similarity transform and compared by rank NMI; a sample keeps its best pair."""
        return self._retrieve_and_verify(images, self._query_views(images, layers, turned), self.reference_index_,
                                         self.train_images_, progress)

    def verify_non_members(self, images: np.ndarray, layers: list[np.ndarray], progress: Progress = lambda _n: None,
                           exclude_groups: np.ndarray | None = None, turned: maths.Turned | None = None) -> "Verified":
        """As :meth:`verify`, against the holdout; ``exclude_groups[j]`` (a holdout image's own subject)
        is skipped for query ``j``."""
        exclude = None if exclude_groups is None else (np.asarray(exclude_groups), self.holdout_groups_)
        return self._retrieve_and_verify(images, self._query_views(images, layers, turned), self.holdout_index_,
                                         self.holdout_images_, progress, exclude)

    def _retrieve_and_verify(self, images: np.ndarray, views: list[np.ndarray], index, reference: np.ndarray,
                             progress: Progress, exclude: tuple[np.ndarray, np.ndarray] | None = None) -> "Verified":
        pairs = self.retrieve_pairs(views, index, len(reference), exclude)
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

    def retrieve_pairs(self, views: list[np.ndarray] | np.ndarray, index, n_ref: int,
                       exclude: tuple[np.ndarray, np.ndarray] | None = None) -> list[list[tuple[int, int]]]:
        """For each query, the ``verify_k`` distinct reference images nearest to it in ``index``, each as
        (image, transform it matched under). On the reference side ``index`` holds every transform of
        ``n_ref`` images (transform-major) and ``views`` is the queries' embedding; on the query side it holds
        the images once and ``views[t]`` is the queries under transform ``t``'s inverse. ``exclude`` is (the
        query's group, each reference image's group): a query skips its own group."""
        views = [views] if isinstance(views, np.ndarray) else views
        k = min(self.verify_k, n_ref)
        # several transforms of one image can crowd the top, and an excluded subject fills it: search deeper
        skipped = 0 if exclude is None else int(np.bincount(exclude[1]).max())
        depth = min(index.ntotal, (k + skipped) * len(self.transforms))
        sims, rows = [], []
        for v, embedded in enumerate(views):
            d, r = index.search(np.ascontiguousarray(embedded, dtype=np.float32), depth)
            sims.append(np.where(r < 0, -np.inf, d))
            rows.append(np.where(r < 0, -1, r + v * index.ntotal))
        sims, rows = np.concatenate(sims, axis=1), np.concatenate(rows, axis=1)
        order = np.argsort(-sims, axis=1, kind="stable")  # one view: faiss's own order is kept
        rows = np.take_along_axis(rows, order, axis=1)
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
        turned = maths.Turned(np.arange(len(images)), self.turned(images, progress)) if self.side_ == "query" else None
        scores = self.index_.score(layers, turned)
        if not self.verifying:
            return scores
        found = self.verify(images, layers, verify_progress, turned)
        other = self.verify_non_members(images, layers, verify_progress, turned=turned) if self.verify_contrast else None
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
