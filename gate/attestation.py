"""Signed statements of validation results: an in-toto Statement in a DSSE envelope, signed with Ed25519.

The subject is the model version: its URI, the sha256 of the very files that were sampled, and, as
annotations, the version's immutable identity in the registry (name, version, creation timestamp, run
id, source, workspace), so that a tag copied onto another version that merely shares the name and
number (renamed in, or re-created) names the wrong version. The predicate holds the verdict, the digests
of the report, the policy and the train/holdout manifests, the data overrides, the isolation level and
the time. Verification checks, in order, that the envelope is well formed, that one of the trusted keys
signed it, that it is about the expected version, identity and artifacts, that its policy is allowed,
that it is neither older than the maximum age nor dated in the future, and that the report it names is
the one at hand; each failure is an :class:`AttestationError` (a refusal, exit 1) with one reason.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import hashlib
import json
import re
from pathlib import Path
from typing import Any, Iterable

from gate.errors import ConfigError, Refusal

PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://gate-mri.dev/attestation/validation/v1"


#: an attestation older than this is refused unless the trust configuration says otherwise: long enough
#: for a release cycle, short enough that a key rotated out or a policy tightened stops counting soon
DEFAULT_MAX_AGE_DAYS = 30.0
#: how far in the future ``issued_at`` may lie (clocks of signer and verifier differ a little)
DEFAULT_CLOCK_SKEW_S = 300.0
#: the subject annotations that name one version for good: a renamed-in or re-created version that
#: shares the name and number differs in at least its creation timestamp
IDENTITY_KEYS = ("name", "version", "creation_timestamp", "run_id", "source", "workspace")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class AttestationError(Refusal):
    """An attestation that must not be trusted; the message says why (exit 1)."""


@dataclasses.dataclass(frozen=True)
class TrustPolicy:
    """What a verifier trusts: any of ``public_keys``; statements under a policy whose sha256 is in
    ``allowed_policies`` (empty: any policy, which :meth:`describe` says); issued at most ``max_age``
    ago and at most ``clock_skew`` in the future."""

    public_keys: tuple[Any, ...]
    allowed_policies: frozenset[str] = frozenset()
    max_age: dt.timedelta = dt.timedelta(days=DEFAULT_MAX_AGE_DAYS)
    clock_skew: dt.timedelta = dt.timedelta(seconds=DEFAULT_CLOCK_SKEW_S)

    def __post_init__(self) -> None:
        if not self.public_keys:
            raise ConfigError("trust configuration: at least one public key is needed")
        bad = sorted(p for p in self.allowed_policies if not _SHA256.match(p))
        if bad:
            raise ConfigError(f"trust configuration: allowed policy {bad[0][:80]!r} is not a lowercase sha256 "
                              "(64 hex digits, as `gate verify` prints it)")
        if not dt.timedelta(0) < self.max_age <= dt.timedelta(days=36500):
            raise ConfigError(f"trust configuration: maximum age {self.max_age} must be positive and at most "
                              "100 years")
        if not dt.timedelta(0) <= self.clock_skew <= dt.timedelta(hours=1):
            raise ConfigError(f"trust configuration: clock skew {self.clock_skew} must be 0 to 1 hour")

    @classmethod
    def from_files(cls, key_paths: Iterable[Path | str], allowed_policies: Iterable[str] = (),
                   max_age_days: float | None = None, clock_skew_s: float | None = None) -> "TrustPolicy":
        """Keys read from PEM files; ``None`` for the age or skew means the documented default."""
        days = DEFAULT_MAX_AGE_DAYS if max_age_days is None else float(max_age_days)
        skew = DEFAULT_CLOCK_SKEW_S if clock_skew_s is None else float(clock_skew_s)
        if not (days == days and skew == skew):  # NaN slips through every comparison
            raise ConfigError("trust configuration: the maximum age and the clock skew must be numbers")
        return cls(tuple(load_public_key(Path(p)) for p in key_paths),
                   frozenset(p.strip().lower() for p in allowed_policies if p.strip()),
                   dt.timedelta(days=min(days, 36501)), dt.timedelta(seconds=min(skew, 3601)))

    def describe(self) -> str:
        keys = ", ".join(key_id(k)[:16] + "…" for k in self.public_keys)
        policies = (", ".join(sorted(p[:12] for p in self.allowed_policies)) if self.allowed_policies
                    else "any (no allow-list configured)")
        return f"trusted keys {keys}; policies {policies}; max age {self.max_age}"


def version_identity(record: Any) -> dict[str, Any]:
    """The immutable identity of a registry ModelVersion (or a dict with the same fields), as the
    subject's annotations hold it. A workspace of None is MLflow's ``default`` one."""
    get = record.get if isinstance(record, dict) else (lambda k: getattr(record, k, None))
    ts = get("creation_timestamp")
    try:
        ts = int(ts) if ts is not None else None
    except (TypeError, ValueError):
        ts = str(ts)[:80]  # never equal to a registry's integer
    return {"name": str(get("name")), "version": str(get("version")), "creation_timestamp": ts,
            "run_id": get("run_id") or None, "source": get("source") or None,
            "workspace": get("workspace") or "default"}


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


def make_statement(subject_uri: str, artifacts_sha256: str, predicate: dict[str, Any],
                   identity: dict[str, Any] | None = None) -> dict[str, Any]:
    """``identity`` (see :func:`version_identity`) goes into the subject's annotations."""
    subject: dict[str, Any] = {"name": subject_uri, "digest": {"sha256": artifacts_sha256}}
    if identity is not None:
        subject["annotations"] = {k: identity.get(k) for k in IDENTITY_KEYS}
    return {"_type": STATEMENT_TYPE, "subject": [subject], "predicateType": PREDICATE_TYPE, "predicate": predicate}


