"""``fedgin augment``: N GIN samples of one NIfTI image, as NIfTI files and a PNG preview grid.

By default the image is min-max scaled to [0, 1] first (``--normalize minmax``): GIN was designed for
normalized intensities, and on raw CT HU its networks' N(0, 1) biases are negligible, so the samples
would come out close to affine maps of the input. ``--normalize none`` keeps the stored intensities.
Each output is rescaled by GIN itself to the Frobenius norm of the (normalized) input, so it keeps the
input's overall magnitude, not its value range. Outputs are float32 with the input's
affine and header. Size-1 axes (e.g. a 2D slice stored as [H, W, 1]) are dropped for GIN and restored.
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from matplotlib.figure import Figure

from fedgin.data.msd import load_nifti, save_nifti
from fedgin.environment import resolve_device
from fedgin.gin import BACKENDS, gin_apply, make_config
from fedgin.params import GINParams

HELP = "write N GIN augmentations of a 2D or 3D NIfTI image (gin_000.nii.gz, ...) and a preview.png grid"
NORMALIZATIONS = ("none", "minmax", "zscore")
PREVIEW = "preview.png"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", type=Path, help="one-channel 2D or 3D NIfTI image (.nii or .nii.gz)")
    parser.add_argument("out_dir", type=Path, help="directory for gin_NNN.nii.gz and preview.png")
    parser.add_argument("--n", type=int, default=8, help="number of samples (default: 8)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the GIN draw (default: 0)")
    parser.add_argument("--interm-channels", type=int, default=2, help="GIN hidden channels (default: 2)")
    parser.add_argument("--n-layers", type=int, default=4, help="GIN conv layers (default: 4)")
    parser.add_argument("--kernel-sizes", type=int, nargs="+", default=[1, 3],
                        help="pool of odd kernel sizes, one drawn per layer (default: 1 3)")
    parser.add_argument("--backend", choices=BACKENDS, default="auto",
                        help="auto: Triton on CUDA when supported, else the PyTorch reference")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--per-sample", dest="per_sample", action="store_true", default=True,
                       help="a different random network for every sample (default)")
    group.add_argument("--shared", dest="per_sample", action="store_false",
                       help="one network for all samples (they differ only in the mixing weight alpha)")
    parser.add_argument("--normalize", choices=NORMALIZATIONS, default="minmax",
                        help="intensity normalization before GIN; the outputs stay normalized (default: minmax)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--overwrite", action="store_true", help="replace gin_*.nii.gz/preview.png already there")


def run(args: argparse.Namespace) -> int:
    if args.n < 1:
        raise ValueError(f"--n must be >= 1, got {args.n}")
    device = resolve_device(args.device)
    data, affine, header = load_nifti(args.input)
    image = _gin_input(data, args.input)
    cfg = make_config(in_channels=1, interm_channels=args.interm_channels, n_layers=args.n_layers,
                      kernel_sizes=tuple(args.kernel_sizes), spatial_dims=image.ndim, per_sample=args.per_sample)
    names = [f"gin_{i:03d}.nii.gz" for i in range(args.n)]
    _check_out_dir(args.out_dir, names + [PREVIEW], args.overwrite)

    x = _normalize(torch.from_numpy(image), args.normalize)
    params = GINParams.draw_config(args.n, cfg, device=device, generator=torch.Generator().manual_seed(args.seed))
    with torch.no_grad():
        out = gin_apply(x.to(device).expand(args.n, 1, *x.shape).contiguous(), params, args.backend)
    samples = [s.reshape(data.shape) for s in out[:, 0].cpu().numpy()]

    _write(args.out_dir, names, samples, affine, header, x.numpy().reshape(data.shape))
    print(f"wrote {args.n} GIN samples and {PREVIEW} to {args.out_dir}")
    return 0


def _gin_input(data: np.ndarray, path: Path) -> np.ndarray:
    """The image as a float32 array of its non-singleton axes (2 or 3 of them)."""
    image = np.asarray(data, dtype=np.float32).squeeze()
    if image.ndim not in (2, 3) or (data.ndim > 3 and any(s > 1 for s in data.shape[3:])):
        raise ValueError(f"{path}: expected a one-channel 2D or 3D image, got shape {tuple(data.shape)}")
    if not np.isfinite(image).all():
        raise ValueError(f"{path}: image contains non-finite values (NaN or Inf)")
    return image


def _normalize(x: torch.Tensor, how: str) -> torch.Tensor:
    if how == "none":
        return x
    if how == "minmax":
        lo, hi = x.min(), x.max()
        if hi <= lo:
            raise ValueError("--normalize minmax: the image is constant")
        return (x - lo) / (hi - lo)
    std = x.std()
    if std == 0:
        raise ValueError("--normalize zscore: the image is constant")
    return (x - x.mean()) / std


def _check_out_dir(out_dir: Path, names: list[str], overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"{out_dir} exists and is not a directory")
    clashes = [n for n in names if (out_dir / n).exists()]
    if clashes and not overwrite:
        raise ValueError(f"{out_dir / clashes[0]} already exists; pass --overwrite or choose another directory")


def _write(out_dir: Path, names: list[str], samples: list[np.ndarray], affine: np.ndarray,
           header: nib.Nifti1Header, image: np.ndarray) -> None:
    """Write everything into a temporary directory inside ``out_dir``, then move the files in."""
    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".fedgin-augment-", dir=out_dir))
    done = False
    try:
        for name, sample in zip(names, samples, strict=True):
            save_nifti(tmp / name, sample, affine, header)
        _preview(tmp / PREVIEW, [image, *samples], ["input", *(n.split(".")[0] for n in names)], affine)
        for name in [*names, PREVIEW]:
            os.replace(tmp / name, out_dir / name)
        done = True
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if created and not done and not any(out_dir.iterdir()):
            out_dir.rmdir()


def _display_slice(array: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """The middle axial slice in radiological display (rows anterior -> posterior, columns right -> left)."""
    vol = array.reshape(array.shape[:3]) if array.ndim > 3 else array
    vol = vol[..., None] if vol.ndim == 2 else vol
    to_display = nib.orientations.ornt_transform(nib.io_orientation(affine), nib.orientations.axcodes2ornt("SPL"))
    vol = nib.orientations.apply_orientation(vol, to_display)
    return vol[vol.shape[0] // 2]


def _preview(path: Path, images: list[np.ndarray], titles: list[str], affine: np.ndarray) -> None:
    cols = min(len(images), 5)
    rows = -(-len(images) // cols)
    fig = Figure(figsize=(3 * cols, 3 * rows))
    for i, (image, title) in enumerate(zip(images, titles, strict=True)):
        ax = fig.add_subplot(rows, cols, i + 1)
        view = _display_slice(image, affine)
        lo, hi = np.percentile(view, [1, 99])
        ax.imshow(view, cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1)
        ax.set_title(title, fontsize=10)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
