"""gate: a validation gate for generative models kept in an MLflow registry.

Python API: :func:`validate` and :func:`promote` (the CLI's ``gate validate`` and ``gate promote``).
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("gate-mri")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"


def validate(policy, *, model: str | None = None, samples=None, tracking_uri: str | None = None,
             out="gate-report", train=None, holdout=None, signing_key=None, progress=None,
             against: str | None = None):
    """Validate a candidate (``model="models:/NAME/VERSION"`` or a ``samples`` folder) against a policy
    file and write the reports to ``out``; returns :class:`gate.workflow.Result` (``.report`` is the
    :class:`gate.report.Report`, ``.exit_code`` what the CLI would exit with). Bad input raises
    :class:`gate.errors.GateError` (its ``exit_code`` is 2); a validator that fails is a report with
    verdict ``error``, never an exception. ``progress(description, total)`` returns ``tick(n)``. ``against``
    (``"@champion"`` or a version number) puts the comparison with that version's last passing validation
    in the report (``report.comparison``)."""
    return _workflow_validate(policy, out, model=model, samples=samples, tracking_uri=tracking_uri, train=train,
                              holdout=holdout, signing_key=signing_key, progress=progress, against=against)


def promote(model: str, *, policy, alias: str = "champion", tracking_uri: str | None = None, out="gate-report",
            train=None, holdout=None, signing_key=None, progress=None, allow_regression: bool = False,
            against: str | None = None):
    """Validate ``model``, then point ``alias`` at it only on a pass and when the version holding it does
    not score better on a block rule (unless ``allow_regression``); ``Result.promoted`` says whether it
    moved, ``Result.replaced`` which version held the alias before, ``Result.regressions`` why not;
    ``report.comparison`` holds every metric beside the alias holder's (or ``against``'s)."""
    return _workflow_validate(policy, out, model=model, tracking_uri=tracking_uri, train=train, holdout=holdout,
                              signing_key=signing_key, promote_alias=alias, progress=progress,
                              allow_regression=allow_regression, against=against)


def _workflow_validate(policy, out, *, progress=None, **fields):
    # imported here: `import gate` (and the guard inside an MLflow server) stays light
    from pathlib import Path

    from gate.workflow import Request
    from gate.workflow import validate as run_validation

    paths = {k: Path(v) if v is not None and k in ("samples", "train", "holdout", "signing_key") else v
             for k, v in fields.items()}
    request = Request(Path(policy), Path(out), **paths)

    def warn(message: str) -> None:  # what the CLI prints as "gate: warning:" (no isolation, for one)
        import warnings

        warnings.warn(message, RuntimeWarning, stacklevel=4)

    return run_validation(request, progress or (lambda _d, _t: (lambda _n: None)), warn=warn)
