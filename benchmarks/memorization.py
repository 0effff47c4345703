"""Controlled-duplication benchmark on the shipped data (the paper's Table 4 protocol).

Train and test are different synthetic subjects (seeded deformations of the real MNI152 template in
nilearn): 10 train subjects and 10 test subjects, 25 axial slices each (500 slices, as in the paper).
5/15/30/45 % of the test slices are replaced by distinct train slices under each of the paper's 8
conditions (flips always applied). Prints per-sample AUC per condition (mean / min over the 4
levels), the set-level response per level, and each extractor's speed.

    python benchmarks/memorization.py [--quick]
"""

from __future__ import annotations

import argparse
import time

from gate_plugins.memorization.benchmark import render_tables, run_benchmark
from gate_plugins.memorization.extractors import build_extractor
from gate_plugins.mri.subjects import subject_slices


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="4+4 subjects, 2 extractor variants")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    n_subj = 4 if args.quick else 10
    t0 = time.perf_counter()
    train, _ = subject_slices(range(1, 1 + n_subj), 25)
    test, _ = subject_slices(range(101, 101 + n_subj), 25)
    variants = [("efficientnet-lite0", 2.0), ("efficientnet-lite0", 0.0)]
    if not args.quick:
        variants += [("scattering-j3l8", 2.0), ("scattering-j3l8", 0.0)]
    extractors = []
    for name, sigma in variants:
        ext = build_extractor(name, None, sigma)
        ext.name = f"{name} (prefilter {sigma:g})"
        extractors.append(ext)
    result = run_benchmark(train, test, extractors, seed=args.seed)
    print(f"train {len(train)} slices ({n_subj} subjects), test {len(test)} slices ({n_subj} other subjects), "
          f"seed {args.seed}, MI threshold 3.0\n")
    print(render_tables(result))
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
