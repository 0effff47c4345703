"""The YAML policy: pydantic models built from the installed validators, and a loader that
reports every problem as ``FILE:LINE: where: what``."""

from __future__ import annotations

import dataclasses
import hashlib
import io
from pathlib import Path, PurePath
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, model_validator
from ruamel.yaml import YAML
from ruamel.yaml import events as yaml_events
from ruamel.yaml.error import YAMLError

from gate.errors import ConfigError
from gate.validators import ValidatorRegistry

API_VERSION = "gate/v1"
#: a policy is a few KiB of hand-written YAML; anything this large is an attack or a mistake
MAX_POLICY_BYTES = 256 * 1024
#: mappings and sequences nested deeper than this are refused (the default policy nests 6 deep)
MAX_POLICY_DEPTH = 32


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Metadata(Strict):
    name: str = Field(min_length=1, description="Policy name, recorded in every report")
    owner: str = Field(min_length=1, description="Who answers for this policy")
    description: str = ""
    # what a board reads on the compliance report (FDA's AI-enabled device guidance and EU AI Act Annex IV
    # ask for both); optional, because a research policy may have neither yet
    intended_use: str = Field("", max_length=4000, description="What the model is for: its population, images "
                                                               "and use, in plain words (compliance report)")
    limitations: list[Annotated[str, Field(max_length=1000)]] = Field(default_factory=list, max_length=64,
                                   description="Where it must not be trusted (compliance report), one per item")
    retention: str = Field("", max_length=2000, description="How long the reports and the validation run are kept, "
                                                            "and where (compliance report)")


#: a torch device as a policy names it (compute.device, candidate.device)
DEVICE_PATTERN = r"^(auto|cpu|cuda(:\d{1,2})?)$"


class CandidateSpec(Strict):
    n_samples: int = Field(64, ge=1, description="How many samples to draw from a registry generator")
    seed: int = Field(0, ge=0, description="Seed passed to the generator and to every validator")
    batch_size: int = Field(16, ge=1, description="Samples per generator call and per extractor batch")
    mode: Literal["auto", "unconditional", "conditional", "paired"] = Field(
        "auto", description="What the registry generator takes and returns: (n, seed) -> images; train label "
                            "maps -> images; or (n, seed) -> images with label maps. auto: the version's "
                            "gate.generator_mode tag (log_generator sets it), else unconditional")
    label_deformation_px: float = Field(
        4.0, ge=0, le=32, allow_inf_nan=False,
        description="conditional mode: smooth random displacement applied to each train label map first, so "
                    "that a faithful generator renders new anatomy rather than a training slice's (0: none)")
    timeout_s: float = Field(600, gt=0, le=86400, allow_inf_nan=False,
                             description="wall-clock limit for sampling the candidate (its process is killed after)")
    max_memory_mb: int = Field(4096, ge=256, le=1_048_576,
                               description="address-space limit of the sampling process, in MiB (on a GPU: "
                                           "its data segment, which does not count shared or pinned memory)")
    max_output_mb: int = Field(2048, ge=1, le=1_048_576,
                               description="the most array data the generator may return, all batches together, MiB")
    device: str = Field("cpu", pattern=DEVICE_PATTERN,
                        description="where the untrusted generator samples: cpu (default), auto (NVIDIA GPU 0 when "
                                    "there is one and gate's torch can use it, else the CPU), cuda or cuda:N "
                                    "(/dev/nvidiaN); on a GPU the sandbox shows it that GPU's device file, a "
                                    "read-only /sys, limits its data segment instead of its address space, and "
                                    "tells it params {device: cuda}; a GPU named but not usable is refused before "
                                    "anything runs")


class Preprocess(Strict):
    """How files become 2D samples on one grid. Absent: every file is taken as it is (2D images, NIfTI
    volumes split along their stored last axis) and all must share one size. Present: an image-reader
    plugin (gate-mri's, through MONAI) reads them as described here."""

    axis: Literal["axial", "coronal", "sagittal"] = Field(
        "axial", description="volumes are reoriented to RAS and sliced across this axis")
    spacing: float | None = Field(None, gt=0, le=100, allow_inf_nan=False,
                                  description="volumes are resampled to this isotropic spacing in mm first (null: "
                                              "each keeps its own); 2D files carry no spacing and are kept")
    size: tuple[int, int] | Literal["train"] | None = Field(
        "train", description="[H, W] every slice is padded or cropped to (centred, at its spacing); train: the "
                             "train set's largest slice; null: no padding, all slices must have one size")
    drop_empty: float = Field(0.05, ge=0, lt=1, allow_inf_nan=False,
                              description="a volume's slices whose foreground (over 10 % of the volume's 99.5th "
                                          "percentile) is under this fraction are dropped, counted and named "
                                          "(0: none); 2D files are never dropped")

    @model_validator(mode="after")
    def _sane_size(self):
        if isinstance(self.size, tuple) and not all(8 <= n <= 8192 for n in self.size):
            raise ValueError("size must be [H, W] with each between 8 and 8192")
        return self


