"""The generator contract: what gate expects of an MLflow pyfunc that makes images.

Three modes (the policy's ``spec.candidate.mode`` says which one to expect):

- ``unconditional``: ``predict`` takes a one-row table with integer columns ``n`` and ``seed`` and
  returns ``n`` float images in [0, 1] shaped ``[n, H, W]`` or ``[n, 1, H, W]``
  (subclass :class:`ImageGenerator`).
- ``paired``: the same input; returns ``[n, 2, H, W]``: channel 0 the image in [0, 1], channel 1 its
  label map (class indices stored as floats) (subclass :class:`PairedImageGenerator`).
- ``conditional``: ``predict`` takes ``{"labels": int64 [n, H, W], "seed": int64 [1]}`` and returns one
  image per label map, ``[n, H, W]`` (subclass :class:`ConditionalImageGenerator`); gate feeds it label
  maps of the train set, never of the holdout.

The same input must give the same output. Register a generator with :func:`log_generator`.

Where to sample: gate passes ``params={"device": "cuda"}`` when the policy's ``spec.candidate.device`` gives
the sampler a GPU (logged generators declare that parameter, default ``cpu``); the base classes set
``self.device`` from it before each ``generate`` call, so a torch generator moves its network and tensors to
``self.device``. Nothing is passed on the CPU, so a generator that ignores it is unchanged there.
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd

from gate.errors import InputError
from gate.imageio import check_image, is_label_map
from gate.imageset import ImageSet

#: how far outside [0, 1] an output may stray (float rounding) before it is refused
RANGE_TOLERANCE = 1e-4


def asked_device(params: dict[str, Any] | None) -> str:
    """The device a predict call's params ask for: ``cuda`` or ``cpu`` (the default)."""
    return "cuda" if (params or {}).get("device") == "cuda" else "cpu"


class ImageGenerator(mlflow.pyfunc.PythonModel):
    """Base class for generators following gate's contract."""

    #: where ``generate`` should compute: set from the call's params before each call
    device: str = "cpu"

    def generate(self, n: int, seed: int) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None):
        self.device = asked_device(params)
        rows = model_input.to_dict("records") if isinstance(model_input, pd.DataFrame) else list(model_input)
        out = [np.asarray(self.generate(int(r["n"]), int(r["seed"])), dtype=np.float32) for r in rows]
        return np.concatenate(out) if out else np.zeros((0, 1, 1), np.float32)


class PairedImageGenerator(mlflow.pyfunc.PythonModel):
    """Base class for generators that return each image with its label map."""

    device: str = "cpu"

    def generate(self, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover - abstract
        raise NotImplementedError

    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None):
        self.device = asked_device(params)
        rows = model_input.to_dict("records") if isinstance(model_input, pd.DataFrame) else list(model_input)
        out = []
        for r in rows:
            images, labels = self.generate(int(r["n"]), int(r["seed"]))
            out.append(np.stack([np.asarray(images, np.float32), np.asarray(labels, np.float32)], axis=1))
        return np.concatenate(out) if out else np.zeros((0, 2, 1, 1), np.float32)


class ConditionalImageGenerator(mlflow.pyfunc.PythonModel):
    """Base class for generators that render an image for each given label map."""

    device: str = "cpu"

    def generate(self, labels: np.ndarray, seed: int) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def predict(self, context, model_input, params=None):  # a dict of arrays; MLflow rejects a `dict` hint
        self.device = asked_device(params)
        labels = np.asarray(model_input["labels"])
        seed = int(np.asarray(model_input["seed"]).ravel()[0])
        return np.asarray(self.generate(labels, seed), dtype=np.float32)


def declares_device(model_dir: Path) -> bool:
    """Whether a downloaded version's signature declares the ``device`` parameter (:func:`log_generator`'s
    do; versions logged before it do not, and MLflow would drop the param with a warning). The file is the
    candidate's: read only when small, and any failure to read it means "not declared"."""
    from mlflow.models import Model

    mlmodel = Path(model_dir) / "MLmodel"
    try:
        if mlmodel.stat().st_size > 1 << 20:
            return False
        params = Model.load(str(mlmodel)).signature.params
    except Exception:  # noqa: BLE001 - no signature, no params, unreadable: not told, the GPU is still shown
        return False
    return params is not None and any(p.name == "device" for p in params.params)


def generator_mode(generator: mlflow.pyfunc.PythonModel) -> str:
    if isinstance(generator, ConditionalImageGenerator):
        return "conditional"
    if isinstance(generator, PairedImageGenerator):
        return "paired"
    return "unconditional"


