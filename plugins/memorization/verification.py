"""Verification of retrieved (query, train) pairs: align the query onto its candidate, then measure
what is left.

Retrieval (``maths.nearest`` over whitened CNN features) is fast but only tolerates the transforms the
index holds; a copy shifted by a few pixels or rotated by a few degrees escapes it. Copy-detection
systems therefore verify each retrieved candidate: here the query is registered onto the candidate
with a similarity transform (translation, rotation, isotropic scale) by SimpleITK, and the aligned pair
is scored with a similarity that ignores monotone intensity changes, so a moved, rescaled,
gamma-changed or noised copy scores as the copy it is. A transform beyond ``VerifySettings``' bounds
is a failed alignment, not a match: that pair keeps its unaligned score.

Images are 2D arrays in [0, 1] with background 0 (as the MRI slices are), of any shape with sides of
at least 8 times the shrink factor (32 px by default); pairs come as ``[n, H, W]`` stacks, query ``i``
against reference ``i``. SimpleITK is imported only when a pair is registered.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

import numpy as np
from scipy import ndimage as ndi

SimilarityKind = Literal["rank", "nmi"]
Start = Literal["moments", "identity"]

#: ``PairScores.status`` of each pair
OK = "ok"                         # registered within the bounds: the aligned score is reported
OUT_OF_BOUNDS = "out_of_bounds"   # the best alignment found lies beyond the bounds: the unaligned score is reported
FAILED = "failed"                 # SimpleITK raised, or returned non-finite parameters: unaligned score
EMPTY = "empty"                   # too little foreground, or a constant image: not registered


@dataclasses.dataclass(frozen=True)
class VerifySettings:
    #: "nmi": normalised mutual information of equal-count rank bins, in [0, 1]; "rank": Spearman's
    #: correlation, in [-1, 1]. Both are unchanged by any increasing intensity map (scaling, gamma).
    #: NMI is the default because it separates copies from their hardest novel look-alikes further:
    #: the weakest 5 % of the copies sit 5-38 sd of the novel pairs above their mean, against 3-5 sd
    #: for rank, whose novel values spread wider (benchmarks/verification_pairs.py)
    similarity: SimilarityKind = "nmi"
    #: Gaussian sigma (px) applied to both images before scoring: noise of sd 0.02 reorders the ranks
    #: inside a flat tissue, a light blur keeps the ordering that anatomy sets
    smoothing_sigma: float = 1.0
    #: a pixel is foreground above this fraction of its image's 99th percentile (after the blur)
    foreground_fraction: float = 0.1
    #: fewer foreground pixels than this in either image and there is nothing to align or compare
    min_foreground_px: int = 64
    nmi_bins: int = 16

    #: registration metric: "correlation" (global NCC) or Mattes mutual information (invariant to any
    #: contrast change). On the benchmark's moved copies both recover the transform to 0.1 px and 0.1
    #: degree at the same cost, and a gamma of 0.7-1.4 leaves NCC's optimum in place; MI leaves the
    #: aligned copies 0.02 more alike. NCC is the default because it is bit-for-bit deterministic: part
    #: of SimpleITK's Mattes metric runs on the process-wide thread pool, whatever ``threads`` says, and
    #: its results then vary in the 13th digit from run to run
    metric: Literal["correlation", "mattes"] = "correlation"
    histogram_bins: int = 32  # Mattes only
    #: one pyramid level at a quarter of the resolution (32 px for a 128 px slice): the optimum is found
    #: there to 0.05 px and 0.15 degree, and each iteration costs a sixteenth of a full-resolution one.
    #: The registered images are already blurred by ``smoothing_sigma``; ``smoothing_sigmas`` (px of the
    #: full resolution) adds to that per level
    shrink_factors: tuple[int, ...] = (4,)
    smoothing_sigmas: tuple[float, ...] = (0.0,)
    iterations: int = 50
    #: regular-step gradient descent: the first step and the step at which it stops (halving on each
    #: change of direction), in pixels moved at the image's half-width
    learning_rate: float = 1.0
    min_step: float = 0.01
    #: the centre-of-mass alignment handles shifts; the identity is the fallback when it lands beyond
    #: the bounds. With ``exhaustive_starts`` every start runs (about twice the cost)
    starts: tuple[Start, ...] = ("moments", "identity")
    exhaustive_starts: bool = False
    #: metric samples: 1 takes every pixel (deterministic); below 1, a regular grid over that fraction
    #: of the pixels, jittered with ``seed`` (deterministic too; at a quarter of the resolution half the
    #: pixels already cost accuracy: with Mattes, 1.7 degrees at worst instead of 0.1)
    sampling_fraction: float = 1.0
    seed: int = 1234
    #: threads of each registration (the method's own setting, not SimpleITK's process-wide default)
    threads: int = 1

    #: bounds of a plausible copy; a transform beyond them means the alignment wandered off
    max_shift_fraction: float = 0.25   # of the side of the field of view, per axis
    max_angle_deg: float = 20.0
    scale_range: tuple[float, float] = (0.8, 1.25)


@dataclasses.dataclass(frozen=True)
class PairScores:
    similarity: np.ndarray   # [n] float64: after alignment where status is OK (never below unaligned), else unaligned
    unaligned: np.ndarray    # [n] float64: the same similarity of the pair as given (0 where EMPTY)
    shift_px: np.ndarray     # [n, 2] (dy, dx): where the query holds the reference's centre, minus that centre
    angle_deg: np.ndarray    # [n] the query's content turned counter-clockwise as displayed (ndimage.rotate's sign)
    scale: np.ndarray        # [n] size of the query's content relative to the reference's
    status: np.ndarray       # [n] str: OK, OUT_OF_BOUNDS, FAILED or EMPTY
    metric: np.ndarray       # [n] final registration metric (-NCC or -MI at the coarse level); nan where not registered

    @property
    def aligned(self) -> np.ndarray:
        return self.status == OK


# --- similarity --------------------------------------------------------------------------------------------

def _clean(img: np.ndarray) -> np.ndarray:
    return np.nan_to_num(np.asarray(img, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)


def blurred(img: np.ndarray, sigma: float) -> np.ndarray:
    """The image as it is scored and registered: NaN and infinities set to 0, Gaussian blur of ``sigma`` px."""
    x = _clean(img)
    return ndi.gaussian_filter(x, sigma, mode="nearest") if sigma > 0 else x


def foreground(img: np.ndarray, fraction: float) -> np.ndarray:
    """Pixels above ``fraction`` of the 99th percentile (not of the maximum: one hot pixel would set it);
    empty for a blank or non-positive image."""
    top = float(np.percentile(img, 99)) if img.size else 0.0
    if not top > 0:
        return np.zeros(img.shape, dtype=bool)
    return img > fraction * top


def average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing their mean rank (``scipy.stats.rankdata``'s default, at half its cost)."""
    order = np.argsort(x, kind="stable")
    xs = x[order]
    first = np.r_[True, xs[1:] != xs[:-1]]
    starts = np.flatnonzero(first)
    mean_rank = starts + (np.diff(np.r_[starts, len(x)]) + 1) / 2.0
    ranks = np.empty(len(x))
    ranks[order] = mean_rank[np.cumsum(first) - 1]
    return ranks


