"""Synthetic abdominal CT/MRI phantom: random anatomy, its images, and MSD-layout data sets of it.

Array layout: 2D slices are ``[H, W]``, volumes ``[D, H, W]``, in the display order of axial DICOM images:
row 0 is anterior, column 0 the patient's right (so the liver is on the image's left), slice 0 inferior.
The field of view is 288 mm in-plane (1.5 mm pixels at 192) and 192 mm craniocaudal (3 mm slices at
depth 64); 2D slices are cut near the level of the pancreas, kidneys and gallbladder.

Each case draws its anatomy from ``seed`` alone: body outline with subcutaneous fat, abdominal wall, paraspinal
and psoas muscles, ribs, a vertebra (cortex, marrow, discs, canal), aorta, IVC, bowel loops and stomach with
gas, and the labelled organs. Positions, sizes and orientations are jittered and everything is warped by a
smooth random displacement field. One seed gives the same label map in every modality; the image noise of
each modality comes from its own stream.
"""
from __future__ import annotations

import json
import re
import shutil
import uuid
from pathlib import Path

import numpy as np
from tqdm import tqdm

from fedgin.data.intensity import MODALITIES, TISSUE_IDS, check_modality, render, smooth_field
from fedgin.data.msd import IMAGES_DIR, LABELS_DIR, msd_dataset_json, nnunet_dataset_json, save_nifti

LABELS = {0: "background", 1: "liver", 2: "spleen", 3: "right_kidney", 4: "left_kidney", 5: "pancreas",
          6: "gallbladder"}
VERSION = 1  # bump whenever the generator's output changes (caches key on it)
GALLBLADDER_ABSENT = 0.2  # probability that a case has no gallbladder (cholecystectomy, contracted)
FOV_MM = 288.0
Z_EXTENT_MM = 192.0
_MM_PER_UNIT = Z_EXTENT_MM / 2  # z runs over [-1, 1]
MIN_SIZE, MIN_DEPTH = 64, 8


