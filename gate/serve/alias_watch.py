"""Putting a protected alias back when it lands on a version without a valid passing attestation, for
MLflow servers that run without the ``gate-guard`` plugin.

Webhooks fire after the write, so this narrows the window (an unapproved ``@champion`` resolves for
about a second) rather than closing it: the guard plugin closes it. The check reads the alias's holder
*now*, not the version in the delivery, so late or reordered deliveries cannot undo a later, valid
promotion; the service's own revert fires another ``alias.created`` whose check then passes, so it
cannot loop. Behind the ``gate-guard`` plugin, which refuses deleting a protected alias, the service
deletes with a request signed by the key it shares with the guard (:mod:`gate.service_auth`).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Callable

from gate.attestation import AttestationError, verdict_problem
from gate.registry import client_for, resolve_model


@dataclasses.dataclass(frozen=True)
class AliasDecision:
    action: str  # absent | allowed | reverted | removed
    name: str
    alias: str
    version: str | None  # the holder found
    restored: str | None = None  # the version the alias was moved back to
    reason: str | None = None


def attestation_problem(tracking_uri: str, trust, max_age: dt.timedelta | None, name: str,
                        version: str) -> str | None:
    """None when the version carries a valid *passing* attestation whose identity, artifacts and report
    still match; otherwise why not (the full ``gate verify`` check, artifacts re-hashed). ``trust``: a
    :class:`~gate.attestation.TrustPolicy`, or one public key (then ``max_age``, default 30 days)."""
    from gate.attest import verify_model_version
    from gate.attestation import TrustPolicy
    from gate.errors import GateError

    if not isinstance(trust, TrustPolicy):
        trust = TrustPolicy((trust,), max_age=max_age) if max_age else TrustPolicy((trust,))
    try:
        ref = resolve_model(f"models:/{name}/{version}", tracking_uri)
        statement = verify_model_version(ref, tracking_uri, trust)
    except (AttestationError, GateError) as exc:
        return str(exc)
    return verdict_problem(statement)


def reconcile_alias(tracking_uri: str, name: str, alias: str, problem_of: Callable[[str, str], str | None],
                    approved_holder: str | None, service_key: bytes | None = None) -> AliasDecision:
    """Judge the alias's current holder; move the alias back to ``approved_holder`` (the last holder
    this service allowed) when that one is still valid, else delete the alias (a request signed with
    ``service_key`` when given, so that the guard lets it through)."""
    from mlflow.exceptions import MlflowException

    client = client_for(tracking_uri)
    try:
        holder = str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException as exc:
        if "RESOURCE_DOES_NOT_EXIST" in str(exc.error_code) or "INVALID_PARAMETER_VALUE" in str(exc.error_code):
            return AliasDecision("absent", name, alias, None)
        raise
    problem = problem_of(name, holder)
    if problem is None:
        return AliasDecision("allowed", name, alias, holder)
    if approved_holder and approved_holder != holder and problem_of(name, approved_holder) is None:
        client.set_registered_model_alias(name, alias, approved_holder)
        return AliasDecision("reverted", name, alias, holder, approved_holder, problem)
    if service_key is None:
        client.delete_registered_model_alias(name, alias)
    else:
        delete_alias_as_service(tracking_uri, name, alias, service_key)
    return AliasDecision("removed", name, alias, holder, None, problem)


def delete_alias_as_service(tracking_uri: str, name: str, alias: str, service_key: bytes) -> None:
    """MLflow's DeleteRegisteredModelAlias, sent once (a retry would reuse the nonce) with the service's
    signature over exactly these bytes."""
    import json

    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request, verify_rest_response

    from gate.service_auth import HEADER, sign_request

    from urllib.parse import urlsplit

    endpoint = "/api/2.0/mlflow/registered-models/alias"
    # the guard sees the full path: a server under a prefix (http://host/mlflow) gets /mlflow/api/...
    signed_path = urlsplit(tracking_uri).path.rstrip("/") + endpoint
    body = json.dumps({"name": name, "alias": alias}).encode()
    response = http_request(get_default_host_creds(tracking_uri), endpoint, "DELETE", max_retries=0, data=body,
                            extra_headers={"Content-Type": "application/json",
                                           HEADER: sign_request(service_key, "DELETE", signed_path, body)})
    verify_rest_response(response, endpoint)
