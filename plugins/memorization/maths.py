"""The Calibrated Memorization Index, equations 2-6 of Deo et al. (2026), on plain numpy arrays.

Every function takes and returns arrays; nothing here knows about images or extractors.
Layers are lists of ``[n, C_k]`` feature arrays, one per layer, rows aligned across layers.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Literal, Sequence

import numpy as np

#: Eq. 2 regulariser, added to the (possibly shrunk) covariance before the inverse square root
EPS_WHITEN = 1e-6
#: Eq. 4 epsilon inside the logarithm of the geometric mean
EPS_GEOMEAN = 1e-6
#: Eq. 5 variance floor of the null
EPS_NULL_VAR = 1e-8
#: queries per split of the paper's train-halves null (all of a half when it is smaller)
NULL_QUERIES = 2000

Covariance = Literal["ledoit_wolf", "empirical"]


@dataclasses.dataclass(frozen=True)
class Whitener:
    """ZCA whitening fitted on train features of one layer: ``(f - mean) @ matrix``."""

    mean: np.ndarray
    matrix: np.ndarray
    shrinkage: float


def fit_whitener(features: np.ndarray, covariance: Covariance = "ledoit_wolf",
                 nuisance: np.ndarray | None = None) -> Whitener:
    """Eq. 2, ``W = (C + eps I)^(-1/2)``, fitted on train features only.

    ``covariance="empirical"`` is the paper's sample covariance. With fewer train rows than feature
    dimensions it is singular, every whitened train row becomes equidistant from the others (all
    train-train cosines equal -1/(N-1)) and the null degenerates. ``"ledoit_wolf"`` (the default)
    shrinks the covariance towards a scaled identity by the Ledoit-Wolf (2004) optimal amount, which
    is well conditioned for any N and tends to the sample covariance as N grows.

    ``nuisance`` (optional, ``[M, C]``) holds feature *changes* caused by transformations a copy may
    undergo (feature of a misaligned image minus feature of the original). Their covariance is added to
    the train covariance, as a within-class covariance is in LDA: directions that such changes move
    along are shrunk, so a misaligned copy stays close to its source while the geometry of the train
    set itself is kept.
    """
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"need at least 2 feature rows [n, C], got shape {x.shape}")
    mean = x.mean(0)
    if covariance == "ledoit_wolf":
        from sklearn.covariance import ledoit_wolf

        cov, shrinkage = ledoit_wolf(x - mean, assume_centered=True)
    elif covariance == "empirical":
        cov, shrinkage = np.cov(x, rowvar=False, ddof=1).reshape(x.shape[1], x.shape[1]), 0.0
    else:
        raise ValueError(f"unknown covariance estimator {covariance!r}")
    if nuisance is not None and len(nuisance) > 1:
        from sklearn.covariance import ledoit_wolf

        cov = cov + ledoit_wolf(np.asarray(nuisance, dtype=np.float64), assume_centered=True)[0]
    lam, vec = np.linalg.eigh(cov)
    matrix = (vec / np.sqrt(np.maximum(lam, 0.0) + EPS_WHITEN)) @ vec.T
    return Whitener(mean=mean, matrix=matrix, shrinkage=float(shrinkage))


def whiten(features: np.ndarray, whitener: Whitener) -> np.ndarray:
    """Whiten then L2-normalise each row (float32, ready for inner-product search)."""
    z = (np.asarray(features, dtype=np.float64) - whitener.mean) @ whitener.matrix
    norm = np.linalg.norm(z, axis=1, keepdims=True)
    return (z / np.maximum(norm, 1e-12)).astype(np.float32)


def nearest(queries: np.ndarray, reference) -> tuple[np.ndarray, np.ndarray]:
    """Eq. 3: the largest inner product of each query row with any reference row, and its index.
    ``reference`` is the rows (searched exactly) or an index over them (``search(queries, k)`` and
    ``ntotal``, as faiss's and gate_plugins.toolkit.search's)."""
    if isinstance(reference, np.ndarray):
        import faiss

        ref = np.ascontiguousarray(reference, dtype=np.float32)
        reference = faiss.IndexFlatIP(ref.shape[1])
        reference.add(ref)
    sim, idx = reference.search(np.ascontiguousarray(queries, dtype=np.float32), 1)
    return sim[:, 0].astype(np.float64), idx[:, 0].astype(np.int64)


def _n_rows(reference) -> int:
    return len(reference) if isinstance(reference, np.ndarray) else int(reference.ntotal)


def nearest_over_views(views: Sequence[np.ndarray], reference) -> tuple[np.ndarray, np.ndarray]:
    """Eq. 3 when each query is seen several ways (``views[v]``, rows aligned): the largest inner product
    of any view of a query with any reference row, and its row as ``v * len(reference) + i``. One view is
    :func:`nearest`; matching a query under transforms against an untransformed reference is one view
    per transform."""
    found = [nearest(v, reference) for v in views]
    sims = np.stack([f[0] for f in found])
    best = sims.argmax(0)
    cols = np.arange(sims.shape[1])
    return sims[best, cols], best * _n_rows(reference) + np.stack([f[1] for f in found])[best, cols]


def aggregate(per_layer: Sequence[np.ndarray]) -> np.ndarray:
    """Eq. 4: unweighted geometric mean over layers; cosines are clamped to [0, 1] first so the log is defined."""
    s = np.clip(np.stack([np.asarray(v, dtype=np.float64) for v in per_layer]), 0.0, 1.0)
    return np.exp(np.log(s + EPS_GEOMEAN).mean(0))


def consensus(per_layer_nn: Sequence[np.ndarray]) -> np.ndarray:
    """How many layers agree with the first layer's nearest neighbour (1..number of layers)."""
    first = np.asarray(per_layer_nn[0])
    return 1 + sum((np.asarray(nn) == first).astype(np.int64) for nn in per_layer_nn[1:])


