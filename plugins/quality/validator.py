"""The image-quality validator: MRIQC-style measures, MRI-NIQE and distribution metrics, each proving
on the user's own real data, through a perturbation self-test, whether it can see the failures it is
meant to catch. A metric that sees none of them cannot block (its block rules warn unless pinned)."""

from __future__ import annotations

import dataclasses
import os
from concurrent.futures import ThreadPoolExecutor
from typing import ClassVar, Literal

import numpy as np
import pandas as pd
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator
from scipy import stats

import gate
from gate.errors import InputError
from gate.featurecache import FeatureCache, cache_key
from gate.imageset import ImageSet
from gate.validators import CheckContext, CheckOutput, Figure, MetricDef, Plan
from gate_plugins.memorization import Detector
from gate_plugins.toolkit.canvas import canvas_digest, on_square_canvas
from gate_plugins.toolkit.device import describe, device_problem, resolve_device
from gate_plugins.toolkit.extractors import build_extractor
from gate_plugins.quality import iqms
from gate_plugins.quality.comparison import compare, distribution_figure
from gate_plugins.quality.distribution import distribution_metrics
from gate_plugins.quality.niqe import fit_niqe, niqe_score
from gate_plugins.quality.pyiqa_metrics import SUPPORTED, PyiqaScorer, missing_weights
from gate_plugins.quality.sensitivity import per_sample_matrices, sees
from gate_plugins.quality.perturbations import PERTURBATIONS, memorise, mode_collapse, ventricles

IQMS = iqms.MEASURES
SET_METRICS = ("fid", "kid", "mmd", "precision", "recall", "density", "coverage")
# +1: higher is better, -1: lower is better (WM2MAX and entropy have no better side)
# (FWHM: sharper is better; INU's median has no better side, its range and sd do; QI1, QI2, bg_energy: less
# artefact in the air; noise and rPVE: less; TPM overlap: more agreement with the labels; the summary statistics
# have no side)
BETTER = {"snr": 1, "snr_dietrich": 1, "cnr": 1, "cjv": -1, "efc": -1, "fber": 1, "bg_energy": -1, "fwhm": -1,
          "noise": -1, "inu_range": -1, "inu_sd": -1, "qi1": -1, "qi2": -1, "niqe": -1,
          **{f"rpve_{k}": -1 for k in iqms.TISSUES}, **{f"tpm_{k}": 1 for k in iqms.TISSUES}, "fid": -1, "kid": -1,
          "mmd": -1, "precision": 1, "recall": 1, "density": 1, "coverage": 1, "pyiqa_piqe": -1, "pyiqa_niqe": -1,
          "pyiqa_brisque": -1}
#: threads measuring samples (N4 and the numpy/scipy measures release the GIL); the cores this process may use
WORKERS = max(1, min(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1, 8))
#: TPM overlap compares a sample with its label map: the self-test cannot measure it
TPM = tuple(f"tpm_{k}" for k in iqms.TISSUES)
MAX_REAL_SLICES = 256  # real slices measured for NIQE's fit and for the real-vs-real band
FIGURE_TRAIN_SLICES = 64  # train slices measured for the figure's train boxes (when there is a holdout)
SET_LEVELS = (0.1, 0.25, 0.5, 1.0)  # fraction of the set for memorisation and mode collapse


PyiqaMetric = Literal[tuple(SUPPORTED)]  # type: ignore[valid-type]


#: degenerate sample ids named in the report (the samples table holds every one)
MAX_NAMED = 50


class QualityParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    extractor: Literal["efficientnet-lite0", "scattering-j3l8"] = Field(
        "efficientnet-lite0", description="feature space of the distribution metrics (the memorization one)")
    prefilter_sigma: float = Field(2.0, ge=0, le=10, description="as the memorization check, to share its cache")
    niqe_block: int = Field(32, ge=8, le=128, description="NIQE patch size in pixels")
    self_test: bool = Field(True, description="measure each metric's response to graded perturbations")
    self_test_slices: int = Field(16, ge=4, le=256, description="real slices perturbed by the self-test")
    sensitivity_threshold: float = Field(0.8, gt=0, le=1, description="|Spearman rho| below which a metric "
                                                                        "is insensitive to a perturbation")
    per_sample_monotonic: float = Field(0.5, ge=0, le=1, description="per-sample test: the share of self-test "
                                                                     "slices on which a metric must move "
                                                                     "monotonically with severity")
    cache: bool = Field(True, description="reuse the memorization check's cached train features")
    tissue_classes: dict[Literal["csf", "gm", "wm"], int] | None = Field(
        None, description="label indices of CSF, GM and WM: when given, labelled sets use their label maps "
                          "as tissue masks instead of the intensity-based estimate")
    pyiqa: tuple[PyiqaMetric, ...] = Field((), description="pyiqa metrics to add (optional extra gate-mri[pyiqa]; "
                                                            "PolyForm-Noncommercial licence)")
    pyiqa_weights: dict[PyiqaMetric, Path] = Field({}, description="local weights file per pyiqa metric (niqe: "
                                                                   "a .mat from `gate fit-niqe`; brisque: SVR weights)")

    @model_validator(mode="after")
    def _weights_for_each_metric(self) -> "QualityParams":
        if self.tissue_classes is not None and set(self.tissue_classes) != {"csf", "gm", "wm"}:
            raise ValueError("tissue_classes must name csf, gm and wm")
        problems = missing_weights(self.pyiqa, self.pyiqa_weights)
        if problems:
            raise ValueError(problems[0])
        return self


def _metric_defs() -> tuple[MetricDef, ...]:
    defs = [MetricDef(f"{m}_mean", None, "scalar", f"mean {m.upper()} over the samples where it is defined "
                                                   "(MRIQC-style, see README)") for m in IQMS]
    defs.append(MetricDef("niqe_mean", None, "scalar", "mean MRI-NIQE where defined (fitted on train; lower is "
                                                       "closer to real)"))
    defs.append(MetricDef("degenerate_fraction", "degenerate", "mean", "share of samples that are constant or "
                                                                       "nearly all background (a validity check, "
                                                                       "not a quality measure: no self-test)"))
    for m in SET_METRICS:
        defs.append(MetricDef(m, None, "scalar", f"{m} of the candidate against the holdout (else train)"))
    for m in ("fid", "kid", "mmd"):
        defs.append(MetricDef(f"{m}_ratio", None, "scalar", f"{m} over the real-vs-real {m} (train vs holdout)"))
    for m in SUPPORTED:
        defs.append(MetricDef(f"pyiqa_{m}_mean", None, "scalar", f"mean pyiqa {m} over samples (only when "
                                                                  f"params.pyiqa lists {m!r}, else NaN)"))
    return tuple(defs)


