"""Baselines on hand-made feature sets whose answer is known."""

import numpy as np
import pytest

from gate_plugins.toolkit import baselines


@pytest.fixture
def sets():
    rng = np.random.default_rng(0)
    train = rng.standard_normal((200, 6))
    test = rng.standard_normal((150, 6))
    shifted = rng.standard_normal((150, 6)) + 1.5
    copies = train[:150] + rng.normal(0, 0.01, (150, 6))
    return train, test, shifted, copies


def test_frechet_distance(sets):
    train, test, shifted, _ = sets
    assert baselines.frechet_distance(train, train) == pytest.approx(0.0, abs=1e-6)
    assert baselines.frechet_distance(train, shifted) > 10 * baselines.frechet_distance(train, test)
    # two Gaussians with identity covariance: the distance is the squared mean difference
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((20000, 2)), rng.standard_normal((20000, 2)) + [3.0, 0.0]
    assert baselines.frechet_distance(a, b) == pytest.approx(9.0, rel=0.05)


@pytest.mark.parametrize("fn", [baselines.mmd_rbf, baselines.kid])
def test_kernel_distances_separate_shifted_sets(fn, sets):
    train, test, shifted, _ = sets
    assert abs(fn(train, test)) < 0.2 * fn(train, shifted)
    assert fn(train, shifted) > 0


def test_authenticity_flags_copies_not_fresh_samples(sets):
    train, test, _, copies = sets
    assert baselines.authenticity(train, copies).mean() < 0.05
    assert baselines.authenticity(train, test).mean() > 0.4


def test_data_copying_statistic_is_negative_for_copies_and_near_zero_for_fresh_data(sets):
    train, test, _, copies = sets
    rng = np.random.default_rng(2)
    fresh = rng.standard_normal((150, 6))
    assert baselines.data_copying_ct(train, test, copies) < -3  # near the most negative z at these cell sizes
    assert abs(baselines.data_copying_ct(train, test, fresh)) < 3


def test_prdc_and_relative_distribution_metrics(sets):
    from gate_plugins.quality.distribution import distribution_metrics, prdc

    train, test, shifted, _ = sets
    same = prdc(train, train)
    assert same["precision"] == 1.0 and same["recall"] == 1.0 and same["coverage"] == 1.0
    far = prdc(train, shifted + 10.0)
    assert far["precision"] == 0.0 and far["coverage"] == 0.0 and far["density"] == 0.0
    rel = distribution_metrics(train, test, shifted)
    assert rel["fid_ratio"] > 3 and rel["fid_real"] > 0
    assert np.isnan(distribution_metrics(train, None, shifted).get("fid_ratio", np.nan))


def test_nearest_neighbours_in_blocks_equal_the_whole_distance_matrix():
    """Memory linear in the train size (issue 16: 24,000 train images built 24,000^2 matrices and crashed):
    the blocked search gives the answers of the full matrix, whatever the block."""
    rng = np.random.default_rng(3)
    train, gen = rng.normal(size=(300, 16)), rng.normal(size=(40, 16))
    train[7] = train[11]  # a duplicate: its nearest other row is at distance 0

    def full(q, ref, exclude_self=False):
        d2 = baselines.sq_dists(q, ref)
        if exclude_self:
            np.fill_diagonal(d2, np.inf)
        idx = d2.argmin(1)
        return np.sqrt(d2[np.arange(len(q)), idx]), idx

    for block_bytes in (8 * 300, 8 * 300 * 7, baselines.BLOCK_BYTES):  # one row, seven rows, all at once
        for q, ref, ex in ((gen, train, False), (train, train, True)):
            d, i = baselines._nn_dist(q, ref, ex, block_bytes=block_bytes)
            d_full, i_full = full(q, ref, ex)
            assert np.allclose(d, d_full, atol=1e-9) and np.array_equal(i, i_full)
    assert baselines._nn_dist(train, train, True)[0][7] == 0.0


def test_kernel_statistics_use_every_row_up_to_the_cap_and_a_seeded_subset_above():
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(120, 8)), rng.normal(0.3, 1, size=(80, 8))
    z = np.concatenate([a, b])
    d2 = baselines.sq_dists(z, z)
    k = np.exp(-d2 / np.median(d2[np.triu_indices(len(z), 1)]))
    exact = baselines._unbiased_mmd2(k[:120, :120], k[120:, 120:], k[:120, 120:])
    assert baselines.mmd_rbf(a, b) == pytest.approx(exact, rel=1e-12)  # under the caps: the exact statistic
    big = rng.normal(size=(baselines.MAX_KERNEL_ROWS + 500, 8))
    assert baselines.kid(big, b, seed=1) == baselines.kid(big, b, seed=1) != baselines.kid(big, b, seed=2)
    # a subset estimates the same quantity: near the whole set's value for a clear shift
    whole = baselines._unbiased_mmd2(*(((x @ y.T) / 8 + 1) ** 3 for x, y in ((big, big), (b + 1, b + 1),
                                                                             (big, b + 1))))
    assert baselines.kid(big, b + 1) == pytest.approx(whole, rel=0.15)


def test_prdc_radii_are_blocked_and_equal_the_full_matrix():
    """Without a holdout PRDC's reference is the train set: its k-th neighbour radii are computed a block of rows
    at a time (memory linear in N), with the full matrix's answers for any block size."""
    from gate_plugins.quality.distribution import _kth_radius
    from gate_plugins.toolkit.baselines import sq_dists

    x = np.random.default_rng(4).standard_normal((301, 12))
    full = np.sqrt(np.sort(sq_dists(x, x), axis=1)[:, 5])
    for block_bytes in (8 * 301, 8 * 301 * 7, 1 << 30):
        np.testing.assert_allclose(_kth_radius(x, 5, block_bytes), full)
