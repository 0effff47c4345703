"""The guard against a real `mlflow server --app-name gate-guard`, as an attacker would try it: route,
encoding and alias-name tricks, non-JSON DELETE bodies, deleting or renaming what holds the alias,
attestation tags replayed onto renamed-in or re-created versions; and the gate service, whose signed
request may take the alias off a version whose artifacts changed after promotion, while the same
request unsigned, replayed, stale or for another body is refused."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import secrets
import time
import unicodedata
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import pytest

from gate import attestation as A
from gate.local_server import local_mlflow_server
from gate.service_auth import HEADER, sign_request

NAME = "sec-guarded"


@dataclasses.dataclass
class Guarded:
    uri: str
    root: Path
    client: mlflow.MlflowClient
    service_key: bytes

    def key(self, name: str) -> Path:
        return self.root / f"{name}.key"


@pytest.fixture(scope="module")
def guarded(tmp_path_factory):
    root = tmp_path_factory.mktemp("guard")
    for name in ("signer", "forger"):
        private, public = A.generate_keypair()
        (root / f"{name}.key").write_bytes(private)
        (root / f"{name}.pub").write_bytes(public)
    service_key = secrets.token_hex(32).encode()
    (root / "service.key").write_bytes(service_key + b"\n")
    # GATE_GUARD_PROTECT_DELETE is left unset: protecting deletion is the default
    env = {"GATE_GUARD_PUBLIC_KEY": str(root / "signer.pub"), "GATE_PROTECTED_ALIASES": "champion,prod",
           "GATE_GUARD_SERVICE_KEY_FILE": str(root / "service.key")}
    with local_mlflow_server(root, app_name="gate-guard", env=env) as uri:
        yield Guarded(uri, root, mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri), service_key)


def new_version(g: Guarded, name: str, payload: str = "weights"):
    """A registered version whose source is a run's small `model/` folder (no pyfunc logging: fast)."""
    client = g.client
    exp = client.get_experiment_by_name("sec") or client.get_experiment(client.create_experiment("sec"))
    run = client.create_run(exp.experiment_id)
    client.log_text(run.info.run_id, payload, "model/weights.txt")
    client.set_terminated(run.info.run_id)
    try:
        client.create_registered_model(name)
    except mlflow.exceptions.MlflowException:
        pass
    return client.create_model_version(name, f"runs:/{run.info.run_id}/model", run_id=run.info.run_id)


def attest(g: Guarded, mv, *, key: str = "signer", verdict: str = "pass", digest: str = "2" * 64,
           report_run: str | None = None, report_sha256: str = "0" * 64) -> str:
    """A signed statement about ``mv`` as the registry records it, put in its gate.attestation tag."""
    predicate = {"verdict": verdict, "report_sha256": report_sha256, "policy_name": "p", "policy_sha256": "1" * 64,
                 "mlflow_run_id": report_run, "issued_at": dt.datetime.now(dt.timezone.utc).isoformat()}
    record = g.client.get_model_version(mv.name, mv.version)
    envelope = json.dumps(A.sign(A.make_statement(f"models:/{mv.name}/{mv.version}", digest, predicate,
                                                  A.version_identity(record)), A.load_private_key(g.key(key))))
    g.client.set_model_version_tag(mv.name, mv.version, "gate.attestation", envelope)
    return envelope


def send(g: Guarded, method: str, path: str, body: bytes | str | None = None, content_type: str | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, str]:
    data = body.encode() if isinstance(body, str) else body
    req = urllib.request.Request(g.uri + path, data=data, method=method, headers=dict(headers or {}))
    if content_type is not None:
        req.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(req, timeout=20) as r:
            return r.status, r.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


