"""Sensitivity and cost of the quality metrics on a set of real slices."""

from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path

import numpy as np

from gate.imageset import ImageSet
from gate.validators import CheckContext
from gate_plugins.quality import iqms
from gate_plugins.quality.niqe import fit_niqe, niqe_score
from gate_plugins.quality.validator import WORKERS, QualityParams, QualityValidator


def _split(images: np.ndarray) -> tuple[ImageSet, ImageSet]:
    """Alternate slices into a reference half and a holdout half."""
    ids = [f"img{i:05d}" for i in range(len(images))]
    return (ImageSet("train", tuple(ids[0::2]), images[0::2]), ImageSet("holdout", tuple(ids[1::2]), images[1::2]))


def sensitivity_table(images: np.ndarray, self_test_slices: int = 16, seed: int = 0) -> str:
    train, holdout = _split(images)
    with tempfile.TemporaryDirectory() as cache:
        ctx = CheckContext(candidate=holdout, train=train, holdout=holdout, seed=seed, batch_size=32,
                           cache_dir=Path(cache))
        out = QualityValidator().run(ctx, QualityParams(self_test_slices=self_test_slices))
    rho = out.diagnostics["sensitivity_rho"]
    perts = list(next(iter(rho.values())))
    lines = ["Set level: Spearman rho of the set mean against severity", "",
             "| metric | " + " | ".join(perts) + " |", "|---|" + "---|" * len(perts)]
    for metric, row in rho.items():
        lines.append(f"| {metric} | " + " | ".join(f"{row[p]:+.2f}" for p in perts) + " |")
    ps_rho, ps_mono = out.diagnostics["per_sample_rho"], out.diagnostics["per_sample_monotonic"]
    ps_perts = list(next(iter(ps_rho.values())))
    lines += ["", "Per sample: Spearman rho over slices x severities / share of slices monotonic with severity", "",
              "| metric | " + " | ".join(ps_perts) + " |", "|---|" + "---|" * len(ps_perts)]
    for metric, row in ps_rho.items():
        lines.append(f"| {metric} | " + " | ".join(f"{row[p]:+.2f} / {ps_mono[metric][p]:.2f}" for p in ps_perts)
                     + " |")
    sees = out.diagnostics["per_sample_sees"]
    lines += ["", "Best per-sample |rho| per perturbation (the metric named; 'sees': |rho| >= 0.8, half the slices "
              "monotonic, read as a worsening):", ""]
    for p in ps_perts:
        seeing = [m for m in ps_rho if p in sees.get(f"{m}_mean", [])]
        best = max(seeing or ps_rho, key=lambda m: abs(ps_rho[m][p]))
        verdict = "sees it" if seeing else "no metric sees it per sample"
        lines.append(f"- {p}: {abs(ps_rho[best][p]):.2f} ({best}, {ps_mono[best][p]:.0%} of slices monotonic; "
                     f"{verdict})")
    blind = out.diagnostics["insensitive_metrics"]
    unseen = out.diagnostics["unseen_failures"]
    undefined = out.diagnostics["undefined_on_clean_real"]
    lines += ["", f"insensitive to every perturbation (block rules downgraded): {', '.join(blind) or 'none'}",
              f"undefined on the clean real slices (rho 0 above): {', '.join(undefined) or 'none'}",
              "looks better as the failure grows (fooled): " + ("; ".join(
                  f"{m} by {', '.join(p)}" for m, p in out.diagnostics["fooled_by"].items()) or "none"),
              f"failures no metric sees (|rho| < 0.8 everywhere): {', '.join(unseen) or 'none'}",
              "failures every metric that responds to reads as an improvement: "
              f"{', '.join(out.diagnostics['seen_only_as_improvement']) or 'none'}"]
    return "\n".join(lines)


