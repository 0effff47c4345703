"""Does a passing candidate score worse than the version that holds the alias it would take? Compared on
the policy's block rules that carry a ``regression_tolerance``, each in its own direction (an upper bound:
lower is better; a lower bound: higher is better), against the champion's last validation as MLflow recorded it (``CHECK.METRIC`` run metrics).
Pure: the registry lookup is :func:`gate.recording.champion_record`."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterable, Mapping


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


def regressions(checks: Iterable[Any], candidate: Mapping[str, float],
                champion: Mapping[str, float]) -> list[Regression]:
    """Every block rule on which the champion is better than the candidate by more than the rule's
    ``regression_tolerance`` (in the metric's units). Only rules that carry one are compared: a score (Dice
    against real data) can be better or worse, but a test's evidence (no copying found, at level alpha) only
    holds or not, and the difference of two passing estimates is noise. ``checks``: the policy's checks
    (``id``, ``rules`` with ``metric``, ``severity``, ``regression_tolerance``, ``bounds()``); ``candidate``
    and ``champion``: ``CHECK.METRIC -> value``. A metric the champion's record lacks (another policy, a check
    added since) or that is not finite on either side is not compared."""
    found = []
    for check in checks:
        for rule in check.rules:
            way = direction(rule.bounds())
            key = f"{check.id}.{rule.metric}"
            tolerance = rule.regression_tolerance
            if rule.severity != "block" or tolerance is None or way is None or key not in champion \
                    or key not in candidate:
                continue
            old, new = float(champion[key]), float(candidate[key])
            if not (math.isfinite(old) and math.isfinite(new)):
                continue
            worse_by = (new - old) if way == "lower" else (old - new)
            if worse_by > tolerance:
                found.append(Regression(key, old, new, way))
    return found
