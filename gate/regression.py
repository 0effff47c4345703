"""Does a candidate score worse than a baseline (the version that holds the alias it would take, or any
other validation)? Every metric side by side; regressions judged on the block rules that carry a
``regression_tolerance``, each in its own direction (an upper bound: lower is better; a lower bound: higher
is better). Pure: the registry lookup is :func:`gate.recording.baseline_record`, the report folders'
:func:`gate.compare.load_validation`."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

from gate.report import Comparison, ComparisonRow


@dataclasses.dataclass(frozen=True)
class Regression:
    rule: str            # CHECK.METRIC
    champion: float
    candidate: float
    direction: str       # "lower" or "higher" is better

    def describe(self) -> str:
        return (f"{self.rule} = {self.candidate:.4g} against the champion's {self.champion:.4g} "
                f"({self.direction} is better)")


def direction(bounds: Mapping[str, float]) -> str | None:
    """Which way a block rule's metric improves; None when it is bounded on both sides (a band: inside is
    all a rule says, and neither side is better)."""
    upper, lower = bool({"lt", "lte"} & set(bounds)), bool({"gt", "gte"} & set(bounds))
    if upper == lower:
        return None
    return "lower" if upper else "higher"


def _worse_by(old: float, new: float, way: str) -> float:
    """How much worse ``new`` is than ``old`` (negative: better); not-a-number compares as no change."""
    if not (math.isfinite(old) and math.isfinite(new)):
        return 0.0
    return (new - old) if way == "lower" else (old - new)


def compare(report: Any, baseline: Mapping[str, float], label: str, baseline_sha256: str | None = None,
            allowed: bool = False) -> Comparison:
    """Every metric of ``report`` (a :class:`gate.report.Report`) beside ``baseline`` (``CHECK.METRIC ->
    value``, the baseline's last passing validation), with the difference, the better side where a block
    rule gives one, and whether it is a regression: worse by more than the rule's ``regression_tolerance``,
    read from the rules as the report recorded them. Only block rules that carry a tolerance are judged: a
    score (Dice against real data) can be better or worse, but a test's evidence (no copying found, at
    level alpha) only holds or not, and the difference of two passing estimates is noise. A metric missing
    on one side, or not finite, is shown and not judged."""
    rules = {f"{c.id}.{r.metric}": r for c in report.checks for r in c.rules if r.severity == "block"
             or r.downgraded}
    rows, found = [], []
    for check in report.checks:
        for metric, value in check.metrics.items():
            key = f"{check.id}.{metric}"
            old = baseline.get(key)
            rule = rules.get(key)
            way = direction(rule.bounds) if rule else None
            tolerance = rule.regression_tolerance if rule else None
            regression = bool(old is not None and value is not None and way and tolerance is not None
                              and _worse_by(float(old), float(value), way) > tolerance)
            if old is None and value is None:
                continue
            rows.append(ComparisonRow(metric=key, candidate=value, baseline=None if old is None else float(old),
                                      difference=None if old is None or value is None else float(value) - float(old),
                                      better=way, tolerance=tolerance, regression=regression))
            if regression:
                found.append(Regression(key, float(old), float(value), way).describe())
    seen = {r.metric for r in rows}
    for key in sorted(set(baseline) - seen):  # the baseline's metrics the candidate lacks (a check gone or errored)
        rows.append(ComparisonRow(metric=key, candidate=None, baseline=float(baseline[key]), difference=None))
    return Comparison(baseline=label, baseline_report_sha256=baseline_sha256, rows=rows, regressions=found,
                      allowed=allowed)
