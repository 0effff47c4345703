"""The MI/ONI maths on hand-made numpy arrays."""

import numpy as np
import pytest

from gate_plugins.memorization import maths


def layers(rng, n, dims=(16, 32, 24)):
    return [rng.standard_normal((n, d)) for d in dims]


def test_exact_copy_scores_one_and_oni_minus_one():
    rng = np.random.default_rng(0)
    train = layers(rng, 200)
    model = maths.MemorizationIndex().fit(train)
    copies = [f[:10] for f in train]
    s = model.score(copies)
    assert np.allclose(s.similarity, 1.0, atol=1e-4)
    assert np.all(s.oni < -0.999)
    assert np.all(s.mi > 5)
    assert np.all(s.consensus == 3)
    assert np.array_equal(s.nn_index[0], np.arange(10))


def test_novel_samples_score_near_the_null():
    rng = np.random.default_rng(1)
    model = maths.MemorizationIndex().fit(layers(rng, 300))
    s = model.score(layers(rng, 100))
    # fresh draws from the train distribution look like null pairs: MI of order one, not copies
    assert abs(float(np.mean(s.mi))) < 2.0
    assert np.all(s.similarity < 0.9)


def test_empirical_whitening_gives_identity_covariance_when_n_exceeds_d():
    rng = np.random.default_rng(2)
    mix = rng.standard_normal((8, 8))
    x = rng.standard_normal((5000, 8)) @ mix + 3.0
    w = maths.fit_whitener(x, "empirical")
    z = (x - w.mean) @ w.matrix
    assert np.allclose(np.cov(z, rowvar=False), np.eye(8), atol=1e-3)
    assert np.allclose(w.matrix, w.matrix.T)  # ZCA keeps the original axes: a symmetric matrix


def test_ledoit_wolf_shrinkage_is_small_with_plenty_of_data_and_large_without():
    rng = np.random.default_rng(3)
    x_many = rng.standard_normal((5000, 8)) @ rng.standard_normal((8, 8))
    assert maths.fit_whitener(x_many).shrinkage < 0.05
    x_few = rng.standard_normal((20, 64))
    assert maths.fit_whitener(x_few).shrinkage > 0.3


def test_fewer_train_rows_than_dimensions_degenerates_with_the_papers_estimator_but_not_with_shrinkage():
    rng = np.random.default_rng(4)
    n, d = 40, 128
    train = [rng.standard_normal((n, d)) @ rng.standard_normal((d, d)) for _ in range(2)]
    # paper's estimator: every whitened train-train cosine collapses to -1/(N-1)
    w = maths.fit_whitener(train[0], "empirical")
    z = maths.whiten(train[0], w)
    off = (z @ z.T)[~np.eye(n, dtype=bool)]
    assert np.allclose(off, -1 / (n - 1), atol=1e-3)
    paper = maths.MemorizationIndex(covariance="empirical").fit(train)
    assert paper.sigma0_ < 1e-3  # the null has collapsed
    # shrinkage keeps a usable null, and a copy still scores as a copy
    lw = maths.MemorizationIndex(covariance="ledoit_wolf").fit(train)
    assert lw.sigma0_ > 0.01
    s = lw.score([f[:5] for f in train])
    assert np.allclose(s.similarity, 1.0, atol=1e-4)
    assert np.all(s.mi > 3)


def test_null_uses_disjoint_halves_and_is_reproducible():
    rng = np.random.default_rng(5)
    z = [maths.whiten(f, maths.fit_whitener(f)) for f in layers(rng, 51)]
    v1 = maths.null_similarities(z, n_splits=10, seed=1234)
    v2 = maths.null_similarities(z, n_splits=10, seed=1234)
    v3 = maths.null_similarities(z, n_splits=10, seed=99)
    assert v1.shape == (10 * 25,)
    assert np.array_equal(v1, v2) and not np.array_equal(v1, v3)
    # disjoint halves: no row is compared with itself, so no similarity reaches 1
    assert v1.max() < 0.999
    mu, sd = maths.null_moments(v1)
    assert mu == pytest.approx(v1.mean()) and sd == pytest.approx(np.sqrt(v1.var() + 1e-8))


def test_null_needs_enough_rows():
    with pytest.raises(ValueError, match="at least 4"):
        maths.null_similarities([np.eye(3, dtype=np.float32)])


def test_aggregate_is_a_clamped_geometric_mean():
    s = maths.aggregate([np.array([0.25, -0.5]), np.array([1.0, 0.9]), np.array([0.5, 0.9])])
    assert s[0] == pytest.approx((0.25 * 1.0 * 0.5) ** (1 / 3), rel=1e-4)
    # a negative cosine is clamped to 0, so that layer vetoes the match
    assert s[1] == pytest.approx((1e-6 * (0.9 + 1e-6) ** 2) ** (1 / 3), rel=1e-4)
    assert s[1] < 0.01


def test_mi_oni_and_consensus():
    mi, oni = maths.mi_oni(np.array([0.5, 0.9]), 0.5, 0.2)
    assert np.allclose(mi, [0.0, 2.0]) and np.allclose(oni, [0.0, -np.tanh(2.0)])
    c = maths.consensus([np.array([1, 2, 3]), np.array([1, 0, 3]), np.array([1, 2, 0])])
    assert c.tolist() == [3, 2, 2]


