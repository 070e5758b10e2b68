"""MSD-layout data sets of the phantom: layout, dataset.json, round trips (nibabel, MONAI), errors."""
import gzip
import json

import nibabel as nib
import numpy as np
import pytest
from monai.transforms import LoadImaged

from fedgin.data import phantom
from fedgin.data.msd import load_nifti, read_dataset
from fedgin.data.phantom import LABELS, case_seeds, make_case, phantom_affine, write_dataset


def monai_load(item: dict) -> dict:
    return LoadImaged(("image", "label"), reader="NibabelReader", image_only=True)(item)


def test_2d_dataset_layout_json_and_round_trips(tmp_path):
    out = write_dataset(tmp_path / "ds", "mri-t2", 3, size=64, seed=7)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]  # no temporary directory left over
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["modality"] == {"0": "MRI"} and meta["numTraining"] == 3
    assert meta["labels"] == {str(k): v for k, v in LABELS.items()} and meta["labels"]["6"] == "gallbladder"
    assert meta["training"][1] == {"image": "./imagesTr/case_001.nii.gz", "label": "./labelsTr/case_001.nii.gz"}
    assert meta["fedgin"]["modality"] == "mri-t2" and meta["fedgin"]["seed"] == 7
    items = read_dataset(out)
    assert len(items) == 3
    for item, seed in zip(items, case_seeds(7, 3), strict=True):
        image, label = make_case("mri-t2", size=64, seed=seed)
        data, affine, _ = load_nifti(item["image"])
        assert data.dtype == np.float32 and data.shape == (64, 64)
        np.testing.assert_array_equal(data, image)
        lab, lab_affine, header = load_nifti(item["label"])
        assert lab.dtype == np.uint8
        np.testing.assert_array_equal(lab, label)
        np.testing.assert_allclose(affine, phantom_affine((64, 64)))
        np.testing.assert_allclose(lab_affine, affine)
        assert nib.aff2axcodes(affine)[:2] == ("P", "L") and header.get_zooms() == (4.5, 4.5)
        loaded = monai_load(item)
        np.testing.assert_array_equal(np.asarray(loaded["image"]), image)
        np.testing.assert_array_equal(np.asarray(loaded["label"]), label)


def test_3d_dataset_round_trips(tmp_path):
    out = write_dataset(tmp_path / "ds3", "ct", 1, size=64, depth=8, seed=1)
    item = read_dataset(out)[0]
    image, label = make_case("ct", size=64, depth=8, seed=case_seeds(1, 1)[0])
    data, affine, header = load_nifti(item["image"])
    np.testing.assert_array_equal(data, image)
    assert nib.aff2axcodes(affine) == ("S", "P", "L") and header.get_zooms() == (24.0, 4.5, 4.5)
    loaded = monai_load(item)
    np.testing.assert_array_equal(np.asarray(loaded["label"]), label)
    assert json.loads((out / "dataset.json").read_text())["modality"] == {"0": "CT"}


def test_case_seeds_depend_on_seed_and_index_only():
    assert case_seeds(3, 5)[:2] == case_seeds(3, 2)
    assert not set(case_seeds(3, 5)) & set(case_seeds(4, 5))


def test_existing_directory_needs_overwrite_and_a_dataset(tmp_path):
    out = write_dataset(tmp_path / "ds", "ct", 1, size=64)
    with pytest.raises(ValueError, match="not empty"):
        write_dataset(out, "ct", 2, size=64)
    write_dataset(out, "ct", 2, size=64, overwrite=True)
    assert len(read_dataset(out)) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]
    user = tmp_path / "user"
    user.mkdir()
    (user / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="refusing"):
        write_dataset(user, "ct", 1, size=64, overwrite=True)
    assert (user / "notes.txt").read_text() == "mine"


def test_failure_leaves_nothing(tmp_path, monkeypatch):
    calls = []

    def failing_case(*args):
        calls.append(args)
        if len(calls) == 2:
            raise RuntimeError("disk full")
        return make_case(*args)

    monkeypatch.setattr(phantom, "make_case", failing_case)
    with pytest.raises(RuntimeError):
        write_dataset(tmp_path / "ds", "ct", 3, size=64)
    assert list(tmp_path.iterdir()) == []


def test_read_dataset_errors_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing"):
        read_dataset(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty"):
        read_dataset(tmp_path / "empty")
    (tmp_path / "nojson").mkdir()
    (tmp_path / "nojson" / "x.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match="dataset.json"):
        read_dataset(tmp_path / "nojson")
    out = write_dataset(tmp_path / "ds", "ct", 2, size=64)
    (out / "labelsTr" / "case_001.nii.gz").unlink()
    with pytest.raises(FileNotFoundError, match="case_001"):
        read_dataset(out)
    (out / "dataset.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_dataset(out)


def test_load_nifti_rejects_corrupt_and_non_image_files(tmp_path):
    text = tmp_path / "notes.nii.gz"
    text.write_text("not an image")
    good = write_dataset(tmp_path / "ds", "ct", 1, size=64) / "imagesTr" / "case_000.nii.gz"
    truncated = tmp_path / "truncated.nii.gz"
    truncated.write_bytes(good.read_bytes()[:-200])
    raw = tmp_path / "raw.nii"
    raw.write_bytes(gzip.decompress(good.read_bytes())[:400])
    for path in (text, truncated, raw):
        with pytest.raises(ValueError, match=path.name) as err:
            load_nifti(path)
        assert "\n" not in str(err.value)
    with pytest.raises(FileNotFoundError, match="absent"):
        load_nifti(tmp_path / "absent.nii.gz")
