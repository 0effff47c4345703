"""From a policy and a candidate to a :class:`Report`: load and check every input first, then run the
checks, evaluate the rules and decide the verdict. Nothing here writes files or talks to MLflow."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from gate import __version__
from gate.imageio import check_same_size, read_folder
from gate.imageset import ImageSet
from gate.policy import LoadedPolicy, load_policy
from gate.provenance import library_versions, now
from gate.evidence import findings, independence, is_label_file
from gate.report import CheckResult, DataManifest, Provenance, Report, RuleOutcome, Statement
from gate.rules import evaluate_rule, gx_check
from gate.errors import InputError
from gate.validators import CheckContext, Figure, MetricDef, Plan, ValidatorRegistry, discover

ProgressFactory = Callable[[str, int], Callable[[int], None]]


def _silent(_desc: str, _total: int) -> Callable[[int], None]:
    return lambda _n: None


@dataclasses.dataclass
class Inputs:
    """Everything a run needs, loaded and checked."""

    policy: LoadedPolicy
    registry: ValidatorRegistry
    train: ImageSet
    holdout: ImageSet | None
    train_dir: Path
    holdout_dir: Path | None


def load_inputs(policy_path: Path, train: Path | None = None, holdout: Path | None = None,
                registry: ValidatorRegistry | None = None) -> Inputs:
    """Policy and reference data, checked on entry (raises ConfigError / InputError: exit 2)."""
    registry = registry or discover()
    policy = load_policy(policy_path, registry)
    data = policy.model.spec.data
    # the policy's folders are already anchored at its own folder (load_policy); overrides are the user's,
    # relative to the working directory
    train_dir = Path(train) if train else data.train
    holdout_dir = Path(holdout) if holdout else data.holdout
    pre = data.preprocess
    train_set = read_folder(train_dir, "train", pre)
    holdout_set = read_folder(holdout_dir, "holdout", pre, grid_of(train_set)) if holdout_dir else None
    if holdout_set is not None:
        check_same_size(train_set, holdout_set)
    return Inputs(policy, registry, train_set, holdout_set, train_dir, holdout_dir)


def grid_of(train: ImageSet) -> tuple[int, int]:
    """The grid every later set is read onto: the train set's, whatever ``preprocess.size`` chose."""
    return tuple(train.shape)  # type: ignore[return-value]


def read_candidate_folder(inputs: Inputs, folder: Path) -> ImageSet:
    """A --samples folder, read as the policy reads its data and onto the train grid."""
    return read_folder(folder, "candidate", inputs.policy.model.spec.data.preprocess, grid_of(inputs.train))


def preflight(inputs: Inputs, plan: Plan) -> None:
    """Every problem that the policy, the data as read and the sampling plan already show, from every
    check at once, before any model runs: one InputError, a line per problem (exit 2, in seconds)."""
    problems = []
    for i, check in enumerate(inputs.policy.model.spec.checks):
        hook = getattr(inputs.registry.get(check.validator).cls(), "preflight", None)
        if hook is None:
            continue
        try:
            found = [str(p) for p in hook(plan, check.params)]
        except Exception as exc:  # noqa: BLE001 - a broken hook must not let the check through unexamined
            found = [f"its preflight failed ({type(exc).__name__}: {exc}); nothing was run"]
        problems += [f"spec.checks.{i} ({check.id}): {p}" for p in found]
    if len(problems) == 1:
        raise InputError(f"{inputs.policy.path}: {problems[0]}")
    if problems:
        raise InputError("\n".join([f"{inputs.policy.path}: {len(problems)} problems found before running "
                                     "anything:", *problems]))


@dataclasses.dataclass
class Outcome:
    report: Report
    tables: dict[str, pd.DataFrame]
    figures: dict[str, list[Figure]]
    gx_evidence: dict[str, Any] | None


def _manifest(s: ImageSet, folder: Path | None) -> DataManifest:
    files = [{"path": e.path, "sha256": e.sha256} for e in s.manifest]
    labels = sum(1 for e in s.manifest if is_label_file(e.path))
    return DataManifest(name=s.name, folder=str(folder) if folder else None, n_images=len(s), shape=list(s.shape),
                        sha256=s.manifest_sha256(), files=files, preprocessing=s.preprocessing,
                        n_image_files=len(files) - labels, n_label_files=labels,
                        origin="files" if s.manifest else "drawn")


