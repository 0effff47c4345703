"""The report: one pydantic model, serialised as report.json and rendered to the other formats."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

Verdict = Literal["pass", "fail", "error"]


class RuleOutcome(BaseModel):
    check_id: str
    metric: str
    bounds: dict[str, float]
    condition: str
    severity: Literal["block", "warn"]
    value: float | None
    passed: bool
    gx_success: bool | None = None
    line: int | None = None  # where the rule sits in the policy file
    downgraded: str | None = None  # why a block rule only warns (its metric proved insensitive)


class CheckResult(BaseModel):
    id: str
    validator: str
    status: Literal["ok", "error"]
    error: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, float | None] = Field(default_factory=dict)
    metric_descriptions: dict[str, str] = Field(default_factory=dict)
    rules: list[RuleOutcome] = Field(default_factory=list)
    provenance: dict[str, Any] = Field(default_factory=dict)
    diagnostics: dict[str, Any] = Field(default_factory=dict)
    samples_csv: str | None = None
    duration_s: float = 0.0


class DataManifest(BaseModel):
    name: str
    folder: str | None
    n_images: int
    shape: list[int]
    sha256: str
    files: list[dict[str, str]]
    preprocessing: dict[str, Any] | None = None


class Provenance(BaseModel):
    gate_version: str
    model: dict[str, Any] | None = None
    samples_dir: str | None = None
    policy_path: str
    policy_name: str
    policy_sha256: str
    data: list[DataManifest]
    validators: dict[str, str]
    libraries: dict[str, str]
    seeds: dict[str, int]
    started_at: str
    finished_at: str
    mlflow_run_id: str | None = None
    tracking_uri: str | None = None
    #: how the candidate was sampled: "bubblewrap" (namespaces, no network, read-only model copy),
    #: "process" (a separate process with a clean environment, no namespaces), or None for a folder
    isolation: str | None = None
    #: --train/--holdout given on the command line instead of the policy's folders (None: the policy's)
    data_overrides: dict[str, str | None] = Field(default_factory=dict)


class Report(BaseModel):
    verdict: Verdict
    mode: Literal["enforce", "audit"]
    blocking: bool  # whether this verdict blocks promotion
    summary: str
    checks: list[CheckResult]
    provenance: Provenance
    gx_evidence: str | None = None  # file name of the Great Expectations validation result
