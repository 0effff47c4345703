"""The wheel as a user gets it: built from the source tree, installed non-editable into a fresh
environment, run from an empty folder; and the light core, which imports without the MRI stack."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import textwrap
import tomllib
import zipfile
from pathlib import Path

import mlflow
import pytest

from conftest import REPO

HEAVY = ("torch", "monai", "faiss", "nilearn", "kymatio", "SimpleITK", "sklearn", "efficientnet_lite_pytorch")


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MLFLOW_", "GATE_")) and k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return {**env, "MLFLOW_DISABLE_TELEMETRY": "true", **extra}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    dist = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(dist), str(REPO)], check=True)
    return next(dist.glob("*.whl"))


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    """A fresh virtual environment holding the wheel, non-editable. Its dependencies are this
    environment's, seen through one path line (no downloads, no second torch); this environment's own
    editable gate is not, because the path line does not run that folder's .pth files."""
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = Path(subprocess.run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site / "deps-from-the-test-environment.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q",
                    "--no-deps", "--no-index", str(wheel)], check=True, env=_clean_env())
    return venv


def test_wheel_layout_and_entry_points(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert not any(n.startswith("plugins/") for n in names)
    # every package of the source tree, found without a hand list (a missing gate.serve broke every command)
    for folder, prefix in ((REPO / "gate", "gate"), (REPO / "plugins", "gate_plugins")):
        for init in folder.rglob("__init__.py"):
            assert f"{prefix}/{init.parent.relative_to(folder).as_posix()}/__init__.py".replace("/./", "/") \
                in names, init
    assert "gate/render/templates/report.html.j2" in names
    assert "gate_plugins/mri/policies/default.yaml" in names
    ep = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(ep).decode()
    assert "[gate.validators]" in text and "memorization = gate_plugins.memorization.validator:MemorizationValidator" in text


def test_the_installed_wheel_runs_the_demo_from_an_empty_folder(installed, tmp_path):
    gate = str(installed / "bin" / "gate")
    where = subprocess.run([str(installed / "bin" / "python"), "-c", "import gate, gate_plugins; "
                            "print(gate.__file__); print(gate_plugins.__file__)"],
                           capture_output=True, text=True, check=True, cwd=tmp_path).stdout.split()
    assert all(Path(p).is_relative_to(installed) for p in where), where  # the wheel's copy, not the source tree

    help_ = subprocess.run([gate, "--help"], capture_output=True, text=True, cwd=tmp_path, env=_clean_env())
    assert help_.returncode == 0 and "demo" in help_.stdout and "validate" in help_.stdout, help_.stderr
    schema = subprocess.run([gate, "schema"], capture_output=True, text=True, cwd=tmp_path, env=_clean_env())
    assert schema.returncode == 0, schema.stderr
    assert "memorization" in json.dumps(json.loads(schema.stdout))

    res = subprocess.run([gate, "demo", "--quiet"], cwd=tmp_path, capture_output=True, text=True, timeout=1500,
                         env=_clean_env())
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "refused" in res.stdout and "promoted" in res.stdout
    # gate promote names the version whose alias it moves (v3 takes @champion from v1)
    assert "promoted models:/brain-slice-generator/3 to @champion (it held version 1)" in res.stdout, res.stdout
    # MLflow's advice to model authors stays out of gate's output
    assert "mlflow" not in (res.stderr + res.stdout).replace("mlflow ui", "").replace("mlflow.db", ""), res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [".gate"]  # no ./mlruns, nothing outside .gate/
    shipped = Path(where[1]).parent / "mri" / "policies" / "default.yaml"
    assert (tmp_path / ".gate" / "demo" / "policy.yaml").read_bytes() == shipped.read_bytes()
    _assert_demo_outcomes(tmp_path)


def _assert_demo_outcomes(workdir: Path) -> None:
    uri = f"sqlite:///{workdir / '.gate' / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    verdicts = {v: client.get_model_version("brain-slice-generator", v).tags["gate.verdict"] for v in "1234"}
    assert verdicts == {"1": "pass", "2": "fail", "3": "pass", "4": "fail"}
    modes = {v: client.get_model_version("brain-slice-generator", v).tags["gate.generator_mode"] for v in "1234"}
    assert modes == {"1": "paired", "2": "paired", "3": "conditional", "4": "conditional"}
    aliases = client.get_registered_model("brain-slice-generator").aliases
    assert {k: str(v) for k, v in aliases.items()} == {"champion": "3"}  # sqlite stores give ints

    def checks(v):
        report = json.loads((workdir / ".gate" / "demo" / "reports" / f"v{v}" / "report.json").read_text())
        return {c["id"]: c for c in report["checks"]}

    def blocked(check):
        assert check["status"] == "ok", check["error"]
        return [r["metric"] for r in check["rules"] if r["severity"] == "block" and not r["passed"]]

    copier, faithful, broken = checks(2), checks(3), checks(4)
    assert blocked(copier["memorization"]) and not blocked(copier["segmentation"])
    assert not any(blocked(c) for c in faithful.values())
    # the study's central finding: images as clean as the faithful renderer's, anatomy off its labels
    assert not blocked(broken["quality"]) and not blocked(broken["memorization"])
    assert blocked(broken["segmentation"]) == ["dice_drop_upper"]
    assert broken["segmentation"]["metrics"]["dice_drop"] > 0.1 > faithful["segmentation"]["metrics"]["dice_drop"]
    assert faithful["segmentation"]["diagnostics"]["baseline_cache_hit"]  # the real-only baseline ran once
    assert faithful["quality"]["metrics"]["fid_ratio"] == pytest.approx(broken["quality"]["metrics"]["fid_ratio"],
                                                                        rel=0.5)


def test_the_core_declares_no_imaging_stack():
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {d.split(";")[0].split("[")[0].split("=")[0].split(">")[0].split("<")[0].strip().lower() for d in deps}
    assert not names & {"torch", "monai", "faiss-cpu", "nilearn", "kymatio", "simpleitk", "scikit-learn"}, names


BLOCKER = textwrap.dedent(f"""
    import importlib.abc, sys
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {HEAVY!r}:
                raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
    sys.meta_path.insert(0, Block())
""")


def _without_imaging_stack(code: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run ``code`` where the imaging stack cannot be imported, in its process and in every Python process it
    starts (``validate``, ``promote`` and ``demo`` run their checks in a child): the blocker is a
    ``sitecustomize`` on ``PYTHONPATH``, which every interpreter imports at start-up."""
    site = cwd.parent / f"{cwd.name}-blocked-site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(BLOCKER)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          cwd=cwd, env=_clean_env(PYTHONPATH=str(site)))


def test_the_core_imports_and_runs_without_the_imaging_stack(tmp_path):
    """What an MLflow server hosting the guard needs: no torch, MONAI, faiss or nilearn (blocked here)."""
    res = _without_imaging_stack("""
        import gate.attest, gate.attestation, gate.cli, gate.engine, gate.guard, gate.policy, gate.registry
        import gate.render.html, gate.render.pdf, gate.report, gate.rules, gate.serve.service, gate.workflow
        print("imported")
    """, tmp_path)
    assert res.returncode == 0 and "imported" in res.stdout, res.stderr[-2000:]

    res = _without_imaging_stack("""
        import sys
        sys.argv = ["gate", "--help"]
        from gate.cli import main
        main()
    """, tmp_path)
    assert res.returncode == 0 and "validate" in res.stdout and "demo" in res.stdout, res.stderr[-2000:]

    # an MRI command says what to install: exit 2 and one line, no traceback, no crash
    res = _without_imaging_stack("""
        import sys
        sys.argv = ["gate", "demo", "--quiet"]
        from gate.cli import main
        main()
    """, tmp_path)
    assert res.returncode == 2, res.stdout[-2000:] + res.stderr[-2000:]
    assert res.stderr.startswith("gate: error:") and "gate-mri[mri]" in res.stderr and "not installed" in res.stderr
    assert "Traceback" not in res.stderr and not (tmp_path / ".gate").exists()


def test_a_policy_naming_a_validator_whose_stack_is_missing_names_the_extra(tmp_path):
    (tmp_path / "p.yaml").write_text(textwrap.dedent("""
        apiVersion: gate/v1
        kind: ValidationPolicy
        metadata: {name: p, owner: me}
        spec:
          data: {train: train}
          checks:
            - {id: memorization, validator: memorization}
    """))
    res = _without_imaging_stack(f"""
        import sys
        sys.argv = ["gate", "validate", "--policy", {str(tmp_path / 'p.yaml')!r}, "--samples", "nowhere"]
        from gate.cli import main
        main()
    """, tmp_path)
    assert res.returncode == 2, res.stdout + res.stderr
    line = next(x for x in res.stderr.splitlines() if x.startswith("gate: error:"))
    assert "memorization" in line and "gate-mri[mri]" in line and "not installed" in line, res.stderr
