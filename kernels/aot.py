"""Compile every kernel specialization the dispatcher produces for sm_90, on a machine without a GPU.

The interpreter accepts code the GPU compiler rejects, so CI runs ``python -m fedgin.kernels.aot``
(without ``TRITON_INTERPRET``); it prints registers and spills per specialization (from ptxas -v)
and exits non-zero if any fails to compile.
"""
from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from . import gin
from .launch import (
    PBLOCK,
    SCALE_BLOCK,
    V15_2D,
    V15_3D,
    Plan,
    arg_floats,
    default_wargs,
    make_plan,
    stream_args,
    stream_modes,
)

TARGET = GPUTarget("cuda", 90, 32)
_PTR = {torch.float32: "*fp32", torch.float16: "*fp16", torch.bfloat16: "*bf16"}
_FLOATS = ("slope", "eps")
LAUNCH_OPTIONS = ("num_warps", "maxnreg", "num_stages")  # compile options among the launch arguments of stream_args
# plans the sweep (bench/sweep.py) times against the defaults: v1.5's, and the 3D weights as kernel arguments
ALTERNATIVES = {(2, 3, 512, 300): (V15_2D,), (2, 3, 16, 128, 128): (V15_3D, {"wargs": True})}


@dataclass(frozen=True)
class Net:
    """The network a launch reads (the fields and methods of ``fedgin.GINConfig`` it uses), so that this module
    compiles without importing fedgin: C -> M -> ... -> M -> C, each layer's size drawn from ``kernel_sizes``."""

    in_channels: int
    interm_channels: int
    n_layers: int
    kernel_sizes: tuple[int, ...]
    per_sample: bool = True
    slope: float = 0.01
    eps: float = 1e-5
    layer_kernel_sizes: tuple[int, ...] | None = None

    def channels(self) -> list[tuple[int, int]]:
        c, m, n = self.in_channels, self.interm_channels, self.n_layers
        return [(c if l == 0 else m, c if l == n - 1 else m) for l in range(n)]

    def max_sizes(self) -> tuple[int, ...]:
        return self.layer_kernel_sizes or (max(self.kernel_sizes),) * self.n_layers


class Shape:
    """Stand-in for ``fedgin.GINParams`` with just what the launch arguments need."""

    has_host_copy = True  # as a draw made on the CPU

    def __init__(self, kernel_sizes: tuple[int, ...], channels: int, interm: int, per_sample: bool = True) -> None:
        self.kernel_sizes = kernel_sizes
        self.config = Net(channels, interm, len(kernel_sizes), (1, 3) if max(kernel_sizes) <= 3 else (1, 3, 5),
                          per_sample)


def specializations() -> Iterator[tuple[tuple[int, ...], tuple[int, ...], torch.dtype, int, int]]:
    """(shape, kernel sizes, dtype, C, M): every tile shape the planner picks, every dtype and mode,
    and the extremes of the layer configs (1x1/5x5 kernels, 2 and 8 layers, C 1 and 4, M 1 and 8)."""
    k4 = (3, 3, 3, 3)
    for h, w in ((7, 5), (70, 20), (100, 56), (512, 300)):  # 2D column tiles 16 .. 64, bands 1 .. 16
        yield (2, 3, h, w), k4, torch.float32, 3, 2
    for d, h, w in ((5, 7, 9), (4, 20, 20), (16, 128, 128), (5, 7, 300), (128, 128, 128)):  # 3D tiles 16 .. 32
        yield (2, 3, d, h, w), k4, torch.float32, 3, 2
    for dtype in (torch.bfloat16, torch.float16):
        yield (64, 3, 256, 256), k4, dtype, 3, 2
        yield (2, 3, 128, 128, 128), k4, dtype, 3, 2
    for shape in ((8, 1, 192, 192), (2, 1, 64, 64, 64)):
        yield shape, (1, 3, 1, 3), torch.float32, 1, 2
        yield shape, (5, 5), torch.float32, 1, 1
        yield shape, (1, 1), torch.float32, 1, 1
    yield (4, 4, 64, 64), (3,) * 8, torch.float32, 4, 8
    yield (2, 4, 32, 32, 32), (3, 1), torch.float32, 4, 8


