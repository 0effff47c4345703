"""``gate serve``: an MLflow webhook receiver that validates new model versions on its own and puts
protected aliases back when they land on unattested versions. Every decision goes to the audit log.

Deliveries are verified, persisted and acknowledged quickly (202); the work runs in a bounded pool of
worker threads, each driving one ``gate validate`` child process, plus one thread for alias checks (so
that a queue of long validations never delays putting an alias back). Anyone who can reach the port can
send a delivery, so what a refused one costs is bounded before the signature is checked: its body (by
Content-Length, then by what is read), its time, and its audit lines (:mod:`gate.serve.rejections`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import math
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Callable

from fastapi import FastAPI, Request  # module level: FastAPI resolves the handlers' annotations here
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from gate.serve.audit import AuditLog
from gate.serve.jobstore import Job, JobStore, Replay
from gate.serve.rejections import Rejections, printable
from gate.serve.signature import DELIVERY_HEADER, DeliveryRejected, verify_delivery

WEBHOOK_PATH = "/mlflow/webhook"


@dataclasses.dataclass(frozen=True)
class ServiceSettings:
    secret: str = dataclasses.field(repr=False)
    protected_aliases: frozenset[str] = frozenset({"champion"})
    model_names: frozenset[str] = frozenset()  # empty: every registered model
    tolerance_s: float = 300.0
    workers: int = 2
    max_attempts: int = 3  # restarts a job may be interrupted by before it is recorded as an error
    # MLflow's webhook payloads are a few hundred bytes; a body is refused past this before it is verified
    max_body_bytes: int = 1 << 20
    body_timeout_s: float = 10.0  # to receive a whole body (a trickled one holds a connection)
    reject_burst: int = 20  # refusals a remote may earn before it is answered 429 ...
    reject_per_s: float = 0.5  # ... refilled at this rate
    reject_window_s: float = 60.0  # refusals beyond the first of each kind are counted per window


@dataclasses.dataclass(frozen=True)
class Answer:
    status: int
    body: dict[str, Any]


def _delivery_id(headers) -> str:
    return printable({k.lower(): v for k, v in headers.items()}.get(DELIVERY_HEADER, ""))


def handle_delivery(settings: ServiceSettings, store: JobStore, audit: AuditLog, headers, body: bytes,
                    now: float, remote: str = "", rejections: Rejections | None = None) -> Answer:
    """Verify, record and queue one delivery. 2xx only once it is durably recorded; 4xx for deliveries to
    refuse (MLflow does not retry those); 503 when the state cannot be written (MLflow retries). Refusals
    go to ``rejections`` (coalesced); without one, each is recorded in full."""
    rejections = rejections or Rejections(audit, window_s=0.0)
    try:
        d = verify_delivery(settings.secret, headers, body, now, settings.tolerance_s)
    except DeliveryRejected as exc:
        rejections.record(exc.kind, now, remote, reason=str(exc), delivery_id=_delivery_id(headers))
        return Answer(exc.status, {"error": str(exc)})
    name, version, alias = (str(d.data[k]) if d.data.get(k) is not None else None for k in ("name", "version", "alias"))
    kind = None
    if settings.model_names and name not in settings.model_names:
        decision = f"ignored: model {name!r} is not watched"
    elif d.event == "model_version.created" and name and version:
        kind, decision = "validate", None
    elif d.event == "model_version_alias.created" and alias in settings.protected_aliases and name:
        kind, decision = "alias", None
    else:
        decision = "ignored: nothing to do for this event"
    try:
        acc = store.accept(d.delivery_id, now, settings.tolerance_s, kind, name,
                           version if kind == "validate" else None, alias if kind == "alias" else None)
    except Replay:
        rejections.record("replay", now, remote, reason="replay: this delivery id was already accepted",
                          delivery_id=printable(d.delivery_id), event=printable(d.event))
        return Answer(409, {"error": "replayed delivery"})
    except Exception as exc:  # noqa: BLE001 - unrecorded: let MLflow retry rather than lose the event
        reason = f"state store unavailable: {type(exc).__name__}: {str(exc)[:200]}"
        try:
            audit.append("delivery.deferred", delivery_id=d.delivery_id, event=d.event, reason=reason)
        except Exception:  # noqa: BLE001 - the 503 makes MLflow retry either way
            pass
        return Answer(503, {"error": reason})
    if kind:
        decision = f"queued job {acc.job_id}" if acc.job_id else f"already covered by job {acc.duplicate_of}"
    audit.append("delivery.accepted", delivery_id=d.delivery_id, event=d.event, name=name, version=version,
                 alias=alias, decision=decision, remote=remote)
    return Answer(202, {"accepted": True, "decision": decision, "kind": kind, "job": acc.job_id or acc.duplicate_of})


class Dispatcher:
    """Worker threads pulling jobs from the store: ``workers`` for validations, one for aliases."""

    def __init__(self, store: JobStore, audit: AuditLog, workers: int,
                 validate: Callable[[Job, Callable[[], bool], Callable[[subprocess.Popen], None]], Any],
                 check_alias: Callable[[Job], Any], max_attempts: int = 3, backoff_s: float = 5.0) -> None:
        self.store, self.audit, self.workers = store, audit, workers
        self.max_attempts, self.backoff_s = max_attempts, backoff_s
        self._validate, self._check_alias = validate, check_alias
        self._stop = threading.Event()
        self._wake = {"validate": threading.Condition(), "alias": threading.Condition()}
        self._children: dict[int, subprocess.Popen] = {}
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        kinds = ["validate"] * self.workers + ["alias"]
        self._threads = [threading.Thread(target=self._loop, args=(k,), name=f"gate-{k}-{i}", daemon=True)
                         for i, k in enumerate(kinds)]
        for t in self._threads:
            t.start()

    def notify(self, kind: str) -> None:
        with self._wake[kind]:
            self._wake[kind].notify()

    def stop(self, timeout_s: float = 30) -> None:
        """Stop claiming, stop running validations (their jobs go back to the queue), join."""
        self._stop.set()
        for cond in self._wake.values():
            with cond:
                cond.notify_all()
        for proc in list(self._children.values()):
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for t in self._threads:
            t.join(timeout_s)

    def _loop(self, kind: str) -> None:
        while not self._stop.is_set():
            try:
                job = self.store.claim(kind)
            except Exception:  # noqa: BLE001 - a locked or busy database: try again shortly
                job = None
            if job is None:
                with self._wake[kind]:
                    self._wake[kind].wait(timeout=2.0)
                continue
            self._run(job)

    def _run(self, job: Job) -> None:
        try:
            if job.kind == "validate":
                self._run_validation(job)
            else:
                self._run_alias_check(job)
        except Exception as exc:  # noqa: BLE001 - fail closed: the job is an error, never a pass
            # raised here, not reported by a validation: the registry was unreachable or the like, so try
            # again after a pause, then give up; a validation's own verdict (error included) is never retried
            detail = f"{type(exc).__name__}: {str(exc)[:400]}"
            prefix = "validation" if job.kind == "validate" else "alias"
            if job.attempts < self.max_attempts and not self._stop.is_set():
                pause = self.backoff_s * 2 ** (job.attempts - 1)
                self.audit.append(f"{prefix}.retry", job=job.id, name=job.name, version=job.version, alias=job.alias,
                                  attempt=job.attempts, detail=detail, retry_in_s=pause)
                self._stop.wait(pause)
                self.store.requeue(job.id)
                return
            self.store.finish(job.id, "error", "error" if job.kind == "validate" else None, detail)
            self.audit.append(f"{prefix}.error", job=job.id, name=job.name, version=job.version, alias=job.alias,
                              detail=detail, attempts=job.attempts)

    def _run_validation(self, job: Job) -> None:
        self.audit.append("validation.started", job=job.id, name=job.name, version=job.version,
                          attempt=job.attempts)

        def started(proc: subprocess.Popen) -> None:
            self._children[job.id] = proc

        try:
            o = self._validate(job, self._stop.is_set, started)
        finally:
            self._children.pop(job.id, None)
        if o.status == "interrupted":
            self.store.release(job.id)
            self.audit.append("validation.interrupted", job=job.id, name=job.name, version=job.version,
                              detail=o.detail)
            return
        self.store.finish(job.id, o.status, o.verdict, o.detail)
        event = {"done": "validation.finished", "skipped": "validation.skipped"}.get(o.status, "validation.error")
        self.audit.append(event, job=job.id, name=job.name, version=job.version, verdict=o.verdict,
                          detail=o.detail, exit_code=o.exit_code, report_sha256=o.report_sha256, run_id=o.run_id,
                          attested=o.attested, seconds=round(o.seconds, 2), reports=o.reports)

    def _run_alias_check(self, job: Job) -> None:
        d = self._check_alias(job)
        self.store.finish(job.id, "done", None, d.action)
        if d.action == "allowed":
            self.store.set_approved_holder(d.name, d.alias, d.version)
        self.audit.append(f"alias.{d.action}", job=job.id, name=d.name, alias=d.alias, version=d.version,
                          restored=d.restored, reason=d.reason)


async def read_body(request: Request, cap: int, timeout_s: float) -> bytes:
    """The raw body (the signature covers it exactly), refused past ``cap`` bytes: by Content-Length before
    anything is read, else as soon as the stream passes it (a chunked body has no length to check)."""
    length = request.headers.get("content-length")
    if length is not None and not length.isdigit():
        raise DeliveryRejected("Content-Length is not a byte count", 400, "length")
    if length is not None and int(length) > cap:
        raise DeliveryRejected(f"body of {printable(length, 24)} bytes is over the {cap}-byte limit "
                               f"(--max-body-bytes)", 413, "oversized")

    async def capped() -> bytes:
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > cap:
                raise DeliveryRejected(f"body over the {cap}-byte limit (--max-body-bytes); reading stopped",
                                       413, "oversized")
            chunks.append(chunk)
        return b"".join(chunks)

    try:
        return await asyncio.wait_for(capped(), timeout_s)
    except asyncio.TimeoutError:
        raise DeliveryRejected(f"body not received within {timeout_s:.0f} s", 408, "slow") from None


def create_app(settings: ServiceSettings, store: JobStore, audit: AuditLog, dispatcher: Dispatcher,
               rejections: Rejections | None = None) -> FastAPI:
    app = FastAPI(title="gate webhook receiver", docs_url=None, redoc_url=None, openapi_url=None)
    rejections = rejections or rejections_for(settings, audit)

    @app.post(WEBHOOK_PATH)
    async def receive(request: Request):
        remote = request.client.host if request.client else ""
        now = time.time()
        wait = rejections.admit(remote, now)  # before the body: a remote that keeps sending refusals costs nothing
        if wait is not None:
            await run_in_threadpool(rejections.record, "rate_limited", now, remote,
                                    reason="too many refused deliveries from this address",
                                    delivery_id=_delivery_id(request.headers))
            return JSONResponse({"error": "too many refused deliveries from this address"}, status_code=429,
                                headers={"Retry-After": str(max(1, math.ceil(wait))), "Connection": "close"})
        try:
            body = await read_body(request, settings.max_body_bytes, settings.body_timeout_s)
        except DeliveryRejected as exc:
            await run_in_threadpool(rejections.record, exc.kind, now, remote, reason=str(exc),
                                    delivery_id=_delivery_id(request.headers))
            # the connection is closed: the rest of an oversized body is never read
            return JSONResponse({"error": str(exc)}, status_code=exc.status, headers={"Connection": "close"})
        answer = await run_in_threadpool(handle_delivery, settings, store, audit, dict(request.headers), body,
                                         now, remote, rejections)
        if answer.status == 202 and answer.body["decision"].startswith("queued"):
            dispatcher.notify(answer.body["kind"])
        return JSONResponse(answer.body, status_code=answer.status)

    @app.get("/healthz")
    async def health():
        counts = await run_in_threadpool(store.counts)
        return {"status": "ok", "jobs": counts, "time": dt.datetime.now(dt.timezone.utc).isoformat()}

    return app


def rejections_for(settings: ServiceSettings, audit: AuditLog) -> Rejections:
    return Rejections(audit, settings.reject_burst, settings.reject_per_s, settings.reject_window_s)


def job_counts_text(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "no jobs"


def state_paths(state_dir: Path) -> tuple[Path, Path, Path]:
    """(job store, audit log, reports folder) under the state folder."""
    return state_dir / "state.sqlite", state_dir / "audit.jsonl", state_dir / "reports"


def _check_can_listen(host: str, port: int) -> None:
    """One clear error before any state is touched (uvicorn would only log and exit 1)."""
    import socket

    from gate.errors import ConfigError

    try:
        with socket.create_server((host, port)):
            pass
    except OSError as exc:
        raise ConfigError(f"--host {host} --port {port}: cannot listen there ({exc.strerror or exc})") from None


@dataclasses.dataclass(frozen=True)
class ServeOptions:
    policy: Path
    tracking_uri: str
    signing_key: Path
    state_dir: Path
    settings: ServiceSettings
    public_key: Path | None = None  # trusted for aliases; default: the signing key's own public half
    host: str = "127.0.0.1"
    port: int = 8808
    job_timeout_s: float = 3600.0
    # kept apart from the state folder where possible: the validation children are never given its path
    audit_key_file: Path | None = None  # default: STATE/audit.key, created (mode 600) with the log
    child_env: tuple[str, ...] = ()  # further environment variables the validation children need
    guard_key_file: Path | None = None  # shared with gate-guard: lets the service take a protected alias away
    max_connections: int = 64  # requests handled at once; beyond, 503 (MLflow retries)


def run_service(opts: ServeOptions, log: Callable[[str], None] = print) -> None:
    """Check the configuration, recover the queue, then serve until SIGINT/SIGTERM.
    Raises :class:`gate.errors.ConfigError` before binding when anything is wrong."""
    import uvicorn

    from gate import __version__
    from gate.attestation import AttestationError, key_id, load_private_key, load_public_key
    from gate.errors import ConfigError
    from gate.policy import load_policy
    from gate.registry import check_reachable
    from gate.serve.alias_watch import attestation_problem, reconcile_alias
    from gate.serve.audit import (AuditError, key_id as audit_key_id, open_audit_key, read_head, unkeyed_format,
                                 verify_audit_log)
    from gate.serve.validation_job import ValidationSettings, run_validation
    from gate.validators import discover

    policy = load_policy(opts.policy, discover())
    days = policy.model.spec.attestation.max_age_days
    max_age = dt.timedelta(days=days) if days is not None else None
    try:
        public_key = load_private_key(opts.signing_key).public_key()
        if opts.public_key:
            public_key = load_public_key(opts.public_key)
    except AttestationError as exc:
        raise ConfigError(f"gate serve needs a signing key for its validations: {exc}") from None
    check_reachable(opts.tracking_uri)
    if not opts.tracking_uri.startswith(("http://", "https://")):
        log(f"warning: {opts.tracking_uri} is not an MLflow server: webhooks fire only for writes through a "
            "server's REST API, so nothing will arrive")
    _check_can_listen(opts.host, opts.port)
    store_path, audit_path, reports = state_paths(opts.state_dir)
    if audit_path.exists() and unkeyed_format(audit_path):
        raise ConfigError(f"refusing to start on an unkeyed audit log: {audit_path} is in the format before keyed "
                          f"entries (anyone could recompute its chain); move it aside as an archive and start again: "
                          f"a new keyed log and key are created")
    # a new key only for a new log: a log whose key is lost can no longer be verified, so that is refused
    audit_key = open_audit_key(opts.audit_key_file or opts.state_dir / "audit.key", create=not audit_path.exists())
    try:
        published = read_head(audit_path)
        if audit_path.exists():
            head = verify_audit_log(audit_path, audit_key, published)
            log(f"audit log {audit_path}: {head.entries} entries, every MAC and link intact, head {head.head}"
                + (" (contains the published head)" if published else ""))
        elif published:
            raise AuditError(f"{audit_path}: missing, but its head file says it had entries (the log was removed)")
    except AuditError as exc:
        raise ConfigError(f"refusing to start on a broken audit log: {exc}") from None
    service_key = None
    if opts.guard_key_file is not None:
        from gate.service_auth import load_service_key

        service_key = load_service_key(opts.guard_key_file)
    store, audit = JobStore(store_path), AuditLog(audit_path, audit_key)
    requeued, given_up = store.recover_interrupted(opts.settings.max_attempts)
    for j in given_up:
        audit.append("validation.error", job=j.id, name=j.name, version=j.version, alias=j.alias,
                     detail=f"interrupted {j.attempts} times; not retried")
    if requeued:
        audit.append("service.recovered", requeued=[j.id for j in requeued])
    started = audit.append("service.started", gate_version=__version__, policy=str(opts.policy),
                           policy_sha256=policy.sha256, tracking_uri=opts.tracking_uri, workers=opts.settings.workers,
                           protected_aliases=sorted(opts.settings.protected_aliases),
                           models=sorted(opts.settings.model_names) or "all", trusted_key=key_id(public_key),
                           audit_key=audit_key_id(audit_key), max_body_bytes=opts.settings.max_body_bytes)
    publish_head(audit, started, log)

    vs = ValidationSettings(opts.policy.resolve(), opts.tracking_uri, opts.signing_key.resolve(), reports,
                            opts.job_timeout_s, Path.cwd(), max(1, (os.cpu_count() or 1) // opts.settings.workers),
                            extra_env=opts.child_env)

    def problem_of(name: str, version: str) -> str | None:
        return attestation_problem(opts.tracking_uri, public_key, max_age, name, version)

    dispatcher = Dispatcher(
        store, audit, opts.settings.workers, max_attempts=opts.settings.max_attempts,
        validate=lambda job, stopping, on_start: run_validation(vs, job.name, job.version, stopping, on_start),
        check_alias=lambda job: reconcile_alias(opts.tracking_uri, job.name, job.alias, problem_of,
                                                store.approved_holder(job.name, job.alias), service_key))
    rejections = rejections_for(opts.settings, audit)
    server = uvicorn.Server(uvicorn.Config(create_app(opts.settings, store, audit, dispatcher, rejections),
                                           host=opts.host, port=opts.port, log_level="warning", access_log=False,
                                           limit_concurrency=opts.max_connections))
    # uvicorn re-raises the stop signal once it has shut down, to the handlers found at start: these
    # ones let the queue be put back and the stop be recorded before the process ends
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: None)
    dispatcher.start()
    ticking = threading.Event()
    ticker = threading.Thread(target=_close_windows, args=(rejections, ticking), name="gate-rejections", daemon=True)
    ticker.start()
    log(f"gate serve: http://{opts.host}:{opts.port}{WEBHOOK_PATH} · {opts.settings.workers} workers · "
        f"{job_counts_text(store.counts())}")
    try:
        server.run()
    finally:
        dispatcher.stop()
        ticking.set()
        rejections.flush(time.time(), force=True)
        publish_head(audit, audit.append("service.stopped", jobs=store.counts()), log)


def publish_head(audit: AuditLog, entry: dict[str, Any], log: Callable[[str], None]) -> None:
    """The head at start and stop, in the service's log (kept by whoever runs it: journald, CI) and in
    ``audit.head`` beside the log (checked at the next start, and by ``gate audit verify``)."""
    from gate.serve.audit import write_head

    write_head(audit.path, entry["mac"], entry["seq"] + 1, entry["event"])
    log(f"audit head {entry['mac']} ({entry['seq'] + 1} entries, {entry['event']})")


def _close_windows(rejections: Rejections, stop: threading.Event) -> None:
    """Write a window's summary of refusals soon after it ends, even if no further refusal comes."""
    while not stop.wait(max(1.0, rejections.window_s / 4)):
        rejections.flush(time.time())
