"""The ``gate`` command line. Exit codes: 0 pass, 1 blocked, 2 bad input or configuration, 3 validator error."""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import importlib.metadata
import json
import math
import os
import re
import sys
from pathlib import Path
from typing import Callable, Iterator, Optional

import typer
from rich.console import Console
from rich.markup import escape

from gate.errors import ConfigError, ExitCode, GateError, InputError, Refusal
from gate.textsafe import one_line

COMMANDS_GROUP = "gate.commands"
DEFAULT_POLICY = Path("policies/default.yaml")

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Validation gate for generative imaging models kept in an MLflow registry.")
err = Console(stderr=True, soft_wrap=True)  # an error line is one line, whatever the log's width
out = Console(soft_wrap=True)  # a path or a digest is never cut across lines in a log


def _quiet_env() -> None:
    # no telemetry, no hub downloads: gate never needs the network beyond the tracking server
    for key, value in (("MLFLOW_DISABLE_TELEMETRY", "true"), ("DO_NOT_TRACK", "true"), ("HF_HUB_OFFLINE", "1"),
                       ("GX_ANALYTICS_ENABLED", "false"),
                       ("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false"),
                       # MLflow sets its loggers' level from this when it is imported, after anything gate could set
                       ("MLFLOW_LOGGING_LEVEL", "ERROR"), ("MLFLOW_ENABLE_LOGGED_MODEL_CREATION_NOTIFICATION", "false"),
                       # "View run ... at" on stdout after every run against a server: --json's stdout is the
                       # document alone
                       ("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")):
        os.environ.setdefault(key, value)


@contextlib.contextmanager
def progress_bars(quiet: bool) -> Iterator[Callable[[str, int], Callable[[int], None]]]:
    if quiet:
        yield lambda _d, _t: (lambda _n: None)
        return
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("left"), TimeRemainingColumn(), console=err, transient=False) as bars:
        def factory(desc: str, total: int) -> Callable[[int], None]:
            task = bars.add_task(desc, total=total)
            return lambda n: bars.advance(task, n)

        yield factory


def fail_line(exc: GateError) -> None:
    """One line: refusals say ``refused``, everything else ``error``."""
    kind = "refused" if isinstance(exc, Refusal) else "error"
    lines = str(exc).splitlines() or [type(exc).__name__]
    for line in lines:
        err.print(f"gate: {kind}: {line}", markup=False, highlight=False, soft_wrap=True)


def fail(exc: GateError) -> None:
    fail_line(exc)
    raise typer.Exit(int(exc.exit_code))


def report_result(result, quiet: bool) -> None:
    r = result.report
    colour = {"pass": "green", "fail": "red", "error": "magenta"}[r.verdict]
    # names and messages come from the input: shown on one line, never read as rich markup
    what = escape(one_line(result.model.version_uri if result.model else str(r.provenance.samples_dir)))
    out.print(f"[bold {colour}]{r.verdict.upper()}[/] {what}: {escape(one_line(r.summary, 2000))}", highlight=False)
    if not quiet:
        for c in r.checks:
            for o in c.rules:
                mark = "[green]ok[/]" if o.passed else ("[red]FAILED[/]" if o.severity == "block" else "[yellow]warn[/]")
                value = "NaN" if o.value is None else f"{o.value:.4g}"
                out.print(f"  {mark} {c.id}.{o.metric} = {value} (needs {o.condition})", highlight=False)
    out.print(f"reports: {escape(one_line(result.out))}/report.html (report.json sha256 {result.report_sha256[:12]})",
              highlight=False)


PolicyOpt = typer.Option(DEFAULT_POLICY, "--policy", "-p", help="YAML policy file")
ModelOpt = typer.Option(None, "--model", help="models:/NAME/VERSION or models:/NAME@ALIAS")
SamplesOpt = typer.Option(None, "--samples", help="folder of generated images (instead of --model)")
TrackingOpt = typer.Option(None, "--tracking-uri", help="MLflow tracking URI (else MLFLOW_TRACKING_URI, else .gate/)")
OutOpt = typer.Option(Path("gate-report"), "--out", "-o", help="folder for the reports")
TrainOpt = typer.Option(None, "--train", help="override the policy's data.train folder")
HoldoutOpt = typer.Option(None, "--holdout", help="override the policy's data.holdout folder")
QuietOpt = typer.Option(False, "--quiet", "-q", help="no progress bars (for CI)")


