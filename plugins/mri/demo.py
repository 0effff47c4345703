"""``gate demo``: the whole flow on real brain MRI shipped in nilearn, with no server and no user data."""

from __future__ import annotations

import time
from pathlib import Path

import typer

MODEL_NAME = "brain-slice-generator"


def run_demo(workdir: Path, policy: Path, quiet: bool = False) -> int:
    from rich.console import Console
    from rich.table import Table

    from gate.cli import progress_bars, report_result
    from gate.errors import GateError
    from gate.generator import log_generator
    from gate.registry import resolve_tracking_uri
    from gate.workflow import Request, validate
    from gate_plugins.mri.demo_data import build_demo_data
    from gate_plugins.mri.generators import (CopyingGenerator, LabelRenderingGenerator, MisalignedRenderingGenerator,
                                             NovelSubjectGenerator)

    console = Console()
    t0 = time.perf_counter()
    root = workdir / ".gate" / "demo"
    console.print(f"building train/holdout slices from the MNI152 template into {root} ...", highlight=False)
    paths = build_demo_data(root)
    uri = resolve_tracking_uri(None, workdir)
    console.print(f"registering four generators in {uri} ...", highlight=False)
    needs = ["numpy", "pandas", "nilearn", "scipy"]
    honest, _ = log_generator(NovelSubjectGenerator(), MODEL_NAME, tracking_uri=uri,
                              tags={"demo": "novel-subjects"}, pip_requirements=needs)
    copier, _ = log_generator(CopyingGenerator(), MODEL_NAME, tracking_uri=uri,
                              artifacts={"train_slices": str(paths["train_slices"]),
                                         "train_labels": str(paths["train_labels"])},
                              tags={"demo": "copies-train"}, pip_requirements=["numpy", "pandas"])
    renderer, _ = log_generator(LabelRenderingGenerator(), MODEL_NAME, tracking_uri=uri,
                                tags={"demo": "renders-label-maps"}, pip_requirements=needs)
    misaligned, _ = log_generator(MisalignedRenderingGenerator(), MODEL_NAME, tracking_uri=uri,
                                  tags={"demo": "anatomy-off-its-labels"}, pip_requirements=needs)
    expected = {honest.version: True, copier.version: False, renderer.version: True, misaligned.version: False}
    outcomes = []
    for mv, label in ((honest, "novel subjects (paired)"), (copier, "copies of train (paired)"),
                      (renderer, "renders label maps (conditional)"),
                      (misaligned, "anatomy off its labels (conditional)")):
        req = Request(policy=policy, out=root / "reports" / f"v{mv.version}", model=f"models:/{MODEL_NAME}/{mv.version}",
                      tracking_uri=uri, train=paths["train"], holdout=paths["holdout"], promote_alias="champion")
        console.rule(f"v{mv.version}: {label}")
        try:
            with progress_bars(quiet) as progress:
                result = validate(req, progress)
        except GateError as exc:
            console.print(f"gate: error: {exc}", markup=False)
            return int(exc.exit_code)
        report_result(result, quiet)
        outcomes.append((mv.version, label, result))
    table = Table(title=f"gate demo ({time.perf_counter() - t0:.0f} s)")
    check_ids = [c.id for c in outcomes[0][2].report.checks]
    for col in ("v", "generator", *check_ids, "verdict", "@champion"):
        table.add_column(col)
    for version, label, result in outcomes:
        table.add_row(str(version), label, *(check_outcome(c) for c in result.report.checks), result.report.verdict,
                      "promoted" if result.promoted else "refused")
    console.print(table)
    console.print(f"reports: {root / 'reports'}/v*/report.html", highlight=False)
    console.print(f"registry: {uri}  (browse it with: mlflow ui --backend-store-uri {uri})", highlight=False)
    ok = all(result.promoted == expected[version] for version, _, result in outcomes)
    if not ok:
        console.print("[red]unexpected: the honest generator and the faithful renderer must be promoted, the "
                      "copier and the misaligned renderer refused[/]")
    return 0 if ok else 1


def check_outcome(check) -> str:
    """One word per check for the summary: error, fail (a blocking rule broke), warn or ok."""
    if check.status == "error":
        return "error"
    if any(not r.passed and r.severity == "block" for r in check.rules):
        return "fail"
    return "warn" if any(not r.passed for r in check.rules) else "ok"


def register(app: typer.Typer) -> None:
    @app.command()
    def demo(policy: Path = typer.Option(Path("policies/default.yaml"), "--policy", "-p", help="policy to apply"),
             quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bars")) -> None:
        """Build labelled real-MRI demo data, register four generators (honest, copying, a faithful and a
        broken label-conditioned one), validate and promote."""
        raise typer.Exit(run_demo(Path.cwd(), policy, quiet))