def rank_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rho (Pearson correlation of tie-averaged ranks); 0 when either side is constant."""
    if len(a) == 0:
        return 0.0
    ra, rb = average_ranks(a), average_ranks(b)
    ra -= ra.mean()
    rb -= rb.mean()
    den = math.sqrt(float(ra @ ra) * float(rb @ rb))
    return float(ra @ rb) / den if den > 0 else 0.0


def rank_nmi(a: np.ndarray, b: np.ndarray, bins: int) -> float:
    """Symmetric uncertainty ``2 I(A;B) / (H(A) + H(B))`` in [0, 1] over equal-count bins of the ranks:
    any increasing intensity map leaves the bins, and so the value, unchanged (fixed-width bins would
    move under a gamma change)."""
    n = len(a)
    if n == 0:
        return 0.0
    qa = np.minimum(((average_ranks(a) - 0.5) * bins / n).astype(np.int64), bins - 1)
    qb = np.minimum(((average_ranks(b) - 0.5) * bins / n).astype(np.int64), bins - 1)
    joint = np.bincount(qa * bins + qb, minlength=bins * bins).reshape(bins, bins) / n

    def entropy(p: np.ndarray) -> float:
        p = p[p > 0]
        return float(-(p * np.log(p)).sum())

    ha, hb = entropy(joint.sum(1)), entropy(joint.sum(0))
    if ha + hb <= 0:
        return 0.0
    return float(np.clip(2.0 * (ha + hb - entropy(joint.ravel())) / (ha + hb), 0.0, 1.0))


def score_blurred(a: np.ndarray, b: np.ndarray, settings: VerifySettings = VerifySettings(),
                  fa: np.ndarray | None = None, fb: np.ndarray | None = None) -> float:
    """``similarity`` of two images that are already blurred (``verify_pairs`` blurs each image once),
    with their foregrounds when known."""
    fa = foreground(a, settings.foreground_fraction) if fa is None else fa
    fb = foreground(b, settings.foreground_fraction) if fb is None else fb
    if min(int(fa.sum()), int(fb.sum())) < settings.min_foreground_px:
        return 0.0
    # the union of the foregrounds: background in both carries no evidence, background in one does
    mask = fa | fb
    if settings.similarity == "rank":
        return rank_correlation(a[mask], b[mask])
    if settings.similarity == "nmi":
        return rank_nmi(a[mask], b[mask], settings.nmi_bins)
    raise ValueError(f"unknown similarity {settings.similarity!r}")


def similarity(a: np.ndarray, b: np.ndarray, settings: VerifySettings = VerifySettings()) -> float:
    """Similarity of two images on one grid, inside the union of their foregrounds, after a light blur:
    rank correlation in [-1, 1] or rank NMI in [0, 1]. 0 when either image has (nearly) no
    foreground: an empty image copies nothing."""
    return score_blurred(blurred(a, settings.smoothing_sigma), blurred(b, settings.smoothing_sigma), settings)


def has_content(img: np.ndarray, settings: VerifySettings = VerifySettings()) -> bool:
    """Enough foreground to align, not constant (nothing to follow), and room for the pyramid."""
    b = blurred(img, settings.smoothing_sigma)
    return _has_content(_clean(img), foreground(b, settings.foreground_fraction), settings)


def _has_content(raw: np.ndarray, fg: np.ndarray, settings: VerifySettings) -> bool:
    if min(raw.shape) < 8 * max(settings.shrink_factors, default=1) or not np.ptp(raw) > 0:
        return False
    return int(fg.sum()) >= settings.min_foreground_px


# --- registration ------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Registration:
    shift_px: tuple[float, float]   # (dy, dx), as in PairScores
    angle_deg: float
    scale: float
    metric: float


def _centre(shape: tuple[int, ...]) -> np.ndarray:
    """The geometric centre, in (row, column) order."""
    return (np.asarray(shape[:2], dtype=np.float64) - 1.0) / 2.0


def _as_registration(sim, shape: tuple[int, ...], unit: float, metric: float) -> Registration:
    """A fitted SimpleITK transform ``T(p) = sR(p - c) + c + t`` (p physical, in (x = column, y = row)
    order, ``unit`` px per physical unit) re-expressed about the grid's centre ``c'``, so that the shift
    does not depend on the centre the initialiser chose (the centre of mass, for MOMENTS): the shift
    is ``T(c') - c'``."""
    cy, cx = _centre(shape) / unit
    tx, ty = sim.TransformPoint((float(cx), float(cy)))
    # SimpleITK's angle turns x towards y, i.e. clockwise as displayed: the opposite of ndimage.rotate's
    return Registration(shift_px=(float(ty - cy) * unit, float(tx - cx) * unit),
                        angle_deg=-math.degrees(sim.GetAngle()), scale=float(sim.GetScale()), metric=metric)


def _image(x: np.ndarray, unit: float):
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(np.ascontiguousarray(x, dtype=np.float32))
    img.SetSpacing((1.0 / unit, 1.0 / unit))
    return img


def _method(settings: VerifySettings, unit: float):
    import SimpleITK as sitk

    method = sitk.ImageRegistrationMethod()
    method.SetNumberOfThreads(settings.threads)
    if settings.metric == "mattes":
        method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=settings.histogram_bins)
    elif settings.metric == "correlation":
        method.SetMetricAsCorrelation()
    else:
        raise ValueError(f"unknown registration metric {settings.metric!r}")
    if settings.sampling_fraction < 1.0:
        method.SetMetricSamplingStrategy(method.REGULAR)
        method.SetMetricSamplingPercentage(settings.sampling_fraction, settings.seed)
    else:
        method.SetMetricSamplingStrategy(method.NONE)
    method.SetInterpolator(sitk.sitkLinear)
    # Similarity2D's parameters are (scale, angle, tx, ty) and the optimiser's step has a fixed length
    # in them, whatever the scales (these only turn its direction). In a physical frame whose unit is
    # the half-width, a step of 1/unit moves a pixel at the half-width by about 1 px along any of the
    # four, so the steps are given in those pixels. (In pixel units a step of 1 along the scale would
    # move the rim by 64 px: that sent registrations to a wrong rotation or scale.)
    method.SetOptimizerAsRegularStepGradientDescent(
        learningRate=settings.learning_rate / unit, minStep=settings.min_step / unit,
        numberOfIterations=settings.iterations, gradientMagnitudeTolerance=1e-12, relaxationFactor=0.5)
    method.SetShrinkFactorsPerLevel(list(settings.shrink_factors))
    method.SetSmoothingSigmasPerLevel(list(settings.smoothing_sigmas))
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    return method


def within_bounds(reg: Registration, shape: tuple[int, ...], settings: VerifySettings = VerifySettings()) -> bool:
    dy, dx = reg.shift_px
    lo, hi = settings.scale_range
    return bool(all(math.isfinite(v) for v in (dy, dx, reg.angle_deg, reg.scale, reg.metric))
                and abs(dy) <= settings.max_shift_fraction * shape[0]
                and abs(dx) <= settings.max_shift_fraction * shape[1]
                and abs(reg.angle_deg) <= settings.max_angle_deg and lo <= reg.scale <= hi)


def register(query: np.ndarray, reference: np.ndarray,
             settings: VerifySettings = VerifySettings()) -> tuple[Registration | None, list[Registration]]:
    """Fit the similarity transform that maps the reference's grid onto the query (SimpleITK's fixed
    image is the reference, the moving one the query) on the images as given (``verify_pairs`` passes
    them blurred).

    The starts run in order until one ends within the bounds (all of them with ``exhaustive_starts``);
    the lowest final metric among those run is the optimum. Returns it when it lies within the bounds,
    else None (the best alignment is beyond them: a later start that stayed inside found a worse one),
    and every registration run. Raises what SimpleITK raises; ``verify_pairs`` turns that into FAILED.
    Deterministic: the metric samples are every pixel or a grid jittered with a fixed seed, and the
    thread count is fixed (bit for bit with the correlation metric; see ``VerifySettings.metric``)."""
    import SimpleITK as sitk

    unit = max(min(reference.shape) / 2.0, 1.0)  # px per physical unit: the half-width (see _method)
    fixed, moving = _image(reference, unit), _image(query, unit)
    tried: list[Registration] = []
    for start in settings.starts:
        if start == "moments":
            mode = sitk.CenteredTransformInitializerFilter.MOMENTS
        elif start == "identity":
            mode = sitk.CenteredTransformInitializerFilter.GEOMETRY  # one grid: the centres coincide, no shift
        else:
            raise ValueError(f"unknown start {start!r}")
        initial = sitk.CenteredTransformInitializer(fixed, moving, sitk.Similarity2DTransform(), mode)
        method = _method(settings, unit)
        method.SetInitialTransform(initial, inPlace=False)
        out = method.Execute(fixed, moving)
        if isinstance(out, sitk.CompositeTransform):
            out = out.GetNthTransform(0)
        fitted = sitk.Similarity2DTransform(out)
        tried.append(_as_registration(fitted, reference.shape, unit, float(method.GetMetricValue())))
        if not settings.exhaustive_starts and within_bounds(tried[-1], reference.shape, settings):
            break
    finite = [r for r in tried if math.isfinite(r.metric)]
    if not finite:
        return None, tried
    best = min(finite, key=lambda r: r.metric)
    return (best if within_bounds(best, reference.shape, settings) else None), tried


def resample(query: np.ndarray, shape: tuple[int, ...], shift_px, angle_deg: float, scale: float) -> np.ndarray:
    """The query on a reference grid of ``shape`` under the transform ``PairScores`` reports (linear
    interpolation, 0 outside the query): reference pixel ``p`` takes the query's value at
    ``scale * R(angle) (p - c) + c + shift``, ``c`` the grid's centre, all in (row, column) order."""
    a = math.radians(float(angle_deg))
    # counter-clockwise as displayed is, in (row, column) order, the rotation by +angle
    matrix = float(scale) * np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    c = _centre(shape)
    offset = c + np.asarray(shift_px, dtype=np.float64) - matrix @ c
    return ndi.affine_transform(_clean(query), matrix, offset=offset, output_shape=tuple(shape[:2]),
                                order=1, mode="constant", cval=0.0)


