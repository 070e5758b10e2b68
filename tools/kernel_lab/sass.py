"""A static issue model of the stream kernel, from its SASS (compiled for sm_90 on a machine without a GPU).

``python -m tools.kernel_lab.sass [--case N]``: for each plan of the sweep (:data:`bench.sweep.GPU_SWEEP`), compile the
stream kernel, disassemble the plane loop's body (``cuobjdump``, shipped in Triton's wheel) and count its instructions
per SM pipe. One warp's step costs the SM at least ``max(issue, fp32, alu, mio)`` clocks, where

- issue: every instruction, 4 a clock (four schedulers);
- fp32: FFMA / FADD / FMUL and the packed half ops, 4 warp instructions a clock (128 lanes);
- alu: integer, compare, select and logic, 2 a clock (64 lanes);
- mio: global, shared and shuffle traffic (LDG, STG, LDS, STS, SHFL, atomics), 1 warp instruction a clock
  (32 load-store lanes an SM; the CUDA guide's 32 shuffles a clock), a 64- or 128-bit access counting 2 or 4: the
  pipe moves 32 words a clock, so four weights in one 128-bit load cost what four loads do. The second H200 run
  says so: with widths counted, 14 of its 15 timed plans sit at 1.42-1.62x their bound, without, the 128-bit ones
  sat at 1.9-2.6x (bench/NOTES.md, v1.9). ``ULDC`` (kernel arguments into uniform registers) only issues.

These are the throughputs of the CUDA C++ guide's table for compute capability 9.0; latency, dependencies and
bank conflicts are not modelled, so the time is a bound, not a prediction of itself. What it is for: comparing
plans, where the measured kernels' ratio to their bound is known (bench/NOTES.md, v1.7). The grid is placed
in waves of ``CTAs an SM`` (by registers, 64 K an SM, and shared memory) on the SMs, each SM's CTAs sharing its pipes.
"""
from __future__ import annotations

import argparse
import json
import math
import re
import subprocess
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
import triton

from fedgin.bench.cases import Case, split_candidate
from fedgin.kernels import aot
from fedgin.kernels.launch import H100_SMS, Plan, make_plan, stream_args, stream_modes

CLOCK_GHZ = 1.98  # H100 / H200 SXM boost clock
REGISTERS_PER_SM = 65536
SHARED_PER_SM = 227 * 1024  # bytes a CTA may use of an sm_90 SM's shared memory, at most
PER_CLOCK = {"issue": 4.0, "fp32": 4.0, "alu": 2.0, "mio": 1.0}  # warp instructions an SM a clock
FP32 = {"FFMA", "FADD", "FMUL", "HFMA2", "HADD2", "HMUL2", "FMNMX", "FSEL"}
ALU = {"IADD3", "IMAD", "ISETP", "LOP3", "SEL", "SHF", "LEA", "FSETP", "PLOP3", "IMNMX", "PRMT", "IABS", "F2I",
       "I2F", "F2F", "MOV", "P2R", "R2P"}
MIO = {"LDG", "STG", "LDS", "STS", "SHFL", "ATOM", "ATOMG", "RED", "LDSM", "LDGSTS", "LD", "ST", "LDL", "STL"}
WIDE = {"LDG", "STG", "LDS", "STS", "LD", "ST", "LDL", "STL"}  # accesses of 32, 64 or 128 bits a lane
_BIN = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
# opcodes whose operands are all read (no destination register)
READ_ONLY = {"STG", "STS", "STL", "ST", "RED", "BAR", "BRA", "EXIT", "MEMBAR", "NOP", "BSYNC", "WARPSYNC", "CCTL"}
_LINE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;\s*/\* (0x[0-9a-f]{16}) \*/")
_WORD = re.compile(r"/\* (0x[0-9a-f]{16}) \*/")
_REG = re.compile(r"\b(U?R)(\d+)(\.64|\.128)?")