def log_generator(
    generator: ImageGenerator,
    registered_model_name: str,
    *,
    tracking_uri: str,
    artifacts: dict[str, str] | None = None,
    experiment: str = "generators",
    example_shape: tuple[int, int] = (128, 128),
    pip_requirements: list[str] | None = None,
    tags: dict[str, str] | None = None,
    code_paths: list[str] | None = None,
):
    """Log ``generator`` as a pyfunc with the contract's signature and register a new version of it.
    The sampler sees only installed packages and the model's own files: give the local modules the
    generator imports as ``code_paths`` (its own module is pickled by value when not installed).

    Returns the :class:`mlflow.entities.model_registry.ModelVersion`.
    """
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema, TensorSpec

    client = mlflow.MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    mode = generator_mode(generator)
    if mode == "conditional":
        inputs = Schema([TensorSpec(np.dtype(np.int64), (-1, *example_shape), "labels"),
                         TensorSpec(np.dtype(np.int64), (-1,), "seed")])
    else:
        inputs = Schema([ColSpec("long", "n"), ColSpec("long", "seed")])
    out_shape = (-1, 2, *example_shape) if mode == "paired" else (-1, *example_shape)
    signature = ModelSignature(inputs=inputs, outputs=Schema([TensorSpec(np.dtype(np.float32), out_shape)]),
                               params=ParamSchema([ParamSpec("device", "string", "cpu")]))
    tags = {**(tags or {}), "gate.generator_mode": mode}
    from gate.recording import validation_experiment_id

    exp_id = validation_experiment_id(client, tracking_uri, experiment)  # artifacts beside an embedded store
    run = client.create_run(exp_id, run_name=f"log-{registered_model_name}")
    run_id = run.info.run_id
    try:
        with tempfile.TemporaryDirectory(prefix="gate-log-") as tmp, warnings.catch_warnings(), \
                _pickled_by_value(type(generator)):
            # the signature already states the contract; an input example would run the generator at log time
            warnings.filterwarnings("ignore", message=".*input example was not provided.*")
            path = Path(tmp) / "generator"
            # save locally, then upload through the client: no process-wide tracking URI is ever set
            mlflow.pyfunc.save_model(path, python_model=generator, artifacts=artifacts, signature=signature,
                                     pip_requirements=pip_requirements or ["numpy", "pandas"], code_paths=code_paths)
            client.log_artifacts(run_id, str(path), artifact_path="generator")
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id)
    try:
        client.create_registered_model(registered_model_name)
    except mlflow.exceptions.MlflowException as exc:
        if "RESOURCE_ALREADY_EXISTS" not in str(exc.error_code):
            raise
    mv = client.create_model_version(registered_model_name, f"{run.info.artifact_uri}/generator", run_id=run_id,
                                     tags=tags)
    return client.get_model_version(registered_model_name, mv.version), run_id


@contextlib.contextmanager
def _pickled_by_value(cls: type):
    """Pickle the generator's class by value when its module is one the sampler cannot import (a script,
    a test module, a notebook): the sandbox sees only the installed packages, never the folder the
    generator was written in. Installed classes stay pickled by reference. cloudpickle keeps this
    choice in a registry of its own, so it is undone on the way out."""
    import cloudpickle

    from gate.sandbox import python_roots

    module = sys.modules.get(cls.__module__)
    source = getattr(module, "__file__", None)
    importable = source is not None and any(Path(source).resolve().is_relative_to(r) for r in python_roots())
    if module is None or importable or cls.__module__ == "__main__":
        yield
        return
    cloudpickle.register_pickle_by_value(module)
    try:
        yield
    finally:
        cloudpickle.unregister_pickle_by_value(module)


def sample_generator(model, n: int, seed: int, batch_size: int, progress=lambda _n: None, *,
                     mode: str = "unconditional", condition_labels: np.ndarray | None = None,
                     device: str = "cpu") -> ImageSet:
    """Draw ``n`` samples *in this process* from a trusted generator object (tests, plugins' own
    benchmarks) in batches of ``batch_size`` (batch ``b`` uses seed ``seed + b``) on ``device`` (cpu or
    cuda) and check them. A registry candidate is never sampled this way:
    :func:`gate.sandbox.sample_in_sandbox` runs it."""
    plan = _plan(mode, n, seed, batch_size, condition_labels, device)
    raw = []
    for b, start, k in plan.spans():
        try:
            raw.append(draw_batch(model, plan, b, start, k, condition_labels))
        except Exception as exc:  # noqa: BLE001
            raise InputError(f"generator failed on batch {b} (n={k}, seed={seed + b}): "
                             f"{type(exc).__name__}: {exc}") from None
        progress(k)
    return assemble_samples(raw, plan, condition_labels)


