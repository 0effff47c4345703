"""An append-only audit log whose entries are hash-chained (JSON Lines).

Each line is ``{"seq", "time", "event", "data", "prev", "hash"}`` where ``hash`` is the sha256 of the
canonical JSON of the entry without ``hash``, and ``prev`` is the previous entry's ``hash`` (64 zeros for
the first). Altering, removing, inserting or reordering a line breaks the chain at that line. Cutting
lines off the end leaves a shorter valid chain, which only a copy of the head kept elsewhere reveals:
:func:`verify_audit_log` takes one (``gate audit verify --head``) and the service prints the head on
every start.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import fcntl
import hashlib
import json
import os
import threading
from pathlib import Path
from typing import Any

GENESIS = "0" * 64


class AuditError(Exception):
    """The log is broken; the message names the line."""


@dataclasses.dataclass(frozen=True)
class AuditHead:
    entries: int
    head: str  # hash of the last entry (GENESIS when empty)


def canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def entry_hash(entry: dict[str, Any]) -> str:
    return hashlib.sha256(canonical({k: v for k, v in entry.items() if k != "hash"})).hexdigest()


def _last_line(fh) -> bytes | None:
    fh.seek(0, os.SEEK_END)
    end = fh.tell()
    if end == 0:
        return None
    pos, buf = end, b""
    while pos > 0:
        step = min(4096, pos)
        pos -= step
        fh.seek(pos)
        buf = fh.read(step) + buf
        if buf.count(b"\n") >= 2 or pos == 0:
            break
    if not buf.endswith(b"\n"):
        raise AuditError("the last line is incomplete (a write was cut off): run `gate audit verify`")
    return buf[:-1].rsplit(b"\n", 1)[-1]


class AuditLog:
    """Appends are serialised by a thread lock and an exclusive ``flock`` (other processes), and each line
    is flushed and fsync'ed before :meth:`append` returns."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def append(self, event: str, /, **data: Any) -> dict[str, Any]:
        with self._lock, open(self.path, "a+b") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                last = _last_line(fh)
                prev = json.loads(last) if last else None
                entry = {"seq": prev["seq"] + 1 if prev else 0,
                         "time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="microseconds"),
                         "event": event, "data": data, "prev": prev["hash"] if prev else GENESIS}
                entry["hash"] = entry_hash(entry)
                fh.seek(0, os.SEEK_END)
                fh.write(canonical(entry) + b"\n")
                fh.flush()
                os.fsync(fh.fileno())
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)
        return entry

    def entries(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_bytes().splitlines() if line.strip()]


def verify_audit_log(path: Path, expected_head: str | None = None) -> AuditHead:
    """Walk the chain; :class:`AuditError` at the first broken line. With ``expected_head`` (a hash
    recorded earlier) the log must still contain that entry, so lines cut off the end are caught."""
    path = Path(path)
    if not path.is_file():
        raise AuditError(f"{path}: no such audit log")
    raw = path.read_bytes()
    if raw and not raw.endswith(b"\n"):
        raise AuditError(f"{path}: line {len(raw.splitlines())}: incomplete (a write was cut off)")
    prev, seen_expected, n = GENESIS, expected_head is None, 0
    for n, line in enumerate(raw.splitlines(), start=1):
        where = f"{path}: line {n}"
        try:
            entry = json.loads(line)
            stated, seq, linked = entry["hash"], entry["seq"], entry["prev"]
        except (ValueError, KeyError, TypeError):
            raise AuditError(f"{where}: not an audit entry") from None
        if entry_hash(entry) != stated:
            raise AuditError(f"{where}: entry altered (its hash does not match its content)")
        if linked != prev or seq != n - 1:
            raise AuditError(f"{where}: chain broken (an entry before it was removed, inserted or reordered)")
        prev = stated
        seen_expected = seen_expected or stated == expected_head
    if not seen_expected:
        raise AuditError(f"{path}: the recorded head {expected_head[:16]}… is not in the log (entries were cut "
                         f"off the end, or the log was replaced)")
    return AuditHead(n, prev)
