"""Labelled data end to end: labelled folders, the conditional and paired generator contract through a
real MLflow registry, conditioning label maps, and the segmentation check's clear errors."""

import json
import tempfile
from pathlib import Path

import mlflow
import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import write_check_policy
from gate.cli import app
from gate.errors import InputError
from gate.generator import (ConditionalImageGenerator, ImageGenerator, PairedImageGenerator, assemble_samples,
                            log_generator, sample_generator)
from gate.imageio import read_image_folder
from gate.imageset import ImageSet
from gate_plugins.mri.demo_data import write_slices

runner = CliRunner()


@pytest.fixture(scope="module")
def labelled(mri_labelled, tmp_path_factory):
    tr_i, tr_l, te_i, te_l = mri_labelled
    root = tmp_path_factory.mktemp("labelled")
    ids_tr = [f"tr{i:03d}" for i in range(len(tr_i))]
    ids_te = [f"te{i:03d}" for i in range(len(te_i))]
    write_slices(root / "train", tr_i, ids_tr, tr_l)
    write_slices(root / "holdout", te_i, ids_te, te_l)
    return root, mri_labelled


def test_labelled_folders_read_images_with_their_label_maps(labelled, tmp_path):
    root, (tr_i, tr_l, _, _) = labelled
    s = read_image_folder(root / "train", "train")
    assert np.array_equal(s.labels, tr_l) and s.labels.dtype == np.int64
    assert np.array_equal(s.images, tr_i)
    assert len(s.manifest) == 2 * len(tr_i)  # label files are part of the data's identity
    # PNG label maps keep their class indices (no scaling to [0, 1])
    from PIL import Image

    (tmp_path / "png" / "images").mkdir(parents=True)
    (tmp_path / "png" / "labels").mkdir()
    Image.fromarray((tr_i[0] * 255).astype(np.uint8)).save(tmp_path / "png" / "images" / "a.png")
    Image.fromarray(tr_l[0]).save(tmp_path / "png" / "labels" / "a.png")
    assert np.array_equal(read_image_folder(tmp_path / "png", "x").labels[0], tr_l[0])


@pytest.mark.parametrize("breakage, message", [
    ("missing", "no label file for 1 train image"),
    ("extra", "a label file without an image"),
    ("fraction", "non-negative integers"),
    ("size", "label map for"),
])
def test_broken_label_folders_are_one_clear_error(labelled, tmp_path, breakage, message):
    root, (tr_i, tr_l, _, _) = labelled
    ids = [f"s{i}" for i in range(4)]
    write_slices(tmp_path / "d", tr_i[:4], ids, tr_l[:4])
    labels = tmp_path / "d" / "labels"
    if breakage == "missing":
        (labels / "s0.npy").unlink()
    elif breakage == "extra":
        np.save(labels / "zz.npy", tr_l[0])
    elif breakage == "fraction":
        np.save(labels / "s1.npy", tr_l[1] * 0.5)
    else:
        np.save(labels / "s2.npy", tr_l[2][:64])
    with pytest.raises(InputError, match=message):
        read_image_folder(tmp_path / "d", "train")


class EchoRenderer(ConditionalImageGenerator):
    def generate(self, labels, seed):
        return (np.asarray(labels) / 3.0).astype(np.float32)


class HalfRenderer(ConditionalImageGenerator):
    def generate(self, labels, seed):
        return np.zeros((len(labels), 64, 64), np.float32)  # the wrong size for its label maps


class FractionalPairs(PairedImageGenerator):
    def generate(self, n, seed):
        return np.zeros((n, 128, 128), np.float32), np.full((n, 128, 128), 0.5, np.float32)


class Pairs(PairedImageGenerator):
    def generate(self, n, seed):
        rng = np.random.default_rng(seed)
        labels = rng.integers(0, 4, (n, 128, 128))
        return (labels / 3.0).astype(np.float32), labels


class _ImagesOnly:
    """A generator that forgets the label channel."""

    def predict(self, model_input):
        return np.zeros((2, 128, 128), np.float32)