class QualityValidator:
    name: ClassVar[str] = "quality"
    blind_spots: ClassVar[tuple[str, ...]] = (
        "No-reference quality measures are blind to local anatomical errors (a missing ventricle, a wrong lesion) "
        "and to memorization: a copied training slice scores as real.",
        "A metric whose self-test did not show it sensitive to a failure only warns about it.",
    )
    advice: ClassVar[dict[str, str]] = {
        "*": "The samples' image quality departs from the real images' band: look at the quality distributions "
             "and the samples table for the worst samples (noise, blur, bias field, ghosting). Check the "
             "generator's training (collapse, too few steps) and its output scaling.",
        "degenerate_fraction": "Some samples are blank or constant: the generator fails on part of its output "
                               "(look for the sample ids named in the diagnostics).",
    }
    Params: ClassVar[type[BaseModel]] = QualityParams
    columns: ClassVar[tuple[str, ...]] = ("sample_id",) + IQMS + ("niqe", "degenerate") + iqms.SUMMARIES
    metrics: ClassVar[tuple[MetricDef, ...]] = _metric_defs()

    def preflight(self, plan: Plan, params: QualityParams) -> list[str]:
        problems = [p for p in [device_problem(plan.device)] if p]
        if len(plan.train) < 4:
            problems.append(f"{plan.train.name}: the quality check needs at least 4 train images, got {len(plan.train)}")
        shapes = [plan.train.shape] + ([plan.holdout.shape] if plan.holdout is not None else []) + \
            ([tuple(plan.candidate_shape)] if plan.candidate_shape is not None else [])
        smallest = min(min(shape) for shape in shapes)
        if smallest < 2 * params.niqe_block:
            problems.append(f"images of {smallest} px are too small for niqe_block {params.niqe_block}: use "
                            f"niqe_block <= {smallest // 2} or larger images")
        return problems

    def run(self, context: CheckContext, params: QualityParams) -> CheckOutput:
        train, cand, holdout = context.train, context.candidate, context.holdout
        for label, s in (("train", train), ("candidate", cand)) + ((("holdout", holdout),) if holdout else ()):
            if not np.isfinite(s.images).all():
                raise InputError(f"{label} images contain non-finite values")
        problems = self.preflight(Plan(train, holdout, len(cand), cand.labels is not None, cand.shape), params)
        if problems:
            raise InputError("; ".join(problems))
        real = holdout if holdout is not None else train
        rng = np.random.default_rng(context.seed + 7919)
        # NIQE's pristine model comes from train so that the holdout, the candidate's comparison, is out of sample
        fit_idx = np.sort(rng.choice(len(train), size=min(len(train), MAX_REAL_SLICES), replace=False))
        try:
            niqe_model = fit_niqe(train.images[fit_idx], params.niqe_block)
        except ValueError as e:
            raise InputError(f"{train.name}: {e}") from e

        scorer = PyiqaScorer(params.pyiqa, params.pyiqa_weights, context.batch_size, params.niqe_block) \
            if params.pyiqa else None

        tissue = params.tissue_classes

        def as_tissues(labels: np.ndarray | None, i: int) -> np.ndarray | None:
            """The i-th label map recoded to 1 CSF, 2 GM, 3 WM, when the policy names those classes."""
            if tissue is None or labels is None:
                return None
            lab = labels[i]
            return np.select([lab == tissue["csf"], lab == tissue["gm"], lab == tissue["wm"]], [1, 2, 3], 0)

        def one(i: int, images: np.ndarray, labels: np.ndarray | None) -> dict[str, float]:
            row = iqms.all_iqms(images[i], as_tissues(labels, i))
            row["niqe"] = niqe_score(images[i], niqe_model)
            return row

        def per_sample(images: np.ndarray, labels: np.ndarray | None = None) -> pd.DataFrame:
            """The measures of every image (then the summary statistics), on a thread per core: N4, most of
            the cost, runs in SimpleITK with the GIL released."""
            with ThreadPoolExecutor(max_workers=WORKERS) as pool:
                rows = list(pool.map(lambda i: one(i, images, labels), range(len(images))))
            frame = pd.DataFrame(rows, columns=list(IQMS) + ["niqe"] + list(iqms.SUMMARIES))
            if scorer is not None:
                for column, values in scorer.score(images).items():
                    frame[column] = values
            return frame

        tick = context.progress("quality: measures", len(cand))
        table = per_sample(cand.images, cand.labels)
        tick(len(cand))
        table["sample_id"] = list(cand.ids)
        table["degenerate"] = [int(iqms.is_degenerate(im)) for im in cand.images]
        # the declared columns first, in their order, then what pyiqa added
        table = table[list(self.columns) + [c for c in table.columns if c not in self.columns]]

        real_idx = np.sort(rng.choice(len(real), size=min(len(real), MAX_REAL_SLICES), replace=False))
        pick = lambda s, idx: s.labels[idx] if s.labels is not None else None  # noqa: E731
        real_table = per_sample(real.images[real_idx], pick(real, real_idx))
        # train's measures only draw its boxes in the figure: a sample of them is enough for a box
        fig_idx = fit_idx[:: max(1, int(np.ceil(len(fit_idx) / FIGURE_TRAIN_SLICES)))]
        train_table = per_sample(train.images[fig_idx], pick(train, fig_idx)) if real is not train else real_table
        per_sample_metrics = list(IQMS) + ["niqe"] + (scorer.columns if scorer else [])
        versus_real = compare(table, real_table, per_sample_metrics, context.seed)

        device = resolve_device(context.device)
        extractor = build_extractor(params.extractor, None, params.prefilter_sigma, str(device))
        detector = Detector(extractor, "dihedral", cache_dir=context.cache_dir if params.cache else None,
                            batch_size=context.batch_size)
        # the memorization check's reference features (shared cache): on its square canvas when non-square. Only
        # their identity rows are used here, so without a cached entry only those are extracted (not every
        # transform's and nuisance copy's: ten extractions per train image), and nothing is stored
        square_train = on_square_canvas(train).images
        reference = detector.cached_reference_features(square_train, canvas_digest(train))
        cache_hit = reference is not None
        embed = lambda layers: np.concatenate(layers, axis=1)  # noqa: E731 - raw pooled features, side by side
        f_train = embed([r[: len(train)] for r in reference] if cache_hit else detector.features(square_train))
        f_hold = embed(detector.features(on_square_canvas(holdout).images)) if holdout is not None else None
        f_cand = embed(detector.features(on_square_canvas(cand).images))
        set_scalars = distribution_metrics(f_train, f_hold, f_cand) if len(cand) > 2 else {}
        # every declared set-level metric is present; NaN where undefined (no holdout, too few samples)
        set_scalars.update({f"{c}_mean": iqms.defined_mean(table[c]) for c in per_sample_metrics})
        scalars = {m.name: float(set_scalars.get(m.name, np.nan)) for m in self.metrics if m.aggregate == "scalar"}

        insensitive: dict[str, str] = {}
        insensitive_to: dict[str, dict[str, str]] = {}
        diagnostics: dict = {"niqe_patches": niqe_model.n_patches, "reference_cache_hit": cache_hit,
                             "reference_cache": detector.cache_status_,
                             "distribution_reference": "holdout" if holdout is not None else "train",
                             "versus_real": versus_real,
                             "outside_real_band": sorted(m for m, v in versus_real.items() if v["inside_band"] is False)}
        # a degenerate sample (blank, constant, a few voxels) is counted by degenerate_fraction and named here
        degenerate = [sid for sid, d in zip(cand.ids, table["degenerate"]) if d]
        diagnostics["degenerate_samples"] = {"count": len(degenerate), "ids": degenerate[:MAX_NAMED]}
        diagnostics.update({f"{m}_real": round(float(v), 6) for m, v in set_scalars.items() if m.endswith("_real")})
        figures: list[Figure] = [Figure(
            "Candidate against real, per metric", distribution_figure(table, real_table, train_table, versus_real),
            f"Boxes: train, real ({diagnostics['distribution_reference']}) and candidate values per slice. Green: "
            f"the real-vs-real band, the 95 % range of the mean of {len(cand)} real slices drawn at random; the "
            "dot is the candidate's mean (red when outside the band). NIQE is fitted on train.")]
        if params.self_test:
            # the self-test sees only real data, so it is the same for every candidate against this reference
            cache = FeatureCache(context.cache_dir) if params.cache and context.cache_dir else None
            key = _self_test_key(real, train, holdout, extractor, scorer, params, context.seed)
            found = cache.load(key) if cache is not None else None
            cached = _self_test_from_arrays(found.arrays) if found is not None and found.status == "hit" else None
            if cached is not None:
                rho, with_ventricles, undefined_clean, per_sample_test = cached
            else:
                steps = 1 + sum(len(p.levels) for p in PERTURBATIONS.values()) + 2 * len(SET_LEVELS)
                rho, with_ventricles, undefined_clean, per_sample_test = self._self_test(
                    real.images, train.images, f_train, f_hold, per_sample, detector, embed, params, context.seed,
                    context.progress("quality: self-test (perturbed real slices)", steps))
                if cache is not None:
                    cache.store(key, _self_test_arrays(rho, with_ventricles, undefined_clean, per_sample_test))
            diagnostics["self_test_cache"] = found.status if found is not None else "off"
            diagnostics["self_test_slices_with_ventricles"] = with_ventricles
            diagnostics["undefined_on_clean_real"] = undefined_clean
            matrix = {m: {p: round(v, 3) for p, v in row.items()} for m, row in rho.items()}
            diagnostics["sensitivity_rho"] = matrix
            for metric_name, base in [(f"{m}_mean", m) for m in IQMS + ("niqe",)] + [(m, m) for m in SET_METRICS] + \
                    [(f"{m}_ratio", m) for m in ("fid", "kid", "mmd")] + \
                    [(f"{c}_mean", c) for c in (scorer.columns if scorer else [])]:
                row = rho.get(base, {})
                seen = [p for p, v in row.items() if abs(v) >= params.sensitivity_threshold]
                if base in TPM:
                    insensitive[metric_name] = ("needs each sample's label map, and the self-test perturbs unlabelled "
                                                "real slices: its sensitivity is not measured (pin the rule to block)")
                elif base in undefined_clean:
                    insensitive[metric_name] = ("undefined on every clean real slice of the self-test (for "
                                                "instance no background noise), so it cannot respond")
                elif not seen:
                    insensitive[metric_name] = (f"|Spearman rho| < {params.sensitivity_threshold:g} for every "
                                                f"perturbation in the self-test on this data")
            diagnostics["insensitive_metrics"] = sorted(insensitive)
            diagnostics["per_sample_rho"] = per_sample_test.rho
            diagnostics["per_sample_monotonic"] = per_sample_test.monotonic
            insensitive_to = _unseen_per_sample(per_sample_test, params)
            diagnostics["per_sample_sees"] = {m: sorted(f for f, why in row.items() if why is None)
                                              for m, row in insensitive_to.items()}
            diagnostics["unseen_failures"] = sorted(p for p in next(iter(rho.values()))
                                                    if all(abs(r.get(p, 0)) < params.sensitivity_threshold
                                                           for r in rho.values()))
            # a metric that looks *better* as a failure grows is fooled by it, whatever |rho| says
            diagnostics["fooled_by"] = {m: sorted(p for p, v in row.items()
                                                  if BETTER.get(m, 0) * v >= params.sensitivity_threshold)
                                        for m, row in rho.items()}
            diagnostics["fooled_by"] = {m: v for m, v in diagnostics["fooled_by"].items() if v}
            diagnostics["seen_only_as_improvement"] = sorted(
                p for p in next(iter(rho.values()))
                if p not in diagnostics["unseen_failures"]
                and all(p in diagnostics["fooled_by"].get(m, []) for m, r in rho.items()
                        if abs(r.get(p, 0)) >= params.sensitivity_threshold))
            figures.append(Figure("Sensitivity of each metric to each perturbation", _heatmap(rho, params),
                                  "Spearman rho between the metric and the perturbation's severity (0 = clean, "
                                  f"then 4 levels) on {params.self_test_slices} real slices; |rho| < "
                                  f"{params.sensitivity_threshold:g} means the metric cannot see that failure. "
                                  + _blind_statement(diagnostics)))
        return CheckOutput(table=table, scalars=scalars, insensitive=insensitive, insensitive_to=insensitive_to,
                           diagnostics=diagnostics,
                           figures=figures, provenance={"extractor": extractor.name, "device": describe(device),
                                                        "extractor_weights_sha256": extractor.weights_sha256(),
                                                        "niqe_block": params.niqe_block,
                                                        **(scorer.provenance() if scorer else {})})

    @staticmethod
    def _self_test(real, train, f_train, f_hold, per_sample, detector, embed, params,
                   seed, tick=lambda _n: None) -> tuple[dict[str, dict[str, float]], int, list[str], "SelfTestPerSample"]:
        rng = np.random.default_rng(seed + 104729)
        k = min(params.self_test_slices, len(real))
        base = real[rng.choice(len(real), size=k, replace=False)]
        reference = f_hold if f_hold is not None else f_train

        def measure(images: np.ndarray) -> tuple[dict[str, float], dict[str, np.ndarray]]:
            """Set-level values (means, distribution metrics) and the per-slice values behind the means."""
            table = per_sample(images).drop(columns=list(iqms.SUMMARIES))
            out = {m: iqms.defined_mean(table[m]) for m in table.columns}
            feats = embed(detector.features(images))
            # the candidate-side metrics only: the real-vs-real baseline does not change with the perturbation
            dist = distribution_metrics(reference, None, feats)
            out.update({m: dist[m] for m in SET_METRICS})
            tick(1)
            return out, {m: table[m].to_numpy(dtype=float) for m in table.columns}

        clean, clean_slices = measure(base)
        series: dict[str, list[dict[str, float]]] = {}
        # per slice, for the perturbations applied slice by slice (memorisation and mode collapse act on the set)
        slice_series: dict[str, list[dict[str, np.ndarray]]] = {}
        for name, p in PERTURBATIONS.items():
            steps = [measure(np.stack([p(im, s, seed + i) for i, im in enumerate(base)]))
                     for s in range(1, len(p.levels) + 1)]
            series[name] = [clean] + [summary for summary, _ in steps]
            slice_series[name] = [clean_slices] + [values for _, values in steps]
        series["memorisation"] = [clean] + [measure(memorise(base, train, f, seed))[0] for f in SET_LEVELS]
        series["mode_collapse"] = [clean] + [measure(mode_collapse(base, f, seed))[0] for f in SET_LEVELS]
        rho: dict[str, dict[str, float]] = {}
        for metric in clean:
            for pert, values in series.items():
                v = np.array([x[metric] for x in values], dtype=float)
                r = stats.spearmanr(np.arange(len(v)), v).statistic if np.ptp(v) > 0 and np.isfinite(v).all() else 0.0
                rho.setdefault(metric, {})[pert] = float(r) if np.isfinite(r) else 0.0
        undefined_clean = sorted(m for m, v in clean.items() if not np.isfinite(v))
        per_sample = SelfTestPerSample(*per_sample_matrices(slice_series))
        return rho, int(sum(ventricles(im).any() for im in base)), undefined_clean, per_sample


