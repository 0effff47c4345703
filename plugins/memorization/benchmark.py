"""Controlled-duplication benchmark (the paper's Table 4 protocol) for one or more extractors."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
from sklearn.metrics import roc_auc_score

from gate_plugins.memorization.contamination import CONDITIONS, LEVELS, contaminate
from gate_plugins.memorization.extractors import FeatureExtractor
from gate_plugins.memorization.maths import MemorizationIndex


@dataclasses.dataclass(frozen=True)
class BenchRow:
    extractor: str
    condition: str
    level: float
    auc: float
    mi_mean: float
    oni_mean: float
    fraction_flagged: float


@dataclasses.dataclass(frozen=True)
class BenchResult:
    rows: list[BenchRow]
    images_per_second: dict[str, float]
    null: dict[str, tuple[float, float]]
    clean_test_fraction_flagged: dict[str, float]

    def auc_table(self) -> dict[str, dict[str, tuple[float, float]]]:
        """extractor -> condition -> (mean AUC over levels, min AUC over levels)"""
        out: dict[str, dict[str, tuple[float, float]]] = {}
        for r in self.rows:
            out.setdefault(r.extractor, {}).setdefault(r.condition, [])  # type: ignore[arg-type]
            out[r.extractor][r.condition].append(r.auc)  # type: ignore[union-attr]
        return {e: {c: (float(np.mean(v)), float(np.min(v))) for c, v in cs.items()} for e, cs in out.items()}


def run_benchmark(train: np.ndarray, test: np.ndarray, extractors: list[FeatureExtractor], *,
                  mi_threshold: float = 3.0, levels=LEVELS, conditions=tuple(CONDITIONS), seed: int = 0,
                  batch_size: int = 32, covariance: str = "ledoit_wolf") -> BenchResult:
    rows: list[BenchRow] = []
    speed: dict[str, float] = {}
    nulls: dict[str, tuple[float, float]] = {}
    clean_flag: dict[str, float] = {}
    contaminations = {c: contaminate(train, len(test), c, max(levels), seed + i) for i, c in enumerate(conditions)}
    for ext in extractors:
        t0 = time.perf_counter()
        f_train = ext.extract(train, batch_size)
        f_test = ext.extract(test, batch_size)
        speed[ext.name] = (len(train) + len(test)) / (time.perf_counter() - t0)
        layers = list(ext.layers)
        model = MemorizationIndex(covariance=covariance).fit([f_train[k] for k in layers])
        nulls[ext.name] = (model.mu0_, model.sigma0_)
        base = model.score([f_test[k] for k in layers])
        clean_flag[ext.name] = float((base.mi > mi_threshold).mean())
        for cond, cont in contaminations.items():
            f_copies = ext.extract(cont.copies, batch_size)
            copies = model.score([f_copies[k] for k in layers])
            for level in levels:
                labels, used = cont.at(level, len(test))
                s, mi, oni = base.similarity.copy(), base.mi.copy(), base.oni.copy()
                s[cont.positions[used]] = copies.similarity[used]
                mi[cont.positions[used]] = copies.mi[used]
                oni[cont.positions[used]] = copies.oni[used]
                rows.append(BenchRow(ext.name, cond, level, float(roc_auc_score(labels, s)), float(mi.mean()),
                                     float(oni.mean()), float((mi > mi_threshold).mean())))
    return BenchResult(rows, speed, nulls, clean_flag)


def render_tables(result: BenchResult, paper_auc: dict[str, float] | None = None) -> str:
    """Markdown tables: per-sample AUC per condition (mean / min over levels), set-level response."""
    from gate_plugins.memorization.contamination import PAPER_AUC

    paper_auc = PAPER_AUC if paper_auc is None else paper_auc
    table = result.auc_table()
    names = list(table)
    conds = list(next(iter(table.values())))
    lines = ["Per-sample AUC (mean / min over duplication levels)", "",
             "| condition | paper (MRI-CORE) | " + " | ".join(names) + " |",
             "|---|---|" + "---|" * len(names)]
    for c in conds:
        cells = [f"{table[n][c][0]:.3f} / {table[n][c][1]:.3f}" for n in names]
        lines.append(f"| {c} | {paper_auc.get(c, float('nan')):.3f} | " + " | ".join(cells) + " |")
    lines += ["", "Set-level response (mean over conditions): mi_mean / fraction_flagged", "",
              "| level | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    levels = sorted({r.level for r in result.rows})
    for lv in levels:
        cells = []
        for n in names:
            rs = [r for r in result.rows if r.extractor == n and r.level == lv]
            cells.append(f"{np.mean([r.mi_mean for r in rs]):.2f} / {np.mean([r.fraction_flagged for r in rs]):.3f}")
        lines.append(f"| {lv:.0%} | " + " | ".join(cells) + " |")
    lines += ["", "| extractor | images/s | null mu0 | null sigma0 | flagged on uncontaminated test |",
              "|---|---|---|---|---|"]
    for n in names:
        mu, sd = result.null[n]
        lines.append(f"| {n} | {result.images_per_second[n]:.1f} | {mu:.4f} | {sd:.4f} | "
                     f"{result.clean_test_fraction_flagged[n]:.3f} |")
    return "\n".join(lines)
