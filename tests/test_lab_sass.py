"""The static issue model (bench/sass.py): its loop finder and pipe counts on known SASS, its wave arithmetic, and
the plane loop it finds in a real sm_90 compile (in a subprocess: compiling for the GPU needs TRITON_INTERPRET unset).
"""
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fedgin.kernels import make_plan
from tools.kernel_lab import sass

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]

SASS = ("MOV R1, c[0x0][0x28]", "FFMA R2, R3, R4, R2", "@P0 BRA 0x10", "BRA 0x90", "LDG.E R5, desc[UR4][R2.64]",
        "FFMA R2, R3, R4, R2", "SHFL.IDX PT, R85, R92, R52, 0x1f", "ISETP.GE.AND P1, PT, R0, 0x3, PT",
        "@!P1 BRA 0x40", "EXIT")


def _listing(lines) -> list[sass.Instr]:
    return [sass.Instr(16 * i, text, 0, 0) for i, text in enumerate(lines)]


def test_plane_loop_is_the_largest_backward_branch():
    ops = sass.plane_loop(_listing(SASS))
    assert ops == ["LDG.E", "FFMA", "SHFL.IDX", "ISETP.GE.AND", "BRA"]
    assert sass.pipe_counts(ops) == {"issue": 5, "fp32": 1, "alu": 1, "mio": 2}
    with pytest.raises(ValueError, match="no loop"):
        sass.plane_loop(_listing(line.replace("BRA 0x10", "NOP").replace("BRA 0x40", "NOP") for line in SASS))


def test_wide_accesses_take_the_load_store_pipe_a_clock_a_word():
    """A 128-bit load moves four words a lane: four clocks of the pipe, like four loads (the second H200 run's
    calibration); uniform loads of kernel arguments (``ULDC``) only issue."""
    ops = ["LDG.E.128.CONSTANT", "LDG.E.64", "LDG.E", "STG.E.128", "LDS.64", "SHFL.IDX", "ULDC.64", "ULDC", "FFMA"]
    assert [sass.mio_slots(op) for op in ops] == [4, 2, 1, 4, 2, 1, 0, 0, 0]
    assert sass.pipe_counts(ops) == {"issue": 9, "fp32": 1, "alu": 0, "mio": 14}


def test_model_charges_the_busiest_pipe_and_each_wave():
    plan = make_plan((64, 3, 256, 256), (3, 3, 3, 3), 2, lanes_per_thread=4, tw=64)  # 4 warps
    assert plan.num_warps == 4
    loop = {"issue": 8, "fp32": 4, "alu": 2, "mio": 3}  # clocks a warp step: 2, 1, 1, 3
    us, limit, ctas = sass.model(loop, plan, programs=132 * 4, steps=10, registers=128, sms=132)
    assert (limit, ctas) == ("mio", 4)  # 65536 registers / (128 x 128 threads)
    assert us == pytest.approx(4 * 4 * 10 * 3 / (sass.CLOCK_GHZ * 1e3))
    one_more, _, _ = sass.model(loop, plan, programs=132 * 4 + 1, steps=10, registers=128, sms=132)
    assert one_more == pytest.approx(us * 5 / 4)  # a second wave of one CTA on one SM
    per_sample, _, _ = sass.model(loop, plan, programs=132 * 4, steps=10, registers=128, sms=132, launches=3)
    assert per_sample == pytest.approx(3 * us)  # ``wargs``: a grid a sample, one after the other


COMPILE = """
import dataclasses
import json
from tools.kernel_lab import sass
from fedgin.bench.cases import Case
from fedgin.kernels import aot, make_plan
case = Case(2, 3, (70, 20))
rows = []
for wvec in (1, 4):
    plan = make_plan(case.shape, case.kernel_sizes, case.interm, wvec=wvec)
    _, compiled = aot.compiled_stream(case.shape, case.kernel_sizes, case.torch_dtype, 3, 2, 0, plan)
    ops = sass.plane_loop(sass.listing(compiled.asm["cubin"]))
    names = [sass.base(op) for op in ops]
    rows.append({"FFMA": names.count("FFMA"), "LDG": names.count("LDG"), **sass.bound(case, plan=plan).row()})
print(json.dumps(rows))
"""


