"""MRIQC-style image-quality measures adapted to 2D slices and 3D volumes (formulas after
mriqc/qc/anatomical.py).

Every function takes a float image (2D or 3D) and boolean masks and returns a finite float. Where a
measure is undefined on an image (no background, an empty tissue class, a constant image) it returns the
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


def _air_mask(head: np.ndarray) -> np.ndarray:
    """The air: outside the head dilated by 3 voxels, so that the head's edge and partial volume stay out."""
    return ~ndi.binary_dilation(head, iterations=3)


def _air(img: np.ndarray, head: np.ndarray) -> np.ndarray:
    return img[_air_mask(head)]


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


def bg_energy(img: np.ndarray, head: np.ndarray) -> float:
    """The air's mean energy over the head's, mean(|B|^2) / mean(|F|^2): MRIQC's FBER (which uses these means)
    turned over, so that an image with nothing in its air (skull-stripped, zeroed) has 0 instead of an infinite
    FBER. Ghosts, motion and wrap-around put the head's signal into the air and raise it with their strength
    (``qi1`` counts the air they cover, which saturates; this weighs how bright they are). Lower is better.
    ``fber`` above is the median form, robust to (and so blind to) such artefacts."""
    x = np.asarray(img, dtype=np.float64)
    peak = float(np.abs(x).max()) if x.size else 0.0
    if not peak > 0 or not np.isfinite(peak):
        return UNDEFINED
    x = x / peak  # the ratio has no units; scaled first so that squaring cannot overflow
    air, fg = _air(x, head), x[head]
    if air.size == 0 or fg.size == 0:
        return UNDEFINED
    energy = float(np.mean(fg ** 2))
    return float(np.mean(air ** 2) / energy) if energy > 0 else UNDEFINED


def wm2max(img: np.ndarray, wm: np.ndarray) -> float:
    top = np.percentile(img, 99.95)
    return float(img[wm].mean() / top) if wm.any() and top > 0 else UNDEFINED


def fwhm(img: np.ndarray, head: np.ndarray) -> float:
    """Smoothness: the full width at half maximum of a Gaussian kernel that would give the image's spatial
    autocorrelation, in pixels, averaged over the image's axes (two for a slice, three for a volume). AFNI's
    classic 3dFWHMx estimate (Forman et al. 1995), which MRIQC reports as ``fwhm_avg``: from the variance of
    first differences against the variance, over neighbours that both lie in the head. Higher is smoother (blur raises it)."""
    img = np.asarray(img, dtype=np.float64)
    var = img[head].var() if head.sum() > 8 else 0.0
    if var <= 0:
        return UNDEFINED
    widths = []
    for axis in range(img.ndim):
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


#: N4's settings for the per-sample field. A slice carries too few voxels for N4's defaults (one B-spline span,
#: a narrow bias FWHM) to separate a smooth field from anatomy: 6 control points per axis (3 spans) and a bias
#: FWHM of 0.3 let it follow a field that varies across the head, on a grid of about 32 voxels per axis (the
#: field is smooth, so a coarse grid loses nothing and keeps the cost per slice near 50 ms).
N4_CONTROL_POINTS = 6
N4_BIAS_FWHM = 0.3
N4_GRID = 32
N4_ITERATIONS = (10, 10)


