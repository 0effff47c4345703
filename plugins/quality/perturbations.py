"""Controlled perturbations with severity levels, deterministic given a seed.

Per-image perturbations take ``(img, severity, rng)`` with ``severity`` in 1..len(levels) and return a
new float image; set-level ones (memorisation, mode collapse) take and return a whole set. Images are
assumed in [0, 1]; outputs are clipped to it.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np
from scipy import ndimage as ndi


@dataclasses.dataclass(frozen=True)
class Perturbation:
    name: str
    kind: str                      # failure class it stands for: noise, blur, bias, artefact, intensity, anatomy
    levels: tuple[float, ...]      # the parameter at each severity
    apply: Callable[[np.ndarray, float, np.random.Generator], np.ndarray]

    def __call__(self, img: np.ndarray, severity: int, seed: int) -> np.ndarray:
        if not 1 <= severity <= len(self.levels):
            raise ValueError(f"{self.name}: severity must be 1..{len(self.levels)}, got {severity}")
        rng = np.random.default_rng([seed, severity, sum(map(ord, self.name))])
        out = self.apply(np.asarray(img, dtype=np.float64), self.levels[severity - 1], rng)
        return np.clip(out, 0.0, 1.0).astype(np.float32)


def _smooth_field(shape, rng, sigma_fraction: float = 0.25) -> np.ndarray:
    f = ndi.gaussian_filter(rng.standard_normal(shape), sigma_fraction * min(shape))
    return (f - f.mean()) / (f.std() + 1e-12)


def _gaussian(img, sd, rng):
    return img + rng.normal(0, sd, img.shape)


def _rician(img, sd, rng):
    return np.sqrt((img + rng.normal(0, sd, img.shape)) ** 2 + rng.normal(0, sd, img.shape) ** 2)


def _poisson(img, peak, rng):
    return rng.poisson(np.clip(img, 0, None) * peak) / peak


def _blur(img, sigma, rng):
    return ndi.gaussian_filter(img, sigma)


def _bias(img, amplitude, rng):
    return img * np.exp(amplitude * _smooth_field(img.shape, rng))


def _ghosting(img, strength, rng):
    """Replicas shifted by a quarter of the field of view along the phase-encoding axis."""
    return img + strength * (np.roll(img, img.shape[0] // 4, axis=0) + np.roll(img, -img.shape[0] // 4, axis=0)) / 2


def _motion(img, fraction, rng):
    """Rigid motion during acquisition: random phase ramps on a fraction of k-space lines."""
    k = np.fft.fftshift(np.fft.fft2(img))
    rows = rng.random(img.shape[0]) < fraction
    shift = rng.uniform(-4, 4, rows.sum())
    freqs = np.fft.fftshift(np.fft.fftfreq(img.shape[1]))
    k[rows] *= np.exp(-2j * np.pi * shift[:, None] * freqs[None, :])
    return np.abs(np.fft.ifft2(np.fft.ifftshift(k)))


def _intensity_shift(img, offset, rng):
    return img + offset * (img > 0)


def _contrast(img, gamma, rng):
    return np.clip(img, 0, 1) ** gamma


def _local_warp(img, magnitude_px, rng):
    """A seeded elastic warp confined to one region (a disc of a fifth of the field of view)."""
    h, w = img.shape
    fg = np.argwhere(img > img.mean()) if (img > img.mean()).any() else np.array([[h // 2, w // 2]])
    cy, cx = fg[rng.integers(len(fg))]
    yy, xx = np.indices(img.shape, dtype=np.float64)
    radius = min(h, w) / 10
    window = np.exp(-(((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * radius ** 2)))
    dy = _smooth_field(img.shape, rng, 0.05) * magnitude_px * window
    dx = _smooth_field(img.shape, rng, 0.05) * magnitude_px * window
    return ndi.map_coordinates(img, [yy + dy, xx + dx], order=1, mode="nearest")


def ventricles(img: np.ndarray, labels: np.ndarray | None = None) -> np.ndarray:
    """The ventricles, estimated as the largest CSF component that stays clear of the brain's edge
    (sulcal CSF touches it). CSF comes from the label map (class 1) when given, else from the
    intensity-based tissue estimate. Empty when the slice has no such structure."""
    from gate_plugins.quality.iqms import estimate_tissues

    t = estimate_tissues(img, labels)
    interior = ndi.binary_erosion(t.head, iterations=3)
    comps, n = ndi.label(t.csf)
    if n == 0:
        return np.zeros(img.shape, bool)
    touching = np.unique(comps[t.csf & ~interior])
    sizes = ndi.sum(np.ones_like(comps), comps, index=np.arange(1, n + 1))
    sizes[touching[touching > 0] - 1] = 0
    best = int(np.argmax(sizes))
    if sizes[best] < 4:
        return np.zeros(img.shape, bool)
    return comps == best + 1


def _structure(mode: str):
    def apply(img, level, rng):
        mask = ventricles(img)
        if not mask.any():
            return img  # nothing to alter on this slice; the self-test counts such slices
        if mode == "erase":  # graded: the structure fades into its surroundings
            gone = alter_structure(img, mask, "erase", 1).astype(np.float64)
            return img + level * (gone - img)
        return alter_structure(img, mask, mode, int(level)).astype(np.float64)
    return apply


def _lesion(img, radius_px, rng):
    """A new CSF-dark lesion of the given radius at a seeded place inside the white matter."""
    from gate_plugins.quality.iqms import estimate_tissues

    t = estimate_tissues(img)
    site = ndi.binary_erosion(t.wm, iterations=2) if ndi.binary_erosion(t.wm, iterations=2).any() else t.head
    if not site.any():
        return img
    cands = np.argwhere(site)
    cy, cx = cands[rng.integers(len(cands))]
    yy, xx = np.indices(img.shape)
    weight = np.clip(radius_px + 0.5 - np.hypot(yy - cy, xx - cx), 0, 1) * t.head  # soft-edged disc
    dark = img[t.csf].mean() if t.csf.any() else 0.0
    return img * (1 - weight) + dark * weight


PERTURBATIONS: dict[str, Perturbation] = {p.name: p for p in (
    Perturbation("gaussian_noise", "noise", (0.01, 0.02, 0.04, 0.08), _gaussian),
    Perturbation("rician_noise", "noise", (0.01, 0.02, 0.04, 0.08), _rician),
    Perturbation("poisson_noise", "noise", (1000.0, 300.0, 100.0, 30.0), _poisson),
    Perturbation("blur", "blur", (0.5, 1.0, 1.5, 2.5), _blur),
    Perturbation("bias_field", "bias", (0.1, 0.2, 0.3, 0.5), _bias),
    Perturbation("ghosting", "artefact", (0.05, 0.1, 0.2, 0.3), _ghosting),
    Perturbation("motion", "artefact", (0.05, 0.1, 0.2, 0.4), _motion),
    Perturbation("intensity_shift", "intensity", (0.02, 0.05, 0.1, 0.2), _intensity_shift),
    Perturbation("contrast", "intensity", (1.1, 1.25, 1.5, 2.0), _contrast),
    Perturbation("local_warp", "anatomy", (1.0, 2.0, 4.0, 8.0), _local_warp),
    Perturbation("ventricle_shrink", "anatomy", (1, 2, 3, 4), _structure("shrink")),
    Perturbation("ventricle_grow", "anatomy", (1, 2, 4, 6), _structure("grow")),
    Perturbation("ventricle_erase", "anatomy", (0.25, 0.5, 0.75, 1.0), _structure("erase")),
    Perturbation("lesion", "anatomy", (2, 3, 5, 8), _lesion),
)}


def alter_structure(img: np.ndarray, structure: np.ndarray, mode: str, severity_px: int) -> np.ndarray:
    """Shrink, grow or erase a structure given by a boolean mask (e.g. the ventricles), filling what
    changes with the mean intensity of the structure's surroundings (shrink/erase) or of the
    structure (grow). Deterministic."""
    img = np.asarray(img, dtype=np.float64).copy()
    structure = np.asarray(structure, dtype=bool)
    if not structure.any():
        raise ValueError("the structure mask is empty")
    ring = ndi.binary_dilation(structure, iterations=max(severity_px, 1) + 2) & ~structure
    around = img[ring].mean() if ring.any() else img.mean()
    inside = img[structure].mean()
    if mode == "erase":
        img[structure] = around
    elif mode == "shrink":
        img[structure & ~ndi.binary_erosion(structure, iterations=severity_px)] = around
    elif mode == "grow":
        img[ndi.binary_dilation(structure, iterations=severity_px) & ~structure] = inside
    else:
        raise ValueError(f"unknown mode {mode!r} (shrink, grow, erase)")
    return np.clip(img, 0, 1).astype(np.float32)


def memorise(candidates: np.ndarray, train: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Replace ``fraction`` of the candidates by distinct train images."""
    rng = np.random.default_rng(seed)
    out = np.array(candidates, dtype=np.float32, copy=True)
    k = int(round(fraction * len(out)))
    out[rng.permutation(len(out))[:k]] = train[rng.choice(len(train), size=k, replace=k > len(train))]
    return out


def mode_collapse(candidates: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Replace ``fraction`` of the candidates by copies of one of them."""
    rng = np.random.default_rng(seed)
    out = np.array(candidates, dtype=np.float32, copy=True)
    k = int(round(fraction * len(out)))
    out[rng.permutation(len(out))[:k]] = out[rng.integers(len(out))]
    return out
