"""The rest of MRIQC's structural measures (noise, INU sd, QI2, rPVE, TPM overlap, summary statistics) on real
MRI they were not designed on: Colin27 with and without skull (Debian's mricron-data), slices and a volume.
Each test is about what the measure must see, sample by sample, or what it must not depend on."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from numpy.polynomial import legendre
from scipy import ndimage as ndi

from gate.imageio import read_folder
from gate.policy import Preprocess
from gate_plugins.quality import iqms
from gate_plugins.quality.sensitivity import monotonic_share, pooled_rho

TEMPLATES = Path("/usr/share/mricron/templates")


def _read(name: str, tmp: Path, spacing: float) -> np.ndarray:
    src = TEMPLATES / f"{name}.nii.gz"
    assert src.exists(), f"{src}: install Debian's mricron-data (.ci/run does)"
    shutil.copy(src, tmp / src.name)
    return read_folder(tmp, name, Preprocess(spacing=spacing, size=(112, 112))).images.astype(np.float64)


@pytest.fixture(scope="module")
def colin(tmp_path_factory):
    """Eight mid-brain axial slices of Colin27 at 2 mm, with skull (ch2) and skull-stripped (ch2bet)."""
    out = {}
    for name in ("ch2", "ch2bet"):
        images = _read(name, tmp_path_factory.mktemp(name), 2.0)
        out[name] = images[np.linspace(0.3 * len(images), 0.7 * len(images), 8).astype(int)]
    return out


def _rician(img: np.ndarray, sd: float, rng: np.random.Generator) -> np.ndarray:
    s = sd * img.max()
    return np.sqrt((img + rng.normal(0, s, img.shape)) ** 2 + rng.normal(0, s, img.shape) ** 2)


def _polynomial_field(shape, rng: np.random.Generator) -> np.ndarray:
    """A smooth log field of a kind the self-test does not draw (a random cubic in Legendre polynomials)."""
    yy, xx = np.meshgrid(np.linspace(-1, 1, shape[0]), np.linspace(-1, 1, shape[1]), indexing="ij")
    c = rng.normal(size=(4, 4))
    c[0, 0] = 0
    c[np.add.outer(range(4), range(4)) > 3] = 0
    f = legendre.legval2d(yy, xx, c)
    return (f - f.mean()) / f.std()


def _series(slices, degrade, levels, measure) -> list[np.ndarray]:
    """measure(slice) at severity 0 (clean) then each level, for every slice: levels[s][i]."""
    out = [np.array([measure(x) for x in slices])]
    for s, level in enumerate(levels, 1):
        out.append(np.array([measure(degrade(x, level, np.random.default_rng([i, s]))) for i, x in enumerate(slices)]))
    return out


def _measure(name):
    return lambda x: iqms.all_iqms(x)[name]


def test_noise_level_ranks_rician_noise_slice_by_slice_and_has_no_units(colin):
    levels = _series(colin["ch2bet"], _rician, (0.02, 0.04, 0.06, 0.1), _measure("noise"))
    assert pooled_rho(levels) >= 0.9 and monotonic_share(levels, +1) == 1.0
    x = colin["ch2"][3]
    assert iqms.all_iqms(x * 1000)["noise"] == pytest.approx(iqms.all_iqms(x)["noise"], rel=1e-6)


def test_inu_sd_ranks_a_bias_field_slice_by_slice(colin):
    """N4 at its defaults (one B-spline span, narrow FWHM, the head's range mapped to [1, 2]) ranked a bias
    field at rho 0.5-0.6 per sample; the field's log spread with the slice settings ranks it."""
    def bias(x, amplitude, rng):
        return x * np.exp(amplitude * _polynomial_field(x.shape, rng))

    levels = _series(colin["ch2bet"], bias, (0.1, 0.2, 0.3, 0.4), _measure("inu_sd"))
    assert pooled_rho(levels) >= 0.8, levels
    assert all(np.isfinite(v).all() and (v > 0).all() for v in levels)


def test_qi2_sees_structure_in_the_air_and_not_units(colin):
    noisy = _rician(colin["ch2"][4], 0.02, np.random.default_rng(0))  # air: Rician noise only, as a scanner's

    def qi2(x):
        return iqms.qi2(x, iqms.head_mask(x))

    clean = qi2(noisy)
    assert 0 <= clean < 0.02
    assert qi2(noisy * 1000) == pytest.approx(clean, rel=1e-6)  # fitted on the air divided by its own scale
    # stored as 8-bit (a PNG read as value / 255): the air sits on a few levels, which is no misfit
    assert qi2(np.round(noisy / noisy.max() * 255) / 255) < 0.02
    shift = noisy.shape[0] // 4
    ghosts = [qi2(noisy + g * (np.roll(noisy, shift, 0) + np.roll(noisy, -shift, 0)) / 2) for g in (0.1, 0.2, 0.3)]
    assert clean < ghosts[0] < ghosts[1] < ghosts[2]
    # a skull-stripped slice has no noise in its air to fit: undefined, never a fit of zeros
    assert qi2(colin["ch2bet"][4]) == iqms.UNDEFINED


def test_rpve_rises_as_noise_mixes_the_tissue_classes(colin):
    for tissue in ("gm", "wm"):
        levels = _series(colin["ch2bet"], _rician, (0.02, 0.04, 0.06), _measure(f"rpve_{tissue}"))
        # the worst noise raises it on every slice, step by step on most (the self-test's per-sample bar is half);
        # across slices their anatomy spreads it (pooled rho about 0.7): it is no per-sample noise detector
        assert (levels[-1] > levels[0]).all() and monotonic_share(levels, +1) >= 0.5 and pooled_rho(levels) > 0.5


def test_tpm_overlap_drops_when_the_anatomy_does_not_match_its_labels(colin):
    """With a label map, TPM overlap compares the tissue classes the image's intensities give with the labels:
    the same labels shifted by a few voxels (v4 of the demo: anatomy that does not match its label map) score
    lower. Without labels it is undefined."""
    x = colin["ch2bet"][4]
    t = iqms.estimate_tissues(x)
    labels = np.select([t.csf, t.gm, t.wm], [1, 2, 3], 0)
    overlaps = [iqms.all_iqms(x, np.roll(labels, shift, axis=1)) for shift in (0, 2, 4, 8)]
    for k in ("csf", "gm", "wm"):
        values = [o[f"tpm_{k}"] for o in overlaps]
        assert 0.3 < values[0] <= 1 and values == sorted(values, reverse=True) and values[-1] < values[0] / 2, (k, values)
    assert iqms.all_iqms(x)["tpm_wm"] == iqms.UNDEFINED


def test_summary_statistics_describe_each_tissue_and_the_air(colin):
    x = colin["ch2"][4]
    values = iqms.all_iqms(x)
    t = iqms.estimate_tissues(x)
    wm = x[ndi.binary_erosion(t.wm)]
    assert values["summary_wm_mean"] == pytest.approx(wm.mean())
    assert values["summary_wm_n"] == wm.size
    assert values["summary_wm_p05"] < values["summary_wm_median"] < values["summary_wm_p95"]
    assert values["summary_csf_mean"] < values["summary_gm_mean"] < values["summary_wm_mean"]
    air = x[~ndi.binary_dilation(t.head, iterations=3)]
    assert values["summary_bg_n"] == air.size and values["summary_bg_mean"] == pytest.approx(air.mean())
    assert set(iqms.SUMMARIES) <= set(values) and all(np.isfinite(v) for v in values.values())


def test_every_measure_works_on_a_volume():
    """The measures are not slice-bound: on whole Colin27 volumes (with noise in the air, and with labels) each is
    defined where its inputs exist, FWHM averages three axes and blurring the volume raises it."""
    import nibabel as nib

    vol = np.asarray(nib.load(TEMPLATES / "ch2bet.nii.gz").dataobj, dtype=np.float64)[::3, ::3, ::3]
    vol /= vol.max()
    values = iqms.all_iqms(vol)
    assert all(np.isfinite(v) for v in values.values()), values
    # zeroed air and no labels: exactly these are undefined
    assert {k for k, v in values.items() if v == iqms.UNDEFINED} == {"fber", "qi2", "tpm_csf", "tpm_gm", "tpm_wm"}
    assert values["fwhm"] > 0 and values["inu_sd"] > 0 and values["rpve_wm"] > 0 and values["noise"] > 0
    assert iqms.all_iqms(ndi.gaussian_filter(vol, 1.5))["fwhm"] > values["fwhm"]
    noisy = _rician(vol, 0.02, np.random.default_rng(0))
    assert 0 <= iqms.all_iqms(noisy)["qi2"] < 0.05
    t = iqms.estimate_tissues(vol)
    labelled = iqms.all_iqms(vol, np.select([t.csf, t.gm, t.wm], [1, 2, 3], 0))
    assert all(0 < labelled[f"tpm_{k}"] <= 1 for k in ("csf", "gm", "wm")), labelled


def test_bg_energy_weighs_ghosts_by_their_strength(colin):
    """QI1 counts the air a ghost covers, which stops growing once the replica is in place; the air's energy
    over the head's grows with the ghost's strength, slice by slice, and has no units."""
    def ghost(x, strength, _rng):
        shift = x.shape[0] // 4
        return x + strength * (np.roll(x, shift, 0) + np.roll(x, -shift, 0)) / 2

    levels = _series(colin["ch2bet"], ghost, (0.05, 0.1, 0.2, 0.3), _measure("bg_energy"))
    assert (levels[0] == 0).all()  # nothing in a skull-stripped slice's air: 0, where FBER would be infinite
    assert pooled_rho(levels) >= 0.9 and monotonic_share(levels, +1) == 1.0
    x = ghost(colin["ch2"][3], 0.2, None)
    assert iqms.all_iqms(x * 1000)["bg_energy"] == pytest.approx(iqms.all_iqms(x)["bg_energy"], rel=1e-6)