class DataSpec(Strict):
    train: Path = Field(description="Folder of the generator's training images (memorization reference)")
    holdout: Path | None = Field(None, description="Folder of real images the generator never saw")
    preprocess: Preprocess | None = Field(None, description="read volumes and DICOM through MONAI onto one grid "
                                                             "(see Preprocess); absent: files as they are")
    allow_overrides: bool = Field(False, description="let --train/--holdout replace these folders in a signed "
                                                     "validation (they are recorded in the attestation either way)")


class RuleBase(Strict):
    lt: float | None = Field(None, allow_inf_nan=False)
    lte: float | None = Field(None, allow_inf_nan=False)
    gt: float | None = Field(None, allow_inf_nan=False)
    gte: float | None = Field(None, allow_inf_nan=False)
    severity: Literal["block", "warn"] = "block"
    pin: bool = Field(False, description="keep a block rule blocking even when the validator's self-test "
                                         "finds its metric insensitive on this data")
    guards: str | None = Field(None, min_length=1, max_length=64,
                               description="the failure this rule is meant to catch (for the quality check: a "
                                           "self-test perturbation or its kind, e.g. blur): the validator's "
                                           "self-test must show the metric sees it sample by sample, else the "
                                           "block rule is a warning (unless pinned)")
    regression_tolerance: float | None = Field(
        None, ge=0, allow_inf_nan=False,
        description="gate promote refuses to replace an alias holder that is better on this block rule's metric "
                    "by more than this, in the metric's units (null: not compared; a score, not a test's evidence)")

    @model_validator(mode="after")
    def _at_least_one_bound(self):
        if all(v is None for v in (self.lt, self.lte, self.gt, self.gte)):
            raise ValueError("a rule needs at least one of lt/lte/gt/gte")
        return self

    def bounds(self) -> dict[str, float]:
        return {k: v for k, v in (("gt", self.gt), ("gte", self.gte), ("lt", self.lt), ("lte", self.lte))
                if v is not None}

    def holds(self, value: float) -> bool:
        """NaN never holds: a metric that could not be computed fails closed."""
        if value != value:  # NaN
            return False
        ops = {"lt": value.__lt__, "lte": value.__le__, "gt": value.__gt__, "gte": value.__ge__}
        return all(ops[k](v) for k, v in self.bounds().items())

    def describe(self) -> str:
        sym = {"lt": "<", "lte": "<=", "gt": ">", "gte": ">="}
        return " and ".join(f"{sym[k]} {v:g}" for k, v in self.bounds().items())


class AttestationSpec(Strict):
    max_age_days: float | None = Field(None, gt=0, allow_inf_nan=False,
                                       description="gate verify --policy refuses attestations older than this")


class PromotionSpec(Strict):
    compare: bool = Field(True, description="gate promote refuses to replace an alias holder that scores better "
                                            "on a block rule with a regression_tolerance (unless "
                                            "--allow-regression)")


class ComputeSpec(Strict):
    device: str = Field("auto", pattern=DEVICE_PATTERN,
                        description="where the checks' networks run (feature extractors, segmentation back ends): "
                                    "auto (a CUDA GPU when there is one, else the CPU), cpu, cuda or cuda:N; a CUDA "
                                    "device that is not there is refused before anything runs")
    engine: Literal["local", "ray"] = Field(
        "local", description="where features are extracted and the reference searched: local (this process) or "
                             "ray (Ray Data actors on the cluster RAY_ADDRESS names, else one started here; needs "
                             "the gate-mri[ray] extra); --engine overrides it")
    workers: int = Field(2, ge=1, le=1024, description="engine: ray: extractor actors (each with a GPU when the "
                                                       "cluster has them) and search shards")


class ReportSpec(Strict):
    patient_images: Literal["show", "blur", "withhold"] = Field(
        "show", description="figures that show real (train or holdout) images, such as a flagged sample beside its "
                            "nearest train image: show them, blur them, or withhold them (for reports that leave "
                            "the institution); the candidate's own samples are shown either way")