def make_case(modality: str, size: int = 192, depth: int | None = None,
              seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """One phantom case: (image float32, label uint8), ``[size, size]`` or ``[depth, size, size]``.

    CT images are in HU, MRI images in arbitrary positive units (see :mod:`fedgin.data.intensity`).
    """
    check_modality(modality)
    tissue, label = make_anatomy(size, depth, seed)
    rng = np.random.default_rng([seed, 1 + MODALITIES.index(modality)])
    return render(tissue, modality, rng), label


def make_anatomy(size: int = 192, depth: int | None = None, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The tissue-id map (ids of :data:`fedgin.data.intensity.TISSUE_IDS`) and label map of one case."""
    _check_geometry(size, depth, seed)
    rng = np.random.default_rng([seed, 0])
    x = ((np.arange(size) + 0.5) / size * 2 - 1).astype(np.float32)
    if depth is None:
        zs = np.array([rng.uniform(-0.08, 0.08)], np.float32)
    else:
        zs = ((np.arange(depth) + 0.5) / depth * 2 - 1).astype(np.float32)
    z, y, x = np.meshgrid(zs, x, x, indexing="ij")
    plane = (size, size) if depth is None else (depth, size, size)
    shape = z.shape

    def warp(cells: int, amp: float) -> np.ndarray:
        return amp * smooth_field(plane, rng, cells).reshape(shape)

    x = x + warp(5, 0.035) + warp(9, 0.01)
    y = y + warp(5, 0.035) + warp(9, 0.01)
    if depth is not None:
        z = z + warp(4, 0.05) + rng.uniform(-0.1, 0.1)
    theta, scale = rng.uniform(-0.1, 0.1), rng.uniform(0.9, 1.06)
    cx, cy = rng.uniform(-0.04, 0.04), 0.03 + rng.uniform(-0.04, 0.04)
    c, s = np.cos(theta), np.sin(theta)
    u = (c * (x - cx) + s * (y - cy)) / scale
    v = (-s * (x - cx) + c * (y - cy)) / scale
    tissue, label = _Body(u, v, z, rng).paint()
    return (tissue[0], label[0]) if depth is None else (tissue, label)


class _Body:
    """Paints one case in the body frame (u: patient right -> left, v: anterior -> posterior, z: up)."""

    def __init__(self, u: np.ndarray, v: np.ndarray, z: np.ndarray, rng: np.random.Generator) -> None:
        self.u, self.v, self.z, self.rng = u, v, z, rng
        self.tissue = np.zeros(u.shape, np.uint8)
        self.label = np.zeros(u.shape, np.uint8)
        self.bx, self.by = 0.9 * rng.uniform(0.92, 1.06), 0.66 * rng.uniform(0.9, 1.08)
        self.kx, self.ky = self.bx / 0.9, self.by / 0.66

    def jit(self, value: float, amp: float) -> float:
        return value + self.rng.uniform(-amp, amp)

    def blob(self, cx: float, cy: float, ax: float, ay: float, ang: float = 0.0, p: float = 2.0,
             zc: float = 0.0, rz: float = np.inf, drift: tuple[float, float] = (0.0, 0.0),
             jitter: float = 0.0) -> np.ndarray:
        """Inside of a rotated superellipse at body-relative position; its size follows an ellipsoid in z."""
        if jitter:
            cx, cy, zc = self.jit(cx, jitter), self.jit(cy, jitter), self.jit(zc, 2 * jitter)
            ax, ay = ax * self.rng.uniform(0.85, 1.15), ay * self.rng.uniform(0.85, 1.15)
            ang = self.jit(ang, 5 * jitter)
        dz = self.z - zc
        du = self.u - (cx * self.kx + drift[0] * dz)
        dv = self.v - (cy * self.ky + drift[1] * dz)
        c, s = np.cos(ang), np.sin(ang)
        a = (c * du + s * dv) / (ax * self.kx)
        b = (-s * du + c * dv) / (ay * self.ky)
        q = a * a + b * b if p == 2 else np.abs(a) ** p + np.abs(b) ** p
        f2 = 1.0 - (dz / rz) ** 2
        return (f2 > 0) & (q <= np.maximum(f2, 0) ** (p / 2))

    def put(self, mask: np.ndarray, tissue: str, label: int = 0) -> None:
        self.tissue[mask] = TISSUE_IDS[tissue]
        self.label[mask] = label

    def paint(self) -> tuple[np.ndarray, np.ndarray]:
        rng = self.rng
        fat, wall = rng.uniform(0.04, 0.12), rng.uniform(0.025, 0.045)
        ex, ey = 0.9, 0.66  # blob() rescales by kx, ky: body semi-axes are bx, by
        self.put(self.blob(0, 0, ex, ey, p=2.3), "fat")
        self.put(self.blob(0, 0, ex - fat, ey - 0.8 * fat, p=2.3), "muscle")
        cavity = self.blob(0, 0, ex - fat - wall, ey - 0.8 * fat - wall, p=2.3)
        self.put(cavity, "fat")
        self._ribs(ex - fat - wall / 2, ey - 0.8 * fat - wall / 2)
        for side in (-1, 1):
            self.put(self.blob(side * 0.14, 0.47, 0.1, 0.09, ang=side * 0.3, jitter=0.01), "muscle")
            self.put(self.blob(side * 0.13, 0.3, 0.055, 0.05, zc=-1.2, rz=1.6, jitter=0.01) & cavity, "muscle")
        self._bowel(cavity)
        liver = self.blob(-0.38, -0.02, 0.36, 0.42, ang=0.2, p=2.4, zc=0.25, rz=0.85, jitter=0.03)
        liver |= self.blob(0.02, -0.3, 0.28, 0.14, ang=-0.3, zc=0.45, rz=0.55, jitter=0.03)
        self.put(liver & cavity, "liver", 1)
        gallbladder = self.blob(-0.22, -0.22, 0.06, 0.1, ang=0.6, zc=-0.1, rz=0.35, jitter=0.02)
        if rng.random() >= GALLBLADDER_ABSENT:
            self.put(gallbladder & cavity, "fluid", 6)
        self.put(self.blob(0.52, 0.18, 0.1, 0.22, ang=-0.6, zc=0.25, rz=0.55, jitter=0.03) & cavity, "spleen", 2)
        for side, zc, label in ((-1, -0.25, 3), (1, -0.1, 4)):
            cx, cy, ang = self.jit(side * 0.3, 0.03), self.jit(0.29, 0.02), self.jit(side * 0.5, 0.15)
            ax, ay, zc, rz = 0.085 * rng.uniform(0.9, 1.1), 0.13 * rng.uniform(0.9, 1.1), self.jit(zc, 0.08), 0.55
            self.put(self.blob(cx, cy, ax, ay, ang, zc=zc, rz=rz) & cavity, "kidney_cortex", label)
            medulla = self.blob(cx, cy, 0.55 * ax, 0.6 * ay, ang, zc=zc, rz=0.8 * rz)
            self.put(medulla & cavity, "kidney_medulla", label)
        self.put(self._pancreas() & cavity, "pancreas", 5)
        self.put(self.blob(-0.13, 0.15, 0.05, 0.035, jitter=0.01), "blood")
        self.put(self.blob(0.05, 0.2, 0.045, 0.045, drift=(0.0, 0.03), jitter=0.01), "blood")
        self._spine()
        return self.tissue, self.label

    def _ribs(self, rx: float, ry: float) -> None:
        for deg in (10, 35, 60, 120, 145, 170):
            phi = np.deg2rad(self.jit(deg, 5))
            phase, r = self.rng.uniform(), 0.022 * self.rng.uniform(0.8, 1.2)
            present = (self.z > -0.35) & (np.sin(2 * np.pi * (self.z * _MM_PER_UNIT / 25 + phase)) > -0.3)
            self.put(self.blob(rx * np.cos(phi), ry * np.sin(phi), r, r) & present, "cortical_bone")

    def _bowel(self, cavity: np.ndarray) -> None:
        rng = self.rng
        for _ in range(int(rng.integers(8, 15))):
            cx, cy, r = rng.uniform(-0.45, 0.45), rng.uniform(-0.45, 0.15), rng.uniform(0.04, 0.08)
            zc, rz, gas = rng.uniform(-1.0, 0.4), rng.uniform(0.15, 0.4), rng.random() < 0.3
            self.put(self.blob(cx, cy, r, r, zc=zc, rz=rz) & cavity, "bowel")
            if gas:
                self.put(self.blob(cx, cy, 0.7 * r, 0.7 * r, zc=zc, rz=0.7 * rz) & cavity, "air")
        cy, ay = self.jit(-0.22, 0.03), 0.13 * rng.uniform(0.85, 1.15)
        stomach = self.blob(0.32, cy, 0.17, ay, ang=0.4, zc=rng.uniform(0.3, 0.6), rz=0.55, jitter=0.03) & cavity
        self.put(stomach, "bowel")
        self.put(stomach & (self.v < (cy - 0.4 * ay) * self.ky), "air")

    def _pancreas(self) -> np.ndarray:
        """A tube along head -> neck -> body -> tail, thinning to the tail, which lies higher than the head."""
        pts = [(self.jit(x, 0.03) * self.kx, self.jit(y, 0.03) * self.ky)
               for x, y in ((-0.12, 0.02), (0.0, -0.03), (0.18, 0.02), (0.38, 0.1))]
        r_head, r_tail = 0.05 * self.rng.uniform(0.85, 1.15), 0.03 * self.rng.uniform(0.85, 1.15)
        z_head, z_tail, rz = self.jit(-0.05, 0.05), self.jit(0.1, 0.05), 0.3
        best_d2, best_t = None, None
        for i, ((x0, y0), (x1, y1)) in enumerate(zip(pts[:-1], pts[1:], strict=False)):
            dx, dy = x1 - x0, y1 - y0
            t = np.clip(((self.u - x0) * dx + (self.v - y0) * dy) / (dx * dx + dy * dy), 0, 1)
            d2 = (self.u - x0 - t * dx) ** 2 + (self.v - y0 - t * dy) ** 2
            t = (i + t) / (len(pts) - 1)
            if best_d2 is None:
                best_d2, best_t = d2, t
            else:
                closer = d2 < best_d2
                best_d2, best_t = np.where(closer, d2, best_d2), np.where(closer, t, best_t)
        radius = r_head + (r_tail - r_head) * best_t
        f2 = 1.0 - ((self.z - (z_head + (z_tail - z_head) * best_t)) / rz) ** 2
        return (f2 > 0) & (best_d2 <= radius**2 * np.maximum(f2, 0))

    def _spine(self) -> None:
        rng = self.rng
        cx, cy, r = self.jit(0.0, 0.01), self.jit(0.33, 0.015), 0.085 * rng.uniform(0.9, 1.1)
        body = self.blob(cx, cy, r, 0.85 * r)
        disc = ((self.z * _MM_PER_UNIT / 28 + rng.uniform()) % 1) < 0.2
        self.put(body, "cortical_bone")
        self.put(self.blob(cx, cy, r - 0.012, 0.85 * r - 0.012) & ~disc, "marrow")
        self.put(body & disc, "disc")
        canal_y = cy + 0.85 * r + 0.035
        self.put(self.blob(cx, canal_y + 0.06, 0.022, 0.07), "cortical_bone")
        self.put(self.blob(cx, canal_y, 0.055, 0.05), "cortical_bone")
        self.put(self.blob(cx, canal_y, 0.033, 0.03), "fluid")


def _check_geometry(size: int, depth: int | None, seed: int) -> None:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < MIN_SIZE:
        raise ValueError(f"phantom size must be an integer >= {MIN_SIZE}, got {size!r}")
    if depth is not None and (isinstance(depth, bool) or not isinstance(depth, (int, np.integer))
                              or depth < MIN_DEPTH):
        raise ValueError(f"phantom depth must be None (2D) or an integer >= {MIN_DEPTH}, got {depth!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"phantom seed must be a non-negative integer, got {seed!r}")


def phantom_affine(shape: tuple[int, ...]) -> np.ndarray:
    """The RAS+ world affine of a phantom array ``[H, W]`` or ``[D, H, W]`` (centred on the origin, in mm).

    Array axes map to world axes as in DICOM axial display (rows anterior -> posterior, columns right -> left,
    slices inferior -> superior), so ``nibabel.aff2axcodes`` reads ('P', 'L') or ('S', 'P', 'L').
    """
    h, w = shape[-2:]
    dy, dx = FOV_MM / h, FOV_MM / w
    dz = Z_EXTENT_MM / shape[0] if len(shape) == 3 else 3.0
    columns = [np.array([0.0, -dy, 0.0]), np.array([-dx, 0.0, 0.0])]
    if len(shape) == 3:
        columns.insert(0, np.array([0.0, 0.0, dz]))
    else:
        columns.append(np.array([0.0, 0.0, dz]))  # the third axis of a 2D image: one slice thick
    affine = np.eye(4)
    affine[:3, :3] = np.stack(columns, axis=1)
    centre = (np.array(shape[: len(shape)], float) - 1) / 2
    affine[:3, 3] = -affine[:3, : len(shape)] @ centre
    return affine


def case_seeds(seed: int, cases: int) -> list[int]:
    """The ``make_case`` seed of each case of a data set: case i's depends only on (seed, i)."""
    return [int(s.generate_state(1)[0]) for s in np.random.SeedSequence(seed).spawn(cases)]


LAYOUTS = ("msd", "nnunet")
NNUNET_NAME = re.compile(r"Dataset\d{3}_[A-Za-z0-9_-]+")
_CHANNELS = {"ct": "CT", "mri-t1": "T1", "mri-t2": "T2"}  # nnU-Net normalizes a channel named CT as CT, others z-score


def write_dataset(out_dir: str | Path, modality: str, cases: int, size: int = 192, depth: int | None = None,
                  seed: int = 0, overwrite: bool = False, progress: bool = False, layout: str = "msd") -> Path:
    """Write ``cases`` phantom cases as a data set (imagesTr/, labelsTr/, dataset.json); returns its path.

    ``layout``: ``"msd"`` (the Medical Segmentation Decathlon's, which fedgin reads) or ``"nnunet"`` (nnU-Net v2's raw
    layout: ``out_dir`` named ``DatasetXXX_Name``, images ``case_000_0000.nii.gz``, labels ``case_000.nii.gz``, a
    dataset.json with channel_names, labels, numTraining and file_ending). The whole directory is built next to
    ``out_dir`` and renamed into place, so it is complete or absent. An existing non-empty ``out_dir`` is an error
    unless ``overwrite`` is set and it holds a dataset.json. Images are float32, labels uint8; a 2D case is a 2D
    NIfTI that reads back as the same ``[H, W]`` array.
    """
    check_modality(modality)
    if layout not in LAYOUTS:
        raise ValueError(f"unknown data set layout {layout!r}; choose one of {LAYOUTS}")
    if layout == "nnunet" and not NNUNET_NAME.fullmatch(Path(out_dir).name):
        raise ValueError(f"an nnU-Net raw data set's folder is named DatasetXXX_Name (three digits), got "
                         f"{Path(out_dir).name!r}")
    if isinstance(cases, bool) or not isinstance(cases, (int, np.integer)) or cases < 1:
        raise ValueError(f"number of cases must be a positive integer, got {cases!r}")
    _check_geometry(size, depth, seed)
    out = Path(out_dir)
    _check_target(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(out, "partial")
    try:
        (tmp / IMAGES_DIR).mkdir()
        (tmp / LABELS_DIR).mkdir()
        seeds = case_seeds(seed, cases)
        names = [f"case_{i:03d}" for i in range(cases)]
        channel = "_0000" if layout == "nnunet" else ""  # nnU-Net's channel suffix
        for name, case_seed in tqdm(zip(names, seeds, strict=True), total=cases, desc=f"synth {modality}",
                                    disable=not progress):
            image, label = make_case(modality, size, depth, case_seed)
            affine = phantom_affine(image.shape)
            save_nifti(tmp / IMAGES_DIR / f"{name}{channel}.nii.gz", image, affine)
            save_nifti(tmp / LABELS_DIR / f"{name}.nii.gz", label, affine)
        about = {"description": "Synthetic abdominal phantom (fedgin.data.phantom)",
                 "fedgin": {"modality": modality, "seed": seed, "size": size, "depth": depth, "case_seeds": seeds}}
        if layout == "nnunet":
            meta = nnunet_dataset_json(_CHANNELS[modality], LABELS, cases, name=out.name, **about)
        else:
            meta = msd_dataset_json(name=f"fedgin-phantom-{modality}", modality="CT" if modality == "ct" else "MRI",
                                    labels=LABELS, files=[f"{n}.nii.gz" for n in names],
                                    tensor_image_size="2D" if depth is None else "3D", **about)
        (tmp / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n")
        _move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _check_target(out: Path, overwrite: bool) -> None:
    parent = next((p for p in out.parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise ValueError(f"{out}: {parent} is a file, not a directory")
    if not out.exists():
        return
    if not out.is_dir():
        raise ValueError(f"{out} exists and is not a directory")
    if any(out.iterdir()):
        if not overwrite:
            raise ValueError(f"{out} exists and is not empty; pass --overwrite to replace it")
        if not (out / "dataset.json").is_file():
            raise ValueError(f"refusing to overwrite {out}: it holds no dataset.json, so it is not a data set")


def _sibling(out: Path, kind: str) -> Path:
    """A new hidden directory next to ``out`` (created with the umask's permissions, unlike mkdtemp's 0700)."""
    path = out.parent / f".{out.name}.{uuid.uuid4().hex[:12]}.{kind}"
    path.mkdir()
    return path


def _move_into_place(tmp: Path, out: Path) -> None:
    if not out.exists():
        tmp.rename(out)
        return
    old = _sibling(out, "old")
    old.rmdir()
    out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old)
