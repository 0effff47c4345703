"""The validate (and validate-then-promote) workflow shared by the CLI, the demo and integrations."""

from __future__ import annotations

import dataclasses
import os
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np

from gate.engine import Inputs, load_inputs, preflight, read_candidate_folder, run
from gate.errors import ConfigError, ExitCode, InputError, ValidatorError
from gate.generator import assemble_samples, declares_device
from gate.imageio import check_same_size
from gate.imageset import ImageSet
from gate.registry import ModelRef, check_reachable, resolve_model, resolve_tracking_uri
from gate.render.writer import write_reports
from gate.regression import Regression, compare
from gate.report import Report
from gate.validators import Plan

ProgressFactory = Callable[[str, int], Callable[[int], None]]
CACHE_DIR = Path(".gate") / "cache"  # relative: the working directory's, as the embedded store


@dataclasses.dataclass(frozen=True)
class Request:
    policy: Path
    out: Path
    model: str | None = None
    samples: Path | None = None
    tracking_uri: str | None = None
    train: Path | None = None
    holdout: Path | None = None
    promote_alias: str | None = None
    signing_key: Path | None = None  # Ed25519 private key: sign the result as an attestation
    allow_regression: bool = False   # promote even over an alias holder that scores better
    #: compare with this version's last passing validation: an alias (``@champion``) or a version number;
    #: None: the alias being promoted to, when one is held
    against: str | None = None
    #: --engine: "local" or "ray" instead of the policy's spec.compute.engine
    engine: str | None = None


@dataclasses.dataclass(frozen=True)
class Result:
    report: Report
    report_sha256: str
    out: Path
    model: ModelRef | None
    promoted: bool
    tracking_uri: str | None
    promote_requested: bool = False
    replaced: str | None = None  # the version that held the alias before this one was promoted
    #: block rules on which the alias holder (``champion``) scores better: the promotion was refused
    regressions: tuple[Regression, ...] = ()
    champion: str | None = None
    #: what the candidate was compared with (``models:/NAME/N (@ALIAS)``), when it was
    baseline: str | None = None

    @property
    def exit_code(self) -> ExitCode:
        if self.report.verdict == "error":
            return ExitCode.VALIDATOR_ERROR
        if (self.promote_requested and not self.promoted) or (self.report.verdict == "fail" and self.report.blocking):
            return ExitCode.BLOCKED
        return ExitCode.PASS


def conditioning_labels(train: ImageSet, n: int, seed: int, deformation_px: float = 0.0) -> np.ndarray:
    """``n`` label maps of the train set (seeded; repeated only when train has fewer than ``n``), each
    deformed by :func:`gate.labelmaps.deform_label_maps`: a conditional generator never sees the
    holdout's labels, which stay for testing."""
    from gate.labelmaps import deform_label_maps

    if train.labels is None:
        raise InputError(f"spec.candidate.mode is conditional but the train folder has no labels: give "
                         f"{train.name} as images/ and labels/ with matching file names")
    rng = np.random.default_rng(seed)
    chosen = train.labels[rng.choice(len(train), size=n, replace=n > len(train))]
    return deform_label_maps(chosen, rng, deformation_px)


