"""An append-only audit log whose entries are keyed and chained (JSON Lines).

Each line is ``{"v": 2, "seq", "time", "event", "data", "prev", "mac"}`` where ``mac`` is the
HMAC-SHA256, under the service's audit key, of the canonical JSON of the entry without ``mac``, and
``prev`` is the previous entry's ``mac`` (64 zeros for the first). A plain hash chain could be recomputed
by anyone who can write the file (the previous format did exactly that); a MAC can be recomputed only with
the key, which lives in a file of its own (mode 600) that validation children are never given. So
altering, removing, inserting or reordering a line, or redoing the chain after such an edit, breaks it at
that line. Cutting lines off the end leaves a shorter valid chain, which only a copy of the head kept
elsewhere reveals: :func:`verify_audit_log` takes one (``gate audit verify --head``); the service logs
the head at start and stop and writes it to ``audit.head`` beside the log.

Migration: a log of the previous, unkeyed format is refused (its entries prove nothing about who wrote
them); move it aside as an archive and start the service again, which creates a new keyed log and key.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import fcntl
import hashlib
import hmac
import json
import os
import re
import secrets
import stat
import threading
from pathlib import Path
from typing import Any

from gate.errors import ConfigError, Refusal

GENESIS = "0" * 64
FORMAT = 2
KEY_BYTES = 32
MAX_KEY_FILE_BYTES = 4096  # a key file is 65 bytes; anything much larger is not one (checked before reading)


class AuditError(Refusal):
    """The log is broken or not ours to trust (exit 1); the message names the line."""


@dataclasses.dataclass(frozen=True)
class AuditHead:
    entries: int
    head: str  # MAC of the last entry (GENESIS when empty)


def canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def entry_mac(key: bytes, entry: dict[str, Any]) -> str:
    return hmac.new(key, canonical({k: v for k, v in entry.items() if k != "mac"}), hashlib.sha256).hexdigest()


def key_id(key: bytes) -> str:
    """A short public name for the key (recorded in ``service.started``): says which key signed a log
    without revealing it."""
    return hmac.new(key, b"gate audit key id", hashlib.sha256).hexdigest()[:16]


def open_audit_key(path: Path, create: bool) -> bytes:
    """The audit key in ``path`` (hex text), created (mode 600, 32 random bytes) when absent and ``create``.
    :class:`ConfigError` when it is missing, too large, not hex or readable by group or others."""
    path = Path(path)
    if create:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:  # O_EXCL: never overwrite a key, whose loss would make the log unverifiable
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_hex(KEY_BYTES) + "\n")
    try:
        st = path.stat()
    except OSError:
        raise ConfigError(f"{path}: no audit key (give --audit-key-file, the key the log was written with)") from None
    if stat.S_IMODE(st.st_mode) & 0o077:
        raise ConfigError(f"{path}: the audit key is readable by group or others (mode "
                          f"{stat.S_IMODE(st.st_mode):o}): chmod 600 it")
    if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_KEY_FILE_BYTES:
        raise ConfigError(f"{path}: not an audit key (a regular file of at most {MAX_KEY_FILE_BYTES} bytes)")
    try:
        key = bytes.fromhex(path.read_text(encoding="ascii").strip())
    except (OSError, ValueError):
        raise ConfigError(f"{path}: not an audit key (hex text expected)") from None
    if len(key) < KEY_BYTES:
        raise ConfigError(f"{path}: the audit key is {len(key)} bytes; at least {KEY_BYTES} are needed")
    return key


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
    is flushed and fsync'ed before :meth:`append` returns. Without a key the log can only be read."""

    def __init__(self, path: Path, key: bytes | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._key = key
        self._lock = threading.Lock()

    def _previous(self, last: bytes | None) -> dict[str, Any] | None:
        """The last entry, checked: chaining onto a line someone without the key wrote would vouch for it."""
        if last is None:
            return None
        try:
            prev = json.loads(last)
            ok = prev.get("v") == FORMAT and hmac.compare_digest(str(prev["mac"]), entry_mac(self._key, prev))
        except (ValueError, KeyError, TypeError, AttributeError):
            ok = False
        if not ok:
            raise AuditError(f"{self.path}: the last line is not an entry keyed with this log's key (written by "
                             f"someone else, or the previous unkeyed format): run `gate audit verify`")
        return prev

    def append(self, event: str, /, **data: Any) -> dict[str, Any]:
        if self._key is None:
            raise AuditError(f"{self.path}: opened without its key; it can be read, not appended to")
        with self._lock, open(self.path, "a+b") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                prev = self._previous(_last_line(fh))
                entry = {"v": FORMAT, "seq": prev["seq"] + 1 if prev else 0,
                         "time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="microseconds"),
                         "event": event, "data": data, "prev": prev["mac"] if prev else GENESIS}
                entry["mac"] = entry_mac(self._key, entry)
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


def verify_audit_log(path: Path, key: bytes, expected_head: str | None = None) -> AuditHead:
    """Walk the chain; :class:`AuditError` at the first broken line. With ``expected_head`` (a head
    recorded earlier) the log must still contain that entry, so lines cut off the end are caught."""
    path = Path(path)
    if expected_head is not None and not re.fullmatch(r"[0-9a-f]{64}", expected_head):
        raise AuditError("the expected head is not a head (64 lowercase hex digits, as the service prints it)")
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
            if not isinstance(entry, dict):
                raise TypeError
            if "mac" not in entry and "hash" in entry:
                raise AuditError(f"{where}: an unkeyed entry (the format before keyed entries, which anyone could "
                                 f"recompute): move the log aside as an archive; the service starts a new keyed one")
            stated, seq, linked = str(entry["mac"]), entry["seq"], entry["prev"]
        except (ValueError, KeyError, TypeError):
            raise AuditError(f"{where}: not an audit entry") from None
        if entry.get("v") != FORMAT or not hmac.compare_digest(entry_mac(key, entry), stated):
            raise AuditError(f"{where}: entry altered, or not written with this key (its MAC does not match)")
        if linked != prev or seq != n - 1:
            raise AuditError(f"{where}: chain broken (an entry before it was removed, inserted or reordered)")
        prev = stated
        seen_expected = seen_expected or hmac.compare_digest(stated, expected_head)
    if not seen_expected:
        raise AuditError(f"{path}: the recorded head {expected_head[:16]!r}… is not in the log (entries were cut "
                         f"off the end, or the log was replaced)")
    return AuditHead(n, prev)


def unkeyed_format(path: Path) -> bool:
    """Whether the log starts with an entry of the previous, unkeyed format (asked before its key is)."""
    with open(path, "rb") as fh:
        line = fh.readline(1 << 16)
    try:
        entry = json.loads(line)
    except ValueError:
        return False
    return isinstance(entry, dict) and "hash" in entry and "mac" not in entry


def head_path(log_path: Path) -> Path:
    return Path(log_path).with_suffix(".head")


def write_head(log_path: Path, head: str, entries: int, event: str) -> None:
    """Publish the head beside the log (atomically). A convenience for the next start: someone who can
    write the folder can put back an older head file, so a copy kept elsewhere stays the real anchor."""
    target = head_path(log_path)
    tmp = target.with_name(target.name + f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"head": head, "entries": entries, "event": event}) + "\n")
    os.replace(tmp, target)


def read_head(log_path: Path) -> str | None:
    """The head published beside the log, None when there is none; :class:`AuditError` when unreadable."""
    target = head_path(log_path)
    if not target.exists():
        return None
    try:
        if target.stat().st_size > 4096:
            raise ValueError
        head = json.loads(target.read_text(encoding="utf-8"))["head"]
        if not (isinstance(head, str) and len(head) == 64):
            raise ValueError
        return head
    except (OSError, ValueError, KeyError, TypeError):
        raise AuditError(f"{target}: not a head file written by gate serve") from None
