"""The generator contract: what gate expects of an MLflow pyfunc that makes images.

A generator is an MLflow pyfunc whose ``predict`` takes a one-row table with integer columns ``n`` and
``seed`` and returns ``n`` float images in [0, 1] shaped ``[n, H, W]`` or ``[n, 1, H, W]``. The same
``(n, seed)`` must give the same images. Subclass :class:`ImageGenerator`, implement ``generate``, and
register it with :func:`log_generator`.
"""

from __future__ import annotations

import warnings
from typing import Any

import mlflow
import numpy as np
import pandas as pd

from gate.errors import InputError
from gate.imageio import check_image
from gate.imageset import ImageSet

#: how far outside [0, 1] an output may stray (float rounding) before it is refused
RANGE_TOLERANCE = 1e-4


class ImageGenerator(mlflow.pyfunc.PythonModel):
    """Base class for generators following gate's contract."""

    def generate(self, n: int, seed: int) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None):
        rows = model_input.to_dict("records") if isinstance(model_input, pd.DataFrame) else list(model_input)
        out = [np.asarray(self.generate(int(r["n"]), int(r["seed"])), dtype=np.float32) for r in rows]
        return np.concatenate(out) if out else np.zeros((0, 1, 1), np.float32)


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
):
    """Log ``generator`` as a pyfunc with the contract's signature and register a new version of it.

    Returns the :class:`mlflow.entities.model_registry.ModelVersion`.
    """
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema, TensorSpec

    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    signature = ModelSignature(
        inputs=Schema([ColSpec("long", "n"), ColSpec("long", "seed")]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, *example_shape))]),
    )
    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp else client.create_experiment(experiment)
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(tracking_uri)  # log_model has no client argument
    try:
        with mlflow.start_run(experiment_id=exp_id, run_name=f"log-{registered_model_name}") as run, \
                warnings.catch_warnings():
            # the signature already states the contract; an input example would run the generator at log time
            warnings.filterwarnings("ignore", message=".*input example was not provided.*")
            info = mlflow.pyfunc.log_model(
                name="generator", python_model=generator, artifacts=artifacts, signature=signature,
                pip_requirements=pip_requirements or ["numpy", "pandas"],
            )
        mv = mlflow.register_model(info.model_uri, registered_model_name, tags=tags)
    finally:
        mlflow.set_tracking_uri(previous)
    return client.get_model_version(registered_model_name, mv.version), run.info.run_id


def sample_generator(model, n: int, seed: int, batch_size: int, progress=lambda _n: None) -> ImageSet:
    """Draw ``n`` samples in batches of ``batch_size`` (batch ``b`` uses seed ``seed + b``) and check them."""
    batches = []
    for b, start in enumerate(range(0, n, batch_size)):
        k = min(batch_size, n - start)
        try:
            out = model.predict(pd.DataFrame({"n": [k], "seed": [seed + b]}))
        except Exception as exc:  # noqa: BLE001
            raise InputError(f"generator failed on batch {b} (n={k}, seed={seed + b}): "
                             f"{type(exc).__name__}: {exc}") from None
        batches.append(check_generator_output(out, k, label=f"generator batch {b}"))
        progress(k)
    images = np.concatenate(batches)
    ids = tuple(f"sample_{i:05d}" for i in range(n))
    return ImageSet(name="candidate", ids=ids, images=images)


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
