"""The Calibrated Memorization Index, equations 2-6 of Deo et al. (2026), on plain numpy arrays.

Every function takes and returns arrays; nothing here knows about images or extractors.
Layers are lists of ``[n, C_k]`` feature arrays, one per layer, rows aligned across layers.
"""

from __future__ import annotations

import dataclasses
from typing import Literal, Sequence

import numpy as np

#: Eq. 2 regulariser, added to the (possibly shrunk) covariance before the inverse square root
EPS_WHITEN = 1e-6
#: Eq. 4 epsilon inside the logarithm of the geometric mean
EPS_GEOMEAN = 1e-6
#: Eq. 5 variance floor of the null
EPS_NULL_VAR = 1e-8

Covariance = Literal["ledoit_wolf", "empirical"]


@dataclasses.dataclass(frozen=True)
class Whitener:
    """ZCA whitening fitted on train features of one layer: ``(f - mean) @ matrix``."""

    mean: np.ndarray
    matrix: np.ndarray
    shrinkage: float


def fit_whitener(features: np.ndarray, covariance: Covariance = "ledoit_wolf") -> Whitener:
    """Eq. 2, ``W = (C + eps I)^(-1/2)``, fitted on train features only.

    ``covariance="empirical"`` is the paper's sample covariance. With fewer train rows than feature
    dimensions it is singular, every whitened train row becomes equidistant from the others (all
    train-train cosines equal -1/(N-1)) and the null degenerates. ``"ledoit_wolf"`` (the default)
    shrinks the covariance towards a scaled identity by the Ledoit-Wolf (2004) optimal amount, which
    is well conditioned for any N and tends to the sample covariance as N grows.
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
    lam, vec = np.linalg.eigh(cov)
    matrix = (vec / np.sqrt(np.maximum(lam, 0.0) + EPS_WHITEN)) @ vec.T
    return Whitener(mean=mean, matrix=matrix, shrinkage=float(shrinkage))


def whiten(features: np.ndarray, whitener: Whitener) -> np.ndarray:
    """Whiten then L2-normalise each row (float32, ready for inner-product search)."""
    z = (np.asarray(features, dtype=np.float64) - whitener.mean) @ whitener.matrix
    norm = np.linalg.norm(z, axis=1, keepdims=True)
    return (z / np.maximum(norm, 1e-12)).astype(np.float32)


def nearest(queries: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eq. 3: the largest inner product of each query row with any reference row, and its index."""
    import faiss

    ref = np.ascontiguousarray(reference, dtype=np.float32)
    index = faiss.IndexFlatIP(ref.shape[1])
    index.add(ref)
    sim, idx = index.search(np.ascontiguousarray(queries, dtype=np.float32), 1)
    return sim[:, 0].astype(np.float64), idx[:, 0].astype(np.int64)


def aggregate(per_layer: Sequence[np.ndarray]) -> np.ndarray:
    """Eq. 4: unweighted geometric mean over layers; cosines are clamped to [0, 1] first so the log is defined."""
    s = np.clip(np.stack([np.asarray(v, dtype=np.float64) for v in per_layer]), 0.0, 1.0)
    return np.exp(np.log(s + EPS_GEOMEAN).mean(0))


def consensus(per_layer_nn: Sequence[np.ndarray]) -> np.ndarray:
    """How many layers agree with the first layer's nearest neighbour (1..number of layers)."""
    first = np.asarray(per_layer_nn[0])
    return 1 + sum((np.asarray(nn) == first).astype(np.int64) for nn in per_layer_nn[1:])


def null_similarities(train_layers: Sequence[np.ndarray], n_splits: int = 10, seed: int = 1234) -> np.ndarray:
    """Eq. 5's sample: ``n_splits`` random splits of the train rows into disjoint halves A and B;
    each row of A gets its aggregated 1-NN similarity to B. All values pooled.

    ``train_layers`` are already whitened with the full-train whiteners (they are not re-fitted per split).
    """
    n = len(train_layers[0])
    if n < 4:
        raise ValueError(f"the empirical null needs at least 4 train rows, got {n}")
    rng = np.random.default_rng(seed)
    half = n // 2
    values = []
    for _ in range(n_splits):
        perm = rng.permutation(n)
        a, b = perm[:half], perm[half:2 * half]
        values.append(aggregate([nearest(z[a], z[b])[0] for z in train_layers]))
    return np.concatenate(values)


def null_moments(values: np.ndarray) -> tuple[float, float]:
    """Eq. 5: ``mu0 = E[s]``, ``sigma0 = sqrt(Var[s] + 1e-8)``."""
    v = np.asarray(values, dtype=np.float64)
    return float(v.mean()), float(np.sqrt(v.var() + EPS_NULL_VAR))


def mi_oni(s: np.ndarray, mu0: float, sigma0: float) -> tuple[np.ndarray, np.ndarray]:
    """Eq. 6: ``MI = (s - mu0) / sigma0`` and ``ONI = -tanh(MI)``."""
    mi = (np.asarray(s, dtype=np.float64) - mu0) / sigma0
    return mi, -np.tanh(mi)


@dataclasses.dataclass(frozen=True)
class Scores:
    similarity: np.ndarray       # aggregated s_j
    per_layer: np.ndarray        # [n_layers, n] s_j^(k)
    nn_index: np.ndarray         # [n_layers, n] train row of each layer's nearest neighbour
    consensus: np.ndarray
    mi: np.ndarray
    oni: np.ndarray


@dataclasses.dataclass
class MemorizationIndex:
    """scikit-learn style: ``fit`` on the train features, ``score`` the candidate's."""

    covariance: Covariance = "ledoit_wolf"
    n_splits: int = 10
    seed: int = 1234

    def fit(self, train_layers: Sequence[np.ndarray]) -> "MemorizationIndex":
        self.whiteners_ = [fit_whitener(f, self.covariance) for f in train_layers]
        self.train_ = [whiten(f, w) for f, w in zip(train_layers, self.whiteners_)]
        self.null_ = null_similarities(self.train_, self.n_splits, self.seed)
        self.mu0_, self.sigma0_ = null_moments(self.null_)
        return self

    def score(self, query_layers: Sequence[np.ndarray]) -> Scores:
        if len(query_layers) != len(self.whiteners_):
            raise ValueError(f"fitted on {len(self.whiteners_)} layers, scoring {len(query_layers)}")
        found = [nearest(whiten(q, w), z) for q, w, z in zip(query_layers, self.whiteners_, self.train_)]
        per_layer = np.stack([f[0] for f in found])
        nn = np.stack([f[1] for f in found])
        s = aggregate(list(per_layer))
        mi, oni = mi_oni(s, self.mu0_, self.sigma0_)
        return Scores(similarity=s, per_layer=per_layer, nn_index=nn, consensus=consensus(list(nn)), mi=mi, oni=oni)
