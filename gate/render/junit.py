"""JUnit XML: one testcase per rule, one errored testcase per check that failed to run."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from gate.report import Report


def render_junit(report: Report) -> str:
    suite = ET.Element("testsuite", name=f"gate:{report.provenance.policy_name}")
    n = failures = errors = 0
    for check in report.checks:
        if check.status == "error":
            n += 1; errors += 1
            case = ET.SubElement(suite, "testcase", classname=f"gate.{check.id}", name="run",
                                 time=f"{check.duration_s:.3f}")
            ET.SubElement(case, "error", message=check.error or "error").text = check.error
        for o in check.rules:
            n += 1
            case = ET.SubElement(suite, "testcase", classname=f"gate.{check.id}", name=f"{o.metric} {o.condition}")
            if not o.passed:
                value = "NaN" if o.value is None else f"{o.value:.6g}"
                msg = f"{o.metric} = {value}, needs {o.condition} ({o.severity})"
                if o.severity == "block":
                    failures += 1
                    ET.SubElement(case, "failure", message=msg, type="blocking").text = msg
                else:
                    ET.SubElement(case, "system-out").text = "warning: " + msg
    suite.set("tests", str(n)); suite.set("failures", str(failures)); suite.set("errors", str(errors))
    root = ET.Element("testsuites"); root.append(suite)
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"
