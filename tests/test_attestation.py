"""Signed attestations: the DSSE envelope round trip and every kind of tampering refused with a reason."""

import base64
import datetime as dt
import json

import pytest

from gate import attestation as A

NOW = dt.datetime(2026, 11, 27, 12, 0, tzinfo=dt.timezone.utc)


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    from cryptography.hazmat.primitives import serialization

    d = tmp_path_factory.mktemp("keys")
    pairs = []
    for name in ("good", "other"):
        private, public = A.generate_keypair()
        (d / f"{name}.key").write_bytes(private)
        (d / f"{name}.pub").write_bytes(public)
        pairs.append((A.load_private_key(d / f"{name}.key"), A.load_public_key(d / f"{name}.pub")))
    assert serialization  # the PEM files load back into Ed25519 keys
    return pairs, d


def _envelope(private, **over):
    predicate = {"verdict": "pass", "report_sha256": "a" * 64, "policy_sha256": "b" * 64,
                 "issued_at": (NOW - dt.timedelta(hours=1)).isoformat(), **over}
    return A.sign(A.make_statement("models:/gen/3", "c" * 64, predicate), private)


def test_a_valid_attestation_verifies(keys):
    (good, _), _ = keys
    env = _envelope(good[0])
    st = A.verify(json.dumps(env), A.TrustPolicy((good[1],), max_age=dt.timedelta(days=1)),
                  subject_uri="models:/gen/3", artifacts_sha256="c" * 64, report_sha256="a" * 64, now=NOW)
    assert st["predicate"]["verdict"] == "pass" and st["predicateType"] == A.PREDICATE_TYPE
    assert env["payloadType"] == "application/vnd.in-toto+json"
    assert json.loads(base64.b64decode(env["payload"]))["_type"] == "https://in-toto.io/Statement/v1"


def test_each_kind_of_tampering_is_refused_with_its_reason(keys):
    (good, other), _ = keys
    env = _envelope(good[0])
    forged = dict(env, payload=base64.b64encode(base64.b64decode(env["payload"]).replace(b'"pass"', b'"fail"')).decode())
    cases = [
        (forged, {}, "tampered"),
        (json.dumps(env)[:-40], {}, "not valid JSON"),
        ({"payload": env["payload"]}, {}, "not a DSSE envelope"),
        (_envelope(other[0]), {}, "wrong key"),
        (env, {"subject_uri": "models:/gen/4"}, "is for models:/gen/3, not models:/gen/4"),
        (env, {"artifacts_sha256": "d" * 64}, "artifacts changed"),
        (env, {"report_sha256": "e" * 64}, "report.json was changed"),
        (env, {"max_age": dt.timedelta(minutes=30)}, "expired"),
    ]
    for envelope, kwargs, reason in cases:
        trust = A.TrustPolicy((good[1],), **({"max_age": kwargs.pop("max_age")} if "max_age" in kwargs else {}))
        with pytest.raises(A.AttestationError, match=reason):
            A.verify(envelope, trust, now=NOW, **kwargs)


def test_key_files_are_checked(keys, tmp_path):
    _, d = keys
    with pytest.raises(A.AttestationError, match="no such key file"):
        A.load_public_key(tmp_path / "absent.pub")
    (tmp_path / "junk.pub").write_text("not a key")
    with pytest.raises(A.AttestationError, match="not a PEM key"):
        A.load_public_key(tmp_path / "junk.pub")
    with pytest.raises(A.AttestationError, match="not a PEM key .*no BEGIN PUBLIC KEY"):
        A.load_public_key(d / "good.key")  # a private key where the public one belongs


def test_artifacts_digest_sees_any_change(tmp_path):
    (tmp_path / "m" / "sub").mkdir(parents=True)
    (tmp_path / "m" / "MLmodel").write_text("a")
    (tmp_path / "m" / "sub" / "w.bin").write_bytes(b"\x00\x01")
    first = A.artifacts_digest(tmp_path / "m")
    assert first == A.artifacts_digest(tmp_path / "m")
    (tmp_path / "m" / "sub" / "w.bin").write_bytes(b"\x00\x02")
    assert A.artifacts_digest(tmp_path / "m") != first
