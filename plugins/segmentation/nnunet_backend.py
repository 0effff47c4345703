"""nnU-Net v2 as a back end (optional extra): the segmenter a user with a GPU would pick. On CPU it is
slow (an epoch of 250 iterations takes about 43 s on 2 cores), so ``epochs`` and
``nnunet_iterations`` default low for a gate run; each model is one :mod:`nnunet_job` process."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from gate.errors import InputError
from gate_plugins.segmentation.monai_backend import TimeBudgetExceeded

INSTALL_HINT = ("nnU-Net v2 is an optional extra: install it without its torchvision-pulling dependencies, "
                "`pip install --no-deps nnunetv2==2.8.1 dynamic-network-architectures==0.4.4` then "
                "`pip install 'gate-mri[nnunet]'` (see README)")


class NnUNetBackend:
    def __init__(self, device: str = "cpu") -> None:
        import importlib.util

        self.device = device  # resolved by the validator: "cpu", "cuda" or "cuda:N"
        if importlib.util.find_spec("nnunetv2") is None:
            raise InputError(f"params.backend is nnunet but nnunetv2 is not installed: {INSTALL_HINT}")

    def fit_score(self, images, labels, test_images, test_labels, n_classes, params, seed, deadline,
                  progress) -> dict[str, np.ndarray]:
        from gate_plugins.segmentation.metrics import per_case

        with tempfile.TemporaryDirectory(prefix="gate-nnunet-") as tmp:
            work = Path(tmp)
            np.savez(work / "job.npz", train_images=images, train_labels=labels, test_images=test_images,
                     n_classes=n_classes)
            (work / "job.json").write_text(json.dumps({"epochs": params.epochs, "seed": seed,
                                                       "iterations": params.nnunet_iterations,
                                                       "device": self.device}))
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeBudgetExceeded(f"segmentation: time_budget_s = {params.time_budget_s:g} ran out")
            try:
                proc = subprocess.run([sys.executable, "-m", "gate_plugins.segmentation.nnunet_job", str(work)],
                                      capture_output=True, text=True, timeout=remaining)
            except subprocess.TimeoutExpired:
                raise TimeBudgetExceeded(f"segmentation: time_budget_s = {params.time_budget_s:g} ran out while "
                                         "nnU-Net trained") from None
            if proc.returncode != 0:
                tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["(no output)"]
                raise RuntimeError(f"nnU-Net failed (exit {proc.returncode}): {tail[0]}")
            pred = np.load(work / "prediction.npy")
        progress(params.epochs)
        return {**per_case(pred, test_labels, n_classes), "prediction": pred}

    def versions(self) -> dict[str, str]:
        from importlib.metadata import version

        import torch

        return {"nnunetv2": version("nnunetv2"), "torch": torch.__version__}
