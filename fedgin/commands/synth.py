"""``fedgin synth``: write a synthetic abdominal CT/MRI phantom data set in the MSD or the nnU-Net v2 raw layout."""
from __future__ import annotations

import argparse
from pathlib import Path

from fedgin.data.intensity import MODALITIES
from fedgin.data.phantom import LAYOUTS, MIN_DEPTH, MIN_SIZE, write_dataset

HELP = "write a synthetic abdominal CT/MRI phantom data set (imagesTr/, labelsTr/, dataset.json; MSD or nnU-Net v2)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", type=Path, help="output data set directory (must not exist or be empty)")
    parser.add_argument("--modality", choices=MODALITIES, default="ct", help="image modality (default: ct)")
    parser.add_argument("--cases", type=int, default=20, help="number of cases (default: 20)")
    parser.add_argument("--size", type=int, default=192,
                        help=f"in-plane size in pixels, at least {MIN_SIZE} (default: 192)")
    parser.add_argument("--3d", dest="three_d", action="store_true", help="write volumes instead of 2D slices")
    parser.add_argument("--depth", type=int, default=64,
                        help=f"slices per volume with --3d, at least {MIN_DEPTH} (default: 64)")
    parser.add_argument("--seed", type=int, default=0, help="data set seed; case i depends on (seed, i) only")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing data set directory")
    parser.add_argument("--layout", choices=LAYOUTS, default="msd",
                        help="msd (default; what fedgin reads) or nnunet: nnU-Net v2's raw layout, OUT named "
                             "DatasetXXX_Name under $nnUNet_raw (images case_000_0000.nii.gz)")


def run(args: argparse.Namespace) -> int:
    out = write_dataset(args.out, args.modality, args.cases, size=args.size,
                        depth=args.depth if args.three_d else None, seed=args.seed,
                        overwrite=args.overwrite, progress=True, layout=args.layout)
    print(f"wrote {args.cases} {args.modality} cases to {out}")
    return 0