def draw_batch(model, plan, b: int, start: int, k: int, condition_labels: np.ndarray | None = None) -> Any:
    """One call of the contract: batch ``b`` (``k`` samples, seed ``plan.seed + b``); a conditional
    generator gets the ``k`` label maps from ``start``. The sandbox's sampler makes the same call. The
    device goes as a param only off the CPU: on the CPU the call is what it always was."""
    if plan.mode == "conditional":
        given = np.ascontiguousarray(condition_labels[start:start + k], dtype=np.int64)
        data = {"labels": given, "seed": np.array([plan.seed + b], dtype=np.int64)}
    else:
        data = pd.DataFrame({"n": [k], "seed": [plan.seed + b]})
    if plan.device == "cpu":
        return model.predict(data)
    return model.predict(data, params={"device": plan.device})


def _plan(mode: str, n: int, seed: int, batch_size: int, condition_labels: np.ndarray | None, device: str = "cpu"):
    from gate.sandbox import SamplingPlan

    if mode == "conditional" and (condition_labels is None or len(condition_labels) != n):
        raise InputError("conditional sampling needs one label map per sample")
    if device not in ("cpu", "cuda"):
        raise InputError(f"sampling device {device[:40]!r}: cpu or cuda")
    return SamplingPlan(mode, n, seed, batch_size, device)


def assemble_samples(raw_batches: list[Any], plan, condition_labels: np.ndarray | None = None) -> ImageSet:
    """Check each batch the generator returned against the contract (shape, dtype, count, range,
    finiteness, label maps) and join them into the candidate set. This is the trusted side's entry
    check: whatever the sandbox sent back is judged here."""
    if len(raw_batches) != plan.batches:
        raise InputError(f"the generator answered {len(raw_batches)} of {plan.batches} batches")
    batches, label_batches = [], []
    for (b, start, k), out in zip(plan.spans(), raw_batches):
        label = f"generator batch {b}"
        if plan.mode == "paired":
            images, labels = split_paired_output(out, k, label)
            label_batches.append(labels)
        else:
            images = check_generator_output(out, k, label=label)
            if plan.mode == "conditional":
                given = np.asarray(condition_labels[start:start + k], dtype=np.int64)
                if images.shape[1:] != given.shape[1:]:
                    raise InputError(f"{label}: images are {images.shape[1:]} but the label maps given are "
                                     f"{given.shape[1:]}")
                label_batches.append(given)
        batches.append(images)
    images = np.concatenate(batches)
    ids = tuple(f"sample_{i:05d}" for i in range(plan.n))
    labels = np.concatenate(label_batches) if label_batches else None
    return ImageSet(name="candidate", ids=ids, images=images, labels=labels)


def split_paired_output(out: Any, n: int, label: str) -> tuple[np.ndarray, np.ndarray]:
    arr = np.asarray(out)
    if arr.ndim != 4 or arr.shape[1] != 2:
        raise InputError(f"{label}: a paired generator returns [n, 2, H, W] (image, label map), got {arr.shape}")
    images = check_generator_output(arr[:, 0], n, label)
    if not is_label_map(arr[:, 1]):
        raise InputError(f"{label}: channel 1 must hold label maps of non-negative integers")
    return images, arr[:, 1].astype(np.int64)


def check_generator_output(out: Any, n: int, label: str) -> np.ndarray:
    arr = np.asarray(out)
    if not np.issubdtype(arr.dtype, np.floating):
        raise InputError(f"{label}: expected float images, got dtype {arr.dtype}")
    if arr.ndim == 4 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 3:
        raise InputError(f"{label}: expected shape [n, H, W] or [n, 1, H, W], got {arr.shape}")
    if arr.shape[0] != n:
        raise InputError(f"{label}: asked for {n} images, got {arr.shape[0]}")
    for i, img in enumerate(arr):
        check_image(img, f"{label} image {i}")
    lo, hi = float(arr.min()), float(arr.max())
    if lo < -RANGE_TOLERANCE or hi > 1 + RANGE_TOLERANCE:
        raise InputError(f"{label}: values must lie in [0, 1], found [{lo:.4g}, {hi:.4g}]")
    return np.clip(arr, 0.0, 1.0).astype(np.float32)
