"""The webhook service's parts on their own: delivery signatures, the hash-chained audit log, the
durable job queue, and the handling of one delivery (verify → record → queue → audit)."""

import json
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gate.cli import app
from gate.serve.audit import GENESIS, AuditError, AuditLog, verify_audit_log

KEY = bytes(range(32))  # the audit key (tests/security/test_audit_keyed.py: its file, and forgery without it)
from gate.serve.jobstore import JobStore, Replay
from gate.serve.service import ServiceSettings, handle_delivery
from gate.serve.signature import DeliveryRejected, sign, verify_delivery

SECRET = "s3cret-for-tests"


def delivery(event="model_version.created", data=None, *, secret=SECRET, ts=None, delivery_id="d-1"):
    entity, action = event.rsplit(".", 1)
    body = json.dumps({"entity": entity, "action": action, "timestamp": "2026-11-28T00:00:00+00:00",
                       "data": data if data is not None else {"name": "gen", "version": "1"}}).encode()
    ts = str(int(time.time()) if ts is None else ts)
    headers = {"X-MLflow-Delivery-Id": delivery_id, "X-MLflow-Timestamp": ts,
               "X-MLflow-Signature": sign(secret, delivery_id, ts, body), "Content-Type": "application/json"}
    return headers, body


def test_signature_matches_mlflows_own_signer():
    from mlflow.webhooks.delivery import _generate_hmac_signature  # the sender's code, not a re-derivation

    body = '{"entity": "model_version", "action": "created", "data": {"name": "é"}}'
    assert sign(SECRET, "abc", "1795801307", body.encode()) == _generate_hmac_signature(SECRET, "abc", "1795801307",
                                                                                         body)


def test_a_valid_delivery_is_parsed():
    headers, body = delivery(data={"name": "gen", "version": "3"})
    d = verify_delivery(SECRET, headers, body, time.time())
    assert (d.delivery_id, d.event, d.data["version"]) == ("d-1", "model_version.created", "3")


@pytest.mark.parametrize("tamper, needle, status", [
    (lambda h, b: ({**h, "X-MLflow-Signature": sign("other", "d-1", h["X-MLflow-Timestamp"], b)}, b),
     "bad signature", 401),
    (lambda h, b: (h, b.replace(b'"1"', b'"2"')), "bad signature", 401),
    (lambda h, b: ({k: v for k, v in h.items() if k != "X-MLflow-Signature"}, b), "unsigned", 401),
    (lambda h, b: ({**h, "X-MLflow-Delivery-Id": "d-2"}, b), "bad signature", 401),
    (lambda h, b: ({**h, "X-MLflow-Timestamp": "yesterday"}, b), "not unix seconds", 401),
])
def test_tampered_deliveries_are_rejected(tamper, needle, status):
    headers, body = tamper(*delivery())
    with pytest.raises(DeliveryRejected, match=needle) as e:
        verify_delivery(SECRET, headers, body, time.time())
    assert e.value.status == status


@pytest.mark.parametrize("offset", [-301, 301, -86400])
def test_stale_and_future_timestamps_are_rejected_even_when_signed(offset):
    headers, body = delivery(ts=int(time.time()) + offset)
    with pytest.raises(DeliveryRejected, match="stale delivery"):
        verify_delivery(SECRET, headers, body, time.time())


def test_rotation_any_listed_signature_may_match():
    headers, body = delivery()
    headers["X-MLflow-Signature"] = "v1,AAAA " + headers["X-MLflow-Signature"]
    assert verify_delivery(SECRET, headers, body, time.time()).delivery_id == "d-1"


def test_signed_garbage_is_a_bad_request():
    body, ts = b'{"entity": "model_version"}', str(int(time.time()))
    headers = {"X-MLflow-Delivery-Id": "x", "X-MLflow-Timestamp": ts, "X-MLflow-Signature": sign(SECRET, "x", ts, body)}
    with pytest.raises(DeliveryRejected, match="not an MLflow webhook event") as e:
        verify_delivery(SECRET, headers, body, time.time())
    assert e.value.status == 400


