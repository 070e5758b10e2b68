"""tools.kernel_lab.ablate: which plane-loop instructions each class takes out (the dataflow check on made-up SASS and
on a stream kernel compiled for sm_90 in a subprocess), the patched cubin (NOPs there, the same code elsewhere), and
on a GPU the patched kernels launched in place of the compiled ones and put back."""
import collections
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tools.kernel_lab import ablate, sass
from tools.kernel_lab.sass import Instr

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]

COMPILE = """
import sys
from fedgin.bench.cases import Case
from fedgin.kernels import aot, make_plan

case = Case(1, 2, (5, 9, 11), kernel_sizes=(3, 3))
plan = make_plan(case.shape, case.kernel_sizes, case.interm, wargs=True)
plan, compiled = aot.compiled_stream(case.shape, case.kernel_sizes, case.torch_dtype, case.channels, case.interm, 0,
                                     plan)
open(sys.argv[1], "wb").write(compiled.asm["cubin"])
"""


@pytest.fixture(scope="module")
def cubin(tmp_path_factory) -> bytes:
    """A 3D two-layer stream kernel with its weights as arguments (barriers, ULDC, loads and stores in its loop)."""
    path = tmp_path_factory.mktemp("ablate") / "k.cubin"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run([sys.executable, "-c", COMPILE, str(path)], env=env, capture_output=True, text=True,
                         timeout=600, cwd=ROOT)  # tools.kernel_lab: from the checkout
    assert res.returncode == 0, res.stderr[-4000:]
    return path.read_bytes()


def _sass(*lines: str) -> list[Instr]:
    return [Instr(16 * i, text, 0, 0) for i, text in enumerate(lines)]


LOOP = ("LDG.E R4, desc[UR6][R2.64]", "FFMA R8, R4, UR5, R8", "{use}", "ISETP.GE.AND P0, PT, R9, 0x3, PT",
        "@P0 BRA 0x0", "{after}", "EXIT")


@pytest.mark.parametrize("use,after,float_only", [
    ("FADD R10, R4, R8", "NOP", True),
    ("IMAD.WIDE R2, R9, 0x4, R4", "NOP", False),  # the addend is the pair R4:R5: an address
    ("IMAD.WIDE R2, R9, 0x4, R2", "NOP", True),  # R2:R3, not the load's
    ("MOV R4, R9", "IADD3 R5, R4, 0x1, RZ", True),  # written again before an integer read
    ("@P1 MOV R4, R9", "IADD3 R5, R4, 0x1, RZ", False),  # not on every path
    ("FADD R10, R4, R8", "ISETP.GE.AND P2, PT, R4, RZ, PT", False),  # read after the loop
    ("STG.E desc[UR6][R2.64], R4", "NOP", False),
])
def test_a_value_is_taken_out_only_where_float_math_alone_reads_it(use, after, float_only):
    instrs = _sass(*(line.format(use=use, after=after) for line in LOOP))
    span = sass.loop_span(instrs)
    assert span == (0, 5)
    assert ablate.float_only_check(instrs, span)(0) is float_only


def test_uniform_pairs_and_wide_loads_count_every_register():
    uldc = _sass("ULDC.64 UR6, c[0x0][0x210]", "LDG.E R4, desc[UR6][R2.64]", "FFMA R8, R4, UR7, R8", "BRA 0x0")
    assert not ablate.float_only_check(uldc, sass.loop_span(uldc))(0)  # UR6:UR7 address the load
    wide = _sass("LDG.E.128 R4, desc[UR6][R2.64]", "FFMA R8, R7, UR5, R8", "IADD3 R9, R6, 0x1, RZ", "BRA 0x0")
    assert wide[0].writes() == {"R4", "R5", "R6", "R7"}
    assert not ablate.float_only_check(wide, sass.loop_span(wide))(0)
    nested = _sass("LDG.E R4, desc[UR6][R2.64]", "FFMA R8, R4, UR5, R8", "@P1 BRA 0x10", "BRA 0x0")
    assert not ablate.float_only_check(nested, sass.loop_span(nested))(0)  # a loop inside the loop


