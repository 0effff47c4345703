"""The quality validator end to end: measures, distribution metrics and the sensitivity self-test."""

import json

from typer.testing import CliRunner

from conftest import write_check_policy
from gate.cli import app
from gate_plugins.quality import iqms


def test_quality_check_reports_its_sensitivity_and_downgrades_blind_metrics(tmp_path, mri, monkeypatch):
    monkeypatch.chdir(tmp_path)
    policy = write_check_policy(
        tmp_path / "p.yaml", mri["train"], mri["holdout"], "quality", params="{self_test_slices: 8}",
        rules="[{metric: fber_mean, gt: 1000.0}, {metric: fber_mean, gt: 1000.0, pin: true, severity: warn}, "
              "{metric: fid_ratio, lte: 1000.0}]")
    res = CliRunner().invoke(app, ["validate", "--policy", str(policy), "--samples", str(mri["novel"]),
                                   "--out", str(tmp_path / "out"), "--quiet"])
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    check = report["checks"][0]
    assert check["status"] == "ok", check["error"]
    rho = check["diagnostics"]["sensitivity_rho"]
    # noise, blur and bias field are each seen by at least one measure with |rho| >= 0.9
    for pert in ("gaussian_noise", "blur", "bias_field"):
        assert max(abs(rho[m][pert]) for m in rho) >= 0.9, pert
    # FBER is undefined (-1) on skull-stripped slices: blind to everything, so its block rule only warns
    assert "fber_mean" in check["diagnostics"]["insensitive_metrics"]
    assert "fber" in check["diagnostics"]["undefined_on_clean_real"]
    # a metric that looks better as a failure grows (SNR under smoothing or brightening) is listed as fooled
    fooled = check["diagnostics"]["fooled_by"]
    assert all(rho[m][p] * (1 if m in ("snr", "cnr", "coverage", "precision", "recall", "density") else -1) >= 0.8
               for m, ps in fooled.items() for p in ps if m != "snr_dietrich")
    assert fooled.get("snr")
    blind, pinned, ratio = check["rules"]
    assert blind["severity"] == "warn" and "undefined on every clean real slice" in blind["downgraded"]
    assert not blind["passed"]
    assert pinned["downgraded"] is None
    assert ratio["passed"] and check["metrics"]["fid_ratio"] is not None
    assert res.exit_code == 0, res.output  # the failed rule was downgraded, nothing else blocks
    html = (tmp_path / "out" / "report.html").read_text()
    assert "Sensitivity of each metric" in html and "Candidate against real, per metric" in html
    # the anatomy perturbations ran on slices that have ventricles, and are reported seen or unseen
    assert check["diagnostics"]["self_test_slices_with_ventricles"] >= 4
    for pert in ("ventricle_shrink", "ventricle_grow", "ventricle_erase", "lesion", "local_warp"):
        assert pert in rho["snr"]
        seen = max(abs(rho[m][pert]) for m in rho) >= 0.8
        assert seen != (pert in check["diagnostics"]["unseen_failures"])
    # novel real-template subjects sit inside the real-vs-real band on most measures
    versus = check["diagnostics"]["versus_real"]
    # every quality measure and NIQE, never the descriptive summary statistics
    assert set(versus) == {"snr", "snr_dietrich", "cnr", "cjv", "efc", "fber", "bg_energy", "wm2max", "fwhm", "noise",
                           "inu_med", "inu_range", "inu_sd", "qi1", "qi2", "rpve_csf", "rpve_gm", "rpve_wm", "tpm_csf",
                           "tpm_gm", "tpm_wm", "niqe"}
    assert not set(iqms.SUMMARIES) & set(versus)
    assert versus["snr"]["band_low"] < versus["snr"]["real_mean"] < versus["snr"]["band_high"]


