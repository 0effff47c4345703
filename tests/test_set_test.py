"""The set-level copy test: p-values beyond the null's resolution, its false-refusal rate for novel sets,
its power against sparse copying, and the power analysis each report states."""

import numpy as np
import pytest
from scipy import stats

from gate_plugins.memorization import maths


def cosine_like(rng, n, loc=0.4, sd=0.05):
    """Similarities shaped like a holdout null (bounded, light upper tail)."""
    return np.clip(rng.normal(loc, sd, n), 0.0, 0.999)


def test_tail_p_values_are_conformal_inside_the_null_and_go_below_its_floor_beyond_it():
    rng = np.random.default_rng(0)
    null = maths.fisher_z(cosine_like(rng, 96))
    tail = maths.fit_tail(null)
    assert tail is not None and tail.shape >= 0 and tail.scale >= tail.scale_fitted
    inside = np.quantile(null, [0.1, 0.5, 0.9])
    assert np.allclose(maths.tail_p_values(inside, null, tail), maths.conformal_p_values(inside, null))
    beyond = maths.fisher_z(np.array([0.7, 0.8, 0.95]))
    p = maths.tail_p_values(beyond, null, tail)
    floor = 1 / (len(null) + 1)
    assert np.all(p < floor) and np.all(np.diff(p) < 0)  # the old floor is passed, monotonically
    assert maths.tail_p_values(beyond, null, None).tolist() == [floor] * 3  # tail: false is the old rule


def test_no_tail_is_fitted_to_a_null_too_small_to_have_one():
    null = cosine_like(np.random.default_rng(1), 30)
    assert maths.fit_tail(null) is None


def test_a_heavier_true_tail_than_exponential_is_not_extrapolated_away():
    # Pareto-tailed null: the fitted shape is positive and kept, so p-values stay conservative
    rng = np.random.default_rng(2)
    null = stats.genpareto(0.3).rvs(400, random_state=rng)
    tail = maths.fit_tail(null)
    assert tail.shape > 0.1
    q = stats.genpareto(0.3).isf(1e-4)  # true p = 1e-4
    assert maths.tail_p_values(np.array([q]), null, tail)[0] > 1e-5


@pytest.mark.parametrize("n_null", [48, 96, 250])
def test_the_set_test_refuses_novel_sets_at_most_at_its_level(n_null):
    rng = np.random.default_rng(n_null)
    alpha, refusals, reps = 0.05, 0, 250
    for _ in range(reps):
        null = maths.fisher_z(cosine_like(rng, n_null))
        cand = maths.fisher_z(cosine_like(rng, 128))
        refusals += maths.simes_p_value(maths.tail_p_values(cand, null, maths.fit_tail(null))) <= alpha
    # binomial upper 99.9 % bound at alpha: a calibrated or conservative test stays under it
    assert refusals <= stats.binom(reps, alpha).ppf(0.999)


def test_one_copy_in_128_is_refused_where_the_conformal_floor_could_not_flag_it():
    rng = np.random.default_rng(3)
    null = maths.fisher_z(cosine_like(rng, 96))
    cand = np.concatenate([cosine_like(rng, 127), [0.97]])
    z = maths.fisher_z(cand)
    with_tail = maths.tail_p_values(z, null, maths.fit_tail(null))
    without = maths.tail_p_values(z, null, None)
    assert maths.simes_p_value(with_tail) <= 0.01
    assert maths.simes_p_value(without) > 0.05  # its floor is 1/97: the old design could never refuse it
    assert not maths.benjamini_hochberg(without, 0.05).any()
    assert maths.benjamini_hochberg(with_tail, 0.05).sum() == 1


def test_simes_is_the_global_test_of_benjamini_hochberg():
    rng = np.random.default_rng(4)
    for _ in range(200):
        p = rng.uniform(size=20) ** rng.uniform(1, 6)
        assert (maths.simes_p_value(p) <= 0.1) == bool(maths.benjamini_hochberg(p, 0.1).any())


def test_count_test_is_exact_for_exchangeable_draws():
    rng = np.random.default_rng(5)
    ps = [maths.count_test_p_value(rng.normal(size=64), rng.normal(size=40))[1] for _ in range(3000)]
    assert np.mean(np.array(ps) <= 0.05) <= 0.05 + 3 * np.sqrt(0.05 * 0.95 / 3000)
    k, p = maths.count_test_p_value(np.r_[np.full(5, 9.0), rng.normal(size=59)], rng.normal(size=40))
    assert k >= 5 and p < 0.05


def test_power_analysis_states_the_refusal_probability_it_delivers():
    planted = np.r_[np.full(9, 1e-9), [0.5]]  # 9 of 10 planted copies are caught alone
    pa = maths.power_analysis(planted, n_samples=128, n_null=96, alpha=0.02)
    assert pa.caught_alone == pytest.approx(0.9) and pa.false_refusal == 0.02
    assert pa.refusal_probability(0.02) == pytest.approx(1 - (1 - 0.018) ** 128)
    # the stated 90 % rate is where the stated probability reaches 0.9
    assert pa.refusal_probability(pa.copy_rate_90) == pytest.approx(0.9)
    n = pa.samples_needed(0.02, 0.95)
    assert pa.refusal_probability(0.02, n) >= 0.95 > pa.refusal_probability(0.02, n - 1)
    # simulated: copies at 2 % among novel samples, each planted-like copy caught alone with prob 0.9
    rng = np.random.default_rng(6)
    hits = [(rng.uniform(size=rng.binomial(128, 0.02)) < 0.9).any() for _ in range(4000)]
    assert np.mean(hits) == pytest.approx(pa.refusal_probability(0.02), abs=0.03)
    assert maths.power_analysis(np.full(10, 0.5), 128, 96, 0.01).copy_rate_90 is None


def test_a_dense_copier_is_refused_by_the_count_test_where_no_tail_can_be_fitted():
    rng = np.random.default_rng(7)
    null = cosine_like(rng, 12)  # too few for a tail: conformal p-values stop at 1/13
    assert maths.fit_tail(maths.fisher_z(null)) is None
    cand = np.clip(rng.normal(0.97, 0.01, 24), 0, 0.999)
    simes = maths.simes_p_value(maths.tail_p_values(maths.fisher_z(cand), maths.fisher_z(null), None))
    k, count_p = maths.count_test_p_value(cand, null)
    assert simes > 0.05 and k == 24 and count_p < 1e-6
    assert maths.set_test_p_value(simes, count_p) <= 0.01
    # both parts valid, the union is too: a novel set is refused at most at alpha
    refused = [maths.set_test_p_value(maths.simes_p_value(maths.conformal_p_values(c, n)),
                                      maths.count_test_p_value(c, n)[1]) <= 0.05
               for n, c in ((rng.normal(size=12), rng.normal(size=24)) for _ in range(2000))]
    assert np.mean(refused) <= 0.05 + 3 * np.sqrt(0.05 * 0.95 / 2000)