@pytest.fixture(scope="module")
def champion(guarded):
    """NAME v_good (valid passing attestation) holds @champion; v_bad has none; v_fail failed."""
    good, bad, failed = (new_version(guarded, NAME) for _ in range(3))
    attest(guarded, good)
    attest(guarded, failed, verdict="fail")
    guarded.client.set_registered_model_alias(NAME, "champion", good.version)  # allowed: valid and passing
    return str(good.version), str(bad.version), str(failed.version)


REST, AJAX = "/api/2.0/mlflow", "/ajax-api/2.0/mlflow"
J = "application/json"


def _cases():
    """(id, method, path, body, content type): every one tries to move @champion (or @prod) off v_good."""
    def alias_body(alias="champion", version="{bad}", name=NAME):
        return json.dumps({"name": name, "alias": alias, "version": version})

    set_alias = f"{REST}/registered-models/alias"
    cases = [
        ("set-plain", "POST", set_alias, alias_body(), J),
        ("set-prod", "POST", set_alias, alias_body("prod"), J),
        ("set-failed-version", "POST", set_alias, alias_body(version="{failed}"), J),
        ("set-ajax", "POST", f"{AJAX}/registered-models/alias", alias_body(), J),
        ("set-trailing-slash", "POST", set_alias + "/", alias_body(), J),
        ("set-double-slash", "POST", "/api/2.0//mlflow/registered-models/alias", alias_body(), J),
        ("set-leading-double-slash", "POST", "/" + set_alias, alias_body(), J),
        ("set-percent-encoded", "POST", f"{REST}/registered-models/%61lias", alias_body(), J),
        ("set-percent-slash", "POST", f"{REST}/registered-models%2Falias", alias_body(), J),
        ("set-upper-path", "POST", set_alias.upper(), alias_body(), J),
        ("set-mixed-case-path", "POST", f"{REST}/Registered-Models/Alias", alias_body(), J),
        ("set-dot-dot", "POST", f"{REST}/x/../registered-models/alias", alias_body(), J),
        ("set-dot", "POST", f"{REST}/registered-models/./alias", alias_body(), J),
        ("set-api-3", "POST", "/api/3.0/mlflow/registered-models/alias", alias_body(), J),
        ("set-preview", "POST", "/api/2.0/preview/mlflow/registered-models/alias", alias_body(), J),
        ("set-query-fields", "POST", f"{set_alias}?name={NAME}&alias=champion&version={{bad}}", "{}", J),
        ("set-query-vs-body", "POST", f"{set_alias}?alias=candidate", alias_body(), J),
        ("set-body-vs-query", "POST", f"{set_alias}?alias=champion", alias_body("candidate"), J),
        ("set-duplicated-field", "POST", set_alias,
         f'{{"name": "{NAME}", "alias": "candidate", "alias": "champion", "version": "{{bad}}"}}', J),
        ("set-bom", "POST", set_alias, "\ufeff" + alias_body(), J),
        ("set-double-encoded", "POST", set_alias, json.dumps(alias_body()), J),
        ("set-charset", "POST", set_alias, alias_body(), "application/json; charset=utf-8"),
        ("set-text-plain", "POST", set_alias, alias_body(), "text/plain"),
        ("set-form", "POST", set_alias, f"name={NAME}&alias=champion&version={{bad}}",
         "application/x-www-form-urlencoded"),
        ("set-untyped", "POST", set_alias, alias_body(), None),
        ("set-patch", "PATCH", set_alias, alias_body(), J),
        ("set-put", "PUT", set_alias, alias_body(), J),
        ("set-get", "GET", f"{set_alias}?name={NAME}&alias=champion&version={{bad}}", None, None),
        ("set-upper-alias", "POST", set_alias, alias_body("CHAMPION"), J),
        ("set-title-alias", "POST", set_alias, alias_body("Champion"), J),
        ("set-space-alias", "POST", set_alias, alias_body(" champion"), J),
        ("set-newline-alias", "POST", set_alias, alias_body("champion\n"), J),
        ("set-fullwidth-alias", "POST", set_alias, alias_body("ｃｈａｍｐｉｏｎ"), J),
        ("set-zero-width-alias", "POST", set_alias, alias_body("champion\u200b"), J),
        ("set-version-int", "POST", set_alias, alias_body(version=None).replace("null", "{bad}"), J),
        ("set-version-leading-zero", "POST", set_alias, alias_body(version="0{bad}"), J),
        ("set-unknown-version", "POST", set_alias, alias_body(version="999"), J),
        ("set-camel-and-snake", "POST", set_alias,
         f'{{"name": "{NAME}", "alias": "champion", "version": "{{bad}}", "Version": "{{good}}"}}', J),
        ("stage-production", "POST", f"{REST}/model-versions/transition-stage",
         json.dumps({"name": NAME, "version": "{bad}", "stage": "Production"}), J),
        ("stage-lower", "POST", f"{AJAX}/model-versions/transition-stage",
         json.dumps({"name": NAME, "version": "{bad}", "stage": "staging"}), J),
        ("delete-alias", "DELETE", set_alias, json.dumps({"name": NAME, "alias": "champion"}), J),
        ("delete-alias-text-plain", "DELETE", set_alias, json.dumps({"name": NAME, "alias": "champion"}),
         "text/plain"),
        ("delete-alias-form", "DELETE", set_alias, json.dumps({"name": NAME, "alias": "champion"}),
         "application/x-www-form-urlencoded"),
        ("delete-alias-untyped", "DELETE", set_alias, json.dumps({"name": NAME, "alias": "champion"}), None),
        ("delete-alias-query", "DELETE", f"{set_alias}?name={NAME}&alias=champion", None, None),
        ("delete-alias-ajax-upper", "DELETE", f"{AJAX}/registered-models/alias",
         json.dumps({"name": NAME, "alias": "CHAMPION"}), "text/plain"),
        ("delete-version", "DELETE", f"{REST}/model-versions/delete",
         json.dumps({"name": NAME, "version": "{good}"}), J),
        ("delete-version-text-plain", "DELETE", f"{AJAX}/model-versions/delete",
         json.dumps({"name": NAME, "version": "0{good}"}), "text/plain"),
        ("delete-model", "DELETE", f"{REST}/registered-models/delete", json.dumps({"name": NAME}), None),
        ("rename-model", "POST", f"{REST}/registered-models/rename",
         json.dumps({"name": NAME, "new_name": NAME + "-away"}), J),
        ("forged-service-signature", "DELETE", set_alias, json.dumps({"name": NAME, "alias": "champion"}), J),
    ]
    return cases


