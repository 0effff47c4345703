"""The paper's baselines, computed in the detector's feature space (pure numpy/scipy).

Every function takes feature matrices ``[n, d]``: ``train`` (the generator's training set),
``gen`` (the candidate) and, where a test needs it, ``test`` (real images the generator never saw).

Memory is linear in the number of rows: nearest neighbours are exact, computed in blocks of queries
(:data:`BLOCK_BYTES` of distances at a time); the kernel statistics (MMD, KID) use every row up to
:data:`MAX_KERNEL_ROWS` per set and a seeded random subset above it, which keeps them unbiased (a U-statistic
over a random subset estimates the same MMD^2, with a standard error that shrinks as 1/sqrt(rows)).
"""

from __future__ import annotations

import numpy as np
from scipy import linalg, stats

#: distances computed at once by the nearest-neighbour search: 64 MiB, whatever the set sizes
BLOCK_BYTES = 64 * 2**20
#: rows per set in a kernel statistic; a larger set is subsampled (seeded): its kernel matrices are quadratic
MAX_KERNEL_ROWS = 2000
#: rows whose pairwise distances set the RBF bandwidth (the median heuristic needs no more)
MAX_BANDWIDTH_ROWS = 1000


def sq_dists(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances between the rows of ``a`` and of ``b`` (clamped at 0)."""
    return np.maximum((a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T, 0)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """FID-style distance between Gaussian fits of two feature sets."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    import warnings

    with warnings.catch_warnings():
        # with fewer samples than feature dimensions the covariances are singular, as in every FID on
        # small sets; sqrtm still returns the square root of the product's non-null part
        warnings.filterwarnings("ignore", category=linalg.LinAlgWarning)
        warnings.filterwarnings("ignore", category=RuntimeWarning, message="invalid value encountered")
        covmean, _ = linalg.sqrtm(ca @ cb, disp=False)
    covmean = np.real(covmean)
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(ca) + np.trace(cb) - 2 * np.trace(covmean))


def _unbiased_mmd2(kxx: np.ndarray, kyy: np.ndarray, kxy: np.ndarray) -> float:
    m, n = len(kxx), len(kyy)
    return float((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
                 - 2 * kxy.mean())


def _rows(x: np.ndarray, limit: int, seed: int) -> np.ndarray:
    """``x`` itself up to ``limit`` rows, else a seeded random subset of ``limit`` rows (in their order)."""
    if len(x) <= limit:
        return x
    return x[np.sort(np.random.default_rng(seed).choice(len(x), size=limit, replace=False))]


def mmd_rbf(a: np.ndarray, b: np.ndarray, seed: int = 0) -> float:
    """Unbiased MMD^2 with a Gaussian kernel whose bandwidth is the median pairwise distance (over at most
    :data:`MAX_BANDWIDTH_ROWS` rows of the pooled sets; each set capped at :data:`MAX_KERNEL_ROWS`)."""
    a, b = _rows(a, MAX_KERNEL_ROWS, seed), _rows(b, MAX_KERNEL_ROWS, seed + 1)
    z = np.concatenate([a, b])
    pool = _rows(z, MAX_BANDWIDTH_ROWS, seed + 2)
    gamma = 1.0 / max(float(np.median(sq_dists(pool, pool)[np.triu_indices(len(pool), 1)])), 1e-12)
    m = len(a)
    k = np.exp(-gamma * sq_dists(z, z))
    return _unbiased_mmd2(k[:m, :m], k[m:, m:], k[:m, m:])


def kid(a: np.ndarray, b: np.ndarray, seed: int = 0) -> float:
    """Kernel Inception Distance (Binkowski et al. 2018): unbiased MMD^2, kernel (x.y / d + 1)^3 (each set
    capped at :data:`MAX_KERNEL_ROWS` rows)."""
    a, b = _rows(a, MAX_KERNEL_ROWS, seed), _rows(b, MAX_KERNEL_ROWS, seed + 1)
    d = a.shape[1]
    kern = lambda x, y: (x @ y.T / d + 1.0) ** 3  # noqa: E731
    return _unbiased_mmd2(kern(a, a), kern(b, b), kern(a, b))


def _nn_dist(q: np.ndarray, ref: np.ndarray, exclude_self: bool = False,
             block_bytes: int = BLOCK_BYTES) -> tuple[np.ndarray, np.ndarray]:
    """Exact Euclidean nearest neighbour of each row of ``q`` in ``ref`` (with ``exclude_self``, ``q`` is
    ``ref`` and a row is not its own neighbour), a block of queries at a time: memory follows
    ``len(ref)``, never ``len(q) * len(ref)``."""
    block = max(1, block_bytes // (8 * max(len(ref), 1)))
    ref_sq = (ref * ref).sum(1)
    dist, idx = np.empty(len(q)), np.empty(len(q), dtype=np.int64)
    for start in range(0, len(q), block):
        part = q[start:start + block]
        d2 = np.maximum((part * part).sum(1)[:, None] + ref_sq[None, :] - 2 * part @ ref.T, 0)
        rows = np.arange(len(part))
        if exclude_self:
            d2[rows, start + rows] = np.inf
        best = d2.argmin(1)
        dist[start:start + len(part)], idx[start:start + len(part)] = np.sqrt(d2[rows, best]), best
    return dist, idx


def authenticity(train: np.ndarray, gen: np.ndarray) -> np.ndarray:
    """Per generated sample, True when authentic (Alaa et al. 2022, the intended definition): a sample is
    unauthentic when it is closer to its nearest train sample than that train sample is to its own
    nearest other train sample."""
    d_gen, nn = _nn_dist(gen, train)
    d_train, _ = _nn_dist(train, train, exclude_self=True)
    return d_gen >= d_train[nn]


def data_copying_ct(train: np.ndarray, test: np.ndarray, gen: np.ndarray, n_cells: int | None = None,
                    tau: float = 0.02, seed: int = 0) -> float:
    """The data-copying test statistic C_T (Meehan et al. 2020).

    Train is partitioned into cells by k-means; in each cell the distances of generated samples to
    their nearest train sample are compared with those of real test samples by a Mann-Whitney U
    z-score, and the z-scores are averaged with the cells' shares of test samples. Cells holding fewer
    than ``tau`` of the generated samples are left out. Strongly negative: generated samples sit closer
    to train than fresh real data does (copying); near 0: no evidence; positive: underfitting."""
    from sklearn.cluster import KMeans

    k = n_cells or max(2, min(10, len(train) // 20))
    km = KMeans(n_clusters=k, n_init=4, random_state=seed).fit(train)
    cell_test, cell_gen = km.predict(test), km.predict(gen)
    d_test, _ = _nn_dist(test, train)
    d_gen, _ = _nn_dist(gen, train)
    num = den = 0.0
    for c in range(k):
        q, p = d_gen[cell_gen == c], d_test[cell_test == c]
        if len(q) < max(1, tau * len(gen)) or len(p) < 1:
            continue
        u = stats.mannwhitneyu(q, p, alternative="two-sided").statistic
        n1, n2 = len(q), len(p)
        z = (u - n1 * n2 / 2) / np.sqrt(n1 * n2 * (n1 + n2 + 1) / 12)
        share = len(p) / len(test)
        num += share * z
        den += share
    return float(num / den) if den > 0 else float("nan")
