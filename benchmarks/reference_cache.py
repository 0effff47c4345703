"""Cost of the reference (train) side, first run against a second run that finds the cache.

1,000 train slices (40 synthetic subjects x 25 axial slices from the nilearn MNI152 template), the
default detector (EfficientNet-Lite0, 2 px prefilter, dihedral invariance: 8,000 reference images).
Prints the fit time of each run and the query throughput of extraction and search.

    python benchmarks/reference_cache.py [--train-subjects 40]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from gate_plugins.memorization.detector import Detector
from gate_plugins.toolkit.extractors import build_extractor
from gate_plugins.mri.subjects import subject_slices


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--train-subjects", type=int, default=40)
    args = ap.parse_args()
    train, _ = subject_slices(range(1, 1 + args.train_subjects), 25)
    queries, _ = subject_slices(range(501, 505), 16)
    with tempfile.TemporaryDirectory() as cache_dir:
        rows = []
        for run in ("first (cold cache)", "second (cache hit)"):
            det = Detector(build_extractor("efficientnet-lite0", None, 2.0), "dihedral", cache_dir=Path(cache_dir))
            t0 = time.perf_counter()
            det.fit(train)
            fit_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            layers = det.features(queries)
            extract_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            det.index_.score(layers)
            search_s = time.perf_counter() - t0
            rows.append((run, det.cache_hit_, fit_s, len(queries) / extract_s, len(queries) / search_s))
    print(f"train {len(train)} slices x {len(det.transforms)} transforms = {len(train) * len(det.transforms)} "
          f"reference images; {len(queries)} queries\n")
    print("| run | cache hit | reference fit s | query extraction img/s | search queries/s |")
    print("|---|---|---|---|---|")
    for run, hit, fit_s, ex, se in rows:
        print(f"| {run} | {hit} | {fit_s:.1f} | {ex:.0f} | {se:.0f} |")
    print(f"\nspeed-up of the second run: {rows[0][2] / rows[1][2]:.1f}x")


if __name__ == "__main__":
    main()
