"""What each class of the stream kernel's plane-loop instructions costs, measured on a GPU by taking it out.

``python -m tools.kernel_lab.ablate [--case N ...]``: for each case of :data:`CASES`, GIN runs once with the plan
(compiling its stream kernel); then, for each class of :data:`CLASSES`, every instruction of that class in the plane
loop (the largest loop of the SASS) is overwritten with a ``NOP`` in the kernel's cubin, which keeps the instruction's
stall count and scoreboard waits and sets no scoreboard, and the call is timed from a CUDA graph against the unpatched
kernel's time in the same run. The outputs are garbage (registers keep stale values, the scratch races without its
barriers), the control flow and every address are not: an instruction is only removed where every value it writes feeds
floating-point math alone (``FFMA``, ``FADD``, ``FMUL``, ``FSEL``, ``FMNMX``) until it is written again, on every path
through the loop and out of it, so no address, bound or predicate reads a garbage value. The time a class saves is what
it costs the kernel, measured (bench/NOTES.md, v1.15: what the issue model cannot separate). Classes: ``bar`` (the
barriers), ``uldc`` (kernel arguments into uniform registers: the weights of a ``wargs`` plan), ``ldg`` (global loads:
the input's, the scratch's, loaded weights), ``stg`` (global stores: the scratch's and the output's) and ``all`` of
them. Everything else of the call (the scale pass, other launches) runs unpatched. """
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import struct
import sys
from collections.abc import Callable, Iterator

import torch

from fedgin.bench import timing
from fedgin.bench.cases import Case, draw_params, image_like, split_candidate
from fedgin.kernels import gin_fused, make_plan
from fedgin.kernels.gin import gin_stream_kernel

from .sass import Instr, branches, listing, loop_span

# (case, plan overrides): the headline cases with their default plans for an explicit draw (3D 128³: a launch a
# sample, v1.13; 2D: the weights loaded) and a shared network in 2D (its default for one network a batch)
CASES: tuple[tuple[Case, dict], ...] = (
    (Case(2, 3, (128,) * 3), {"wargs": True}),
    (Case(64, 3, (256, 256)), {}),
    (Case(64, 3, (256, 256)), {"wargs": True, "shared_network": True}),
)
FLOAT_USERS = {"FFMA", "FADD", "FMUL", "FSEL", "FMNMX"}
NOP_LO = 0x7918  # sm_90 NOP, predicate PT
KEEP = (0xF << 41) | (1 << 45) | (0x3F << 52)  # control bits kept: stall count, yield, scoreboard wait mask
NO_SCOREBOARD = (7 << 46) | (7 << 49)  # sets no scoreboard on write or on read


def _float_only_along(path: list[tuple[int, Instr]], live: set[str], skippable: set[int]) -> bool:
    """Whether, along ``path`` (index, instruction), every read of a register of ``live`` is by floating-point math
    until the register is written for certain (no predicate, no branch around the write)."""
    live = set(live)
    for i, ins in path:
        if not live:
            return True
        if ins.reads() & live and ins.base not in FLOAT_USERS:
            return False
        if not ins.predicated and i not in skippable:
            live -= ins.writes()
    return True


def float_only_check(instrs: list[Instr], span: tuple[int, int]) -> Callable[[int], bool]:
    """For the loop ``span`` of ``instrs``: whether what loop instruction ``i`` writes is read by floating-point math
    alone, on the path round the loop back to ``i`` and on the path out of it, where an instruction a forward branch
    may skip counts as read but not as a certain write. A loop with another loop inside, or another way out, is not
    analysed (always False). The branches are read once for every instruction asked about."""
    start, end = span
    jumps = branches(instrs)
    if any(start <= b < end - 1 and not b < t < end for b, t in jumps.items()) or any(
            ins.base == "EXIT" for ins in instrs[start:end]):
        return lambda i: False  # a loop inside, or a way out of the loop but its end
    skippable = {k for b, t in jumps.items() if start <= b < t for k in range(b + 1, t)}
    numbered = list(enumerate(instrs))

    def check(i: int) -> bool:
        written = instrs[i].writes()
        around = numbered[i + 1:end] + numbered[start:i]
        return bool(written) and _float_only_along(around, written, skippable) and _float_only_along(
            numbered[i + 1:], written, skippable)

    return check


CLASSES = {
    "bar": lambda ins, safe: ins.base == "BAR",
    "uldc": lambda ins, safe: ins.base == "ULDC" and safe(),
    "ldg": lambda ins, safe: ins.base == "LDG" and safe(),
    "stg": lambda ins, safe: ins.base == "STG",
}


def removals(instrs: list[Instr]) -> dict[str, list[int]]:
    """Indices of the loop's instructions each class removes (:data:`CLASSES`), and ``all`` of them."""
    span = loop_span(instrs)
    safe = float_only_check(instrs, span)
    out = {name: [i for i in range(*span) if pick(instrs[i], lambda i=i: safe(i))] for name, pick in CLASSES.items()}
    out["all"] = sorted({i for idx in out.values() for i in idx})
    return out


