"""Attestations name exactly what they vouch for, and verifiers trust only what they are configured to:
future-dated and stale statements, unlisted policies, other versions' identities and unsigned digests are
refused; `gate verify` exits 4 for a valid attestation whose verdict is not pass."""

import datetime as dt
import hashlib
import json

import pytest
from typer.testing import CliRunner

from gate import attestation as A
from gate.errors import ConfigError, ExitCode, Refusal

NOW = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.timezone.utc)
IDENTITY = {"name": "gen", "version": "3", "creation_timestamp": 1764590400000, "run_id": "a" * 32,
            "source": "models:/m-123", "workspace": "default"}


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("keys")
    for name in ("one", "two", "other"):
        private, public = A.generate_keypair()
        (d / f"{name}.key").write_bytes(private)
        (d / f"{name}.pub").write_bytes(public)
    return d


def _signed(d, key="one", issued=NOW - dt.timedelta(hours=1), identity=IDENTITY, **predicate):
    body = {"verdict": "pass", "report_sha256": "a" * 64, "policy_name": "p", "policy_sha256": "b" * 64,
            "issued_at": issued.isoformat(), **predicate}
    statement = A.make_statement("models:/gen/3", "c" * 64, body, identity)
    return json.dumps(A.sign(statement, A.load_private_key(d / f"{key}.key")))


def _trust(d, *names, **kw):
    return A.TrustPolicy.from_files([d / f"{n}.pub" for n in names or ("one",)], **kw)


def test_future_dated_statements_are_refused_within_a_small_skew(keys):
    A.verify(_signed(keys, issued=NOW + dt.timedelta(minutes=4)), _trust(keys), now=NOW)  # clocks differ a little
    with pytest.raises(A.AttestationError, match="dated in the future"):
        A.verify(_signed(keys, issued=NOW + dt.timedelta(days=365)), _trust(keys), now=NOW)


def test_a_default_maximum_age_applies_and_is_overridable(keys):
    old = _signed(keys, issued=NOW - dt.timedelta(days=31))
    with pytest.raises(A.AttestationError, match="expired"):
        A.verify(old, _trust(keys), now=NOW)  # no max age configured: the 30-day default
    A.verify(old, _trust(keys, max_age_days=60), now=NOW)


def test_only_allow_listed_policies_count(keys):
    env = _signed(keys)
    A.verify(env, _trust(keys), now=NOW)  # no allow-list: any policy (and describe() says so)
    assert "any (no allow-list configured)" in _trust(keys).describe()
    with pytest.raises(A.AttestationError, match="not on the allow-list"):
        A.verify(env, _trust(keys, allowed_policies=["d" * 64]), now=NOW)
    A.verify(env, _trust(keys, allowed_policies=["d" * 64, "B" * 64]), now=NOW)
    with pytest.raises(ConfigError, match="not a lowercase sha256"):
        _trust(keys, allowed_policies=["policy.yaml"])


def test_several_keys_can_be_trusted_and_others_are_not(keys):
    A.verify(_signed(keys, key="two"), _trust(keys, "one", "two"), now=NOW)
    with pytest.raises(A.AttestationError, match="wrong key"):
        A.verify(_signed(keys, key="other"), _trust(keys, "one", "two"), now=NOW)


@pytest.mark.parametrize("field,value", [("creation_timestamp", 1764590400001), ("run_id", "b" * 32),
                                         ("source", "models:/m-999"), ("workspace", "team-b"), ("name", "gen2")])
def test_the_subject_names_the_versions_identity(keys, field, value):
    env = _signed(keys)
    A.verify(env, _trust(keys), identity=dict(IDENTITY), now=NOW)
    with pytest.raises(A.AttestationError, match="another version"):
        A.verify(env, _trust(keys), identity={**IDENTITY, field: value}, now=NOW)


def test_an_attestation_without_identity_is_refused_where_identity_is_checked(keys):
    with pytest.raises(A.AttestationError, match="does not name the version's identity"):
        A.verify(_signed(keys, identity=None), _trust(keys), identity=IDENTITY, now=NOW)


def test_a_refused_attestation_is_a_refusal_exit_1():
    assert issubclass(A.AttestationError, Refusal) and A.AttestationError("x").exit_code == ExitCode.BLOCKED


def test_sign_validation_refuses_without_the_sampled_digest(keys):
    from gate.attest import sign_validation
    from gate.registry import ModelRef
    from gate.report import Provenance, Report

    prov = Provenance(gate_version="0", model={"name": "gen", "version": "3", "creation_timestamp": 1},
                      policy_path="p.yaml", policy_name="p", policy_sha256="b" * 64, data=[], validators={},
                      libraries={}, seeds={}, started_at="", finished_at="", isolation="bubblewrap")
    report = Report(verdict="pass", mode="enforce", blocking=False, summary="", checks=[], provenance=prov)
    ref = ModelRef("gen", "3", "models:/m-123", None, "models:/gen/3")
    with pytest.raises(A.AttestationError, match="artifacts_sha256.*refusing to sign"):
        sign_validation("http://127.0.0.1:9", ref, report, "a" * 64, keys / "one.key")
    # and whatever the caller, a candidate sampled without bubblewrap is never signed
    unisolated = report.model_copy(update={"provenance": prov.model_copy(update={
        "isolation": "process", "model": {**prov.model, "artifacts_sha256": "c" * 64}})})
    with pytest.raises(A.AttestationError, match="isolation level 'process'.*refusing to sign"):
        sign_validation("http://127.0.0.1:9", ref, unisolated, "a" * 64, keys / "one.key")


def test_gate_verify_exits_4_for_a_valid_failing_attestation(keys, tmp_path):
    from gate.cli import app

    (tmp_path / "report.json").write_text('{"verdict": "fail"}')
    digest = hashlib.sha256((tmp_path / "report.json").read_bytes()).hexdigest()
    now = dt.datetime.now(dt.timezone.utc)
    runner = CliRunner()

    def verify(verdict):
        (tmp_path / "attestation.dsse.json").write_text(_signed(keys, issued=now, verdict=verdict,
                                                                report_sha256=digest))
        return runner.invoke(app, ["verify", str(tmp_path), "--public-key", str(keys / "one.pub")])

    res = verify("fail")
    assert res.exit_code == ExitCode.NOT_PASSING == 4, res.output
    assert "not passing" in res.output and "verdict fail" in res.output
    res = verify("pass")
    assert res.exit_code == 0 and "valid:" in res.output and "no policy allow-list" in res.output, res.output
    res = runner.invoke(app, ["verify", str(tmp_path), "--public-key", str(keys / "one.pub"),
                              "--allow-policy", "e" * 64])
    assert res.exit_code == 1 and "allow-list" in res.output, res.output