CASES = _cases()


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_no_route_encoding_or_alias_trick_moves_the_protected_alias(guarded, champion, case):
    good, bad, failed = champion
    cid, method, path, body, ctype = case
    fill = lambda s: s.replace("{bad}", bad).replace("{good}", good).replace("{failed}", failed)  # noqa: E731
    body = fill(body) if body is not None else None
    headers = {HEADER: "t=%d;n=%s;sig=%s" % (time.time(), "0" * 32, "f" * 64)} if cid.startswith("forged") else {}
    status, text = send(guarded, method, fill(path), body, ctype, headers)
    model = guarded.client.get_registered_model(NAME)  # the model is still there, under its name
    lookalike = lambda a: "".join(c for c in unicodedata.normalize("NFKC", a) if c.isalnum()).casefold()  # noqa: E731
    assert {a: str(v) for a, v in model.aliases.items() if lookalike(a) in ("champion", "prod")} == \
        {"champion": good}, (cid, status, text[:300])
    assert guarded.client.get_model_version(NAME, good).current_stage == "None"
    assert guarded.client.get_model_version(NAME, bad).current_stage == "None", (cid, status, text[:300])
    # a read (GET is get-by-alias) or a change of an unprotected alias may succeed; nothing else does
    assert status != 200 or method == "GET" or "candidate" in (body or "") + path, (cid, status, text[:300])


