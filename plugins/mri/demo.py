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
    from gate_plugins.mri.generators import CopyingGenerator, NovelSubjectGenerator

    console = Console()
    t0 = time.perf_counter()
    root = workdir / ".gate" / "demo"
    console.print(f"building train/holdout slices from the MNI152 template into {root} ...", highlight=False)
    paths = build_demo_data(root)
    uri = resolve_tracking_uri(None, workdir)
    console.print(f"registering two generators in {uri} ...", highlight=False)
    honest, _ = log_generator(NovelSubjectGenerator(), MODEL_NAME, tracking_uri=uri,
                              tags={"demo": "novel-subjects"}, pip_requirements=["numpy", "pandas", "nilearn", "scipy"])
    copier, _ = log_generator(CopyingGenerator(), MODEL_NAME, tracking_uri=uri,
                              artifacts={"train_slices": str(paths["train_slices"])},
                              tags={"demo": "copies-train"}, pip_requirements=["numpy", "pandas"])
    outcomes = []
    for mv, label in ((honest, "novel subjects"), (copier, "copies of train")):
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
    for col in ("version", "generator", "verdict", "promoted to @champion", "report"):
        table.add_column(col)
    for version, label, result in outcomes:
        table.add_row(str(version), label, result.report.verdict, "yes" if result.promoted else "no (refused)",
                      str(result.out / "report.html"))
    console.print(table)
    console.print(f"registry: {uri}  (browse it with: mlflow ui --backend-store-uri {uri})", highlight=False)
    ok = outcomes[0][2].promoted and not outcomes[1][2].promoted
    if not ok:
        console.print("[red]unexpected: the honest generator must be promoted and the copier refused[/]")
    return 0 if ok else 1


def register(app: typer.Typer) -> None:
    @app.command()
    def demo(policy: Path = typer.Option(Path("policies/default.yaml"), "--policy", "-p", help="policy to apply"),
             quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bars")) -> None:
        """Build real-MRI demo data, register an honest and a copying generator, validate and promote."""
        raise typer.Exit(run_demo(Path.cwd(), policy, quiet))
