"""Cohort scale (issue 16), part: the memory of the memorization check's set-level baselines against the
train size. Before, authenticity built a train x train distance matrix and MMD/KID (train + candidate)^2
kernel matrices: 24,000 train images peaked at 15 GB and ended in a segmentation fault. Now the nearest
neighbours are exact and blocked (64 MiB of distances at a time) and the kernel statistics take at most
2,000 rows per set (seeded), so memory is linear in N.

Synthetic features (Gaussian, d = 512, the size of the detector's concatenated embedding), candidate 64
samples, holdout 1,000 rows; peak memory by tracemalloc (numpy's allocations), beyond the inputs.

    python benchmarks/baseline_memory.py [--sizes 6000 24000 48000]
"""

from __future__ import annotations

import argparse
import time
import tracemalloc

import numpy as np

from gate_plugins.toolkit import baselines

D, N_CANDIDATE, N_HOLDOUT = 512, 64, 1000


def measure(fn, *args) -> tuple[float, float]:
    tracemalloc.start()
    t0 = time.perf_counter()
    fn(*args)
    seconds = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return seconds, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[6000, 24000, 48000])
    sizes = parser.parse_args().sizes
    rng = np.random.default_rng(0)
    cand, hold = rng.normal(size=(N_CANDIDATE, D)), rng.normal(size=(N_HOLDOUT, D))
    print("| train rows N | baseline | seconds | peak MiB (now) | the old N x N matrix alone, MiB |")
    print("|---|---|---|---|---|")
    for n in sizes:
        train = rng.normal(size=(n, D))
        for name, fn, args in (("authenticity", baselines.authenticity, (train, cand)),
                               ("C_T", baselines.data_copying_ct, (train, hold, cand)),
                               ("MMD (RBF)", baselines.mmd_rbf, (train, cand)),
                               ("KID", baselines.kid, (train, cand)),
                               ("FID", baselines.frechet_distance, (train, cand))):
            seconds, peak = measure(fn, *args)
            old = n * n * 8 / 2**20 if name in ("authenticity", "MMD (RBF)", "KID") else float("nan")
            print(f"| {n:,} | {name} | {seconds:.1f} | {peak:.0f} | {old:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