def _compile(script: str) -> list[dict]:
    """The JSON rows ``script`` prints, run in a subprocess that compiles for sm_90 (no TRITON_INTERPRET)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600,
                         cwd=ROOT)  # tools.kernel_lab: from the checkout
    assert res.returncode == 0, res.stderr[-4000:]
    return json.loads(res.stdout.splitlines()[-1])


def test_plane_loop_of_a_compiled_stream_kernel():
    """The loop found holds one FFMA a MAC a lane (and the mix's three a channel), a step a plane of the chunk and
    its halo; four weights a load cut its global loads by over 2x."""
    one, four = _compile(COMPILE)
    plan = make_plan((2, 3, 70, 20), (3, 3, 3, 3), 2)
    lanes = plan.th * plan.tw // (32 * plan.num_warps)
    macs = 9 * (3 * 2 + 2 * 2 + 2 * 2 + 2 * 3)
    for row in (one, four):
        assert row["FFMA"] == lanes * (macs + 3 * 3), row
        assert row["loop"]["fp32"] >= row["FFMA"] and row["bound_us"] > 0
        assert row["steps"] == plan.zc + 8
    assert one["LDG"] > 2 * four["LDG"]


LAYOUTS = """
import json
from tools.kernel_lab import sass
from fedgin.bench.cases import Case
from fedgin.kernels import aot, make_plan

case = Case(2, 3, (26, 128, 128))
plan = make_plan(case.shape, case.kernel_sizes, case.interm, wargs=True)
_, compiled = aot.compiled_stream(case.shape, case.kernel_sizes, case.torch_dtype, 3, 2, 0, plan)
names = [sass.base(op) for op in sass.plane_loop(sass.listing(compiled.asm["cubin"]))]
print(json.dumps([{"converts": compiled.asm["ttgir"].count("ttg.convert_layout"), "BAR": names.count("BAR")}]))
"""


def test_3d_loop_barriers_are_the_scratch_s_and_the_layout_conversions():
    """The 3D scratch's 8-byte stores make Triton 3.6 convert each output channel's tile through shared memory
    before its store (two barriers each, one shared with the scratch's), beside the scratch's barrier pair a later
    layer."""
    aligned, = _compile(LAYOUTS)
    later_layers, channels = 3, 3
    assert aligned["converts"] == channels and aligned["BAR"] == 2 * later_layers + 2 * channels - 1, aligned


def test_calibrate_divides_each_timed_row_by_its_bound(monkeypatch):
    from fedgin.bench.cases import Case

    case = Case(2, 3, (70, 20))
    plan = make_plan(case.shape, case.kernel_sizes, case.interm)
    compiles = []
    loop = {"issue": 400, "fp32": 200, "alu": 50, "mio": 125}  # mio-bound: 125 clocks a step, issue 100
    monkeypatch.setattr(sass, "bound", lambda c, overrides, mode, plan: compiles.append((mode, plan)) or sass.Bound(
        plan, 128, loop, 0, 1, 10, 16 * 132, 50.0, "mio"))
    row = {"case_id": case.id, "overrides": {}, "status": "ok", "plan": dataclasses.asdict(plan)}
    report = {"copy": {"gb_s": 4000.0}, "rows": [
        row | {"ms": 0.5, "ms_graph": 0.108}, row | {"ms": 0.2, "ms_graph": None},
        row | {"status": "failed", "ms": None, "ms_graph": None}, row | {"case_id": "elsewhere", "ms": 1.0}]}
    rows = sass.calibrate(report, [case])
    scale_us = 2 * case.elements * 4 / 4000e3  # fp32: the scale pass's read and write at the copy bandwidth
    assert [(r["measured_us"], r["bound_us"], r["ratio"]) for r in rows] == [
        (108.0, round(50 + scale_us, 1), round(108 / (50 + scale_us), 2)),
        (200.0, round(50 + scale_us, 1), round(200 / (50 + scale_us), 2))]
    assert rows[0]["x_issue"] == round(108 / (50 * 100 / 125 + scale_us), 2)  # the same waves at 100 clocks a step
    assert rows[0]["warps_per_sm"] == plan.num_warps  # one CTA an SM, every SM busy
    assert compiles == [(0, plan)] * 2  # one compile a timed row (fp32 launches one stream pass)
