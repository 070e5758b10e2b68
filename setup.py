"""fedgin: the fastest GIN augmentation on GPUs, and a federated CT/MRI segmentation trainer built on it."""
from setuptools import find_packages, setup

setup(
    name="fedgin",
    version="0.1.0",
    description="Fused GIN (Global Intensity Non-linear) augmentation in Triton and a FedGIN trainer",
    python_requires=">=3.10",
    # kernels/ and bench/ live at the top of the repository but install inside fedgin, never as
    # top-level modules (PyPI's `kernels` package owns that name).
    packages=find_packages(include=["fedgin", "fedgin.*"]) + ["fedgin.kernels", "fedgin.bench"],
    package_dir={"fedgin.kernels": "kernels", "fedgin.bench": "bench"},
    # nnU-Net imports the trainers folder's module by file name (nnUNet_extTrainer): a folder, not a package
    package_data={"fedgin.bench": ["gpu.sh", "anchors.json"], "fedgin.integrations": ["nnunet_trainers/*.py"]},
    install_requires=[
        "torch>=2.4",
        "triton>=3.2",
        "numpy",
        "monai>=1.4",
        "nibabel>=5",
        "matplotlib",
        "tqdm",
        "pyyaml",
        "scipy",  # MONAI's HD95 on the CPU
    ],
    extras_require={
        "test": ["pytest", "pytest-benchmark", "hypothesis", "ruff"],
        "bench": ["pytest-benchmark"],
        "fl": ["flwr==1.42.*"],
        "nnunet": ["nnunetv2>=2.8"],
    },
    entry_points={"console_scripts": ["fedgin=fedgin.cli:main"]},
)
