"""The synthetic abdominal phantom: anatomy, orientation, determinism and the CT/MRI intensity models."""
from itertools import combinations

import numpy as np
import pytest

from fedgin.data.intensity import MODALITIES, TISSUE_IDS, nominal_intensities, render
from fedgin.data.phantom import GALLBLADDER_ABSENT, LABELS, make_anatomy, make_case, phantom_affine


def centroid_world(label: np.ndarray, organ: int, affine: np.ndarray) -> np.ndarray:
    index = np.argwhere(label == organ).mean(axis=0)
    return affine[:3, : label.ndim] @ index + affine[:3, 3]


def orderings(a: dict, b: dict, min_a: float, min_rel_b: float) -> tuple[int, int]:
    """(agreeing, disagreeing) label pairs between two intensity tables, counting only clear differences."""
    agree = disagree = 0
    for i, j in combinations(a, 2):
        da, db = a[i] - a[j], b[i] - b[j]
        if abs(da) >= min_a and abs(db) >= min_rel_b * max(abs(b[i]), abs(b[j])):
            agree += np.sign(da) == np.sign(db)
            disagree += np.sign(da) != np.sign(db)
    return agree, disagree


def organ_medians(image: np.ndarray, label: np.ndarray) -> dict[int, float]:
    return {k: float(np.median(image[label == k])) for k in range(1, 7) if (label == k).sum() >= 5}


@pytest.mark.parametrize("modality", MODALITIES)
def test_case_types_shapes_and_labels(modality):
    image, label = make_case(modality, size=96, seed=2)
    assert image.shape == label.shape == (96, 96)
    assert image.dtype == np.float32 and label.dtype == np.uint8
    assert np.isfinite(image).all()
    assert set(np.unique(label)) <= set(LABELS)
    assert {0, 1, 2, 3, 4, 5} <= set(np.unique(label))
    if modality != "ct":
        assert image.min() >= 0  # magnitude images


def test_anatomy_is_plausible_and_oriented():
    """Liver largest, on the patient's right (image left, +x in RAS), spleen left, kidneys either side."""
    for seed in range(6):
        _, label = make_anatomy(96, seed=seed)
        areas = np.bincount(label.ravel(), minlength=7)
        assert all(areas[1] > areas[k] for k in range(2, 7)), areas
        assert 0 < areas[5] < areas[2]  # the pancreas is small
        cols = {k: np.argwhere(label == k)[:, 1].mean() for k in (1, 2, 3, 4)}
        assert cols[1] < 48 < cols[2] and cols[3] < 48 < cols[4]
        affine = phantom_affine(label.shape)
        assert centroid_world(label, 1, affine)[0] > 0 > centroid_world(label, 2, affine)[0]
        assert centroid_world(label, 3, affine)[0] > 0 > centroid_world(label, 4, affine)[0]


def test_gallbladder_is_absent_in_some_cases():
    present = [6 in make_anatomy(64, seed=s)[1] for s in range(40)]
    absent = present.count(False)
    assert GALLBLADDER_ABSENT > 0 and 2 <= absent <= 20, absent


def test_same_seed_same_case_other_seed_other_case():
    a_img, a_lab = make_case("mri-t2", size=64, seed=5)
    b_img, b_lab = make_case("mri-t2", size=64, seed=5)
    np.testing.assert_array_equal(a_img, b_img)
    np.testing.assert_array_equal(a_lab, b_lab)
    c_img, c_lab = make_case("mri-t2", size=64, seed=6)
    assert not np.array_equal(a_lab, c_lab) and not np.array_equal(a_img, c_img)


def test_one_seed_one_anatomy_across_modalities():
    labels = [make_case(m, size=64, seed=9)[1] for m in MODALITIES]
    np.testing.assert_array_equal(labels[0], labels[1])
    np.testing.assert_array_equal(labels[0], labels[2])


