"""The benchmark command, run as a user would (the demo runs from the installed wheel: test_packaging)."""

import subprocess
import sys
from pathlib import Path



GATE = str(Path(sys.executable).with_name("gate"))


def test_bench_memorization_prints_the_tables(tmp_path, mri):
    res = subprocess.run([GATE, "bench", "memorization", "--train", str(mri["train"]), "--test",
                          str(mri["holdout"]), "--holdout", str(mri["novel"]), "--paper-conditions-only"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = {line.split("|")[1].strip(): line for line in res.stdout.splitlines() if line.startswith("| ")}
    # copies are ranked above every novel slice at every duplication level, flipped ones only with
    # dihedral matching (first column: efficientnet-lite0, dihedral; second: the paper's plain matching)
    for cond in ("clean", "noise_0.01", "intensity", "hflip", "vflip"):
        assert rows[cond].split("|")[3].strip().startswith("1.000 / 1.000"), rows[cond]
    assert not rows["vflip"].split("|")[4].strip().startswith("1.000 / 1.000")
    assert "img/s" in res.stdout and "45%" in res.stdout
