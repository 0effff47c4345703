"""Feature extractors: several pooled layers, offline weights, and the MRI-CORE loader."""

import numpy as np
import pytest
import torch

from gate.errors import ConfigError
from gate_plugins.toolkit.extractors import (
    EfficientNetLite0Extractor, MriCoreExtractor, ScatteringExtractor, build_extractor, preprocess)


@pytest.fixture(scope="module")
def images(mri):
    return mri["train_images"][:6]


@pytest.mark.parametrize("cls, dims", [(ScatteringExtractor, {"order1": 24, "order2": 192}),
                                       (EfficientNetLite0Extractor, {"block4": 40, "block10": 112, "block15": 320})])
def test_offline_extractors_return_pooled_layers(cls, dims, images):
    ext = cls()
    feats = ext.extract(images, batch_size=4)
    assert {k: v.shape for k, v in feats.items()} == {k: (6, d) for k, d in dims.items()}
    again = ext.extract(images, batch_size=3)  # batching does not change the features
    for k in feats:
        assert np.allclose(feats[k], again[k], atol=1e-5)


def test_efficientnet_weights_come_from_the_wheel_and_are_hashed():
    sha = EfficientNetLite0Extractor().weights_sha256()
    assert len(sha) == 64


def test_prefilter_removes_pixel_noise_but_keeps_structure(images):
    rng = np.random.default_rng(0)
    noisy = images + rng.normal(0, 0.02, images.shape)
    raw = np.abs(preprocess(noisy, 0.0) - preprocess(images, 0.0)).mean()
    smooth = np.abs(preprocess(noisy, 2.0) - preprocess(images, 2.0)).mean()
    assert smooth < raw / 3


def _sam_state(ext):
    return {f"image_encoder.{k}": v for k, v in ext._net.state_dict().items()}


def test_mri_core_random_init_gives_three_768d_layers(images):
    ext = MriCoreExtractor(None, image_size=64, random_init_seed=0)
    hits = []
    hooks = [ext._net.blocks[i].register_forward_hook(lambda m, i, o: hits.append(tuple(o.shape))) for i in (3, 7, 11)]
    feats = ext.extract(images[:2], batch_size=2)
    for h in hooks:
        h.remove()
    assert {k: v.shape for k, v in feats.items()} == {"block3": (2, 768), "block7": (2, 768), "block11": (2, 768)}
    assert hits == [(2, 4, 4, 768)] * 3  # channels-last block outputs, pooled over the 4x4 token grid
    assert not np.allclose(feats["block3"], feats["block11"])


def test_mri_core_loads_a_local_checkpoint(tmp_path, images):
    ref = MriCoreExtractor(None, image_size=64, random_init_seed=1)
    ckpt = tmp_path / "mri_foundation.pth"
    torch.save({**_sam_state(ref), "mask_decoder.x": torch.zeros(1)}, ckpt)
    loaded = MriCoreExtractor(ckpt, image_size=64)
    a, b = ref.extract(images[:2]), loaded.extract(images[:2])
    assert all(np.allclose(a[k], b[k], atol=1e-5) for k in a)
    assert len(loaded.weights_sha256()) == 64


def test_mri_core_missing_or_wrong_checkpoint_says_what_to_provide(tmp_path):
    with pytest.raises(ConfigError, match="mri_foundation.pth"):
        build_extractor("mri-core", tmp_path / "nope.pth")
    bad = tmp_path / "bad.pth"
    torch.save({"something.else": torch.zeros(1)}, bad)
    with pytest.raises(ConfigError, match="no 'image_encoder"):
        MriCoreExtractor(bad)


def test_unknown_extractor():
    with pytest.raises(ConfigError, match="unknown feature extractor"):
        build_extractor("resnet")