def test_nearest_matches_brute_force():
    rng = np.random.default_rng(6)
    ref = rng.standard_normal((300, 20)).astype(np.float32)
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    q = rng.standard_normal((50, 20)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    sim, idx = maths.nearest(q, ref)
    brute = q @ ref.T
    assert np.array_equal(idx, brute.argmax(1))
    assert np.allclose(sim, brute.max(1), atol=1e-5)


def test_conformal_p_values_rank_against_the_null():
    null = np.array([0.1, 0.2, 0.3, 0.4])
    p = maths.conformal_p_values(np.array([0.5, 0.3, 0.0]), null)
    assert p.tolist() == [1 / 5, 3 / 5, 5 / 5]


def test_conformal_p_values_are_uniform_for_exchangeable_draws():
    rng = np.random.default_rng(8)
    null = rng.standard_normal(2000)
    p = maths.conformal_p_values(rng.standard_normal(20000), null)
    assert abs(np.mean(p <= 0.05) - 0.05) < 0.006
    assert abs(np.mean(p <= 0.2) - 0.2) < 0.01


def test_benjamini_hochberg_step_up():
    p = np.array([0.001, 0.008, 0.039, 0.041, 0.042, 0.06, 0.074, 0.205, 0.212, 0.216])
    # the textbook example: at q = 0.05 the two smallest are discoveries (0.039 > 0.05 * 3 / 10)
    assert maths.benjamini_hochberg(p, 0.05).tolist() == [True, True] + [False] * 8
    # step-up: a p above its own line is still a discovery when a larger rank passes
    assert maths.benjamini_hochberg(np.array([0.04, 0.045, 0.05]), 0.05).all()
    assert not maths.benjamini_hochberg(np.array([0.5, 0.9]), 0.05).any()
    assert maths.benjamini_hochberg(np.array([]), 0.05).shape == (0,)


def test_copy_evidence_estimates_the_copied_fraction():
    rng = np.random.default_rng(9)
    novel = rng.uniform(size=4000)
    assert abs(maths.copy_evidence(novel).mean()) < 0.05
    mixed = np.r_[rng.uniform(size=3000), np.full(1000, 1e-4)]
    assert abs(maths.copy_evidence(mixed).mean() - 0.25) < 0.05


def test_transformed_reference_finds_flipped_copies_and_names_the_transform():
    rng = np.random.default_rng(10)
    n = 50
    train = [rng.standard_normal((n, 16)) for _ in range(2)]
    rot = np.linalg.qr(rng.standard_normal((16, 16)))[0]
    flipped = [f @ rot for f in train]  # stands in for "features of the transformed images"
    reference = [np.concatenate([f, g]) for f, g in zip(train, flipped)]
    model = maths.MemorizationIndex().fit(train, reference, n_transforms=2)
    s = model.score([g[:5] for g in flipped])
    assert np.allclose(s.similarity, 1.0, atol=1e-4)
    assert s.nn_transform[0].tolist() == [1] * 5
    assert s.nn_index[0].tolist() == list(range(5))
    with pytest.raises(ValueError, match="n_transforms"):
        maths.MemorizationIndex().fit(train, reference, n_transforms=3)


def test_holdout_calibration_replaces_the_null():
    rng = np.random.default_rng(11)
    train = [rng.standard_normal((80, 8)) for _ in range(2)]
    holdout = [rng.standard_normal((40, 8)) for _ in range(2)]
    model = maths.MemorizationIndex(tail=False).fit(train, calibration_layers=holdout)
    assert model.calibration_ == "holdout" and len(model.null_) == 40 and len(model.paper_null_) == 400
    s = model.score([f[:3] for f in train])
    assert np.allclose(s.p_value, 1 / 41)  # conformal: the floor 1/(n+1)
    # with the fitted tail, exact copies go far below that floor
    assert np.all(maths.MemorizationIndex().fit(train, calibration_layers=holdout).score(
        [f[:3] for f in train]).p_value < 1e-6)


def test_leave_one_out_p_values():
    assert maths.leave_one_out_p_values(np.array([0.3, 0.1, 0.2])).tolist() == [1 / 3, 3 / 3, 2 / 3]


def test_self_check_passes_and_fails_for_the_right_reasons():
    novel = np.linspace(0.02, 1.0, 100)
    ok = maths.self_check(np.full(24, 0.001), novel, 0.05)
    assert ok.passed and ok.planted_flagged == 24 and ok.novel_flagged <= 1
    missed = maths.self_check(np.r_[np.full(23, 0.001), 0.9], novel, 0.05)
    assert not missed.passed and "only 23 of 24 planted" in missed.reason
    leaky = maths.self_check(np.full(24, 0.001), np.r_[np.full(10, 0.001), novel], 0.05)
    assert not leaky.passed and "known-novel" in leaky.reason
    positives_only = maths.self_check(np.full(5, 0.001), None, 0.05)
    assert positives_only.passed and positives_only.n_novel == 0