def null_similarities(train_layers: Sequence[np.ndarray], n_splits: int = 10, seed: int = 1234,
                      reference_layers: Sequence[np.ndarray] | None = None, n_transforms: int = 1,
                      turned: "Turned | None" = None, max_queries: int = NULL_QUERIES) -> np.ndarray:
    """Eq. 5's sample: ``n_splits`` random splits of the train rows into disjoint halves A and B;
    each row of A gets its aggregated 1-NN similarity to B. All values pooled.

    ``train_layers`` are already whitened with the full-train whiteners (they are not re-fitted per split).
    With ``reference_layers`` (``[n_transforms * N, C]``, transform-major: row ``t * N + i`` is train
    row ``i`` under transform ``t``) B is searched under every transform, exactly as a query is.
    With ``turned`` (query-side matching: features of a fixed sample of train rows under each transform's
    inverse, whitened) only the sampled rows of A are queries, each seen under every transform against
    B's untransformed rows, exactly as a query is on that side.
    A split's queries are at most ``max_queries`` rows of A (a random subset: A is a random half), so the
    cost grows with N, not N^2; the null's moments then carry a sampling error of about sigma0 /
    sqrt(n_splits * max_queries), under 1 % of sigma0 at the defaults.
    """
    n = len(train_layers[0])
    if n < 4:
        raise ValueError(f"the empirical null needs at least 4 train rows, got {n}")
    reference_layers = train_layers if reference_layers is None else reference_layers
    rng = np.random.default_rng(seed)
    half = n // 2
    values = []
    for _ in range(n_splits):
        perm = rng.permutation(n)
        a, b = perm[:min(half, max_queries)], perm[half:2 * half]
        if turned is None:
            rows = (b[None, :] + n * np.arange(n_transforms)[:, None]).ravel()
            values.append(aggregate([nearest(z[a], r[rows])[0] for z, r in zip(train_layers, reference_layers)]))
            continue
        in_a = np.isin(turned.rows, a)
        if not in_a.any():
            continue
        values.append(aggregate([nearest_over_views([z[turned.rows[in_a]]] + [v[k][in_a] for v in turned.views], z[b])[0]
                                 for k, z in enumerate(train_layers)]))
    return np.concatenate(values)


