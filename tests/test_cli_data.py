"""``fedgin synth`` and ``fedgin augment`` through the CLI entry point."""
import matplotlib.image
import numpy as np
import pytest
import torch

from fedgin import cli
from fedgin.data.msd import load_nifti, read_dataset, save_nifti
from fedgin.params import GINParams
from fedgin.reference import reference_apply


@pytest.fixture(autouse=True)
def data_commands_only(monkeypatch):
    """Build the parser from the two commands under test, whatever else the CLI lists."""
    assert {"synth", "augment"} <= set(cli.COMMANDS)
    monkeypatch.setattr(cli, "COMMANDS", ("synth", "augment"))


@pytest.fixture
def ct_slice(tmp_path):
    assert cli.main(["synth", str(tmp_path / "ds"), "--cases", "1", "--size", "64", "--seed", "3"]) == 0
    return read_dataset(tmp_path / "ds")[0]["image"]


def test_synth_writes_2d_and_3d_datasets(tmp_path, capsys):
    assert cli.main(["synth", str(tmp_path / "t2"), "--modality", "mri-t2", "--cases", "2", "--size", "64"]) == 0
    items = read_dataset(tmp_path / "t2")
    assert len(items) == 2 and load_nifti(items[0]["image"])[0].shape == (64, 64)
    assert cli.main(["synth", str(tmp_path / "v"), "--cases", "1", "--size", "64", "--3d", "--depth", "8"]) == 0
    assert load_nifti(read_dataset(tmp_path / "v")[0]["label"])[0].shape == (8, 64, 64)
    assert cli.main(["synth", str(tmp_path / "t2"), "--cases", "1", "--size", "64"]) == 2
    assert "not empty" in capsys.readouterr().err
    assert len(read_dataset(tmp_path / "t2")) == 2


@pytest.mark.parametrize("shared", [False, True])
def test_augment_writes_seeded_gin_samples_and_preview(tmp_path, ct_slice, shared):
    out = tmp_path / "aug"
    argv = ["augment", ct_slice, str(out), "--n", "3", "--seed", "5", "--backend", "reference", "--normalize", "none"]
    assert cli.main(argv + (["--shared"] if shared else [])) == 0
    assert sorted(p.name for p in out.iterdir()) == ["gin_000.nii.gz", "gin_001.nii.gz", "gin_002.nii.gz",
                                                     "preview.png"]
    x, affine, _ = load_nifti(ct_slice)
    params = GINParams.draw(3, in_channels=1, per_sample=not shared, generator=torch.Generator().manual_seed(5))
    expected = reference_apply(torch.from_numpy(x).expand(3, 1, *x.shape).contiguous(), params)[:, 0].numpy()
    for i in range(3):
        sample, sample_affine, header = load_nifti(out / f"gin_{i:03d}.nii.gz")
        assert sample.dtype == np.float32 and sample.shape == x.shape
        np.testing.assert_allclose(sample, expected[i], rtol=1e-5, atol=1e-3)
        np.testing.assert_allclose(sample_affine, affine)
    assert not np.allclose(expected[0], expected[1])
    png = matplotlib.image.imread(out / "preview.png")
    assert png.ndim == 3 and png.shape[0] > 50 and png.shape[1] > 200 and png.std() > 0


def test_augment_a_volume(tmp_path):
    assert cli.main(["synth", str(tmp_path / "v"), "--modality", "mri-t1", "--cases", "1", "--size", "64", "--3d",
                     "--depth", "8"]) == 0
    image = read_dataset(tmp_path / "v")[0]["image"]
    assert cli.main(["augment", image, str(tmp_path / "aug"), "--n", "2", "--normalize", "zscore",
                     "--kernel-sizes", "1", "3"]) == 0
    sample = load_nifti(tmp_path / "aug" / "gin_001.nii.gz")[0]
    assert sample.shape == (8, 64, 64)
    assert cli.main(["augment", image, str(tmp_path / "aug01"), "--n", "1"]) == 0  # default: min-max to [0, 1]
    x = load_nifti(image)[0]
    x01 = (x - x.min()) / (x.max() - x.min())
    norm = np.linalg.norm(load_nifti(tmp_path / "aug01" / "gin_000.nii.gz")[0])
    assert abs(norm - np.linalg.norm(x01)) < 1e-3 * np.linalg.norm(x01)
    assert abs(np.linalg.norm(sample) - np.sqrt(sample.size)) < 1e-2 * np.sqrt(sample.size)  # z-scored norm
    assert (tmp_path / "aug" / "preview.png").is_file()


def test_augment_bad_input_exits_2_and_leaves_nothing(tmp_path, capsys):
    corrupt = tmp_path / "corrupt.nii.gz"
    corrupt.write_bytes(b"\x1f\x8b garbage")
    out = tmp_path / "out"
    assert cli.main(["augment", str(corrupt), str(out)]) == 2
    err = capsys.readouterr().err
    assert "corrupt.nii.gz" in err and err.count("\n") == 1
    assert not out.exists()
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    assert cli.main(["augment", str(tmp_path / "missing.nii.gz"), str(out)]) == 2
    assert "missing.nii.gz" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["mine.txt"]


