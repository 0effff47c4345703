"""The champion comparison of `gate promote` and `gate compare` (gate.regression): each block rule in its own
direction, every metric beside the baseline's."""

from types import SimpleNamespace

from gate.regression import compare, direction

RULES = {"memorization": [("fraction_flagged", "block", {"lte": 0.05}), ("oni_mean", "warn", {"gte": 0})],
         "segmentation": [("dice", "block", {"gte": 0.7}), ("band", "block", {"gte": 0, "lte": 1})]}


def _report(candidate: dict, tolerance):
    """What compare reads of a report: each check's metrics and its rules as the report recorded them."""
    checks = []
    for cid, rules in RULES.items():
        metrics = {k.split(".", 1)[1]: v for k, v in candidate.items() if k.startswith(cid + ".")}
        checks.append(SimpleNamespace(id=cid, metrics=metrics, rules=[
            SimpleNamespace(metric=m, severity=sev, downgraded=None, bounds=b, regression_tolerance=tolerance)
            for m, sev, b in rules]))
    return SimpleNamespace(checks=checks)


def regressed(candidate, champion, tolerance=0.05):
    return [r.metric for r in compare(_report(candidate, tolerance), champion, "models:/m/1").rows if r.regression]


def test_directions_follow_the_bound():
    assert direction({"lte": 1}) == "lower" and direction({"gt": 0}) == "higher"
    assert direction({"gte": 0, "lte": 1}) is None


def test_worse_by_more_than_the_tolerance_on_a_block_rule_is_a_regression():
    champion = {"memorization.fraction_flagged": 0.0, "memorization.oni_mean": 0.5, "segmentation.dice": 0.9,
                "segmentation.band": 0.1}
    candidate = {"memorization.fraction_flagged": 0.04, "memorization.oni_mean": -0.5, "segmentation.dice": 0.75,
                 "segmentation.band": 0.9}
    # fraction_flagged is worse by 0.04 (within 0.05); oni_mean is a warn rule; band has no better side
    assert regressed(candidate, champion) == ["segmentation.dice"]
    assert regressed(candidate, champion, 0.0) == ["memorization.fraction_flagged", "segmentation.dice"]
    assert regressed(candidate, champion, 0.2) == []
    assert regressed(candidate, champion, None) == []  # rules without a tolerance are not compared
    result = compare(_report(candidate, 0.05), champion, "models:/m/1 (@champion)", "ab" * 32)
    assert result.refuses and result.regressions == [
        "segmentation.dice = 0.75 against the champion's 0.9 (higher is better)"]
    dice = next(r for r in result.rows if r.metric == "segmentation.dice")
    assert (dice.better, dice.tolerance) == ("higher", 0.05) and abs(dice.difference + 0.15) < 1e-12
    assert not compare(_report(candidate, 0.05), champion, "x", allowed=True).refuses  # recorded, not refused


def test_a_metric_the_champion_never_had_or_nan_is_not_compared_but_shown():
    assert regressed({"segmentation.dice": 0.1}, {"memorization.fraction_flagged": 0.0}) == []
    assert regressed({"segmentation.dice": float("nan")}, {"segmentation.dice": 0.9}) == []
    rows = compare(_report({"segmentation.dice": 0.8}, 0.05), {"memorization.fraction_flagged": 0.0}, "x").rows
    # the baseline's metric that the candidate lacks (a check gone or errored) is a row, not silently dropped
    assert {(r.metric, r.candidate, r.baseline) for r in rows} == {
        ("segmentation.dice", 0.8, None), ("memorization.fraction_flagged", None, 0.0)}
