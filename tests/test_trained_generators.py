"""Two real MONAI diffusion models trained on the shipped slices (benchmarks/trained_generators): one
memorized its 8 training slices, the other (96 slices, early stopping) did not. Their shipped weights
are sampled here and judged in pixel space and by gate's own memorization detector; and the wrapper
goes through an MLflow registry and back unchanged."""

from __future__ import annotations

import importlib.util
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import REPO

TG = REPO / "benchmarks" / "trained_generators"
WEIGHTS = TG / "weights"
N_SAMPLES = 16

sys.path.insert(0, str(TG))
from diffusion_generator import DiffusionGenerator  # noqa: E402


def _module(name: str):
    spec = importlib.util.spec_from_file_location(f"trained_generators_{name}", TG / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


measure = _module("measure")


@pytest.fixture(scope="module")
def one_thread():
    """The 2-core budget: torch on one thread while this module runs (restored after)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def generators(one_thread):
    return {name: DiffusionGenerator.from_file(WEIGHTS / f"{name}.pt") for name in ("memorizer", "generalizer")}


@pytest.fixture(scope="module")
def samples(generators):
    return {name: gen.generate(N_SAMPLES, 0) for name, gen in generators.items()}


@pytest.fixture(scope="module")
def holdout(mri):
    from gate.imageio import read_image_folder

    return read_image_folder(mri["holdout"], "holdout").images


def test_samples_follow_the_contract_and_the_seed(generators, samples):
    gen = generators["memorizer"]
    for s in samples.values():
        assert s.shape == (N_SAMPLES, 128, 128) and s.dtype == np.float32
        assert s.min() >= 0.0 and s.max() <= 1.0 and np.isfinite(s).all()
    again = gen.generate(4, 1)
    assert np.array_equal(again, gen.generate(4, 1))
    assert not np.allclose(again, gen.generate(4, 2))
    assert len(generators["generalizer"]._ckpt["meta"]["train_rows"]) == 96


def test_the_memorizer_copies_its_slices_and_the_generalizer_does_not(mri, generators, samples, holdout):
    train = mri["train_images"]
    own = np.asarray(generators["memorizer"]._ckpt["meta"]["train_rows"])
    assert len(own) == 8
    mem, _ = measure.nearest_ncc(samples["memorizer"], train[own])
    gen, _ = measure.nearest_ncc(samples["generalizer"], train)
    t = measure.NEAR_DUPLICATE_NCC
    assert np.mean(mem >= t) >= 0.6, np.round(np.sort(mem), 3)
    assert np.mean(gen >= t) <= 0.1, np.round(np.sort(gen), 3)
    # and the threshold is one real unseen slices (the holdout) do not reach against the train set
    assert measure.nearest_ncc(holdout, train)[0].max() < t


def default_memorization_policy(path: Path, train: Path, holdout: Path) -> Path:
    """policies/default.yaml with its memorization check only (params, rules and the 64 samples as
    shipped) and the shipped generators' data: what the default policy decides on memorization."""
    from ruamel.yaml import YAML

    yaml = YAML()
    policy = yaml.load((REPO / "policies" / "default.yaml").read_text())
    policy["spec"]["data"] = {"train": str(train), "holdout": str(holdout)}
    policy["spec"]["checks"] = [c for c in policy["spec"]["checks"] if c["id"] == "memorization"]
    with path.open("w") as fh:
        yaml.dump(policy, fh)
    return path


def test_the_default_policy_refuses_the_memorizer_and_passes_the_generalizer(tmp_path, mri, monkeypatch):
    """Both shipped models, logged to a registry and sampled in the sandbox, judged by the default
    policy's memorization check. Measured (measure.py): the generalizer's smooth samples were flagged
    45 % of the time when verification scored the similarity to train alone (as often against unseen
    subjects); the membership contrast flags none of them and keeps the memorizer's copies (84 %)."""
    import json

    from typer.testing import CliRunner

    from gate.cli import app
    from gate.generator import log_generator

    monkeypatch.chdir(tmp_path)  # one reference cache (.gate/cache) for both runs
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    policy = default_memorization_policy(tmp_path / "policy.yaml", mri["train"], mri["holdout"])
    reports = {}
    for name in ("memorizer", "generalizer"):
        mv, _ = log_generator(DiffusionGenerator(), name, tracking_uri=uri,
                              artifacts={"weights": str(WEIGHTS / f"{name}.pt")},
                              pip_requirements=["numpy", "pandas", "torch", "monai"])
        res = CliRunner().invoke(app, ["validate", "--policy", str(policy), "--model", f"models:/{name}/{mv.version}",
                                       "--tracking-uri", uri, "--out", str(tmp_path / name), "--quiet"])
        reports[name] = (res, json.loads((tmp_path / name / "report.json").read_text()))
    res, report = reports["memorizer"]
    assert res.exit_code == 1 and report["verdict"] == "fail", res.output
    check = report["checks"][0]
    assert not {r["metric"]: r["passed"] for r in check["rules"]}["copying_detected"]
    assert check["metrics"]["fraction_flagged"] >= 0.5 and check["metrics"]["copy_test_p"] <= 1e-4
    res, report = reports["generalizer"]
    assert res.exit_code == 0 and report["verdict"] == "pass", (res.output, report["checks"][0].get("error"))
    check = report["checks"][0]
    assert all(r["passed"] for r in check["rules"]) and check["metrics"]["n_flagged"] == 0
    assert check["diagnostics"]["power"]["n_samples"] == 64
    assert check["diagnostics"]["verification"]["holdout_subjects"] == 4


def test_logged_generator_loads_back_and_draws_the_same_images(tmp_path, generators):
    import mlflow

    from gate.generator import log_generator
    from gate.registry import download_model, resolve_model

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mv, _ = log_generator(DiffusionGenerator(), "memorizer", tracking_uri=uri,
                          artifacts={"weights": str(WEIGHTS / "memorizer.pt")},
                          pip_requirements=["numpy", "pandas", "torch", "monai"],
                          tags={"benchmark": "trained-memorizer"})
    ref = resolve_model(f"models:/memorizer/{mv.version}", uri)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = download_model(ref, uri, Path(tmp))
        loaded = mlflow.pyfunc.load_model(str(model_dir))
        got = loaded.predict(pd.DataFrame({"n": [3], "seed": [5]}))
    assert np.array_equal(np.asarray(got), generators["memorizer"].generate(3, 5))
