"""MRIQC-style image-quality measures adapted to 2D slices (formulas after mriqc/qc/anatomical.py).

Every function takes a float image and boolean masks and returns a finite float. Where a measure is
undefined on an image (no background, an empty tissue class, a constant image) it returns the
documented sentinel ``-1.0`` (as MRIQC does for FBER), never NaN and never raises.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import ndimage as ndi

UNDEFINED = -1.0


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of a set of values (between-class variance maximised over a histogram)."""
    v = np.asarray(values, dtype=np.float64).ravel()
    lo, hi = float(v.min()), float(v.max())
    # a range narrower than ``bins`` representable steps (a near-constant slice, one denormal voxel, a huge
    # offset) has no threshold to find, and np.histogram would raise "Too many bins for data range"
    if not hi - lo > 4 * bins * max(np.spacing(abs(lo)), np.spacing(abs(hi)), np.finfo(np.float64).tiny):
        return lo
    hist, edges = np.histogram(v, bins=bins, range=(lo, hi))
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres) / np.maximum(w0, 1)
    m1 = (np.sum(hist * centres) - np.cumsum(hist * centres)) / np.maximum(w1, 1)
    between = w0 * w1 * (m0 - m1) ** 2
    return float(centres[int(np.argmax(between[:-1]))])


def head_mask(img: np.ndarray) -> np.ndarray:
    """Foreground: above Otsu's threshold, closed and hole-filled."""
    mask = img > otsu_threshold(img)
    return ndi.binary_fill_holes(ndi.binary_closing(mask, iterations=2))


@dataclasses.dataclass(frozen=True)
class Tissues:
    head: np.ndarray
    csf: np.ndarray
    gm: np.ndarray
    wm: np.ndarray


def estimate_tissues(img: np.ndarray, labels: np.ndarray | None = None, smoothing: float = 1.0) -> Tissues:
    """GM/WM/CSF masks: from a label map (0 background, 1 CSF, 2 GM, 3 WM) when given, else by
    splitting the foreground intensities of a T1 image into three classes (dark CSF, GM, bright WM)
    with Otsu thresholds. The split is made on a copy smoothed by ``smoothing`` pixels (as a
    segmentation with a spatial prior would), so that noise widens the classes' intensity spread
    instead of being cut away by the thresholds."""
    img = ndi.gaussian_filter(np.asarray(img, dtype=np.float64), smoothing) if smoothing > 0 else img
    head = head_mask(img)
    if labels is not None:
        return Tissues(head, labels == 1, labels == 2, labels == 3)
    fg = img[head]
    if fg.size < 3 or fg.max() <= fg.min():
        empty = np.zeros_like(head)
        return Tissues(head, empty, empty, empty)
    t1 = otsu_threshold(fg)
    upper = fg[fg > t1]
    t2 = otsu_threshold(upper) if upper.size > 2 and upper.max() > upper.min() else t1
    lower = fg[fg <= t1]
    t0 = otsu_threshold(lower) if lower.size > 2 and lower.max() > lower.min() else float(fg.min())
    return Tissues(head, head & (img <= t0), head & (img > t1) & (img <= t2), head & (img > t2))


def _air(img: np.ndarray, head: np.ndarray) -> np.ndarray:
    return img[~ndi.binary_dilation(head, iterations=3)]


def snr(img: np.ndarray, fg: np.ndarray) -> float:
    """Signal-to-noise ratio within one region: mean / (sample) standard deviation."""
    v = img[fg]
    n = v.size
    if n < 2 or v.std() == 0:
        return UNDEFINED
    return float(v.mean() / (v.std() * np.sqrt(n / (n - 1))))


def snr_dietrich(img: np.ndarray, fg: np.ndarray, head: np.ndarray) -> float:
    air = _air(img, head)
    if air.size < 2 or air.std() <= 1e-3 or not fg.any():
        return UNDEFINED
    return float(np.sqrt(2 / (4 - np.pi)) * img[fg].mean() / air.std())


