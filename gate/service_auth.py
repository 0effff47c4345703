"""The gate service's identity at the guard: an HMAC-signed request header.

``gate serve`` must be able to take a protected alias off a version that lost its attestation (the
guard refuses that to everyone else). The service and the guard share a key file that nobody else
reads (``GATE_GUARD_SERVICE_KEY_FILE`` at the guard, ``gate serve --guard-key-file``); the service
signs the exact request it sends: the time, a fresh nonce, the method, the path, the query and the
sha256 of the body. The guard accepts a signature only within :data:`WINDOW_S` of its own clock and
only once (the nonces of the window are remembered), so a captured header is worth nothing for another
request, later, or twice.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import re
import secrets
import threading
import time
from pathlib import Path

from gate.errors import ConfigError

HEADER = "X-Gate-Service-Auth"
#: how far the signing time may be from the guard's clock, either way
WINDOW_S = 60
#: at most this many nonces remembered; past it, signed requests are refused until older ones expire
MAX_REMEMBERED = 10_000
MIN_KEY_BYTES = 32
_VALUE = re.compile(r"^t=(?P<t>\d{1,12});n=(?P<n>[0-9a-f]{32});sig=(?P<sig>[0-9a-f]{64})$")


def load_service_key(path: Path) -> bytes:
    """The shared key: the file's bytes, surrounding whitespace removed; at least 32 bytes."""
    try:
        key = Path(path).read_bytes().strip()
    except OSError as exc:
        raise ConfigError(f"{str(path)[:200]}: cannot read the guard's service key ({exc.strerror})") from None
    if len(key) < MIN_KEY_BYTES:
        raise ConfigError(f"{str(path)[:200]}: the guard's service key is {len(key)} bytes, fewer than "
                          f"{MIN_KEY_BYTES} (make one with `head -c 32 /dev/urandom | base64 > FILE`)")
    return key


def _mac(key: bytes, timestamp: str, nonce: str, method: str, path: str, query: bytes, body: bytes) -> str:
    message = b"\n".join([b"gate-service-v1", timestamp.encode(), nonce.encode(), method.upper().encode(),
                          path.encode("utf-8", "surrogateescape"), query, hashlib.sha256(body).hexdigest().encode()])
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def sign_request(key: bytes, method: str, path: str, body: bytes, query: bytes = b"",
                 now: float | None = None) -> str:
    """The header value for one request."""
    timestamp, nonce = str(int(time.time() if now is None else now)), secrets.token_hex(16)
    return f"t={timestamp};n={nonce};sig={_mac(key, timestamp, nonce, method, path, query, body)}"


@dataclasses.dataclass
class NonceMemory:
    """The nonces seen within the window; one per guard process (a request seen by one worker can be
    replayed to another only within the window, and only as the very same request)."""

    seen: dict[str, float] = dataclasses.field(default_factory=dict)
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)

    def first_use(self, nonce: str, now: float) -> bool | None:
        """True the first time, False for a replay, None when the memory is full."""
        with self.lock:
            for old in [n for n, t in self.seen.items() if t < now - 2 * WINDOW_S]:
                del self.seen[old]
            if nonce in self.seen:
                return False
            if len(self.seen) >= MAX_REMEMBERED:
                return None
            self.seen[nonce] = now
            return True


def check_request(key: bytes, value: str, method: str, path: str, query: bytes, body: bytes,
                  memory: NonceMemory, now: float | None = None) -> str | None:
    """None when ``value`` is a fresh, valid service signature of this request; else why not."""
    now = time.time() if now is None else now
    m = _VALUE.match(value) if len(value) <= 200 else None
    if not m:
        return "the service signature header is malformed"
    if abs(now - int(m["t"])) > WINDOW_S:
        return f"the service signature is outside the {WINDOW_S} s window (stale, or clocks differ)"
    if not hmac.compare_digest(_mac(key, m["t"], m["n"], method, path, query, body), m["sig"]):
        return "the service signature does not match this request"
    first = memory.first_use(m["n"], now)
    if first is None:
        return "too many service requests within the window"
    return None if first else "the service signature was already used (replayed)"
