"""Pair verification (``plugins/memorization/verification.py``) on the shipped data: does aligning a
retrieved pair before comparing it separate moved copies from their hardest novel look-alikes?

Train: subjects 1-10, test: subjects 101-110 (25 axial slices each, 128x128, seeded deformations of the
real MNI152 template). Copy pairs: a train slice under a distortion (the query) against that same
slice (the reference), 100 per condition. Novel pairs: 100 test slices, each against the train slice
most like it in pixel space (largest NCC after a 2 px blur: the hardest negative retrieval can hand
over) and against the train slice of the same index of a random train subject. Prints, per condition
and for each similarity, the mean similarity and the per-pair AUC of copies against the hardest novel
pairs before and after alignment, and the cost per pair.

    python benchmarks/verification_pairs.py [--n 100] [--seed 0]
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from typing import Callable

import numpy as np
from scipy import ndimage as ndi
from sklearn.metrics import roc_auc_score, roc_curve

from gate_plugins.memorization.transforms import random_elastic
from gate_plugins.memorization.verification import OK, PairScores, VerifySettings, rescore, verify_pairs
from gate_plugins.mri.subjects import subject_slices

SLICES = 25


@dataclasses.dataclass(frozen=True)
class Truth:
    shift: tuple[float, float] = (0.0, 0.0)  # (dy, dx) of the query's content
    angle: float = 0.0                       # scipy.ndimage.rotate's sign
    scale: float = 1.0


Distortion = Callable[[np.ndarray, np.random.Generator], tuple[np.ndarray, Truth]]


def _shift(img, rng, truth=Truth()):
    m, a = rng.uniform(4.0, 10.0), rng.uniform(0.0, 2 * np.pi)
    d = (m * np.sin(a), m * np.cos(a))
    return ndi.shift(img, d, order=1, mode="constant"), dataclasses.replace(truth, shift=d)


def _rotate(img, rng, truth=Truth()):
    a = rng.uniform(-5.0, 5.0)
    return ndi.rotate(img, a, reshape=False, order=1, mode="constant"), dataclasses.replace(truth, angle=a)


def _zoom(img, rng, truth=Truth()):
    z = rng.uniform(0.9, 1.1)
    c = (np.array(img.shape) - 1) / 2
    out = ndi.affine_transform(img, np.eye(2) / z, offset=c - c / z, order=1, mode="constant")
    return out, dataclasses.replace(truth, scale=z)


def _intensity(img, rng, truth=Truth()):
    return img * rng.uniform(0.9, 1.1), truth


def _gamma(img, rng, truth=Truth()):
    return np.clip(img, 0, 1) ** np.exp(rng.uniform(np.log(0.7), np.log(1.4))), truth


def _noise(img, rng, truth=Truth()):
    return img + rng.normal(0.0, 0.02, img.shape), truth


def _combined(img, rng):
    img, t = _rotate(img, rng)
    img, t = _shift(img, rng, t)
    img, t = _intensity(img, rng, t)
    return _noise(img, rng, t)


def _elastic(img, rng, truth=Truth()):
    return random_elastic(img, rng), truth


def _strong_noise(img, rng, truth=Truth()):
    return img + rng.normal(0.0, 0.05, img.shape), truth


def _combined_elastic(img, rng):
    return _combined(_elastic(img, rng)[0], rng)


#: flips are retrieval's job (the index holds the dihedral transforms of every train image)
CONDITIONS: dict[str, Distortion] = {
    "clean": lambda img, rng: (img, Truth()),
    "noise 0.02": _noise,
    "intensity x0.9-1.1": _intensity,
    "gamma 0.7-1.4": _gamma,
    "shift 4-10 px": _shift,
    "rotation 5 deg": _rotate,
    "zoom 0.9-1.1": _zoom,
    "rot 5 + shift + int. + noise": _combined,
}
#: beyond the brief: what is left after alignment is no longer only noise (a warped or heavily noised copy)
STRESS: dict[str, Distortion] = {
    "noise 0.05": _strong_noise,
    "elastic 2 px": _elastic,
    "elastic 2 px + rot 5 + shift + int. + noise": _combined_elastic,
}
MOVED = ("shift 4-10 px", "rotation 5 deg", "zoom 0.9-1.1", "rot 5 + shift + int. + noise")


def copy_pairs(train: np.ndarray, condition: str, n: int, seed: int) -> tuple[np.ndarray, np.ndarray, list[Truth]]:
    rng = np.random.default_rng(seed)
    src = rng.choice(len(train), n, replace=False)
    out = [{**CONDITIONS, **STRESS}[condition](train[s].astype(np.float64), rng) for s in src]
    queries = np.stack([np.clip(q, 0.0, 1.0) for q, _ in out]).astype(np.float32)
    return queries, train[src], [t for _, t in out]


def hardest_train(test: np.ndarray, train: np.ndarray, sigma: float = 2.0) -> np.ndarray:
    """Index of the train slice of largest NCC with each test slice, both blurred by ``sigma`` px."""
    def rows(x):
        f = np.stack([ndi.gaussian_filter(i.astype(np.float64), sigma) for i in x]).reshape(len(x), -1)
        f -= f.mean(1, keepdims=True)
        return f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
    return np.argmax(rows(test) @ rows(train).T, axis=1)


def _auc(pos: np.ndarray, neg: np.ndarray) -> float:
    return float(roc_auc_score(np.r_[np.ones(len(pos)), np.zeros(len(neg))], np.r_[pos, neg]))


def _tpr_at(pos: np.ndarray, neg: np.ndarray, fpr_max: float = 0.01) -> float:
    fpr, tpr, _ = roc_curve(np.r_[np.ones(len(pos)), np.zeros(len(neg))], np.r_[pos, neg])
    return float(tpr[fpr <= fpr_max].max())


def _timed(q: np.ndarray, r: np.ndarray) -> dict[str, tuple[PairScores, float]]:
    """Verified with the default settings (NMI), then rescored with rank on the same registrations."""
    t = time.process_time()  # CPU time: the registration runs on one thread, and the machine is shared
    s = verify_pairs(q, r)
    ms = (time.process_time() - t) / max(len(q), 1) * 1e3
    return {"nmi": (s, ms), "rank": (rescore(q, r, s, settings=VerifySettings(similarity="rank")), ms)}


def _margin(copies: np.ndarray, novel: np.ndarray) -> float:
    """How far the weakest copies sit in the novel tail: (5th percentile of copies - mean novel) / sd novel."""
    return float((np.percentile(copies, 5) - novel.mean()) / max(novel.std(), 1e-12))


KINDS = ("nmi", "rank")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100, help="pairs per condition")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    t0 = time.perf_counter()
    train, _ = subject_slices(range(1, 11), SLICES)
    test, _ = subject_slices(range(101, 111), SLICES)
    rng = np.random.default_rng(args.seed)

    # novel pairs: the hardest (pixel-space nearest train slice) and same slice index, random train subject
    tq = rng.choice(len(test), args.n, replace=False)
    hard_ref = train[hardest_train(test, train)[tq]]
    same_ref = train[rng.integers(0, len(train) // SLICES, args.n) * SLICES + tq % SLICES]
    novel = {"hardest": _timed(test[tq], hard_ref), "same index": _timed(test[tq], same_ref)}

    copies = {}
    for c, cond in enumerate([*CONDITIONS, *STRESS]):
        q, r, truth = copy_pairs(train, cond, args.n, args.seed + 1 + c)
        copies[cond] = (truth, _timed(q, r))

    print(f"train {len(train)} slices (10 subjects), test {len(test)} (10 other subjects), 128x128; "
          f"{args.n} pairs per condition, seed {args.seed}\nsettings: {VerifySettings()}\n")
    print("Copy pairs (query = distorted train slice, reference = that slice) against the hardest novel pairs "
          "(a test slice and its pixel-space nearest train slice). nmi = normalised MI of 16 equal-count rank "
          "bins inside the union foreground after a 1 px blur (the default); rank = Spearman rho there, on the "
          "same registrations. AUC per pair; TPR at 1 % FPR; ok = registered within the bounds; "
          "ms = CPU per pair, one thread, registration and NMI scoring\n")
    columns = ("mean unaligned", "mean aligned", "AUC unaligned", "AUC aligned", "TPR@1% aligned")
    head = [f"{k}: {c}" for k in KINDS for c in columns]
    print("| condition | " + " | ".join(head) + " | ok | ms/pair |")
    print("|---" * (len(head) + 3) + "|")

    def row(cond, by_kind):
        cells = []
        for k in KINDS:
            s, hard = by_kind[k][0], novel["hardest"][k][0]
            cells += [f"{s.unaligned.mean():.3f}", f"{s.similarity.mean():.3f}",
                      f"{_auc(s.unaligned, hard.unaligned):.3f}", f"{_auc(s.similarity, hard.similarity):.3f}",
                      f"{_tpr_at(s.similarity, hard.similarity):.2f}"]
        s, ms = by_kind["nmi"]
        print(f"| {cond} | " + " | ".join(cells) + f" | {np.mean(s.status == OK):.0%} | {ms:.1f} |")

    for cond in CONDITIONS:
        row(cond, copies[cond][1])
    for name, by_kind in novel.items():
        cells = []
        for k in KINDS:
            s = by_kind[k][0]
            cells += [f"{s.unaligned.mean():.3f}", f"{s.similarity.mean():.3f}", "", "",
                      f"max {s.similarity.max():.3f}"]
        s, ms = by_kind["nmi"]
        print(f"| novel: {name} | " + " | ".join(cells) + f" | {np.mean(s.status == OK):.0%} | {ms:.1f} |")
    print("\nStress conditions, beyond the brief (warped or heavily noised copies), same columns\n")
    print("| condition | " + " | ".join(head) + " | ok | ms/pair |")
    print("|---" * (len(head) + 3) + "|")
    for cond in STRESS:
        row(cond, copies[cond][1])

    print("\nSeparation after alignment: margin = (5th percentile of the copies - mean of the hardest novel) / sd of "
          "the hardest novel; and the lowest copy (the highest hardest novel in the last row)\n")
    print("| condition | nmi: margin | nmi: lowest copy | rank: margin | rank: lowest copy |")
    print("|---|---|---|---|---|")
    for cond, (_, by_kind) in copies.items():
        cells = []
        for k in KINDS:
            s, hard = by_kind[k][0].similarity, novel["hardest"][k][0].similarity
            cells += [f"{_margin(s, hard):.1f}", f"{s.min():.3f}"]
        print(f"| {cond} | " + " | ".join(cells) + " |")
    highest = [f"{novel['hardest'][k][0].similarity.max():.3f}" for k in KINDS]
    print("| highest hardest novel | | " + " | | ".join(highest) + " |")

    print("\nRecovered transform of the moved copies (median and largest absolute error; scale as a ratio)\n")
    print("| condition | shift px: median | shift px: max | angle deg: median | angle deg: max "
          "| scale: median | scale: max |")
    print("|---|---|---|---|---|---|---|")
    for cond in MOVED:
        truth, by_kind = copies[cond]
        s = by_kind["nmi"][0]
        es = np.abs(s.shift_px - np.array([t.shift for t in truth])).max(1)
        ea = np.abs(s.angle_deg - np.array([t.angle for t in truth]))
        ez = np.abs(s.scale / np.array([t.scale for t in truth]) - 1)
        print(f"| {cond} | {np.median(es):.2f} | {es.max():.2f} | {np.median(ea):.2f} | {ea.max():.2f} "
              f"| {np.median(ez):.3f} | {ez.max():.3f} |")
    every = [by_kind["nmi"][1] for _, by_kind in copies.values()] + [novel[n]["nmi"][1] for n in novel]
    print(f"\nmean cost {np.mean(every):.1f} ms CPU per pair; "
          f"total {time.perf_counter() - t0:.0f} s (wall, 2 shared cores)")


if __name__ == "__main__":
    main()
