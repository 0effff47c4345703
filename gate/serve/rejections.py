"""Refused webhook deliveries: a budget per remote address (429 beyond it) and coalesced audit entries.

Every audit line is fsync'ed, so one line per refused delivery would let anyone who can reach the port
grow the log, and spend the disk, at network speed. Instead, per window (``window_s``), the first refusal
of each kind is recorded in full (``delivery.rejected``) and the rest are counted, then written as one
``delivery.rejected.summary`` when the window closes (on the next refusal after it, on :meth:`flush`
from the service's ticker, and at stop). Accepted deliveries are never counted here: each keeps its own
entry. Refusals also spend a remote's tokens; a remote without tokens is answered 429 before its body
is read (MLflow retries 429, honouring ``Retry-After``).
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import threading
from typing import Any

from gate.serve.audit import AuditLog

OTHER = "(other)"


def printable(text: str, limit: int = 64) -> str:
    """A header value as it may go into the log: cut to ``limit``, control characters replaced."""
    return "".join(c if c.isprintable() else "?" for c in str(text)[:limit])


@dataclasses.dataclass
class _Bucket:
    tokens: float
    at: float


@dataclasses.dataclass
class _Window:
    start: float
    by_reason: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    by_remote: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    recorded: set = dataclasses.field(default_factory=set)  # kinds already written in full


class Rejections:
    """Thread-safe; one per service. ``burst`` refusals per remote, refilled at ``per_s``."""

    def __init__(self, audit: AuditLog, burst: int = 20, per_s: float = 0.5, window_s: float = 60.0,
                 max_remotes: int = 1024, listed_remotes: int = 16) -> None:
        self.audit, self.burst, self.per_s, self.window_s = audit, burst, per_s, window_s
        self.max_remotes, self.listed_remotes = max_remotes, listed_remotes
        self._buckets: collections.OrderedDict[str, _Bucket] = collections.OrderedDict()
        self._window: _Window | None = None
        self._lock = threading.Lock()

    def _bucket(self, remote: str, now: float) -> _Bucket:
        b = self._buckets.pop(remote, None) or _Bucket(float(self.burst), now)
        b.tokens, b.at = min(float(self.burst), b.tokens + max(0.0, now - b.at) * self.per_s), now
        self._buckets[remote] = b  # most recently used last; the table is bounded, oldest out first
        while len(self._buckets) > self.max_remotes:
            self._buckets.popitem(last=False)
        return b

    def admit(self, remote: str, now: float) -> float | None:
        """None when ``remote`` may be heard; else the seconds until it may (for ``Retry-After``)."""
        with self._lock:
            b = self._bucket(remote, now)
            return None if b.tokens >= 1 else (1 - b.tokens) / self.per_s

    def record(self, kind: str, now: float, remote: str, **detail: Any) -> None:
        """Count one refusal of ``kind`` (and spend one of the remote's tokens, unless it was refused for
        having none); the first of its kind in the window is audited in full."""
        with self._lock:
            if kind != "rate_limited":
                b = self._bucket(remote, now)
                b.tokens = max(0.0, b.tokens - 1)
            if self._window is not None and now - self._window.start >= self.window_s:
                self._close()
            w = self._window = self._window or _Window(now)
            w.by_reason[kind] += 1
            w.by_remote[remote if remote in w.by_remote or len(w.by_remote) < self.max_remotes else OTHER] += 1
            if kind not in w.recorded:
                w.recorded.add(kind)
                self.audit.append("delivery.rejected", kind=kind, remote=remote, **detail)

    def flush(self, now: float, force: bool = False) -> None:
        """Close the window when it is over (or ``force``), writing its summary if anything was only counted."""
        with self._lock:
            if self._window is not None and (force or now - self._window.start >= self.window_s):
                self._close()

    def _close(self) -> None:
        w, self._window = self._window, None
        total = sum(w.by_reason.values())
        if total <= len(w.recorded):  # every refusal already has its own line
            return
        listed = dict(w.by_remote.most_common(self.listed_remotes))
        self.audit.append("delivery.rejected.summary",
                          since=dt.datetime.fromtimestamp(w.start, dt.timezone.utc).isoformat(timespec="seconds"),
                          window_s=self.window_s, total=total, recorded_in_full=len(w.recorded),
                          by_reason=dict(sorted(w.by_reason.items())), by_remote=listed,
                          other_remotes=sum(w.by_remote.values()) - sum(listed.values()))
