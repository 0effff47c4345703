"""Did the trained diffusion models copy their training slices? Pixel-space nearest neighbours and
gate's memorization detector, on samples of both shipped models.

For each model: ``--n`` samples (seed 0); each sample's nearest train slice by normalised
cross-correlation (NCC, plain pixels at 128 x 128), and the share of samples that are near-duplicates
(NCC >= ``NEAR_DUPLICATE_NCC``, see there for why). Then gate's detector (EfficientNet-Lite0, 2 px
prefilter, dihedral invariance), fitted on the whole train set (subjects 1-4 x 24, which holds the
memorizer's 8 slices) with the holdout (subjects 201-204 x 12) as calibration: mean MI, the share of
samples with p <= 0.01 and the median similarity (and, where the detector verifies retrieved pairs,
each stage's share). Reference rows: real slices of unseen subjects 301-302, the same through the
models' 32 px round trip (what a perfect generalizer at 32 px would give) and train slices through it
(a perfect memorizer at 32 px). Writes ``nearest.png`` beside this file. About 2 minutes.

    python benchmarks/trained_generators/measure.py [--weights DIR] [--n 64] [--steps K] [--figure PATH]
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
warnings.filterwarnings("ignore", message=".*Add type hints to the `predict` method.*")  # gate's base class

from diffusion_generator import DiffusionGenerator, to_model_space  # noqa: E402

TRAIN_SUBJECTS, TRAIN_SLICES = range(1, 5), 24
HOLDOUT_SUBJECTS, HOLDOUT_SLICES = range(201, 205), 12
NOVEL_SUBJECTS, NOVEL_SLICES = range(301, 303), 12   # reference rows only (the tests' "novel" set)

#: A sample is a near-duplicate of a train slice when their NCC reaches this. Why 0.97: a train slice
#: taken to the models' 32 x 32 and back to 128 x 128 (the best any sample can do) keeps NCC >= 0.978
#: with itself, while real slices of unseen subjects (the holdout) put through the same round trip reach
#: at most ~0.961 with their nearest train slice (0.947 without the round trip): neighbouring anatomy
#: of other deformed copies of one template already scores that high, so a lower threshold would call
#: every plausible brain slice a copy. ``measure`` prints the holdout's figures next to the results.
NEAR_DUPLICATE_NCC = 0.97


def _unit_rows(images: np.ndarray) -> np.ndarray:
    x = np.asarray(images, np.float64).reshape(len(images), -1)
    x = x - x.mean(axis=1, keepdims=True)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def nearest_ncc(samples: np.ndarray, train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each sample, the NCC with its nearest train slice and that slice's row."""
    c = _unit_rows(samples) @ _unit_rows(train).T
    idx = c.argmax(axis=1)
    return c[np.arange(len(samples)), idx], idx


def round_trip(images: np.ndarray, resolution: int) -> np.ndarray:
    """Images as a model at ``resolution`` could at best give them back (down, then bilinear up)."""
    import torch.nn.functional as F

    x = (to_model_space(images, resolution) + 1) / 2
    return F.interpolate(x, size=images.shape[1:], mode="bilinear", align_corners=False).clamp(0, 1)[:, 0].numpy()


def load_data():
    from gate_plugins.mri.subjects import subject_slices

    train, train_ids = subject_slices(TRAIN_SUBJECTS, TRAIN_SLICES)
    holdout, holdout_ids = subject_slices(HOLDOUT_SUBJECTS, HOLDOUT_SLICES)
    return train, train_ids, holdout, [i.split("_")[0] for i in holdout_ids]


def fit_detector(train: np.ndarray, holdout: np.ndarray, holdout_subjects=None, **settings):
    from gate_plugins.memorization.detector import Detector
    from gate_plugins.toolkit.extractors import build_extractor

    return Detector(build_extractor("efficientnet-lite0", None, 2.0), **settings).fit(
        train, calibration=holdout, calibration_groups=holdout_subjects)


def figure(path: Path, panels: list[tuple[str, np.ndarray, np.ndarray, np.ndarray, list[str]]], rows: int = 3,
           pairs: int = 4) -> None:
    """Per model, ``rows`` x ``pairs`` (sample, its nearest train slice) pairs; a near-duplicate's NCC in red."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(2 * pairs * 1.25, len(panels) * (rows * 1.45 + 0.45)), layout="constrained")
    for sub, (title, samples, nearest, ncc, names) in zip(fig.subfigures(len(panels), 1), panels):
        axes = sub.subplots(rows, 2 * pairs)
        sub.suptitle(title, fontsize=10, weight="bold")
        for k in range(rows * pairs):
            r, c = k // pairs, 2 * (k % pairs)
            axes[r, c].imshow(samples[k], cmap="gray", vmin=0, vmax=1)
            axes[r, c].set_title(f"sample {k}", fontsize=7)
            axes[r, c + 1].imshow(nearest[k], cmap="gray", vmin=0, vmax=1)
            axes[r, c + 1].set_title(f"{names[k]}\nNCC {ncc[k]:.3f}", fontsize=7,
                                     color="crimson" if ncc[k] >= NEAR_DUPLICATE_NCC else "black")
        for ax in axes.ravel():
            ax.set_xticks([]), ax.set_yticks([])
    fig.savefig(path, dpi=100)
    plt.close(fig)


def detector_row(scores) -> dict:
    """Mean MI, the share of p <= 0.01 and the median similarity; with the detector's verification
    stage (when it has one), each stage's share of p <= 0.01 and the median verified similarity."""
    row = {"mean MI": float(np.mean(scores.mi)), "p <= 0.01": float(np.mean(scores.p_value <= 0.01)),
           "median similarity": float(np.median(scores.similarity))}
    for key, label in (("p_retrieval", "retrieval p <= 0.01"), ("p_verified", "verification p <= 0.01")):
        if getattr(scores, key, None) is not None:
            row[label] = float(np.mean(getattr(scores, key) <= 0.01))
    if getattr(scores, "verified", None) is not None:
        row["median verified"] = float(np.median(scores.verified))
    if getattr(scores, "verified_non_member", None) is not None:
        row["median verified vs holdout"] = float(np.median(scores.verified_non_member))
    return row


