"""The validator contract and its discovery through the ``gate.validators`` entry-point group.

A validator is a class with:

- ``name``: the id a policy uses in ``validator:``;
- ``Params``: a pydantic model of its ``params`` (``extra="forbid"``; every field has a default);
- ``metrics``: the set-level metrics it produces, each a :class:`MetricDef` saying how the value is
  derived from the per-sample table, so that rules can be checked over that table independently;
- ``columns``: the columns of its per-sample table (``sample_id`` first);
- ``run(context, params) -> CheckOutput``;
- optionally ``preflight(plan, params) -> list[str]``: the problems that the policy, the real sets as
  read and the sampling plan already show (missing labels, too small a holdout, shapes), one line each,
  so that gate reports them all in seconds, before any model runs. ``run`` still checks what it needs;
- optionally ``blind_spots``: what the check cannot see, one sentence each (the compliance report lists
  them, so that a pass is not read as more than it is), and ``advice``: metric name (or ``"*"``) -> what
  to do when a block rule on it fails, in plain words.

Raising inside ``run`` means "not validated": the check is recorded as an error and the verdict blocks.
Raise :class:`gate.errors.InputError` for bad input so that the message names the input.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import math
from pathlib import Path
from typing import Any, Callable, ClassVar, Literal, Protocol, runtime_checkable

import numpy as np
import pandas as pd
from pydantic import BaseModel

from gate.errors import ConfigError
from gate.imageset import ImageSet

ENTRY_POINT_GROUP = "gate.validators"

Aggregate = Literal["mean", "max", "min", "sum", "scalar"]


@dataclasses.dataclass(frozen=True)
class MetricDef:
    """A set-level metric: ``aggregate`` of ``column`` over the per-sample table, or, with
    ``aggregate="scalar"``, a value the validator computes over the whole set (``CheckOutput.scalars``,
    keyed by the metric's name; ``column`` is then ``None``)."""

    name: str
    column: str | None
    aggregate: Aggregate
    description: str

    def compute(self, table: pd.DataFrame, scalars: dict[str, float] | None = None) -> float:
        if self.aggregate == "scalar":
            value = (scalars or {}).get(self.name)
            return float(value) if value is not None and np.isfinite(value) else math.nan
        values = pd.to_numeric(table[self.column], errors="coerce").to_numpy(dtype=float)
        if values.size == 0 or not np.isfinite(values).all():
            return math.nan  # a rule over a NaN never passes
        return float(getattr(np, self.aggregate)(values))


@dataclasses.dataclass(frozen=True)
class Plan:
    """What is known before any model runs or any feature is computed: the real sets as read (sizes,
    labels, ids), how many candidates will be checked, and whether they will carry labels."""

    train: ImageSet
    holdout: ImageSet | None
    n_candidates: int
    candidate_labelled: bool
    candidate_shape: tuple[int, ...] | None = None  # None: drawn from a generator, held to the train's
    device: str = "auto"  # spec.compute.device, for a validator to say before anything runs that it is not there
    engine: str = "local"  # spec.compute.engine (or --engine), likewise


@dataclasses.dataclass(frozen=True)
class Figure:
    """A PNG the validator wants in the reports. ``shows_real_images``: it shows train or holdout images
    (patients' scans), which a policy may have blurred or withheld (spec.report.patient_images)."""

    title: str
    png: bytes
    caption: str = ""
    shows_real_images: bool = False


@dataclasses.dataclass
class CheckContext:
    """What a validator gets to look at. All image sets are float32 [n, H, W]."""

    candidate: ImageSet
    train: ImageSet
    holdout: ImageSet | None
    seed: int
    batch_size: int
    cache_dir: Path
    progress: Callable[[str, int], Callable[[int], None]] = lambda _desc, _total: (lambda _n: None)
    #: spec.compute.device: "auto", "cpu", "cuda" or "cuda:N" (a plugin resolves it with its own stack)
    device: str = "auto"
    #: spec.compute.engine (or --engine): "local" or "ray", and the Ray engine's actors
    engine: str = "local"
    workers: int = 2


@dataclasses.dataclass
class CheckOutput:
    """``table`` holds one row per candidate sample with the validator's declared ``columns``."""

    table: pd.DataFrame
    scalars: dict[str, float] = dataclasses.field(default_factory=dict)
    provenance: dict[str, Any] = dataclasses.field(default_factory=dict)
    diagnostics: dict[str, Any] = dataclasses.field(default_factory=dict)
    figures: list[Figure] = dataclasses.field(default_factory=list)
    #: set when the validator ran but cannot vouch for its result (e.g. a failed self-check): the
    #: metrics are kept in the report, and the check counts as an error, so it blocks
    error: str | None = None
    #: set when the validator cannot vouch for a *pass* at these sizes or on this data (e.g. its
    #: self-check failed): the check is an error, unless one of its block rules fails anyway, in which
    #: case it fails on that evidence (a plain copier is refused as one) and the reason is kept
    cannot_vouch: str | None = None
    #: metrics the validator's own self-test found insensitive on this data, with the reason: their
    #: block rules are reported as warnings unless the policy pins them
    insensitive: dict[str, str] = dataclasses.field(default_factory=dict)
    #: per metric, every failure family its self-test made (named by the validator): None where the metric
    #: saw it sample by sample, else why not; a block rule that ``guards`` an unseen (or unknown) family is
    #: reported as a warning unless pinned
    insensitive_to: dict[str, dict[str, str | None]] = dataclasses.field(default_factory=dict)


@runtime_checkable
class Validator(Protocol):
    name: ClassVar[str]
    Params: ClassVar[type[BaseModel]]
    metrics: ClassVar[tuple[MetricDef, ...]]
    columns: ClassVar[tuple[str, ...]]

    def run(self, context: CheckContext, params: BaseModel) -> CheckOutput: ...


@dataclasses.dataclass(frozen=True)
class LoadedValidator:
    name: str
    cls: type
    distribution: str
    version: str


@dataclasses.dataclass(frozen=True)
class ValidatorRegistry:
    """What the installed entry points offer: the validators that loaded and the ones that did not."""

    validators: dict[str, LoadedValidator]
    failures: dict[str, str]

    def get(self, name: str) -> LoadedValidator:
        if name in self.validators:
            return self.validators[name]
        if name in self.failures:
            raise ConfigError(f"validator '{name}' failed to load: {self.failures[name]}")
        known = ", ".join(sorted(self.validators)) or "none"
        raise ConfigError(f"validator '{name}' is not installed (installed: {known})")


def check_validator_class(cls: type) -> None:
    """Raise ``TypeError`` naming what a validator class lacks."""
    missing = [a for a in ("name", "Params", "metrics", "columns", "run") if not hasattr(cls, a)]
    if missing:
        raise TypeError(f"{cls.__module__}.{cls.__qualname__} lacks {', '.join(missing)}")
    if not (isinstance(cls.Params, type) and issubclass(cls.Params, BaseModel)):
        raise TypeError(f"{cls.__qualname__}.Params is not a pydantic model")
    unknown = [m.column for m in cls.metrics if m.aggregate != "scalar" and m.column not in cls.columns]
    if unknown:
        raise TypeError(f"{cls.__qualname__} derives metrics from undeclared columns {unknown}")
    if not cls.columns or cls.columns[0] != "sample_id":
        raise TypeError(f"{cls.__qualname__}.columns must start with 'sample_id'")


def discover(group: str = ENTRY_POINT_GROUP) -> ValidatorRegistry:
    """Load every entry point of ``group``; a broken one is remembered with its cause, not skipped."""
    loaded: dict[str, LoadedValidator] = {}
    failures: dict[str, str] = {}
    for ep in importlib.metadata.entry_points(group=group):
        dist = ep.dist.name if ep.dist else "?"
        try:
            cls = ep.load()
            check_validator_class(cls)
            if cls.name != ep.name:
                raise TypeError(f"entry point '{ep.name}' loads a validator named '{cls.name}'")
        except ModuleNotFoundError as exc:
            failures[ep.name] = f"{ep.value} (from {dist}): ModuleNotFoundError: it needs {exc.name!r}, which is " \
                                f"not installed{extras_hint(ep.dist, exc.name)}"
            continue
        except Exception as exc:  # noqa: BLE001 - any import failure is reported, never hidden
            failures[ep.name] = f"{ep.value} (from {dist}): {type(exc).__name__}: {exc}"
            continue
        loaded[ep.name] = LoadedValidator(ep.name, cls, dist, ep.dist.version if ep.dist else "?")
    return ValidatorRegistry(loaded, failures)


def extras_hint(dist: importlib.metadata.Distribution | None, module: str | None) -> str:
    """How to get a missing module: the extra of ``dist`` whose requirements provide it (the core
    installs light, so a validator whose stack is an extra is the usual cause), or "" when no extra
    does (then it is not a missing extra, and the caller treats it as what it is)."""
    import re

    if dist is None or not module:
        return ""
    top = re.sub(r"[-_.]", "", module.split(".")[0].lower())
    for requirement in dist.requires or []:
        name, _, marker = requirement.partition(";")
        extra = re.search(r"""extra\s*==\s*["']([^"']+)["']""", marker)
        project = re.sub(r"[-_.]", "", re.split(r"[\s\[<>=!~;(]", name.strip(), maxsplit=1)[0].lower())
        if extra and project.startswith(top):
            return f": install it with pip install '{dist.name}[{extra.group(1)}]'"
    return ""
