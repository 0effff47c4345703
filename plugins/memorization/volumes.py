"""Per-volume memorization: a candidate volume whose flagged slices match consecutive slices of one
train volume, in order, is a copied volume. Slice ids follow the image reader: ``FILE#Z``."""

from __future__ import annotations

import dataclasses
from collections import Counter, defaultdict
from typing import Sequence

import numpy as np
from scipy import stats


@dataclasses.dataclass(frozen=True)
class VolumeMatch:
    volume: str
    n_slices: int
    n_flagged: int
    train_volume: str | None
    n_matched: int        # flagged slices whose nearest train slice lies in train_volume
    order_rho: float      # Spearman correlation of candidate z against matched train z (sign: flip)
    copied: bool


def _split(sample_id: str) -> tuple[str, int] | None:
    name, sep, z = sample_id.rpartition("#")
    return (name, int(z)) if sep and z.isdigit() else None


def copied_volumes(sample_ids: Sequence[str], nn_train_ids: Sequence[str], flagged: Sequence[bool], *,
                   min_fraction: float = 0.5, min_slices: int = 3, min_rho: float = 0.8) -> list[VolumeMatch]:
    """One row per candidate volume. Copied when at least ``min_fraction`` of its slices (and at least
    ``min_slices``) are flagged, most flagged slices match one train volume, and the matched train
    slices follow the candidate's slice order (|Spearman rho| >= ``min_rho``; either direction)."""
    groups: dict[str, list[tuple[int, str, bool]]] = defaultdict(list)
    for sid, nn, flag in zip(sample_ids, nn_train_ids, flagged):
        parsed = _split(sid)
        if parsed:
            groups[parsed[0]].append((parsed[1], nn, bool(flag)))
    out = []
    for volume, rows in sorted(groups.items()):
        hits = [(z, _split(nn)) for z, nn, flag in rows if flag and _split(nn)]
        train_volume, matched, rho = None, [], float("nan")
        if hits:
            train_volume = Counter(t[0] for _, t in hits).most_common(1)[0][0]
            matched = [(z, t[1]) for z, t in hits if t[0] == train_volume]
            if len(matched) >= 2:
                a, b = np.array(matched, dtype=float).T
                rho = float(stats.spearmanr(a, b).statistic) if a.std() > 0 and b.std() > 0 else float("nan")
        n_flagged = sum(flag for _, _, flag in rows)
        copied = (n_flagged >= max(min_slices, min_fraction * len(rows)) and len(matched) >= max(min_slices, n_flagged / 2)
                  and np.isfinite(rho) and abs(rho) >= min_rho)
        out.append(VolumeMatch(volume, len(rows), n_flagged, train_volume, len(matched), rho, bool(copied)))
    return out