def markdown(rows: list[dict]) -> str:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    cell = lambda v: f"{v:.3f}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(cell(r.get(k, "-")) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", type=Path, default=HERE / "weights")
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=None, help="DDIM steps (default: the wrapper's)")
    ap.add_argument("--figure", type=Path, default=HERE / "nearest.png")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    train, train_ids, holdout, holdout_subjects = load_data()
    from gate_plugins.mri.subjects import subject_slices

    novel, _ = subject_slices(NOVEL_SUBJECTS, NOVEL_SLICES)
    print(f"data: {len(train)} train, {len(holdout)} holdout, {len(novel)} novel slices ({time.perf_counter() - t0:.1f} s)")
    kw = {} if args.steps is None else {"steps": args.steps}
    gens = {name: DiffusionGenerator.from_file(args.weights / f"{name}.pt", **kw) for name in ("memorizer", "generalizer")}
    res = gens["memorizer"].resolution
    ho_plain, _ = nearest_ncc(holdout, train)
    ho_trip, _ = nearest_ncc(round_trip(holdout, res), train)
    self_trip = np.sum(_unit_rows(round_trip(train, res)) * _unit_rows(train), axis=1)
    print(f"NCC reference: holdout -> nearest train median {np.median(ho_plain):.3f} max {ho_plain.max():.3f}; after a "
          f"{res} px round trip median {np.median(ho_trip):.3f} max {ho_trip.max():.3f}; a train slice against its own "
          f"{res} px round trip: min {self_trip.min():.3f} median {np.median(self_trip):.3f}")
    t1 = time.perf_counter()
    detectors = {"default": fit_detector(train, holdout, holdout_subjects),
                 "no contrast": fit_detector(train, holdout, holdout_subjects, verify_contrast=False)}
    print(f"detector fitted on all {len(train)} train slices (subjects 1-4 x 24, the memorizer's 8 among them), "
          f"calibration: {len(holdout)} holdout slices ({time.perf_counter() - t1:.0f} s)")
    pixel_rows, det_rows, panels = [], [], []
    for name, gen in gens.items():
        t1 = time.perf_counter()
        samples = gen.generate(args.n, args.seed)
        sample_s = time.perf_counter() - t1
        own = np.asarray(gen._ckpt["meta"]["train_rows"])
        ncc_own, idx_own = nearest_ncc(samples, train[own])
        ncc_all, _ = nearest_ncc(samples, train)
        copied = own[idx_own[ncc_own >= NEAR_DUPLICATE_NCC]]
        pixel_rows.append({"model": name, "train slices": len(own), "samples": args.n,
                           f"sampling s ({gen.steps} DDIM steps)": f"{sample_s:.1f}",
                           f"near-dup share (NCC >= {NEAR_DUPLICATE_NCC}) vs own train": float(np.mean(ncc_own >= NEAR_DUPLICATE_NCC)),
                           "median NCC vs own train": float(np.median(ncc_own)),
                           "near-dup share vs all 96": float(np.mean(ncc_all >= NEAR_DUPLICATE_NCC)),
                           "distinct train slices copied": len(set(copied.tolist()))})
        for variant, det in detectors.items():
            det_rows.append({"images": f"{name} samples", "detector": variant, "n": args.n,
                             **detector_row(det.score(samples))})
        panels.append((f"{name} ({len(own)} train slices): samples beside their nearest train slice", samples,
                       train[own][idx_own], ncc_own, [train_ids[i] for i in own[idx_own]]))
    pick = np.arange(0, len(train), 4)
    for label, images in ((f"novel subjects {NOVEL_SUBJECTS.start}-{NOVEL_SUBJECTS.stop - 1} (real, unseen)", novel),
                          (f"novel subjects through a {res} px round trip", round_trip(novel, res)),
                          (f"train slices through a {res} px round trip (perfect copies at {res} px)",
                           round_trip(train[pick], res))):
        for variant, det in detectors.items():
            det_rows.append({"images": label, "detector": variant, "n": len(images), **detector_row(det.score(images))})
    print("\npixel space (nearest train slice by NCC, 128 x 128):\n")
    print(markdown(pixel_rows))
    print("\ngate's memorization detector (efficientnet-lite0, prefilter 2 px; default settings, and without the "
          "verification's membership contrast):\n")
    print(markdown(det_rows))
    figure(args.figure, panels)
    print(f"\nfigure: {args.figure}  ({time.perf_counter() - t0:.0f} s in all)")


if __name__ == "__main__":
    main()
