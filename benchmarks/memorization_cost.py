"""Cost of the memorization check with and without verification: 500 candidate samples against 1,000
train slices, a holdout of 100, the self-check's 48 planted copies, on the shipped data.

Today's cost before verification existed is the "retrieval only" row (``verify_k: 0``). The reference
features (every train image under the 8 dihedral transforms, plus 2 misaligned copies) are computed
once, cold, and then read from the content-addressed cache, so each row's fit is split into that
shared cold part and the rest; "cold total" adds them, as a first validation of a new train set pays.

    python benchmarks/memorization_cost.py [--train 1000] [--samples 500]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from gate_plugins.memorization.detector import Detector
from gate_plugins.toolkit.extractors import build_extractor
from gate_plugins.mri.subjects import subject_slices

PER_SUBJECT = 25


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--train", type=int, default=1000)
    ap.add_argument("--samples", type=int, default=500)
    args = ap.parse_args()
    train, _ = subject_slices(range(1, 1 + args.train // PER_SUBJECT), PER_SUBJECT)
    holdout, holdout_ids = subject_slices(range(201, 205), PER_SUBJECT)
    groups = [i.split("_")[0] for i in holdout_ids]
    cand, _ = subject_slices(range(301, 301 + args.samples // PER_SUBJECT), PER_SUBJECT)
    planted = train[np.random.default_rng(0).choice(len(train), 48, replace=False)][:, ::-1].copy()
    print(f"train {len(train)}, holdout {len(holdout)} ({len(set(groups))} subjects), candidates {len(cand)}, "
          f"48 planted copies; torch threads {torch.get_num_threads()}\n")
    rows = []
    with tempfile.TemporaryDirectory() as cache:
        ext = build_extractor("efficientnet-lite0", None, 2.0)
        cold = Detector(ext, cache_dir=Path(cache), verify_k=0)
        _, reference_s = timed(lambda: cold.reference_features(train))
        for label, settings in (("retrieval only (verify_k: 0)", {"verify_k": 0}),
                                ("verify, membership contrast (default)", {}),
                                ("verify, train similarity only", {"verify_contrast": False})):
            det = Detector(ext, cache_dir=Path(cache), **settings)
            _, fit_s = timed(lambda: det.fit(train, calibration=holdout, calibration_groups=groups))
            assert det.cache_hit_
            _, score_s = timed(lambda: det.score(cand))
            _, planted_s = timed(lambda: det.score(planted))
            rows.append((label, fit_s, score_s, planted_s, reference_s + fit_s + score_s + planted_s))
    base = rows[0][4]
    print("| variant | fit, cached reference (s) | 500 candidates (s) | 48 planted (s) | cold total (s) | × retrieval only |")
    print("|---|---|---|---|---|---|")
    for label, fit_s, score_s, planted_s, total in rows:
        print(f"| {label} | {fit_s:.1f} | {score_s:.1f} | {planted_s:.1f} | {total:.1f} | {total / base:.2f} |")
    print(f"\ncold reference features (shared): {reference_s:.1f} s")


if __name__ == "__main__":
    main()
