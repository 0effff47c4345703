"""``gate demo``: the whole flow on real brain MRI shipped in nilearn, with no server and no user data."""

from __future__ import annotations

import contextlib
import importlib.resources
import time
from pathlib import Path

import typer

MODEL_NAME = "brain-slice-generator"


@contextlib.contextmanager
def default_policy():
    """The shipped default policy as a file path, from the installed package (a wheel as well as a
    source tree), so the demo runs from any folder."""
    with importlib.resources.as_file(importlib.resources.files("gate_plugins.mri") / "policies" / "default.yaml") as path:
        yield path


def run_demo(workdir: Path, policy: Path | None = None, quiet: bool = False) -> int:
    """Without ``policy``, the shipped default is copied beside the demo data as ``.gate/demo/policy.yaml``
    (its folders are relative to its own folder), so ``gate validate --policy .gate/demo/policy.yaml`` works
    afterwards from anywhere; a given policy is applied with the demo's folders as overrides."""
    if policy is None:
        with default_policy() as path:
            return _run_demo(workdir, path, quiet, copy_policy=True)
    return _run_demo(workdir, policy, quiet, copy_policy=False)


def _run_demo(workdir: Path, policy: Path, quiet: bool, copy_policy: bool) -> int:
    from rich.console import Console
    from rich.table import Table

    from gate.cli import progress_bars, report_result
    from gate.generator import log_generator
    from gate.policy import load_policy
    from gate.registry import resolve_tracking_uri
    from gate.validators import discover
    from gate.workflow import Request, validate
    from gate_plugins.mri.demo_data import build_demo_data
    from gate_plugins.mri.generators import (CopyingGenerator, LabelRenderingGenerator, MisalignedRenderingGenerator,
                                             NovelSubjectGenerator)

    console = Console(soft_wrap=True)  # paths stay on one line in logs
    t0 = time.perf_counter()
    shipped = policy
    load_policy(policy, discover())  # a bad policy is named (gate's error line) before anything is built
    root = workdir / ".gate" / "demo"
    console.print(f"building train/holdout slices from the MNI152 template into {root} ...", highlight=False)
    paths = build_demo_data(root)
    if copy_policy:
        policy = root / "policy.yaml"
        policy.write_bytes(shipped.read_bytes())
    overrides = {} if copy_policy else {"train": paths["train"], "holdout": paths["holdout"]}
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
                      tracking_uri=uri, promote_alias="champion", **overrides)
        console.rule(f"v{mv.version}: {label}")
        with progress_bars(quiet) as progress:  # an error is gate's one error line and exit code
            result = validate(req, progress)
        report_result(result, quiet)
        if result.promoted:
            held = f" (it held version {result.replaced})" if result.replaced else ""
            console.print(f"promoted {result.model.version_uri} to @champion{held}", highlight=False)
        elif result.regressions:
            worse = "; ".join(r.describe() for r in result.regressions)
            console.print(f"not promoted: version {result.champion}, which holds @champion, scores better: {worse}",
                          highlight=False, markup=False)
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
    console.print(f"policy: {policy}", highlight=False)
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
    def demo(policy: Path = typer.Option(None, "--policy", "-p", help="policy to apply (default: the shipped "
                                                                     "default policy)"),
             quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bars")) -> None:
        """Build labelled real-MRI demo data, register four generators (honest, copying, a faithful and a
        broken label-conditioned one), validate and promote."""
        raise typer.Exit(run_demo(Path.cwd(), policy, quiet))
