"""Loading a site: MSD layout, intensity normalization per modality, label maps, and the bad-input errors."""
import json
import warnings

import nibabel as nib
import numpy as np
import pytest
import torch

from fedgin.config import DataConfig, SiteConfig
from fedgin.train.data import list_cases, load_source, split, training_tensors

LABELS = {"0": "background", "1": "liver", "2": "spleen", "7": "heart"}


def write_msd(root, images, labels, dataset_labels=LABELS):
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    items = []
    for i, (img, lab) in enumerate(zip(images, labels, strict=True)):
        nib.save(nib.Nifti1Image(np.asarray(img, np.float32), np.eye(4)), root / f"imagesTr/case_{i:03d}.nii.gz")
        nib.save(nib.Nifti1Image(np.asarray(lab, np.uint8), np.eye(4)), root / f"labelsTr/case_{i:03d}.nii.gz")
        items.append({"image": f"./imagesTr/case_{i:03d}.nii.gz", "label": f"./labelsTr/case_{i:03d}.nii.gz"})
    (root / "dataset.json").write_text(json.dumps({"labels": dataset_labels, "training": items}))
    return root


def volume(rng, value=0):
    img = rng.normal(0, 1, (16, 16, 4)).astype(np.float32) + value
    lab = np.zeros((16, 16, 4), np.uint8)
    lab[2:8, 2:8] = 1
    lab[10:14, 10:14] = 2
    lab[0, 0] = 7
    return img, lab


def data_cfg(**kw):
    return DataConfig(size=8, organs=["liver", "spleen"], **kw)


def test_ct_window_mri_percentiles_and_label_map(tmp_path):
    rng = np.random.default_rng(0)
    img, lab = volume(rng)
    img[:8] = -1000  # air, below the window
    img[8:] = 1000  # bone, above it
    img[8:, :, 0] = 50  # one soft-tissue slab
    ct = write_msd(tmp_path / "ct", [img], [lab])
    (case,) = load_source(SiteConfig("a", "ct", data_dir=str(ct)), data_cfg())
    assert case.image.shape == (1, 8, 8, 4) and case.image.dtype == torch.float32
    assert case.image[0, :4].max() == 0 and case.image[0, 4:, :, 1:].min() == 1
    assert torch.allclose(case.image[0, 4:, :, 0], torch.tensor(250 / 500))
    # liver -> 1, spleen -> 2; heart is not a trained organ -> background
    assert set(case.label.unique().tolist()) == {0, 1, 2} and case.label.dtype == torch.uint8

    mri = write_msd(tmp_path / "mri", [img * 3 + 7], [lab])
    (case,) = load_source(SiteConfig("m", "mri-t2", data_dir=str(mri), label_map={0: "background", 1: "spleen",
                                                                                2: "background", 7: "background"}),
                          data_cfg())
    assert 0 <= case.image.min() and case.image.max() <= 1 and case.image.max() == 1
    assert set(case.label.unique().tolist()) == {0, 2}  # the explicit map: data set's 1 is fedgin's spleen
    # a map without 0: 0 is background (the MSD layout's); another id it leaves out is still an error
    implied = SiteConfig("m", "mri-t2", data_dir=str(mri), label_map={1: "spleen", 2: "liver", 7: "background"})
    (case,) = load_source(implied, data_cfg())
    assert set(case.label.unique().tolist()) == {0, 1, 2}
    with pytest.raises(ValueError, match=r"label values \[7\] are not in the site's label map"):
        load_source(SiteConfig("m", "mri-t2", data_dir=str(mri), label_map={1: "spleen", 2: "liver"}), data_cfg())


def test_training_tensors_2d_slices_and_3d_volumes(tmp_path):
    rng = np.random.default_rng(1)
    root = write_msd(tmp_path / "ct", *zip(volume(rng), volume(rng), strict=True))
    cases = load_source(SiteConfig("a", "ct", data_dir=str(root)), data_cfg())
    x, y = training_tensors(cases, "2d")
    assert x.shape == (8, 1, 8, 8) and y.shape == (8, 1, 8, 8)
    assert torch.equal(x[5], cases[1].image[..., 1])  # slices of case 1 follow the 4 of case 0
    cases3 = load_source(SiteConfig("a", "ct", data_dir=str(root)), data_cfg(dims="3d", depth=2))
    x, y = training_tensors(cases3, "3d")
    assert x.shape == (2, 1, 8, 8, 2) and y.shape == (2, 1, 8, 8, 2)