def test_a_tag_replayed_onto_a_renamed_in_version_is_refused(guarded):
    client = guarded.client
    validated = new_version(guarded, "rn-model")
    envelope = attest(guarded, validated)
    client.rename_registered_model("rn-model", "rn-model-old")  # holds no protected alias: allowed
    copier = new_version(guarded, "rn-copier", payload="copied training images")
    client.set_model_version_tag("rn-copier", copier.version, "gate.attestation", envelope)
    client.rename_registered_model("rn-copier", "rn-model")  # now models:/rn-model/1, with the old tag
    assert str(client.get_model_version("rn-model", "1").version) == "1"
    with pytest.raises(mlflow.exceptions.MlflowException, match="renamed in, re-created or copied"):
        client.set_registered_model_alias("rn-model", "champion", "1")
    assert "champion" not in client.get_registered_model("rn-model").aliases


def test_a_tag_replayed_onto_a_re_created_version_is_refused(guarded):
    client = guarded.client
    validated = new_version(guarded, "rc-model")
    envelope = attest(guarded, validated)
    client.delete_registered_model("rc-model")  # holds no protected alias: allowed
    copier = new_version(guarded, "rc-model", payload="copied training images")
    assert str(copier.version) == "1"
    client.set_model_version_tag("rc-model", "1", "gate.attestation", envelope)
    with pytest.raises(mlflow.exceptions.MlflowException, match="creation_timestamp"):
        client.set_registered_model_alias("rc-model", "champion", "1")
    attest(guarded, copier)  # a statement about this very version is accepted
    client.set_registered_model_alias("rc-model", "champion", "1")


def test_the_service_may_take_the_alias_off_a_version_whose_artifacts_changed(guarded):
    """Guard and `gate serve` together: the guard cannot see an artifact swap after promotion (it does not
    re-hash); the alias watch does, and its signed DELETE is the only one the guard lets through."""
    from gate.attest import model_artifacts_sha256
    from gate.registry import resolve_model
    from gate.serve.alias_watch import attestation_problem, reconcile_alias

    client, name = guarded.client, "svc-model"
    mv = new_version(guarded, name)
    report = client.create_run(client.get_experiment_by_name("sec").experiment_id).info.run_id
    client.log_text(report, '{"verdict": "pass"}', "gate/report.json")
    digest = model_artifacts_sha256(resolve_model(f"models:/{name}/1", guarded.uri), guarded.uri)
    attest(guarded, mv, digest=digest, report_run=report,
           report_sha256=hashlib.sha256(b'{"verdict": "pass"}').hexdigest())
    client.set_registered_model_alias(name, "champion", "1")
    trust = A.TrustPolicy.from_files([guarded.root / "signer.pub"])
    problem_of = lambda n, v: attestation_problem(guarded.uri, trust, None, n, v)  # noqa: E731
    assert problem_of(name, "1") is None

    # the files behind the version are swapped through the artifact store after promotion
    [swapped] = guarded.root.joinpath("artifacts").glob(f"*/{mv.run_id}/artifacts/model/weights.txt")
    swapped.write_text("copied training images")
    assert "artifacts changed" in problem_of(name, "1")

    body = json.dumps({"name": name, "alias": "champion"})
    path = "/api/2.0/mlflow/registered-models/alias"
    assert send(guarded, "DELETE", path, body, J)[0] == 403  # unsigned: refused
    with pytest.raises(mlflow.exceptions.MlflowException, match="deleting it is refused"):
        reconcile_alias(guarded.uri, name, "champion", problem_of, None)  # the service without its key
    decision = reconcile_alias(guarded.uri, name, "champion", problem_of, None, service_key=guarded.service_key)
    assert decision.action == "removed" and "artifacts changed" in decision.reason
    assert "champion" not in client.get_registered_model(name).aliases

    # a signed request counts once, for its own body, within its window
    client.set_registered_model_alias(name, "champion", "1")  # the guard alone still allows it (no re-hash)
    signed = {HEADER: sign_request(guarded.service_key, "DELETE", path, body.encode())}
    other = {HEADER: sign_request(guarded.service_key, "DELETE", path, b'{"name": "x", "alias": "champion"}')}
    stale = {HEADER: sign_request(guarded.service_key, "DELETE", path, body.encode(), now=time.time() - 300)}
    wrong_key = {HEADER: sign_request(b"k" * 32, "DELETE", path, body.encode())}
    for headers, reason in ((other, "does not match"), (stale, "window"), (wrong_key, "does not match")):
        status, text = send(guarded, "DELETE", path, body, J, headers)
        assert status == 403 and reason in text, text
    assert send(guarded, "DELETE", path, body, J, signed)[0] == 200
    client.set_registered_model_alias(name, "champion", "1")
    status, text = send(guarded, "DELETE", path, body, J, signed)
    assert status == 403 and "replayed" in text, text
    assert str(client.get_registered_model(name).aliases["champion"]) == "1"


