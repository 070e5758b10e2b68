"""Data: the synthetic abdominal CT/MRI phantom and NIfTI files in the MSD layout."""
from fedgin.data.intensity import MODALITIES
from fedgin.data.msd import load_dataset_json, load_nifti, read_dataset, save_nifti
from fedgin.data.phantom import LABELS, make_anatomy, make_case, phantom_affine, write_dataset

__all__ = ["LABELS", "MODALITIES", "load_dataset_json", "load_nifti", "make_anatomy", "make_case",
           "phantom_affine", "read_dataset", "save_nifti", "write_dataset"]
