"""The memorization validator: Calibrated Memorization Index per candidate sample, matched under the
transformations a copying generator can apply, with conformal p-values and Benjamini-Hochberg flags."""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, field_validator

from gate.errors import InputError
from gate.validators import CheckContext, CheckOutput, Figure, MetricDef, Plan
from gate_plugins.memorization import figures, maths
from gate_plugins.memorization.detector import Detector
from gate_plugins.toolkit.extractors import build_extractor
from gate_plugins.memorization.grouping import subjects_of
from gate_plugins.memorization.transforms import apply, transform_set
from gate_plugins.toolkit import baselines
from gate_plugins.toolkit.canvas import canvas_digest, on_square_canvas
from gate_plugins.toolkit.device import describe, device_problem, resolve_device
from gate_plugins.toolkit.engines import ExtractorSpec, build_engine, engine_problem
from gate_plugins.memorization.volumes import copied_volumes


class PowerRequirement(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    copy_rate: float = Field(gt=0, lt=1, description="share of copied samples the check must be able to refuse")
    at_least: float = Field(gt=0, lt=1, description="with at least this probability (else the check errs)")


class MemorizationParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    extractor: Literal["efficientnet-lite0", "scattering-j3l8", "mri-core"] = Field(
        "efficientnet-lite0", description="feature extractor (chosen by the README's benchmark)")
    checkpoint: Path | None = Field(None, description="local MRI-CORE checkpoint (extractor: mri-core)")
    prefilter_sigma: float = Field(2.0, ge=0, le=10, description="Gaussian low-pass (pixels) before features")
    invariance: Literal["dihedral", "none"] = Field(
        "dihedral", description="match under the 8 flips/90-degree rotations ('none': the paper's plain matching)")
    nuisance_copies: int = Field(
        2, ge=0, le=10, description="misaligned copies (shift, zoom, elastic) per train image whose feature "
                                    "changes the whitening learns to ignore; 0 is the paper's whitening")
    match_side: Literal["auto", "reference", "query"] = Field(
        "auto", description="where the invariance transforms are applied: to every train image (reference) or to "
                            "each query, i.e. candidates, holdout and planted copies, searched against the train "
                            "images as they are (query); auto: the side that extracts fewer images. Recorded: the "
                            "two sides agree on copies but not exactly elsewhere")
    nuisance_images: int = Field(
        512, ge=2, le=100_000, description="train images (a seeded sample when there are more) whose misaligned "
                                           "copies estimate the nuisance covariance")
    covariance: Literal["ledoit_wolf", "empirical"] = Field(
        "ledoit_wolf", description="covariance behind the ZCA whitening; 'empirical' is the paper's")
    calibration: Literal["auto", "holdout", "train_halves"] = Field(
        "auto", description="null for MI and p-values: holdout->train similarities ('auto': when the "
                            "policy has a holdout), or the paper's train half-vs-half null")
    null_splits: int = Field(10, ge=1, le=100, description="random disjoint half-splits of train for the paper's null")
    null_seed: int = Field(1234, ge=0, description="seed of the null's splits (the authors' code uses 1234)")
    flagging: Literal["bh", "mi_threshold"] = Field(
        "bh", description="'bh': Benjamini-Hochberg on the p-values at level fdr; 'mi_threshold': MI > mi_threshold")
    fdr: float = Field(0.05, gt=0, lt=1, description="false-discovery rate of the BH flags")
    mi_threshold: float = Field(3.0, allow_inf_nan=False, description="MI above which a sample is flagged "
                                                                      "(flagging: mi_threshold)")
    verify_k: int = Field(3, ge=0, le=20, description="train images retrieved per sample and verified by "
                          "registration (similarity transform, rank NMI); 0: retrieval only, the paper's")
    verify_contrast: bool = Field(
        True, description="verification scores a sample by how much better it aligns with train than with the "
                          "holdout (false: by its alignment with train alone, which smooth generators inflate)")
    subject_pattern: str | None = Field(
        None, max_length=100,
        description="regular expression finding the subject in a holdout image's id (its first group, else the "
                    "match); a holdout image's non-members exclude its own subject. Default: a volume's slices "
                    "share their file, and a file name without its last number names its subject")
    tail: bool = Field(True, description="p-values beyond the null's largest value from a generalised Pareto "
                                         "tail fitted to it (false: conformal only, floor 1/(n_null+1))")
    alpha: float = Field(0.01, gt=0, lt=0.5, description="false-refusal rate of the set-level copy test "
                                                         "(copy_test_p, copying_detected) for an honest generator")
    power: PowerRequirement | None = Field(
        None, description="refuse to vouch for a pass unless copying at copy_rate is refused with probability "
                          ">= at_least at these sizes (the report says how many samples or holdout images it takes)")
    cache: bool = Field(True, description="reuse reference features from the content-addressed cache")
    self_check: bool = Field(True, description="on every run, plant augmented train copies (and, with a holdout, "
                                               "use the holdout as known-novel) and check the flags")
    self_check_copies: int = Field(48, ge=1, le=1000, description="planted copies; BH needs about 1/fdr of them "
                                                                  "to flag any at the coarsest p-value")

    @field_validator("subject_pattern")
    @classmethod
    def _compiles(cls, v: str | None) -> str | None:
        try:
            if v is not None:
                re.compile(v)
        except re.error as e:
            raise ValueError(f"not a regular expression ({e.msg})") from None
        return v


def _uses_holdout(params: MemorizationParams, holdout) -> bool:
    """The null comes from the holdout with calibration: holdout, or auto when there is one."""
    return holdout is not None and params.calibration in ("holdout", "auto")


class MemorizationValidator:
    name: ClassVar[str] = "memorization"
    blind_spots: ClassVar[tuple[str, ...]] = (
        "Copies of images that are not in the train set given to gate (another cohort the model saw) cannot be found.",
        "A copy disguised by more than the invariance set covers (transforms beyond flips, 90-degree rotations, "
        "shifts, noise and contrast changes, or heavy local editing) may score as novel.",
        "It says whether samples copy training images, not whether they are anatomically plausible or useful.",
    )
    advice: ClassVar[dict[str, str]] = {
        "*": "The generator reproduces training images: look at the flagged samples beside their nearest train "
             "images. Retrain with more data or augmentation, regularise or stop earlier, or deduplicate the "
             "training set; do not release samples of this version, which may disclose patients' scans.",
    }
    Params: ClassVar[type[BaseModel]] = MemorizationParams
    columns: ClassVar[tuple[str, ...]] = (
        "sample_id", "similarity", "mi", "oni", "nn_train_id", "consensus", "p_value", "flagged",
        "nn_transform", "copy_evidence", "authentic", "verified_similarity", "verified_nn_train_id",
        "p_retrieval", "p_verified", "verified_holdout_similarity")
    metrics: ClassVar[tuple[MetricDef, ...]] = (
        MetricDef("mi_mean", "mi", "mean", "mean Memorization Index (z-score against the calibration null)"),
        MetricDef("oni_mean", "oni", "mean", "mean Overfit/Novelty Index, -tanh(MI): -1 copy, +1 novel"),
        MetricDef("mi_max", "mi", "max", "largest Memorization Index of any sample"),
        MetricDef("fraction_flagged", "flagged", "mean", "share of samples flagged as copies"),
        MetricDef("n_flagged", "flagged", "sum", "number of samples flagged as copies"),
        MetricDef("copied_fraction", "copy_evidence", "mean",
                  "Storey estimate of the fraction of copied samples (0 on average for a novel set)"),
        MetricDef("copy_test_p", None, "scalar", "set-level p-value that no sample is a copy: Simes over the "
                                                 "per-sample p-values and the count test, joined by Bonferroni"),
        MetricDef("copying_detected", None, "scalar", "1 when copy_test_p <= alpha: the set test refuses it as "
                                                      "copying, with false-refusal rate alpha for novel samples"),
        MetricDef("n_beyond_null", None, "scalar", "samples more similar to train than every calibration image"),
        MetricDef("count_test_p", None, "scalar", "model-free p-value of n_beyond_null (beta-binomial under "
                                                  "exchangeability; no tail model, weaker with a small null)"),
        MetricDef("p_min", "p_value", "min", "smallest per-sample p-value"),
        MetricDef("similarity_mean", "similarity", "mean", "mean aggregated 1-NN cosine similarity s"),
        # the paper's baselines, in the same feature space (see README); they describe, the index decides
        MetricDef("authenticity", "authentic", "mean",
                  "share of authentic samples (Alaa et al. 2022): not closer to their nearest train image "
                  "than that image is to its own nearest train neighbour"),
        MetricDef("fid", None, "scalar", "Frechet distance between candidate and train features (falls when copying)"),
        MetricDef("mmd", None, "scalar", "unbiased RBF-kernel MMD^2 between candidate and train features (each set "
                                                 "subsampled to 2000 rows, seeded, when larger)"),
        MetricDef("kid", None, "scalar", "Kernel Inception Distance (cubic kernel) between candidate and train (each "
                                                 "set subsampled to 2000 rows, seeded, when larger)"),
        MetricDef("n_copied_volumes", None, "scalar", "candidate volumes whose flagged slices match consecutive "
                                                      "slices of one train volume (0 for 2D data)"),
        MetricDef("ct", None, "scalar", "data-copying statistic C_T (Meehan et al. 2020) against the holdout: "
                                        "strongly negative when copying; needs data.holdout"),
    )

    def preflight(self, plan: Plan, params: MemorizationParams) -> list[str]:
        """What the sizes, shapes and holdout names already rule out (before any feature is computed)."""
        train, holdout = plan.train, plan.holdout
        problems = [p for p in [device_problem(plan.device), engine_problem(plan.engine)] if p]
        if len(train) < 4:
            problems.append(f"{train.name}: the memorization null needs at least 4 train images, got {len(train)}")
        if plan.candidate_shape is not None and tuple(plan.candidate_shape) != tuple(train.shape):
            problems.append(f"candidate images are {tuple(plan.candidate_shape)} but train images are {train.shape}")
        if params.calibration == "holdout" and holdout is None:
            problems.append("calibration: holdout needs a data.holdout folder in the policy")
        if _uses_holdout(params, holdout) and params.verify_k and params.verify_contrast:
            groups = subjects_of(holdout.ids, params.subject_pattern)
            if len(set(groups)) < 2:
                rule = "subject_pattern" if params.subject_pattern else "their names"
                problems.append(f"{holdout.name}: all {len(holdout)} holdout images belong to one subject "
                                f"({groups[0][:80]!r}, by {rule}); the verification contrast needs at least 2 "
                                "subjects (or verify_contrast: false)")
        return problems

    def run(self, context: CheckContext, params: MemorizationParams) -> CheckOutput:
        train, cand, holdout = context.train, context.candidate, context.holdout
        problems = self.preflight(Plan(train, holdout, len(cand), cand.labels is not None, cand.shape), params)
        if problems:
            raise InputError("; ".join(problems))
        for label, imgs in (("train", train.images), ("candidate", cand.images)):
            # a batch at a time: a cohort's set may be mapped from disk, and a whole-set mask is 1 byte a pixel
            if not all(np.isfinite(imgs[s:s + 4096]).all() for s in range(0, len(imgs), 4096)):
                raise InputError(f"{label} images contain non-finite values")
        use_holdout = _uses_holdout(params, holdout)
        train_digest = train.manifest_sha256()
        if params.invariance != "none":  # a non-square set is matched on a square canvas (toolkit.canvas)
            train_digest = canvas_digest(train)
            train, cand, holdout = (on_square_canvas(s) for s in (train, cand, holdout))

        device = resolve_device(context.device)
        extractor = build_extractor(params.extractor, params.checkpoint, params.prefilter_sigma, str(device))
        engine = build_engine(context.engine, extractor, ExtractorSpec(
            params.extractor, str(params.checkpoint) if params.checkpoint else None, params.prefilter_sigma,
            str(device)), context.workers)
        detector = Detector(extractor, params.invariance, params.covariance, params.null_splits, params.null_seed,
                            context.batch_size, context.cache_dir if params.cache else None, params.nuisance_copies,
                            params.tail, params.verify_k, verify_contrast=params.verify_contrast,
                            match_side=params.match_side, nuisance_images=params.nuisance_images, engine=engine)
        groups = subjects_of(holdout.ids, params.subject_pattern) if use_holdout else None
        n_queries = len(cand) + (params.self_check_copies if params.self_check else 0)
        tick = context.progress(f"memorization: {extractor.name} reference",
                                detector.fit_work(len(train), len(holdout) if use_holdout else 0, n_queries))
        detector.fit(train.images, digest=train_digest, calibration=holdout.images if use_holdout else None,
                     calibration_groups=groups, progress=tick, n_queries=n_queries)
        cand_layers = detector.features(cand.images, context.progress("memorization: candidates", len(cand)))
        index = detector.index_
        scores = detector.score(cand.images, layers=cand_layers, verify_progress=context.progress(
            "memorization: verifying candidates", detector.verify_passes * len(cand))
            if detector.verifying else (lambda _n: None))
        emb_train, emb_cand = detector.train_embedding(), detector.embed(cand_layers)
        emb_hold = detector.embed(detector.calibration_features_) if detector.calibration_features_ else None
        authentic = baselines.authenticity(emb_train, emb_cand)
        scalars = {
            "fid": baselines.frechet_distance(emb_train, emb_cand) if len(cand) > 1 else float("nan"),
            "mmd": baselines.mmd_rbf(emb_train, emb_cand) if len(cand) > 1 else float("nan"),
            "kid": baselines.kid(emb_train, emb_cand) if len(cand) > 1 else float("nan"),
            "ct": baselines.data_copying_ct(emb_train, emb_hold, emb_cand, seed=context.seed)
            if emb_hold is not None else float("nan"),
        }

        m, n_null = len(cand), len(index.null_)
        decision = maths.set_test(scores.p_value, scores.similarity, index.null_, params.alpha)
        simes_p, n_beyond = decision.simes_p, decision.n_beyond_null
        scalars.update(count_test_p=decision.count_test_p, n_beyond_null=float(n_beyond),
                       copy_test_p=decision.copy_test_p, copying_detected=float(decision.copying_detected))

        check = planted_p = None
        if params.self_check:
            check, planted_p = self._self_check(detector, train.images, params, context.seed)
        power = maths.power_analysis(planted_p if planted_p is not None else np.zeros(0), m, n_null, params.alpha)
        # the self-check and the power requirement decide whether a *pass* can be vouched for; a set that
        # a block rule refuses fails on that evidence, whatever they found (the engine decides)
        problems = []
        if check is not None and not check.passed:
            problems.append(f"memorization self-check failed: {check.reason}; the detector is not fit for this "
                            "data, so this check cannot vouch for the candidate")
        if params.power is not None and check is None:
            problems.append("memorization power: the power analysis needs self_check: true (its planted copies)")
        elif params.power is not None:
            problems.extend(_power_shortfall(power, params.power, index.tail_ is not None))

        if params.flagging == "bh":
            flagged = maths.benjamini_hochberg(scores.p_value, params.fdr)
        else:
            flagged = scores.mi > params.mi_threshold
        nn_first = scores.nn_index[0]
        evidence = maths.copy_evidence(scores.p_value)
        table = pd.DataFrame({
            "sample_id": list(cand.ids),
            "similarity": scores.similarity,
            "mi": scores.mi,
            "oni": scores.oni,
            "nn_train_id": [train.ids[i] for i in nn_first],
            "consensus": scores.consensus,
            "p_value": scores.p_value,
            "flagged": flagged.astype(int),
            "nn_transform": [detector.transforms[t] for t in scores.nn_transform[0]],
            "copy_evidence": evidence,
            "authentic": authentic.astype(int),
        })
        nan = np.full(m, np.nan)
        verified = scores.verified is not None
        table["verified_similarity"] = scores.verified if verified else nan
        table["verified_nn_train_id"] = [train.ids[i] for i in scores.verified_nn_index] if verified else [""] * m
        table["p_retrieval"] = scores.p_retrieval if verified else scores.p_value
        table["p_verified"] = scores.p_verified if verified else nan
        table["verified_holdout_similarity"] = scores.verified_non_member \
            if verified and scores.verified_non_member is not None else nan
        for k, layer in enumerate(extractor.layers):
            table[f"similarity_{layer}"] = scores.per_layer[k]
        volumes = copied_volumes(table["sample_id"], table["nn_train_id"], flagged)
        scalars["n_copied_volumes"] = float(sum(v.copied for v in volumes))

        p_floor = 1.0 / (n_null + 1)
        null_mi = (index.null_ - index.mu0_) / index.sigma0_
        paper_mi = (index.paper_null_ - index.mu0_) / index.sigma0_
        order = np.argsort(-scores.similarity)
        shown = [i for i in order if flagged[i]][:8] or list(order[:8])
        # the pair shown is the verified one when verification found the sample (it is the aligned match)
        shown_nn = scores.verified_nn_index if verified else nn_first
        shown_t = scores.verified_nn_transform if verified else scores.nn_transform[0]
        pairs = [(int(i), int(shown_nn[i]), f"{cand.ids[i]}\ns={scores.similarity[i]:.3f} MI={scores.mi[i]:.1f}\n"
                  f"p={scores.p_value[i]:.3g}" + (f" v={scores.verified[i]:.3f}" if verified else ""),
                  f"{train.ids[shown_nn[i]]}\n{detector.transforms[shown_t[i]]}")
                 for i in shown]
        return CheckOutput(
            cannot_vouch="; ".join(problems) or None,
            table=table,
            scalars=scalars,
            provenance={
                "extractor": extractor.name,
                "device": describe(device),
                "extractor_layers": list(extractor.layers),
                "extractor_weights_sha256": extractor.weights_sha256(),
                "prefilter_sigma": params.prefilter_sigma,
                "transforms": detector.transforms,
                "match_side": detector.side_,
                "engine": engine.describe(),
                "search": detector.index_.searchers_[0].describe(),
                "nuisance_images": int(len(detector.nuisance_sources(len(train)))) if params.nuisance_copies else 0,
                "reference_cache_hit": detector.cache_hit_, "reference_cache": detector.cache_status_,
            },
            diagnostics={
                "calibration": index.calibration_,
                "null_mu0": index.mu0_, "null_sigma0": index.sigma0_, "null_size": n_null,
                "paper_null_mu0": float(index.paper_null_.mean()), "paper_null_sigma0": float(index.paper_null_.std()),
                "paper_null_size": int(len(index.paper_null_)),
                "p_value_floor": p_floor,
                # without a tail BH can only flag k samples out of m if k >= m * p_floor / fdr
                "min_flaggable_copies": 1 if index.tail_ is not None else int(math.ceil(m * p_floor / params.fdr)),
                "tail_model": dataclasses.asdict(index.tail_) if index.tail_ is not None else None,
                "set_test": {"simes_p": simes_p, "count_test_p": scalars["count_test_p"], "n_beyond_null": n_beyond,
                             "alpha": params.alpha},
                "verification": {
                    "k": params.verify_k, "null_size": len(detector.verified_null_),
                    "statistic": "membership contrast: z(aligned similarity to train) - z(to holdout, own subject "
                                 "excluded for a holdout image)" if params.verify_contrast else "z(aligned similarity "
                                 "to train)",
                    "holdout_subjects": len(set(groups or ())),
                    "holdout_subject_rule": params.subject_pattern or "volume file, or file name without its last number",
                    "warning": "every holdout image is its own subject by its name: if some are slices of one subject, "
                               "a holdout image's neighbouring slices count as its non-members, which refuses honest "
                               "generators too often; name the subjects (subject_pattern)"
                    if params.verify_contrast and groups and len(set(groups)) == len(groups) > 1 else None,
                    "null_train_similarity_mean": float(np.mean(detector.verified_train_null_)),
                    "null_train_similarity_max": float(np.max(detector.verified_train_null_)),
                    "null_statistic_max": float(np.max(detector.verified_null_)),
                    "tail_model": dataclasses.asdict(detector.verified_tail_) if detector.verified_tail_ else None,
                    "registration": dataclasses.asdict(detector.verify_settings),
                } if detector.verifying else None,
                "power": {**dataclasses.asdict(power), "refusal_probability": {
                    f"{c:g}": power.refusal_probability(c) for c in (0.01, 0.02, 0.05, 0.1)}},
                "copied_fraction_ci95": _storey_ci(evidence),
                "whitening_shrinkage": {layer: w.shrinkage for layer, w in zip(extractor.layers, index.whiteners_)},
                "train_size": len(train), "candidate_size": m,
                "self_check": dataclasses.asdict(check) if check else None,
                "volumes": [dataclasses.asdict(v) for v in volumes],
                "flagged_samples": [
                    {"sample_id": r.sample_id, "nn_train_id": r.nn_train_id, "transform": r.nn_transform,
                     "similarity": float(r.similarity), "mi": float(r.mi), "p_value": float(r.p_value),
                     "verified_similarity": float(r.verified_similarity),
                     "verified_nn_train_id": r.verified_nn_train_id}
                    for r in table[table["flagged"] == 1].sort_values("p_value")
                    .head(100).itertuples()],
            },
            figures=[
                Figure("MI and ONI against the null", figures.histograms(scores.mi, null_mi, paper_mi, index.calibration_),
                       f"Calibration null: {index.calibration_} ({n_null} values); the paper's train half-vs-half "
                       f"null is shown for reference."),
                Figure("Flagged samples (or the most similar) beside their nearest train image",
                       figures.top_pairs(cand.images, train.images, pairs),
                       "Top row: candidate with similarity, MI and p-value; bottom row: its nearest train image "
                       "and the transformation under which it matched.", shows_real_images=True),
            ],
        )


    @staticmethod
    def _self_check(detector: Detector, train: np.ndarray, params: MemorizationParams, seed: int):
        """Known positives: augmented copies of train images (a random transform of the invariance set,
        noise of 1 % of the range, intensity x U[0.9, 1.1]). Known negatives: the holdout, each image
        scored against the others (leave-one-out), when the run is calibrated on a holdout. Held-out
        train images are not used as negatives: slices of a training subject look like copies of it.
        Returns the check and the planted copies' p-values (the power analysis's copies)."""
        rng = np.random.default_rng(seed + 7919)
        transforms = transform_set(params.invariance)
        src = rng.choice(len(train), size=params.self_check_copies, replace=params.self_check_copies > len(train))
        planted = []
        for i in src:
            img = apply(train[i][None], transforms[rng.integers(len(transforms))][1])[0].astype(np.float64)
            span = float(img.max() - img.min()) or 1.0
            planted.append(img * rng.uniform(0.9, 1.1) + rng.normal(0, 0.01 * span, img.shape))
        index = detector.index_
        planted = np.stack(planted).astype(np.float32)
        planted_p = detector.score(planted).p_value
        novel_p = detector.null_leave_one_out_p_values() if index.calibration_ == "holdout" else None
        check = maths.self_check(planted_p, novel_p, params.fdr)
        if not check.passed and check.planted_flagged < check.n_planted and index.tail_ is None:
            n = len(index.null_)
            check = dataclasses.replace(check, reason=check.reason + (
                f" (with {n} calibration images no tail could be fitted and the smallest p-value, 1/{n + 1}, "
                f"may be too coarse for BH at fdr {params.fdr:g}: give at least "
                f"{maths.MIN_TAIL_NULL} holdout images)"))
        return check, planted_p


def _power_shortfall(power: maths.PowerAnalysis, need, tail_fitted: bool) -> list[str]:
    """The sizes this run would need to refuse copying at ``need.copy_rate`` with ``need.at_least``."""
    got = power.refusal_probability(need.copy_rate)
    if got >= need.at_least:
        return []
    n = power.samples_needed(need.copy_rate, need.at_least)
    ways = [f"draw at least {n} samples (candidate.n_samples)"] if n is not None else []
    if not tail_fitted:
        ways.append(f"give at least {maths.MIN_TAIL_NULL} holdout images, so that a tail can be "
                    "fitted to the null")
    elif power.caught_alone < 0.5:
        ways.append("give more holdout images (a larger null fits a narrower tail)")
    return [f"memorization power: with {power.n_samples} samples and {power.n_null} calibration images this "
            f"check refuses a generator that copies {need.copy_rate:.0%} of its samples with probability "
            f"{got:.2f}, below the policy's {need.at_least:g}; " + " or ".join(ways or ["use a larger holdout"])]


def _storey_ci(evidence: np.ndarray) -> list[float]:
    m = len(evidence)
    est = float(evidence.mean())
    half = 1.96 * float(evidence.std(ddof=1)) / math.sqrt(m) if m > 1 else float("inf")
    return [est - half, est + half]
