"""Segmentation building blocks: labelled synthetic subjects, Dice/HD95 per case with their
conventions, bootstrap intervals, and a deterministic MONAI UNet that learns the shipped anatomy."""

import numpy as np
import pytest

from gate_plugins.segmentation import metrics as M


def _disc(shape, cy, cx, r, label):
    yy, xx = np.indices(shape)
    return np.where((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r, label, 0).astype(np.uint8)


def test_dice_and_hd95_on_hand_made_masks():
    truth = np.stack([_disc((64, 64), 32, 32, 10, 1) + _disc((64, 64), 10, 10, 4, 2) * 0])
    same = M.per_case(truth, truth, 3)
    assert same["dice"][0, 0] == pytest.approx(1.0) and same["hd95"][0, 0] == pytest.approx(0.0)
    # class 2 absent from both: nothing to find, nothing found
    assert same["dice"][0, 1] == 1.0 and same["hd95"][0, 1] == 0.0
    shifted = np.roll(truth, 4, axis=2)
    s = M.per_case(shifted, truth, 3)
    assert 0.5 < s["dice"][0, 0] < 0.9 and 3.0 <= s["hd95"][0, 0] <= 4.5
    # a class predicted where there is none: Dice 0 and HD95 the diagonal, never NaN
    spurious = truth + _disc((64, 64), 55, 55, 3, 2) * (truth == 0)
    sp = M.per_case(spurious.astype(np.uint8), truth, 3)
    assert sp["dice"][0, 1] == 0.0 and sp["hd95"][0, 1] == pytest.approx(np.hypot(64, 64))
    with pytest.raises(ValueError, match="differ in shape"):
        M.per_case(truth[:, :32], truth, 3)


def test_bootstrap_intervals_and_the_paired_drop():
    rng = np.random.default_rng(0)
    base = {"dice": rng.uniform(0.7, 0.9, (40, 3)), "hd95": rng.uniform(1, 3, (40, 3))}
    same = M.summarise(base, base, ["a", "b", "c"], seed=1)
    assert same["dice_drop"] == 0 and same["dice_drop_lower"] == 0 and same["dice_drop_upper"] == 0
    assert same["dice_mean_lower"] < same["dice_mean"] < same["dice_mean_upper"]
    worse = {"dice": base["dice"] - 0.1, "hd95": base["hd95"] + 1}
    w = M.summarise(worse, base, ["a", "b", "c"], seed=1)
    assert w["dice_drop"] == pytest.approx(0.1) and w["hd95_increase"] == pytest.approx(1.0)
    # the paired interval is tight although the cases themselves spread widely
    assert w["dice_drop_upper"] - w["dice_drop_lower"] < 1e-9 < w["dice_mean_upper"] - w["dice_mean_lower"]


def test_labelled_subjects_carry_their_own_anatomy():
    from gate_plugins.mri.subjects import labelled_subject_slices, subject_slices

    images, labels, ids = labelled_subject_slices([3], 6)
    assert np.array_equal(images, subject_slices([3], 6)[0]) and labels.dtype == np.uint8
    assert set(np.unique(labels)) == {0, 1, 2, 3} and len(ids) == 6
    means = [images[labels == c].mean() for c in (1, 2, 3)]
    assert means[0] < means[1] < means[2]  # T1: CSF dark, GM grey, WM bright
    assert images[labels == 0].mean() < 0.05
    other = labelled_subject_slices([4], 6)[1]
    assert (other != labels).mean() > 0.05  # each subject's labels follow its own deformation


def test_monai_unet_is_deterministic_and_learns_the_tissues(mri_labelled):
    from gate_plugins.segmentation.monai_backend import predict, train_unet

    tr_i, tr_l, te_i, te_l = mri_labelled
    kw = dict(epochs=12, batch_size=8, lr=1e-3, channels=(8, 16, 32), seed=0)
    a = predict(train_unet(tr_i, tr_l, 4, **kw), te_i)
    b = predict(train_unet(tr_i, tr_l, 4, **kw), te_i)
    assert np.array_equal(a, b)
    dice = M.per_case(a, te_l, 4)["dice"].mean(0)
    assert dice[1] > 0.6 and dice[2] > 0.6, dice  # GM and WM learnt in a few epochs
    from gate_plugins.segmentation.monai_backend import TimeBudgetExceeded

    with pytest.raises(TimeBudgetExceeded, match="time budget"):
        train_unet(tr_i, tr_l, 4, **{**kw, "epochs": 50}, deadline=0.0)


def test_monai_unet_takes_slices_its_downsamplings_do_not_divide():
    """A 1 mm axial slice of Colin27 is 217x181: three stride-2 levels give the decoder a map one pixel off
    its skip connection. The back end pads to a divisible size and crops the prediction back."""
    from gate_plugins.segmentation.monai_backend import predict, train_unet

    rng = np.random.default_rng(0)
    images = rng.random((4, 37, 53)).astype(np.float32)
    labels = (images > 0.5).astype(np.int64)
    net = train_unet(images, labels, 2, epochs=1, batch_size=2, lr=1e-3, channels=(4, 8, 16, 32), seed=0)
    out = predict(net, images)
    assert out.shape == images.shape and set(np.unique(out)) <= {0, 1}
