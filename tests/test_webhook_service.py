"""`gate serve` against a real `mlflow server` on 127.0.0.1 that sends real, signed webhooks: ten versions
created at once are each validated exactly once by a bounded pool, a crash of the service loses no
queued work, a protected alias set by hand on an unattested or failed version is put back, forged,
stale and replayed deliveries are refused, and the audit log's chain holds throughout."""

import collections
import concurrent.futures
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import CHEAP_MEMORIZATION, mlflow_server, write_policy
from gate import attestation as A
from gate.cli import app
from gate.generator import log_generator
from gate.local_server import LocalGateService, webhook_delivery_env
from gate.serve.audit import open_audit_key, read_head, verify_audit_log
from gate.serve.signature import sign
from gate_plugins.mri.generators import CopyingGenerator, NovelSubjectGenerator

NAME = "watched-gen"
SECRET = "webhook-secret-for-tests"


def wait_for(predicate, timeout_s, what):
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    pytest.fail(f"timed out after {timeout_s} s waiting for {what}")


@pytest.fixture(scope="module")
def world(tmp_path_factory, mri):
    root = tmp_path_factory.mktemp("webhooks")
    private, _ = A.generate_keypair()
    (root / "gate.key").write_bytes(private)
    (root / "mlflow").mkdir()
    with mlflow_server(root / "mlflow", env=webhook_delivery_env()) as uri:
        client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
        from gate_plugins.mri.subjects import labelled_subject_slices

        images, labels, _ = labelled_subject_slices(range(1, 5), 24)  # the fixture's train subjects, labelled
        np.save(root / "train_slices.npy", images)
        np.save(root / "train_labels.npy", labels)
        # the sources live under a model the service does not watch (--model-name): only NAME is validated
        novel, _ = log_generator(NovelSubjectGenerator(), "sources", tracking_uri=uri, tags={"kind": "novel"})
        copier, _ = log_generator(CopyingGenerator(), "sources", tracking_uri=uri, tags={"kind": "copier"},
                                  artifacts={"train_slices": str(root / "train_slices.npy"),
                                             "train_labels": str(root / "train_labels.npy")})
        policy = write_policy(root / "policy.yaml", mri["train"], mri["holdout"], n_samples=16,
                              params=CHEAP_MEMORIZATION)
        service = LocalGateService(root / "service", uri, policy, root / "gate.key", SECRET, workers=2,
                                   model_names=(NAME,))
        service.start()
        try:
            yield {"uri": uri, "client": client, "service": service, "root": root,
                   "sources": {"novel": novel, "copier": copier}}
        finally:
            if service.proc.poll() is None:
                service.stop()