@dataclass(frozen=True)
class Instr:
    """One SASS instruction: its address in the kernel's text, its text and its two 64-bit words."""

    addr: int
    text: str
    lo: int
    hi: int

    @property
    def predicated(self) -> bool:
        return self.text.startswith("@")

    @property
    def op(self) -> str:
        """The opcode with its modifiers (``LDG.E.128``), without the predicate."""
        return self.text.split()[1 if self.predicated else 0]

    @property
    def base(self) -> str:
        return self.op.split(".", 1)[0]

    def _operands(self) -> list[str]:
        rest = self.text.split(None, 2 if self.predicated else 1)
        return rest[-1].split(",") if len(rest) > (2 if self.predicated else 1) else []

    def writes(self) -> set[str]:
        """Registers the instruction writes (its first operand, unless it only reads its operands)."""
        ops = self._operands()
        if not ops or self.base in READ_ONLY:
            return set()
        width = 4 if ".128" in self.op else 2 if ".64" in self.op or ".WIDE" in self.op else 1
        m = _REG.search(ops[0])
        return {f"{m.group(1)}{int(m.group(2)) + i}" for i in range(width)} if m else set()

    def reads(self) -> set[str]:
        """Registers the instruction reads: a ``.64`` operand or a ``desc[URn]`` is a pair, a wide store's value and
        ``IMAD.WIDE``'s addend are 2 or 4 registers."""
        ops = self._operands()
        sources = ops if self.base in READ_ONLY else ops[1:]
        wide = 4 if ".128" in self.op else 2 if ".64" in self.op else 1
        regs = set()
        for k, operand in enumerate(sources):
            last = k == len(sources) - 1
            for kind, index, suffix in _REG.findall(operand):
                width = 2 if suffix == ".64" or f"desc[{kind}{index}]" in operand else 1
                if last and (self.base in READ_ONLY and wide > 1 or ".WIDE" in self.op):
                    width = max(width, wide if self.base in READ_ONLY else 2)
                regs |= {f"{kind}{int(index) + i}" for i in range(width)}
        return regs


def listing(cubin: bytes) -> list[Instr]:
    """The instructions of the cubin's kernel (``cuobjdump -sass``), in address order."""
    lines = _tool("cuobjdump", cubin, "-sass").splitlines()
    out = []
    for i, line in enumerate(lines):
        if m := _LINE.search(line):
            hi = _WORD.search(lines[i + 1])
            out.append(Instr(int(m.group(1), 16), m.group(2).strip(), int(m.group(3), 16), int(hi.group(1), 16)))
    return out


def branches(instrs: list[Instr]) -> dict[int, int]:
    """Index of each branch -> index of its target (branches to no instruction of the listing left out)."""
    index = {ins.addr: i for i, ins in enumerate(instrs)}
    out = {}
    for i, ins in enumerate(instrs):
        if ins.base == "BRA" and (m := re.search(r"0x([0-9a-f]+)", ins.text.split("BRA", 1)[1])):
            if (target := index.get(int(m.group(1), 16))) is not None:
                out[i] = target
    return out


def loop_span(instrs: list[Instr]) -> tuple[int, int]:
    """``(start, end)`` indices of the largest loop: from a backward branch's target to the branch, inclusive."""
    best = (0, 0)
    for i, target in branches(instrs).items():
        if target <= i and i + 1 - target > best[1] - best[0]:
            best = (target, i + 1)
    if best == (0, 0):
        raise ValueError("no loop in this SASS")
    return best


def plane_loop(instrs: list[Instr]) -> list[str]:
    """Opcodes, with their modifiers (``LDG.E.128``), of the largest loop of ``instrs`` (:func:`listing`): the stream
    kernel's plane loop is its largest loop."""
    start, end = loop_span(instrs)
    return [ins.op for ins in instrs[start:end]]


def base(op: str) -> str:
    """``op`` without its modifiers: ``LDG.E.128`` is an ``LDG``."""
    return op.split(".", 1)[0]


def mio_slots(op: str) -> int:
    """Clocks of the load-store pipe ``op`` takes: its 32-bit words a lane (module docstring)."""
    name = base(op)
    if name not in MIO:
        return 0
    if name in WIDE:
        return 4 if ".128" in op else 2 if ".64" in op else 1
    return 1


def pipe_counts(ops: list[str]) -> dict[str, int]:
    """Warp instructions per pipe (``issue`` counts them all; ``mio`` its clocks, :func:`mio_slots`)."""
    counts = Counter({"issue": len(ops), "fp32": 0, "alu": 0, "mio": 0})
    for op in ops:
        name = base(op)
        counts["fp32"] += name in FP32
        counts["alu"] += name in ALU
        counts["mio"] += mio_slots(op)
    return dict(counts)


