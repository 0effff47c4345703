"""A hostile policy is refused before any expansion: billion laughs, an oversized or endless file, deep nesting."""

import os
import time
import tracemalloc

import pytest
from typer.testing import CliRunner

from conftest import write_policy
from gate.cli import app
from gate.errors import ConfigError
from gate.policy import load_policy
from gate.validators import discover

MAX_POLICY_BYTES = 256 * 1024  # the documented limit (gate.policy.MAX_POLICY_BYTES)

# each level holds ten of the one before: 10**9 "lol"s once composed, a few hundred bytes as text
LAUGHS = 'lol0: &l0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n' + "".join(
    f"lol{i}: &l{i} [{','.join([f'*l{i - 1}'] * 10)}]\n" for i in range(1, 10))


@pytest.fixture(scope="module")
def registry():
    return discover()


def _refusal(path, registry) -> str:
    with pytest.raises(ConfigError) as info:
        load_policy(path, registry)
    message = str(info.value)
    assert "\n" not in message, message
    return message


def test_billion_laughs_is_refused_before_it_expands(tmp_path, registry):
    path = tmp_path / "laughs.yaml"
    path.write_text("apiVersion: gate/v1\nkind: ValidationPolicy\n" + LAUGHS)
    assert path.stat().st_size < 1000
    tracemalloc.start()
    started = time.perf_counter()
    try:
        message = _refusal(path, registry)
        elapsed = time.perf_counter() - started
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert message == f"{path}:3: YAML anchors and aliases are not allowed in a policy"
    assert elapsed < 1.0 and peak < 20 * 2**20, (elapsed, peak)


def test_an_alias_alone_and_a_merge_key_are_refused(tmp_path, registry):
    policy = write_policy(tmp_path / "p.yaml", tmp_path)
    text = policy.read_text()
    alias = text.replace("  owner: tests\n", "  owner: &who tests\n  description: *who\n")
    (tmp_path / "alias.yaml").write_text(alias)
    assert _refusal(tmp_path / "alias.yaml", registry).endswith(
        ":5: YAML anchors and aliases are not allowed in a policy")
    merge = text.replace("  candidate:\n", "  defaults: &d {seed: 1}\n  candidate:\n    <<: *d\n")
    (tmp_path / "merge.yaml").write_text(merge)
    assert _refusal(tmp_path / "merge.yaml", registry).endswith(
        ":8: YAML anchors and aliases are not allowed in a policy")  # the anchor, before its alias


def test_oversized_policy_is_refused_by_its_size(tmp_path, registry):
    policy = write_policy(tmp_path / "p.yaml", tmp_path)
    load_policy(policy, registry)  # valid as written
    padded = tmp_path / "padded.yaml"
    padded.write_text(policy.read_text() + ("# padding\n" * (MAX_POLICY_BYTES // 10 + 1)))
    message = _refusal(padded, registry)
    assert message == f"{padded}: policy file is {padded.stat().st_size} bytes, over the limit of {MAX_POLICY_BYTES}"


def test_endless_policy_is_read_no_further_than_the_limit(tmp_path, registry):
    link = tmp_path / "zero.yaml"
    os.symlink("/dev/zero", link)  # stat says 0 bytes; reading it never ends
    started = time.perf_counter()
    message = _refusal(link, registry)
    assert message == f"{link}: policy file is over the limit of {MAX_POLICY_BYTES} bytes"
    assert time.perf_counter() - started < 2.0


def test_deep_nesting_is_refused_at_its_line(tmp_path, registry):
    path = tmp_path / "deep.yaml"
    path.write_text("apiVersion: gate/v1\nspec: " + "[" * 20000 + "]" * 20000 + "\n")
    started = time.perf_counter()
    message = _refusal(path, registry)
    assert message == f"{path}:2: policy nests deeper than the limit of 32"
    assert time.perf_counter() - started < 5.0  # the scanner's look-ahead, bounded by the early stop


def test_non_utf8_policy_is_one_clear_line(tmp_path, registry):
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"apiVersion: gate/v1\nmetadata: {name: caf\xe9}\n")
    assert _refusal(path, registry) == f"{path}: policy is not UTF-8 text"


def test_gate_validate_exits_2_on_the_laughing_policy(tmp_path, mri):
    path = tmp_path / "laughs.yaml"
    path.write_text(write_policy(tmp_path / "p.yaml", mri["train"]).read_text() + LAUGHS)
    res = CliRunner().invoke(app, ["validate", "--policy", str(path), "--samples", str(mri["novel"]),
                                   "--out", str(tmp_path / "out"), "--quiet"])
    assert res.exit_code == 2, res.output
    assert "YAML anchors and aliases are not allowed in a policy" in res.output
    assert not (tmp_path / "out" / "report.json").exists()
