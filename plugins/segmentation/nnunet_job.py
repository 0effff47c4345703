"""One nnU-Net v2 training and prediction, run as its own process by :mod:`nnunet_backend`.

It is a separate process because nnU-Net reads its three folder variables when it is imported and
spawns worker processes that re-import the main module (hence the ``__main__`` guard), and because a
process can be stopped when the check's time budget runs out. It uses nnU-Net's Python API only:
the CLI and ``initialize_from_trained_model_folder`` import timm, which needs torchvision, which
would replace the CPU build of torch.

    python -m gate_plugins.segmentation.nnunet_job WORKDIR
reads WORKDIR/job.npz (train images/labels, test images, n_classes) and WORKDIR/job.json (epochs,
iterations, seed, device: "cpu", "cuda" or "cuda:N", already resolved by the parent) and writes
WORKDIR/prediction.npy.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np

DATASET_ID, DATASET = 1, "Dataset001_Gate"


def write_dataset(raw: Path, images: np.ndarray, labels: np.ndarray, n_classes: int) -> None:
    import SimpleITK as sitk

    root = raw / DATASET
    (root / "imagesTr").mkdir(parents=True, exist_ok=True)
    (root / "labelsTr").mkdir(parents=True, exist_ok=True)
    for i, (img, lab) in enumerate(zip(images, labels)):
        sitk.WriteImage(sitk.GetImageFromArray(img.astype(np.float32)), str(root / "imagesTr" / f"c{i:05d}_0000.nii.gz"))
        sitk.WriteImage(sitk.GetImageFromArray(lab.astype(np.uint8)), str(root / "labelsTr" / f"c{i:05d}.nii.gz"))
    names = {"background": 0, **{f"class{c}": c for c in range(1, n_classes)}}
    (root / "dataset.json").write_text(json.dumps({"channel_names": {"0": "MRI"}, "labels": names,
                                                   "numTraining": len(images), "file_ending": ".nii.gz"}))


def main(workdir: Path) -> None:
    job = json.loads((workdir / "job.json").read_text())
    for var, sub in (("nnUNet_raw", "raw"), ("nnUNet_preprocessed", "preprocessed"), ("nnUNet_results", "results")):
        os.environ[var] = str(workdir / sub)
        (workdir / sub).mkdir(exist_ok=True)
    os.environ.setdefault("nnUNet_def_n_proc", "2")
    os.environ.setdefault("nnUNet_n_proc_DA", "2")
    with np.load(workdir / "job.npz") as z:
        train_images, train_labels, test_images = z["train_images"], z["train_labels"], z["test_images"]
        n_classes = int(z["n_classes"])
    write_dataset(workdir / "raw", train_images, train_labels, n_classes)

    import torch

    torch.manual_seed(job["seed"])
    device = torch.device(job.get("device", "cpu"))
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (extract_fingerprints, plan_experiments,
                                                                      preprocess)
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    extract_fingerprints([DATASET_ID], num_processes=2, check_dataset_integrity=True, verbose=False,
                         show_progress_bar=False)
    plan_experiments([DATASET_ID])
    preprocess([DATASET_ID], configurations=("2d",), num_processes=(2,), show_progress_bar=False)

    class ShortTrainer(nnUNetTrainer):
        # nnU-Net introspects this signature to save its init args: keep it exactly
        def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                     device: torch.device = torch.device("cpu")):
            super().__init__(plans, configuration, fold, dataset_json, device)
            self.num_epochs = job["epochs"]
            self.num_iterations_per_epoch = job["iterations"]
            self.num_val_iterations_per_epoch = max(1, job["iterations"] // 5)

    pre = workdir / "preprocessed" / DATASET
    plans, dataset_json = load_json(str(pre / "nnUNetPlans.json")), load_json(str(pre / "dataset.json"))
    plans["continue_training"] = False  # nnU-Net 2.8 pops this key in __init__
    trainer = ShortTrainer(plans=plans, configuration="2d", fold="all", dataset_json=dataset_json, device=device)
    trainer.run_training()

    pm = PlansManager(plans)
    cm = pm.get_configuration("2d")
    net = nnUNetTrainer.build_network_architecture(pm, cm, determine_num_input_channels(pm, cm, dataset_json),
                                                   pm.get_label_manager(dataset_json).num_segmentation_heads,
                                                   enable_deep_supervision=False)
    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=False,
                                device=device, perform_everything_on_device=False, verbose=False)
    ck = torch.load(Path(trainer.output_folder) / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    predictor.manual_initialization(net, pm, cm, [ck["network_weights"]], dataset_json, type(trainer).__name__,
                                    ck.get("inference_allowed_mirroring_axes"))
    pred = np.stack([predictor.predict_single_npy_array(img[None, None].astype(np.float32),
                                                        {"spacing": [999, 1, 1]})[0] for img in test_images])
    np.save(workdir / "prediction.npy", pred.astype(np.uint8))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
