"""``gate bench memorization``: the controlled-duplication benchmark on the user's folders."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer


def register(app: typer.Typer) -> None:
    bench = typer.Typer(help="Benchmarks of the validators on your own data.", no_args_is_help=True)
    app.add_typer(bench, name="bench")

    @bench.command("iqa")
    def iqa(
        data: Path = typer.Option(..., "--data", help="folder of real images (split into reference and holdout)"),
        self_test_slices: int = typer.Option(16, "--slices", help="slices perturbed per level"),
        seed: int = typer.Option(0, "--seed"),
    ) -> None:
        """Perturb real slices at 4 severities and print, for every quality metric, the Spearman rho
        against severity: which failures each metric can see on this data."""
        from gate.cli import fail
        from gate.errors import GateError
        from gate.imageio import read_image_folder
        from gate_plugins.quality import sensitivity_table

        try:
            images = read_image_folder(data, "data").images
        except GateError as exc:
            fail(exc)
        print(sensitivity_table(images, self_test_slices, seed))

    @bench.command("memorization")
    def memorization(
        train: Path = typer.Option(..., "--train", help="folder of train images (the reference)"),
        test: Path = typer.Option(..., "--test", help="folder of real images from other subjects than train"),
        holdout: Optional[Path] = typer.Option(None, "--holdout", help="real images of yet other subjects: "
                                               "the calibration null (else the paper's train halves)"),
        extractor: Optional[List[str]] = typer.Option(None, "--extractor", help="repeat to compare"),
        prefilter_sigma: float = typer.Option(2.0, "--prefilter-sigma"),
        paper_conditions_only: bool = typer.Option(False, "--paper-conditions-only",
                                                   help="only the paper's 8 conditions"),
        seed: int = typer.Option(0, "--seed"),
    ) -> None:
        """Replace 5/15/30/45 % of the test images by train images under the paper's 8 conditions (and
        harder ones) and print per-sample AUC and TPR at 1 % FPR, the set-level response, the
        false-positive rate on novel images and the cost, for gate's matching and the paper's."""
        from gate.cli import fail
        from gate.errors import GateError
        from gate.imageio import check_same_size, read_image_folder
        from gate_plugins.memorization.benchmark import render_tables, run_benchmark
        from gate_plugins.memorization.contamination import CONDITIONS, EXTRA_CONDITIONS
        from gate_plugins.memorization.detector import Detector
        from gate_plugins.toolkit.extractors import build_extractor
        from gate_plugins.memorization.grouping import subjects_of

        try:
            tr, te = read_image_folder(train, "train"), read_image_folder(test, "test")
            check_same_size(tr, te)
            ho = read_image_folder(holdout, "holdout") if holdout else None
            if ho is not None:
                check_same_size(tr, ho)
            variants = {}
            for name in extractor or ["efficientnet-lite0"]:
                # gate's default (it verifies retrieved pairs when there is a holdout) and the paper's
                # plain matching, whitening and conformal p-values
                for label, invariance, nuisance in (("gate", "dihedral", 2), ("paper-style", "none", 0)):
                    det = Detector(build_extractor(name, None, prefilter_sigma), invariance, nuisance_copies=nuisance,
                                   tail=label == "gate", verify_k=3 if label == "gate" else 0)
                    det.use_calibration = ho is not None and label == "gate"
                    variants[f"{name}, {label}"] = det
        except GateError as exc:
            fail(exc)
        conditions = tuple(CONDITIONS) + (() if paper_conditions_only else tuple(EXTRA_CONDITIONS))
        groups = subjects_of(ho.ids) if ho else None
        result = run_benchmark(tr.images, te.images, variants, calibration=ho.images if ho else None,
                               calibration_groups=groups, conditions=conditions, seed=seed)
        print(render_tables(result))