def test_conditional_and_paired_generators_through_the_registry(tmp_path, mri_labelled):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    versions = {}
    for name, gen in (("echo", EchoRenderer()), ("half", HalfRenderer()), ("frac", FractionalPairs()),
                      ("pairs", Pairs())):
        mv, _ = log_generator(gen, name, tracking_uri=uri)
        assert client.get_model_version(name, mv.version).tags["gate.generator_mode"] == \
            ("conditional" if name in ("echo", "half") else "paired")
        versions[name] = mv.version
    maps = mri_labelled[1][:5].astype(np.int64)

    def sampled(name, n, seed, batch, mode, labels=None):  # the registry path: download once, sample sandboxed
        from gate.registry import download_model, resolve_model
        from gate.sandbox import SamplingPlan, SandboxLimits, probe_isolation, sample_in_sandbox

        ref = resolve_model(f"models:/{name}/{versions[name]}", uri)
        plan = SamplingPlan(mode, n, seed, batch)
        with tempfile.TemporaryDirectory() as tmp:
            raw = sample_in_sandbox(download_model(ref, uri, Path(tmp)), plan, SandboxLimits(timeout_s=120),
                                    probe_isolation(), labels=labels)
        return assemble_samples(raw, plan, labels)

    s = sampled("echo", 5, 0, 2, "conditional", maps)
    assert np.array_equal(s.labels, maps) and np.allclose(s.images, maps / 3.0)
    p = sampled("pairs", 5, 3, 2, "paired")
    assert p.labels.dtype == np.int64 and np.allclose(p.images, p.labels / 3.0)
    with pytest.raises(InputError, match=r"images are \(64, 64\) but the label maps given are \(128, 128\)"):
        sampled("half", 5, 0, 2, "conditional", maps)
    with pytest.raises(InputError, match="channel 1 must hold label maps of non-negative integers"):
        sampled("frac", 3, 0, 2, "paired")
    with pytest.raises(InputError, match=r"a paired generator returns \[n, 2, H, W\]"):
        sample_generator(_ImagesOnly(), 2, 0, 2, mode="paired")


def test_conditioning_label_maps_come_from_train_and_are_deformed(mri_labelled):
    from gate.workflow import conditioning_labels

    tr_i, tr_l, _, _ = mri_labelled
    train = ImageSet("train", tuple(f"t{i}" for i in range(len(tr_i))), tr_i, labels=tr_l.astype(np.int64))
    a = conditioning_labels(train, 10, seed=4, deformation_px=4.0)
    assert np.array_equal(a, conditioning_labels(train, 10, seed=4, deformation_px=4.0))
    plain = conditioning_labels(train, 10, seed=4, deformation_px=0.0)
    assert all(any(np.array_equal(m, t) for t in train.labels) for m in plain)
    assert not any(any(np.array_equal(m, t) for t in train.labels) for m in a)  # new anatomy, same classes
    assert set(np.unique(a)) == set(np.unique(train.labels))
    with pytest.raises(InputError, match="train folder has no labels"):
        conditioning_labels(ImageSet("train", train.ids, tr_i), 4, seed=0)


def _seg_policy(path, root, params="{epochs: 2, channels: [8, 16], bootstrap: 200}"):
    return write_check_policy(path, root / "train", root / "holdout", "segmentation", params=params,
                              rules="[{metric: dice_drop_upper, lte: 0.05}]")


@pytest.mark.parametrize("case, message", [
    ("extra_class", "candidate labels use class 5, which the holdout labels lack"),
    ("empty_class", "candidate labels never contain class 1"),
    ("budget", "time_budget_s = 0.001 ran out"),
])
def test_segmentation_check_fails_closed_with_a_reason(labelled, tmp_path, case, message):
    root, (tr_i, tr_l, _, _) = labelled
    images, labels = tr_i[:8].copy(), tr_l[:8].copy()
    params = "{epochs: 2, channels: [8, 16], bootstrap: 200}"
    if case == "extra_class":
        labels[0, :4, :4] = 5
    elif case == "empty_class":
        labels[labels == 1] = 2
    elif case == "budget":
        params = "{epochs: 50, channels: [8, 16], time_budget_s: 0.001}"
    ids = [f"c{i}" for i in range(8)]
    write_slices(tmp_path / "cand", images, ids, labels)
    policy = _seg_policy(tmp_path / "p.yaml", root, params)
    res = runner.invoke(app, ["validate", "--policy", str(policy), "--samples", str(tmp_path / "cand"),
                              "--out", str(tmp_path / "out"), "--quiet"])
    assert res.exit_code == 3, res.output
    check = json.loads((tmp_path / "out" / "report.json").read_text())["checks"][0]
    assert check["status"] == "error" and message in check["error"]