def _signature(kernel, args: dict, dtype: torch.dtype) -> tuple[dict, dict]:
    names = kernel.arg_names
    sig, const = {}, {}
    for name in names:
        if name in ("x_ptr", "out_ptr"):
            sig[name] = _PTR[dtype]
        elif name in ("cnt_ptr", "tab_ptr", "err_ptr"):
            sig[name] = "*i32"
        elif name == "seed_ptr":
            sig[name] = "*i64"
        elif name.endswith("_ptr"):
            sig[name] = "*fp32"
        elif kernel.params[names.index(name)].is_constexpr:
            sig[name], const[name] = "constexpr", args[name]
        elif name in _FLOATS:
            sig[name] = "fp32"
        elif name == "wargs":  # a parameter row as kernel arguments, or nothing
            sig[name] = ("fp32",) * len(args[name])
        elif args.get(name) == 1 and not kernel.params[names.index(name)].do_not_specialize:
            # as at launch: Triton specializes an integer argument equal to 1 as a constant
            sig[name], const[name] = "constexpr", 1
        else:
            sig[name] = "i32"
    return sig, const


def _ptxas_report(ptx: str) -> str:
    ptxas = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "k.ptx"
        src.write_text(ptx)
        res = subprocess.run([str(ptxas), "-v", "--gpu-name", "sm_90a", str(src), "-o", os.devnull],
                             capture_output=True, text=True, check=True)
    return " | ".join(line.split("info    : ")[-1].strip() for line in res.stderr.splitlines()
                      if "registers" in line or "spill" in line)


def compile_stream(shape, kernel_sizes, dtype, channels, interm, mode: int, plan: Plan | None = None,
                   draw: bool = False) -> str:
    """Compile one stream-kernel specialization for sm_90 (``plan``: default :func:`make_plan`'s; ``draw``: the
    seeded call's, drawing its parameters in the kernel); returns the ptxas register/spill report."""
    plan, compiled = compiled_stream(shape, kernel_sizes, dtype, channels, interm, mode, plan, draw)
    return f"{plan} | {_ptxas_report(compiled.asm['ptx'])}"


def compiled_stream(shape, kernel_sizes, dtype, channels, interm, mode: int, plan: Plan | None = None,
                    draw: bool = False):
    """(plan, Triton's compiled kernel for sm_90): its ``asm`` holds the PTX and the cubin."""
    plan, source, options = stream_source(shape, kernel_sizes, dtype, channels, interm, mode, plan, draw)
    return plan, triton.compile(source, target=TARGET, options=options)


def stream_source(shape, kernel_sizes, dtype, channels, interm, mode: int, plan: Plan | None = None,
                  draw: bool = False):
    """(plan, the stream kernel's source specialized as a launch would, compile options)."""
    params = Shape(tuple(kernel_sizes), channels, interm)
    plan = plan or make_plan(tuple(shape), params.kernel_sizes, interm, finish=mode == int(gin.STORE_FINISH))
    # prm_stride: a multiple of 16 (pack_params), which a launch specializes on as it does on aligned pointers
    args = stream_args(torch.empty(shape, device="meta"), params, plan, draw) | {"MODE": mode, "prm_stride": 16}
    if plan.wargs:
        args["wargs"] = (0.5,) * arg_floats(channels, interm, params.kernel_sizes, len(shape) - 2)
    sig, const = _signature(gin.gin_stream_kernel, args, dtype)
    options = {k: args[k] for k in LAUNCH_OPTIONS if k in args}
    names = gin.gin_stream_kernel.arg_names
    attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in names if n.endswith("_ptr") or n == "prm_stride"}
    return plan, ASTSource(gin.gin_stream_kernel, sig, const, attrs), options


