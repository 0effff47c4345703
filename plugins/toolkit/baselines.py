"""The paper's baselines, computed in the detector's feature space (pure numpy/scipy).

Every function takes feature matrices ``[n, d]``: ``train`` (the generator's training set),
``gen`` (the candidate) and, where a test needs it, ``test`` (real images the generator never saw).
"""

from __future__ import annotations

import numpy as np
from scipy import linalg, stats


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


def mmd_rbf(a: np.ndarray, b: np.ndarray) -> float:
    """Unbiased MMD^2 with a Gaussian kernel whose bandwidth is the median pairwise distance."""
    z = np.concatenate([a, b])
    d2 = sq_dists(z, z)
    gamma = 1.0 / max(float(np.median(d2[np.triu_indices(len(z), 1)])), 1e-12)
    k = np.exp(-gamma * d2)
    m = len(a)
    return _unbiased_mmd2(k[:m, :m], k[m:, m:], k[:m, m:])


def kid(a: np.ndarray, b: np.ndarray) -> float:
    """Kernel Inception Distance (Binkowski et al. 2018): unbiased MMD^2, kernel (x.y / d + 1)^3."""
    d = a.shape[1]
    kern = lambda x, y: (x @ y.T / d + 1.0) ** 3  # noqa: E731
    return _unbiased_mmd2(kern(a, a), kern(b, b), kern(a, b))


def _nn_dist(q: np.ndarray, ref: np.ndarray, exclude_self: bool = False) -> tuple[np.ndarray, np.ndarray]:
    d2 = sq_dists(q, ref)
    if exclude_self:
        np.fill_diagonal(d2, np.inf)
    idx = d2.argmin(1)
    return np.sqrt(d2[np.arange(len(q)), idx]), idx


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