@pytest.mark.parametrize("array, flags, needle", [
    (np.where(np.eye(6, 7) > 0, np.nan, 1.0), [], "image contains non-finite values"),
    (np.full((6, 7, 4), np.inf), [], "image contains non-finite values"),
    (np.ones((6, 7, 4, 2)), [], "expected a one-channel 2D or 3D image, got shape (6, 7, 4, 2)"),
    (np.ones(7), [], "expected a one-channel 2D or 3D image, got shape (7,)"),
    (np.full((6, 7), 3.0), [], "--normalize minmax: the image is constant"),
    (np.full((6, 7), 3.0), ["--normalize", "zscore"], "--normalize zscore: the image is constant"),
    (np.arange(42.0).reshape(6, 7), ["--n", "0"], "--n must be >= 1, got 0"),
])
def test_augment_bad_image_or_option_exits_2_naming_it(tmp_path, capsys, array, flags, needle):
    path = tmp_path / "image.nii.gz"
    save_nifti(path, array.astype(np.float32), np.eye(4))
    out = tmp_path / "out"
    assert cli.main(["augment", str(path), str(out), *flags]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1
    assert not out.exists()


def test_augment_does_not_overwrite_samples_unless_asked(tmp_path, ct_slice):
    out = tmp_path / "aug"
    out.mkdir()
    (out / "gin_000.nii.gz").write_text("older result")
    assert cli.main(["augment", ct_slice, str(out), "--n", "1"]) == 2
    assert (out / "gin_000.nii.gz").read_text() == "older result"
    assert cli.main(["augment", ct_slice, str(out), "--n", "1", "--overwrite"]) == 0
    assert load_nifti(out / "gin_000.nii.gz")[0].shape == (64, 64)
    assert sorted(p.name for p in out.iterdir()) == ["gin_000.nii.gz", "preview.png"]


def test_synth_into_a_path_below_a_file_is_a_one_line_error(tmp_path, capsys):
    (tmp_path / "afile").write_text("not a directory")
    assert cli.main(["synth", str(tmp_path / "afile" / "ds"), "--cases", "1", "--size", "64"]) == 2
    err = capsys.readouterr().err
    assert "is a file, not a directory" in err and len(err.strip().splitlines()) == 1


def test_augment_on_a_device_this_machine_lacks_stops_before_any_work(tmp_path, ct_slice, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "aug"
    assert cli.main(["augment", ct_slice, str(out), "--n", "1", "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert "sees no CUDA GPU" in err and len(err.strip().splitlines()) == 1 and not out.exists()


def test_a_commands_user_warning_prints_as_one_line(monkeypatch):
    import warnings

    from fedgin.commands import synth

    shown = []
    monkeypatch.setattr(synth, "run", lambda args: shown.append(
        warnings.formatwarning("training on the first 2 of its 3 cases", UserWarning, "data.py", 55)))
    assert cli.main(["synth", "unused"]) == 0
    assert shown == ["fedgin synth: warning: training on the first 2 of its 3 cases\n"]
    assert "DeprecationWarning" in warnings.formatwarning("old", DeprecationWarning, "x.py", 1)  # Python's, restored


def test_synth_writes_an_nnunet_v2_raw_data_set(tmp_path, capsys):
    """``--layout nnunet``: DatasetXXX_Name with ``_0000`` channel files, labels by case, nnU-Net v2's dataset.json;
    the same phantom cases as the MSD layout's."""
    import json

    raw = tmp_path / "Dataset501_FedginCT"
    assert cli.main(["synth", str(raw), "--layout", "nnunet", "--cases", "2", "--size", "64", "--seed", "3"]) == 0
    meta = json.loads((raw / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "CT"} and meta["numTraining"] == 2 and meta["file_ending"] == ".nii.gz"
    assert meta["labels"]["background"] == 0 and meta["labels"]["liver"] == 1 and len(meta["labels"]) == 7
    assert sorted(p.name for p in (raw / "imagesTr").iterdir()) == ["case_000_0000.nii.gz", "case_001_0000.nii.gz"]
    assert sorted(p.name for p in (raw / "labelsTr").iterdir()) == ["case_000.nii.gz", "case_001.nii.gz"]
    msd = tmp_path / "msd"
    assert cli.main(["synth", str(msd), "--cases", "2", "--size", "64", "--seed", "3"]) == 0
    for a, b in (("imagesTr/case_001_0000.nii.gz", "imagesTr/case_001.nii.gz"), ("labelsTr/case_001.nii.gz",) * 2):
        assert np.array_equal(load_nifti(raw / a)[0], load_nifti(msd / b)[0])
    t2 = tmp_path / "Dataset502_FedginT2"
    assert cli.main(["synth", str(t2), "--layout", "nnunet", "--modality", "mri-t2", "--cases", "1", "--size", "64",
                     "--3d", "--depth", "8"]) == 0
    assert json.loads((t2 / "dataset.json").read_text())["channel_names"] == {"0": "T2"}
    assert load_nifti(t2 / "imagesTr" / "case_000_0000.nii.gz")[0].shape == (8, 64, 64)
    assert cli.main(["synth", str(tmp_path / "phantom"), "--layout", "nnunet", "--cases", "1", "--size", "64"]) == 2
    assert "named DatasetXXX_Name" in capsys.readouterr().err and not (tmp_path / "phantom").exists()


def test_nnunet_trainers_dir_needs_nnunetv2_and_says_how_to_get_it(capsys, monkeypatch):
    from fedgin.commands import nnunet

    monkeypatch.setattr(cli, "COMMANDS", ("nnunet",))
    monkeypatch.setattr(nnunet.importlib.util, "find_spec", lambda name: None)
    assert cli.main(["nnunet", "trainers-dir"]) == 2
    out = capsys.readouterr()
    assert out.out == "" and out.err.strip() == ('fedgin nnunet: error: nnunetv2 is not installed in this Python: '
                                                  'pip install "fedgin[nnunet]"')