def test_a_tag_replayed_across_workspaces_is_refused(tmp_path):
    """MLflow 3 workspaces: the same name and number in another workspace is another version."""
    private, public = A.generate_keypair()
    (tmp_path / "s.key").write_bytes(private)
    (tmp_path / "s.pub").write_bytes(public)
    env = {"GATE_GUARD_PUBLIC_KEY": str(tmp_path / "s.pub"), "MLFLOW_ENABLE_WORKSPACES": "true"}
    with local_mlflow_server(tmp_path, app_name="gate-guard", env=env) as uri:
        g = Guarded(uri, tmp_path, mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri), b"")

        def call(ws, method, path, payload):
            status, text = send(g, method, path, json.dumps(payload), J, {"X-MLFLOW-WORKSPACE": ws})
            return status, (json.loads(text) if text.strip().startswith("{") else text)

        versions = {}
        for ws in ("team-a", "team-b"):
            assert call("default", "POST", "/api/3.0/mlflow/workspaces", {"name": ws})[0] in (200, 201)
            assert call(ws, "POST", f"{REST}/registered-models/create", {"name": "shared"})[0] == 200
            exp = call(ws, "POST", f"{REST}/experiments/create", {"name": "e"})[1]["experiment_id"]
            run = call(ws, "POST", f"{REST}/runs/create", {"experiment_id": exp})[1]["run"]["info"]["run_id"]
            status, body = call(ws, "POST", f"{REST}/model-versions/create",
                                {"name": "shared", "source": f"runs:/{run}/model", "run_id": run})
            assert status == 200, body
            versions[ws] = body["model_version"]
        a = versions["team-a"]
        assert a["version"] == versions["team-b"]["version"] == "1"
        identity = A.version_identity({**a, "workspace": "team-a"})
        predicate = {"verdict": "pass", "report_sha256": "0" * 64, "policy_name": "p", "policy_sha256": "1" * 64,
                     "issued_at": dt.datetime.now(dt.timezone.utc).isoformat()}
        envelope = json.dumps(A.sign(A.make_statement("models:/shared/1", "2" * 64, predicate, identity),
                                     A.load_private_key(tmp_path / "s.key")))
        for ws in ("team-a", "team-b"):
            assert call(ws, "POST", f"{REST}/model-versions/set-tag",
                        {"name": "shared", "version": "1", "key": "gate.attestation", "value": envelope})[0] == 200
        alias = {"name": "shared", "alias": "champion", "version": "1"}
        status, body = call("team-b", "POST", f"{REST}/registered-models/alias", alias)
        assert status == 403 and "another version" in body["message"], body
        status, body = call("team-a", "POST", f"{REST}/registered-models/alias", alias)
        assert status == 200, body  # the version it was made for, in its own workspace