def test_segmentation_on_labelled_samples_reports_intervals_and_caches_the_baseline(labelled, tmp_path,
                                                                                   monkeypatch):
    monkeypatch.chdir(tmp_path)
    root, (tr_i, tr_l, _, _) = labelled
    write_slices(tmp_path / "good", tr_i[::2], [f"g{i}" for i in range(len(tr_i[::2]))], tr_l[::2])
    shifted = np.roll(tr_l[::2], 12, axis=2)  # anatomy a tenth of the field off its labels
    write_slices(tmp_path / "bad", tr_i[::2], [f"b{i}" for i in range(len(tr_i[::2]))], shifted)
    policy = _seg_policy(tmp_path / "p.yaml", root, "{epochs: 8, channels: [8, 16, 32], bootstrap: 500}")
    out = {}
    for name in ("good", "bad"):
        res = runner.invoke(app, ["validate", "--policy", str(policy), "--samples", str(tmp_path / name),
                                  "--out", str(tmp_path / f"out-{name}"), "--quiet"])
        out[name] = (res.exit_code, json.loads((tmp_path / f"out-{name}" / "report.json").read_text())["checks"][0])
    good, bad = out["good"][1], out["bad"][1]
    assert good["status"] == bad["status"] == "ok"
    m = bad["metrics"]
    assert m["dice_drop_lower"] <= m["dice_drop"] <= m["dice_drop_upper"] and m["dice_drop_lower"] > 0.05
    assert m["dice_mean_lower"] <= m["dice_mean"] <= m["dice_mean_upper"]
    assert out["bad"][0] == 1 and bad["rules"][0]["passed"] is False
    assert good["metrics"]["dice_drop"] < m["dice_drop"]
    assert not good["diagnostics"]["baseline_cache_hit"] and bad["diagnostics"]["baseline_cache_hit"]
    assert set(good["diagnostics"]["dice_per_class"]) == {"class1", "class2", "class3"}
    # the refused candidate's PDF shows the worst holdout cases with their true and predicted outlines on
    # page 1 (the check's evidence; holdout scans, so marked as patients' images for the policy's redaction)
    index = json.loads((tmp_path / "out-bad" / "figures" / "index.json").read_text())
    assert [(i["title"].startswith("The 5 worst holdout cases"), i["shows_real_images"]) for i in index] == \
        [(False, False), (True, True)]
    from pypdf import PdfReader

    first = PdfReader(tmp_path / "out-bad" / "report.pdf").pages[0]
    assert "segmentation.dice_drop_upper" in first.extract_text() and len(first.images) == 1
    assert "worst holdout cases" in " ".join(first.extract_text().split())


def test_real_plus_synthetic_reports_the_gain_over_the_baseline(mri_labelled, tmp_path):
    from gate_plugins.segmentation.validator import SegmentationParams, SegmentationValidator
    from gate.validators import CheckContext

    tr_i, tr_l, te_i, te_l = mri_labelled
    train = ImageSet("train", tuple(f"t{i}" for i in range(len(tr_i))), tr_i, labels=tr_l.astype(np.int64))
    hold = ImageSet("holdout", tuple(f"h{i}" for i in range(len(te_i))), te_i, labels=te_l.astype(np.int64))
    cand = ImageSet("candidate", train.ids[1::2], tr_i[1::2], labels=train.labels[1::2])
    ctx = CheckContext(candidate=cand, train=train, holdout=hold, seed=0, batch_size=8, cache_dir=tmp_path)
    params = SegmentationParams(epochs=4, channels=(8, 16), bootstrap=200, real_plus_synthetic=True,
                                class_names={1: "CSF", 2: "GM", 3: "WM"})
    out = SegmentationValidator().run(ctx, params)
    s = out.scalars
    assert 0 < s["mixed_dice_mean"] <= 1
    assert s["mixed_dice_gain"] == pytest.approx(s["mixed_dice_mean"] - s["baseline_dice_mean"])
    assert set(out.diagnostics["dice_per_class"]) == {"CSF", "GM", "WM"}
    assert out.figures and out.figures[0].png.startswith(b"\x89PNG")


