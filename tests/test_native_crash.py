"""A native library that crashes inside a check (a segmentation fault, a signal past every ``except``) ends
as gate's exit 3 with one line and the Python stack kept, never as a raw signal (139)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import write_check_policy

#: a third-party validator, installed the way any plugin is (a distribution's entry point), whose check
#: dereferences a null pointer in C
PLUGIN = '''
from typing import ClassVar
from pydantic import BaseModel
from gate.validators import MetricDef

class Params(BaseModel):
    pass

class Crasher:
    name: ClassVar[str] = "crasher"
    Params: ClassVar[type] = Params
    metrics: ClassVar[tuple] = (MetricDef("never", None, "scalar", "never computed"),)
    columns: ClassVar[tuple] = ("sample_id",)

    def run(self, context, params):
        import ctypes, os, pathlib, time
        if os.environ.get("CRASHER_SLEEP"):  # a long check, to be stopped while it runs
            pathlib.Path(os.environ["CRASHER_SLEEP"]).write_text("running")
            time.sleep(600)
        return ctypes.string_at(0)  # SIGSEGV in libc, as a faulty extension would
'''


def _install_plugin(root: Path) -> Path:
    site = root / "site"
    (site / "gate_crasher-0.1.dist-info").mkdir(parents=True)
    (site / "gate_crasher.py").write_text(PLUGIN)
    (site / "gate_crasher-0.1.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: gate-crasher\n"
                                                                   "Version: 0.1\n")
    (site / "gate_crasher-0.1.dist-info" / "entry_points.txt").write_text(
        "[gate.validators]\ncrasher = gate_crasher:Crasher\n")
    return site


def test_a_segfault_in_a_check_is_exit_3_with_its_stack_kept(tmp_path, mri):
    site = _install_plugin(tmp_path)
    policy = write_check_policy(tmp_path / "policy.yaml", mri["train"], mri["holdout"], "crasher")
    gate = Path(sys.executable).with_name("gate")
    env = {**os.environ, "PYTHONPATH": str(site), "TMPDIR": str(tmp_path)}
    res = subprocess.run([str(gate), "validate", "--policy", str(policy), "--samples", str(mri["novel"]),
                          "--out", str(tmp_path / "out"), "--quiet"], capture_output=True, text=True, env=env,
                         cwd=tmp_path, timeout=600)
    assert res.returncode == 3, (res.returncode, res.stderr[-2000:])
    line = [ln for ln in res.stderr.splitlines() if ln.startswith("gate: crash:")]
    assert line and "SIGSEGV" in line[0] and "nothing was validated" in line[0], res.stderr[-2000:]
    log = Path(line[0].split("is in ")[1].rstrip(")"))
    stack = log.read_text()
    assert "Fatal Python error: Segmentation fault" in stack and "gate_crasher.py" in stack
    assert not (tmp_path / "out" / "report.json").exists()  # nothing half-written passes for a result


def test_a_validation_stopped_by_sigterm_dies_of_sigterm_not_of_a_crash(tmp_path, mri):
    """The webhook service stops a running validation with SIGTERM and puts it back in its queue only when
    the process died of that signal: the supervising parent must die of it too, not exit 3 or 130."""
    site = _install_plugin(tmp_path)
    policy = write_check_policy(tmp_path / "policy.yaml", mri["train"], mri["holdout"], "crasher")
    gate = Path(sys.executable).with_name("gate")
    marker = tmp_path / "running"
    env = {**os.environ, "PYTHONPATH": str(site), "TMPDIR": str(tmp_path), "CRASHER_SLEEP": str(marker)}
    proc = subprocess.Popen([str(gate), "validate", "--policy", str(policy), "--samples", str(mri["novel"]),
                             "--out", str(tmp_path / "out"), "--quiet"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert marker.exists(), proc.communicate()[1][-2000:]
        os.killpg(proc.pid, signal.SIGTERM)  # as the service does: the process group it started
        _out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGTERM, (proc.returncode, err[-2000:])
    assert "gate: crash:" not in err
    assert not (tmp_path / "out" / "report.json").exists()