@dataclasses.dataclass(frozen=True)
class Turned:
    """Query-side matching's extra views of some rows: ``views[t - 1][k]`` is layer ``k`` of rows ``rows``
    under the inverse of transform ``t`` (``t`` = 1..T-1; transform 0, the identity, is the rows themselves)."""

    rows: np.ndarray
    views: list[list[np.ndarray]]


def null_moments(values: np.ndarray) -> tuple[float, float]:
    """Eq. 5: ``mu0 = E[s]``, ``sigma0 = sqrt(Var[s] + 1e-8)``."""
    v = np.asarray(values, dtype=np.float64)
    return float(v.mean()), float(np.sqrt(v.var() + EPS_NULL_VAR))


def mi_oni(s: np.ndarray, mu0: float, sigma0: float) -> tuple[np.ndarray, np.ndarray]:
    """Eq. 6: ``MI = (s - mu0) / sigma0`` and ``ONI = -tanh(MI)``."""
    mi = (np.asarray(s, dtype=np.float64) - mu0) / sigma0
    return mi, -np.tanh(mi)


def conformal_p_values(s: np.ndarray, null: np.ndarray) -> np.ndarray:
    """``p = (1 + #{null >= s}) / (1 + n_null)``: valid when the query is exchangeable with the null's
    draws. The smallest attainable value is ``1 / (1 + n_null)``."""
    ordered = np.sort(np.asarray(null, dtype=np.float64))
    at_least = len(ordered) - np.searchsorted(ordered, np.asarray(s, dtype=np.float64), side="left")
    return (1.0 + at_least) / (1.0 + len(ordered))


def benjamini_hochberg(p: np.ndarray, fdr: float) -> np.ndarray:
    """Boolean mask of the discoveries of the Benjamini-Hochberg step-up procedure at level ``fdr``."""
    p = np.asarray(p, dtype=np.float64)
    m = len(p)
    if m == 0:
        return np.zeros(0, dtype=bool)
    order = np.argsort(p, kind="stable")
    below = p[order] <= fdr * np.arange(1, m + 1) / m
    k = int(np.nonzero(below)[0].max()) + 1 if below.any() else 0
    mask = np.zeros(m, dtype=bool)
    mask[order[:k]] = True
    return mask


def copy_evidence(p: np.ndarray, lam: float = 0.1) -> np.ndarray:
    """Per-sample terms whose mean is Storey's estimate of the fraction of non-null (copied) samples,
    ``1 - #{p > lam} / ((1 - lam) m)``: 1 when ``p <= lam``, ``1 - 1/(1 - lam)`` otherwise.

    Under the null (p uniform) each term has mean 0, so the mean estimates 0 with standard error
    ``sqrt(lam / (1 - lam) / m)`` (``1 / (3 sqrt(m))`` at the default); a copy (p near 0) contributes 1.
    ``lam = 0.1`` rather than Storey's usual 0.5: it relies only on the calibration of the null's upper
    tail, which the benchmark checks, not on its middle, which a holdout of few subjects estimates poorly."""
    return np.where(np.asarray(p) > lam, 1.0 - 1.0 / (1.0 - lam), 1.0)


