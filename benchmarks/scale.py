"""Cohort scale (issue 16's benchmark): the memorization check's reference fit against the train size, on real-template
slices (benchmarks/cohort_folder.py), at the policy's defaults (dihedral invariance, match side auto,
nuisance copies of 512 train images, verification against a holdout of 8 subjects), each size in a fresh
process so that its peak memory is its own.

Each row: the folder read by gate's reader (hashes included), the reference fit (train features, nuisance
copies, the null's views, the holdout and its verification), the cache written, then 64 candidates scored
(extraction under every transform, search, verification). The marginal cost of a train image is the fit's
slope between two sizes; a candidate's is its scoring time over 64.

    python benchmarks/cohort_folder.py /tmp/cohort --slices 100000 --size 64
    python benchmarks/scale.py /tmp/cohort --sizes 1000 10000 100000 [--engine ray --workers 1 2]

Its companions: ``search_scale.py`` (exact against approximate search at 1 M and 10 M synthetic rows),
``nuisance_convergence.py`` (the nuisance sample's size) and ``baseline_memory.py`` (the set-level
baselines' memory).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

N_CANDIDATES = 64


def one(root: Path, n: int, engine: str, workers: int) -> dict:
    import numpy as np

    from gate.imageio import read_image_folder
    from gate.imageset import ImageSet
    from gate_plugins.memorization.detector import Detector
    from gate_plugins.memorization.grouping import subjects_of
    from gate_plugins.toolkit.engines import ExtractorSpec, build_engine
    from gate_plugins.toolkit.extractors import build_extractor

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "train"
        folder.mkdir()
        for f in sorted((root / "train").glob("*.npy"))[:n]:
            (folder / f.name).symlink_to(f)
        train = read_image_folder(folder, "train")
        holdout = read_image_folder(root / "holdout", "holdout")
        cand = read_image_folder(root / "candidates", "candidates").images[:N_CANDIDATES]
        read_s = time.perf_counter() - t0
        ext = build_extractor("efficientnet-lite0", None, 2.0)
        eng = build_engine(engine, ext, ExtractorSpec("efficientnet-lite0", None, 2.0, "cpu"), workers)
        cache = Path(tmp) / "cache"
        det = Detector(ext, cache_dir=cache, engine=eng)
        t0 = time.perf_counter()
        det.fit(train.images, digest=train.manifest_sha256(), calibration=holdout.images,
                calibration_groups=subjects_of(holdout.ids, None), n_queries=N_CANDIDATES + 48)
        fit_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        scores = det.score(cand)
        score_s = time.perf_counter() - t0
        disk = sum(f.stat().st_size for f in cache.rglob("*") if f.is_file())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {"n": len(train), "engine": engine, "workers": workers if engine == "ray" else None, "side": det.side_,
            "read_s": read_s, "fit_s": fit_s, "score_s": score_s, "peak_mib": peak, "cache_mib": disk / 2 ** 20,
            "images_mib": train.images.nbytes / 2 ** 20, "flagged_p_min": float(np.min(scores.p_value))}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("root", type=Path)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    ap.add_argument("--engine", default="local")
    ap.add_argument("--workers", type=int, nargs="+", default=[2])
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(args.root, args.one, args.engine, args.workers[0])))
        return
    print("| train slices | engine | side | read s | fit s | score 64 s | peak RSS MiB (images MiB) | cache MiB |")
    print("|---|---|---|---|---|---|---|---|")
    rows = []
    for n in args.sizes:
        for w in (args.workers if args.engine == "ray" else [1]):
            res = subprocess.run([sys.executable, __file__, str(args.root), "--one", str(n), "--engine", args.engine,
                                  "--workers", str(w)], capture_output=True, text=True)
            if res.returncode:
                print(f"| {n:,} | {args.engine} | failed: {res.stderr.strip().splitlines()[-1:]} |", flush=True)
                continue
            r = json.loads(res.stdout.strip().splitlines()[-1])
            rows.append(r)
            label = f"ray, {w} worker{'s' if w > 1 else ''}" if args.engine == "ray" else "local"
            print(f"| {r['n']:,} | {label} | {r['side']} | {r['read_s']:.1f} | {r['fit_s']:.1f} | {r['score_s']:.1f} | "
                  f"{r['peak_mib']:,.0f} ({r['images_mib']:,.0f}) | {r['cache_mib']:.1f} |", flush=True)
    if args.engine == "ray" and len(args.workers) > 1:
        for n in args.sizes:
            by = {r["workers"]: r for r in rows if r["n"] == n}
            if len(by) > 1:
                base = by[min(by)]
                print(f"\n{n:,} slices: fit speed-up over {min(by)} worker(s): " + ", ".join(
                    f"{w} workers {base['fit_s'] / r['fit_s']:.2f}x" for w, r in sorted(by.items()) if w != min(by)))
    if len(rows) >= 2 and args.engine == "local":
        a, b = rows[0], rows[-1]
        per_train = (b["fit_s"] - a["fit_s"]) / (b["n"] - a["n"])
        per_candidate = b["score_s"] / N_CANDIDATES
        print(f"\nmarginal cost: one more train image {1000 * per_train:.1f} ms, one more candidate "
              f"{1000 * per_candidate:.1f} ms (ratio {per_train / per_candidate:.2f})")


if __name__ == "__main__":
    main()