#: bump when the self-test's perturbations, their levels or the measures change (cached results go stale)
SELF_TEST_FORMAT = 3  # 2: FWHM, INU and QI1; 3: noise, bg_energy, INU sd, QI2, rPVE, TPM overlap, N4 settings


def _self_test_key(real: ImageSet, train: ImageSet, holdout: ImageSet | None, extractor, scorer,
                   params: QualityParams, seed: int) -> str:
    """Everything the self-test's result depends on: the real sets' content, the feature space, the
    pyiqa weights, the parameters and the seed (never the candidate)."""
    return cache_key(kind="quality-self-test", format=SELF_TEST_FORMAT, code=gate.__version__, real=real.manifest_sha256(),
                     train=train.manifest_sha256(), holdout=holdout.manifest_sha256() if holdout is not None else None,
                     extractor=extractor.name, weights=extractor.weights_sha256(),
                     scorer=scorer.provenance() if scorer is not None else None,
                     params=params.model_dump(mode="json"), seed=seed)


#: what a rule's ``guards`` may name: a perturbation of the self-test, or the kind of failure it stands for
FAMILIES = tuple(PERTURBATIONS) + tuple(sorted({p.kind for p in PERTURBATIONS.values()}))


def _unseen_per_sample(test: "SelfTestPerSample", params: QualityParams) -> dict[str, dict[str, str | None]]:
    """For each per-sample metric (as its ``*_mean`` rule metric), every failure family: None where it sees it
    slice by slice, else why not; a rule that ``guards`` an unseen one is downgraded (unless pinned)."""
    out: dict[str, dict[str, str | None]] = {}
    for metric, row in test.rho.items():
        seen = {p for p, r in row.items()
                if sees(r, test.monotonic[metric][p], BETTER.get(metric, 0), params.sensitivity_threshold,
                        params.per_sample_monotonic)}
        seen |= {PERTURBATIONS[p].kind for p in seen}
        out[f"{metric}_mean"] = {
            family: None if family in seen else (
                f"per sample it does not see {family}: no perturbation of that family reaches |rho| >= "
                f"{params.sensitivity_threshold:g} over slices x severities with {params.per_sample_monotonic:.0%} "
                "of the slices monotonic, in the worsening direction")
            for family in FAMILIES}
    return out