@dataclass(frozen=True)
class Bound:
    """The issue model's bound for one plan of one case."""

    plan: Plan
    registers: int
    loop: dict[str, int]  # warp instructions per step, per pipe
    local: int  # of which spill loads and stores (LDL, STL)
    ctas_per_sm: int
    steps: float  # plane steps per program
    programs: int  # CTAs a launch (a launch a sample with ``plan.wargs``)
    us: float  # the bound, microseconds
    limit: str  # the pipe that sets it
    sms: int = H100_SMS

    @property
    def warps_per_sm(self) -> int:
        """Warps resident on an SM in the first wave: fewer than its CTAs allow where the grid is small."""
        return min(self.ctas_per_sm, math.ceil(self.programs / self.sms)) * self.plan.num_warps

    @property
    def issue_us(self) -> float:
        """The bound were the issue slots the only limit: every instruction one slot, no pipe slower. The timed
        plans follow it more closely than the bound (bench/NOTES.md, v1.15)."""
        return self.us * (self.loop["issue"] / PER_CLOCK["issue"]) / (self.loop[self.limit] / PER_CLOCK[self.limit])

    def row(self) -> dict:
        return {"registers": self.registers, "loop": self.loop, "local": self.local,
                "ctas_per_sm": self.ctas_per_sm, "warps_per_sm": self.warps_per_sm,
                "programs": self.programs, "steps": round(self.steps, 2), "bound_us": round(self.us, 1),
                "limit": self.limit}