def run(inputs: Inputs, candidate: ImageSet, *, cache_dir: Path, model_info: dict | None = None,
        samples_dir: Path | None = None, candidate_folder: Path | None = None, mlflow_run_id: str | None = None,
        tracking_uri: str | None = None, progress: ProgressFactory = _silent, isolation: str | None = None,
        data_overrides: dict[str, str] | None = None, engine: str | None = None) -> Outcome:
    started = now()
    check_same_size(inputs.train, candidate)
    spec = inputs.policy.model.spec
    results: list[CheckResult] = []
    tables: dict[str, pd.DataFrame] = {}
    figures: dict[str, list[Figure]] = {}
    metric_defs: dict[tuple[str, str], MetricDef] = {}
    outcomes: list[RuleOutcome] = []
    scalars: dict[str, dict[str, float]] = {}
    versions: dict[str, str] = {}

    for i, check in enumerate(spec.checks):
        loaded = inputs.registry.get(check.validator)
        versions[check.validator] = f"{loaded.distribution} {loaded.version}"
        validator = loaded.cls()
        context = CheckContext(candidate=candidate, train=inputs.train, holdout=inputs.holdout, seed=spec.candidate.seed,
                               batch_size=spec.candidate.batch_size, cache_dir=cache_dir, progress=progress,
                               device=spec.compute.device, engine=engine or spec.compute.engine,
                               workers=spec.compute.workers)
        t0 = time.perf_counter()
        result = CheckResult(id=check.id, validator=check.validator, status="ok",
                             params=check.params.model_dump(mode="json"))
        try:
            out = validator.run(context, check.params)
            missing = [c for c in loaded.cls.columns if c not in out.table.columns]
            if missing or len(out.table) != len(candidate):
                raise ValueError(f"validator returned a table without columns {missing} or with "
                                 f"{len(out.table)} rows for {len(candidate)} samples")
        except Exception as exc:  # noqa: BLE001 - fail closed: any error means "not validated"
            result.status, result.error = "error", f"{type(exc).__name__}: {exc}"
            result.duration_s = time.perf_counter() - t0
            results.append(result)
            continue
        result.duration_s = time.perf_counter() - t0
        tables[check.id] = out.table
        figures[check.id] = out.figures
        result.provenance, result.diagnostics = out.provenance, out.diagnostics
        if out.error:
            result.status, result.error = "error", out.error
        defs = {m.name: m for m in loaded.cls.metrics}
        result.metrics = {name: _finite_or_none(m.compute(out.table, out.scalars)) for name, m in defs.items()}
        result.metric_descriptions = {name: m.description for name, m in defs.items()}
        result.blind_spots = [str(b) for b in getattr(loaded.cls, "blind_spots", ())]
        scalars[check.id] = dict(out.scalars)
        for j, rule in enumerate(check.rules):
            metric_defs[(check.id, rule.metric)] = defs[rule.metric]
            outcome = evaluate_rule(check.id, rule, defs[rule.metric], out.table, inputs.policy.rule_lines.get((i, j)),
                                    out.scalars, out.insensitive, out.insensitive_to)
            result.rules.append(outcome)
            outcomes.append(outcome)
            if outcome.value is None and outcome.severity == "block":  # cannot be evaluated: not validated
                _mark_error([result], check.id, f"metric {rule.metric} could not be computed (NaN) for its rule")
        if out.cannot_vouch:
            if any(not o.passed and o.value is not None and o.severity == "block" for o in result.rules):
                result.diagnostics = {**result.diagnostics, "cannot_vouch_for_a_pass": out.cannot_vouch}
            else:
                _mark_error([result], check.id, out.cannot_vouch)
        result.samples_csv = f"samples/{check.id}.csv"
        results.append(result)

    evidence = None
    if outcomes:
        try:
            evidence = gx_check(tables, outcomes, metric_defs, scalars)
            for o in outcomes:
                if o.value is not None and o.gx_success is not None and o.gx_success != o.passed:
                    _mark_error(results, o.check_id,
                                f"Great Expectations and gate disagree on rule {o.metric} {o.condition}")
        except Exception as exc:  # noqa: BLE001
            for r in results:
                if r.rules:
                    _mark_error(results, r.id, f"Great Expectations evidence failed: {type(exc).__name__}: {exc}")

    verdict = _verdict(results)
    enforce = spec.mode == "enforce"
    sets = [(inputs.train, inputs.train_dir)] + ([(inputs.holdout, inputs.holdout_dir)] if inputs.holdout else [])
    sets.append((candidate, candidate_folder))
    provenance = Provenance(
        gate_version=__version__, model=model_info, samples_dir=str(samples_dir) if samples_dir else None,
        policy_path=str(inputs.policy.path), policy_name=inputs.policy.model.metadata.name,
        policy_sha256=inputs.policy.sha256, data=[_manifest(s, f) for s, f in sets], validators=versions,
        libraries=library_versions(), seeds={"candidate": spec.candidate.seed,
                                             **{f"{c.id}.null_seed": getattr(c.params, "null_seed") for c in spec.checks
                                                if hasattr(c.params, "null_seed")}},
        started_at=started, finished_at=now(), mlflow_run_id=mlflow_run_id, tracking_uri=tracking_uri,
        isolation=isolation, data_overrides=data_overrides or {})
    advice = {c.id: dict(getattr(inputs.registry.get(c.validator).cls, "advice", {}) or {}) for c in spec.checks}
    meta = inputs.policy.model.metadata
    c = spec.candidate
    sampling = {"source": "folder", "folder": str(candidate_folder)} if model_info is None else \
        {"source": "registry", "mode": model_info.get("generator_mode"), "n_samples": c.n_samples, "seed": c.seed,
         "batch_size": c.batch_size, "label_deformation_px": c.label_deformation_px, "isolation": isolation,
         "device": model_info.get("sampler_device", "cpu")}
    report = Report(verdict=verdict, mode=spec.mode, blocking=enforce and verdict != "pass",
                    summary=_summary(verdict, results, spec.mode), checks=results, provenance=provenance,
                    gx_evidence="gx_validation.json" if evidence else None,
                    findings=findings(results, advice),
                    statement=Statement(intended_use=meta.intended_use, limitations=list(meta.limitations),
                                        retention=meta.retention, sampling=sampling),
                    independence=_independence([s for s, _ in sets], spec.report.patient_images),
                    patient_images=spec.report.patient_images)
    return Outcome(report, tables, figures, evidence)


