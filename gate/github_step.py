"""The GitHub Actions step of ``.github/actions/gate``: run ``gate validate``, then speak the runner's
language: the Markdown summary into ``$GITHUB_STEP_SUMMARY``, ``verdict`` and ``report-path`` into
``$GITHUB_OUTPUT``, one ``::error`` annotation per failed blocking rule (pointing at the rule's line in
the policy), and gate's own exit code (0 pass, 1 blocked, 2 bad input, 3 validator error).

Inputs come from the environment (``GATE_POLICY``, ``GATE_MODEL``, ``GATE_SAMPLES``,
``GATE_TRACKING_URI``, ``GATE_OUT``), never interpolated into a shell script.

What gate printed may carry hostile text (a folder name, a model name, an error): it is echoed between
``::stop-commands::`` and a random token, and each of its lines is neutralised as well (the runner reads
stdout and stderr apart, so their order against the token is not guaranteed), so that it cannot issue a
workflow command; the summary it falls back on is Markdown-escaped.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
import uuid
from pathlib import Path

from gate.render.markdown import md_text
from gate.textsafe import one_line

MAX_ANNOTATIONS = 10  # GitHub shows 10 annotations of a kind per step


def _escape_data(s: str) -> str:
    # GitHub's documented escaping of a command's data; ``##[`` (the old syntax) shown behind a backslash too
    return s.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A").replace("##[", "##\\[")


def _escape_property(s: str) -> str:
    return _escape_data(s).replace(":", "%3A").replace(",", "%2C")


def neutralise_log(text: str) -> str:
    """``text`` with no line the runner would take for a workflow command: it reads one where a line, its
    leading blanks trimmed, starts with ``::``, and, in the old syntax, wherever ``##[`` appears. Lines are
    split as the runner splits them (at CR as well as LF); such a line is shown behind a backslash."""
    lines = []
    for line in text.splitlines():
        line = line.replace("##[", "##\\[")
        lines.append("\\" + line if line.lstrip().startswith("::") else line)
    return "".join(line + "\n" for line in lines)


def echo_without_commands(stdout: str, stderr: str, token: str | None = None) -> None:
    """Echo a child's output so that none of it acts as a workflow command (see :func:`neutralise_log`)."""
    token = token or secrets.token_hex(16)
    print(f"::stop-commands::{token}", flush=True)
    print(neutralise_log(stdout), end="", flush=True)
    print(neutralise_log(stderr), end="", file=sys.stderr, flush=True)
    print(f"::{token}::", flush=True)


def set_output(name: str, value: str, env=os.environ) -> None:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*", name):
        raise ValueError(f"not an output name: {one_line(name)}")
    path = env.get("GITHUB_OUTPUT")
    if not path:
        return
    with open(path, "a", encoding="utf-8") as f:
        if "\n" in value or "\r" in value:
            delim = f"ghadelim_{uuid.uuid4().hex}"
            f.write(f"{name}<<{delim}\n{value}\n{delim}\n")
        else:
            f.write(f"{name}={value}\n")


def annotations(report: dict, policy: str) -> list[str]:
    lines = []
    for check in report["checks"]:
        if check["status"] == "error":
            lines.append(f"::error title={_escape_property('gate check ' + check['id'])}::"
                         f"{_escape_data(check['id'] + ' did not finish: ' + (check['error'] or ''))}")
        for rule in check["rules"]:
            if rule["severity"] == "block" and not rule["passed"]:
                where = f",file={_escape_property(policy)},line={rule['line']}" if rule.get("line") else ""
                value = "NaN" if rule["value"] is None else f"{rule['value']:.4g}"
                name = f"{check['id']}.{rule['metric']}"
                message = f"{name} = {value}, needs {rule['condition']}"
                lines.append(f"::error title={_escape_property('gate ' + name)}{where}::{_escape_data(message)}")
    return lines[:MAX_ANNOTATIONS]


def main(env=os.environ) -> int:
    policy, out = env.get("GATE_POLICY", "policies/default.yaml"), Path(env.get("GATE_OUT", "gate-report"))
    args = [sys.executable, "-m", "gate.cli", "validate", "--policy", policy, "--out", str(out), "--quiet"]
    if env.get("GATE_MODEL"):
        args += ["--model", env["GATE_MODEL"]]
    if env.get("GATE_SAMPLES"):
        args += ["--samples", env["GATE_SAMPLES"]]
    if env.get("GATE_TRACKING_URI"):
        args += ["--tracking-uri", env["GATE_TRACKING_URI"]]
    print("::group::gate validate", flush=True)
    proc = subprocess.run(args, capture_output=True, text=True, env=dict(env))
    echo_without_commands(proc.stdout, proc.stderr)
    print("::endgroup::")
    report_path = out / "report.json"
    if not report_path.is_file():  # bad input: gate wrote its one error line and no report
        reason = one_line((proc.stderr.strip().splitlines() or ["gate wrote no report"])[-1])
        print(f"::error title=gate::{_escape_data(reason)}")
        set_output("verdict", "error", env)
        _summary(f"## gate: ❌ not validated\n\n{md_text(reason)}\n", env)
        return proc.returncode or 2
    report = json.loads(report_path.read_text(encoding="utf-8"))
    for line in annotations(report, policy):
        print(line)
    set_output("verdict", report["verdict"], env)
    set_output("report-path", str(out / "report.html"), env)
    summary = out / "summary.md"
    _summary(summary.read_text(encoding="utf-8") if summary.is_file() else f"gate verdict: {report['verdict']}\n", env)
    return proc.returncode


def _summary(text: str, env) -> None:
    path = env.get("GITHUB_STEP_SUMMARY")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(text[: 1024 * 1024 - 1024])  # the runner drops summaries over 1 MiB


if __name__ == "__main__":
    sys.exit(main())