class EngineName(str, enum.Enum):
    local = "local"
    ray = "ray"


EngineOpt = typer.Option(None, "--engine", case_sensitive=False,
                         help="where features are extracted: local, or ray (the cluster RAY_ADDRESS names, else one "
                              "started here); default: the policy's spec.compute.engine")
JsonOpt = typer.Option(False, "--json", help="print the verdict, metrics, rules and report paths as JSON on stdout "
                                            "(nothing else; errors stay on stderr)")
SigningKeyOpt = typer.Option(None, "--signing-key", envvar="GATE_SIGNING_KEY",
                             help="Ed25519 private key (gate keygen): sign the result as an attestation")


def crash(exc: BaseException, folder: Path | None) -> None:
    """An unexpected exception: exit 3 with the traceback kept in a crash log (beside the report when
    there is one), and one line saying where. Never exit 1, which means "blocked"."""
    import datetime as dt
    import tempfile
    import traceback

    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    text = "".join(traceback.format_exception(exc))
    log = None
    for where in ([folder] if folder else []) + [Path(tempfile.gettempdir())]:
        try:
            where.mkdir(parents=True, exist_ok=True)
            log = where / f"gate-crash-{stamp}-{os.getpid()}.log"
            log.write_text(text, encoding="utf-8")
            break
        except OSError:
            log = None
    first = "".join(c if c.isprintable() else "?" for c in (str(exc).splitlines() or [""])[0])[:300]
    err.print(f"gate: crash: {type(exc).__name__}: {first} (nothing was validated; traceback in "
              f"{log or 'stderr'})", markup=False, highlight=False, soft_wrap=True)
    if log is None:
        err.print(text, markup=False, highlight=False)
    raise typer.Exit(int(ExitCode.VALIDATOR_ERROR))


def interrupted() -> None:
    err.print("gate: interrupted (nothing was promoted)", markup=False, highlight=False)
    raise typer.Exit(int(ExitCode.INTERRUPTED))


def warn(message: str) -> None:
    err.print(f"gate: warning: {message}", markup=False, highlight=False, soft_wrap=True)


def result_document(result) -> dict:
    """What ``--json`` prints: the verdict, each check's metrics and rules, the promotion and where the
    reports are (report.json holds everything else)."""
    r = result.report
    return {
        "verdict": r.verdict, "exit_code": int(result.exit_code), "blocking": r.blocking, "summary": r.summary,
        "model": result.model.version_uri if result.model else None,
        "promotion": {"requested": result.promote_requested, "promoted": result.promoted,
                      "replaced_version": result.replaced, "champion_version": result.champion,
                      "regressions": [dataclasses.asdict(g) for g in result.regressions]}
        if result.promote_requested else None,
        "checks": [{"id": c.id, "validator": c.validator, "status": c.status, "outcome": c.outcome, "error": c.error,
                    "metrics": c.metrics,
                    "rules": [{"metric": o.metric, "value": o.value, "condition": o.condition,
                               "severity": o.severity, "passed": o.passed} for o in c.rules]} for c in r.checks],
        "reports": {name: str(result.out / name) for name in ("report.json", "report.html", "report.pdf", "summary.md")
                    if (result.out / name).exists()},
        "report_sha256": result.report_sha256,
    }