def _independence(sets: list[ImageSet], patient_images: str):
    """The overlaps; without their example names when patients' images may not leave (file names carry
    subject ids)."""
    found = independence(sets)
    if patient_images != "show":
        found = found.model_copy(update={"pairs": [p.model_copy(update={"examples": []}) for p in found.pairs]})
    return found


def _finite_or_none(v: float) -> float | None:
    return v if v == v else None


def _mark_error(results: list[CheckResult], check_id: str, message: str) -> None:
    for r in results:
        if r.id == check_id:
            r.status = "error"
            r.error = message if not r.error else f"{r.error}; {message}"


def _verdict(results: list[CheckResult]) -> str:
    if any(r.status == "error" for r in results):
        return "error"
    if any(not o.passed and o.severity == "block" for r in results for o in r.rules):
        return "fail"
    return "pass"


def _summary(verdict: str, results: list[CheckResult], mode: str) -> str:
    failed = [f"{o.check_id}.{o.metric} = {'NaN' if o.value is None else format(o.value, '.4g')} (needs {o.condition})"
              for r in results for o in r.rules if not o.passed and o.severity == "block"]
    errors = [f"{r.id}: {r.error}" for r in results if r.status == "error"]
    text = {"pass": "every blocking rule held",
            "fail": "blocked by " + "; ".join(failed),
            "error": "not validated: " + "; ".join(errors)}[verdict]
    return text + (" (audit mode: recorded, not enforced)" if mode == "audit" and verdict != "pass" else "")
