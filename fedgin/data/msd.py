"""NIfTI files and the Medical Segmentation Decathlon layout (imagesTr/, labelsTr/, dataset.json)."""
from __future__ import annotations

import json
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from nibabel.spatialimages import HeaderDataError

IMAGES_DIR, LABELS_DIR, DATASET_JSON = "imagesTr", "labelsTr", "dataset.json"
READ_ERRORS = (ImageFileError, HeaderDataError, OSError, EOFError, ValueError, zlib.error)


def save_nifti(path: str | Path, array: np.ndarray, affine: np.ndarray, header: nib.Nifti1Header | None = None) -> None:
    """Write ``array`` as NIfTI-1 with ``affine`` (sform and qform, scanner space, mm) in ``array``'s dtype.

    ``header`` (e.g. an input's) is kept apart from its data type and scaling, which follow ``array``.
    """
    img = nib.Nifti1Image(array, affine, header)
    img.header.set_data_dtype(array.dtype)
    img.header.set_slope_inter(1.0, 0.0)
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    nib.save(img, str(path))


def load_nifti(path: str | Path) -> tuple[np.ndarray, np.ndarray, nib.Nifti1Header]:
    """(data, affine, header) of a NIfTI file; data in its stored dtype (after the header's scaling).

    A missing file raises ``FileNotFoundError``; anything not readable as a NIfTI image a one-line
    ``ValueError`` naming the file.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such file: {path}")
    if not path.is_file():
        raise ValueError(f"{path} is not a file")
    try:
        img = nib.load(path)
        if not isinstance(img, nib.Nifti1Pair):  # Nifti1Image, Nifti2Image and their pairs
            raise ValueError(f"a {type(img).__name__}, not a NIfTI image")
        data = np.asarray(img.dataobj)
    except READ_ERRORS as err:
        raise unreadable(path, err) from None
    return data, img.affine, img.header


def unreadable(path: str | Path, err: Exception) -> ValueError:
    """The one-line error for a file that cannot be read as a NIfTI image, with the reader's reason."""
    reason = " ".join(str(err).split()) or type(err).__name__
    return ValueError(f"{path} is not a readable NIfTI image: {reason}")


def nnunet_dataset_json(channel: str, labels: dict[int, str], cases: int, **extra) -> dict:
    """The dataset.json of an nnU-Net v2 raw data set of one channel named ``channel`` (``"CT"`` takes nnU-Net's CT
    normalization, any other name its z-score) with ``cases`` training cases in NIfTI."""
    return {"channel_names": {"0": channel}, "labels": {v: k for k, v in sorted(labels.items())},
            "numTraining": cases, "file_ending": ".nii.gz", **extra}


def msd_dataset_json(name: str, modality: str, labels: dict[int, str], files: list[str], **extra) -> dict:
    """The dataset.json of an MSD data set whose images and labels share the file names ``files``.

    ``extra`` adds fields (``tensor_image_size`` becomes ``tensorImageSize``).
    """
    meta = {"name": name, "modality": {"0": modality}, "labels": {str(k): v for k, v in labels.items()},
            "numTraining": len(files), "numTest": 0,
            "training": [{"image": f"./{IMAGES_DIR}/{f}", "label": f"./{LABELS_DIR}/{f}"} for f in files],
            "test": []}
    if "tensor_image_size" in extra:
        extra["tensorImageSize"] = extra.pop("tensor_image_size")
    return {**meta, **extra}


def load_dataset_json(root: str | Path) -> dict:
    """The parsed dataset.json of the data set directory ``root``."""
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"data set directory {root} does not exist")
    if not root.is_dir():
        raise ValueError(f"data set path {root} is not a directory")
    if not any(root.iterdir()):
        raise ValueError(f"data set directory {root} is empty")
    path = root / DATASET_JSON
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {root} is not an MSD data set")
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(meta).__name__}")
    return meta


def read_dataset(root: str | Path) -> list[dict]:
    """The training cases of an MSD data set as ``[{"image": path, "label": path}, ...]`` (MONAI-ready).

    Every listed file must exist; errors name the offending path.
    """
    root = Path(root)
    meta = load_dataset_json(root)
    json_path = root / DATASET_JSON
    training = meta.get("training")
    if not isinstance(training, list) or not training:
        raise ValueError(f"{json_path} lists no training cases")
    cases = []
    for i, entry in enumerate(training):
        if not isinstance(entry, dict) or not {"image", "label"} <= entry.keys():
            raise ValueError(f"{json_path}: training[{i}] must have 'image' and 'label' entries")
        case = {}
        for key in ("image", "label"):
            path = root / entry[key]
            if not path.is_file():
                raise FileNotFoundError(f"{path} (training[{i}] {key} in {json_path}) does not exist")
            case[key] = str(path)
        cases.append(case)
    return cases