def _finite(value):
    """JSON has no NaN or infinity: a metric that is not a finite number is null, as in report.json."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _run(req, quiet: bool, as_json: bool = False) -> None:
    from gate.workflow import validate

    try:
        with progress_bars(quiet or as_json) as progress:
            result = validate(req, progress, warn=warn)
    except GateError as exc:
        fail(exc)
    except KeyboardInterrupt:
        interrupted()
    except Exception as exc:  # noqa: BLE001 - the one error boundary: a crash is exit 3, never "blocked"
        crash(exc, Path(req.out))
    if as_json:  # stdout is the document alone; errors stay gate's lines on stderr
        print(json.dumps(_finite(result_document(result)), indent=2, allow_nan=False, default=str))
        raise typer.Exit(int(result.exit_code))
    report_result(result, quiet)
    if req.promote_alias:
        if result.promoted:
            before = f" (it held version {result.replaced})" if result.replaced and result.replaced != \
                result.model.version else ""
            out.print(f"promoted {result.model.version_uri} to @{req.promote_alias}{before}", highlight=False)
        elif result.regressions:
            worse = "; ".join(escape(r.describe()) for r in result.regressions)
            holder = f"version {result.champion}, which holds it," if (result.baseline or "").endswith(
                f"(@{req.promote_alias})") else escape(one_line(result.baseline or f"version {result.champion}"))
            out.print(f"[red]refused[/]: {result.model.version_uri} was not promoted to @{req.promote_alias}: "
                      f"{holder} scores better: {worse} (give --allow-regression to promote anyway)", highlight=False)
        else:
            out.print(f"[red]refused[/]: {result.model.version_uri} was not promoted to @{req.promote_alias} "
                      f"(verdict {result.report.verdict})", highlight=False)
    raise typer.Exit(int(result.exit_code))


@app.command()
def validate(policy: Path = PolicyOpt, model: Optional[str] = ModelOpt, samples: Optional[Path] = SamplesOpt,
             tracking_uri: Optional[str] = TrackingOpt, out_dir: Path = OutOpt, train: Optional[Path] = TrainOpt,
             holdout: Optional[Path] = HoldoutOpt, quiet: bool = QuietOpt,
             signing_key: Optional[Path] = SigningKeyOpt, as_json: bool = JsonOpt, engine: Optional[EngineName] = EngineOpt,
             against: Optional[str] = typer.Option(None, "--against", help="with --model: put the comparison with "
                                                   "this version's last passing validation in the report "
                                                   "(@ALIAS or a version number)")) -> None:
    """Validate a candidate against a policy and write the reports."""
    from gate.workflow import Request

    if against and not model:
        fail(InputError("--against needs --model: a folder of samples has no registry version to compare"))
    _run(Request(policy, out_dir, model, samples, tracking_uri, train, holdout, signing_key=signing_key,
                 against=_against(against), engine=engine.value if engine else None), quiet, as_json)


@app.command()
def promote(model: str = typer.Option(..., "--model", help="models:/NAME/VERSION or models:/NAME@ALIAS"),
            alias: str = typer.Option("champion", "--alias", help="alias to set on a pass"),
            policy: Path = PolicyOpt, tracking_uri: Optional[str] = TrackingOpt, out_dir: Path = OutOpt,
            train: Optional[Path] = TrainOpt, holdout: Optional[Path] = HoldoutOpt, quiet: bool = QuietOpt,
            signing_key: Optional[Path] = SigningKeyOpt, as_json: bool = JsonOpt, engine: Optional[EngineName] = EngineOpt,
            allow_regression: bool = typer.Option(False, "--allow-regression",
                                                  help="promote even when the version holding the alias scores "
                                                       "better on a block rule (the comparison is still recorded)"),
            against: Optional[str] = typer.Option(None, "--against", help="compare with this version's last "
                                                  "passing validation: @ALIAS or a version number (default: the "
                                                  "alias being set, when a version holds it)")) -> None:
    """Validate, then set the alias only on a pass (never otherwise); says which version held it, and
    refuses to replace one that scores better unless --allow-regression. The comparison is in the report."""
    from gate.workflow import Request

    _run(Request(policy, out_dir, model, None, tracking_uri, train, holdout, promote_alias=alias,
                 signing_key=signing_key, allow_regression=allow_regression, against=_against(against),
                 engine=engine.value if engine else None),
         quiet, as_json)


def _against(value: str | None) -> str | None:
    if value is not None and not re.fullmatch(r"@?[A-Za-z0-9_\-]{1,255}", value):
        fail(InputError(f"--against {one_line(value, 80)}: expected @ALIAS or a version number"))
    return value


@app.command()
def compare(baseline: str = typer.Argument(..., help="a report folder, or models:/NAME/VERSION (or @ALIAS)"),
            candidate: str = typer.Argument(..., help="the same, for the validation to compare with the baseline"),
            tracking_uri: Optional[str] = TrackingOpt,
            as_json: bool = typer.Option(False, "--json", help="print the comparison as JSON on stdout")) -> None:
    """Every metric of CANDIDATE beside BASELINE's, with the difference and the regressions (worse than the
    baseline by more than a block rule's regression_tolerance). Exit 0: no regression; 1: a regression."""
    from gate.compare import compare_validations

    try:
        result = compare_validations(baseline, candidate, tracking_uri)
    except GateError as exc:
        fail(exc)
    if as_json:
        print(result.model_dump_json(indent=2))
        raise typer.Exit(int(ExitCode.BLOCKED if result.regressions else ExitCode.PASS))
    from rich.table import Table

    table = Table(title=f"{escape(one_line(candidate, 120))} against {escape(one_line(result.baseline, 120))}")
    for col in ("metric", "candidate", "baseline", "difference", "better", "tolerance", ""):
        table.add_column(col)
    num = lambda v, fmt=".4g": "n/a" if v is None else format(v, fmt)  # noqa: E731
    for r in result.rows:
        table.add_row(escape(one_line(r.metric, 120)), num(r.candidate), num(r.baseline), num(r.difference, "+.4g"),
                      r.better or "", "" if r.tolerance is None else f"{r.tolerance:g}",
                      "[red]REGRESSION[/]" if r.regression else "")
    out.print(table)
    for line in result.regressions:
        out.print(f"[red]regression[/]: {escape(one_line(line, 400))}", highlight=False)
    raise typer.Exit(int(ExitCode.BLOCKED if result.regressions else ExitCode.PASS))


