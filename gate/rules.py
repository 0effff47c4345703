"""Rule evaluation. gate computes the verdict itself; Great Expectations re-checks every rule over the
per-sample tables (one expectation per rule) and its validation result is kept as evidence."""

from __future__ import annotations

import json
import math
from typing import Any

import pandas as pd

from gate.report import RuleOutcome
from gate.validators import MetricDef


def evaluate_rule(check_id: str, rule: Any, metric: MetricDef, table: pd.DataFrame, line: int | None,
                  scalars: dict[str, float] | None = None, insensitive: dict[str, str] | None = None,
                  insensitive_to: dict[str, dict[str, str]] | None = None) -> RuleOutcome:
    value = metric.compute(table, scalars)
    severity, downgraded = rule.severity, None
    why = (insensitive or {}).get(rule.metric)
    guards = getattr(rule, "guards", None)
    tested = (insensitive_to or {}).get(rule.metric)
    if not why and guards and tested is not None:
        # a rule that names what it guards holds only if the validator's self-test showed that the metric sees
        # that failure sample by sample (None: seen); a failure its self-test never made is not shown either
        why = tested[guards] if guards in tested else (
            f"the self-test makes no failure called {guards!r} (it makes: {', '.join(sorted(tested))})")
    if why and severity == "block" and not rule.pin:
        severity, downgraded = "warn", why
    return RuleOutcome(
        check_id=check_id, metric=rule.metric, bounds=rule.bounds(), condition=rule.describe(),
        severity=severity, value=None if math.isnan(value) else value, passed=rule.holds(value), line=line,
        downgraded=downgraded, regression_tolerance=getattr(rule, "regression_tolerance", None))


def _expectation(rule: RuleOutcome, metric: MetricDef, meta: dict):
    import great_expectations.expectations as gxe

    cls = {"mean": gxe.ExpectColumnMeanToBeBetween, "max": gxe.ExpectColumnMaxToBeBetween,
           "min": gxe.ExpectColumnMinToBeBetween, "sum": gxe.ExpectColumnSumToBeBetween,
           # a set-level value sits in a one-row table of the check's scalars
           "scalar": gxe.ExpectColumnValuesToBeBetween}[metric.aggregate]
    b = rule.bounds
    column = metric.name if metric.aggregate == "scalar" else metric.column
    kwargs: dict[str, Any] = {"column": column, "meta": meta}
    lower = [(v, k == "gt") for k, v in b.items() if k in ("gt", "gte")]
    upper = [(v, k == "lt") for k, v in b.items() if k in ("lt", "lte")]
    if lower:
        v, strict = max(lower)  # the tighter bound; a strict one wins a tie
        kwargs.update(min_value=v, strict_min=strict)
    if upper:
        v, strict = min(upper, key=lambda t: (t[0], not t[1]))
        kwargs.update(max_value=v, strict_max=strict)
    return cls(**kwargs)


def gx_check(tables: dict[str, pd.DataFrame], outcomes: list[RuleOutcome],
             metrics: dict[tuple[str, str], MetricDef],
             scalars: dict[str, dict[str, float]] | None = None) -> dict[str, Any]:
    """Run GX suites per check (its per-sample table, and a one-row table of its set-level scalars);
    set ``gx_success`` on each outcome; return the evidence."""
    import logging

    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    logging.getLogger("great_expectations").setLevel(logging.ERROR)
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    source = context.data_sources.add_pandas(name="gate")
    evidence: dict[str, Any] = {"great_expectations_version": gx.__version__, "suites": {}}
    for check_id, table in tables.items():
        rules = [o for o in outcomes if o.check_id == check_id]
        one_row = pd.DataFrame([{k: (v if v is not None else float("nan"))
                                 for k, v in (scalars or {}).get(check_id, {}).items()}])
        for kind, frame in (("samples", table), ("scalars", one_row)):
            chosen = [o for o in rules if (metrics[(check_id, o.metric)].aggregate == "scalar") == (kind == "scalars")]
            if not chosen:
                continue
            name = f"{check_id}.{kind}"
            batch = source.add_dataframe_asset(name=name).add_batch_definition_whole_dataframe(name="all")
            suite = context.suites.add(gx.ExpectationSuite(name=f"gate-{name}"))
            for i, rule in enumerate(chosen):
                suite.add_expectation(_expectation(rule, metrics[(check_id, rule.metric)], {"rule_index": i}))
            vd = context.validation_definitions.add(gx.ValidationDefinition(name=f"vd-{name}", data=batch, suite=suite))
            result = vd.run(batch_parameters={"dataframe": frame}, result_format="SUMMARY")
            for r in result.results:
                chosen[int(r.expectation_config.meta["rule_index"])].gx_success = bool(r.success)
            evidence["suites"][name] = json.loads(json.dumps(result.to_json_dict(), default=float))
    return evidence