def validate(req: Request, progress: ProgressFactory = lambda _d, _t: (lambda _n: None),
             inputs: Inputs | None = None, warn: Callable[[str], None] = lambda _m: None) -> Result:
    """One linear flow: check every input → draw the candidate in the sandbox (or read the folder) →
    run the checks → write every report file and the attestation in one staging step → record the
    result in MLflow → promote on a pass. Raises :class:`gate.errors.GateError` for bad input."""
    from gate import recording
    from gate.sandbox import BUBBLEWRAP, probe_isolation, resolve_sampler_device

    if (req.model is None) == (req.samples is None):
        raise InputError("give exactly one candidate: --model models:/NAME/VERSION or --samples DIR")
    if req.promote_alias and not req.model:
        raise InputError("promotion needs --model: a folder of samples has no registry version to promote")
    if req.signing_key and not req.model:
        raise InputError("--signing-key needs --model: an attestation is about a registry version")
    inputs = inputs or load_inputs(req.policy, req.train, req.holdout)
    spec = inputs.policy.model.spec
    overrides = {k: str(v) for k, v in (("train", req.train), ("holdout", req.holdout)) if v is not None}
    if req.signing_key and overrides and not spec.data.allow_overrides:
        raise ConfigError(f"--{'/--'.join(overrides)}: a signed validation uses the policy's own data; set "
                          f"spec.data.allow_overrides: true in {req.policy} to allow overriding it")
    key = _load_signing_key(req.signing_key) if req.signing_key else None
    isolation = None
    ref = tracking_uri = model_info = None
    if req.model:
        isolation = probe_isolation()
        sampler = resolve_sampler_device(spec.candidate.device)
        if isolation != BUBBLEWRAP:
            what = ("the candidate would run without isolation (bubblewrap's `bwrap` is missing or cannot create "
                    "namespaces here: install Debian's bubblewrap package)")
            if key is not None:
                raise ConfigError(f"--signing-key: refusing to sign: {what}")
            warn(f"{what}; sampling in a separate process only, and the result is not signable")
        tracking_uri = resolve_tracking_uri(req.tracking_uri)
        check_reachable(tracking_uri)
        ref = resolve_model(req.model, tracking_uri)
        preflight(inputs, Plan(inputs.train, inputs.holdout, spec.candidate.n_samples,
                               candidate_labelled=generator_mode(spec.candidate.mode, ref) in ("conditional", "paired"),
                               device=spec.compute.device, engine=req.engine or spec.compute.engine))
        hidden = [Path(req.out), *([req.signing_key] if req.signing_key else [])]
        candidate, model_info = draw_candidate(ref, tracking_uri, inputs, isolation, progress, hidden, sampler)
        if isolation != BUBBLEWRAP:  # it could read the cache's key: nothing it may have written is trusted
            from gate.featurecache import FeatureCache

            FeatureCache(CACHE_DIR).rotate_key()
    else:
        candidate = read_candidate_folder(inputs, req.samples)
        check_same_size(inputs.train, candidate)  # the core's own line, before any check's
        preflight(inputs, Plan(inputs.train, inputs.holdout, len(candidate), candidate.labels is not None,
                               candidate.shape, device=spec.compute.device,
                               engine=req.engine or spec.compute.engine))

    run_id = recording.start_validation_run(ref, tracking_uri, inputs.policy.model.metadata.name) if ref else None
    try:
        outcome = run(inputs, candidate, cache_dir=CACHE_DIR, model_info=model_info, samples_dir=req.samples,
                      candidate_folder=req.samples, mlflow_run_id=run_id, tracking_uri=tracking_uri,
                      progress=progress, isolation=isolation, data_overrides=overrides, engine=req.engine)
        baseline = _baseline(req, inputs, ref, tracking_uri) if ref else None
        if baseline is not None:  # in the report itself, so that the board reads what the promotion weighed
            outcome.report.comparison = compare(outcome.report, baseline.metrics, baseline.label,
                                                baseline.report_sha256, allowed=req.allow_regression)
        sign = None
        if key is not None:
            from gate.attest import sign_validation

            def sign(report_sha256: str) -> str:
                return sign_validation(tracking_uri, ref, outcome.report, report_sha256, req.signing_key)

        sha, envelope = write_reports(outcome, req.out, sign)
    except BaseException:
        if run_id:  # never leave a validation run looking as if it were still going
            recording.abandon_validation_run(ref, tracking_uri, run_id)
        raise
    promoted, replaced, found, champion = False, None, [], None
    if ref:
        try:
            recording.finish_validation_run(ref, tracking_uri, run_id, outcome.report, sha, Path(req.out),
                                            attestation=envelope)
            if req.promote_alias and outcome.report.verdict == "pass":
                comparison = outcome.report.comparison
                if comparison is not None and comparison.refuses:
                    found, champion = _as_regressions(comparison), baseline.version
                else:
                    replaced = recording.promote(ref, tracking_uri, req.promote_alias)
                    promoted = True
        except Exception as exc:  # noqa: BLE001 - reports are on disk; the registry could not be updated
            raise ValidatorError(f"{tracking_uri}: could not record the validation in MLflow "
                                 f"({type(exc).__name__}: {str(exc)[:300]}); nothing was promoted") from None
    return Result(outcome.report, sha, Path(req.out), ref, promoted, tracking_uri,
                  promote_requested=bool(req.promote_alias), replaced=replaced, regressions=tuple(found),
                  champion=champion, baseline=outcome.report.comparison.baseline if outcome.report.comparison else None)


