"""Quality metrics: the sensitivity matrices (self-test) on the shipped data, per-sample sensitivity on real MRI
that is not the shipped data, and the cost of the whole check with and without the self-test.

Shipped data: 500 slices (20 synthetic subjects x 25 axial slices of the nilearn MNI152 template, 128x128).
Held out: Colin27 (Debian's mricron-data: ch2 with skull, ch2bet without), read by the MRI reader at 1.5 mm,
10 mid-brain slices, degraded as the issue's held-out measurement describes (Rician noise sigma 0-0.1 of the
maximum, Gaussian blur sigma 0-3 px, a smooth multiplicative bias field) with this script's own draws: the bias
field is a random cubic in Legendre polynomials, a family the self-test never draws.

    python benchmarks/iqa.py [--skip-cost]
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
from numpy.polynomial import legendre
from scipy import ndimage as ndi

from gate.imageio import read_folder
from gate.policy import Preprocess
from gate_plugins.mri.subjects import subject_slices
from gate_plugins.quality.bench import held_out_table, sensitivity_table, timing_table

COLIN = Path("/usr/share/mricron/templates")


def rician(img, sd, rng):
    s = sd * img.max()
    return np.sqrt((img + rng.normal(0, s, img.shape)) ** 2 + rng.normal(0, s, img.shape) ** 2)


def blur(img, sigma, rng):
    return ndi.gaussian_filter(img, sigma)


def bias(img, amplitude, rng):
    yy, xx = np.meshgrid(np.linspace(-1, 1, img.shape[0]), np.linspace(-1, 1, img.shape[1]), indexing="ij")
    c = rng.normal(size=(4, 4))
    c[0, 0] = 0
    c[np.add.outer(range(4), range(4)) > 3] = 0
    f = legendre.legval2d(yy, xx, c)
    return img * np.exp(amplitude * (f - f.mean()) / f.std())


FAMILIES = {"noise (Rician)": (rician, (0.025, 0.05, 0.075, 0.1)), "blur": (blur, (0.75, 1.5, 2.25, 3.0)),
            "bias field": (bias, (0.1, 0.2, 0.3, 0.4))}


def colin_sets() -> dict[str, np.ndarray]:
    sets = {}
    for name in ("ch2", "ch2bet"):
        with tempfile.TemporaryDirectory() as tmp:
            shutil.copy(COLIN / f"{name}.nii.gz", tmp)
            images = read_folder(Path(tmp), name, Preprocess(spacing=1.5, size=(144, 144))).images
        pick = np.linspace(0.25 * len(images), 0.75 * len(images), 10).astype(int)
        sets[name], sets[f"{name}_fit"] = images[pick], np.delete(images, pick, axis=0)[::2]
    return sets


def main() -> None:
    images, _ = subject_slices(range(1, 21), 25)
    print("Spearman rho of each metric against perturbation severity (16 real slices, 4 severities + clean)\n")
    print(sensitivity_table(images[:100]))
    if (COLIN / "ch2.nii.gz").exists():
        print("\nHeld out: Colin27, per sample (the issue's protocol, this script's draws)\n")
        print(held_out_table(colin_sets(), FAMILIES))
    else:
        print(f"\n(held-out part skipped: {COLIN} missing; apt-get install mricron-data)")
    if "--skip-cost" not in sys.argv:
        print("\nCost on 2 cores\n")
        print(timing_table(images))


if __name__ == "__main__":
    main()
