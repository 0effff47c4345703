"""The validate (and validate-then-promote) workflow shared by the CLI, the demo and integrations."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

import numpy as np

from gate.engine import Inputs, load_inputs, run
from gate.errors import ExitCode, InputError, ValidatorError
from gate.generator import sample_generator
from gate.imageio import read_image_folder
from gate.imageset import ImageSet
from gate.registry import ModelRef, check_reachable, load_generator, resolve_model, resolve_tracking_uri
from gate.render.writer import write_reports
from gate.report import Report

ProgressFactory = Callable[[str, int], Callable[[int], None]]


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


@dataclasses.dataclass(frozen=True)
class Result:
    report: Report
    report_sha256: str
    out: Path
    model: ModelRef | None
    promoted: bool
    tracking_uri: str | None
    promote_requested: bool = False

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
             inputs: Inputs | None = None) -> Result:
    """Check every input, draw or read the candidate, run the policy, write the reports and (with a
    model) record the result in MLflow. Raises :class:`gate.errors.GateError` for bad input."""
    if (req.model is None) == (req.samples is None):
        raise InputError("give exactly one candidate: --model models:/NAME/VERSION or --samples DIR")
    if req.promote_alias and not req.model:
        raise InputError("promotion needs --model: a folder of samples has no registry version to promote")
    inputs = inputs or load_inputs(req.policy, req.train, req.holdout)
    spec = inputs.policy.model.spec
    ref = tracking_uri = None
    model_info = None
    if req.model:
        tracking_uri = resolve_tracking_uri(req.tracking_uri)
        check_reachable(tracking_uri)
        ref = resolve_model(req.model, tracking_uri)
        generator = load_generator(ref, tracking_uri)
        n = spec.candidate.n_samples
        mode = spec.candidate.mode if spec.candidate.mode != "auto" else (ref.generator_mode or "unconditional")
        if mode not in ("unconditional", "conditional", "paired"):
            raise InputError(f"{ref.uri}: unknown gate.generator_mode tag {mode!r} (unconditional, conditional, "
                             "paired); set spec.candidate.mode")
        condition = conditioning_labels(inputs.train, n, spec.candidate.seed, spec.candidate.label_deformation_px) \
            if mode == "conditional" else None
        candidate = sample_generator(generator, n, spec.candidate.seed, spec.candidate.batch_size,
                                     progress(f"sampling {ref.version_uri}", n), mode=mode,
                                     condition_labels=condition)
        model_info = {"name": ref.name, "version": ref.version, "source": ref.source, "run_id": ref.run_id,
                      "uri": ref.uri, "generator_mode": mode}
    else:
        candidate = read_image_folder(req.samples, "candidate")

    from gate import recording

    run_id = recording.start_validation_run(ref, tracking_uri, inputs.policy.model.metadata.name) if ref else None
    try:
        outcome = run(inputs, candidate, cache_dir=Path(".gate") / "cache", model_info=model_info,
                      samples_dir=req.samples, candidate_folder=req.samples, mlflow_run_id=run_id,
                      tracking_uri=tracking_uri, progress=progress)
        sha = write_reports(outcome, req.out)
    except BaseException:
        if run_id:  # never leave a validation run looking as if it were still going
            recording.abandon_validation_run(ref, tracking_uri, run_id)
        raise
    promoted = False
    if ref:
        envelope = None
        if req.signing_key:
            from gate.attestation import AttestationError
            from gate.attest import attest_validation

            try:
                envelope = attest_validation(ref, tracking_uri, outcome.report, sha, run_id, Path(req.out),
                                             req.signing_key)
            except AttestationError as exc:
                recording.abandon_validation_run(ref, tracking_uri, run_id)
                raise InputError(f"--signing-key: {exc}") from None
        try:
            recording.finish_validation_run(ref, tracking_uri, run_id, outcome.report, sha, Path(req.out),
                                            attestation=envelope)
            if req.promote_alias and outcome.report.verdict == "pass":
                recording.promote(ref, tracking_uri, req.promote_alias)
                promoted = True
        except Exception as exc:  # noqa: BLE001 - reports are on disk; the registry could not be updated
            raise ValidatorError(f"{tracking_uri}: could not record the validation in MLflow "
                                 f"({type(exc).__name__}: {str(exc)[:300]}); nothing was promoted") from None
    return Result(outcome.report, sha, Path(req.out), ref, promoted, tracking_uri,
                  promote_requested=bool(req.promote_alias))
