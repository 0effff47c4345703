"""Per-sample sensitivity (plugins/quality/sensitivity.py) and rules that name the failure they guard."""

import numpy as np
import pandas as pd

from gate.policy import RuleBase
from gate.rules import evaluate_rule
from gate.validators import MetricDef
from gate_plugins.quality.sensitivity import monotonic_share, per_sample_matrices, pooled_rho, sees


def test_a_measure_that_ranks_every_slice_is_seen_and_a_set_mean_alone_is_not():
    rng = np.random.default_rng(0)
    base = rng.uniform(0, 10, 16)  # slices differ far more than one severity step moves any of them
    ranks_each = [base + s * 0.5 for s in range(5)]
    # the mean rises with severity, but only because one slice in sixteen explodes: no slice-level ranking
    one_outlier = [base + np.where(np.arange(16) == 0, 40.0 * s, rng.normal(0, 0.5, 16)) for s in range(5)]
    assert monotonic_share(ranks_each, +1) == 1.0
    assert monotonic_share(one_outlier, +1) < 0.2
    assert abs(pooled_rho(one_outlier)) < 0.5
    assert pooled_rho([np.full(4, -1.0)] * 5) == 0.0  # undefined everywhere: no evidence


def test_matrices_and_the_direction_of_seeing():
    steps = [{"fwhm": np.array([2.0, 3.0, 2.5]) + s, "snr": np.array([9.0, 8.0, 7.0]) + s} for s in range(5)]
    rho, mono = per_sample_matrices({"blur": steps})
    assert mono["fwhm"]["blur"] == 1.0 and rho["fwhm"]["blur"] > 0.8
    # fwhm rising with blur is it getting worse (lower is better): seen; snr rising with noise would be fooled
    assert sees(rho["fwhm"]["blur"], 1.0, -1, 0.8, 0.5)
    assert not sees(rho["snr"]["blur"], 1.0, +1, 0.8, 0.5)
    assert not sees(0.95, 0.3, -1, 0.8, 0.5)


def _rule(**kw):
    rule = RuleBase(lte=1.0, **kw)
    return rule.model_copy(update={"metric": "fwhm_mean"})


def test_a_rule_that_guards_a_failure_its_metric_cannot_see_per_sample_is_a_warning():
    metric = MetricDef("fwhm_mean", None, "scalar", "")
    table = pd.DataFrame({"sample_id": ["a"]})
    tested = {"fwhm_mean": {"blur": None, "noise": "per sample it does not see noise"}}
    seen = evaluate_rule("quality", _rule(guards="blur"), metric, table, None, {"fwhm_mean": 0.5}, {}, tested)
    assert seen.severity == "block" and seen.downgraded is None
    unseen = evaluate_rule("quality", _rule(guards="noise"), metric, table, None, {"fwhm_mean": 0.5}, {}, tested)
    assert unseen.severity == "warn" and "does not see noise" in unseen.downgraded
    unknown = evaluate_rule("quality", _rule(guards="zebra"), metric, table, None, {"fwhm_mean": 0.5}, {}, tested)
    assert unknown.severity == "warn" and "makes no failure called 'zebra'" in unknown.downgraded
    pinned = evaluate_rule("quality", _rule(guards="noise", pin=True), metric, table, None, {"fwhm_mean": 0.5}, {},
                           tested)
    assert pinned.severity == "block"
    untested = evaluate_rule("quality", _rule(guards="noise"), metric, table, None, {"fwhm_mean": 0.5}, {}, {})
    assert untested.severity == "block"  # no self-test ran (self_test: false): nothing to downgrade on