def _baseline(req: Request, inputs: Inputs, ref: ModelRef, tracking_uri: str):
    """The version to compare with (``--against``, else the alias being promoted to) and its last passing
    validation; None with ``spec.promotion.compare: false`` (and no --against), a free alias, a holder
    without a pass, or when the holder is this version."""
    from gate import recording

    against = req.against or (req.promote_alias if inputs.policy.model.spec.promotion.compare else None)
    if not against:
        return None
    held = recording.baseline_record(ref, tracking_uri, against)
    return None if held is None or held.version == str(ref.version) else held


def _as_regressions(comparison) -> list[Regression]:
    return [Regression(r.metric, r.baseline, r.candidate, r.better) for r in comparison.rows if r.regression]


def draw_candidate(ref: ModelRef, tracking_uri: str, inputs: Inputs, isolation: str,
                   progress: ProgressFactory, hidden: list[Path] = (), sampler=None) -> tuple[ImageSet, dict]:
    """Download the version's artifacts once, hash them, and sample exactly that copy in the sandbox, on
    ``sampler`` (a :class:`gate.sandbox.SamplerDevice`; the CPU when None)."""
    from gate.attestation import artifacts_digest
    from gate.registry import download_model, make_read_only
    from gate.sandbox import SamplerDevice, SamplingPlan, SandboxLimits, sample_in_sandbox

    c = inputs.policy.model.spec.candidate
    mode = generator_mode(c.mode, ref)
    condition = conditioning_labels(inputs.train, c.n_samples, c.seed, c.label_deformation_px) \
        if mode == "conditional" else None
    sampler = sampler or SamplerDevice()
    plan = SamplingPlan(mode, c.n_samples, c.seed, c.batch_size)  # the sandbox tells the generator its device
    limits = SandboxLimits(c.timeout_s, c.max_memory_mb, c.max_output_mb, threads=_threads())
    with tempfile.TemporaryDirectory(prefix="gate-candidate-") as tmp:
        try:
            model_dir = download_model(ref, tracking_uri, Path(tmp))
            digest = artifacts_digest(model_dir)
            make_read_only(model_dir)
            if sampler.files:
                sampler = dataclasses.replace(sampler, told=declares_device(model_dir))
            raw = sample_in_sandbox(model_dir, plan, limits, isolation, labels=condition,
                                    progress=progress(f"sampling {ref.version_uri}", c.n_samples), where=ref.uri,
                                    hidden=list(hidden), device=sampler)
        finally:
            _make_removable(Path(tmp))
    candidate = assemble_samples(raw, plan, condition)
    info = {"name": ref.name, "version": ref.version, "source": ref.source, "run_id": ref.run_id, "uri": ref.uri,
            "generator_mode": mode, "sampler_device": sampler.describe(), "artifacts_sha256": digest,
            "creation_timestamp": ref.creation_timestamp, "workspace": ref.workspace}
    return candidate, info


def generator_mode(policy_mode: str, ref: ModelRef) -> str:
    """The policy's candidate mode, or with ``auto`` the version's ``gate.generator_mode`` tag."""
    mode = policy_mode if policy_mode != "auto" else (ref.generator_mode or "unconditional")
    if mode not in ("unconditional", "conditional", "paired"):
        raise InputError(f"{ref.uri}: unknown gate.generator_mode tag {mode[:40]!r} (unconditional, conditional, "
                         "paired); set spec.candidate.mode")
    return mode


def _make_removable(folder: Path) -> None:
    for p in [folder, *folder.rglob("*")]:
        if not p.is_symlink():
            p.chmod(p.stat().st_mode | 0o700)


def _threads() -> int:
    """The sampler's thread pools: as many as this validation was given (``gate serve`` sizes them per job)."""
    given = os.environ.get("OMP_NUM_THREADS", "")
    if given.isdigit() and int(given) > 0:
        return int(given)
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


def _load_signing_key(path: Path):
    """Read the key before any work: a wrong key is bad configuration, found in a second, not after the run."""
    from gate.attestation import AttestationError, load_private_key

    try:
        return load_private_key(path)
    except AttestationError as exc:
        raise ConfigError(f"--signing-key: {exc}") from None

