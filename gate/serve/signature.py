"""Checking an MLflow webhook delivery: the ``X-MLflow-Signature`` HMAC, its timestamp, its payload.

MLflow signs ``"{delivery_id}.{timestamp}.{raw body}"`` with HMAC-SHA256 and sends ``v1,<base64>``
(the Standard-Webhooks form, where several space-separated signatures may appear while a secret is
rotated). A retry resends the same request, so the same delivery id, timestamp and signature: replay
protection therefore remembers only deliveries that were *accepted* (see :mod:`gate.serve.jobstore`).
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import json
from typing import Any, Mapping

from gate.errors import Refusal

SIGNATURE_HEADER = "x-mlflow-signature"
DELIVERY_HEADER = "x-mlflow-delivery-id"
TIMESTAMP_HEADER = "x-mlflow-timestamp"


class DeliveryRejected(Refusal):
    """The delivery is not to be trusted or not understood; ``status`` is the HTTP answer (4xx, so that
    MLflow does not retry it), ``kind`` a short fixed name for the reason (refusals are counted by it)."""

    def __init__(self, reason: str, status: int = 401, kind: str = "signature") -> None:
        super().__init__(reason)
        self.status, self.kind = status, kind


@dataclasses.dataclass(frozen=True)
class Delivery:
    delivery_id: str
    timestamp: int
    event: str  # "entity.action", e.g. "model_version.created"
    data: dict[str, Any]


def sign(secret: str, delivery_id: str, timestamp: str, body: bytes) -> str:
    mac = hmac.new(secret.encode(), f"{delivery_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def verify_delivery(secret: str, headers: Mapping[str, str], body: bytes, now: float,
                    tolerance_s: float = 300) -> Delivery:
    """The verified delivery, or :class:`DeliveryRejected` saying why. ``body`` must be the raw bytes
    received: a re-serialised JSON object would not match the signature."""
    h = {k.lower(): v for k, v in headers.items()}
    signatures, delivery_id, ts = (h.get(k, "") for k in (SIGNATURE_HEADER, DELIVERY_HEADER, TIMESTAMP_HEADER))
    if not signatures:
        raise DeliveryRejected("unsigned delivery (no X-MLflow-Signature): create the webhook with a secret",
                               kind="unsigned")
    if not delivery_id or not ts:
        raise DeliveryRejected("missing X-MLflow-Delivery-Id or X-MLflow-Timestamp", kind="headers")
    try:
        timestamp = int(ts)
    except ValueError:
        raise DeliveryRejected(f"X-MLflow-Timestamp {ts[:40]!r} is not unix seconds", kind="timestamp") from None
    # the signature first: an unauthenticated sender learns nothing about the clock window
    expected = sign(secret, delivery_id, ts, body)
    if not any(hmac.compare_digest(s.strip(), expected) for s in signatures.split(" ") if s.startswith("v1,")):
        raise DeliveryRejected("bad signature (wrong secret, or the body was altered)")
    if abs(now - timestamp) > tolerance_s:
        raise DeliveryRejected(f"stale delivery: timestamp {timestamp} is {abs(now - timestamp):.0f} s from now "
                               f"(tolerance {tolerance_s:.0f} s)", kind="stale")
    try:
        payload = json.loads(body)
        event = f"{payload['entity']}.{payload['action']}"
        data = payload["data"]
        if not isinstance(data, dict):
            raise TypeError("data is not an object")
    except (ValueError, KeyError, TypeError) as exc:
        raise DeliveryRejected(f"payload is not an MLflow webhook event ({type(exc).__name__}: {str(exc)[:80]})", 400,
                               "payload") from None
    return Delivery(delivery_id, timestamp, event, data)