def _tool(name: str, cubin: bytes, *args: str) -> str:
    """Output of one of the wheel's CUDA binaries (``nvdisasm``, ``cuobjdump``) run on ``cubin``."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "k.cubin"
        path.write_bytes(cubin)
        return subprocess.run([str(_BIN / name), *args, str(path)], capture_output=True, text=True,
                              check=True).stdout


def registers(cubin: bytes) -> int:
    """Registers a thread (``cuobjdump -res-usage``)."""
    return int(re.search(r"REG:(\d+)", _tool("cuobjdump", cubin, "-res-usage")).group(1))


def model(loop: dict[str, int], plan: Plan, programs: int, steps: float, registers: int, sms: int = H100_SMS,
          shared: int = 0, launches: int = 1) -> tuple[float, str, int]:
    """(bound in µs, limiting pipe, CTAs an SM) for ``launches`` grids of ``programs`` CTAs of ``plan.num_warps``
    warps, each running ``steps`` plane steps of the ``loop`` counts, with ``registers`` a thread and ``shared``
    bytes a CTA."""
    threads = 32 * plan.num_warps
    ctas = min(32, REGISTERS_PER_SM // (max(registers, 16) * threads), 64 // plan.num_warps)
    ctas = max(1, min(ctas, SHARED_PER_SM // shared) if shared else ctas)
    per_step = {pipe: n / PER_CLOCK[pipe] for pipe, n in loop.items()}
    limit = max(per_step, key=per_step.get)
    clocks, left = 0.0, programs
    while left > 0:  # each wave: the SMs' CTAs share the pipes; the last wave may be partial
        wave = min(left, sms * ctas)
        clocks += math.ceil(wave / sms) * plan.num_warps * steps * per_step[limit]
        left -= wave
    return launches * clocks / (CLOCK_GHZ * 1e3), limit, ctas


def bound(case: Case, overrides: dict | None = None, mode: int | None = None, sms: int = H100_SMS,
          plan: Plan | None = None) -> Bound:
    """Compile ``case``'s stream kernel for sm_90 with ``plan`` (default: ``make_plan`` with the sweep candidate
    ``overrides``) and bound it; ``mode``: the first pass the call launches unless given. A ``wargs`` plan launches
    once a sample, or once for the batch where the candidate shares one network."""
    keywords, shared = split_candidate(overrides or {})
    plan = plan or make_plan(case.shape, case.kernel_sizes, case.interm, sms=sms, **keywords)
    mode = stream_modes(case.torch_dtype, plan.finish)[0] if mode is None else mode
    plan, compiled = aot.compiled_stream(case.shape, case.kernel_sizes, case.torch_dtype, case.channels,
                                         case.interm, mode, plan)
    regs = registers(compiled.asm["cubin"])
    ops = plane_loop(listing(compiled.asm["cubin"]))
    loop = pipe_counts(ops)
    shape = aot.Shape(case.kernel_sizes, case.channels, case.interm)
    args = stream_args(torch.empty(case.shape, device="meta"), shape, plan)
    steps = float(args["n_steps"])
    launches = case.batch if plan.wargs and not shared else 1  # a launch a sample, or one for the batch
    programs = case.batch * plan.n_tiles // launches
    us, limit, ctas = model(loop, plan, programs, steps, regs, sms, compiled.metadata.shared, launches)
    local = sum(base(op) in ("LDL", "STL") for op in ops)
    return Bound(plan, regs, loop, local, ctas, steps, programs, us, limit, sms)


def call_bound_us(case: Case, passes: list[Bound], copy_gb_s: float, issue_only: bool = False) -> float:
    """The bound of a whole call from the bounds of its stream ``passes`` (their issue-slot bounds if
    ``issue_only``): plus one read and write of the output at ``copy_gb_s`` where the call rescales it (the scale
    pass, or the one-launch plan's last program)."""
    us = sum(b.issue_us if issue_only else b.us for b in passes)
    if len(passes) == 1:
        us += 2 * case.elements * case.torch_dtype.itemsize / (copy_gb_s * 1e3)
    return us


def calibrate(report: dict, cases: list[Case]) -> list[dict]:
    """Measured time over the bound for every timed row of a sweep report (``ms_graph``, else ``ms``), and over the
    issue-slot bound (``x_issue``)."""
    by_id = {case.id: case for case in cases}
    rows = []
    for row in report["rows"]:
        case = by_id.get(row["case_id"])
        measured = row.get("ms_graph") or row.get("ms")
        if row["status"] != "ok" or row["plan"] is None or case is None or not measured:
            continue  # also the eager reference's row (no plan)
        plan = Plan(**row["plan"])
        modes = stream_modes(case.torch_dtype, plan.finish)
        passes = [bound(case, row["overrides"], mode, plan=plan) for mode in modes]
        us = call_bound_us(case, passes, report["copy"]["gb_s"])
        issue = call_bound_us(case, passes, report["copy"]["gb_s"], issue_only=True)
        rows.append({"case": case.label, "overrides": row["overrides"], "warps_per_sm": passes[0].warps_per_sm,
                     "measured_us": round(measured * 1e3, 1), "bound_us": round(us, 1),
                     "ratio": round(measured * 1e3 / us, 2), "x_issue": round(measured * 1e3 / issue, 2)})
    return rows


def _label(overrides: dict) -> str:
    return json.dumps(overrides) if overrides else "default"


def main(argv: list[str] | None = None) -> int:
    from fedgin.bench.sweep import GPU_SWEEP

    parser = argparse.ArgumentParser(prog="python -m tools.kernel_lab.sass", description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", type=int, action="append", help="sweep case index (default: all)")
    parser.add_argument("--json", action="store_true", help="one JSON object a line instead of a table")
    parser.add_argument("--calibrate", metavar="SWEEP_JSON", help="measured time over the bound, per row of a sweep")
    args = parser.parse_args(argv)
    if args.calibrate:
        print("| case | overrides | warps/SM | measured µs | bound µs | ratio | over issue |\n"
              "|---|---|---:|---:|---:|---:|---:|")
        for r in calibrate(json.loads(Path(args.calibrate).read_text()), [c for c, _ in GPU_SWEEP]):
            print(f"| {r['case']} | {_label(r['overrides'])} | {r['warps_per_sm']} | {r['measured_us']} | "
                  f"{r['bound_us']} | {r['ratio']} | {r['x_issue']} |", flush=True)
        return 0
    print("| case | overrides | regs | warps/SM | programs x steps | loop: issue / fp32 / alu / mio (spill) "
          "| bound µs | limit |")
    print("|---|---|---:|---:|---:|---|---:|---|")
    for i, (case, candidates) in enumerate(GPU_SWEEP):
        if args.case and i not in args.case:
            continue
        for overrides in candidates:
            b = bound(case, overrides)
            if args.json:
                print(json.dumps({"case": case.label, "overrides": overrides} | b.row()), flush=True)
                continue
            lp = b.loop
            print(f"| {case.label} | {_label(overrides)} | {b.registers} | "
                  f"{b.warps_per_sm} | {b.programs} x {b.steps:g} | {lp['issue']} / {lp['fp32']} / "
                  f"{lp['alu']} / {lp['mio']} ({b.local}) | {b.us:.0f} | {b.limit} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
