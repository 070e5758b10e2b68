"""The implementations the suite times: one registry entry each, preparing a callable for a case.

A new implementation (a future Triton variant, a comparison augmentation) is one :func:`register` call
(the comparison augmentations are in ``bench/augment_impls.py``):
``prepare(case, device)`` returns ``fn(x, params) -> out`` with everything per-case (compilation, plans)
done up front, and ``supports(case, device)`` returns ``None`` or why the entry cannot run the case.
"""
from __future__ import annotations

import functools
import os
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from fedgin import GINParams, gin_apply, reference_apply

from .cases import Case, draw_params

Prepared = Callable[[Tensor, GINParams], Tensor]
INTERPRETER_MAX_ELEMENTS = 1024  # Triton's interpreter takes about a second per 256 elements on a CPU


def _runs_anything(case: Case, device: torch.device) -> str | None:
    return None


@dataclass(frozen=True)
class Impl:
    """One implementation.

    ``shared_network``: it is given a draw with one network for the whole batch (``per_sample=False``).
    ``heavy``: costly to prepare or run; outside the ``full`` preset it runs only on cases naming it.
    ``graphable``: free of host synchronization, so a CUDA graph can capture it.
    ``reference_check``: its output is GIN's, checked against ``reference_apply`` before timing; False for the
    comparison augmentations (``bench/augment_impls.py``), reported as "not GIN: no reference check".
    """

    name: str
    summary: str
    prepare: Callable[[Case, torch.device], Prepared]
    supports: Callable[[Case, torch.device], str | None] = _runs_anything
    shared_network: bool = False
    heavy: bool = False
    graphable: bool = True
    reference_check: bool = True


IMPLEMENTATIONS: dict[str, Impl] = {}


def register(impl: Impl) -> Impl:
    """Add ``impl`` to the registry (names are unique)."""
    if impl.name in IMPLEMENTATIONS:
        raise ValueError(f"implementation {impl.name!r} is already registered")
    IMPLEMENTATIONS[impl.name] = impl
    return impl


def select(names: Iterable[str] | None = None) -> list[Impl]:
    """The named entries (all when ``names`` is None), ``reference`` always first: it is every speedup's base."""
    names = list(IMPLEMENTATIONS) if names is None else list(dict.fromkeys(names))
    unknown = [n for n in names if n not in IMPLEMENTATIONS]
    if unknown:
        raise ValueError(f"unknown implementation(s) {unknown}; choose from {sorted(IMPLEMENTATIONS)}")
    return [IMPLEMENTATIONS["reference"]] + [IMPLEMENTATIONS[n] for n in names if n != "reference"]