class SpecBase(Strict):
    mode: Literal["enforce", "audit"] = Field("enforce", description="audit records everything, never blocks")
    candidate: CandidateSpec = CandidateSpec()
    data: DataSpec
    attestation: AttestationSpec = AttestationSpec()
    promotion: PromotionSpec = PromotionSpec()
    report: ReportSpec = ReportSpec()
    compute: ComputeSpec = ComputeSpec()


class PolicyBase(Strict):
    apiVersion: Literal["gate/v1"]
    kind: Literal["ValidationPolicy"]
    metadata: Metadata


def build_policy_model(registry: ValidatorRegistry) -> type[PolicyBase]:
    """One ``Check`` variant per installed validator, so params and metric names are typed."""
    variants = []
    for name, loaded in sorted(registry.validators.items()):
        cls = loaded.cls
        metric_names = tuple(m.name for m in cls.metrics)
        rule = create_model(
            f"Rule_{name}", __base__=RuleBase,
            metric=(Literal[metric_names], Field(description="a metric that this validator produces")),
        )
        variants.append(create_model(
            f"Check_{name}", __base__=Strict,
            id=(str, Field(pattern=r"^[a-z][a-z0-9_.-]*$", description="unique id of this check")),
            validator=(Literal[name], ...),
            params=(cls.Params, Field(default_factory=cls.Params)),
            rules=(list[rule], Field(default_factory=list)),
        ))
    if not variants:
        raise ConfigError("no validator is installed in the 'gate.validators' entry-point group")
    check = Annotated[Union[tuple(variants)], Field(discriminator="validator")]

    class _Spec(SpecBase):
        checks: list[check] = Field(min_length=1)  # type: ignore[valid-type]

        @model_validator(mode="after")
        def _unique_ids(self):
            ids = [c.id for c in self.checks]
            dupes = sorted({i for i in ids if ids.count(i) > 1})
            if dupes:
                raise ValueError(f"duplicate check ids: {', '.join(dupes)}")
            return self

    _Spec.__name__ = "Spec"
    return create_model("Policy", __base__=PolicyBase, spec=(_Spec, ...))


@dataclasses.dataclass(frozen=True)
class LoadedPolicy:
    model: Any  # an instance of the class from build_policy_model
    path: Path
    text: str
    rule_lines: dict[tuple[int, int], int | None] = dataclasses.field(default_factory=dict)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()


def _line_of(doc: Any, loc: tuple) -> int | None:
    """Walk ruamel's round-trip tree along a pydantic error location; the deepest line found wins."""
    node, line = doc, None
    for part in loc:
        lc = getattr(node, "lc", None)
        try:
            if isinstance(part, int) and isinstance(node, list):
                if lc is not None:
                    line = lc.item(part)[0] + 1
                node = node[part]
            elif isinstance(node, dict) and part in node:
                if lc is not None:
                    line = lc.key(part)[0] + 1
                node = node[part]
            # anything else is a union tag that pydantic inserted: stay on this node
        except (KeyError, IndexError, TypeError):
            break
    if line is None and getattr(doc, "lc", None) is not None:
        line = doc.lc.line + 1
    return line


def _loc_path(loc: tuple, doc: Any) -> tuple:
    """Drop the discriminator tags pydantic adds (``checks.0.memorization.params``)."""
    out, node = [], doc
    for part in loc:
        if isinstance(node, list) and isinstance(part, int) and part < len(node):
            out.append(part); node = node[part]
        elif isinstance(node, dict) and part in node:
            out.append(part); node = node[part]
        elif isinstance(node, dict) and isinstance(part, str) and part not in node and "validator" in node \
                and node.get("validator") == part:
            continue
        else:
            out.append(part); node = None
    return tuple(out)