def test_the_service_validates_ten_versions_created_at_once_exactly_once_across_a_crash(world):
    client, service = world["client"], world["service"]
    hook = client.create_webhook(name="gate", url=service.webhook_url, secret=SECRET,
                                 events=["model_version.created", "model_version_alias.created"])
    time.sleep(1.5)  # the server caches its webhook list for MLFLOW_WEBHOOK_CACHE_TTL
    probe = client.test_webhook(hook.webhook_id)  # MLflow's example payload names a model nobody has
    assert probe.success and probe.response_status == 202, probe
    assert service.events("delivery.accepted")[-1]["data"]["name"] == "example_model"

    client.create_registered_model(NAME)
    kinds = ["novel", "copier"] * 5
    with concurrent.futures.ThreadPoolExecutor(10) as pool:  # ten versions at once, through the REST API
        created = list(pool.map(lambda k: _copy(client, world["sources"][k]), kinds))
    kind_of = {str(mv.version): mv.tags["kind"] for mv in created}
    assert len(kind_of) == 10

    # every creation is delivered and queued before anything is acknowledged as done
    wait_for(lambda: sum(_jobs(service).values()) == 10, 60, "10 queued jobs")
    # crash the service (SIGKILL) while validations run; its children die with it
    wait_for(lambda: service.events("validation.started"), 120, "a validation to start")
    service.stop(signal.SIGKILL)
    wait_for(lambda: not _running_validations(service.root), 30, "the validation children to die with the service")
    finished_before = {e["data"]["version"] for e in service.events("validation.finished")}
    assert len(finished_before) < 10, "the crash came too late to test recovery"
    service.start()
    assert service.events("service.recovered"), "interrupted jobs were not put back in the queue"
    wait_for(lambda: set(_jobs(service)) - {"done", "error"} == set() and sum(_jobs(service).values()) == 10,
             600, "all 10 validations to finish")
    assert _jobs(service) == {"done": 10}, service.events("validation.error")

    finished = collections.Counter(e["data"]["version"] for e in service.events("validation.finished"))
    assert finished == {v: 1 for v in kind_of}, finished  # once each, across the crash
    for e in service.events("validation.finished"):
        want = "pass" if kind_of[e["data"]["version"]] == "novel" else "fail"
        assert e["data"]["verdict"] == want and e["data"]["attested"], e
    for version, kind in kind_of.items():
        tags = client.get_model_version(NAME, version).tags
        assert tags["gate.verdict"] == ("pass" if kind == "novel" else "fail")
        assert "gate.attestation" in tags
    at_once = max(_concurrency(service.audit.entries()))
    assert at_once <= 2, f"{at_once} validations ran at once with --workers 2"

    # repeated deliveries for a version never start a second validation
    headers, body = _signed({"entity": "model_version", "action": "created",
                             "data": {"name": NAME, "version": created[0].version}})
    assert service.post(headers, body) == 202
    assert service.post(headers, body) == 409  # the same delivery again: a replay
    time.sleep(3)
    assert len(service.events("validation.started", version=str(created[0].version))) <= 2
    assert _jobs(service) == {"done": 10}

    # forged and stale deliveries are refused and recorded
    headers, body = _signed({"entity": "model_version", "action": "created", "data": {"name": NAME, "version": "99"}},
                            secret="a guess")
    assert service.post(headers, body) == 401
    headers, body = _signed({"entity": "model_version", "action": "created", "data": {"name": NAME, "version": "99"}},
                            ts=int(time.time()) - 3600)
    assert service.post(headers, body) == 401
    reasons = [e["data"]["reason"] for e in service.events("delivery.rejected")]
    assert any("bad signature" in r for r in reasons) and any("stale" in r for r in reasons)
    assert any("replay" in r for r in reasons)

    # a protected alias set by hand on a failed version is taken away (no approved holder yet) ...
    passing = next(v for v, k in kind_of.items() if k == "novel")
    failing = next(v for v, k in kind_of.items() if k == "copier")
    client.set_registered_model_alias(NAME, "champion", failing)
    wait_for(lambda: "champion" not in client.get_registered_model(NAME).aliases, 60, "the alias to be removed")
    removed = service.events("alias.removed")[-1]["data"]
    assert removed["version"] == failing and "verdict fail" in removed["reason"]
    # ... stays on a validated version ...
    client.set_registered_model_alias(NAME, "champion", passing)
    wait_for(lambda: service.events("alias.allowed", version=passing), 60, "the alias check")
    assert str(client.get_registered_model(NAME).aliases["champion"]) == passing
    # ... and moves back to it when pointed at a version whose attestation tag was forged ...
    client.set_model_version_tag(NAME, failing, "gate.attestation", "{}")
    client.set_registered_model_alias(NAME, "champion", failing)
    wait_for(lambda: service.events("alias.reverted"), 60, "the alias to move back")
    assert str(client.get_registered_model(NAME).aliases["champion"]) == passing
    reverted = service.events("alias.reverted")[-1]["data"]
    assert (reverted["version"], reverted["restored"]) == (failing, passing)
    assert "attestation" in reverted["reason"]
    # ... or at a new version promoted before its validation could finish
    fresh = str(_copy(client, world["sources"]["novel"]).version)
    client.set_registered_model_alias(NAME, "champion", fresh)
    wait_for(lambda: service.events("alias.reverted", version=fresh), 60, "the alias to leave the fresh version")
    assert str(client.get_registered_model(NAME).aliases["champion"]) == passing
    assert "no gate attestation" in service.events("alias.reverted", version=fresh)[-1]["data"]["reason"]
    wait_for(lambda: service.events("validation.started", version=fresh), 60, "the fresh version's validation")

    # a clean stop puts the running validation back in the queue and is recorded; the chain verifies
    assert service.stop() == 0
    assert service.events("service.stopped")
    if not service.events("validation.finished", version=fresh):
        assert service.events("validation.interrupted", version=fresh)
    head = verify_audit_log(service.audit.path, open_audit_key(service.root / "state" / "audit.key", create=False))
    # the head is published at stop: in the service's own log and beside the audit log
    assert read_head(service.audit.path) == head.head and f"audit head {head.head}" in service.log_tail
    res = CliRunner().invoke(app, ["audit", "verify", str(service.audit.path), "--head", head.head])
    assert res.exit_code == 0 and f"{head.entries} entries" in res.output


def test_validations_starting_together_share_one_gate_experiment(world):
    from gate.recording import validation_experiment_id

    client, barrier = world["client"], __import__("threading").Barrier(8)

    def race(_):
        barrier.wait()
        return validation_experiment_id(client, world["uri"], name="gate-race")

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        ids = set(pool.map(race, range(8)))
    assert ids == {client.get_experiment_by_name("gate-race").experiment_id}


def _jobs(service):
    return (service.health() or {}).get("jobs", {})


def _copy(client, source):
    """A new version of NAME, through the REST API (so MLflow delivers its creation), with the source's tags."""
    return client.copy_model_version(f"models:/{source.name}/{source.version}", NAME)


def _signed(payload, secret=SECRET, ts=None):
    body = json.dumps(payload).encode()
    ts, did = str(ts or int(time.time())), os.urandom(8).hex()
    return {"Content-Type": "application/json", "X-MLflow-Delivery-Id": did, "X-MLflow-Timestamp": ts,
            "X-MLflow-Signature": sign(secret, did, ts, body)}, body


def _running_validations(root: Path) -> list[str]:
    out = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    return [ln for ln in out.splitlines() if "gate.cli validate" in ln and str(root) in ln]


def _concurrency(entries):
    """How many validations were running after each start/finish (a crash ends all running ones)."""
    running = set()
    for e in entries:
        if e["event"] == "validation.started":
            running.add(e["data"]["job"])
        elif e["event"] in ("validation.finished", "validation.error", "validation.interrupted"):
            running.discard(e["data"]["job"])
        elif e["event"] == "service.started":
            running.clear()
        yield len(running)