@dataclasses.dataclass(frozen=True)
class Scores:
    similarity: np.ndarray       # aggregated s_j
    per_layer: np.ndarray        # [n_layers, n] s_j^(k)
    nn_index: np.ndarray         # [n_layers, n] train row of each layer's nearest neighbour
    nn_transform: np.ndarray     # [n_layers, n] transform under which that neighbour matched
    consensus: np.ndarray
    mi: np.ndarray
    oni: np.ndarray
    p_value: np.ndarray          # against the calibration null (conformal, and beyond it the fitted tail)
    # with verification (Detector.score): the best aligned similarity, each test's p-value and the pair
    verified: np.ndarray | None = None
    verified_non_member: np.ndarray | None = None   # best aligned similarity to a holdout image
    p_retrieval: np.ndarray | None = None
    p_verified: np.ndarray | None = None
    verified_nn_index: np.ndarray | None = None
    verified_nn_transform: np.ndarray | None = None


def bonferroni_pair(p_a: np.ndarray, p_b: np.ndarray) -> np.ndarray:
    """One p-value from two tests of the same sample: ``min(1, 2 min(p_a, p_b))``, valid whatever
    their dependence, so a copy caught by either test is caught, at twice the smaller p."""
    return np.minimum(1.0, 2.0 * np.minimum(np.asarray(p_a, dtype=np.float64), np.asarray(p_b, dtype=np.float64)))


