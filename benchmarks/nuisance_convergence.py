"""Has the nuisance covariance converged at the sample size gate uses (``nuisance_images: 512``)?

The whitening adds the covariance of the feature changes that misalignment causes (shift, zoom, elastic:
two misaligned copies per sampled train image). This estimates it from growing seeded samples of one
cohort's train slices and compares each with the largest: the relative Frobenius distance of the
Ledoit-Wolf covariance, and what matters downstream, the similarity a misaligned copy keeps to its source
after whitening (held-out images, their own misaligned copies) and the similarity of novel images.

    python benchmarks/nuisance_convergence.py /tmp/cohort [--sizes 64 128 256 512 1024 2048]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from sklearn.covariance import ledoit_wolf

from gate.imageio import read_image_folder
from gate_plugins.memorization import maths
from gate_plugins.memorization.detector import Detector, _Misaligned
from gate_plugins.toolkit.extractors import build_extractor


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("root", type=Path)
    ap.add_argument("--train", type=int, default=4000)
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256, 512, 1024, 2048])
    args = ap.parse_args()
    files = sorted((args.root / "train").glob("*.npy"))[: args.train]
    train = np.stack([np.load(f) for f in files]).astype(np.float32)
    probe = read_image_folder(args.root / "holdout", "holdout").images[:120]
    det = Detector(build_extractor("efficientnet-lite0", None, 2.0))
    feats = det.features(train)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(train))[: max(args.sizes)]
    src = np.tile(order, 2)
    moved = det.features(_Misaligned(train, src, np.random.default_rng(1)))
    deltas = [m - f[src] for m, f in zip(moved, feats)]
    probe_feats = det.features(probe)
    probe_moved = det.features(_Misaligned(probe, np.arange(len(probe)), np.random.default_rng(2)))
    full = max(args.sizes)

    def cov(k: int, size: int) -> np.ndarray:
        rows = np.concatenate([np.arange(size), full + np.arange(size)])  # both copies of the first `size` images
        return ledoit_wolf(deltas[k][rows], assume_centered=True)[0]

    reference = [cov(k, full) for k in range(len(feats))]
    print(f"{len(train)} train slices, 2 misaligned copies per sampled image, {len(probe)} held-out probes\n")
    print("| sampled images | relative distance to the largest sample's covariance (per layer) | "
          "copy's whitened similarity to its source (mean) | novel pairs' similarity (mean) |")
    print("|---|---|---|---|")
    for size in args.sizes:
        covs = [cov(k, size) for k in range(len(feats))]
        dist = [np.linalg.norm(c - r) / np.linalg.norm(r) for c, r in zip(covs, reference)]
        whiteners = [maths.fit_whitener(f, "ledoit_wolf", None) for f in feats]
        # the whitener with this nuisance covariance added: as fit_whitener does, from the train features
        wh = []
        for f, c in zip(feats, covs):
            x = f.astype(np.float64)
            base, _ = ledoit_wolf(x - x.mean(0), assume_centered=True)
            lam, vec = np.linalg.eigh(base + c)
            wh.append(maths.Whitener(x.mean(0), (vec / np.sqrt(np.maximum(lam, 0) + maths.EPS_WHITEN)) @ vec.T, 0.0))
        del whiteners
        z = [maths.whiten(f, w) for f, w in zip(probe_feats, wh)]
        zm = [maths.whiten(f, w) for f, w in zip(probe_moved, wh)]
        copy_sim = maths.aggregate([np.sum(a * b, 1) for a, b in zip(z, zm)])
        novel = maths.aggregate([np.sum(a * np.roll(a, 7, 0), 1) for a in z])
        print(f"| {size:,} | {' / '.join(f'{d:.3f}' for d in dist)} | {copy_sim.mean():.4f} | {novel.mean():.4f} |",
              flush=True)


if __name__ == "__main__":
    main()
