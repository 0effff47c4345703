"""``gate bench memorization``: the paper's controlled-duplication benchmark on the user's folders."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer


def register(app: typer.Typer) -> None:
    bench = typer.Typer(help="Benchmarks of the validators on your own data.", no_args_is_help=True)
    app.add_typer(bench, name="bench")

    @bench.command("memorization")
    def memorization(
        train: Path = typer.Option(..., "--train", help="folder of train images (the reference)"),
        test: Path = typer.Option(..., "--test", help="folder of real images from other subjects than train"),
        extractor: Optional[List[str]] = typer.Option(None, "--extractor", help="repeat to compare (default: all offline ones)"),
        prefilter_sigma: float = typer.Option(2.0, "--prefilter-sigma"),
        mi_threshold: float = typer.Option(3.0, "--mi-threshold"),
        seed: int = typer.Option(0, "--seed"),
    ) -> None:
        """Replace 5/15/30/45 % of the test images by train images under the paper's 8 conditions and
        print the per-sample AUC per condition, the set-level response and the extractor speed."""
        from gate.cli import fail
        from gate.errors import GateError
        from gate.imageio import check_same_size, read_image_folder
        from gate_plugins.memorization.benchmark import render_tables, run_benchmark
        from gate_plugins.memorization.extractors import build_extractor

        try:
            tr, te = read_image_folder(train, "train"), read_image_folder(test, "test")
            check_same_size(tr, te)
            names = extractor or ["efficientnet-lite0", "scattering-j3l8"]
            exts = [build_extractor(n, None, prefilter_sigma) for n in names]
        except GateError as exc:
            fail(exc)
        result = run_benchmark(tr.images, te.images, exts, mi_threshold=mi_threshold, seed=seed)
        print(render_tables(result))
