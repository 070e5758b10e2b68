"""Tissue intensities of the phantom: CT in Hounsfield units, MRI T1-/T2-weighted signal from relaxation times.

CT (non-contrast, HU; rounded to the ranges reported by Lamba et al., "CT Hounsfield numbers of soft tissues
on unenhanced abdominal CT scans", AJR 2014;203:1013-1020, and Radiopaedia's "Hounsfield unit" article):
air -1000, fat -100, muscle 50, liver 60, spleen 50, kidney 30 (cortex) / 35 (medulla), pancreas 40,
bile and CSF 10, unenhanced blood 40, bowel 25, disc 80, cancellous bone 250, cortical bone 800.
Gaussian noise with a per-case sigma of 10-20 HU.

MRI: spin-echo signal ``S = PD * (1 - exp(-TR/T1)) * exp(-TE/T2)``, T1-weighted TR/TE = 500/12 ms and
T2-weighted (fast spin echo) TR/TE = 4000/90 ms. T1/T2 at 1.5 T from de Bazelaire et al., "MR imaging
relaxation times of abdominal and pelvic tissues measured in vivo at 3.0 T: preliminary results",
Radiology 2004;230:652-659 (their 1.5 T column): liver 586/46, spleen 1057/79, renal cortex 966/87,
renal medulla 1412/85, pancreas 584/46, muscle 856/27, fat 343/58, marrow 549/49 ms. Fluid (bile, CSF) has
long T1 and T2 (2500/500 ms), dark on T1, very bright on T2. Fat is bright on fast-spin-echo T2 through
J-coupling suppression (Henkelman et al., JMRI 1992;2:533-540): modelled by an apparent T2 of 130 ms there.
Flowing aortic/caval blood is a flow void on spin echo (low effective PD); cortical bone and air give no
signal. Proton densities are relative, rounded model choices. Results: on T1 fat > pancreas ~ liver ~ renal
cortex > spleen > muscle > bile; on T2 bile > fat > kidney ~ spleen > pancreas ~ liver > muscle: orderings
no monotonic map of the CT values gives (T1: fat/muscle swap while liver/spleen and bile/liver keep CT's
order; T2: liver/spleen and bile/liver swap while muscle/air keeps it). On top: a smooth multiplicative
bias field (coil sensitivity), a per-case gain and Rician magnitude noise (Gudbjartsson & Patz, MRM 1995;
34:910-914).
"""
from __future__ import annotations

import numpy as np

MODALITIES = ("ct", "mri-t1", "mri-t2")

# name: (CT HU, CT texture HU, T1 ms, T2 ms, PD, MRI texture fraction)
TISSUES: dict[str, tuple[float, float, float, float, float, float]] = {
    "air": (-1000.0, 0.0, 1.0, 1.0, 0.0, 0.0),
    "fat": (-100.0, 8.0, 343.0, 58.0, 0.9, 0.04),
    "muscle": (50.0, 5.0, 856.0, 27.0, 0.75, 0.04),
    "cortical_bone": (800.0, 80.0, 1000.0, 1.0, 0.05, 0.0),
    "marrow": (250.0, 40.0, 549.0, 49.0, 0.85, 0.06),
    "disc": (80.0, 8.0, 1100.0, 100.0, 0.85, 0.04),
    "blood": (40.0, 3.0, 1400.0, 250.0, 0.05, 0.05),
    "bowel": (25.0, 10.0, 900.0, 80.0, 0.8, 0.08),
    "liver": (60.0, 4.0, 586.0, 46.0, 0.7, 0.03),
    "spleen": (50.0, 4.0, 1057.0, 79.0, 0.8, 0.03),
    "kidney_cortex": (30.0, 4.0, 966.0, 87.0, 0.85, 0.03),
    "kidney_medulla": (35.0, 4.0, 1412.0, 85.0, 0.85, 0.03),
    "pancreas": (40.0, 5.0, 584.0, 46.0, 0.75, 0.05),
    "fluid": (10.0, 3.0, 2500.0, 500.0, 1.0, 0.02),
}
TISSUE_IDS = {name: i for i, name in enumerate(TISSUES)}

SEQUENCES = {"mri-t1": (500.0, 12.0), "mri-t2": (4000.0, 90.0)}  # TR, TE in ms
_FSE_APPARENT_T2 = {"fat": 130.0}
MRI_SCALE = 1000.0  # a tissue of signal 1 reads about this much at unit gain


def check_modality(modality: str) -> str:
    """``modality`` if known, else a ``ValueError`` naming it."""
    if modality not in MODALITIES:
        raise ValueError(f"unknown modality {modality!r}; choose one of {MODALITIES}")
    return modality