def _read_bounded(path: Path) -> str:
    """The policy's text, refused by its size before it is read (and while it is read: a FIFO or a file
    that grows has no honest size)."""
    try:
        size = path.stat().st_size
        if size > MAX_POLICY_BYTES:
            raise ConfigError(f"{path}: policy file is {size} bytes, over the limit of {MAX_POLICY_BYTES}")
        # text mode keeps the newline translation the policy digest has always been computed over
        with open(path, encoding="utf-8") as f:
            text = f.read(MAX_POLICY_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read policy: {exc.strerror or exc}") from exc
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: policy is not UTF-8 text") from None
    if len(text) > MAX_POLICY_BYTES:
        raise ConfigError(f"{path}: policy file is over the limit of {MAX_POLICY_BYTES} bytes")
    return text


def _refuse_expansion(path: Path, text: str) -> None:
    """Scan the event stream, which never composes nodes, so that nothing is expanded: an anchor or an
    alias (a billion-laughs policy expands 831 bytes past 3 GB on composition) or a nesting deeper than
    :data:`MAX_POLICY_DEPTH` is refused at its line. Stopping at the first offence also bounds the
    scanner, whose look-ahead over deep flow nesting is otherwise quadratic."""
    depth = 0
    for event in YAML(typ="rt").parse(io.StringIO(text)):
        line = event.start_mark.line + 1
        if isinstance(event, yaml_events.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise ConfigError(f"{path}:{line}: YAML anchors and aliases are not allowed in a policy")
        if isinstance(event, (yaml_events.MappingStartEvent, yaml_events.SequenceStartEvent)):
            depth += 1
            if depth > MAX_POLICY_DEPTH:
                raise ConfigError(f"{path}:{line}: policy nests deeper than the limit of {MAX_POLICY_DEPTH}")
        elif isinstance(event, (yaml_events.MappingEndEvent, yaml_events.SequenceEndEvent)):
            depth -= 1


def load_policy(path: Path, registry: ValidatorRegistry) -> LoadedPolicy:
    path = Path(path)
    text = _read_bounded(path)
    try:
        _refuse_expansion(path, text)
        doc = YAML(typ="rt").load(io.StringIO(text))
    except YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(f"{where}: not valid YAML: {getattr(exc, 'problem', exc)}") from exc
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}:1: a policy is a YAML mapping with apiVersion, kind, metadata, spec")

    # Name the validator problem before pydantic turns it into a bare union-tag error.
    checks = (doc.get("spec") or {}).get("checks") if isinstance(doc.get("spec"), dict) else None
    for i, check in enumerate(checks if isinstance(checks, list) else []):
        name = check.get("validator") if isinstance(check, dict) else None
        if isinstance(name, str) and name not in registry.validators:
            line = _line_of(doc, ("spec", "checks", i, "validator"))
            try:
                registry.get(name)
            except ConfigError as exc:
                raise ConfigError(f"{path}:{line}: spec.checks.{i}.validator: {exc}") from None

    model_cls = build_policy_model(registry)
    try:
        model = model_cls.model_validate(_plain(doc))
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = _loc_path(tuple(err["loc"]), doc)
            where = ".".join(str(p) for p in loc) or "(top)"
            lines.append(f"{path}:{_line_of(doc, loc)}: {where}: {err['msg']}")
        raise ConfigError("\n".join(lines)) from None
    rule_lines = {(i, j): _line_of(doc, ("spec", "checks", i, "rules", j))
                  for i, check in enumerate(model.spec.checks) for j in range(len(check.rules))}
    model = anchor_paths(model, path.absolute().parent)  # a symlinked policy: the link's folder
    return LoadedPolicy(model=model, path=path, text=text, rule_lines=rule_lines)


def anchor_paths(value: Any, base: Path) -> Any:
    """Every relative path in a validated policy (data folders, validators' weight files), resolved
    against the policy file's folder, as a compose file or a Makefile resolves its paths: a policy then
    means the same from any working directory. Only ``Path``-typed values move; strings stay strings."""
    if isinstance(value, BaseModel):
        return value.model_copy(update={k: anchor_paths(getattr(value, k), base) for k in type(value).model_fields})
    if isinstance(value, PurePath):
        try:
            value = Path(value).expanduser()
        except RuntimeError:  # ~nosuchuser: a policy error, never a crash
            raise ConfigError(f"{value}: names a home folder that does not exist") from None
        return value if value.is_absolute() else base / value
    if isinstance(value, dict):
        return {k: anchor_paths(v, base) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(anchor_paths(v, base) for v in value)
    return value


def _plain(node: Any) -> Any:
    """ruamel's commented containers and scalar subclasses as plain Python values."""
    if isinstance(node, dict):
        return {str(k): _plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_plain(v) for v in node]
    if isinstance(node, bool) or node is None:
        return node
    if isinstance(node, int):
        return int(node)
    if isinstance(node, float):
        return float(node)
    if isinstance(node, str):
        return str(node)
    return node


def policy_json_schema(registry: ValidatorRegistry) -> dict:
    schema = build_policy_model(registry).model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "gate ValidationPolicy (gate/v1)"
    return schema