@dataclasses.dataclass(frozen=True)
class SelfTestPerSample:
    """The per-sample matrices: pooled Spearman rho over slices x severities, and the share of slices
    that move monotonically with severity (sensitivity.per_sample_matrices)."""

    rho: dict[str, dict[str, float]]
    monotonic: dict[str, dict[str, float]]


def _matrix_arrays(prefix: str, m: dict[str, dict[str, float]]) -> dict:
    metrics, perts = list(m), list(next(iter(m.values()))) if m else []
    return {f"{prefix}metrics": np.array(metrics, dtype=str), f"{prefix}perturbations": np.array(perts, dtype=str),
            f"{prefix}values": np.array([[m[a][b] for b in perts] for a in metrics], dtype=float).reshape(
                len(metrics), len(perts))}


def _matrix_from_arrays(prefix: str, a: dict) -> dict[str, dict[str, float]] | None:
    perts, metrics = [str(p) for p in a[f"{prefix}perturbations"]], [str(m) for m in a[f"{prefix}metrics"]]
    values = np.asarray(a[f"{prefix}values"], dtype=float)
    if values.shape != (len(metrics), len(perts)) or not perts or not np.isfinite(values).all():
        return None
    return {m: {p: float(v) for p, v in zip(perts, row)} for m, row in zip(metrics, values)}