def _log_with(tmp_path, n=5):
    log = AuditLog(tmp_path / "audit.jsonl", KEY)
    for i in range(n):
        log.append("test.event", i=i, note="é")
    return log


def test_the_audit_chain_verifies_and_links_every_entry(tmp_path):
    log = _log_with(tmp_path)
    entries = log.entries()
    assert [e["seq"] for e in entries] == list(range(5))
    assert entries[0]["prev"] == GENESIS
    assert all(b["prev"] == a["mac"] for a, b in zip(entries, entries[1:]))
    head = verify_audit_log(log.path, KEY, expected_head=entries[2]["mac"])
    assert (head.entries, head.head) == (5, entries[-1]["mac"])


@pytest.mark.parametrize("edit, needle", [
    (lambda lines: lines[:2] + [lines[2].replace(b'"i":2', b'"i":7')] + lines[3:], "line 3: entry altered"),
    (lambda lines: lines[:1] + lines[2:], "line 2: chain broken"),
    (lambda lines: [lines[1], lines[0]] + lines[2:], "line 1: chain broken"),
    (lambda lines: lines[:3] + [lines[1]] + lines[3:], "line 4: chain broken"),
    (lambda lines: lines[:4] + [b"not json"], "line 5: not an audit entry"),
])
def test_every_kind_of_edit_is_caught_at_its_line(tmp_path, edit, needle):
    log = _log_with(tmp_path)
    lines = log.path.read_bytes().splitlines()
    log.path.write_bytes(b"\n".join(edit(lines)) + b"\n")
    with pytest.raises(AuditError, match=needle):
        verify_audit_log(log.path, KEY)


def test_a_rewritten_chain_or_a_cut_tail_is_caught_by_a_recorded_head(tmp_path):
    log = _log_with(tmp_path)
    head = log.entries()[-1]["mac"]
    log.path.write_bytes(b"\n".join(log.path.read_bytes().splitlines()[:3]) + b"\n")
    assert verify_audit_log(log.path, KEY).entries == 3  # a shorter chain is still a chain ...
    with pytest.raises(AuditError, match="cut off the end"):  # ... which the recorded head exposes
        verify_audit_log(log.path, KEY, expected_head=head)


def test_a_torn_last_line_is_refused_and_not_appended_to(tmp_path):
    log = _log_with(tmp_path, 2)
    with open(log.path, "ab") as fh:
        fh.write(b'{"seq": 2, "ti')
    with pytest.raises(AuditError, match="incomplete"):
        verify_audit_log(log.path, KEY)
    with pytest.raises(AuditError, match="incomplete"):
        log.append("after.crash")


