"""Putting a protected alias back when it lands on a version without a valid passing attestation, for
MLflow servers that run without the ``gate-guard`` plugin.

Webhooks fire after the write, so this narrows the window (an unapproved ``@champion`` resolves for
about a second) rather than closing it: the guard plugin closes it. The check reads the alias's holder
*now*, not the version in the delivery, so late or reordered deliveries cannot undo a later, valid
promotion; the service's own revert fires another ``alias.created`` whose check then passes, so it
cannot loop.
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


def attestation_problem(tracking_uri: str, public_key, max_age: dt.timedelta | None, name: str,
                        version: str) -> str | None:
    """None when the version carries a valid *passing* attestation whose artifacts and report still
    match; otherwise why not (the full ``gate verify`` check, artifacts re-hashed)."""
    from gate.attest import verify_model_version
    from gate.errors import GateError

    try:
        ref = resolve_model(f"models:/{name}/{version}", tracking_uri)
        statement = verify_model_version(ref, tracking_uri, public_key, max_age)
    except (AttestationError, GateError) as exc:
        return str(exc)
    return verdict_problem(statement)


def reconcile_alias(tracking_uri: str, name: str, alias: str, problem_of: Callable[[str, str], str | None],
                    approved_holder: str | None) -> AliasDecision:
    """Judge the alias's current holder; move the alias back to ``approved_holder`` (the last holder
    this service allowed) when that one is still valid, else delete the alias."""
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
    client.delete_registered_model_alias(name, alias)
    return AliasDecision("removed", name, alias, holder, None, problem)
