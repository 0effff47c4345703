"""Power curve of the memorization check's set-level decision: how often a generator that copies a
share of its samples is refused, over seeds, for gate's default policy and for the paper's rule.

Data as the demo: train = 8 subjects x 24 axial slices (192). Each seed draws its own holdout (4 of 20
holdout subjects, 96 slices) and its own candidate set: ``n_samples`` slices, each a copy with
probability ``copy_rate`` (a train slice under one of the paper's 8 conditions, drawn at random) and
otherwise a slice of 20 novel subjects. Scores are computed once per image by the real detector and the
decision is recomputed per seed by the same functions the validator calls, so each row is the decision
the validator would take.

Decisions compared:
- gate default (policies/default.yaml): retrieval + verification, tail p-values, block rules
  copying_detected (alpha 0.01), fraction_flagged <= 0.05, copied_fraction <= 0.15, 64 samples; the
  same rules at 128 samples;
- the previous default: retrieval only, conformal p-values, fraction_flagged and copied_fraction, 64 samples;
- the paper: mean ONI < 0.68 (its universal threshold used on the set mean) with its train-halves null,
  plain matching and the paper's whitening.

    python benchmarks/memorization_power.py [--seeds 100]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from gate_plugins.memorization import maths
from gate_plugins.memorization.contamination import CONDITIONS
from gate_plugins.memorization.detector import Detector
from gate_plugins.memorization.extractors import build_extractor
from gate_plugins.mri.subjects import subject_slices

RATES = (0.0, 0.01, 0.02, 0.05, 0.10, 0.20)
PER_SUBJECT = 24


def default_decision(s, v, null_s, null_v, alpha=0.01, fdr=0.05):
    """The default policy's memorization block rules, as the validator computes them."""
    z, zn = maths.fisher_z(s), maths.fisher_z(null_s)
    p_r = maths.tail_p_values(z, zn, maths.fit_tail(zn))
    zv, znv = maths.fisher_z(v), maths.fisher_z(null_v)
    p = maths.bonferroni_pair(p_r, maths.tail_p_values(zv, znv, maths.fit_tail(znv)))
    set_p = maths.set_test_p_value(maths.simes_p_value(p), maths.count_test_p_value(s, null_s)[1])
    flagged = maths.benjamini_hochberg(p, fdr).mean()
    return set_p <= alpha or flagged > 0.05 or maths.copy_evidence(p).mean() > 0.15


def previous_decision(s, null_s, fdr=0.05):
    p = maths.conformal_p_values(s, null_s)
    return maths.benjamini_hochberg(p, fdr).mean() > 0.05 or maths.copy_evidence(p).mean() > 0.15


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=100)
    args = ap.parse_args()
    t0 = time.perf_counter()
    train, _ = subject_slices(range(1, 9), PER_SUBJECT)
    holdout_pool, _ = subject_slices(range(201, 221), PER_SUBJECT)
    novel, _ = subject_slices(range(301, 321), PER_SUBJECT)
    rng = np.random.default_rng(12)
    names = list(CONDITIONS)
    src = rng.integers(len(train), size=400)
    cond = rng.integers(len(names), size=400)
    copies = np.stack([np.clip(CONDITIONS[names[c]](train[i].astype(np.float64), rng), 0, 1)
                       for i, c in zip(src, cond)]).astype(np.float32)

    gate = Detector(build_extractor("efficientnet-lite0", None, 2.0), "dihedral")
    gate.fit(train, calibration=holdout_pool[:4 * PER_SUBJECT])  # the verified null is recomputed per seed below
    scored = {}
    for label, images in (("holdout", holdout_pool), ("novel", novel), ("copies", copies)):
        layers = gate.features(images)
        sc = gate.index_.score(layers)
        scored[label] = (sc.similarity, gate.verify(images, layers).similarity)
    fit_s = time.perf_counter() - t0

    paper = Detector(build_extractor("efficientnet-lite0", None, 2.0), "none", covariance="empirical",
                     nuisance_copies=0, verify_k=0, tail=False)
    paper.fit(train)
    oni = {k: paper.index_.score(paper.features(x)).oni for k, x in (("novel", novel), ("copies", copies))}

    rows = []
    for rate in RATES:
        refused = {"gate rules, 128 samples": 0, "gate default (64)": 0, "previous default (64)": 0, "paper ONI<0.68 (128)": 0}
        for seed in range(args.seeds):
            r = np.random.default_rng(1000 + seed)
            subj = r.choice(20, 4, replace=False)
            hold = np.concatenate([np.arange(s * PER_SUBJECT, (s + 1) * PER_SUBJECT) for s in subj])
            null_s, null_v = scored["holdout"][0][hold], scored["holdout"][1][hold]
            for label, m in (("gate rules, 128 samples", 128), ("gate default (64)", 64), ("previous default (64)", 64),
                             ("paper ONI<0.68 (128)", 128)):
                k = r.binomial(m, rate)
                ni, ci = r.choice(len(novel), m - k, replace=False), r.choice(len(copies), k, replace=False)
                s = np.r_[scored["novel"][0][ni], scored["copies"][0][ci]]
                v = np.r_[scored["novel"][1][ni], scored["copies"][1][ci]]
                if label.startswith("gate"):
                    refused[label] += default_decision(s, v, null_s, null_v)
                elif label.startswith("previous"):
                    refused[label] += previous_decision(s, null_s)
                else:
                    refused[label] += np.r_[oni["novel"][ni], oni["copies"][ci]].mean() < 0.68
        rows.append((rate, {k: v / args.seeds for k, v in refused.items()}))

    print(f"train 192 slices (8 subjects); per seed a holdout of 4 of 20 subjects (96 slices) and candidates from "
          f"20 novel subjects, copies under the paper's 8 conditions; {args.seeds} seeds; scoring "
          f"{fit_s:.0f} s\n")
    labels = list(rows[0][1])
    print("Share of seeds refused, by copy rate\n")
    print("| copy rate | " + " | ".join(labels) + " |")
    print("|---|" + "---|" * len(labels))
    for rate, res in rows:
        print(f"| {rate:.0%} | " + " | ".join(f"{res[k]:.2f}" for k in labels) + " |")
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