def test_a_case_limit_below_the_data_set_warns(tmp_path):
    rng = np.random.default_rng(4)
    root = write_msd(tmp_path / "ds", *zip(*(volume(rng) for _ in range(3)), strict=True))
    with pytest.warns(UserWarning, match="training on the first 2 of its 3 cases"):
        assert [c["name"] for c in list_cases(root, 2)] == ["case_000", "case_001"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(list_cases(root, 3)) == len(list_cases(root)) == 3


def test_split_keeps_patients_whole():
    train, val = split(list("abcd"), 1, "site x")
    assert (train, val) == (list("abc"), ["d"])
    with pytest.raises(ValueError, match="site x: 1 case"):
        split(["a"], 1, "site x")


def test_bad_input_errors_name_the_file(tmp_path):
    rng = np.random.default_rng(2)
    with pytest.raises(FileNotFoundError, match="missing"):
        list_cases(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty"):
        list_cases(tmp_path / "empty")
    root = write_msd(tmp_path / "none", [], [])
    with pytest.raises(ValueError, match="none/dataset.json lists no training cases"):
        list_cases(root)
    img, lab = volume(rng)
    root = write_msd(tmp_path / "shape", [img], [lab[:, :, :3]])
    with pytest.raises(ValueError, match=r"case_000.nii.gz: label shape \(16, 16, 3\) differs"):
        list_cases(root)
    root = write_msd(tmp_path / "gone", [img], [lab])
    (root / "labelsTr/case_000.nii.gz").unlink()
    with pytest.raises(FileNotFoundError, match="labelsTr/case_000.nii.gz"):
        list_cases(root)
    lab9 = lab.copy()
    lab9[5, 5, 0] = 9
    root = write_msd(tmp_path / "outside", [img], [lab9])
    with pytest.raises(ValueError, match=r"labelsTr/case_000.nii.gz: label values \[9\] are not in"):
        load_source(SiteConfig("a", "ct", data_dir=str(root)), data_cfg())


def test_unreadable_files_and_bad_values_are_errors_naming_the_file(tmp_path):
    rng = np.random.default_rng(3)
    img, lab = volume(rng)
    site = lambda root: SiteConfig("a", "ct", data_dir=str(root))  # noqa: E731
    root = write_msd(tmp_path / "text", [img], [lab])
    (root / "imagesTr/case_000.nii.gz").write_text("not an image")
    with pytest.raises(ValueError, match="imagesTr/case_000.nii.gz is not a readable NIfTI image"):
        list_cases(root)
    root = write_msd(tmp_path / "truncated", [img], [lab])  # the header reads, the voxels do not
    path = root / "imagesTr/case_000.nii.gz"
    path.write_bytes(path.read_bytes()[:-200])
    list_cases(root)
    with pytest.raises(ValueError, match="imagesTr/case_000.nii.gz is not a readable NIfTI image"):
        load_source(site(root), data_cfg())
    labf = lab.astype(np.float32)
    for name, image, label, needle in [
        ("nan", np.where(lab == 1, np.nan, img), lab, "imagesTr/case_000.nii.gz: the image has non-finite values"),
        ("inf", np.where(lab == 2, np.inf, img), lab, "imagesTr/case_000.nii.gz: the image has non-finite values"),
        ("nanlabel", img, np.where(lab == 1, np.nan, labf), "labelsTr/case_000.nii.gz: the label has non-finite"),
        ("negative", img, np.where(lab == 1, -1.0, labf), r"labelsTr/case_000.nii.gz: negative label values \[-1\]"),
    ]:
        root = tmp_path / name
        write_msd(root, [img], [lab])
        nib.save(nib.Nifti1Image(np.asarray(image, np.float32), np.eye(4)), root / "imagesTr/case_000.nii.gz")
        nib.save(nib.Nifti1Image(np.asarray(label, np.float32), np.eye(4)), root / "labelsTr/case_000.nii.gz")
        with pytest.raises(ValueError, match=needle):
            load_source(site(root), data_cfg())