def inu(img: np.ndarray, head: np.ndarray) -> tuple[float, float, float]:
    """Intensity non-uniformity from the bias field that N4 (SimpleITK's ``N4BiasFieldCorrectionImageFilter``,
    Tustison et al. 2010) estimates inside the head: its median and its 5-95 percentile range over the median
    (MRIQC's ``inu_med`` and ``inu_range``), and the standard deviation of its logarithm (``inu_sd``: the
    field's spread, free of its arbitrary scale). A flat field has range and sd 0; a bias field raises both."""
    import SimpleITK as sitk

    if head.sum() < 64:
        return UNDEFINED, UNDEFINED, UNDEFINED
    x = np.asarray(img, dtype=np.float64)
    top = float(np.percentile(x[head], 99))
    if not top > 0 or float(x[head].min()) >= top:
        return UNDEFINED, UNDEFINED, UNDEFINED
    # N4 models a multiplicative field on positive intensities: divide (never shift) so the field is kept
    scaled = sitk.GetImageFromArray(np.clip(x / top, 1e-3, None).astype(np.float32))
    mask = sitk.GetImageFromArray(head.astype(np.uint8))
    shrink = [max(1, n // N4_GRID) for n in reversed(x.shape)]
    small, small_mask = sitk.Shrink(scaled, shrink), sitk.Shrink(mask, shrink)
    n4 = sitk.N4BiasFieldCorrectionImageFilter()
    n4.SetMaximumNumberOfIterations(list(N4_ITERATIONS))
    n4.SetNumberOfControlPoints([N4_CONTROL_POINTS] * x.ndim)
    n4.SetBiasFieldFullWidthAtHalfMaximum(N4_BIAS_FWHM)
    n4.SetNumberOfThreads(1)  # at these sizes ITK's threads only cost; callers measure samples in parallel
    try:
        n4.Execute(small, small_mask)
        log_field = sitk.GetArrayFromImage(n4.GetLogBiasFieldAsImage(scaled))[head].astype(np.float64)
    except RuntimeError:  # ITK refuses a mask it cannot fit (too few voxels at this shrink): undefined
        return UNDEFINED, UNDEFINED, UNDEFINED
    if not np.isfinite(log_field).all():
        return UNDEFINED, UNDEFINED, UNDEFINED
    field = np.exp(log_field)
    p5, p50, p95 = np.percentile(field, [5, 50, 95])
    # the range relative to the median: N4's field has no absolute scale, its spread across the head does
    return float(p50), float((p95 - p5) / p50) if p50 > 0 else UNDEFINED, float(log_field.std())


#: Immerkaer's 3x3 mask: the difference of two Laplacians, blind to any locally linear (smooth) signal
_IMMERKAER = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], dtype=np.float64)


def noise_level(img: np.ndarray, head: np.ndarray) -> float:
    """Noise inside the head relative to its median intensity (lower is better): Immerkaer's (1996) estimate of
    the noise standard deviation from the image filtered by a mask that cancels smooth signal, made robust to
    the anatomy's edges with the median absolute response (the mask's gain is 6); a volume is filtered in the
    planes across its first axis and pooled. It needs no background, so it works on skull-stripped images where
    SNR-Dietrich and QI2 cannot; blur lowers it (a smoothed image looks less noisy), which the self-test reports."""
    x = np.asarray(img, dtype=np.float64)
    kernel = _IMMERKAER if x.ndim == 2 else _IMMERKAER[None]
    # eroded in the planes the mask filters in, so that a thin slab keeps an inside
    inner = ndi.binary_erosion(head, structure=np.ones(kernel.shape, bool), iterations=2)
    if inner.sum() < 16:
        return UNDEFINED
    response = ndi.convolve(x, kernel, mode="nearest")[inner]
    level = float(np.median(x[inner]))
    if not level > 0:
        return UNDEFINED
    return float(1.4826 * np.median(np.abs(response)) / 6 / level)


