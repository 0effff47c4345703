"""The champion comparison of `gate promote` (gate.regression): each block rule in its own direction."""

from types import SimpleNamespace

from gate.policy import RuleBase
from gate.regression import direction, regressions


def _check(id_, *rules, tolerance=0.05):
    return SimpleNamespace(id=id_, rules=[RuleBase(**b, severity=sev, regression_tolerance=tolerance)
                                          .model_copy(update={"metric": m}) for m, sev, b in rules])


def _checks(tolerance):
    return [_check("memorization", ("fraction_flagged", "block", {"lte": 0.05}), ("oni_mean", "warn", {"gte": 0}),
                   tolerance=tolerance),
            _check("segmentation", ("dice", "block", {"gte": 0.7}), ("band", "block", {"gte": 0, "lte": 1}),
                   tolerance=tolerance)]


CHECKS = _checks(0.05)


def test_directions_follow_the_bound():
    assert direction({"lte": 1}) == "lower" and direction({"gt": 0}) == "higher"
    assert direction({"gte": 0, "lte": 1}) is None


def test_worse_by_more_than_the_tolerance_on_a_block_rule_is_a_regression():
    champion = {"memorization.fraction_flagged": 0.0, "memorization.oni_mean": 0.5, "segmentation.dice": 0.9,
                "segmentation.band": 0.1}
    candidate = {"memorization.fraction_flagged": 0.04, "memorization.oni_mean": -0.5, "segmentation.dice": 0.75,
                 "segmentation.band": 0.9}
    found = regressions(CHECKS, candidate, champion)
    # fraction_flagged is worse by 0.04 (within 0.05); oni_mean is a warn rule; band has no better side
    assert [r.rule for r in found] == ["segmentation.dice"] and found[0].direction == "higher"
    assert [r.rule for r in regressions(_checks(0.0), candidate, champion)] == \
        ["memorization.fraction_flagged", "segmentation.dice"]
    assert regressions(_checks(0.2), candidate, champion) == []
    assert regressions(_checks(None), candidate, champion) == []  # rules without a tolerance are not compared


def test_a_metric_the_champion_never_had_or_nan_is_not_compared():
    assert regressions(CHECKS, {"segmentation.dice": 0.1}, {"memorization.fraction_flagged": 0.0}) == []
    assert regressions(CHECKS, {"segmentation.dice": float("nan")}, {"segmentation.dice": 0.9}) == []
