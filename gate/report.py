"""The report: one pydantic model, serialised as report.json and rendered to the other formats."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, computed_field

Verdict = Literal["pass", "fail", "error"]


VERDICT_WORDS = {"pass": "PASSED: this version may be promoted",
                 "fail": "REFUSED: this version must not be promoted",
                 "error": "NOT VALIDATED: this version must not be promoted"}


def verdict_words(report: "Report") -> str:
    """The verdict as a board member reads it (the PDF's banner, the HTML's first line, MLflow's
    description): one table for all three, so that they never say different things."""
    if report.verdict == "fail" and not report.blocking:
        return "FAILED (audit mode): recorded, not enforced; promotion still requires a pass"
    if report.verdict == "pass":
        if report.comparison is not None and report.comparison.refuses:
            return f"PASSED, but worse than {report.comparison.baseline}: not to be promoted over it"
        if report.provenance.model is None:
            return "PASSED: every blocking rule held (a folder of samples: nothing to promote)"
    return VERDICT_WORDS[report.verdict]


def data_warnings(report: "Report") -> list[str]:
    """What the independence evidence says a reader must know before trusting the checks: a holdout that
    shares files, images or subjects with train, a candidate holding exact train images. Stated, not
    voted: the checks decide the verdict, and a shared subject id may be a naming coincidence."""
    out = []
    for o in report.independence.pairs if report.independence else ():
        a, b = o.sets
        if {a, b} == {"train", "holdout"} and (o.shared_files or o.shared_images or o.shared_subjects):
            out.append(f"train and holdout share {o.shared_files} files, {o.shared_images} images and "
                       f"{o.shared_subjects} subject ids: the holdout is not independent of train, and the evidence "
                       "calibrated on it (null, baseline) is weaker than stated")
        elif "candidate" in (a, b) and "train" in (a, b) and o.shared_images:
            out.append(f"{o.shared_images} candidate images are exact copies of train images")
    return out


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
    #: the policy's regression_tolerance: how much worse than the champion this metric may be (None: not compared)
    regression_tolerance: float | None = None


class Finding(BaseModel):
    """A blocking rule that failed (or could not be evaluated), said in words for a reader who does not
    know the metric: what it measures, how far the candidate is from the bound, and what to do."""

    rule: str        # CHECK.METRIC
    value: float | None
    condition: str   # the bound, as the policy states it ("<= 0.05")
    meaning: str
    action: str


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
    #: what this check cannot see, from its validator (a reader must not take silence for safety)
    blind_spots: list[str] = Field(default_factory=list)

    @computed_field  # derived from the rules, never set: a check whose block rule failed is never "ok"
    @property
    def outcome(self) -> Literal["pass", "fail", "warn", "error"]:
        if self.status == "error":
            return "error"
        if any(not r.passed and r.severity == "block" for r in self.rules):
            return "fail"
        if any(not r.passed for r in self.rules):
            return "warn"
        return "pass"


class DataManifest(BaseModel):
    name: str
    folder: str | None
    n_images: int
    shape: list[int]
    sha256: str
    files: list[dict[str, str]]
    preprocessing: dict[str, Any] | None = None
    #: image files and label-map files among ``files`` (a labelled set lists both; a drawn set has none)
    n_image_files: int = 0
    n_label_files: int = 0
    #: where the images came from: "files" (read from a folder) or "drawn" (sampled from the model, no files)
    origin: Literal["files", "drawn"] = "files"


class SetOverlap(BaseModel):
    """What two data sets share: identical files, identical images (pixel content) and subject ids."""

    sets: tuple[str, str]
    shared_files: int
    shared_images: int
    shared_subjects: int
    examples: list[str] = Field(default_factory=list)  # a few shared names, shortened, for the reader


class Independence(BaseModel):
    """Evidence that train, holdout and candidate are independent: exact overlaps, and subject overlap
    where the file names carry subject ids (``subject_pattern``; counts per set in ``subjects``)."""

    subject_pattern: str
    subjects: dict[str, int]
    pairs: list[SetOverlap]


class ComparisonRow(BaseModel):
    metric: str                # CHECK.METRIC
    candidate: float | None
    baseline: float | None
    difference: float | None   # candidate - baseline
    better: Literal["lower", "higher"] | None = None  # from a block rule's bound; None: no rule says
    tolerance: float | None = None
    regression: bool = False   # worse than the baseline by more than the rule's tolerance


class Comparison(BaseModel):
    """The candidate beside a baseline's last passing validation (the alias holder's, PCCP-style impact)."""

    baseline: str                        # e.g. models:/brain-gen/1 (@champion), or a report folder
    baseline_report_sha256: str | None = None
    rows: list[ComparisonRow]
    regressions: list[str] = Field(default_factory=list)
    allowed: bool = False                # --allow-regression: recorded, not refused

    @property
    def refuses(self) -> bool:
        return bool(self.regressions) and not self.allowed


class Statement(BaseModel):
    """What the policy says the model is for and where it must not be trusted (its metadata), and how the
    candidate was sampled."""

    intended_use: str = ""
    limitations: list[str] = Field(default_factory=list)
    retention: str = ""
    sampling: dict[str, Any] = Field(default_factory=dict)


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
    findings: list[Finding] = Field(default_factory=list)
    statement: Statement = Statement()
    independence: Independence | None = None
    comparison: Comparison | None = None
    #: how images of patients appear in the figures (spec.report.patient_images): show, blur or withhold
    patient_images: Literal["show", "blur", "withhold"] = "show"
