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
