"""Label maps for conditional generators: train label maps under a seeded smooth deformation.

A faithful label-conditioned generator given a train label map reproduces that training slice's
anatomy, which the memorization check rightly reads as a copy. Deforming each map first (a smooth
random displacement, a small rotation and scaling, of the order of the differences between subjects)
asks for new anatomy drawn from the train distribution, while the holdout's labels stay unseen.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi


def deform_label_maps(labels: np.ndarray, rng: np.random.Generator, displacement_px: float,
                      smoothness_px: float = 10.0, rotation_deg: float = 5.0, scale_sd: float = 0.04) -> np.ndarray:
    """Each [H, W] integer map resampled (nearest neighbour) through its own random smooth warp."""
    labels = np.asarray(labels)
    if displacement_px <= 0:
        return labels.copy()
    out = np.empty_like(labels)
    h, w = labels.shape[1:]
    yy, xx = np.indices((h, w), dtype=np.float64)
    cy, cx = (h - 1) / 2, (w - 1) / 2
    for i, lab in enumerate(labels):
        dy, dx = (f / (f.std() + 1e-12) * displacement_px
                  for f in (ndi.gaussian_filter(rng.standard_normal((h, w)), smoothness_px) for _ in range(2)))
        theta = np.deg2rad(rng.normal(0, rotation_deg))
        scale = 1 + rng.normal(0, scale_sd)
        y0, x0 = yy - cy, xx - cx
        ys = (np.cos(theta) * y0 - np.sin(theta) * x0) / scale + cy + dy
        xs = (np.sin(theta) * y0 + np.cos(theta) * x0) / scale + cx + dx
        out[i] = ndi.map_coordinates(lab, [ys, xs], order=0, mode="constant", cval=0)
    return out
