"""Quality metrics on the shipped data: the sensitivity matrix (self-test) and the cost per slice.

500 slices (20 synthetic subjects x 25 axial slices of the nilearn MNI152 template, 128x128).

    python benchmarks/iqa.py
"""

from __future__ import annotations

from gate_plugins.mri.subjects import subject_slices
from gate_plugins.quality.bench import sensitivity_table, timing_table


def main() -> None:
    images, _ = subject_slices(range(1, 21), 25)
    print("Spearman rho of each metric against perturbation severity (16 real slices, 4 severities + clean)\n")
    print(sensitivity_table(images[:100]))
    print("\nCost on 2 cores\n")
    print(timing_table(images))


if __name__ == "__main__":
    main()
