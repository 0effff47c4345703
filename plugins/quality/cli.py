"""``gate fit-niqe``: the local NIQE parameter file that pyiqa's NIQE needs (it would download one)."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("fit-niqe")
    def fit_niqe(
        data: Path = typer.Option(..., "--data", help="folder of real slices (the pristine model)"),
        out: Path = typer.Option(..., "--out", help=".mat file to write (then params.pyiqa_weights.niqe)"),
        block: int = typer.Option(32, "--block", help="block size in pixels; pass the same niqe_block"),
    ) -> None:
        """Fit NIQE's pristine model on your real slices with pyiqa's own features (needs the pyiqa extra)."""
        from gate.cli import fail
        from gate.errors import GateError
        from gate.imageio import read_image_folder
        from gate_plugins.quality.pyiqa_metrics import fit_niqe_params

        try:
            n = fit_niqe_params(read_image_folder(data, "data").images, out, block)
        except GateError as exc:
            fail(exc)
        print(f"wrote {out} from {n} blocks of {block} px")
