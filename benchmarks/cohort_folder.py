"""Write a cohort-sized train folder of real-template slices for the scale benchmark: ``--slices`` axial
slices (``--per-subject`` per synthetic subject, each subject a warped, bias-fielded MNI152/Colin-based
volume from gate_plugins.mri.subjects), a holdout of other subjects and a folder of novel candidates, as
.npy files of ``--size`` pixels. Subjects are made in ``--workers`` processes.

    python benchmarks/cohort_folder.py /tmp/cohort --slices 100000 --size 64
"""

from __future__ import annotations

import argparse
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np


def _write(job: tuple[Path, int, int, int]) -> int:
    from gate_plugins.mri.subjects import subject_slices

    folder, seed, per_subject, size = job
    images, ids = subject_slices([seed], per_subject, size)
    for img, sid in zip(images, ids):
        np.save(folder / f"{sid}.npy", img.astype(np.float32))
    return len(images)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("--slices", type=int, default=100_000)
    ap.add_argument("--per-subject", type=int, default=40)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    n_subjects = -(-args.slices // args.per_subject)
    jobs = []
    for name, seeds in (("train", range(10_000, 10_000 + n_subjects)), ("holdout", range(201, 209)),
                        ("candidates", range(301, 303))):
        folder = args.out / name
        folder.mkdir(parents=True, exist_ok=True)
        jobs += [(folder, seed, args.per_subject, args.size) for seed in seeds
                 if not (folder / f"subj{seed:04d}_z00.npy").exists()]  # resumable
    with ProcessPoolExecutor(args.workers) as pool:
        done = 0
        for k, n in enumerate(pool.map(_write, jobs, chunksize=4)):
            done += n
            if k % 100 == 0:
                print(f"{done} slices written", flush=True)
    print({name: len(list((args.out / name).glob("*.npy"))) for name in ("train", "holdout", "candidates")})


if __name__ == "__main__":
    main()