def test_registry_calls_leave_no_mlflow_uri_behind(tmp_path, monkeypatch):
    """log_generator and the model download must not export MLFLOW_TRACKING_URI: a later subprocess
    (gate demo, an mlflow server) would silently use that store instead of its own."""
    import os

    from gate.registry import download_model, resolve_model

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    before = (mlflow.get_tracking_uri(), mlflow.get_registry_uri())
    uri = f"sqlite:///{tmp_path / 'leak.db'}"
    mv, _ = log_generator(Pairs(), "leak", tracking_uri=uri)
    download_model(resolve_model("models:/leak/1", uri), uri, tmp_path / "dl")
    assert "MLFLOW_TRACKING_URI" not in os.environ and "MLFLOW_REGISTRY_URI" not in os.environ
    assert (mlflow.get_tracking_uri(), mlflow.get_registry_uri()) == before


class _Noise(ImageGenerator):
    """Unconditional: its samples carry no label maps."""

    def generate(self, n, seed):
        return np.random.default_rng(seed).random((n, 128, 128), dtype=np.float32)


def test_what_the_plan_shows_is_reported_together_before_the_generator_runs(labelled, tmp_path):
    """Unlabelled candidates for a segmentation check and images too small for the quality check's NIQE
    patches are known from the policy, the headers and the generator's mode tag: both are named at once,
    exit 2, before anything is downloaded, sampled or recorded."""
    root, _ = labelled
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mv, _ = log_generator(_Noise(), "noise", tracking_uri=uri)
    policy = tmp_path / "p.yaml"
    policy.write_text(f"""apiVersion: gate/v1
kind: ValidationPolicy
metadata: {{name: plan-test, owner: tests}}
spec:
  candidate: {{n_samples: 8, batch_size: 8}}
  data: {{train: {root / 'train'}, holdout: {root / 'holdout'}}}
  checks:
    - {{id: seg, validator: segmentation, params: {{epochs: 2}}, rules: []}}
    - {{id: iq, validator: quality, params: {{niqe_block: 128}}, rules: []}}
""")
    res = runner.invoke(app, ["validate", "--policy", str(policy), "--model", f"models:/noise/{mv.version}",
                              "--tracking-uri", uri, "--out", str(tmp_path / "out"), "--quiet"])
    assert res.exit_code == 2, res.output
    errors = [line for line in res.output.splitlines() if line.startswith("gate: error:")]
    assert "2 problems found before running anything" in errors[0]
    assert any("spec.checks.0 (seg)" in e and "needs labelled candidates" in e for e in errors), errors
    assert any("spec.checks.1 (iq)" in e and "too small for niqe_block 128" in e for e in errors), errors
    assert not (tmp_path / "out").exists()
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    assert not [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])
                if r.info.run_name.startswith("validate-")], "a validation run was recorded"


def test_unlabelled_samples_for_a_segmentation_check_are_refused_before_any_training(labelled, tmp_path):
    root, (tr_i, _, _, _) = labelled
    write_slices(tmp_path / "cand", tr_i[:8], [f"c{i}" for i in range(8)], None)
    res = runner.invoke(app, ["validate", "--policy", str(_seg_policy(tmp_path / "p.yaml", root)), "--samples",
                              str(tmp_path / "cand"), "--out", str(tmp_path / "out"), "--quiet"])
    assert res.exit_code == 2, res.output
    assert "needs labelled candidates" in res.output and not (tmp_path / "out").exists()