def cnr(img: np.ndarray, gm: np.ndarray, wm: np.ndarray, head: np.ndarray) -> float:
    if gm.sum() < 2 or wm.sum() < 2:
        return UNDEFINED
    air = _air(img, head)
    air_var = air.var() if air.size > 1 else 0.0
    denom = np.sqrt(air_var + img[gm].var() + img[wm].var())
    return float(abs(img[wm].mean() - img[gm].mean()) / denom) if denom > 0 else UNDEFINED


def cjv(img: np.ndarray, gm: np.ndarray, wm: np.ndarray) -> float:
    if gm.sum() < 2 or wm.sum() < 2:
        return UNDEFINED
    gap = abs(img[wm].mean() - img[gm].mean())
    return float((img[wm].std() + img[gm].std()) / gap) if gap > 0 else UNDEFINED


def efc(img: np.ndarray) -> float:
    """Normalised entropy focus criterion in [0, 1]; lower means less ghosting and blur."""
    x = np.abs(np.asarray(img, dtype=np.float64)).ravel()
    total = np.sqrt((x ** 2).sum())
    n = x.size
    if total == 0 or n < 2:
        return UNDEFINED
    x = x / total
    emax = n * (1 / np.sqrt(n)) * np.log(1 / np.sqrt(n))
    return float((x * np.log(x + 1e-16)).sum() / emax)


def fber(img: np.ndarray, head: np.ndarray) -> float:
    bg = img[~head]
    if bg.size == 0 or not head.any():
        return UNDEFINED
    b = np.median(np.abs(bg) ** 2)
    return float(np.median(np.abs(img[head]) ** 2) / b) if b > 1e-3 else UNDEFINED


def wm2max(img: np.ndarray, wm: np.ndarray) -> float:
    top = np.percentile(img, 99.95)
    return float(img[wm].mean() / top) if wm.any() and top > 0 else UNDEFINED


def fwhm(img: np.ndarray, head: np.ndarray) -> float:
    """Smoothness: the full width at half maximum of a Gaussian kernel that would give the image's spatial
    autocorrelation, in pixels, averaged over the two axes. AFNI's classic 3dFWHMx estimate (Forman et al.
    1995), which MRIQC reports as ``fwhm_avg``: from the variance of first differences against the variance,
    over neighbours that both lie in the head. Higher is smoother (blur raises it)."""
    img = np.asarray(img, dtype=np.float64)
    var = img[head].var() if head.sum() > 8 else 0.0
    if var <= 0:
        return UNDEFINED
    widths = []
    for axis in (0, 1):
        a, b = [np.take(x, range(0, x.shape[axis] - 1), axis=axis) for x in (img, head)]
        a2, b2 = [np.take(x, range(1, x.shape[axis]), axis=axis) for x in (img, head)]
        both = b & b2
        if both.sum() < 8:
            return UNDEFINED
        ratio = 1 - (a2[both] - a[both]).var() / (2 * var)
        if not 0 < ratio < 1:
            return UNDEFINED
        widths.append(np.sqrt(-2 * np.log(2) / np.log(ratio)))
    return float(np.mean(widths))


