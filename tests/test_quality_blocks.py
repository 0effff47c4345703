"""Quality building blocks on real-template slices: perturbations are deterministic and graded, and
the MRIQC-style measures respond to them and never return NaN."""

import numpy as np
import pytest
from scipy import ndimage as ndi
from scipy import stats

from gate_plugins.quality import iqms
from gate_plugins.quality.perturbations import PERTURBATIONS, alter_structure, memorise, mode_collapse


@pytest.fixture(scope="module")
def slices(mri):
    imgs = mri["train_images"]
    return imgs[[6, 10, 14, 18]]  # mid-brain slices with all three tissues


@pytest.mark.parametrize("name", sorted(PERTURBATIONS))
def test_perturbations_are_deterministic_graded_and_in_range(name, slices):
    p = PERTURBATIONS[name]
    img = slices[0]
    a, b = p(img, 2, seed=3), p(img, 2, seed=3)
    assert np.array_equal(a, b) and a.shape == img.shape and a.dtype == np.float32
    assert a.min() >= 0 and a.max() <= 1 and np.isfinite(a).all()
    change = [np.abs(p(img, s, seed=3) - img).mean() for s in range(1, len(p.levels) + 1)]
    assert change[-1] > change[0] > 0  # stronger severities change the image more
    with pytest.raises(ValueError, match="severity"):
        p(img, 0, seed=3)


@pytest.mark.parametrize("name, metric, sign", [("gaussian_noise", "snr", -1), ("rician_noise", "snr", -1),
                                                ("blur", "efc", +1), ("gaussian_noise", "cjv", +1)])
def test_measures_follow_severity(name, metric, sign, slices):
    p = PERTURBATIONS[name]
    for img in slices:
        values = [iqms.all_iqms(img)[metric]] + [iqms.all_iqms(p(img, s, seed=1))[metric] for s in range(1, 5)]
        rho = stats.spearmanr(range(5), values).statistic
        assert sign * rho >= 0.9, (name, metric, values)


def test_measures_are_finite_on_degenerate_images():
    for img in (np.zeros((32, 32)), np.ones((32, 32)), np.eye(32), np.random.default_rng(0).random((16, 16))):
        values = iqms.all_iqms(img)
        assert all(np.isfinite(v) for v in values.values()), values


@pytest.mark.parametrize("values", [[0.0, 5e-324], [1e16, 1e16 + 2.0]])
def test_a_range_too_narrow_for_a_histogram_has_no_threshold_instead_of_a_numpy_error(values):
    """numpy refuses 256 bins over a range of a few representable steps ("Too many bins for data range"):
    seen on a real Colin27 slice with one non-zero voxel. Such a slice has no threshold, not a crash."""
    img = np.full((32, 32), values[0])
    img[3, 3] = values[1]
    assert iqms.otsu_threshold(img) == values[0]
    assert all(np.isfinite(v) for v in iqms.all_iqms(img).values())


def test_zero_background_gives_the_documented_sentinel(slices):
    values = iqms.all_iqms(slices[0])  # skull-stripped template: background exactly 0
    assert values["fber"] == iqms.UNDEFINED and values["snr_dietrich"] == iqms.UNDEFINED
    assert values["snr"] > 1 and 0 < values["efc"] < 1 and values["cnr"] > 0


def test_tissue_estimate_orders_intensities(slices):
    t = iqms.estimate_tissues(slices[1].astype(np.float64))
    img = slices[1]
    assert img[t.csf].mean() < img[t.gm].mean() < img[t.wm].mean()
    labels = np.zeros(img.shape, int); labels[t.csf] = 1; labels[t.gm] = 2; labels[t.wm] = 3
    assert np.array_equal(iqms.estimate_tissues(img, labels).gm, t.gm)


