"""Search that scales: exact up to a limit, beyond it an inverted file whose candidates are re-ranked exactly,
persisted in the authenticated cache."""

import numpy as np
import pytest

from gate_plugins.toolkit.search import NeighbourIndex, lists_for


def _mixture(rng, centres, n):
    x = centres[rng.integers(0, len(centres), n)] + 0.35 * rng.standard_normal((n, centres.shape[1]))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((64, 32))
    rows = _mixture(rng, centres, 30_000)
    queries = np.concatenate([_mixture(rng, centres, 1000), rows[:1000] + 0.01 * rng.standard_normal((1000, 32))])
    queries = (queries / np.linalg.norm(queries, axis=1, keepdims=True)).astype(np.float32)
    truth = (queries @ rows.T).max(1)
    return rows, queries, truth


def test_below_the_limit_the_search_is_exact(data):
    rows, queries, truth = data
    index = NeighbourIndex().fit(rows)
    sims, ids = index.search(queries, 3)
    assert index.describe()["kind"] == "exact"
    np.testing.assert_allclose(sims[:, 0], truth, atol=1e-5)
    np.testing.assert_allclose(sims, np.take_along_axis(queries @ rows.T, ids, 1), atol=1e-5)


def test_above_the_limit_candidates_are_reranked_exactly_and_recall_holds(data):
    rows, queries, truth = data
    index = NeighbourIndex(exact_limit=1000).fit(rows)
    assert index.kind_ == "ivf-sq8-refined" and index.nlist_ == lists_for(len(rows)) == 512
    assert 1 <= index.nprobe_ < index.nlist_  # calibrated, and cheaper than scanning every list
    sims, ids = index.search(queries, 2)
    # each similarity returned is the exact inner product of its row, not the 8-bit code's estimate
    np.testing.assert_allclose(sims, np.einsum("nd,nkd->nk", queries, rows[ids]), atol=1e-5)
    assert np.mean(sims[:, 0] >= truth - 1e-6) >= 0.999
    # persisted (as bytes for the authenticated cache) and read back, it answers the same
    again = NeighbourIndex.from_bytes(index.to_bytes(), index.describe())
    np.testing.assert_array_equal(again.search(queries, 2)[1], ids)


def test_a_large_reference_is_searched_approximately_and_its_index_is_cached(mri, tmp_path):
    from gate_plugins.memorization.detector import Detector
    from gate_plugins.toolkit.extractors import build_extractor

    ext = build_extractor("efficientnet-lite0", None, 2.0)
    train = mri["train_images"][:48]
    flipped = np.ascontiguousarray(train[:6, ::-1, :])
    exact = Detector(ext, "dihedral", match_side="reference").fit(train).score(flipped)
    first = Detector(ext, "dihedral", match_side="reference", exact_limit=100, cache_dir=tmp_path)
    first.fit(train, digest="t")  # 8 x 48 reference rows per layer: above the limit
    assert first.search_cache_ == "stored" and {x.kind_ for x in first.index_.searchers_} == {"ivf-sq8-refined"}
    second = Detector(ext, "dihedral", match_side="reference", exact_limit=100, cache_dir=tmp_path)
    second.fit(train, digest="t")
    assert second.search_cache_ == "hit"
    for det in (first, second):
        s = det.score(flipped)
        np.testing.assert_allclose(s.similarity, exact.similarity, atol=1e-5)
        assert s.nn_index[0].tolist() == list(range(6))


def test_the_index_round_trips_after_another_swig_library_is_loaded(data):
    """SimpleITK (loaded by the MRI plugins) registers SWIG's std::vector<uint8> proxy first, which broke
    faiss.serialize_index; the index must still persist whatever was imported before it."""
    import SimpleITK  # noqa: F401

    rows, queries, _ = data
    index = NeighbourIndex(exact_limit=1000).fit(rows[:5000])
    again = NeighbourIndex.from_bytes(index.to_bytes(), index.describe())
    np.testing.assert_array_equal(again.search(queries, 2)[1], index.search(queries, 2)[1])
