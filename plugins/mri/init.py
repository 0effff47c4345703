"""``gate init``: a commented policy fitted to the data it finds, from the shipped default.

The default is edited in place (ruamel keeps its comments), so every key keeps its explanation; what
the data rules out is left out or changed, with a comment saying why."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Optional

import typer

from gate_plugins.mri.demo import default_policy

#: holdout images at which the default policy's power figures were measured (benchmarks/memorization_power.py:
#: 4 subjects x 24 slices, as the demo's holdout)
MEASURED_HOLDOUT = 96
#: seconds per image on 2 cores, cold, for the default checks (benchmarks/memorization_cost.py: 1,127 s
#: for 500 samples against 1,000 train images, so about 0.75 s per image; the quality and segmentation
#: checks add about 2 minutes on the demo's sizes)
SECONDS_PER_IMAGE = 0.75
OTHER_CHECKS_S = 120


def fitted_policy(train: Path, holdout: Path | None, out: Path,
                  labels: bool | None = None) -> tuple[str, list[str]]:
    """The policy's text and the notes printed beside it (what was left out and why, the estimate).
    ``labels``: True requires labelled train and holdout sets (the segmentation check), False leaves that
    check out whatever the folders hold, None decides from the folders."""
    from ruamel.yaml import YAML

    from gate.imageio import read_folder
    from gate.policy import Preprocess
    from gate_plugins.memorization import subjects_of

    yaml = YAML(typ="rt")
    yaml.width = 4096  # comments and values stay on their lines
    yaml.indent(mapping=2, sequence=4, offset=2)  # the shipped default's layout
    with default_policy() as shipped:
        doc = yaml.load(shipped.read_text(encoding="utf-8"))
    spec = doc["spec"]
    # read as the written policy will read it: volumes sliced, resampled and put on one grid
    preprocess = Preprocess(**dict(spec["data"]["preprocess"]))
    train_set = read_folder(train, "train", preprocess)
    holdout_set = read_folder(holdout, "holdout", preprocess, tuple(train_set.shape)) if holdout else None
    doc["metadata"]["name"] = out.stem
    doc["metadata"]["description"] = f"Fitted by gate init to {train.name}/ and {holdout.name if holdout else 'no holdout'}/."
    spec["data"]["train"] = os.path.relpath(train.resolve(), out.resolve().parent)
    notes: list[str] = []
    if holdout_set is None:
        del spec["data"]["holdout"]
        notes.append("no holdout: the memorization check falls back to the paper's train-halves null and cannot "
                     "vouch for its power; the segmentation check needs a labelled holdout (left out)")
    else:
        spec["data"]["holdout"] = os.path.relpath(holdout.resolve(), out.resolve().parent)
    checks = spec["checks"]
    memorization = next(c for c in checks if c["validator"] == "memorization")
    params = memorization["params"]
    height, width = train_set.shape
    done = train_set.preprocessing or {}
    notes.append(f"train: {len(train_set)} slices of {height}x{width} from {done.get('files', '?')} files"
                 + (f" ({done['volumes']} volumes resampled to {preprocess.spacing} mm, sliced {preprocess.axis}; "
                    f"{done['slices_dropped']} near-empty slices dropped)" if done.get("volumes") else ""))
    if height != width:
        notes.append(f"images are {height}x{width}: dihedral matching (flips, 90-degree turns) runs on a square "
                     "canvas they are padded to")
    if holdout_set is None:
        params["power"] = None
        params["verify_contrast"] = False
        params.yaml_add_eol_comment("the power analysis and the contrast need a holdout", "power")
    else:
        subjects = len(set(subjects_of(holdout_set.ids, None)))
        if subjects < 2:
            notes.append("the holdout holds one subject by its file names: the verification contrast would be "
                         "refused; give images of several subjects or set subject_pattern")
        if len(holdout_set) < MEASURED_HOLDOUT:
            notes.append(f"the holdout has {len(holdout_set)} images ({subjects} subjects by name); the default's "
                         f"power (5 % copying refused in 93 % of seeds at 64 samples) was measured with "
                         f"{MEASURED_HOLDOUT} (4 subjects): with fewer the check may refuse to vouch and say what it needs")
    which = [name for name, s in (("train", train_set), ("holdout", holdout_set)) if s is None or s.labels is None]
    labelled = not which
    if labels and not labelled:
        from gate.errors import InputError

        raise InputError(f"--labels: {' and '.join(which)} {'has' if len(which) == 1 else 'have'} no labels/ folder "
                         "(a labelled set holds images/ and labels/ with the same file names)")
    if labels is False and labelled:
        checks[:] = [c for c in checks if c["validator"] != "segmentation"]
        spec.yaml_add_eol_comment("segmentation left out: --no-labels", "checks")
        notes.append("segmentation check left out (--no-labels), although the sets are labelled")
    elif not labelled:
        checks[:] = [c for c in checks if c["validator"] != "segmentation"]
        spec.yaml_add_eol_comment(f"segmentation left out: {' and '.join(which)} have no labels/ folder",
                                  "checks")
        notes.append(f"segmentation check left out: {' and '.join(which)} {'has' if len(which) == 1 else 'have'} "
                     "no labels/ folder (images/ and labels/ with the same file names)")
    n_samples = int(spec["candidate"]["n_samples"])
    images = len(train_set) + (len(holdout_set) if holdout_set is not None else 0) + n_samples
    estimate = images * SECONDS_PER_IMAGE + (OTHER_CHECKS_S if len(checks) > 1 else 0)
    notes.append(f"estimated time: about {estimate / 60:.0f} min on 2 cores for a first (cold) validation of "
                 f"{n_samples} samples against {len(train_set)} train images; later runs reuse the cached "
                 "reference features")
    text = io.StringIO()
    yaml.dump(doc, text)
    return text.getvalue(), notes


def register(app: typer.Typer) -> None:
    @app.command()
    def init(train: Path = typer.Option(..., "--train", help="folder of the generator's training images"),
             holdout: Path = typer.Option(None, "--holdout", help="folder of real images it never saw"),
             out: Path = typer.Option(Path("policy.yaml"), "--out", "-o", help="policy file to write"),
             force: bool = typer.Option(False, "--force", help="overwrite an existing policy file"),
             labels: Optional[bool] = typer.Option(None, "--labels/--no-labels",
                                                   help="require labelled sets for the segmentation check, or leave "
                                                        "it out (default: as the folders are)")) -> None:
        """Write a commented policy fitted to your data: checks it cannot feed left out (and why), sizes
        checked, the holdout judged, the time estimated."""
        from gate.errors import InputError
        from gate.policy import load_policy
        from gate.validators import discover

        if out.exists() and not force:
            raise InputError(f"{out}: exists; give --force to overwrite it")
        text, notes = fitted_policy(train, holdout, out, labels)
        import tempfile

        out.parent.mkdir(parents=True, exist_ok=True)
        # a fresh private name beside the target (its folder anchors the paths), then one rename
        fd, name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
        tmp = Path(name)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
            load_policy(tmp, discover())  # what gate init writes always loads
            os.chmod(tmp, 0o644)  # a policy is meant to be read and reviewed, not secret like mkstemp's 0600
            os.replace(tmp, out)
        finally:
            tmp.unlink(missing_ok=True)
        typer.echo(f"wrote {out}")
        for note in notes:
            typer.echo(f"  - {note}")