def test_structure_alterations_and_set_level_failures(slices):
    img = slices[1]
    t = iqms.estimate_tissues(img.astype(np.float64))
    structure = t.csf & (np.indices(img.shape)[1] > 40) & (np.indices(img.shape)[1] < 88)
    erased = alter_structure(img, structure, "erase", 1)
    assert np.abs(erased[structure] - img[structure]).mean() > 0.05
    assert np.array_equal(erased[~structure], img[~structure])
    grown = alter_structure(img, structure, "grow", 2)
    assert (grown != img).sum() > 0 and np.array_equal(alter_structure(img, structure, "grow", 2), grown)
    with pytest.raises(ValueError, match="empty"):
        alter_structure(img, np.zeros(img.shape, bool), "erase", 1)
    cands = np.stack([slices[2], slices[3]] * 5)
    copied = memorise(cands, slices[:2], 0.5, seed=0)
    assert sum(any(np.array_equal(c, t) for t in slices[:2]) for c in copied) == 5
    collapsed = mode_collapse(cands, 0.6, seed=0)
    assert max(sum(np.array_equal(a, b) for b in collapsed) for a in collapsed) >= 6


def test_ventricle_and_lesion_alterations_change_only_the_anatomy_they_name(slices):
    from gate_plugins.quality.perturbations import ventricles

    img = slices[1]
    mask = ventricles(img)
    assert 20 < mask.sum() < 0.05 * img.size  # a compact interior structure, not the sulcal CSF
    head = iqms.estimate_tissues(img).head
    assert not (mask & ~ndi.binary_erosion(head, iterations=3)).any()
    far = ~ndi.binary_dilation(mask, iterations=8)
    for name in ("ventricle_shrink", "ventricle_grow", "ventricle_erase"):
        out = PERTURBATIONS[name](img, 4, seed=0)
        assert np.abs(out - img)[far].max() < 1e-6, name  # nothing away from the ventricles moves
        assert np.abs(out - img)[~far].sum() > 1.0, name
    lesion = [PERTURBATIONS["lesion"](img, s, seed=0) for s in (1, 2, 3, 4)]
    changed = [(np.abs(x - img) > 0.05).sum() for x in lesion]
    assert changed == sorted(changed) and changed[0] > 0
    assert np.array_equal(PERTURBATIONS["ventricle_grow"](np.zeros((32, 32)), 2, seed=0), np.zeros((32, 32)))


def test_mri_niqe_fits_on_real_slices_and_grows_with_noise_and_blur(mri):
    from gate_plugins.quality.niqe import fit_niqe, niqe_score

    train = mri["train_images"]
    model = fit_niqe(train[::2])
    assert model.n_patches >= 40 and model.mean.shape == (36,)
    held = train[1::2][4:12]
    for name in ("gaussian_noise", "blur"):
        p = PERTURBATIONS[name]
        means = [np.mean([niqe_score(im, model) for im in held])]
        means += [np.mean([niqe_score(p(im, s, seed=0), model) for im in held]) for s in (1, 2, 3, 4)]
        assert stats.spearmanr(range(5), means).statistic >= 0.9, (name, means)
    with pytest.raises(ValueError, match="foreground patches"):
        fit_niqe(np.zeros((2, 64, 64)))


def test_label_maps_replace_the_tissue_estimate_when_the_policy_names_the_classes(mri_labelled, tmp_path):
    from gate.imageset import ImageSet
    from gate.validators import CheckContext
    from gate_plugins.quality.validator import QualityParams, QualityValidator

    tr_i, tr_l, te_i, te_l = mri_labelled
    train = ImageSet("train", tuple(f"t{i}" for i in range(len(tr_i))), tr_i, labels=tr_l.astype(np.int64))
    cand = ImageSet("cand", tuple(f"c{i}" for i in range(len(te_i))), te_i, labels=te_l.astype(np.int64))
    ctx = CheckContext(candidate=cand, train=train, holdout=None, seed=0, batch_size=8, cache_dir=tmp_path)
    estimated = QualityValidator().run(ctx, QualityParams(self_test=False)).table
    labelled = QualityValidator().run(ctx, QualityParams(self_test=False,
                                                         tissue_classes={"csf": 1, "gm": 2, "wm": 3})).table
    expected = iqms.all_iqms(te_i[3], te_l[3])
    assert labelled["cnr"][3] == pytest.approx(expected["cnr"]) and labelled["cjv"][3] == pytest.approx(expected["cjv"])
    assert not np.allclose(labelled["cjv"], estimated["cjv"])
    with pytest.raises(ValueError, match="csf, gm and wm"):
        QualityParams(tissue_classes={"csf": 1, "gm": 2})