# --- pairs -------------------------------------------------------------------------------------------------

def _aligned_score(q_blurred: np.ndarray, r_blurred: np.ndarray, r_foreground: np.ndarray, shift_px,
                   angle_deg: float, scale: float, unaligned: float, settings: VerifySettings) -> float:
    """The similarity of the resampled query to the reference, and never below the unaligned one: the
    identity is one of the transforms searched, and resampling an already aligned copy only blurs it
    (which cost the rank-binned NMI of exact copies 0.06 on average, 0.13 at worst)."""
    aligned = resample(q_blurred, r_blurred.shape, shift_px, angle_deg, scale)
    return max(score_blurred(aligned, r_blurred, settings, fb=r_foreground), unaligned)


def verify_pairs(queries: np.ndarray, references: np.ndarray, *,
                 settings: VerifySettings = VerifySettings()) -> PairScores:
    """Register query ``i`` onto reference ``i`` and score the aligned pair (see the module docstring).

    Never raises on image content (blank, constant, tiny, NaN): such a pair keeps its unaligned score
    and its status says why. Raises ValueError on stacks of different or non-``[n, H, W]`` shapes."""
    q, r = np.asarray(queries), np.asarray(references)
    if q.ndim != 3 or q.shape != r.shape:
        raise ValueError(f"need queries and references of one shape [n, H, W], got {q.shape} and {r.shape}")
    n = len(q)
    sim, unaligned, metric = np.zeros(n), np.zeros(n), np.full(n, np.nan)
    shift, angle, scale = np.zeros((n, 2)), np.zeros(n), np.ones(n)
    status = np.full(n, OK, dtype=object)
    for i in range(n):
        # each image is blurred once: the same blurred pair is scored, registered and, aligned, scored again
        q_raw, r_raw = _clean(q[i]), _clean(r[i])
        qi, ri = blurred(q_raw, settings.smoothing_sigma), blurred(r_raw, settings.smoothing_sigma)
        fq, fr = foreground(qi, settings.foreground_fraction), foreground(ri, settings.foreground_fraction)
        if not (_has_content(q_raw, fq, settings) and _has_content(r_raw, fr, settings)):
            status[i] = EMPTY  # a blank or constant image carries no anatomy to copy: similarity 0
            continue
        unaligned[i] = sim[i] = score_blurred(qi, ri, settings, fq, fr)
        try:
            reg, tried = register(qi, ri, settings)
        except RuntimeError:  # SimpleITK's own errors, e.g. every sample mapped outside the query
            status[i] = FAILED
            continue
        # the parameters reported are the optimum's, within the bounds or not
        shown = reg or min(tried, key=lambda t: t.metric if math.isfinite(t.metric) else math.inf)
        shift[i], angle[i], scale[i], metric[i] = shown.shift_px, shown.angle_deg, shown.scale, shown.metric
        if reg is None:
            finite = all(math.isfinite(v) for v in (*shown.shift_px, shown.angle_deg, shown.scale, shown.metric))
            status[i] = OUT_OF_BOUNDS if finite else FAILED
            continue
        sim[i] = _aligned_score(qi, ri, fr, reg.shift_px, reg.angle_deg, reg.scale, unaligned[i], settings)
    return PairScores(similarity=sim, unaligned=unaligned, shift_px=shift, angle_deg=angle, scale=scale,
                      status=status.astype(str), metric=metric)


