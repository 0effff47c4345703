"""Shared fixtures: small real-MRI folders built from the nilearn MNI152 template (no downloads)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

REPO = Path(__file__).resolve().parents[1]

# a real `mlflow server` for the tests that need one (a RuntimeError with its log when it cannot start)
from gate.local_server import free_port  # noqa: E402,F401  (used by the tests)
from gate.local_server import local_mlflow_server as mlflow_server  # noqa: E402,F401


def save_slices(folder: Path, images: np.ndarray, ids: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for img, sid in zip(images, ids):
        np.save(folder / f"{sid}.npy", img.astype(np.float32))
    return folder


@pytest.fixture(scope="session")
def mri(tmp_path_factory):
    """Folders of real-template slices: train (4 subjects x 24 slices), holdout (4 x 12), novel candidates (2 other
    subjects) and copies (noised, rescaled train slices)."""
    from gate_plugins.mri.subjects import subject_slices

    root = tmp_path_factory.mktemp("mri")
    train, train_ids = subject_slices(range(1, 5), 24)
    holdout, holdout_ids = subject_slices(range(201, 205), 12)
    novel, novel_ids = subject_slices(range(301, 303), 12)
    rng = np.random.default_rng(7)
    pick = rng.choice(len(train), 24, replace=False)
    copies = np.clip(train[pick] * rng.uniform(0.95, 1.05, (24, 1, 1)) + rng.normal(0, 0.005, train[pick].shape), 0, 1)
    return {
        "root": root,
        "train": save_slices(root / "train", train, train_ids),
        "holdout": save_slices(root / "holdout", holdout, holdout_ids),
        "novel": save_slices(root / "novel", novel, novel_ids),
        "copies": save_slices(root / "copies", copies, [f"copy_of_{train_ids[i]}" for i in pick]),
        "train_images": train,
    }


#: the memorization check without its costly stages (dihedral matching, nuisance whitening, verification,
#: self-check, power analysis), for tests about the service, the sandbox, the registry, the CI step and the
#: reports; the detector at its defaults is tested in test_cli_samples, test_sparse_copying, test_detector,
#: test_trained_generators and the demo
CHEAP_MEMORIZATION = "{invariance: none, nuisance_copies: 0, null_splits: 2, verify_k: 0, self_check: false, power: null}"


def write_policy(path: Path, train: Path, holdout: Path | None = None, *, mode: str = "enforce",
                 params: str = "{}", rules: str | None = None, n_samples: int = 16) -> Path:
    rules = rules if rules is not None else """
        - metric: fraction_flagged
          lte: 0.05
          severity: block"""
    holdout_line = f"\n    holdout: {holdout}" if holdout else ""
    path.write_text(f"""apiVersion: gate/v1
kind: ValidationPolicy
metadata:
  name: test-policy
  owner: tests
spec:
  mode: {mode}
  candidate:
    n_samples: {n_samples}
    seed: 0
    batch_size: 8
  data:
    train: {train}{holdout_line}
  checks:
    - id: memorization
      validator: memorization
      params: {params}
      rules:{rules if rules.strip() else " []"}
""")
    return path


def write_check_policy(path: Path, train: Path, holdout: Path, validator: str, *, params: str = "{}",
                       rules: str = "[]") -> Path:
    """A policy with one check (id = validator name); ``params`` and ``rules`` are YAML flow text."""
    path.write_text(f"""apiVersion: gate/v1
kind: ValidationPolicy
metadata: {{name: {validator}-test, owner: tests}}
spec:
  data: {{train: {train}, holdout: {holdout}}}
  checks:
    - id: {validator}
      validator: {validator}
      params: {params}
      rules: {rules}
""")
    return path


@pytest.fixture(scope="session")
def mri_labelled():
    """Labelled slices of distinct synthetic subjects: train (3 x 12) and test (2 x 8)."""
    from gate_plugins.mri.subjects import labelled_subject_slices

    tr_i, tr_l, _ = labelled_subject_slices(range(1, 4), 12)
    te_i, te_l, _ = labelled_subject_slices(range(201, 203), 8)
    return tr_i, tr_l, te_i, te_l


def log_honest_and_copier(tracking_uri: str, art: Path, name: str = "brain-gen") -> dict:
    """Two registry versions of ``name``: a generator of novel subjects and one that returns the ``mri``
    fixture's train slices (its artifacts, written to ``art``). Returns their versions and those slices."""
    from gate.generator import log_generator
    from gate_plugins.mri.generators import CopyingGenerator, NovelSubjectGenerator
    from gate_plugins.mri.subjects import labelled_subject_slices

    images, labels, _ = labelled_subject_slices(range(1, 5), 24)  # the fixture's train subjects, with labels
    np.save(art / "train_slices.npy", images)
    np.save(art / "train_labels.npy", labels)
    honest, _ = log_generator(NovelSubjectGenerator(), name, tracking_uri=tracking_uri)
    copier, _ = log_generator(CopyingGenerator(), name, tracking_uri=tracking_uri,
                              artifacts={"train_slices": str(art / "train_slices.npy"),
                                         "train_labels": str(art / "train_labels.npy")})
    return {"honest": honest.version, "copier": copier.version, "train_images": images}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A real ``mlflow server`` (sqlite store) on 127.0.0.1 for one test module."""
    with mlflow_server(tmp_path_factory.mktemp("mlflow-server")) as uri:
        yield uri