@pytest.mark.parametrize("arm,float_only", [("MOV R4, R9", True), ("IADD3 R10, R4, 0x1, RZ", False)])
def test_a_write_a_branch_may_skip_does_not_end_the_check(arm, float_only):
    """A write in a branch's arm may not happen, so an integer read after it may see the load's value; a read in the
    arm counts like any other."""
    instrs = _sass("LDG.E R4, desc[UR6][R2.64]", "@P1 BRA 0x30", "MOV R4, R9", "IADD3 R5, R4, 0x1, RZ", "BRA 0x0")
    assert sass.branches(instrs) == {1: 3, 4: 0}
    assert ablate.float_only_check(instrs, sass.loop_span(instrs))(0) is False
    instrs = _sass("LDG.E R4, desc[UR6][R2.64]", "@P1 BRA 0x30", arm, "FFMA R8, R4, UR5, R8", "BRA 0x0")
    assert ablate.float_only_check(instrs, sass.loop_span(instrs))(0) is float_only


def test_each_class_takes_its_own_instructions_out_of_the_plane_loop(cubin):
    instrs = sass.listing(cubin)
    start, end = sass.loop_span(instrs)
    loop = collections.Counter(ins.base for ins in instrs[start:end])
    taken = ablate.removals(instrs)
    assert all(start <= i < end for idx in taken.values() for i in idx)
    for name in ("bar", "uldc", "ldg", "stg"):
        assert {instrs[i].base for i in taken[name]} == {name.upper()}
    assert len(taken["bar"]) == loop["BAR"] > 0 and len(taken["stg"]) == loop["STG"] > 0
    assert 0 < len(taken["uldc"]) <= loop["ULDC"] and 0 < len(taken["ldg"]) <= loop["LDG"]
    assert taken["all"] == sorted(set().union(*(taken[n] for n in ("bar", "uldc", "ldg", "stg"))))


def test_the_patched_cubin_holds_nops_there_and_the_same_code_elsewhere(cubin):
    instrs = sass.listing(cubin)
    taken = set(ablate.removals(instrs)["all"])
    after = sass.listing(ablate.patch(cubin, instrs, sorted(taken)))
    for i, (old, new) in enumerate(zip(instrs, after, strict=True)):
        if i in taken:
            assert new.text == "NOP" and new.hi & ablate.KEEP == old.hi & ablate.KEEP  # stall count and waits kept
            assert (new.hi >> 46) & 0x3F == 0x3F  # no scoreboard set on write or read
        else:
            assert (new.text, new.lo, new.hi) == (old.text, old.lo, old.hi)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_ablated_kernels_run_and_the_compiled_ones_come_back():
    from fedgin import reference_apply
    from fedgin.bench import timing
    from fedgin.bench.cases import Case, draw_params, image_like
    from fedgin.kernels import gin_fused, make_plan

    case = Case(1, 2, (6, 10, 13), kernel_sizes=(3, 3))
    rows = ablate.ablate_case(case, {"wargs": True}, timing.TimingSettings(graph_rep_ms=5.0))
    assert [r["class"] for r in rows] == ["none", "bar", "uldc", "ldg", "stg", "all"]
    assert all(r["ms_graph"] > 0 for r in rows) and rows[-1]["removed"] > rows[1]["removed"] > 0
    x = image_like(case, "cuda", torch.Generator(device="cuda").manual_seed(1))
    params = draw_params(case, "cuda", generator=torch.Generator().manual_seed(1))
    out = gin_fused(x, params, plan=make_plan(case.shape, case.kernel_sizes, case.interm, wargs=True))
    ref = reference_apply(x.double(), params)
    assert ((out.double() - ref).norm() / ref.norm()).item() < 1e-5


def test_ablate_says_it_needs_a_gpu(capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU is here: the GPU test above runs the ablation")
    assert ablate.main([]) == 1 and "needs a CUDA device" in capsys.readouterr().err
