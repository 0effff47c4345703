"""Search at scale: exact faiss Flat against the inverted file with exact re-ranking (plugins/toolkit/search.py),
on synthetic unit features of 1 M and 10 M rows, and the machine's GEMM peak the exact search is held to.

The reference is a mixture of 4,096 Gaussian clusters in d = 128 (unit rows), like an extractor's features of
many subjects' slices; the queries are fresh draws from the same mixture (novel samples, the bulk of gate's
queries, whose nearest neighbour is the hardest to find) and noisy copies of reference rows (copies). Recall@1
is the share of queries whose exact nearest similarity the index returns (ties count as found).

    python benchmarks/search_scale.py [--sizes 1000000 10000000] [--queries 2000]
"""

from __future__ import annotations

import argparse
import time

import faiss
import numpy as np

from gate_plugins.toolkit.search import NeighbourIndex

DIM, CLUSTERS = 128, 4096


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def mixture(rng: np.random.Generator, centres: np.ndarray, n: int, block: int = 1_000_000) -> np.ndarray:
    out = np.empty((n, DIM), np.float32)
    for s in range(0, n, block):
        m = min(block, n - s)
        out[s:s + m] = unit(centres[rng.integers(0, len(centres), m)] + 0.35 * rng.standard_normal((m, DIM), np.float32))
    return out


def gemm_peak(n: int = 4096, repeats: int = 3) -> float:
    """float32 GEMM throughput (GFLOP/s) of this machine's BLAS, the ceiling of exact search."""
    a = np.random.default_rng(0).standard_normal((n, n), np.float32)
    a @ a
    t0 = time.perf_counter()
    for _ in range(repeats):
        a @ a
    return 2 * n ** 3 * repeats / (time.perf_counter() - t0) / 1e9


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    ap.add_argument("--queries", type=int, default=2000)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((CLUSTERS, DIM)).astype(np.float32)
    peak = gemm_peak()
    print(f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads; float32 GEMM peak {peak:.0f} GFLOP/s\n")
    print("| rows | queries | exact: s / queries/s / % of GEMM peak | IVF build s (nlist, nprobe) | "
          "IVF queries/s | recall@1 novel | recall@1 copies | index MiB (rows MiB) |")
    print("|---|---|---|---|---|---|---|---|")
    for n in args.sizes:
        rows = mixture(rng, centres, n)
        novel = mixture(rng, centres, args.queries // 2)
        src = rows[rng.choice(n, args.queries - len(novel), replace=False)]
        copies = unit(src + 0.02 * rng.standard_normal(src.shape, np.float32))
        queries = np.concatenate([novel, copies])
        flat = faiss.IndexFlatIP(DIM)
        flat.add(rows)
        t0 = time.perf_counter()
        truth = flat.search(queries, 1)[0][:, 0]
        exact_s = time.perf_counter() - t0
        del flat
        t0 = time.perf_counter()
        index = NeighbourIndex(exact_limit=0).fit(rows)
        build_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        found = index.search(queries, 1)[0][:, 0]
        ivf_s = time.perf_counter() - t0
        hit = found >= truth - 1e-6
        size = index.nbytes / 2 ** 20
        gflops = 2 * len(queries) * n * DIM / exact_s / 1e9
        print(f"| {n:,} | {len(queries):,} | {exact_s:.1f} / {len(queries) / exact_s:,.0f} / {100 * gflops / peak:.0f} % | "
              f"{build_s:.0f} ({index.nlist_}, {index.nprobe_}) | {len(queries) / ivf_s:,.0f} | "
              f"{hit[:len(novel)].mean():.4f} | {hit[len(novel):].mean():.4f} | {size:,.0f} ({rows.nbytes / 2 ** 20:,.0f}) |",
              flush=True)
        del rows, index


if __name__ == "__main__":
    main()
