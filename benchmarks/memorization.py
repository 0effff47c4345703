"""Controlled-duplication benchmark on the shipped data (the paper's Table 4 protocol, and more).

Subjects are seeded deformations of the real MNI152 template in nilearn: train subjects 1-10, test
subjects 101-110 (25 axial slices each: 500 slices, as the paper) and, for the holdout calibration,
subjects 201-205. 5/15/30/45 % of the test slices are replaced by distinct train slices under each
condition (flips always applied). Prints per-sample AUC and TPR at 1 % FPR per condition, the set-level
response, the false-positive rate on novel samples against its nominal level, and the cost.

    python benchmarks/memorization.py [--quick | --reduced]

``--reduced`` is the README's with/without-verification table: 4+4 subjects and a holdout of 4, all
conditions, levels 15 and 45 %, gate's default against retrieval only.
"""

from __future__ import annotations

import argparse
import time

from gate_plugins.memorization.benchmark import render_tables, run_benchmark
from gate_plugins.memorization.contamination import CONDITIONS, EXTRA_CONDITIONS
from gate_plugins.memorization.detector import Detector
from gate_plugins.toolkit.extractors import build_extractor
from gate_plugins.mri.subjects import subject_slices


def variant(extractor: str, prefilter: float, invariance: str, holdout: bool, nuisance_copies: int = 2,
            verify_k: int = 3, tail: bool = True) -> Detector:
    det = Detector(build_extractor(extractor, None, prefilter), invariance, nuisance_copies=nuisance_copies,
                   verify_k=verify_k, tail=tail)
    det.use_calibration = holdout
    return det


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="4+4 subjects, the paper's conditions")
    ap.add_argument("--reduced", action="store_true", help="4+4 subjects, holdout 4, all conditions, levels 15/45 %%, "
                                                          "default against retrieval only")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    n = 4 if args.quick or args.reduced else 10
    t0 = time.perf_counter()
    train, _ = subject_slices(range(1, 1 + n), 25)
    test, _ = subject_slices(range(101, 101 + n), 25)
    holdout, holdout_ids = subject_slices(range(201, 205 if args.reduced else 206), 25)
    variants = {
        "gate default": variant("efficientnet-lite0", 2.0, "dihedral", True),
        "retrieval only": variant("efficientnet-lite0", 2.0, "dihedral", True, verify_k=0),
        "paper-style": variant("efficientnet-lite0", 2.0, "none", False, nuisance_copies=0, verify_k=0, tail=False),
    }
    if args.reduced:
        variants.pop("paper-style")
    conditions = tuple(CONDITIONS) if args.quick else tuple(CONDITIONS) + tuple(EXTRA_CONDITIONS)
    levels = {"levels": (0.15, 0.45)} if args.reduced else {}
    result = run_benchmark(train, test, variants, calibration=holdout,
                           calibration_groups=[i.split("_")[0] for i in holdout_ids], conditions=conditions, **levels, seed=args.seed)
    print(f"train {len(train)} slices ({n} subjects), test {len(test)} ({n} other subjects), holdout "
          f"{len(holdout)} ({len(holdout) // 25} more subjects), 128x128, seed {args.seed}")
    paper = ("" if args.reduced else "; paper-style = the same extractor with plain matching, the paper's "
             "whitening, the train-halves null and conformal p-values")
    print("variants: gate default = EfficientNet-Lite0, 2 px prefilter, dihedral matching, nuisance whitening "
          "(2 misaligned copies per train image), holdout calibration, tail p-values, and the top 3 retrieved "
          "train images verified by registration, scored by the membership contrast (against the holdout's other "
          f"subjects); retrieval only = the same without verification{paper}. Each AUC ranks samples by the "
          "variant's own p-value (-log10 p)\n")
    print(render_tables(result))
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
