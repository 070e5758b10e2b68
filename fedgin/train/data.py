"""Loading a site's data: MSD layout -> MONAI pipeline -> cached volumes with fedgin's organ labels."""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.transforms import (
    Compose,
    LoadImage,
    Orientationd,
    Resized,
    ScaleIntensityRanged,
    ScaleIntensityRangePercentilesd,
)
from monai.utils import convert_to_tensor
from torch import Tensor
from tqdm.auto import tqdm

from fedgin.config import DataConfig, SiteConfig, TestSetConfig, organ_key
from fedgin.data import phantom
from fedgin.data.msd import READ_ERRORS, load_dataset_json, read_dataset, unreadable
from fedgin.data.phantom import MIN_DEPTH, MIN_SIZE, write_dataset


@dataclass
class Case:
    """One patient after loading: ``image`` [1, X, Y, Z] float32 in [0, 1], ``label`` [1, X, Y, Z] organ ids."""

    name: str
    image: Tensor
    label: Tensor


def phantom_dir(data: DataConfig, modality: str, cases: int, seed: int) -> Path:
    """The phantom data set for these settings, generated once into the cache (deterministic per seed)."""
    root = Path(data.cache_dir) if data.cache_dir else Path.home() / ".cache" / "fedgin" / "phantom"
    size, depth = max(data.size, MIN_SIZE), max(data.depth, MIN_DEPTH)  # the loader resizes to data.size
    out = root / f"v{phantom.VERSION}-{modality}-s{size}-d{depth}-n{cases}-seed{seed}"
    if not (out / "dataset.json").is_file():
        write_dataset(out, modality, cases, size=size, depth=depth, seed=seed, overwrite=True)
    return out


def list_cases(root: str | Path, limit: int = 0) -> list[dict]:
    """The training cases of an MSD data set (``image``, ``label``, ``name``), first ``limit`` (0: all).

    Files must exist and be NIfTI images, and each label must have its image's shape; errors name the file.
    """
    items = read_dataset(root)
    if 0 < limit < len(items):
        warnings.warn(f"{root}: training on the first {limit} of its {len(items)} cases (the config's cases: "
                      f"{limit}); cases: 0 takes all", stacklevel=2)
        items = items[:limit]
    for item in items:
        shape_i, shape_l = (_read(nib.load, item[key]).shape[:3] for key in ("image", "label"))
        if shape_i != shape_l:
            raise ValueError(f"{item['label']}: label shape {shape_l} differs from image shape {shape_i}")
        item["name"] = Path(item["image"]).name.split(".")[0]
    return items


def dataset_labels(root: str | Path) -> dict[int, str]:
    """The ``labels`` of a ``dataset.json`` as {id: name}."""
    labels = load_dataset_json(root).get("labels", {})
    return {int(k): str(v) for k, v in labels.items()}


def label_lut(label_map: dict[int, str], organs: list[str]) -> dict[int, int]:
    """Data set label id -> fedgin class index (0 background, i + 1 for ``organs[i]``). Id 0 is background unless
    the map says otherwise (the data set layout fedgin reads: MSD's, where 0 is background)."""
    index = {organ_key(name): i + 1 for i, name in enumerate(organs)}
    lut = {int(k): 0 if organ_key(v) == "background" else index[organ_key(v)] for k, v in label_map.items()}
    return {0: 0} | lut


def default_label_map(root: Path, organs: list[str]) -> dict[int, str]:
    """Map by name from ``dataset.json``'s labels; data set organs fedgin does not train become background."""
    wanted = {organ_key(o) for o in organs}
    labels = {k: (v if organ_key(v) in wanted else "background") for k, v in dataset_labels(root).items()}
    return labels or {0: "background"}


def intensity_transform(modality: str, data: DataConfig):
    """CT: clip to the HU window and scale to [0, 1]; MRI: percentile scale to [0, 1]."""
    if modality == "ct":
        lo, hi = data.ct_window
        return ScaleIntensityRanged("image", a_min=lo, a_max=hi, b_min=0.0, b_max=1.0, clip=True)
    lo, hi = data.mri_percentiles
    return ScaleIntensityRangePercentilesd("image", lower=lo, upper=hi, b_min=0.0, b_max=1.0, clip=True)