@app.command()
def keygen(out_dir: Path = typer.Option(Path(".gate/keys"), "--out", "-o", help="folder for the key pair")) -> None:
    """Make an Ed25519 key pair: gate-signing.key (private, mode 600) and gate-signing.pub."""
    from gate.attestation import generate_keypair

    private, public = generate_keypair()
    out_dir.mkdir(parents=True, exist_ok=True)
    key, pub = out_dir / "gate-signing.key", out_dir / "gate-signing.pub"
    if key.exists():
        fail(InputError(f"{key}: exists; refusing to overwrite a signing key"))
    key.touch(mode=0o600)
    key.write_bytes(private)
    pub.write_bytes(public)
    out.print(f"wrote {key} (keep it secret) and {pub}", highlight=False)


@app.command()
def verify(target: str = typer.Argument(..., help="models:/NAME/VERSION (or @ALIAS), or a report folder"),
           public_keys: list[Path] = typer.Option(..., "--public-key", help="a trusted signer's Ed25519 public key "
                                                  "(repeat for several)"),
           tracking_uri: Optional[str] = TrackingOpt,
           model: Optional[str] = typer.Option(None, "--model", help="with a report folder: the version it must "
                                                                     "be about"),
           allowed_policies: list[str] = typer.Option([], "--allow-policy", help="sha256 of a policy whose "
                                                      "attestations count (repeat; none given: any policy)"),
           max_age_days: Optional[float] = typer.Option(None, "--max-age-days", help="refuse older attestations "
                                                        "(default: the policy's spec.attestation.max_age_days, "
                                                        "else 30)"),
           policy: Optional[Path] = typer.Option(None, "--policy", help="take the maximum age from the policy's "
                                                                       "spec.attestation.max_age_days")) -> None:
    """Check a signed attestation: signature, version identity, artifacts unchanged, report digest, policy,
    age. Exit 0 when valid and passing, 4 when valid but not passing, 1 with the reason when refused."""
    from gate.attest import verify_model_version, verify_report_folder
    from gate.attestation import AttestationError, TrustPolicy, version_identity
    from gate.errors import ExitCode
    from gate.registry import check_reachable, client_for, resolve_model, resolve_tracking_uri

    try:
        if policy is not None and max_age_days is None:
            from gate.policy import load_policy
            from gate.validators import discover

            max_age_days = load_policy(policy, discover()).model.spec.attestation.max_age_days
        trust = TrustPolicy.from_files(public_keys, allowed_policies, max_age_days)
        if target.startswith("models:/"):
            uri = resolve_tracking_uri(tracking_uri)
            check_reachable(uri)
            statement = verify_model_version(resolve_model(target, uri), uri, trust)
        else:
            folder = Path(target)
            if not folder.is_dir():
                raise InputError(f"{str(folder)[:200]!r}: not a report folder (or give models:/NAME/VERSION)")
            subject = identity = None
            if model:
                uri = resolve_tracking_uri(tracking_uri)
                ref = resolve_model(model, uri)
                subject = ref.version_uri
                identity = version_identity(client_for(uri).get_model_version(ref.name, ref.version))
            statement = verify_report_folder(folder, trust, subject, identity)
    except AttestationError as exc:
        err.print(f"gate: refused: {exc}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(int(exc.exit_code))
    except GateError as exc:
        fail(exc)
    p = statement["predicate"]
    what = (f"{str(statement['subject'][0]['name'])[:200]} verdict {str(p.get('verdict'))[:20]}, issued "
            f"{str(p.get('issued_at'))[:40]}, policy {str(p.get('policy_name'))[:80]}"
            f"@sha256:{str(p.get('policy_sha256'))[:12]}")
    if not trust.allowed_policies:
        what += " (no policy allow-list: any policy accepted)"
    if p.get("verdict") != "pass":
        err.print(f"gate: not passing: valid attestation, but {what}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(int(ExitCode.NOT_PASSING))
    out.print(f"valid: {what}", highlight=False, soft_wrap=True)


@app.command()
def serve(policy: Path = PolicyOpt, tracking_uri: Optional[str] = TrackingOpt,
          signing_key: Path = typer.Option(..., "--signing-key", envvar="GATE_SIGNING_KEY",
                                           help="Ed25519 private key: every validation is signed"),
          secret_file: Optional[Path] = typer.Option(None, "--secret-file", help="file holding the webhook secret "
                                                     "(else the GATE_WEBHOOK_SECRET environment variable)"),
          state_dir: Path = typer.Option(Path(".gate/serve"), "--state-dir", help="queue, audit log and reports"),
          host: str = typer.Option("127.0.0.1", "--host"), port: int = typer.Option(8808, "--port"),
          workers: int = typer.Option(2, "--workers", min=1, max=64, help="validations run at once"),
          protected: list[str] = typer.Option(["champion"], "--protected-alias",
                                              help="alias to put back when it lands on an unattested version"),
          models: list[str] = typer.Option([], "--model-name", help="watch only these registered models"),
          public_key: Optional[Path] = typer.Option(None, "--public-key", help="key trusted for aliases "
                                                    "(default: the signing key's public half)"),
          tolerance_s: float = typer.Option(300, "--tolerance-s", min=1, help="largest accepted clock difference"),
          job_timeout_s: float = typer.Option(3600, "--job-timeout-s", min=1, help="a validation is killed after"),
          audit_key_file: Optional[Path] = typer.Option(None, "--audit-key-file", help="key of the audit log's MACs "
                                                        "(default: STATE/audit.key, created mode 600 with the log)"),
          max_body_bytes: int = typer.Option(1 << 20, "--max-body-bytes", min=1024, max=64 << 20,
                                             help="larger webhook bodies are refused (413) before any check"),
          reject_burst: int = typer.Option(20, "--reject-burst", min=1, help="refused deliveries an address may "
                                           "send before it is answered 429"),
          reject_rate: float = typer.Option(0.5, "--reject-rate", min=0.001, help="... refilled at this many per "
                                            "second"),
          child_env: list[str] = typer.Option([], "--child-env", help="an environment variable the validations "
                                              "also need (gate's own GATE_* never pass)"),
          guard_key_file: Optional[Path] = typer.Option(None, "--guard-key-file", help="the key shared with the "
                                                        "gate-guard plugin (GATE_GUARD_SERVICE_KEY_FILE): the "
                                                        "service's alias removals pass the guard"),
          ) -> None:
    """Receive MLflow webhooks: validate every new model version, put protected aliases back when they
    land on unattested versions, log every decision to a keyed, chained audit log."""
    from gate.registry import resolve_tracking_uri
    from gate.serve.service import ServeOptions, ServiceSettings, run_service
    from gate.serve.validation_job import check_child_env_names

    secret = os.environ.get("GATE_WEBHOOK_SECRET", "")
    if secret_file is not None:
        try:
            secret = secret_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            fail(InputError(f"{secret_file}: cannot read the webhook secret ({exc.strerror})"))
    if not secret:
        fail(InputError("no webhook secret: give --secret-file or set GATE_WEBHOOK_SECRET (the secret given to "
                        "MLflow's create_webhook); unsigned deliveries are never accepted"))
    settings = ServiceSettings(secret=secret, protected_aliases=frozenset(protected), model_names=frozenset(models),
                               tolerance_s=tolerance_s, workers=workers, max_body_bytes=max_body_bytes,
                               reject_burst=reject_burst, reject_per_s=reject_rate)
    try:
        check_child_env_names(tuple(child_env))
        run_service(ServeOptions(policy, resolve_tracking_uri(tracking_uri), signing_key, state_dir, settings,
                                 public_key, host, port, job_timeout_s, audit_key_file, tuple(child_env),
                                 guard_key_file),
                    log=lambda line: err.print(line, markup=False, highlight=False, soft_wrap=True))
    except GateError as exc:
        fail(exc)


audit_app = typer.Typer(no_args_is_help=True, help="The webhook service's keyed, chained audit log.")
app.add_typer(audit_app, name="audit")


@audit_app.command("verify")
def audit_verify(log: Path = typer.Argument(Path(".gate/serve/audit.jsonl"), help="the audit log"),
                 key: Optional[Path] = typer.Option(None, "--key", help="the audit key file (default: audit.key "
                                                    "beside the log)"),
                 head: Optional[str] = typer.Option(None, "--head", help="a head recorded earlier: the log must "
                                                    "still contain it (catches lines cut off the end); default: the "
                                                    "head file beside the log, if any")) -> None:
    """Check every entry's MAC and the chain. Exit 0 when intact, 1 naming the first broken line."""
    from gate.serve.audit import AuditError, head_path, open_audit_key, read_head, verify_audit_log

    try:
        secret = open_audit_key(key if key is not None else log.with_name("audit.key"), create=False)
        against = head
        if against is None and log.is_file():
            against = read_head(log)
        result = verify_audit_log(log, secret, against)
    except AuditError as exc:
        err.print(f"gate: refused: {exc}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(1)
    except GateError as exc:
        fail(exc)
    origin = "" if against is None else (" (contains the given head)" if head else f" (contains the head in "
                                                                                    f"{head_path(log)})")
    out.print(f"intact: {log}: {result.entries} entries, head {result.head}{origin}", highlight=False,
              soft_wrap=True)


@app.command()
def report(folder: Path = typer.Argument(..., help="a report folder (holding report.json)"),
           out_dir: Optional[Path] = typer.Option(None, "--out", "-o", help="write there instead of FOLDER")) -> None:
    """Render the HTML, PDF, JUnit and summary again from a folder's report.json (report.json, which
    an attestation signs, is never rewritten)."""
    from gate.render.writer import rerender

    try:
        written = rerender(folder, out_dir)
    except GateError as exc:
        fail(exc)
    for path in written:
        out.print(f"wrote {escape(one_line(path))}", highlight=False)


@app.command()
def schema() -> None:
    """Print the JSON Schema of policies (built from the installed validators)."""
    from gate.policy import policy_json_schema
    from gate.validators import discover

    try:
        print(json.dumps(policy_json_schema(discover()), indent=2, sort_keys=True))
    except GateError as exc:
        fail(exc)


def _version_callback(value: bool) -> None:
    if value:
        from gate import __version__
        from gate.validators import discover

        reg = discover()
        out.print(f"gate {__version__}", highlight=False)
        for name, v in sorted(reg.validators.items()):
            out.print(f"  validator {name}: {v.distribution} {v.version}", highlight=False)
        for name, why in sorted(reg.failures.items()):
            out.print(f"  validator {name}: FAILED TO LOAD: {why}", highlight=False)
        raise typer.Exit()


@app.callback()
def _main(version: bool = typer.Option(False, "--version", callback=_version_callback, is_eager=True,
                                       help="show versions of gate and its validators")) -> None:
    _quiet_env()


def _quiet_mlflow() -> None:
    """MLflow's advice to model authors (type hints on predict, cloudpickle versions, logged-model
    notices) printed on every run buries gate's own lines; gate's process owns its warning filters and
    log levels, so the entry point (never the library code) turns that advice down."""
    import logging

    # MLflow re-opens its own filters inside its calls (simplefilter("once")), so filters cannot hold it:
    # warnings go through logging instead (the stdlib's hook for that), where MLflow's are dropped
    logging.captureWarnings(True)
    logging.getLogger("py.warnings").addFilter(lambda record: f"{os.sep}mlflow{os.sep}" not in record.getMessage())


def _load_plugin_commands() -> None:
    """Plugins add sub-commands (``demo``, ``bench``) through the ``gate.commands`` entry points."""
    from gate.validators import extras_hint

    for ep in importlib.metadata.entry_points(group=COMMANDS_GROUP):
        try:
            ep.load()(app)
        except ModuleNotFoundError as exc:
            err.print(f"gate: warning: command plugin '{ep.name}' needs {exc.name!r}, which is not installed"
                      f"{extras_hint(ep.dist, exc.name)}", markup=False, soft_wrap=True)
        except Exception as exc:  # noqa: BLE001 - a broken plugin must not take the core CLI down
            err.print(f"gate: warning: command plugin '{ep.name}' failed to load: {type(exc).__name__}: {exc}",
                      markup=False)


def main() -> None:
    """The process's error boundary: bad input exit 2, refusals exit 1, a crash exit 3 with its
    traceback in a crash log, ^C exit 130."""
    from gate import native_guard
    from gate.serve.validation_job import die_with_parent

    die_with_parent()  # a no-op unless started by `gate serve` or by the native-crash guard below
    supervised = native_guard.supervise(sys.argv[1:])
    if supervised is not None:  # this process only watched the child that ran the command
        sys.exit(supervised)
    native_guard.arm_child()
    _quiet_env()
    _quiet_mlflow()
    _load_plugin_commands()
    try:
        code = app(standalone_mode=False)
    except typer.Abort:  # click's name for ^C
        code = int(ExitCode.INTERRUPTED)
        err.print("gate: interrupted", markup=False, highlight=False)
    except GateError as exc:
        fail_line(exc)
        code = int(exc.exit_code)
    except KeyboardInterrupt:
        code = int(ExitCode.INTERRUPTED)
    except ModuleNotFoundError as exc:
        from gate.validators import extras_hint

        hint = extras_hint(_own_distribution(), exc.name)
        if not hint:  # not an optional stack of gate's: a broken install or a bug, kept as a crash
            sys.exit(crash_code(exc))
        missing = ConfigError(f"{exc.name!r} is not installed{hint}")
        fail_line(missing)
        code = int(missing.exit_code)
    except Exception as exc:  # noqa: BLE001
        if callable(getattr(exc, "show", None)) and isinstance(getattr(exc, "exit_code", None), int):
            exc.show()  # a usage error: click's own message and exit code (typer vendors click privately)
            sys.exit(exc.exit_code)
        code = crash_code(exc)
    sys.exit(code if isinstance(code, int) else 0)


def crash_code(exc: BaseException) -> int:
    try:
        crash(exc, None)
    except typer.Exit as e:
        return e.exit_code
    return int(ExitCode.VALIDATOR_ERROR)


def _own_distribution() -> "importlib.metadata.Distribution | None":
    try:
        return importlib.metadata.distribution("gate-mri")
    except importlib.metadata.PackageNotFoundError:
        return None


if __name__ == "__main__":
    main()