def test_volume_shape_and_variation_along_z():
    image, label = make_case("ct", size=64, depth=16, seed=1)
    assert image.shape == label.shape == (16, 64, 64)
    liver = (label == 1).sum(axis=(1, 2))
    assert liver[8:].sum() > liver[:8].sum() > 0  # slice 0 is inferior: the liver lies high
    assert len(set(liver.tolist())) > 4  # organs change shape from slice to slice
    assert {1, 2, 3, 4, 5} <= set(np.unique(label))


@pytest.mark.parametrize("bad", [{"modality": "pet"}, {"modality": "CT"}])
def test_unknown_modality_is_named(bad):
    with pytest.raises(ValueError, match=bad["modality"]):
        make_case(bad["modality"], size=64)


@pytest.mark.parametrize("kwargs", [{"size": 16}, {"size": 64.0}, {"depth": 2}, {"seed": -1}])
def test_bad_geometry_is_rejected(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        make_case("ct", **{"size": 64, **kwargs})


def test_nominal_ct_to_mri_mapping_is_not_monotonic():
    ct = dict(enumerate(nominal_intensities("ct").values()))
    for modality in ("mri-t1", "mri-t2"):
        agree, disagree = orderings(ct, dict(enumerate(nominal_intensities(modality).values())), 1.0, 0.01)
        assert agree > 0 and disagree > 0, modality


@pytest.mark.parametrize("modality", ["mri-t1", "mri-t2"])
def test_rendered_tissue_intensities_are_not_a_monotonic_map_of_ct(modality):
    """In the final images (bias, gain and noise on) some tissue pairs keep CT's order and some swap it."""
    names = ("air", "fat", "muscle", "liver", "spleen", "kidney_cortex", "pancreas", "fluid")
    for seed in range(3):
        tissue, _ = make_anatomy(96, seed=seed)
        medians = []
        for m in ("ct", modality):
            image = make_case(m, size=96, seed=seed)[0]
            medians.append({n: float(np.median(image[tissue == TISSUE_IDS[n]])) for n in names})
        agree, disagree = orderings(*medians, min_a=8.0, min_rel_b=0.15)
        assert agree > 0 and disagree > 0, (seed, medians)


def test_t2_liver_darker_than_spleen_unlike_ct_with_bias_and_noise():
    for seed in range(3):
        ct_img, label = make_case("ct", size=96, seed=seed)
        t2_img, _ = make_case("mri-t2", size=96, seed=seed)
        ct, t2 = organ_medians(ct_img, label), organ_medians(t2_img, label)
        assert ct[1] > ct[2] and t2[1] < t2[2]


def test_ct_noise_level_in_air():
    tissue, _ = make_anatomy(96, seed=4)
    assert (tissue[:6] == TISSUE_IDS["air"]).all()  # the top rows lie in front of the body
    air = render(tissue, "ct", np.random.default_rng(0))[:6]
    assert abs(air.mean() + 1000) < 3 and 8 < air.std() < 22
    clean = render(tissue, "ct", np.random.default_rng(0), noise=False)[:6]
    assert clean.std() < 1


def test_mri_has_rician_background_and_smooth_bias_field():
    tissue, _ = make_anatomy(96, seed=4)
    assert (tissue[:6] == TISSUE_IDS["air"]).all()
    background = render(tissue, "mri-t1", np.random.default_rng(1))[:6]
    assert background.min() > 0  # magnitude of complex noise
    assert 1.75 < background.mean() / background.std() < 2.1  # Rayleigh: sqrt(pi/2) / sqrt(2 - pi/2) = 1.91

    with_bias = render(tissue, "mri-t1", np.random.default_rng(1), noise=False)
    without = render(tissue, "mri-t1", np.random.default_rng(1), bias=False, noise=False)
    body = tissue != TISSUE_IDS["air"]
    ratio = np.where(body, with_bias / np.where(body, without, 1), np.nan)
    assert np.nanmax(ratio) / np.nanmin(ratio) > 1.1  # a real intensity inhomogeneity
    step = np.nanmedian(np.abs(np.diff(ratio, axis=1)) / ratio[:, 1:])
    assert step < 0.01  # that varies smoothly
