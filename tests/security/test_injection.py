"""Nothing from input is echoed raw: a samples folder named with Markdown, raw HTML, a ``::notice`` line and
an old-syntax ``##[`` command, and sample files named as spreadsheet formulas, end to end through
``gate validate --samples`` and the GitHub step."""

import csv
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from markdown_it import MarkdownIt
from typer.testing import CliRunner

from conftest import CHEAP_MEMORIZATION, write_policy
from gate.cli import app

NAME = "evil](x) <img src=x onerror=alert(1)> **bold** `tick` | pipe @here #1 $x$\n::notice title=pwned::owned\n##[warning]v1"
FORMULAS = ['=HYPERLINK("evil.example","x")', "@SUM(1+1)", "+cmd", "-2+3"]
OUR_COMMANDS = re.compile(r"::(group::gate validate|endgroup::|stop-commands::[0-9a-f]{32}|[0-9a-f]{32}::|error title=.*)")


def _hostile_samples(root: Path, novel: Path) -> Path:
    folder = root / NAME
    folder.mkdir(parents=True)
    files = sorted(novel.glob("*.npy"))
    for src in files[:-len(FORMULAS)]:
        shutil.copy(src, folder / src.name)
    for src, formula in zip(files[-len(FORMULAS):], FORMULAS):
        shutil.copy(src, folder / f"{formula}.npy")
    return folder


def _render(markdown: str) -> str:
    """As a job summary renders it: CommonMark with tables and raw HTML allowed."""
    return MarkdownIt("commonmark", {"html": True}).enable(["table", "strikethrough"]).render(markdown)


def _assert_markdown_neutral(markdown: str) -> None:
    rendered = _render(markdown)
    for tag in ("<img", "<strong", "<em", "<a ", "<del"):
        assert tag not in rendered, (tag, rendered)
    assert "&lt;img src=x onerror=alert(1)&gt;" in rendered
    assert not any(line.lstrip().startswith(("::", "##[")) for line in markdown.splitlines()), markdown


@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory, mri):
    root = tmp_path_factory.mktemp("inject")
    samples = _hostile_samples(root, mri["novel"])
    policy = write_policy(root / "policy.yaml", mri["train"], mri["holdout"], params=CHEAP_MEMORIZATION)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        res = CliRunner().invoke(app, ["validate", "--policy", str(policy), "--samples", str(samples),
                                       "--out", str(root / "out"), "--quiet"])
    assert res.exit_code == 0, res.output
    return {"root": root, "samples": samples, "policy": policy, "out": root / "out"}


def test_summary_md_holds_the_folder_name_as_text(hostile_run):
    summary = (hostile_run["out"] / "summary.md").read_text()
    _assert_markdown_neutral(summary)
    # the name is there, readable, on one line: its newlines shown as escapes
    assert "\\x0a::notice title=pwned::owned\\x0a##[warning]v1" in summary
    assert summary.count("\n") == 7  # heading, blank, what, blank, table head, rule, one row: nothing more


def test_report_html_escapes_the_folder_name(hostile_run):
    html = (hostile_run["out"] / "report.html").read_text()
    assert "<img src=x" not in html and "&lt;img src=x onerror=alert(1)&gt;" in html


def test_csv_cells_that_would_be_formulas_are_neutralised(hostile_run):
    path = hostile_run["out"] / "samples" / "memorization.csv"
    rows = list(csv.reader(path.open(newline="")))
    cells = [cell for row in rows for cell in row]
    assert not [c for c in cells if c.startswith(("=", "+", "@", "\t", "\r")) or re.match(r"-[^\d.]", c)], cells
    ids = {row[0] for row in rows[1:]}
    assert {f"'{formula}.npy" for formula in FORMULAS} <= ids
    table = pd.read_csv(path)
    assert pd.api.types.is_float_dtype(table["similarity"])  # numbers stay numbers