@dataclasses.dataclass
class MemorizationIndex:
    """scikit-learn style: ``fit`` on the train features, ``score`` the candidate's.

    Matching under ``n_transforms`` transforms (transform 0 the identity) is done on one of two sides:

    - the reference side: ``reference_layers`` hold the train features under every transform,
      transform-major, and a query is searched once against all of them;
    - the query side (``turned`` given to :meth:`score`): the reference is the train features alone and a
      query is searched once per transform, seen under that transform's inverse. A train set of N images
      then costs N extractions instead of ``n_transforms * N``; each query costs ``n_transforms``.

    Both find an exact transformed copy at similarity 1 under the same transform. Elsewhere they agree only
    for an extractor whose features turn with the image (a network is not), so the side is part of what
    produced a result: it is recorded, and the null is always matched on the same side as the queries.
    ``calibration_layers`` (optional) are features of real images the generator never saw: their
    similarities to the reference form the calibration null instead of the train halves.
    """

    covariance: Covariance = "ledoit_wolf"
    n_splits: int = 10
    seed: int = 1234
    #: continue p-values beyond the null's largest value down a fitted tail (False: conformal only)
    tail: bool = True
    #: reference rows per layer up to which the search is exact (gate_plugins.toolkit.search)
    exact_limit: int | None = None
    #: builds the search over a layer's reference rows (None: gate_plugins.toolkit.search.NeighbourIndex in this
    #: process; an engine may shard it over a cluster)
    index_factory: Callable[[np.ndarray], object] | None = None

    def fit(self, train_layers: Sequence[np.ndarray], reference_layers: Sequence[np.ndarray] | None = None,
            n_transforms: int = 1, calibration_layers: Sequence[np.ndarray] | None = None,
            nuisance_layers: Sequence[np.ndarray] | None = None, *, calibration_turned: Turned | None = None,
            null_turned: Turned | None = None, searchers: Sequence | None = None) -> "MemorizationIndex":
        """Query-side matching: ``n_transforms > 1`` without ``reference_layers``; ``null_turned`` (a sample
        of train rows' views) and, with a calibration set, ``calibration_turned`` are then required.
        ``searchers``: fitted indexes over the whitened reference rows (from a cache), else built here."""
        self.n_train_ = len(train_layers[0])
        self.n_transforms_ = n_transforms
        self.side_ = "query" if n_transforms > 1 and reference_layers is None else "reference"
        nuisance_layers = nuisance_layers or [None] * len(train_layers)
        self.whiteners_ = [fit_whitener(f, self.covariance, d) for f, d in zip(train_layers, nuisance_layers)]
        self.train_ = [whiten(f, w) for f, w in zip(train_layers, self.whiteners_)]
        if self.side_ == "query":
            if null_turned is None or (calibration_layers is not None and calibration_turned is None):
                raise ValueError("query-side matching (n_transforms > 1 without reference_layers) needs the turned "
                                 "views of the null's queries")
            self.reference_ = self.train_
        elif reference_layers is None:
            self.reference_ = self.train_
        else:
            self.reference_ = [whiten(f, w) for f, w in zip(reference_layers, self.whiteners_)]
            if any(len(r) != n_transforms * self.n_train_ for r in self.reference_):
                raise ValueError("reference_layers must hold n_transforms * n_train rows per layer")
        from gate_plugins.toolkit.search import EXACT_LIMIT, NeighbourIndex

        limit = EXACT_LIMIT if self.exact_limit is None else self.exact_limit
        factory = self.index_factory or (lambda rows: NeighbourIndex(exact_limit=limit).fit(rows))
        self.searchers_ = list(searchers) if searchers is not None else [factory(r) for r in self.reference_]
        self.paper_null_ = null_similarities(self.train_, self.n_splits, self.seed, self.reference_,
                                             1 if self.side_ == "query" else n_transforms,
                                             self._whitened(null_turned))
        if calibration_layers is not None:
            self.null_ = self._similarities(calibration_layers, calibration_turned)[0]
            self.calibration_ = "holdout"
        else:
            self.null_ = self.paper_null_
            self.calibration_ = "train_halves"
        self.mu0_, self.sigma0_ = null_moments(self.null_)
        self.tail_ = fit_tail(fisher_z(self.null_)) if self.tail else None
        return self

    def p_values(self, s: np.ndarray) -> np.ndarray:
        """Per-sample p-values against the calibration null; the tail is fitted on Fisher's z of the
        similarities, the scale on which a correlation's law is unbounded and near-symmetric."""
        return tail_p_values(fisher_z(s), fisher_z(self.null_), self.tail_)

    def _whitened(self, turned: Turned | None) -> Turned | None:
        if turned is None:
            return None
        if len(turned.views) != self.n_transforms_ - 1:
            raise ValueError(f"{len(turned.views)} turned views for {self.n_transforms_} transforms")
        return Turned(np.asarray(turned.rows), [[whiten(f, w) for f, w in zip(view, self.whiteners_)]
                                                for view in turned.views])

    def _similarities(self, query_layers, turned: Turned | None = None):
        if len(query_layers) != len(self.whiteners_):
            raise ValueError(f"fitted on {len(self.whiteners_)} layers, scoring {len(query_layers)}")
        if (turned is not None) != (self.side_ == "query"):
            raise ValueError(f"matching is on the {self.side_} side: turned views are "
                             + ("needed" if self.side_ == "query" else "not used"))
        turned = self._whitened(turned)
        found = [nearest_over_views([whiten(q, w)] + ([v[k] for v in turned.views] if turned else []), r)
                 for k, (q, w, r) in enumerate(zip(query_layers, self.whiteners_, self.searchers_))]
        per_layer = np.stack([f[0] for f in found])
        rows = np.stack([f[1] for f in found])
        return aggregate(list(per_layer)), per_layer, rows

    def score(self, query_layers: Sequence[np.ndarray], turned: Turned | None = None) -> Scores:
        """``turned`` (query side only): the queries' views under each transform's inverse."""
        s, per_layer, rows = self._similarities(query_layers, turned)
        nn, transform = rows % self.n_train_, rows // self.n_train_
        mi, oni = mi_oni(s, self.mu0_, self.sigma0_)
        return Scores(similarity=s, per_layer=per_layer, nn_index=nn, nn_transform=transform,
                      consensus=consensus(list(nn)), mi=mi, oni=oni, p_value=self.p_values(s))


def fisher_z(s: np.ndarray) -> np.ndarray:
    """``atanh`` of a similarity clamped to [0, 1): order-preserving, so conformal p-values are unchanged."""
    return np.arctanh(np.clip(np.asarray(s, dtype=np.float64), 0.0, 1.0 - 1e-12))


