"""Power curve of the memorization check's set-level decision: how often a generator that copies a
share of its samples is refused, over seeds, for gate's default policy and for the paper's rule.

Data as the demo: train = 8 subjects x 24 axial slices (192). Each seed draws its own holdout (4 of 20
holdout subjects, 96 slices) and its own candidate set: ``n_samples`` slices, each a copy with
probability ``copy_rate`` (a train slice under one of the paper's 8 conditions, drawn at random) and
otherwise a slice of 20 novel subjects. Scores are computed once per image by the real detector and the
decision is recomputed per seed by the same functions the validator calls, so each row is the decision
the validator would take.

Decisions compared:
- gate default (policies/default.yaml): retrieval + verification scored by the membership contrast
  (against the seed's holdout, a holdout image's own subject excluded), tail p-values, block rules
  copying_detected (alpha 0.01), fraction_flagged <= 0.05, copied_fraction <= 0.15, 64 samples; the
  same rules at 128 samples; the same without the contrast (verification by the train similarity alone);
- the previous default: retrieval only, conformal p-values, fraction_flagged and copied_fraction, 64 samples;
- the paper: mean ONI < 0.68 (its universal threshold used on the set mean) with its train-halves null,
  plain matching and the paper's whitening.

    python benchmarks/memorization_power.py [--seeds 40]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from gate_plugins.memorization import maths
from gate_plugins.memorization.contamination import CONDITIONS
from gate_plugins.memorization.detector import Detector
from gate_plugins.toolkit.extractors import build_extractor
from gate_plugins.memorization.transforms import apply, transform_set
from gate_plugins.memorization.verification import verify_pairs
from gate_plugins.mri.subjects import subject_slices

RATES = (0.0, 0.01, 0.02, 0.05, 0.10, 0.20)
PER_SUBJECT = 24


def default_decision(s, v, null_s, null_v, alpha=0.01, fdr=0.05):
    """The default policy's memorization block rules, as the validator computes them; ``v`` and
    ``null_v`` are the verification statistic (the membership contrast, or the Fisher z of the
    similarity to train)."""
    z, zn = maths.fisher_z(s), maths.fisher_z(null_s)
    p_r = maths.tail_p_values(z, zn, maths.fit_tail(zn))
    p = maths.bonferroni_pair(p_r, maths.tail_p_values(v, null_v, maths.fit_tail(null_v)))
    refused = maths.set_test(p, s, null_s, alpha).copying_detected
    flagged = maths.benjamini_hochberg(p, fdr).mean()
    return refused or flagged > 0.05 or maths.copy_evidence(p).mean() > 0.15


class Contrast:
    """The membership contrast of any pool image against any seed's holdout (a subset of the holdout
    pool), by the detector's own retrieval; verified pairs are computed once and remembered."""

    def __init__(self, det: Detector, pool: np.ndarray, pool_views: list[np.ndarray], images: dict, embedded: dict,
                 to_train: dict):
        self.det, self.pool, self.pool_views, self.images, self.embedded = det, pool, pool_views, images, embedded
        self.to_train = to_train  # each image's aligned similarity to train (fixed: the train set is)
        self.memo: dict[tuple[str, int, int, int], float] = {}

    def statistic(self, hold: np.ndarray, label: str, rows: np.ndarray, exclude: np.ndarray | None = None) -> np.ndarray:
        """Contrast of ``images[label][rows]`` against the holdout ``pool[hold]``; ``exclude`` gives each
        query's subject (holdout queries) whose images are skipped."""
        import faiss

        index = faiss.IndexFlatIP(self.pool_views[0].shape[1])
        index.add(np.ascontiguousarray(np.concatenate([v[hold] for v in self.pool_views]), dtype=np.float32))
        excl = None if exclude is None else (np.asarray(exclude), hold // PER_SUBJECT)
        pairs = self.det.retrieve_pairs(self.embedded[label][rows], index, len(hold), excl)
        todo = sorted({(label, int(rows[j]), int(hold[i]), t) for j, found in enumerate(pairs) for i, t in found
                       if (label, int(rows[j]), int(hold[i]), t) not in self.memo})
        if todo:
            fns = transform_set(self.det.invariance)
            queries = np.stack([self.images[lab][j] for lab, j, _, _ in todo])
            refs = np.stack([apply(self.pool[g][None], fns[t][1])[0] for _, _, g, t in todo])
            for key, v in zip(todo, verify_pairs(queries, refs, settings=self.det.verify_settings).similarity):
                self.memo[key] = float(v)
        best = np.array([max(self.memo[(label, int(rows[j]), int(hold[i]), t)] for i, t in found) if found else 0.0
                         for j, found in enumerate(pairs)])
        return maths.membership_contrast(self.to_train[label][rows], best)


def previous_decision(s, null_s, fdr=0.05):
    p = maths.conformal_p_values(s, null_s)
    return maths.benjamini_hochberg(p, fdr).mean() > 0.05 or maths.copy_evidence(p).mean() > 0.15


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=40)
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
    # fitted once for the train side; the holdout side (null and contrast) is redone per seed below
    gate.fit(train, calibration=holdout_pool[:4 * PER_SUBJECT], calibration_groups=np.repeat(np.arange(4), PER_SUBJECT))
    scored, embedded = {}, {}
    for label, images in (("holdout", holdout_pool), ("novel", novel), ("copies", copies)):
        layers = gate.features(images)
        sc = gate.index_.score(layers)
        scored[label] = (sc.similarity, gate.verify(images, layers).similarity)
        embedded[label] = gate.embed(layers)
    pool_views = [embedded["holdout"]] + [gate.embed(gate.features(apply(holdout_pool, fn)))
                                          for _, fn in transform_set(gate.invariance)[1:]]
    contrast = Contrast(gate, holdout_pool, pool_views, {"holdout": holdout_pool, "novel": novel, "copies": copies},
                        embedded, {k: v[1] for k, v in scored.items()})
    fit_s = time.perf_counter() - t0

    paper = Detector(build_extractor("efficientnet-lite0", None, 2.0), "none", covariance="empirical",
                     nuisance_copies=0, verify_k=0, tail=False)
    paper.fit(train)
    oni = {k: paper.index_.score(paper.features(x)).oni for k, x in (("novel", novel), ("copies", copies))}

    rows = []
    for rate in RATES:
        refused = {"gate rules, 128 samples": 0, "gate default (64)": 0, "gate default without contrast (64)": 0,
                   "previous default (64)": 0, "paper ONI<0.68 (128)": 0}
        for seed in range(args.seeds):
            r = np.random.default_rng(1000 + seed)
            subj = r.choice(20, 4, replace=False)
            hold = np.concatenate([np.arange(s * PER_SUBJECT, (s + 1) * PER_SUBJECT) for s in subj])
            null_s, null_v = scored["holdout"][0][hold], scored["holdout"][1][hold]
            null_c = contrast.statistic(hold, "holdout", hold, exclude=hold // PER_SUBJECT)
            for label, m in (("gate rules, 128 samples", 128), ("gate default (64)", 64),
                             ("gate default without contrast (64)", 64), ("previous default (64)", 64),
                             ("paper ONI<0.68 (128)", 128)):
                k = r.binomial(m, rate)
                ni, ci = r.choice(len(novel), m - k, replace=False), r.choice(len(copies), k, replace=False)
                s = np.r_[scored["novel"][0][ni], scored["copies"][0][ci]]
                v = np.r_[scored["novel"][1][ni], scored["copies"][1][ci]]
                if "without contrast" in label:
                    refused[label] += default_decision(s, maths.fisher_z(v), null_s, maths.fisher_z(null_v))
                elif label.startswith("gate"):
                    c = np.r_[contrast.statistic(hold, "novel", ni), contrast.statistic(hold, "copies", ci)]
                    refused[label] += default_decision(s, c, null_s, null_c)
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
    print(f"\n{len(contrast.memo)} verified pairs for the contrast; total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