@torch.no_grad()
def per_sample_loop(x: Tensor, params: GINParams) -> Tensor:
    """The slow baseline: per sample, per layer one ``F.conv2d``/``F.conv3d`` (float32 math)."""
    cfg = params.config
    conv = F.conv2d if cfg.spatial_dims == 2 else F.conv3d
    last = len(params.kernel_sizes) - 1
    out = []
    for b in range(x.shape[0]):
        xb = x[b : b + 1].float()
        h = xb
        for layer, (k, w, bias) in enumerate(zip(params.kernel_sizes, params.weights, params.biases, strict=True)):
            h = conv(h, w[b].float(), bias[b].float(), padding=k // 2)
            if layer < last:
                h = F.leaky_relu(h, cfg.slope)
        alpha = params.alphas[b].float()
        mixed = alpha * h + (1 - alpha) * xb
        out.append(mixed * (xb.norm() / (mixed.norm() + cfg.eps)))
    return torch.cat(out).to(x.dtype)


@torch.no_grad()
def authors_cpu(x: Tensor, params: GINParams) -> Tensor:
    """The FedGIN authors' released GIN: one network for the batch, plain convolutions on the CPU, then the
    result copied back to ``x``'s device (float32 math). ``params`` must be a batch-shared draw."""
    cfg = params.config
    xc = x.to("cpu", torch.float32)
    h = xc
    last = len(params.kernel_sizes) - 1
    for layer, (k, w, bias) in enumerate(zip(params.kernel_sizes, params.weights, params.biases, strict=True)):
        h = F.conv2d(h, w[0].to("cpu", torch.float32), bias[0].to("cpu", torch.float32), padding=k // 2)
        if layer < last:
            h = F.leaky_relu(h, cfg.slope)
    alphas = params.alphas.to("cpu", torch.float32).reshape(-1, 1, 1, 1)
    mixed = torch.lerp(xc, h, alphas)
    scale = xc.flatten(1).norm(dim=1) / (mixed.flatten(1).norm(dim=1) + cfg.eps)
    return (mixed * scale.reshape(-1, 1, 1, 1)).to(x.device, x.dtype)


def _compile_supports(case: Case, device: torch.device) -> str | None:
    if device.type == "cpu" and not any(shutil.which(c) for c in (os.environ.get("CXX"), "g++", "clang++") if c):
        return "torch.compile on the CPU needs a C++ compiler (g++ or clang++; none on PATH)"
    return None


def _compile_prepare(case: Case, device: torch.device) -> Prepared:
    torch._dynamo.reset()  # a fresh cache per case: one static-shape graph each, no recompile limit across cases
    return torch.compile(reference_apply, dynamic=False)


def _triton_supports(case: Case, device: torch.device) -> str | None:
    try:
        from fedgin.kernels import unsupported_reason
    except ImportError as err:
        return f"fedgin.kernels is not importable ({err})"
    if device.type == "cpu" and case.elements > INTERPRETER_MAX_ELEMENTS:
        return (f"on the CPU the kernel runs in Triton's interpreter (about 1 s per 256 elements): only cases of "
                f"at most {INTERPRETER_MAX_ELEMENTS} elements")
    x = torch.empty((), dtype=case.torch_dtype, device=device).expand(case.shape)
    return unsupported_reason(x, draw_params(case, "cpu"))


ONE_LAUNCH_MAX_SAMPLE = 2**20  # elements: one program rescales a whole sample (about 4 MiB in float32)


def _one_launch_supports(case: Case, device: torch.device) -> str | None:
    if case.torch_dtype == torch.float16:
        return "float16 output keeps two passes (the unscaled mix can overflow float16)"
    if case.elements // case.batch > ONE_LAUNCH_MAX_SAMPLE:
        return (f"one program rescales a whole sample: only samples of at most {ONE_LAUNCH_MAX_SAMPLE} elements "
                "(bench/NOTES.md, v1.4)")
    return _triton_supports(case, device)


def _one_launch_prepare(case: Case, device: torch.device) -> Prepared:
    from fedgin.kernels import gin_fused, make_plan

    plan = make_plan(case.shape, case.kernel_sizes, case.interm, finish=True)
    return lambda x, params: gin_fused(x, params, plan=plan)


def skip_reason(impl: Impl, case: Case, device: torch.device, preset: str, deadline: float) -> str | None:
    """Why ``impl`` does not run on ``case`` here, or None."""
    if time.monotonic() > deadline:
        return "the run's time budget (--budget-s) was spent"
    if impl.heavy and preset != "full" and impl.name not in case.heavy:
        return f"{impl.name} runs only on this preset's key cases (preparation or run time); the full preset runs all"
    return impl.supports(case, device)


def _same(fn: Prepared) -> Callable[[Case, torch.device], Prepared]:
    return lambda case, device: fn


register(Impl("reference", "reference eager: the original's grouped convolution per layer (fedgin.reference_apply)",
              _same(reference_apply)))
register(Impl("compile", "the reference under torch.compile (static shapes, default mode)", _compile_prepare,
              _compile_supports, heavy=True))
register(Impl("triton", "fedgin's fused Triton kernel: gin_apply(x, p, backend='triton', check_finite=False)",
              _same(functools.partial(gin_apply, backend="triton", check_finite=False)), _triton_supports))
register(Impl("triton-1launch", "the fused kernel in one launch: each sample's last program renormalizes it "
              "(make_plan(..., finish=True))", _one_launch_prepare, _one_launch_supports))
register(Impl("loop", "slow baseline: per sample, per layer F.conv2d/conv3d", _same(per_sample_loop)))
register(Impl("authors", "FedGIN authors' released configuration: one network per batch, computed on the CPU "
              "and copied back", _same(authors_cpu),
              lambda case, device: None if case.dims == 2 else "the FedGIN authors' GIN is 2D only",
              shared_network=True, heavy=True, graphable=False))