def membership_contrast(to_train: np.ndarray, to_non_members: np.ndarray) -> np.ndarray:
    """How much better a sample aligns with its best train image than with its best image of real
    non-members (Fisher z of each aligned similarity, subtracted).

    Why a contrast and not the train similarity alone: whatever makes a generator's samples resemble
    *every* real image more than real images resemble each other (smoothness, regression to the
    population mean) raises both terms alike and cancels, while a copy of a train image raises only
    the first. A candidate's non-members are the holdout; a holdout image's are the holdout images of
    other subjects, so the null is computed by the same rule with one subject's worth fewer images,
    which can only make it stricter than the candidates' (their second term is over more images)."""
    return fisher_z(to_train) - fisher_z(to_non_members)


def leave_one_out_p_values(null: np.ndarray) -> np.ndarray:
    """Conformal p-value of each calibration draw against the others: ``#{j: s_j >= s_i} / n``
    (its own draw included, which stands for the ``1 +``)."""
    v = np.asarray(null, dtype=np.float64)
    ordered = np.sort(v)
    return (len(v) - np.searchsorted(ordered, v, side="left")) / len(v)


@dataclasses.dataclass(frozen=True)
class SelfCheck:
    n_planted: int
    planted_flagged: int
    n_novel: int
    novel_flagged: int
    passed: bool
    reason: str


def self_check(planted_p: np.ndarray, novel_p: np.ndarray | None, fdr: float) -> SelfCheck:
    """Benjamini-Hochberg over known positives (planted copies) and known negatives (novel images):
    every planted copy must be flagged, and the novel ones may make up at most ``fdr`` of the flags
    (one false flag is always tolerated: the realised proportion of a small set is noisy)."""
    planted_p = np.asarray(planted_p, dtype=np.float64)
    novel_p = np.zeros(0) if novel_p is None else np.asarray(novel_p, dtype=np.float64)
    flags = benjamini_hochberg(np.concatenate([planted_p, novel_p]), fdr)
    hit, false = int(flags[: len(planted_p)].sum()), int(flags[len(planted_p):].sum())
    reasons = []
    if hit < len(planted_p):
        reasons.append(f"only {hit} of {len(planted_p)} planted copies of train images were flagged")
    if false > max(1, fdr * (hit + false)):
        reasons.append(f"{false} of {len(novel_p)} known-novel holdout images were flagged "
                       f"(more than the FDR {fdr:g} allows among {hit + false} flags)")
    return SelfCheck(len(planted_p), hit, len(novel_p), false, not reasons, "; ".join(reasons))


# --- p-values beyond the null's resolution, and a set-level test with stated error rates -------------

#: fewest null values above the tail threshold for a tail to be fitted (fewer: conformal p-values only)
MIN_TAIL_EXCEEDANCES = 10
#: the tail is fitted above this quantile of the null
TAIL_QUANTILE = 0.75
#: so a tail needs a null of at least this many values
MIN_TAIL_NULL = int(math.ceil(MIN_TAIL_EXCEEDANCES / (1.0 - TAIL_QUANTILE)))


@dataclasses.dataclass(frozen=True)
class TailModel:
    """The upper tail of a null: its exceedances over ``threshold`` (a high quantile) follow a
    generalised Pareto law with ``shape >= 0`` and ``scale`` (peaks over threshold, Pickands 1975).

    It is only used to continue p-values beyond the null's largest value, where conformal p-values
    stop at ``1 / (n + 1)``: ``p(s) = S(s - u) / S(max - u) / (n + 1)``. Two choices keep it
    conservative. The shape is clipped at 0: a similarity is bounded, so its true tail is lighter than
    exponential (shape < 0), and extrapolating a fitted negative shape would end the tail (p = 0) at a
    guessed endpoint. The scale is the upper end of its one-sided ``confidence`` interval (exact for
    the exponential: chi-square with ``2 n_u`` degrees of freedom), so a small null gives wider tails,
    not smaller p-values."""

    threshold: float
    null_max: float
    n_null: int
    n_exceed: int
    shape: float
    scale: float          # conservative (upper confidence bound)
    scale_fitted: float   # maximum likelihood
    fit_p: float          # Kolmogorov-Smirnov p of the exceedances against the fitted law (approximate)

    def survival(self, excess: np.ndarray) -> np.ndarray:
        x = np.maximum(np.asarray(excess, dtype=np.float64), 0.0)
        if self.shape < 1e-9:
            return np.exp(-x / self.scale)
        return (1.0 + self.shape * x / self.scale) ** (-1.0 / self.shape)


