"""A content-addressed cache of reference features: a second validation against the same train set
(same files, extractor, weights and preprocessing) reuses them instead of extracting again."""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path

import numpy as np


def cache_key(**parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def load(cache_dir: Path, key: str) -> dict[str, np.ndarray] | None:
    path = Path(cache_dir) / f"{key}.npz"
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except Exception:  # noqa: BLE001 - a damaged entry is recomputed, never trusted
        return None


def store(cache_dir: Path, key: str, arrays: dict[str, np.ndarray]) -> Path:
    """Write atomically, so that a concurrent reader sees either nothing or the whole entry."""
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / f"{key}.npz"
    tmp = cache_dir / f".{key}.{uuid.uuid4().hex[:8]}.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, path)
    return path