def held_out_table(sets: dict[str, np.ndarray], families: dict, niqe_block: int = 16) -> str:
    """Per-sample sensitivity on real slices that are not the shipped data, under degradations drawn by the
    caller (``families[name] = (degrade(img, level, rng), levels)``), as the issue's held-out measurement:
    for every measure, Spearman rho over slices x (clean + levels) and the share of slices monotonic; then the
    best measure per family and set. ``sets[name]``: the slices to degrade; NIQE is fitted on
    ``sets[name + "_fit"]`` (other slices of the same scan) when given, else on the slices themselves."""
    from gate_plugins.quality.sensitivity import monotonic_share, pooled_rho
    from gate_plugins.quality.validator import BETTER, IQMS

    lines = []
    for name, slices in sets.items():
        if name.endswith("_fit"):
            continue
        model = fit_niqe(sets.get(f"{name}_fit", slices), niqe_block)
        rho: dict[str, dict[str, tuple[float, float]]] = {}
        for family, (degrade, levels) in families.items():
            steps = [[slices[i].astype(np.float64) if s == 0 else
                      degrade(slices[i].astype(np.float64), levels[s - 1], np.random.default_rng([97, i, s]))
                      for i in range(len(slices))] for s in range(len(levels) + 1)]
            values = [[{**iqms.all_iqms(x), "niqe": niqe_score(x, model)} for x in step] for step in steps]
            for m in IQMS + ("niqe",):
                series = [np.array([v[m] for v in step]) for step in values]
                r = pooled_rho(series)
                rho.setdefault(m, {})[family] = (r, monotonic_share(series, np.sign(r)))
        fams = list(families)
        lines += [f"{name}: {len(slices)} slices x (clean + {len(next(iter(families.values()))[1])} severities); "
                  "rho / share of slices monotonic", "", "| metric | " + " | ".join(fams) + " |",
                  "|---|" + "---|" * len(fams)]
        lines += [f"| {m} | " + " | ".join(f"{row[f][0]:+.2f} / {row[f][1]:.2f}" for f in fams) + " |"
                  for m, row in rho.items()]
        lines.append("")
        for f in fams:
            # a measure that reads the failure as an improvement cannot flag it: best among the others
            honest = [m for m in rho if not (BETTER.get(m, 0) * rho[m][f][0] > 0)]
            best = max(honest, key=lambda m: abs(rho[m][f][0]))
            lines.append(f"- {name}, {f}: best per-sample |rho| {abs(rho[best][f][0]):.2f} ({best}, "
                         f"{rho[best][f][1]:.0%} of slices monotonic)")
        lines.append("")
    return "\n".join(lines)


def timing_table(images: np.ndarray) -> str:
    train, holdout = _split(images)
    rows = []
    t0 = time.perf_counter()
    for img in images:
        iqms.all_iqms(img)
    rows.append((f"MRIQC-style measures (all {len(iqms.MEASURES)} and the summary statistics, N4 included; one "
                 "thread)", (time.perf_counter() - t0) / len(images)))
    t0 = time.perf_counter()
    model = fit_niqe(holdout.images)
    rows.append(("MRI-NIQE fit (per real slice)", (time.perf_counter() - t0) / len(holdout)))
    t0 = time.perf_counter()
    for img in images:
        niqe_score(img, model)
    rows.append(("MRI-NIQE score", (time.perf_counter() - t0) / len(images)))
    with tempfile.TemporaryDirectory() as cache:
        ctx = CheckContext(candidate=ImageSet("candidate", tuple(f"c{i}" for i in range(len(images))), images),
                           train=train, holdout=holdout, seed=0, batch_size=32, cache_dir=Path(cache))
        t0 = time.perf_counter()
        QualityValidator().run(ctx, QualityParams(self_test=False))
        whole = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as cache:
        ctx = dataclasses.replace(ctx, cache_dir=Path(cache))
        t0 = time.perf_counter()
        QualityValidator().run(ctx, QualityParams())
        with_test = time.perf_counter() - t0
        t0 = time.perf_counter()
        QualityValidator().run(ctx, QualityParams())  # the self-test's result is now cached
        warm = time.perf_counter() - t0
    lines = ["| step | ms per slice |", "|---|---|"] + [f"| {n} | {1000 * t:.1f} |" for n, t in rows]
    lines.append(f"\nwhole check on {len(images)} candidate slices ({len(train)} train, {len(holdout)} holdout), "
                 f"{WORKERS} measuring threads:\n\n| run | seconds |\n|---|---|\n"
                 f"| without the self-test, features cold | {whole:.1f} |\n"
                 f"| with the self-test (default 16 slices), cache cold | {with_test:.1f} |\n"
                 f"| with the self-test, its result cached (the next candidate against the same reference) | {warm:.1f} |")
    return "\n".join(lines)