def text_offset(cubin: bytes) -> int:
    """File offset of the kernel's code (the ELF section ``.text.<kernel>``)."""
    shoff, = struct.unpack_from("<Q", cubin, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", cubin, 0x3A)
    sections = [struct.unpack_from("<IIQQQQ", cubin, shoff + k * shentsize) for k in range(shnum)]
    names = sections[shstrndx][4]
    found = [s[4] for s in sections if cubin[names + s[0]:].startswith(b".text.")]
    if len(found) != 1:
        raise ValueError(f"expected one kernel text section, found {len(found)}")
    return found[0]


def patch(cubin: bytes, instrs: list[Instr], indices: list[int]) -> bytes:
    """``cubin`` with the instructions at ``indices`` replaced by NOPs that keep their stall counts and waits."""
    out = bytearray(cubin)
    base = text_offset(cubin)
    for i in indices:
        ins = instrs[i]
        struct.pack_into("<QQ", out, base + ins.addr, NOP_LO, (ins.hi & KEEP) | NO_SCOREBOARD)
    return bytes(out)


@contextlib.contextmanager
def patched_stream_kernels(cubins: dict) -> Iterator[None]:
    """Launch the stream kernels of ``cubins`` (cache key -> patched cubin) in place of the compiled ones."""
    device = torch.cuda.current_device()
    cache = gin_stream_kernel.device_caches[device][0]
    saved = {key: cache[key] for key in cubins}
    try:
        for key, cubin in cubins.items():
            kernel = copy.copy(saved[key])
            kernel.kernel, kernel.module, kernel.function, kernel._run = cubin, None, None, None
            cache[key] = kernel
        yield
    finally:
        cache.update(saved)


def ablate_case(case: Case, overrides: dict, settings: timing.TimingSettings, seed: int = 0) -> list[dict]:
    """One row per class: the call's CUDA-graph median with that class taken out of its stream kernels' loops."""
    device = torch.device("cuda")
    keywords, shared = split_candidate(overrides)
    plan = make_plan(case.shape, case.kernel_sizes, case.interm, **keywords)
    x = image_like(case, device, torch.Generator(device=device).manual_seed(seed))
    params = draw_params(case, device, per_sample=not shared, generator=torch.Generator().manual_seed(seed))
    out = torch.empty_like(x)
    cache = gin_stream_kernel.device_caches[torch.cuda.current_device()][0]
    before = set(cache)
    gin_fused(x, params, out=out, plan=plan)
    torch.cuda.synchronize()
    keys = [key for key in cache if key not in before]
    if not keys:
        raise RuntimeError("the plan's stream kernel was compiled before this call: run each case in a fresh process")
    call = lambda: gin_fused(x, params, out=out, plan=plan)  # noqa: E731
    base_ms = timing.graph_median_ms(call, settings)
    label = f"{case.label} {json.dumps(overrides) if overrides else 'default'}"
    rows = [{"case": label, "class": "none", "removed": 0, "ms_graph": base_ms, "saved": 0.0}]
    listings = {key: listing(cache[key].asm["cubin"]) for key in keys}
    taken = {key: removals(instrs) for key, instrs in listings.items()}
    for name in (*CLASSES, "all"):
        cubins = {key: patch(cache[key].asm["cubin"], listings[key], taken[key][name]) for key in keys}
        with patched_stream_kernels(cubins):
            ms = timing.graph_median_ms(call, settings)
        rows.append({"case": label, "class": name, "removed": sum(len(taken[k][name]) for k in keys),
                     "ms_graph": ms, "saved": 1 - ms / base_ms})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.kernel_lab.ablate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", type=int, action="append", help=f"index into CASES (0-{len(CASES) - 1}; "
                        "default: all; a plan already compiled in this process cannot be ablated)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("tools.kernel_lab.ablate needs a CUDA device", file=sys.stderr)
        return 1
    settings = timing.TimingSettings()
    print("| case | removed from the plane loop | instructions | graph ms | time saved |\n|---|---|---:|---:|---:|")
    failed = False
    for i, (case, overrides) in enumerate(CASES):
        if args.case and i not in args.case:
            continue
        try:
            rows = ablate_case(case, overrides, settings)
        except Exception as err:  # noqa: BLE001 - a case that fails is reported; the others still run
            print(f"| {case.label} {overrides} | failed: {type(err).__name__}: {err} | | | |", flush=True)
            failed = True
            continue
        for r in rows:
            print(f"| {r['case']} | {r['class']} | {r['removed']} | {r['ms_graph']:.4f} | {r['saved']:.1%} |",
                  flush=True)
        print("ablate-json " + json.dumps(rows), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
