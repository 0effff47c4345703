"""One contract, run over every validator registered in the ``gate.validators`` entry-point group:
a new plugin is checked the moment it is installed."""


import numpy as np
import pandas as pd
import pytest
from pydantic import BaseModel, ValidationError

from gate.errors import GateError
from gate.imageset import ImageSet
from gate.validators import CheckContext, discover

REGISTRY = discover()
NAMES = sorted(REGISTRY.validators)


def test_every_entry_point_loads():
    assert REGISTRY.failures == {}
    assert "memorization" in NAMES


@pytest.fixture(scope="module")
def small_sets():
    """Labelled slices of distinct synthetic subjects, so that every kind of validator can run."""
    from gate_plugins.mri.subjects import labelled_subject_slices

    def labelled(name, seeds, n):
        images, labels, ids = labelled_subject_slices(seeds, n)
        return ImageSet(name, tuple(ids), images, labels=labels.astype(np.int64))

    return labelled("train", range(1, 4), 8), labelled("candidate", range(301, 303), 6), \
        labelled("holdout", range(201, 203), 6)


def _context(train, cand, tmp_path, seed=0, holdout=None, progress=None):
    extra = {"progress": progress} if progress is not None else {}
    return CheckContext(candidate=cand, train=train, holdout=holdout, seed=seed, batch_size=8, cache_dir=tmp_path,
                        **extra)


class _Bars:
    """Records every progress bar a validator opens and how far each got."""

    def __init__(self):
        self.bars: dict[str, list[int]] = {}

    def __call__(self, desc, total):
        self.bars[desc] = [0, total]

        def tick(n):
            self.bars[desc][0] += n
        return tick


@pytest.mark.parametrize("name", NAMES)
def test_params_model_is_strict_and_defaults_are_valid(name):
    cls = REGISTRY.validators[name].cls
    assert issubclass(cls.Params, BaseModel)
    cls.Params()  # every param has a default
    with pytest.raises(ValidationError):
        cls.Params(no_such_param=1)


@pytest.mark.parametrize("name", NAMES)
def test_declared_metrics_and_columns(name):
    cls = REGISTRY.validators[name].cls
    assert cls.name == name
    assert cls.columns[0] == "sample_id"
    names = [m.name for m in cls.metrics]
    assert names and len(names) == len(set(names))
    assert all((m.aggregate == "scalar" or m.column in cls.columns) and m.description for m in cls.metrics)
    assert all((m.aggregate == "scalar") == (m.column is None) for m in cls.metrics)


@pytest.mark.parametrize("name", NAMES)
def test_output_is_deterministic_for_a_seed_and_matches_the_declaration(name, small_sets, tmp_path):
    cls = REGISTRY.validators[name].cls
    train, cand, holdout = small_sets
    bars = _Bars()
    a = cls().run(_context(train, cand, tmp_path, holdout=holdout, progress=bars), cls.Params())
    # every bar a validator opens is filled exactly: its remaining time is then an honest estimate
    assert bars.bars and all(done == total for done, total in bars.bars.values()), bars.bars
    b = cls().run(_context(train, cand, tmp_path, holdout=holdout), cls.Params())
    assert list(a.table.columns[: len(cls.columns)]) == list(cls.columns)
    assert a.table["sample_id"].tolist() == list(cand.ids)
    pd.testing.assert_frame_equal(a.table, b.table)
    assert a.scalars.keys() == b.scalars.keys()
    assert np.allclose(list(a.scalars.values()), list(b.scalars.values()), equal_nan=True)
    if name == "quality":  # the self-test sees only real data, so it runs once
        assert (a.diagnostics["self_test_cache"], b.diagnostics["self_test_cache"]) == ("miss", "hit")
        assert any(d.startswith("quality: self-test") for d in bars.bars)  # long enough to deserve a bar
        assert a.diagnostics["sensitivity_rho"] == b.diagnostics["sensitivity_rho"]
        assert a.insensitive == b.insensitive
    for m in cls.metrics:
        value = m.compute(a.table, a.scalars)
        assert np.isfinite(value) or (m.aggregate == "scalar" and m.name in a.scalars), m.name


@pytest.mark.parametrize("name", NAMES)
def test_bad_input_raises_a_clear_error(name, small_sets, tmp_path):
    cls = REGISTRY.validators[name].cls
    train, cand, holdout = small_sets
    tiny = ImageSet("train", train.ids[:2], train.images[:2])
    with pytest.raises(GateError, match="train"):
        cls().run(_context(tiny, cand, tmp_path, holdout=holdout), cls.Params())
    bad = cand.images.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(GateError, match="non-finite"):
        cls().run(_context(train, ImageSet("candidate", cand.ids, bad, labels=cand.labels), tmp_path,
                           holdout=holdout), cls.Params())