def test_neutralise_formulas_keeps_numbers_numeric():
    from gate.render.csvsafe import neutralise_formulas

    df = pd.DataFrame({"sample_id": ["=1+1", "-2+3", "-1.5", "ok", "@x", "\tx", "\rx", "\uff1dx", None],
                       "value": [-1.0, 2, 3, 4, 5, 6, 7, 8, 9],
                       "mixed": [-3, "=1", 2.5, "a", True, None, "-", "-x", "+1e5"]})
    df["=col"] = 1
    out = neutralise_formulas(df)
    assert out["sample_id"].tolist()[:8] == ["'=1+1", "'-2+3", "-1.5", "ok", "'@x", "'\tx", "'\rx", "'\uff1dx"]
    assert out["sample_id"].isna().tolist()[-1]
    assert out["value"].dtype == df["value"].dtype and out["value"].tolist() == df["value"].tolist()
    assert out["mixed"].tolist()[:5] == [-3, "'=1", 2.5, "a", True] and out["mixed"].tolist()[6:] == ["'-", "'-x", "+1e5"]
    assert list(out.columns) == ["sample_id", "value", "mixed", "'=col"]
    assert df["sample_id"][0] == "=1+1"  # the input is not changed


def _step(cwd: Path, samples: Path, policy: Path):
    out, summary = cwd / "GITHUB_OUTPUT", cwd / "GITHUB_STEP_SUMMARY"
    env = {"PATH": str(Path(sys.executable).parent), "HOME": str(cwd), "GITHUB_OUTPUT": str(out),
           "GITHUB_STEP_SUMMARY": str(summary), "GATE_POLICY": str(policy), "GATE_SAMPLES": str(samples),
           "GATE_OUT": str(cwd / "report"), "MLFLOW_DISABLE_TELEMETRY": "true"}
    res = subprocess.run([sys.executable, "-m", "gate.github_step"], cwd=cwd, env=env, capture_output=True,
                         text=True, timeout=600)
    return res, out.read_text(), summary.read_text() if summary.exists() else ""


def _assert_no_foreign_commands(res) -> None:
    for stream in (res.stdout, res.stderr):
        for line in re.split(r"\r\n|\r|\n", stream):
            assert "##[" not in line, line
            if line.lstrip().startswith("::"):
                assert OUR_COMMANDS.fullmatch(line.strip()), line


def test_github_step_output_and_summary_are_neutralised(hostile_run, tmp_path):
    res, outputs, summary = _step(tmp_path, hostile_run["samples"], hostile_run["policy"])
    assert res.returncode == 0, res.stdout + res.stderr
    _assert_no_foreign_commands(res)
    assert "pwned" in res.stdout + res.stderr  # echoed, but as text
    assert dict(line.split("=", 1) for line in outputs.splitlines())["verdict"] == "pass"
    _assert_markdown_neutral(summary)


def test_github_step_bad_input_is_neutralised(tmp_path, mri):
    missing = tmp_path / NAME / "nowhere"
    policy = write_policy(tmp_path / "policy.yaml", mri["train"], params=CHEAP_MEMORIZATION)
    res, outputs, summary = _step(tmp_path, missing, policy)
    assert res.returncode == 2 and "verdict=error" in outputs, res.stdout + res.stderr
    _assert_no_foreign_commands(res)
    errors = [line for line in res.stdout.splitlines() if line.startswith("::error title=gate::")]
    assert len(errors) == 1 and "%0A" not in errors[0] and "\\x0a::notice" in errors[0], errors
    _assert_markdown_neutral(summary)


def test_neutralise_log_leaves_no_line_the_runner_reads_as_a_command():
    from gate.github_step import neutralise_log

    text = "ok\n  ::notice::x\r::add-mask::y\r\n\t::error::z\n\u00a0::stop-commands::t\nsee ##[warning]w\n"
    out = neutralise_log(text)
    lines = re.split(r"\r\n|\r|\n", out)
    assert not [line for line in lines if line.lstrip().startswith("::") or "##[" in line], lines
    assert lines[:3] == ["ok", "\\  ::notice::x", "\\::add-mask::y"] and "see ##\\[warning]w" in lines