def _self_test_arrays(rho: dict[str, dict[str, float]], with_ventricles: int, undefined: list[str],
                      per_sample: SelfTestPerSample) -> dict:
    return {**_matrix_arrays("", rho), **_matrix_arrays("ps_rho_", per_sample.rho),
            **_matrix_arrays("ps_mono_", per_sample.monotonic),
            "with_ventricles": np.array([with_ventricles]), "undefined": np.array(undefined, dtype=str)}


def _self_test_from_arrays(a: dict) -> tuple[dict[str, dict[str, float]], int, list[str], SelfTestPerSample] | None:
    """The cached result, or None (recompute) when an authentic entry is not a whole one."""
    try:
        parts = [_matrix_from_arrays(prefix, a) for prefix in ("", "ps_rho_", "ps_mono_")]
        if any(p is None for p in parts):
            return None
        rho, ps_rho, ps_mono = parts
        return rho, int(a["with_ventricles"][0]), [str(m) for m in a["undefined"]], SelfTestPerSample(ps_rho, ps_mono)
    except (KeyError, IndexError, TypeError, ValueError):
        return None


def _blind_statement(d: dict) -> str:
    """The plain statement the report owes its reader: which failures these metrics cannot see here."""
    unseen, improving = d["unseen_failures"], d["seen_only_as_improvement"]
    parts = [f"On this data no quality metric sees: {', '.join(unseen)}." if unseen
             else "Every perturbation moves at least one metric."]
    if improving:
        parts.append(f"These look like an improvement to every metric that responds: {', '.join(improving)}.")
    parts.append("Whatever this matrix says, these metrics do not check anatomy against labels or memorisation "
                 "per sample: the memorization and segmentation checks do.")
    return " ".join(parts)


def _heatmap(rho: dict[str, dict[str, float]], params: QualityParams) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from gate_plugins.toolkit.figures import png as _png

    metrics = list(rho)
    perts = list(next(iter(rho.values())))
    m = np.array([[rho[a][b] for b in perts] for a in metrics])
    fig, ax = plt.subplots(figsize=(0.6 * len(perts) + 2, 0.35 * len(metrics) + 1.5))
    ax.imshow(np.abs(m), cmap="viridis", vmin=0, vmax=1)
    ax.set_xticks(range(len(perts)), perts, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(metrics)), metrics, fontsize=7)
    for i in range(len(metrics)):
        for j in range(len(perts)):
            ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=5,
                    color="white" if abs(m[i, j]) < params.sensitivity_threshold else "black")
    return _png(fig)
