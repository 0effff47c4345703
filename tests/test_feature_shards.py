"""A large reference's features are stored shard by shard as they are computed (issue 16): read back the same,
held once (the entry names its shards), a forged shard recomputed, and a fit killed part-way resumes from
the shards it wrote instead of extracting everything again."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np

from gate.featurecache import FeatureCache
from gate_plugins.memorization.detector import Detector
from gate_plugins.mri.subjects import subject_slices
from gate_plugins.toolkit.extractors import build_extractor

SHARD, BATCH = 14, 7  # a shard is two batches, so sharded and one-pass extraction see the same batches


class CountingExtractor:
    """The real extractor, counting the images it is asked to extract."""

    def __init__(self, inner):
        self.inner, self.rows = inner, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def extract(self, images, batch_size=32, progress=lambda _n: None):
        self.rows += len(images)
        return self.inner.extract(images, batch_size, progress)


def _train():
    images, _ = subject_slices(range(1, 4), 15)  # 45 slices: 4 shards, the last one short
    return images.astype(np.float32)


def _detector(cache: Path, **kw) -> Detector:
    return Detector(CountingExtractor(build_extractor("scattering-j3l8")), cache_dir=cache, batch_size=BATCH,
                    shard_rows=SHARD, **kw)


def _shard_files(cache: Path) -> list[Path]:
    return sorted(cache.glob("*.npz"))


def test_a_sharded_reference_equals_one_pass_is_held_once_and_reads_back(tmp_path):
    train = _train()
    one_pass = _detector(tmp_path / "one", invariance="dihedral")
    one_pass.shard_rows = 10 ** 6
    want, want_nuisance, _ = one_pass.reference_features(train, side="reference")

    det = _detector(tmp_path / "sharded", invariance="dihedral")
    got, nuisance, hit = det.reference_features(train, side="reference")
    assert not hit and det.cache_status_ == "miss"
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(nuisance, want_nuisance):
        np.testing.assert_array_equal(a, b)
    # 8 transforms x 4 shards, and the entry, which names the shards instead of holding the rows again
    assert len(_shard_files(tmp_path / "sharded")) == 8 * 4 + 1
    entry = FeatureCache(tmp_path / "sharded").load(det._reference_key(train, None, "reference")).arrays
    assert "ref_0" not in entry and entry["ref_shards"].shape == (8 * 4, 3)

    again = _detector(tmp_path / "sharded", invariance="dihedral")
    back, _, hit = again.reference_features(train, side="reference")
    assert hit and again.extractor.rows == 0
    for a, b in zip(back, want):
        np.testing.assert_array_equal(a, b)


def test_a_forged_shard_is_recomputed_not_trusted(tmp_path):
    train = _train()
    det = _detector(tmp_path, invariance="none", nuisance_copies=0)
    want, _, _ = det.reference_features(train)
    key = det._reference_key(train, None, "reference")
    shard = tmp_path / f"{det._shard_key(key, 0, SHARD, 2 * SHARD)}.npz"
    planted = {"layer_0": np.zeros((SHARD, want[0].shape[1])), "layer_1": np.zeros((SHARD, want[1].shape[1]))}
    np.savez(shard, **planted)  # features that would make a copier novel, without the folder's key

    again = _detector(tmp_path, invariance="none", nuisance_copies=0)
    got, _, hit = again.reference_features(train)
    assert not hit and again.cache_status_ == "tampered"
    assert again.extractor.rows == SHARD  # the forged shard alone is extracted again
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)


CHILD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    sys.path.insert(0, sys.argv[2])
    from test_feature_shards import _detector, _train
    det = _detector(Path(sys.argv[1]), invariance="none", nuisance_copies=0)
    det.reference_features(_train(), progress=lambda n: time.sleep(0.4))  # slow enough to be killed mid-way
""")


def test_a_fit_killed_part_way_resumes_from_the_shards_it_wrote(tmp_path):
    cache = tmp_path / "cache"
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(cache), str(Path(__file__).parent)])
    try:
        deadline = time.monotonic() + 120
        while len(_shard_files(cache)) < 2 and time.monotonic() < deadline and child.poll() is None:
            time.sleep(0.05)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait()
    written = len(_shard_files(cache))
    assert child.returncode == -signal.SIGKILL and 2 <= written < 4  # killed with shards left to do

    train = _train()
    resumed = _detector(cache, invariance="none", nuisance_copies=0)
    got, _, hit = resumed.reference_features(train)
    assert not hit
    assert resumed.extractor.rows == len(train) - written * SHARD  # only the shards not yet written

    fresh = _detector(tmp_path / "fresh", invariance="none", nuisance_copies=0)
    want, _, _ = fresh.reference_features(train)
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)
