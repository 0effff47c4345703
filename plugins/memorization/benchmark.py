"""Controlled-duplication benchmark (the paper's Table 4 protocol, plus harder conditions) for
several detector variants, with calibration and cost measured on the same data."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

from gate_plugins.memorization import maths
from gate_plugins.memorization.contamination import CONDITIONS, EXTRA_CONDITIONS, LEVELS, PAPER_AUC, contaminate
from gate_plugins.memorization.detector import Detector


@dataclasses.dataclass(frozen=True)
class BenchRow:
    variant: str
    condition: str
    level: float
    auc: float
    tpr_at_1pct_fpr: float
    fraction_flagged: float
    copied_fraction: float
    mi_mean: float


#: set-level scores compared as in the paper's Tables 1-2 (computed for the first variant only)
SET_SCORES = ("copied_fraction", "fraction_flagged", "authenticity", "ct", "fid", "mmd", "kid")


@dataclasses.dataclass(frozen=True)
class VariantStats:
    extract_images_per_s: float
    search_queries_per_s: float
    fit_s: float
    null_mu0: float
    null_sigma0: float
    calibration: str
    novel_fpr: dict[float, float]  # nominal alpha -> share of uncontaminated test samples with p <= alpha
    novel_flagged: float           # share of the uncontaminated test set flagged by BH


@dataclasses.dataclass(frozen=True)
class BenchResult:
    rows: list[BenchRow]
    stats: dict[str, VariantStats]
    fdr: float
    set_scores: dict[tuple[str, float], dict[str, float]] = dataclasses.field(default_factory=dict)

    def by_condition(self, variant: str, condition: str) -> list[BenchRow]:
        return [r for r in self.rows if r.variant == variant and r.condition == condition]


def _tpr_at(labels: np.ndarray, scores: np.ndarray, fpr_max: float) -> float:
    fpr, tpr, _ = roc_curve(labels, scores)
    return float(tpr[fpr <= fpr_max].max())


def _evidence(p: np.ndarray, s: np.ndarray) -> np.ndarray:
    """The per-sample statistic a variant decides with: -log10 of its p-value (retrieval alone, or
    retrieval and verification combined), ties (inside the null's range) broken by the similarity."""
    return -np.log10(np.maximum(p, 1e-300)) + 1e-6 * s


def run_benchmark(train: np.ndarray, test: np.ndarray, variants: dict[str, Detector], *,
                  calibration: np.ndarray | None = None, calibration_groups=None, conditions=tuple(CONDITIONS) + tuple(EXTRA_CONDITIONS),
                  levels=LEVELS, fdr: float = 0.05, seed: int = 0) -> BenchResult:
    """``test`` holds real images of subjects absent from ``train``; ``calibration`` (optional) real
    images of yet other subjects, used as the holdout null by variants whose detector is fitted with it,
    and ``calibration_groups`` their subjects."""
    from gate_plugins.toolkit import baselines

    rows: list[BenchRow] = []
    stats: dict[str, VariantStats] = {}
    set_scores: dict[tuple[str, float], dict[str, float]] = {}
    contaminations = {c: contaminate(train, len(test), c, max(levels), seed + i) for i, c in enumerate(conditions)}
    for label, det in variants.items():
        t0 = time.perf_counter()
        use = getattr(det, "use_calibration", False)
        det.fit(train, calibration=calibration if use else None, calibration_groups=calibration_groups if use else None)
        fit_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        test_layers = det.features(test)
        extract_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        base = det.score(test, layers=test_layers)
        search_s = time.perf_counter() - t0
        stats[label] = VariantStats(
            extract_images_per_s=len(test) / extract_s, search_queries_per_s=len(test) / max(search_s, 1e-9),
            fit_s=fit_s, null_mu0=det.index_.mu0_, null_sigma0=det.index_.sigma0_,
            calibration=det.index_.calibration_,
            novel_fpr={a: float(np.mean(base.p_value <= a)) for a in (0.01, 0.05, 0.10)},
            novel_flagged=float(maths.benjamini_hochberg(base.p_value, fdr).mean()))
        first = not set_scores
        if first:
            emb_train, emb_test = det.train_embedding(), det.embed(test_layers)
            emb_real = det.embed(det.features(calibration)) if calibration is not None else None
        for cond, cont in contaminations.items():
            copy_layers = det.features(cont.copies)
            copies = det.score(cont.copies, layers=copy_layers)
            emb_copies = det.embed(copy_layers) if first else None
            for level in levels:
                labels, used = cont.at(level, len(test))
                s, p, mi = base.similarity.copy(), base.p_value.copy(), base.mi.copy()
                pos = cont.positions[used]
                s[pos], p[pos], mi[pos] = copies.similarity[used], copies.p_value[used], copies.mi[used]
                evidence = _evidence(p, s)
                row = BenchRow(label, cond, level, float(roc_auc_score(labels, evidence)), _tpr_at(labels, evidence, 0.01),
                               float(maths.benjamini_hochberg(p, fdr).mean()),
                               float(maths.copy_evidence(p).mean()), float(mi.mean()))
                rows.append(row)
                if first:
                    emb = emb_test.copy()
                    emb[pos] = emb_copies[used]
                    set_scores[(cond, level)] = {
                        "copied_fraction": row.copied_fraction, "fraction_flagged": row.fraction_flagged,
                        "authenticity": float(baselines.authenticity(emb_train, emb).mean()),
                        "ct": baselines.data_copying_ct(emb_train, emb_real, emb, seed=seed)
                        if emb_real is not None else float("nan"),
                        "fid": baselines.frechet_distance(emb_train, emb), "mmd": baselines.mmd_rbf(emb_train, emb),
                        "kid": baselines.kid(emb_train, emb)}
    return BenchResult(rows, stats, fdr, set_scores)


def render_tables(result: BenchResult) -> str:
    """Markdown tables: AUC per condition (mean / min over levels), TPR at 1 % FPR, set-level
    response, calibration on novel samples, and cost."""
    variants = list(result.stats)
    conds = list(dict.fromkeys(r.condition for r in result.rows))
    paper = [c for c in conds if c in CONDITIONS]
    extra = [c for c in conds if c not in CONDITIONS]
    out: list[str] = []

    def auc_table(title: str, names: list[str], with_paper: bool) -> None:
        if not names:
            return
        out.extend([title, "", "| condition | " + ("paper (MRI-CORE) | " if with_paper else "") +
                    " | ".join(variants) + " |", "|---|" + ("---|" if with_paper else "") + "---|" * len(variants)])
        for c in names:
            cells = []
            for v in variants:
                rs = result.by_condition(v, c)
                cells.append(f"{np.mean([r.auc for r in rs]):.3f} / {np.min([r.auc for r in rs]):.3f} / "
                             f"{np.min([r.tpr_at_1pct_fpr for r in rs]):.2f}")
            out.append(f"| {c} | " + (f"{PAPER_AUC.get(c, float('nan')):.3f} | " if with_paper else "") +
                       " | ".join(cells) + " |")
        out.append("")

    auc_table("Per-sample detection, paper's 8 conditions: AUC mean / AUC min over levels / TPR at 1 % FPR (min)",
              paper, True)
    auc_table("Per-sample detection, harder conditions: AUC mean / AUC min / TPR at 1 % FPR (min)", extra, False)
    levels = sorted({r.level for r in result.rows})
    out.extend([f"Set level (mean over conditions): fraction flagged by BH at FDR {result.fdr:g} / "
                "copied_fraction (Storey estimate)", "",
                "| duplication | " + " | ".join(variants) + " |", "|---|" + "---|" * len(variants)])
    for lv in levels:
        cells = []
        for v in variants:
            rs = [r for r in result.rows if r.variant == v and r.level == lv]
            cells.append(f"{np.mean([r.fraction_flagged for r in rs]):.3f} / {np.mean([r.copied_fraction for r in rs]):.3f}")
        out.append(f"| {lv:.0%} | " + " | ".join(cells) + " |")
    out.extend(["", "Calibration and cost (uncontaminated test set = novel samples)", "",
                "| variant | calibration null | p<=0.01 | p<=0.05 | p<=0.10 | BH-flagged | extract img/s | "
                "search queries/s | fit s |", "|---|---|---|---|---|---|---|---|---|"])
    for v, st in result.stats.items():
        f = st.novel_fpr
        out.append(f"| {v} | {st.calibration} | {f[0.01]:.3f} | {f[0.05]:.3f} | {f[0.10]:.3f} | "
                   f"{st.novel_flagged:.3f} | {st.extract_images_per_s:.0f} | {st.search_queries_per_s:.0f} | "
                   f"{st.fit_s:.1f} |")
    if result.set_scores:
        first = variants[0]
        paper_conds = [c for c in CONDITIONS if any(k[0] == c for k in result.set_scores)]
        out.extend(["", f"Set-level scores of {first} and the baselines (same feature space), over the paper's "
                        f"{len(paper_conds)} conditions: mean (SD across conditions; the paper's Table 1 spread)", "",
                    "| duplication | " + " | ".join(SET_SCORES) + " |", "|---|" + "---|" * len(SET_SCORES)])
        for lv in levels:
            cells = []
            for name in SET_SCORES:
                vals = np.array([result.set_scores[(c, lv)][name] for c in paper_conds])
                cells.append(f"{np.nanmean(vals):.3g} ({np.nanstd(vals):.2g})")
            out.append(f"| {lv:.0%} | " + " | ".join(cells) + " |")
    return "\n".join(out)
