"""Which torch device a check computes on: ``auto`` (CUDA when torch sees one, else the CPU), ``cpu``, or
``cuda``/``cuda:N``. One resolution for the extractors, the segmentation back ends and their provenance,
so that a report says where its numbers were computed."""

from __future__ import annotations

import re

from gate.errors import ConfigError
from gate.policy import DEVICE_PATTERN


def resolve_device(requested: str = "auto"):
    """The ``torch.device`` for ``requested``; a CUDA device that torch cannot see is bad configuration
    (exit 2), never a silent fall-back: a policy that asks for a GPU gets one or says why not."""
    import torch

    if not re.fullmatch(DEVICE_PATTERN, requested):
        raise ConfigError(f"spec.compute.device: {requested[:40]!r} is not auto, cpu, cuda or cuda:N")
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested.startswith("cuda"):
        index = int(requested.split(":")[1]) if ":" in requested else 0
        if not torch.cuda.is_available() or index >= torch.cuda.device_count():
            raise ConfigError(f"spec.compute.device: {requested} asked for, but torch sees "
                              f"{torch.cuda.device_count() if torch.cuda.is_available() else 'no'} CUDA device(s) "
                              "here (use auto to fall back to the CPU)")
    return torch.device(requested)


def describe(device) -> str:
    """What the report records: ``cpu``, or ``cuda:N (GPU name)``."""
    import torch

    if device.type != "cuda":
        return device.type
    index = device.index if device.index is not None else torch.cuda.current_device()
    return f"cuda:{index} ({torch.cuda.get_device_name(index)})"


def device_problem(requested: str) -> str | None:
    """For a validator's preflight: why ``requested`` cannot be used here, or None."""
    try:
        resolve_device(requested)
    except ConfigError as exc:
        return str(exc)
    return None