def test_concurrent_appends_keep_one_chain(tmp_path):
    import threading

    log = AuditLog(tmp_path / "audit.jsonl", KEY)
    threads = [threading.Thread(target=lambda k=k: [log.append("t", k=k, j=j) for j in range(20)]) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert verify_audit_log(log.path, KEY).entries == 120


def test_gate_audit_verify_cli(tmp_path):
    from gate.serve.audit import open_audit_key

    log = AuditLog(tmp_path / "audit.jsonl", open_audit_key(tmp_path / "audit.key", create=True))
    for i in range(5):
        log.append("test.event", i=i)
    runner = CliRunner()
    ok = runner.invoke(app, ["audit", "verify", str(log.path)])  # the key beside the log by default
    assert ok.exit_code == 0 and "5 entries" in ok.output
    lines = log.path.read_bytes().splitlines()
    log.path.write_bytes(b"\n".join(lines[:1] + lines[2:]) + b"\n")
    bad = runner.invoke(app, ["audit", "verify", str(log.path)])
    assert bad.exit_code == 1 and "line 2: chain broken" in bad.output
    missing = runner.invoke(app, ["audit", "verify", str(tmp_path / "absent.jsonl")])
    assert missing.exit_code == 1 and "no such audit log" in missing.output
    no_key = runner.invoke(app, ["audit", "verify", str(log.path), "--key", str(tmp_path / "absent.key")])
    assert no_key.exit_code == 2 and "no audit key" in no_key.output


def test_one_validation_job_per_version_whatever_the_deliveries(tmp_path):
    store = JobStore(tmp_path / "state.sqlite")
    now = time.time()
    first = store.accept("a", now, 300, "validate", "gen", "1")
    again = store.accept("b", now, 300, "validate", "gen", "1")
    other = store.accept("c", now, 300, "validate", "gen", "2")
    assert first.job_id and again.job_id is None and again.duplicate_of == first.job_id and other.job_id
    with pytest.raises(Replay):
        store.accept("a", now, 300, "validate", "gen", "3")
    job = store.claim("validate")
    assert job.id == first.job_id and job.attempts == 1
    store.finish(job.id, "done", "pass")
    assert store.accept("d", now, 300, "validate", "gen", "1").duplicate_of == first.job_id  # even when finished
    assert [j.version for j in store.jobs("validate")] == ["1", "2"]


def test_a_restart_requeues_interrupted_jobs_and_gives_up_after_max_attempts(tmp_path):
    path = tmp_path / "state.sqlite"
    store = JobStore(path)
    for i in range(2):
        store.accept(f"d{i}", time.time(), 300, "validate", "gen", str(i))
    store.claim("validate")
    store.claim("validate")
    requeued, given_up = JobStore(path).recover_interrupted(max_attempts=3)  # a fresh process, same file
    assert len(requeued) == 2 and not given_up
    for _ in range(2):
        store.claim("validate"), store.claim("validate")
        requeued, given_up = store.recover_interrupted(max_attempts=3)
    assert not requeued and len(given_up) == 2
    assert {j.status for j in store.jobs()} == {"error"}


def test_alias_checks_are_not_stacked_while_one_is_queued(tmp_path):
    store = JobStore(tmp_path / "state.sqlite")
    a = store.accept("a", time.time(), 300, "alias", "gen", alias="champion")
    b = store.accept("b", time.time(), 300, "alias", "gen", alias="champion")
    assert b.duplicate_of == a.job_id
    store.claim("alias")
    c = store.accept("c", time.time(), 300, "alias", "gen", alias="champion")  # the running one may be stale
    assert c.job_id and c.job_id != a.job_id


def test_handle_delivery_records_queues_and_audits(tmp_path):
    store, audit = JobStore(tmp_path / "s.sqlite"), AuditLog(tmp_path / "audit.jsonl", KEY)
    settings = ServiceSettings(secret=SECRET, protected_aliases=frozenset({"champion"}))
    now = time.time()
    created = handle_delivery(settings, store, audit, *delivery(delivery_id="1"), now)
    assert created.status == 202 and created.body["decision"].startswith("queued job")
    repeat = handle_delivery(settings, store, audit, *delivery(delivery_id="2"), now)
    assert repeat.status == 202 and "already covered" in repeat.body["decision"]
    replay = handle_delivery(settings, store, audit, *delivery(delivery_id="1"), now)
    assert replay.status == 409
    forged = handle_delivery(settings, store, audit, *delivery(delivery_id="3", secret="guess"), now)
    assert forged.status == 401
    alias = handle_delivery(settings, store, audit, *delivery(
        "model_version_alias.created", {"name": "gen", "alias": "champion", "version": "1"}, delivery_id="4"), now)
    assert alias.status == 202 and alias.body["kind"] == "alias"
    other = handle_delivery(settings, store, audit, *delivery(
        "model_version_alias.created", {"name": "gen", "alias": "staging", "version": "1"}, delivery_id="5"), now)
    assert other.status == 202 and other.body["decision"].startswith("ignored")
    events = [(e["event"], e["data"].get("decision") or e["data"].get("reason")) for e in audit.entries()]
    assert [e for e, _ in events] == ["delivery.accepted", "delivery.accepted", "delivery.rejected",
                                      "delivery.rejected", "delivery.accepted", "delivery.accepted"]
    assert "replay" in events[2][1] and "bad signature" in events[3][1]
    assert [j.kind for j in store.jobs()] == ["validate", "alias"]
    verify_audit_log(audit.path, KEY)


def _dispatch(tmp_path, validate, max_attempts=3):
    from gate.serve.service import Dispatcher

    store, audit = JobStore(tmp_path / "s.sqlite"), AuditLog(tmp_path / "audit.jsonl", KEY)
    store.accept("d", time.time(), 300, "validate", "gen", "1")
    dispatcher = Dispatcher(store, audit, 1, validate, check_alias=None, max_attempts=max_attempts, backoff_s=0.01)
    dispatcher.start()
    try:
        deadline = time.time() + 20
        while store.jobs()[0].status in ("queued", "running") and time.time() < deadline:
            time.sleep(0.05)
    finally:
        dispatcher.stop()
    return store.jobs()[0], [e["event"] for e in audit.entries()]


def test_the_pool_retries_a_registry_outage_then_records_the_validation(tmp_path):
    from gate.serve.validation_job import ValidationOutcome

    calls = []

    def validate(job, stopping, started):
        calls.append(job.attempts)
        if len(calls) < 3:
            raise ConnectionError("registry unreachable")
        return ValidationOutcome("done", "pass", "exit 0", 0)

    job, events = _dispatch(tmp_path, validate)
    assert calls == [1, 2, 3] and (job.status, job.verdict) == ("done", "pass")
    assert events == ["validation.started", "validation.retry", "validation.started", "validation.retry",
                      "validation.started", "validation.finished"]


def test_a_lasting_outage_ends_as_an_error_and_a_validation_error_is_never_retried(tmp_path):
    from gate.serve.validation_job import ValidationOutcome

    def down(job, stopping, started):
        raise ConnectionError("registry unreachable")

    job, events = _dispatch(tmp_path / "a", down, max_attempts=2)
    assert (job.status, job.verdict) == ("error", "error") and "unreachable" in job.detail
    assert events[-1] == "validation.error" and events.count("validation.started") == 2

    calls = []

    def broken(job, stopping, started):
        calls.append(1)
        return ValidationOutcome("error", "error", "gate: error: generator batch 0: wrong shape", 2)

    job, events = _dispatch(tmp_path / "b", broken)
    assert len(calls) == 1 and (job.status, job.verdict) == ("error", "error")
    assert events == ["validation.started", "validation.error"]


def _serve(tmp_path, *extra, env=None):
    from gate import attestation as A

    private, _ = A.generate_keypair()
    (tmp_path / "k.key").write_bytes(private)
    policy = Path(__file__).resolve().parents[1] / "policies" / "default.yaml"
    return CliRunner().invoke(app, ["serve", "--policy", str(policy), "--tracking-uri", f"sqlite:///{tmp_path}/m.db",
                                    "--signing-key", str(tmp_path / "k.key"), "--state-dir", str(tmp_path / "state"),
                                    *map(str, extra)], env=env or {})


def test_serve_refuses_to_start_without_a_secret(tmp_path, monkeypatch):
    monkeypatch.delenv("GATE_WEBHOOK_SECRET", raising=False)
    res = _serve(tmp_path)
    assert res.exit_code == 2 and "no webhook secret" in res.output


def test_serve_refuses_a_port_in_use_and_a_broken_audit_log_with_one_line(tmp_path):
    import socket

    with socket.create_server(("127.0.0.1", 0)) as busy:
        res = _serve(tmp_path, "--port", busy.getsockname()[1], env={"GATE_WEBHOOK_SECRET": SECRET})
    assert res.exit_code == 2 and "cannot listen there" in res.output, res.output
    assert not (tmp_path / "state" / "audit.jsonl").exists()  # nothing recorded for a start that never was

    log = _log_with(tmp_path / "state")
    key_file = tmp_path / "state" / "audit.key"
    key_file.write_text(KEY.hex() + "\n")
    key_file.chmod(0o600)
    lines = log.path.read_bytes().splitlines()
    log.path.write_bytes(b"\n".join(lines[:1] + lines[2:]) + b"\n")
    res = _serve(tmp_path, "--port", 0, env={"GATE_WEBHOOK_SECRET": SECRET})
    assert res.exit_code == 2 and "refusing to start on a broken audit log" in res.output, res.output
    assert "line 2: chain broken" in res.output