def sign(statement: dict[str, Any], private_key) -> dict[str, Any]:
    payload = json.dumps(statement, sort_keys=True, separators=(",", ":")).encode()
    signature = private_key.sign(pae(PAYLOAD_TYPE, payload))
    return {"payloadType": PAYLOAD_TYPE, "payload": base64.b64encode(payload).decode(),
            "signatures": [{"keyid": key_id(private_key.public_key()), "sig": base64.b64encode(signature).decode()}]}


#: an envelope is a few KiB; anything much larger is refused before it is parsed
MAX_ENVELOPE_BYTES = 64 * 1024


def verify(envelope: Any, trust: TrustPolicy, *, subject_uri: str | None = None,
           artifacts_sha256: str | None = None, report_sha256: str | None = None,
           identity: dict[str, Any] | None = None, now: dt.datetime | None = None) -> dict[str, Any]:
    """The statement, if every check holds; else :class:`AttestationError` naming the first that fails.
    ``identity``: the registry's record of the version (:func:`version_identity`), compared with the
    subject's annotations."""
    from cryptography.exceptions import InvalidSignature

    if isinstance(envelope, (str, bytes)):
        if len(envelope) > MAX_ENVELOPE_BYTES:
            raise AttestationError(f"the attestation is {len(envelope)} bytes, more than {MAX_ENVELOPE_BYTES}")
        try:
            envelope = json.loads(envelope)
        except ValueError:
            raise AttestationError("the attestation is not valid JSON (truncated or corrupted)") from None
    try:
        payload = base64.b64decode(envelope["payload"], validate=True)
        signatures = envelope["signatures"]
        if envelope["payloadType"] != PAYLOAD_TYPE:
            raise AttestationError(f"unexpected payload type {str(envelope['payloadType'])[:80]!r}")
    except (KeyError, TypeError, ValueError):
        raise AttestationError("the attestation is not a DSSE envelope (truncated or corrupted)") from None
    if not isinstance(signatures, list):
        raise AttestationError("the attestation is not a DSSE envelope (truncated or corrupted)")
    by_id = {key_id(k): k for k in trust.public_keys}
    mine = [(s, by_id[s["keyid"]]) for s in signatures if isinstance(s, dict) and s.get("keyid") in by_id]
    if not mine:
        ids = ", ".join(i[:16] + "…" for i in by_id)
        raise AttestationError(f"not signed by a trusted key (key ids {ids}): wrong key")
    try:
        sig, key = mine[0]
        key.verify(base64.b64decode(sig["sig"], validate=True), pae(PAYLOAD_TYPE, payload))
    except (InvalidSignature, ValueError, KeyError, TypeError):
        raise AttestationError("the signature does not match the content: the attestation was tampered with") from None
    try:  # signed, so written by a trusted signer: a malformed one is still refused, not a crash
        statement = json.loads(payload)
        subject, predicate = statement["subject"][0], statement["predicate"]
        name, digest = subject["name"], subject["digest"]["sha256"]
        issued = dt.datetime.fromisoformat(predicate["issued_at"])
    except (ValueError, KeyError, TypeError, IndexError):
        raise AttestationError("the signed statement is malformed (no subject, digest or issued_at)") from None
    if subject_uri is not None and name != subject_uri:
        raise AttestationError(f"the attestation is for {name}, not {subject_uri}")
    if identity is not None:
        _check_identity(subject.get("annotations"), identity, name)
    if artifacts_sha256 is not None and digest != artifacts_sha256:
        raise AttestationError("the model version's artifacts changed since they were validated "
                               f"(attested sha256 {str(digest)[:16]}…, now {artifacts_sha256[:16]}…)")
    if trust.allowed_policies and predicate.get("policy_sha256") not in trust.allowed_policies:
        raise AttestationError(f"the attestation was made under policy {str(predicate.get('policy_name'))[:80]!r} "
                               f"sha256 {str(predicate.get('policy_sha256'))[:16]}…, which is not on the allow-list")
    if issued.tzinfo is None:
        raise AttestationError("the attestation's issued_at has no time zone")
    now = now or dt.datetime.now(dt.timezone.utc)
    if issued - now > trust.clock_skew:
        raise AttestationError(f"the attestation is dated in the future: issued {issued.isoformat()}, "
                               f"now {now.isoformat(timespec='seconds')} (allowed skew {trust.clock_skew})")
    if now - issued > trust.max_age:
        raise AttestationError(f"the attestation expired: issued {issued.isoformat()}, older than {trust.max_age}")
    if report_sha256 is not None and predicate.get("report_sha256") != report_sha256:
        raise AttestationError("the report does not match the attested digest: report.json was changed")
    return statement


def _check_identity(annotations: Any, identity: dict[str, Any], name: str) -> None:
    if not isinstance(annotations, dict):
        raise AttestationError(f"the attestation for {name} does not name the version's identity (made by an "
                               "older gate): validate the version again")
    attested, expected = version_identity(annotations), version_identity(identity)
    for key in IDENTITY_KEYS:
        if attested[key] != expected[key]:
            raise AttestationError(f"the attestation is for another version that was {name} (renamed in, "
                                   f"re-created or copied): its {key} is {str(attested[key])[:80]!r}, the "
                                   f"registry's {str(expected[key])[:80]!r}")


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