def compile_pass(kernel, dtype: torch.dtype, **constexprs) -> str:
    """Compile an elementwise pass (the scale pass, the GIN-IPA blend) for sm_90; returns the ptxas report."""
    sig, const = _signature(kernel, {"BLOCK": SCALE_BLOCK, "PBLOCK": PBLOCK, **constexprs}, dtype)
    compiled = triton.compile(ASTSource(kernel, sig, const), target=TARGET, options={"num_warps": 4})
    return _ptxas_report(compiled.asm["ptx"])


def stream_jobs() -> list[list[tuple[str, tuple]]]:
    """(label, :func:`compile_stream` arguments) of every stream-kernel specialization :func:`main` compiles, grouped
    by the kernel they compile to (shapes with one plan, a batch's network shared or not: one compile each)."""
    jobs: dict[tuple, list[tuple[str, tuple]]] = {}
    for shape, ks, dtype, c, m in specializations():
        variants = [(mode, {}) for mode in dict.fromkeys(stream_modes(dtype) + stream_modes(dtype, finish=True))]
        variants.append((stream_modes(dtype)[0], {"draw": True}))  # the seeded call's first launch (the default)
        if shape in ALTERNATIVES and dtype == torch.float32:  # the default tiles' alternatives in the plan sweep
            variants += [(stream_modes(dtype)[0], overrides) for overrides in ALTERNATIVES[shape]]
        x = torch.empty(shape, dtype=dtype, device="meta")
        for per_sample in (False, True):  # the weights as arguments wherever the dispatcher's default takes them
            if default_wargs(x, [Shape(ks, c, m, per_sample)]):
                variants += [(mode, {"wargs": True, "shared_network": not per_sample}) for mode in stream_modes(dtype)]
        for mode, overrides in variants:
            label = f"stream {shape} ks={ks} C={c} M={m} {dtype} mode={mode} {overrides or 'default plan'}"
            draw = overrides.pop("draw", False)
            plan = make_plan(shape, ks, m, finish=mode == int(gin.STORE_FINISH), **overrides)
            _, source, options = stream_source(shape, ks, dtype, c, m, mode, plan, draw)
            jobs.setdefault((source.hash(), tuple(sorted(options.items()))), []).append(
                (label, (shape, ks, dtype, c, m, mode, plan, draw)))
    return list(jobs.values())


def _try_compile(group: list[tuple[str, tuple]]) -> tuple[str, bool]:
    """(the report lines, whether it compiled) of one :func:`stream_jobs` group: its first job compiled."""
    (label, args), *same = group
    start = time.perf_counter()
    try:
        line, ok = f"{label}: {compile_stream(*args)} | {time.perf_counter() - start:.1f} s", True
    except Exception as err:  # report every failing specialization, then fail
        line, ok = f"{label}: FAILED {type(err).__name__}: {err}", False
    return "\n".join([line] + [f"{other}: the same kernel" for other, _ in same]), ok


def main() -> int:
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("unset TRITON_INTERPRET: this compiles for the GPU", file=sys.stderr)
        return 2
    for dtype in _PTR:
        print(f"scale {dtype}: {compile_pass(gin.gin_scale_kernel, dtype)}")
        scaled = dtype == torch.float16  # as gin_ipa_fused launches it
        print(f"ipa {dtype}: {compile_pass(gin.gin_ipa_kernel, dtype, SCALED=scaled)}")
    failures = 0
    # a compile is one CPU's work (LLVM, then ptxas): one process a CPU, the reports in order
    with ProcessPoolExecutor(os.cpu_count() or 1, mp_context=multiprocessing.get_context("spawn")) as pool:
        for line, ok in pool.map(_try_compile, stream_jobs()):
            failures += not ok
            print(line, flush=True)
    print(f"{failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