def load_source(src: SiteConfig | TestSetConfig, data: DataConfig, *, progress: bool = False) -> list[Case]:
    """Every case of a site or test set, loaded, normalized, resized and relabelled."""
    root = Path(src.data_dir) if src.data_dir else phantom_dir(data, src.modality, src.cases, src.seed)
    items = list_cases(root, 0 if src.data_dir is None else src.cases)
    label_map = src.label_map if src.label_map is not None else default_label_map(root, data.organs)
    lut = label_lut(label_map, data.organs)
    depth = data.depth if data.dims == "3d" else -1
    read = LoadImage(reader="NibabelReader", ensure_channel_first=True, image_only=True)
    orient = Orientationd(("image", "label"), axcodes="RAS", labels=None)
    prepare = Compose([
        intensity_transform(src.modality, data),
        Resized(("image", "label"), spatial_size=(data.size, data.size, depth), mode=("area", "nearest")),
    ])
    cases = []
    for item in tqdm(items, desc=f"load {src.name or src.modality}", disable=not progress, leave=False):
        loaded = {key: _read(read, item[key]) for key in ("image", "label")}
        if not torch.isfinite(loaded["image"]).all():
            raise ValueError(f"{item['image']}: the image has non-finite values (NaN or Inf)")
        loaded = orient(loaded)
        loaded["label"] = _relabel(loaded["label"], lut, item["label"])  # on the raw label, before resizing
        out = prepare(loaded)
        image = convert_to_tensor(out["image"], dtype=torch.float32, track_meta=False).contiguous()
        label = convert_to_tensor(out["label"], dtype=torch.uint8, track_meta=False).contiguous()
        cases.append(Case(item["name"], image, label))
    return cases


def _read(reader, path: str):
    """``reader(path)``, with any failure to read the file a one-line ``ValueError`` naming it."""
    try:
        return reader(path)
    except (*READ_ERRORS, RuntimeError) as err:  # MONAI's reader raises RuntimeError too
        raise unreadable(path, err) from None


def _relabel(label, lut: dict[int, int], path: str) -> Tensor:
    values = convert_to_tensor(label, track_meta=False).numpy()
    if not np.isfinite(values).all():
        raise ValueError(f"{path}: the label has non-finite values (NaN or Inf)")
    arr = np.rint(values).astype(np.int64)
    found = np.unique(arr)
    if found[0] < 0:
        raise ValueError(f"{path}: negative label values {found[found < 0].tolist()}; labels are organ ids >= 0")
    unknown = sorted(set(found.tolist()) - set(lut))
    if unknown:
        raise ValueError(f"{path}: label values {unknown} are not in the site's label map {sorted(lut)}")
    table = np.zeros(int(found.max()) + 1, dtype=np.uint8)
    for k, v in lut.items():
        if 0 <= k < table.size:
            table[k] = v
    return torch.from_numpy(table[arr])


def split(cases: list[Case], val_cases: int, where: str) -> tuple[list[Case], list[Case]]:
    """The last ``val_cases`` patients for validation, the rest for training (at least one)."""
    if len(cases) - val_cases < 1:
        raise ValueError(f"{where}: {len(cases)} case(s) leave none for training after {val_cases} for validation")
    return cases[: len(cases) - val_cases], cases[len(cases) - val_cases:]


def training_tensors(cases: list[Case], dims: str) -> tuple[Tensor, Tensor]:
    """Stack cases into training samples: axial slices [N, 1, X, Y] (``"2d"``) or volumes [N, 1, X, Y, Z]."""
    if dims == "3d":
        return torch.stack([c.image for c in cases]), torch.stack([c.label for c in cases])
    images = torch.cat([c.image.permute(3, 0, 1, 2) for c in cases])
    labels = torch.cat([c.label.permute(3, 0, 1, 2) for c in cases])
    return images.contiguous(), labels.contiguous()