def nominal_intensities(modality: str) -> dict[str, float]:
    """Mean intensity of every tissue before jitter, bias and noise (HU for CT, relative signal for MRI)."""
    check_modality(modality)
    if modality == "ct":
        return {name: row[0] for name, row in TISSUES.items()}
    tr, te = SEQUENCES[modality]
    out = {}
    for name, (_, _, t1, t2, pd, _) in TISSUES.items():
        if modality == "mri-t2":
            t2 = _FSE_APPARENT_T2.get(name, t2)
        out[name] = float(pd * (1.0 - np.exp(-tr / t1)) * np.exp(-te / t2))
    return out


def smooth_field(shape: tuple[int, ...], rng: np.random.Generator, cells: int) -> np.ndarray:
    """A smooth random field of ``shape``: N(0,1) values on a grid of ``cells`` per axis, cubic-interpolated."""
    field = rng.standard_normal([cells] * len(shape))
    for axis, n in enumerate(shape):
        field = np.moveaxis(np.tensordot(_cubic_weights(n, cells), field, axes=(1, axis)), 0, axis)
    return field.astype(np.float32)


def _cubic_weights(n: int, cells: int) -> np.ndarray:
    """[n, cells] Catmull-Rom interpolation from ``cells`` nodes spanning the axis (ends clamped) to ``n`` points."""
    pos = np.linspace(0, cells - 1, n)
    base = np.floor(pos).astype(int)
    t = pos - base
    weights = np.zeros((n, cells))
    for offset in (-1, 0, 1, 2):
        x = np.abs(t - offset)
        w = np.where(x <= 1, 1.5 * x**3 - 2.5 * x**2 + 1, -0.5 * x**3 + 2.5 * x**2 - 4 * x + 2) * (x < 2)
        np.add.at(weights, (np.arange(n), np.clip(base + offset, 0, cells - 1)), w)
    return weights


def gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur with edge padding (partial-volume effect), float32."""
    radius = max(1, int(np.ceil(3 * sigma)))
    kernel = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    kernel /= kernel.sum()
    out = np.asarray(image, dtype=np.float32)
    for axis, n in enumerate(out.shape):
        if n == 1:
            continue
        pad = [(0, 0)] * out.ndim
        pad[axis] = (radius, radius)
        padded = np.pad(out, pad, mode="edge")
        out = sum(np.float32(k) * padded.take(np.arange(i, i + n), axis=axis) for i, k in enumerate(kernel))
    return out


def render(tissue: np.ndarray, modality: str, rng: np.random.Generator, *, bias: bool = True,
           noise: bool = True) -> np.ndarray:
    """Float32 image of a tissue-id map (ids from :data:`TISSUE_IDS`) for ``modality``.

    Per case: tissue means jittered (CT +-4 HU, MRI +-6 %), smooth texture, partial-volume blur, then CT
    Gaussian noise, or MRI bias field, gain (0.7-1.3) and Rician noise. ``bias``/``noise`` switch those off
    without changing the random numbers drawn, so switched-off renders of one seed match the full one.
    """
    means = np.array(list(nominal_intensities(modality).values()), dtype=np.float64)
    table = np.array(list(TISSUES.values()))
    shape = tissue.shape
    squeezed = tuple(s for s in shape if s > 1)
    cells = max(3, min(squeezed) // 8)
    texture = smooth_field(squeezed, rng, cells).reshape(shape)
    if modality == "ct":
        means = means + rng.uniform(-4.0, 4.0, len(means)) * (means > -500)
        image = means[tissue] + table[:, 1][tissue] * texture
        image = gaussian_blur(image, 0.6)
        sigma = rng.uniform(10.0, 20.0)
        noise_field = rng.standard_normal(shape)
        return (image + noise * sigma * noise_field).astype(np.float32)
    means = means * rng.uniform(0.94, 1.06, len(means))
    image = means[tissue] * (1.0 + table[:, 5][tissue] * texture)
    image = gaussian_blur(image, 0.6)
    bias_field = np.exp(0.2 * smooth_field(squeezed, rng, 3).reshape(shape))
    gain = rng.uniform(0.7, 1.3)
    sigma = rng.uniform(0.01, 0.025) * MRI_SCALE
    real, imag = rng.standard_normal((2, *shape))
    signal = image * MRI_SCALE * gain * (bias_field if bias else 1.0)
    if noise:
        signal = np.sqrt((signal + sigma * real) ** 2 + (sigma * imag) ** 2)
    return signal.astype(np.float32)