def rescore(queries: np.ndarray, references: np.ndarray, scores: PairScores, *,
            settings: VerifySettings = VerifySettings()) -> PairScores:
    """``scores`` with ``similarity`` and ``unaligned`` recomputed under ``settings`` (another
    similarity, blur or foreground) on the transforms already fitted: no registration is run."""
    q, r = np.asarray(queries), np.asarray(references)
    if q.ndim != 3 or q.shape != r.shape or len(q) != len(scores.status):
        raise ValueError(f"need the stacks the scores were computed on, got {q.shape} and {r.shape} "
                         f"for {len(scores.status)} pairs")
    sim, unaligned = np.zeros(len(q)), np.zeros(len(q))
    for i in range(len(q)):
        if scores.status[i] == EMPTY:
            continue
        qi, ri = blurred(q[i], settings.smoothing_sigma), blurred(r[i], settings.smoothing_sigma)
        fr = foreground(ri, settings.foreground_fraction)
        unaligned[i] = sim[i] = score_blurred(qi, ri, settings, fb=fr)
        if scores.status[i] == OK:
            sim[i] = _aligned_score(qi, ri, fr, scores.shift_px[i], scores.angle_deg[i], scores.scale[i],
                                    unaligned[i], settings)
    return dataclasses.replace(scores, similarity=sim, unaligned=unaligned)