def inu(img: np.ndarray, head: np.ndarray, shrink: int = 4, iterations: tuple[int, ...] = (20, 20)) -> tuple[float, float]:
    """Intensity non-uniformity: the median and the 5-95 percentile range (over the median) of the bias field that N4
    (SimpleITK's ``N4BiasFieldCorrectionImageFilter``, Tustison et al. 2010) estimates inside the head, as
    MRIQC's ``inu_med`` and ``inu_range``. A flat field is 1 with range 0; a bias field widens the range."""
    import SimpleITK as sitk

    if head.sum() < 64:
        return UNDEFINED, UNDEFINED
    x = np.asarray(img, dtype=np.float64)
    lo, hi = float(x[head].min()), float(x[head].max())
    if hi <= lo:
        return UNDEFINED, UNDEFINED
    # N4 fits a log field to positive intensities: map the head's range onto [1, 2], whatever the scale
    scaled = sitk.GetImageFromArray((1 + np.clip((x - lo) / (hi - lo), 0, 1)).astype(np.float32))
    mask = sitk.GetImageFromArray(head.astype(np.uint8))
    small, small_mask = sitk.Shrink(scaled, [shrink] * 2), sitk.Shrink(mask, [shrink] * 2)
    n4 = sitk.N4BiasFieldCorrectionImageFilter()
    n4.SetMaximumNumberOfIterations(list(iterations))
    try:
        n4.Execute(small, small_mask)
        field = np.exp(sitk.GetArrayFromImage(n4.GetLogBiasFieldAsImage(scaled)))[head]
    except RuntimeError:  # ITK refuses a mask it cannot fit (too few voxels at this shrink): undefined
        return UNDEFINED, UNDEFINED
    if not np.isfinite(field).all():
        return UNDEFINED, UNDEFINED
    p5, p50, p95 = np.percentile(field, [5, 50, 95])
    # the range relative to the median: N4's field has no absolute scale, its spread across the head does
    return float(p50), float((p95 - p5) / p50) if p50 > 0 else UNDEFINED


def qi1(img: np.ndarray, head: np.ndarray) -> float:
    """Share of the background (air) that carries artefactual signal, after Mortamet et al. (2009) as
    MRIQC's ``qi_1``: air pixels above the air's robust noise level (median + 3 MADs, at least 1 % of the
    head's 99th percentile) that survive a binary opening (structure, not isolated noise pixels). Ghosts
    and motion smear the head into the air and raise it; lower is better."""
    img = np.asarray(img, dtype=np.float64)
    air_mask = ~ndi.binary_dilation(head, iterations=3)
    if air_mask.sum() < 64 or not head.any():
        return UNDEFINED
    air = img[air_mask]
    med = float(np.median(air))
    level = max(med + 3 * 1.4826 * float(np.median(np.abs(air - med))),
                med + 0.01 * float(np.percentile(np.abs(img[head]), 99)))
    artefact = ndi.binary_opening(air_mask & (img > level), iterations=1)
    return float(artefact.sum() / air_mask.sum())


def is_degenerate(img: np.ndarray, min_foreground: float = 0.01) -> bool:
    """A slice that is no image of anything: constant (empty included) or with a foreground of under
    ``min_foreground`` of its pixels. The measures are then undefined, and a generator that emits such
    slices has failed whatever its other scores say."""
    img = np.asarray(img, dtype=np.float64)
    return bool(np.ptp(img) < 1e-6 or head_mask(img).mean() < min_foreground)


def defined_mean(values) -> float:
    """Mean over the slices where a measure is defined (not the sentinel, finite); NaN where it is
    defined on none, so that a rule over it cannot pass silently."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v) & (v != UNDEFINED)]
    return float(v.mean()) if v.size else float("nan")


def all_iqms(img: np.ndarray, labels: np.ndarray | None = None) -> dict[str, float]:
    """Every measure for one image; all values finite."""
    img = np.asarray(img, dtype=np.float64)
    t = estimate_tissues(img, labels)
    tissue_snr = [snr(img, m) for m in (t.csf, t.gm, t.wm) if m.sum() >= 2]
    tissue_snr = [v for v in tissue_snr if v != UNDEFINED]
    inu_med, inu_range = inu(img, t.head)
    return {
        # as MRIQC's snr_total: the mean of the per-tissue SNRs (tissue contrast is not noise)
        "snr": float(np.mean(tissue_snr)) if tissue_snr else UNDEFINED, "snr_dietrich": snr_dietrich(img, t.head, t.head),
        "cnr": cnr(img, t.gm, t.wm, t.head), "cjv": cjv(img, t.gm, t.wm), "efc": efc(img),
        "fber": fber(img, t.head), "wm2max": wm2max(img, t.wm),
        "fwhm": fwhm(img, t.head), "inu_med": inu_med, "inu_range": inu_range, "qi1": qi1(img, t.head),
    }