def _air_and_artefacts(img: np.ndarray, head: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """The air (outside the head dilated by 3 voxels) and the part of it that carries structured signal: above
    the air's robust noise level (median + 3 MADs, at least 1 % of the head's 99th percentile) and surviving a
    binary opening (structure, not isolated noise voxels), after Mortamet et al. (2009). None without air."""
    img = np.asarray(img, dtype=np.float64)
    air_mask = _air_mask(head)
    if air_mask.sum() < 64 or not head.any():
        return None
    air = img[air_mask]
    med = float(np.median(air))
    level = max(med + 3 * 1.4826 * float(np.median(np.abs(air - med))),
                med + 0.01 * float(np.percentile(np.abs(img[head]), 99)))
    return air_mask, ndi.binary_opening(air_mask & (img > level), iterations=1)


def qi1(img: np.ndarray, head: np.ndarray) -> float:
    """Share of the background (air) that carries artefactual signal, after Mortamet et al. (2009) as
    MRIQC's ``qi_1``. Ghosts and motion smear the head into the air and raise it; lower is better."""
    found = _air_and_artefacts(img, head)
    if found is None:
        return UNDEFINED
    air_mask, artefact = found
    return float(artefact.sum() / air_mask.sum())


#: degrees of freedom tried for the air's chi distribution: 2 x the number of receiver coils (1 to 32)
_CHI_DOF = np.arange(2, 66, 2)


def qi2(img: np.ndarray, head: np.ndarray, min_voxels: int = 1000, max_voxels: int = 20000) -> float:
    """Mortamet's QI2 as MRIQC's ``qi_2``: how far the artefact-free air departs from the noise-only
    distribution a magnitude image has there, a central chi distribution with 2n degrees of freedom (n coils).
    The chi is fitted by maximum likelihood (scale in closed form for each n, n picked by likelihood, no
    offset: air carries no signal); QI2 is the mean absolute difference between the air's histogram and the
    fitted density to the right of the mode's half maximum, where structured signal and ghosts fall. The
    intensities are divided by the fitted scale first, so QI2 does not depend on the image's units (MRIQC's
    raw-unit densities do). In [0, 1]; lower is better; undefined with fewer than ``min_voxels`` air voxels
    above zero (a skull-stripped image has none)."""
    from scipy import stats

    found = _air_and_artefacts(img, head)
    if found is None:
        return UNDEFINED
    air_mask, artefact = found
    data = np.asarray(img, dtype=np.float64)[air_mask & ~artefact]
    data = data[data > 0]
    if data.size < min_voxels:
        return UNDEFINED
    if data.size > max_voxels:  # a regular subsample: deterministic, and the fit costs no more on a volume
        data = data[:: int(np.ceil(data.size / max_voxels))]
    data = data / data.max()  # no units, and no overflow when squared
    m2 = float(np.mean(data ** 2))
    # per dof k the MLE of the scale is sqrt(E[x^2] / k); the log likelihood then depends on k only through this
    scales = np.sqrt(m2 / _CHI_DOF)
    loglik = [float(np.mean(stats.chi.logpdf(data, k, scale=sc))) for k, sc in zip(_CHI_DOF, scales)]
    best = int(np.argmax(loglik))
    if not np.isfinite(loglik[best]):
        return UNDEFINED
    z = data / scales[best]
    top = float(np.percentile(z, 99.9))
    width = top / max(len(np.histogram_bin_edges(z, bins="doane", range=(0.0, top))) - 1, 1)
    # integer-stored images (8-bit PNG, 12/16-bit DICOM) hold the air in a few levels: bins that are not whole
    # multiples of the level step, with edges between levels, would read that quantisation as misfit
    levels = np.unique(z)
    step = float(np.diff(levels).min()) if levels.size > 1 else 0.0
    if levels.size < z.size / 4 and step > 0:
        width = step * max(1.0, np.round(width / step))
        low = levels[0] - step / 2
    else:
        low = 0.0
    if not width > 0 or not top > low:
        return UNDEFINED
    edges = np.arange(low, top + width, width)
    counts, _ = np.histogram(z, bins=edges)
    # both as densities over the same bins: the data's, and the fitted chi's mass in each bin over the range
    expected = np.diff(stats.chi.cdf(edges, _CHI_DOF[best]))
    if counts.sum() == 0 or expected.sum() <= 0:
        return UNDEFINED
    hist, fitted = counts / counts.sum() / width, expected / expected.sum() / width
    mode = int(np.argmax(hist))
    right = np.nonzero(hist[mode + 1:] < hist[mode] / 2)[0]
    start = mode + 1 + int(right[0]) if right.size else len(hist) - 1
    return float(np.clip(np.abs(hist[start:] - fitted[start:]).mean(), 0.0, 1.0))


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


TISSUES = ("csf", "gm", "wm")
SUMMARY_STATS = ("mean", "stdv", "median", "mad", "p05", "p95", "k", "n")


def tissue_posteriors(img: np.ndarray, t: Tissues) -> np.ndarray | None:
    """Soft tissue maps [CSF, GM, WM] (each voxel's class probabilities, 0 outside the head), the partial-volume
    maps MRIQC takes from FSL FAST: the posterior of a three-class Gaussian mixture of the head's intensities
    whose parameters (proportion, mean, sd per class) are those of the intensity classes of ``t``, i.e. one
    E-step after a classification step (Bayes' rule with ``scipy.stats.norm``; deterministic, a few ms where a
    fitted mixture costs tens). None where a class has fewer than 4 voxels or no spread."""
    from scipy import stats

    x = np.asarray(img, dtype=np.float64)
    classes = [t.csf, t.gm, t.wm]
    if any(c.sum() < 4 for c in classes) or any(x[c].std() <= 0 for c in classes):
        return None
    values = x[t.head]
    total = sum(float(c.sum()) for c in classes)
    # log densities, so that a voxel far out in every class's tail still gets a defined posterior
    logp = np.stack([np.log(c.sum() / total) + stats.norm.logpdf(values, x[c].mean(), x[c].std()) for c in classes])
    logp -= logp.max(axis=0)
    weights = np.exp(logp)
    post = np.zeros((3,) + x.shape)
    post[:, t.head] = weights / weights.sum(axis=0)
    return post


def rpve(post: np.ndarray | None, head: np.ndarray) -> dict[str, float]:
    """Residual partial-volume error per tissue, after MRIQC's ``rpve_*``: over the voxels whose most probable
    class is k, the mean membership left to the other classes, 1 - p_k, with the 2 % most extreme values of
    p_k trimmed at each end. Crisp tissue gives 0; blur and noise mix the classes and raise it. Lower is better."""
    if post is None:
        return {f"rpve_{k}": UNDEFINED for k in TISSUES}
    seg = np.argmax(post, axis=0)
    out = {}
    for i, k in enumerate(TISSUES):
        p = post[i][head & (seg == i)]
        if p.size < 4:
            out[f"rpve_{k}"] = UNDEFINED
            continue
        lo, hi = np.percentile(p, [2, 98])
        kept = p[(p >= lo) & (p <= hi)]
        out[f"rpve_{k}"] = float((1 - kept).mean())
    return out


def tpm_overlap(post: np.ndarray | None, labels: np.ndarray | None) -> dict[str, float]:
    """Overlap of the tissue maps the image's intensities give with the tissue maps it should have, after
    MRIQC's ``overlap_*``: the fuzzy Jaccard index sum(min(P, T)) / sum(max(P, T)) per tissue. MRIQC's T is the
    MNI template's prior registered to the image; here it is the sample's own label map (1 CSF, 2 GM, 3 WM),
    so it measures whether the image's tissue contrast agrees with the anatomy it is labelled with. Higher is
    better; undefined without labels."""
    if post is None or labels is None:
        return {f"tpm_{k}": UNDEFINED for k in TISSUES}
    out = {}
    for i, k in enumerate(TISSUES):
        truth = (labels == i + 1).astype(np.float64)
        union = np.maximum(post[i], truth).sum()
        out[f"tpm_{k}"] = float(np.minimum(post[i], truth).sum() / union) if union > 0 else UNDEFINED
    return out


def summary_stats(img: np.ndarray, t: Tissues) -> dict[str, float]:
    """MRIQC's ``summary_{bg,csf,gm,wm}_{mean,stdv,median,mad,p05,p95,k,n}``: the intensity distribution of each
    tissue (its mask eroded once, as MRIQC erodes, unless that empties it) and of the air (outside the head
    dilated by 3 voxels). Descriptive: no side is better; ``k`` is the excess kurtosis, ``n`` the voxel count.
    An empty region gives the sentinel for each statistic (and n 0)."""
    from scipy import stats

    x = np.asarray(img, dtype=np.float64)
    regions = {"bg": _air_mask(t.head), "csf": t.csf, "gm": t.gm, "wm": t.wm}
    out: dict[str, float] = {}
    for name, mask in regions.items():
        eroded = ndi.binary_erosion(mask) if name != "bg" else mask
        v = x[eroded if eroded.sum() >= 4 else mask]
        if v.size < 4:
            out.update({f"summary_{name}_{s}": UNDEFINED for s in SUMMARY_STATS})
            out[f"summary_{name}_n"] = float(v.size)
            continue
        med = float(np.median(v))
        kurt = float(stats.kurtosis(v)) if np.ptp(v) > 0 else UNDEFINED
        p05, p95 = np.percentile(v, [5, 95])
        out.update({f"summary_{name}_mean": float(v.mean()), f"summary_{name}_stdv": float(v.std()),
                    f"summary_{name}_median": med, f"summary_{name}_mad": float(1.4826 * np.median(np.abs(v - med))),
                    f"summary_{name}_p05": float(p05), f"summary_{name}_p95": float(p95),
                    f"summary_{name}_k": kurt if np.isfinite(kurt) else UNDEFINED, f"summary_{name}_n": float(v.size)})
    return out


#: the quality measures, in the order of the samples table
MEASURES = ("snr", "snr_dietrich", "cnr", "cjv", "efc", "fber", "bg_energy", "wm2max", "fwhm", "noise", "inu_med",
            "inu_range", "inu_sd", "qi1", "qi2") + tuple(f"rpve_{k}" for k in TISSUES) + tuple(f"tpm_{k}" for k in TISSUES)
#: descriptive statistics per region (no better side, no self-test)
SUMMARIES = tuple(f"summary_{r}_{s}" for r in ("bg",) + TISSUES for s in SUMMARY_STATS)


def all_iqms(img: np.ndarray, labels: np.ndarray | None = None) -> dict[str, float]:
    """Every measure (``MEASURES``) and summary statistic (``SUMMARIES``) for one slice or volume; all finite.
    ``labels`` (1 CSF, 2 GM, 3 WM, 0 elsewhere), when given, are the tissue masks and the truth of TPM overlap."""
    img = np.asarray(img, dtype=np.float64)
    t = estimate_tissues(img, labels)
    tissue_snr = [snr(img, m) for m in (t.csf, t.gm, t.wm) if m.sum() >= 2]
    tissue_snr = [v for v in tissue_snr if v != UNDEFINED]
    inu_med, inu_range, inu_sd = inu(img, t.head)
    # the soft maps come from the intensities alone, so that with labels TPM overlap tests the image against them
    post = tissue_posteriors(img, t if labels is None else estimate_tissues(img))
    return {
        # as MRIQC's snr_total: the mean of the per-tissue SNRs (tissue contrast is not noise)
        "snr": float(np.mean(tissue_snr)) if tissue_snr else UNDEFINED, "snr_dietrich": snr_dietrich(img, t.head, t.head),
        "cnr": cnr(img, t.gm, t.wm, t.head), "cjv": cjv(img, t.gm, t.wm), "efc": efc(img),
        "fber": fber(img, t.head), "bg_energy": bg_energy(img, t.head), "wm2max": wm2max(img, t.wm),
        "fwhm": fwhm(img, t.head),
        "noise": noise_level(img, t.head), "inu_med": inu_med, "inu_range": inu_range, "inu_sd": inu_sd,
        "qi1": qi1(img, t.head), "qi2": qi2(img, t.head), **rpve(post, t.head), **tpm_overlap(post, labels),
        **summary_stats(img, t),
    }