def test_bench_iqa_prints_the_sensitivity_matrix(tmp_path, mri):
    import subprocess
    import sys
    from pathlib import Path

    gate_bin = str(Path(sys.executable).with_name("gate"))
    res = subprocess.run([gate_bin, "bench", "iqa", "--data", str(mri["holdout"]), "--slices", "4"],
                         capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    rows = {line.split("|")[1].strip(): line for line in res.stdout.splitlines() if line.startswith("| ")}
    assert {"snr", "niqe", "fid", "coverage"} <= set(rows)
    headers = [line for line in res.stdout.splitlines() if line.startswith("| metric |")]
    assert len(headers) == 2  # the set-level matrix, then the per-sample one
    header = [c.strip() for c in headers[0].split("|")[2:-1]]
    assert {"gaussian_noise", "blur", "bias_field", "memorisation", "mode_collapse"} <= set(header)
    per_sample = [c.strip() for c in headers[1].split("|")[2:-1]]
    assert {"gaussian_noise", "blur", "bias_field"} <= set(per_sample) and "memorisation" not in per_sample
    assert "Best per-sample |rho| per perturbation" in res.stdout
    assert "insensitive to every perturbation" in res.stdout


def test_noisy_candidates_fall_outside_the_real_band(tmp_path, mri):
    import numpy as np

    from gate.imageset import ImageSet
    from gate.imageio import read_image_folder
    from gate.validators import CheckContext
    from gate_plugins.quality.perturbations import PERTURBATIONS
    from gate_plugins.quality.validator import QualityParams, QualityValidator

    train, holdout, novel = (read_image_folder(mri[k], k) for k in ("train", "holdout", "novel"))
    noisy = np.stack([PERTURBATIONS["gaussian_noise"](im, 3, seed=i) for i, im in enumerate(novel.images)])
    params = QualityParams(self_test=False)
    out = {}
    for name, images in (("clean", novel.images), ("noisy", noisy)):
        ctx = CheckContext(candidate=ImageSet(name, novel.ids, images), train=train, holdout=holdout, seed=0,
                           batch_size=32, cache_dir=tmp_path)
        out[name] = QualityValidator().run(ctx, params).diagnostics
    assert {"snr", "cjv", "niqe"} <= set(out["noisy"]["outside_real_band"])
    assert len(out["clean"]["outside_real_band"]) < len(out["noisy"]["outside_real_band"])


def test_images_too_small_for_niqe_blocks_are_a_clear_input_error(tmp_path, mri):
    import numpy as np

    from gate.errors import InputError
    from gate.imageset import ImageSet
    from gate.validators import CheckContext
    from gate_plugins.quality.validator import QualityParams, QualityValidator
    import pytest

    small = mri["train_images"][:8, ::4, ::4]  # 32 x 32
    s = ImageSet("small", tuple(f"s{i}" for i in range(8)), np.ascontiguousarray(small))
    ctx = CheckContext(candidate=s, train=s, holdout=None, seed=0, batch_size=8, cache_dir=tmp_path)
    with pytest.raises(InputError, match="too small for niqe_block 32: use niqe_block <= 16"):
        QualityValidator().run(ctx, QualityParams(self_test=False))


def test_blank_and_background_free_samples_are_flagged_never_silently_averaged(tmp_path, mri):
    """Constant, empty and background-free slices: finite per-sample values (the documented -1 where a
    measure is undefined), means over the defined slices only, and a blank share that a rule can block on."""
    import numpy as np

    from gate.imageio import read_image_folder
    from gate.imageset import ImageSet
    from gate.validators import CheckContext
    from gate_plugins.quality.validator import QualityParams, QualityValidator

    train, holdout, novel = (read_image_folder(mri[k], k) for k in ("train", "holdout", "novel"))
    images = novel.images.copy()
    images[0] = 0.0                                    # empty
    images[1] = 0.5                                    # constant
    images[2] = np.clip(images[2] + 0.3, 0, 1)         # no background left: the brain fills the field
    cand = ImageSet("odd", novel.ids, images)
    ctx = CheckContext(candidate=cand, train=train, holdout=holdout, seed=0, batch_size=32, cache_dir=tmp_path)
    out = QualityValidator().run(ctx, QualityParams(self_test=False))
    t = out.table
    assert list(t["degenerate"][:4]) == [1, 1, 0, 0]
    numeric = t.drop(columns=["sample_id"]).to_numpy(float)
    assert np.isfinite(numeric).all()
    assert (t.loc[:1, ["snr", "cnr", "cjv"]] == -1.0).all().all()
    assert (t["niqe"][:2] > 2 * t["niqe"][3:].median()).all()  # NIQE is defined on a flat slice: far from real
    # the means leave the undefined slices out instead of averaging a -1 in (which would flatter CJV or NIQE)
    defined = t["cjv"][t["cjv"] != -1.0]
    assert abs(out.scalars["cjv_mean"] - defined.mean()) < 1e-9
    from gate_plugins.quality.validator import QualityValidator as V
    frac = next(m for m in V.metrics if m.name == "degenerate_fraction").compute(t, out.scalars)
    assert frac == 2 / len(images)


def test_quality_uses_the_memorization_reference_when_cached_and_extracts_only_what_it_needs(tmp_path, mri):
    """The quality check needs train's untransformed features only. Without the memorization check's cached
    reference it extracts those alone (not eight transforms and two nuisance copies of every image) and stores
    nothing; with it, it reads them, and both ways give the same distribution metrics."""
    import numpy as np

    from gate.imageio import read_image_folder
    from gate.imageset import ImageSet
    from gate.validators import CheckContext
    from gate_plugins.memorization import Detector
    from gate_plugins.quality.validator import QualityParams, QualityValidator
    from gate_plugins.toolkit.canvas import canvas_digest
    from gate_plugins.toolkit.extractors import build_extractor

    train = read_image_folder(mri["train"], "train")
    holdout = read_image_folder(mri["holdout"], "holdout")
    cand = read_image_folder(mri["novel"], "candidate")
    cache = tmp_path / "cache"
    ctx = CheckContext(candidate=cand, train=train, holdout=holdout, seed=0, batch_size=16, cache_dir=cache)
    params = QualityParams(self_test=False)
    cold = QualityValidator().run(ctx, params)
    assert cold.diagnostics["reference_cache"] == "miss" and not cold.diagnostics["reference_cache_hit"]
    assert not list(cache.rglob("*.npz"))  # nothing stored by quality
    # the memorization check's reference, as it computes and caches it (every transform, nuisance copies)
    detector = Detector(build_extractor(params.extractor, None, params.prefilter_sigma), "dihedral", cache_dir=cache,
                        batch_size=16)
    detector.reference_features(train.images, canvas_digest(train))
    warm = QualityValidator().run(ctx, params)
    assert warm.diagnostics["reference_cache"] == "hit" and warm.diagnostics["reference_cache_hit"]
    for m in ("fid", "kid", "precision", "coverage"):
        assert np.isclose(warm.scalars[m], cold.scalars[m], rtol=1e-4, atol=1e-6), m
