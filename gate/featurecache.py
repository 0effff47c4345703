"""A content-addressed store of arrays whose entries authenticate themselves.

Validators cache what costs minutes to recompute (reference features, baselines) under a key derived
from everything that produced them. Anyone who can write the folder could otherwise plant features
that make a copier look novel; so each entry carries an HMAC-SHA256, over its key and its bytes, made
with a secret kept in the folder (mode 600, created once). Candidate code never sees the folder (it
runs in the sandbox) and a forged or damaged entry is not trusted: :meth:`FeatureCache.load` reports it
as ``tampered`` and the caller recomputes and overwrites it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import io
import json
import os
import secrets
import uuid
from pathlib import Path
from typing import Literal

import numpy as np

KEY_FILE = ".hmac-key"
Status = Literal["hit", "miss", "tampered"]


def cache_key(**parts) -> str:
    """A key from everything that determines an entry's content (inputs' digests, code, parameters)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


@dataclasses.dataclass(frozen=True)
class Lookup:
    status: Status
    arrays: dict[str, np.ndarray] | None = None


class FeatureCache:
    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def _secret(self) -> bytes:
        """The folder's key, made on first use; two writers racing both end up with the winner's. A key
        file that is not one (damaged, planted) is replaced: every entry then reads as tampered."""
        path = self.folder / KEY_FILE
        try:
            key = path.read_bytes()
            if len(key) == 32:
                return key
        except FileNotFoundError:
            pass
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.folder / f".key-{uuid.uuid4().hex}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(secrets.token_bytes(32))
        try:
            if path.exists():
                os.replace(tmp, path)  # a bad key: replaced outright
            else:
                os.link(tmp, path)  # atomic: fails if another writer got there first
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
        return _read_key(path)

    def rotate_key(self) -> None:
        """Forget the key: every entry written until now reads as ``tampered`` and is recomputed. For
        after candidate code ran with the file system in view (isolation level ``process``)."""
        (self.folder / KEY_FILE).unlink(missing_ok=True)

    def _mac(self, key: str, body: bytes) -> str:
        return hmac.new(self._secret(), key.encode() + b"\0" + hashlib.sha256(body).digest(), "sha256").hexdigest()

    def load(self, key: str) -> Lookup:
        path = self.folder / f"{key}.npz"
        if not path.is_file():
            return Lookup("miss")
        try:
            body = path.read_bytes()
            stated = (self.folder / f"{key}.mac").read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError):
            return Lookup("tampered")
        if not hmac.compare_digest(stated, self._mac(key, body)):
            return Lookup("tampered")
        try:
            with np.load(io.BytesIO(body), allow_pickle=False) as data:
                return Lookup("hit", {k: data[k] for k in data.files})
        except Exception:  # noqa: BLE001 - authentic but unreadable (an older format): recompute
            return Lookup("tampered")

    def store(self, key: str, arrays: dict[str, np.ndarray]) -> None:
        """Write atomically (entry, then its MAC), so that a concurrent reader sees a whole entry or a
        mismatch it recomputes, never a half-written one it trusts."""
        self.folder.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        body = buf.getvalue()
        tag = uuid.uuid4().hex[:8]
        for name, data in ((f"{key}.npz", body), (f"{key}.mac", self._mac(key, body).encode())):
            tmp = self.folder / f".{name}.{tag}"
            tmp.write_bytes(data)
            os.replace(tmp, self.folder / name)


def _read_key(path: Path) -> bytes:
    key = path.read_bytes()
    if len(key) != 32:
        raise ValueError(f"{path}: not a cache key (expected 32 bytes); remove the cache folder to start afresh")
    return key