def fit_tail(null: np.ndarray, quantile: float = TAIL_QUANTILE, confidence: float = 0.95) -> TailModel | None:
    """Fit the null's upper tail above its ``quantile``; ``None`` when fewer than
    ``MIN_TAIL_EXCEEDANCES`` values lie above it (a tail of so few points says nothing)."""
    from scipy import stats

    v = np.asarray(null, dtype=np.float64)
    u = float(np.quantile(v, quantile))
    y = v[v > u] - u
    if len(y) < MIN_TAIL_EXCEEDANCES or float(y.mean()) <= 0.0:
        return None
    shape, _, scale = stats.genpareto.fit(y, floc=0.0)
    if not np.isfinite(shape) or shape < 0.0:
        shape, scale = 0.0, float(y.mean())  # the exponential's maximum-likelihood scale
    shape = float(shape)  # a heavier fitted tail is kept: it only makes p-values larger
    fit_p = float(stats.kstest(y, stats.genpareto(shape, 0.0, scale).cdf).pvalue)
    inflate = 2.0 * len(y) / stats.chi2.ppf(1.0 - confidence, 2 * len(y))
    return TailModel(threshold=u, null_max=float(v.max()), n_null=len(v), n_exceed=len(y), shape=shape,
                     scale=float(scale) * inflate, scale_fitted=float(scale), fit_p=fit_p)


def tail_p_values(s: np.ndarray, null: np.ndarray, tail: TailModel | None) -> np.ndarray:
    """Conformal p-values inside the null's range (exact, distribution-free); beyond its largest
    value they continue down the fitted tail from the conformal floor ``1 / (n + 1)``."""
    p = conformal_p_values(s, null)
    if tail is None:
        return p
    s = np.asarray(s, dtype=np.float64)
    beyond = s > tail.null_max
    ratio = tail.survival(s[beyond] - tail.threshold) / tail.survival(np.array([tail.null_max - tail.threshold]))
    p[beyond] = ratio / (tail.n_null + 1.0)
    return p


def leave_one_out_tail_p_values(null: np.ndarray, quantile: float = TAIL_QUANTILE, confidence: float = 0.95,
                                tail: bool = True) -> np.ndarray:
    """Each null draw's p-value against the others, as a novel sample's would be. Only the largest draw
    lies beyond the others' range, so only its p-value needs the tail refitted without it."""
    v = np.asarray(null, dtype=np.float64)
    p = leave_one_out_p_values(v)
    if tail and len(v) > 1:
        top = int(np.argmax(v))
        rest = np.delete(v, top)
        p[top] = tail_p_values(v[top:top + 1], rest, fit_tail(rest, quantile, confidence))[0]
    return p


def simes_p_value(p: np.ndarray) -> float:
    """The global test behind Benjamini-Hochberg: ``min_j m p_(j) / j``. Under the null that no sample
    is a copy it is a valid p-value for independent or positively dependent p-values (conformal
    p-values against one null are positively dependent, Bates et al. 2023), and BH flags anything
    exactly when it is at most the FDR level."""
    p = np.sort(np.asarray(p, dtype=np.float64))
    if len(p) == 0:
        return 1.0
    return float(min(1.0, np.min(len(p) * p / np.arange(1, len(p) + 1))))


