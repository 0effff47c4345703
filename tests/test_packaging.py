"""The wheel installs the validators as ``gate_plugins`` (never a top-level ``plugins``) and declares
them in the ``gate.validators`` entry-point group."""

import subprocess
import sys
import zipfile

from conftest import REPO


def test_wheel_layout_and_entry_points(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(REPO)], check=True)
    wheel = next(tmp_path.glob("*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert not any(n.startswith("plugins/") for n in names)
    assert "gate_plugins/memorization/validator.py" in names
    assert "gate/render/templates/report.html.j2" in names
    ep = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(ep).decode()
    assert "[gate.validators]" in text and "memorization = gate_plugins.memorization.validator:MemorizationValidator" in text
