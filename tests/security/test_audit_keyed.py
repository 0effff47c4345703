"""The audit log cannot be rewritten by someone who can write the file but does not hold the key: every
entry carries an HMAC-SHA256 chained through the previous entry's, so a chain recomputed without the key
(lines dropped or edited, hashes redone) is refused; the old unkeyed format is refused with a clear line."""

import hashlib
import json
import os
import stat

import pytest
from typer.testing import CliRunner

from gate.cli import app
from gate.errors import ConfigError, ExitCode, Refusal
from gate.serve.audit import AuditError, AuditLog, open_audit_key, verify_audit_log


def canonical(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def keyed_log(tmp_path, n=5):
    key = open_audit_key(tmp_path / "audit.key", create=True)
    log = AuditLog(tmp_path / "audit.jsonl", key)
    for i in range(n):
        log.append("delivery.accepted", i=i)
    return log, key


def recompute_without_key(entries):
    """What a writer without the key can do: redo every chain field it can compute (sha256s, and MACs
    under keys it might guess), rewriting the links."""
    out, prev = [], None
    for i, e in enumerate(entries):
        e = dict(e, seq=i)
        for field in ("prev",):
            e[field] = prev if prev is not None else e[field]
        tag_field = "mac" if "mac" in e else "hash"
        body = {k: v for k, v in e.items() if k != tag_field}
        e[tag_field] = hashlib.sha256(canonical(body)).hexdigest()
        prev = e[tag_field]
        out.append(canonical(e))
    return b"\n".join(out) + b"\n"


@pytest.mark.parametrize("edit", ["drop", "alter", "truncate-and-extend"])
def test_a_chain_recomputed_without_the_key_is_refused(tmp_path, edit):
    log, key = keyed_log(tmp_path)
    head = verify_audit_log(log.path, key).head
    entries = [json.loads(line) for line in log.path.read_bytes().splitlines()]
    if edit == "drop":  # the forged delivery's line removed
        entries = entries[:2] + entries[3:]
    elif edit == "alter":
        entries[2]["data"]["i"] = 99
    else:
        entries = entries[:3] + [dict(entries[3], event="validation.finished")] + entries[4:]
    log.path.write_bytes(recompute_without_key(entries))
    with pytest.raises(AuditError, match="line [1-3]"):
        verify_audit_log(log.path, key)
    res = CliRunner().invoke(app, ["audit", "verify", str(log.path), "--key", str(tmp_path / "audit.key"),
                                   "--head", head])
    assert res.exit_code == 1 and "line" in res.output and "intact" not in res.output, res.output


def test_audit_error_is_a_refusal_exit_1():
    assert issubclass(AuditError, Refusal) and AuditError.exit_code == ExitCode.BLOCKED


def test_the_wrong_key_is_refused_and_the_right_one_verifies_with_its_head(tmp_path):
    log, key = keyed_log(tmp_path)
    head = verify_audit_log(log.path, key)
    assert head.entries == 5 and head.head == log.entries()[-1]["mac"]
    with pytest.raises(AuditError, match="line 1"):
        verify_audit_log(log.path, os.urandom(32))
    ok = CliRunner().invoke(app, ["audit", "verify", str(log.path), "--key", str(tmp_path / "audit.key"),
                                  "--head", head.head])
    assert ok.exit_code == 0 and "5 entries" in ok.output, ok.output


def test_a_line_appended_by_a_writer_without_the_key_is_not_chained_onto(tmp_path):
    log, key = keyed_log(tmp_path, 2)
    last = log.entries()[-1]
    forged = {"v": 2, "seq": 2, "time": last["time"], "event": "validation.finished", "data": {"verdict": "pass"},
              "prev": last["mac"]}
    forged["mac"] = hashlib.sha256(canonical(forged)).hexdigest()
    with open(log.path, "ab") as fh:
        fh.write(canonical(forged) + b"\n")
    with pytest.raises(AuditError, match="last line"):
        log.append("delivery.accepted")
    with pytest.raises(AuditError, match="line 3"):
        verify_audit_log(log.path, key)


def test_an_unkeyed_log_of_the_previous_format_is_refused_with_a_clear_line(tmp_path):
    prev = "0" * 64
    lines = []
    for i in range(3):
        e = {"seq": i, "time": "2026-11-28T00:00:00+00:00", "event": "t", "data": {}, "prev": prev}
        e["hash"] = hashlib.sha256(canonical(e)).hexdigest()
        prev = e["hash"]
        lines.append(canonical(e))
    (tmp_path / "audit.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    key = open_audit_key(tmp_path / "audit.key", create=True)
    with pytest.raises(AuditError, match="line 1: an unkeyed entry"):
        verify_audit_log(tmp_path / "audit.jsonl", key)


def test_the_key_file_is_created_private_and_a_readable_one_is_refused(tmp_path):
    path = tmp_path / "audit.key"
    key = open_audit_key(path, create=True)
    assert len(key) >= 32 and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert open_audit_key(path, create=False) == key
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="readable by group or others"):
        open_audit_key(path, create=False)
    with pytest.raises(ConfigError, match="no audit key"):
        open_audit_key(tmp_path / "absent.key", create=False)
    (tmp_path / "big.key").write_bytes(b"a" * 100_000)
    (tmp_path / "big.key").chmod(0o600)
    with pytest.raises(ConfigError, match="bytes"):
        open_audit_key(tmp_path / "big.key", create=False)


def test_the_service_publishes_its_head_at_start_and_stop_and_refuses_a_log_cut_short(tmp_path):
    """`gate serve` for real (a sqlite registry: no webhook arrives, none is needed): the head goes to its
    log and to audit.head at start and stop; the key file is created 600; a log whose tail was cut off
    (and whose chain is otherwise intact) is refused at the next start."""
    import signal
    import subprocess
    from pathlib import Path

    from gate import attestation as A
    from gate.local_server import LocalGateService
    from gate.serve.audit import read_head

    private, _ = A.generate_keypair()
    (tmp_path / "k.key").write_bytes(private)
    policy = Path(__file__).resolve().parents[2] / "policies" / "default.yaml"
    service = LocalGateService(tmp_path / "svc", f"sqlite:///{tmp_path}/m.db", policy, tmp_path / "k.key", "s3cret")
    service.start()
    assert service.stop(signal.SIGTERM) == 0
    state = tmp_path / "svc" / "state"
    key = open_audit_key(state / "audit.key", create=False)
    assert stat.S_IMODE((state / "audit.key").stat().st_mode) == 0o600
    entries = service.audit.entries()
    assert [e["event"] for e in entries] == ["service.started", "service.stopped"]
    assert "audit_key" in entries[0]["data"]
    for e in entries:
        assert f"audit head {e['mac']}" in service.log_tail
    assert read_head(service.audit.path) == entries[-1]["mac"] == verify_audit_log(service.audit.path, key).head

    lines = service.audit.path.read_bytes().splitlines()
    service.audit.path.write_bytes(lines[0] + b"\n")  # still a valid chain of one keyed entry
    res = subprocess.run(service.args, cwd=service.root, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "is not in the log" in res.stderr, res.stderr[-2000:]