@dataclasses.dataclass(frozen=True)
class PowerAnalysis:
    """What the set-level test can promise at these sizes, for copies like the planted ones.

    ``caught_alone`` is the share of planted copies whose p-value alone rejects (``m p <= alpha / 2``,
    Simes' first term at its half of the set test's level), so the probability of refusing a generator that copies a share ``c`` of its
    ``m`` samples is at least ``1 - (1 - c * caught_alone) ** m``."""

    alpha: float
    n_samples: int
    n_null: int
    caught_alone: float
    false_refusal: float         # nominal: alpha (the test's level)
    copy_rate_90: float | None   # smallest copy rate refused with probability >= 0.9 (None: none)

    def refusal_probability(self, copy_rate: float, n_samples: int | None = None) -> float:
        m = self.n_samples if n_samples is None else n_samples
        return float(1.0 - (1.0 - min(1.0, copy_rate * self.caught_alone)) ** m)

    def samples_needed(self, copy_rate: float, at_least: float) -> int | None:
        hit = copy_rate * self.caught_alone
        if hit <= 0.0:
            return None
        if hit >= 1.0:
            return 1
        return int(math.ceil(math.log(1.0 - at_least) / math.log(1.0 - hit)))


def power_analysis(planted_p: np.ndarray, n_samples: int, n_null: int, alpha: float,
                   simes_share: float = 0.5) -> PowerAnalysis:
    """``simes_share`` of ``alpha`` is the Simes test's part of the set test (``set_test_p_value``)."""
    caught = float(np.mean(np.asarray(planted_p) * n_samples <= alpha * simes_share)) if len(planted_p) else 0.0
    rate = (1.0 - 0.1 ** (1.0 / n_samples)) / caught if caught > 0 else None
    return PowerAnalysis(alpha=alpha, n_samples=n_samples, n_null=n_null, caught_alone=caught,
                         false_refusal=alpha, copy_rate_90=rate if rate is not None and rate <= 1.0 else None)


def set_test_p_value(simes_p: float, count_p: float) -> float:
    """The set-level copy test: the Simes test over per-sample p-values (which sees a single extreme
    copy, through the tail) and the model-free count test (which sees many copies beyond a small null),
    joined by Bonferroni so that the whole test has level ``alpha`` at ``p <= alpha``."""
    return float(bonferroni_pair(simes_p, count_p))


def count_test_p_value(s: np.ndarray, null: np.ndarray) -> tuple[int, float]:
    """A model-free check beside the tail: how many samples exceed the null's largest value, and the
    exact probability of at least that many for a novel set. Under exchangeability the share of the
    sample distribution above the maximum of ``n`` null draws is Beta(1, n), so the count is
    beta-binomial(m, 1, n). Valid without any tail model, but weak when the null is small."""
    from scipy import stats

    s, v = np.asarray(s, dtype=np.float64), np.asarray(null, dtype=np.float64)
    k = int(np.sum(s > v.max()))
    return k, float(stats.betabinom(len(s), 1, len(v)).sf(k - 1))


@dataclasses.dataclass(frozen=True)
class SetTest:
    simes_p: float
    count_test_p: float
    n_beyond_null: int
    copy_test_p: float
    copying_detected: bool


def set_test(p: np.ndarray, similarity: np.ndarray, null_similarity: np.ndarray, alpha: float) -> SetTest:
    """The set-level decision the validator reports and the power benchmark replays: Simes over the
    per-sample p-values and the count test on the retrieval similarities, joined by Bonferroni, refused
    at ``copy_test_p <= alpha``."""
    simes = simes_p_value(p)
    n_beyond, count_p = count_test_p_value(similarity, null_similarity)
    joined = set_test_p_value(simes, count_p)
    return SetTest(simes_p=simes, count_test_p=count_p, n_beyond_null=n_beyond, copy_test_p=joined,
                   copying_detected=joined <= alpha)
