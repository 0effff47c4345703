"""Signed statements of validation results: an in-toto Statement in a DSSE envelope, signed with Ed25519.

The subject is the model version (its URI and the sha256 of its artifacts); the predicate holds the
verdict, the digests of the report and the policy, and the time. Verification checks, in order, that
the envelope is well formed, that it was signed by the expected key, that it is about the expected
version and artifacts, that it is not older than a maximum age, and that the report it names is the
one at hand; each failure is an :class:`AttestationError` with one reason.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
from pathlib import Path
from typing import Any

PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://gate-mri.dev/attestation/validation/v1"


class AttestationError(Exception):
    """An attestation that must not be trusted; the message says why."""


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE's pre-authentication encoding: what is actually signed."""
    t = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


def generate_keypair() -> tuple[bytes, bytes]:
    """A new Ed25519 key pair as (private PEM, public PEM)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    return private, public


def load_private_key(path: Path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = _load(path, lambda data: serialization.load_pem_private_key(data, password=None))
    if not isinstance(key, Ed25519PrivateKey):
        raise AttestationError(f"{path}: not an Ed25519 private key (make one with `gate keygen`)")
    return key


def load_public_key(path: Path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    key = _load(path, serialization.load_pem_public_key)
    if not isinstance(key, Ed25519PublicKey):
        raise AttestationError(f"{path}: not an Ed25519 public key")
    return key


def _load(path: Path, parse):
    try:
        return parse(Path(path).read_bytes())
    except FileNotFoundError:
        raise AttestationError(f"{path}: no such key file") from None
    except (ValueError, TypeError) as exc:
        raise AttestationError(f"{path}: not a PEM key ({exc})") from None


def key_id(public_key) -> str:
    """sha256 of the raw public key: names the key in the envelope."""
    from cryptography.hazmat.primitives import serialization

    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def make_statement(subject_uri: str, artifacts_sha256: str, predicate: dict[str, Any]) -> dict[str, Any]:
    return {"_type": STATEMENT_TYPE, "subject": [{"name": subject_uri, "digest": {"sha256": artifacts_sha256}}],
            "predicateType": PREDICATE_TYPE, "predicate": predicate}


def sign(statement: dict[str, Any], private_key) -> dict[str, Any]:
    payload = json.dumps(statement, sort_keys=True, separators=(",", ":")).encode()
    signature = private_key.sign(pae(PAYLOAD_TYPE, payload))
    return {"payloadType": PAYLOAD_TYPE, "payload": base64.b64encode(payload).decode(),
            "signatures": [{"keyid": key_id(private_key.public_key()), "sig": base64.b64encode(signature).decode()}]}


def verify(envelope: Any, public_key, *, subject_uri: str | None = None, artifacts_sha256: str | None = None,
           report_sha256: str | None = None, max_age: dt.timedelta | None = None,
           now: dt.datetime | None = None) -> dict[str, Any]:
    """The statement, if every check holds; else :class:`AttestationError` naming the first that fails."""
    from cryptography.exceptions import InvalidSignature

    if isinstance(envelope, (str, bytes)):
        try:
            envelope = json.loads(envelope)
        except ValueError:
            raise AttestationError("the attestation is not valid JSON (truncated or corrupted)") from None
    try:
        payload = base64.b64decode(envelope["payload"], validate=True)
        signatures = envelope["signatures"]
        if envelope["payloadType"] != PAYLOAD_TYPE:
            raise AttestationError(f"unexpected payload type {envelope['payloadType']!r}")
    except (KeyError, TypeError, ValueError):
        raise AttestationError("the attestation is not a DSSE envelope (truncated or corrupted)") from None
    expected = key_id(public_key)
    mine = [s for s in signatures if isinstance(s, dict) and s.get("keyid") == expected]
    if not mine:
        raise AttestationError(f"not signed by the given key (key id {expected[:16]}…): wrong key")
    try:
        public_key.verify(base64.b64decode(mine[0]["sig"]), pae(PAYLOAD_TYPE, payload))
    except (InvalidSignature, ValueError, KeyError):
        raise AttestationError("the signature does not match the content: the attestation was tampered with") from None
    statement = json.loads(payload)
    subject = statement["subject"][0]
    if subject_uri is not None and subject["name"] != subject_uri:
        raise AttestationError(f"the attestation is for {subject['name']}, not {subject_uri}")
    if artifacts_sha256 is not None and subject["digest"]["sha256"] != artifacts_sha256:
        raise AttestationError("the model version's artifacts changed since they were validated "
                               f"(attested sha256 {subject['digest']['sha256'][:16]}…, now {artifacts_sha256[:16]}…)")
    issued = dt.datetime.fromisoformat(statement["predicate"]["issued_at"])
    now = now or dt.datetime.now(dt.timezone.utc)
    if max_age is not None and now - issued > max_age:
        raise AttestationError(f"the attestation expired: issued {issued.isoformat()}, older than {max_age}")
    if report_sha256 is not None and statement["predicate"]["report_sha256"] != report_sha256:
        raise AttestationError("the report does not match the attested digest: report.json was changed")
    return statement


def verdict_problem(statement: dict[str, Any]) -> str | None:
    """None when a verified statement says ``pass``; otherwise why its version may not be promoted."""
    verdict = statement["predicate"].get("verdict")
    return None if verdict == "pass" else f"{statement['subject'][0]['name']} failed its validation (verdict {verdict})"


def artifacts_digest(folder: Path) -> str:
    """One sha256 over every file under ``folder``: relative paths and contents, in sorted order."""
    h = hashlib.sha256()
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        h.update(f"{path.relative_to(folder).as_posix()}\0{hashlib.sha256(path.read_bytes()).hexdigest()}\n".encode())
    return h.hexdigest()
