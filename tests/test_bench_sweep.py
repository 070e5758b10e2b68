"""The plan sweep (bench/sweep.py) on a CPU: its candidates are valid plans, it checks before it times, it reports
refused and wrong plans as such; and make_plan's overrides."""
import json
from pathlib import Path

import pytest
import torch

from fedgin.bench import sweep
from fedgin.bench.cases import SHARED, Case, split_candidate
from fedgin.kernels import make_plan
from fedgin.kernels.launch import H100_SMS, live_tiles, waves

from kernel_cases import assert_plan_covers

CPU = torch.device("cpu")


@pytest.mark.parametrize("case,candidates", sweep.GPU_SWEEP, ids=[c.label for c, _ in sweep.GPU_SWEEP])
def test_gpu_candidates_are_distinct_plans_that_cover_the_case(case, candidates):
    assert candidates[0] == {}, "the default plan comes first: the speedups are over it"
    rows = [split_candidate(c) for c in candidates]
    plans = [make_plan(case.shape, case.kernel_sizes, case.interm, **keywords) for keywords, _ in rows]
    assert len({(plan, shared) for plan, (_, shared) in zip(plans, rows, strict=True)}) == len(plans)
    for plan in plans:
        assert_plan_covers(plan, case.size, case.kernel_sizes)


@pytest.mark.slow
def test_a_shared_network_candidate_is_timed_on_a_one_network_draw(monkeypatch):
    """``"shared_network": true`` beside the plan keywords: the row's draw has one network for the batch."""
    seen = []
    real = sweep.gin_fused
    monkeypatch.setattr(sweep, "gin_fused", lambda x, params, out, plan: seen.append(
        (plan.wargs, params.weights[0].stride(0) == 0)) or real(x, params, out=out, plan=plan))
    case = Case(2, 1, (9, 7), kernel_sizes=(1, 3))
    rows = sweep.sweep_case(case, ({}, {"wargs": True, "shared_network": True}), CPU, sweep.CPU_SETTINGS, 1.0)
    assert [r["status"] for r in rows] == ["ok", "ok", "ok"] and rows[1]["rel_error"] <= 1e-5
    assert set(seen) == {(False, False), (True, True)}
    assert split_candidate({"wargs": True, SHARED: True}) == ({"wargs": True}, True)


def test_make_plan_overrides_one_choice_each_and_the_grid_follows():
    shape, ks = (2, 3, 128, 128, 128), (3, 3, 3, 3)
    default = make_plan(shape, ks, 2)
    assert (default.th, default.tw, default.zc, default.num_warps, default.maxnreg) == (32, 32, 26, 16, None)
    plan = make_plan(shape, ks, 2, th=16, zc=26, maxnreg=168)
    assert (plan.th, plan.tw, plan.zc, plan.maxnreg) == (16, 32, 26, 168)
    assert (plan.n_zt, plan.n_pt, plan.n_wt, plan.num_warps) == (5, 13, 5, 8)
    assert make_plan((1, 1, 5, 64, 64), (3, 3), 2, zc=64).zc == 5  # a chunk is never longer than the volume
    image = (4, 1, 256, 256)
    assert 2 * make_plan(image, ks, 2, lanes_per_thread=4).num_warps == make_plan(image, ks, 2).num_warps


def test_lanes_a_thread_follow_the_register_pressure():
    k8 = (3,) * 8
    assert live_tiles(3, 2, (3, 3, 3, 3)) == 27 and live_tiles(3, 2, k8) == 51 and live_tiles(4, 8, k8) == 180
    light, medium = make_plan((64, 3, 256, 256), (3, 3, 3, 3), 2), make_plan((64, 3, 256, 256), k8, 2)
    assert (light.num_warps, light.wvec) == (4, 4)  # 8 x 32 lanes, 2 a thread (4 up to v1.4: 1.15x slower), v1.8
    assert (medium.num_warps, medium.maxnreg, medium.wvec) == (8, None, 1)  # v1.5's 8 x 64: v1.8's spilled here
    assert make_plan((2, 3, 16, 64, 64), k8, 2).scratch is False and make_plan((2, 3, 16, 64, 64), (3, 3), 2).scratch
    heavy = make_plan((16, 4, 128, 128), k8, 8)  # 1 a thread, and a register cap ptxas would not choose
    assert (heavy.th * heavy.tw // 32, heavy.num_warps, heavy.maxnreg) == (8, 8, 255)
    assert make_plan((2, 3, 128, 128, 128), (3, 3, 3, 3), 2).num_warps == 16
    heavy3d = make_plan((2, 4, 64, 64, 64), k8, 8)
    assert (heavy3d.num_warps, heavy3d.maxnreg) == (16, 128)


@pytest.mark.slow
def test_sweep_checks_then_times_and_reports_refused_plans(tmp_path):
    report = sweep.run_sweep(sweep.CPU_SWEEP[:1], CPU, tmp_path)
    rows = report["rows"]
    assert [(r["impl"], r["status"]) for r in rows] == [("triton", "ok"), ("triton", "ok"), ("triton", "refused"),
                                                          ("reference", "ok")]
    for r in rows[:2]:
        assert r["rel_error"] <= 1e-5 and r["ms"] > 0 and r["vs_default"] > 0
        assert r["vs_reference"] == pytest.approx(rows[3]["ms"] / r["ms"])  # the eager reference, same inputs
    assert rows[2]["vs_reference"] is None and rows[3]["vs_reference"] == 1.0
    assert rows[1]["programs"] == 4 and "no tile interior" in rows[2]["reason"]
    saved = json.loads(next(tmp_path.glob("*-sweep.json")).read_text())
    assert saved["rows"] == json.loads(json.dumps(rows))
    md = next(tmp_path.glob("*-sweep.md")).read_text()
    assert "2D 1x3x21x19 fp32 k313" in md and "refused: " in md and "1 x 32, 21, 1" in md
    assert "| reference eager | - | - |" in md and "| vs reference |" in md


def test_a_wrong_result_is_failed_not_timed(monkeypatch):
    monkeypatch.setattr(sweep, "gin_fused", lambda x, params, out, plan: out.copy_(x))
    rows = sweep.sweep_case(Case(1, 1, (9, 7), kernel_sizes=(1, 3)), ({},), CPU, sweep.CPU_SETTINGS, 1.0)
    assert rows[0]["status"] == "failed" and rows[0]["ms"] is None and "relative error" in rows[0]["reason"]
    assert rows[0]["vs_reference"] is None and rows[1]["impl"] == "reference" and rows[1]["ms"] > 0


def test_budget_skips_the_remaining_cases(tmp_path):
    report = sweep.run_sweep(sweep.CPU_SWEEP, CPU, None, budget_s=0.0)
    assert report["rows"] == [] and report["skipped"] == [c.label for c, _ in sweep.CPU_SWEEP]


@pytest.mark.slow
def test_command_line_writes_the_report_and_fails_on_a_wrong_plan(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sweep, "CPU_SWEEP", ((Case(1, 1, (9, 7), kernel_sizes=(1, 3)), ({}, {"tw": 16})),))
    assert sweep.main(["--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "## 2D 1x1x9x7 fp32 k13" in printed and "wrote " in printed
    assert len(list(tmp_path.glob("*-sweep.*"))) == 2
    monkeypatch.setattr(sweep, "gin_fused", lambda x, params, out, plan: out.copy_(x))
    assert sweep.main(["--out", str(tmp_path)]) == 1
    assert sweep.main(["--device", "meta"]) == 2
    assert "error" in capsys.readouterr().err


H200_SWEEP = Path(__file__).parent.parent / "bench/results/2026-11-27-h200/2026-11-27-nvidia-h200-sweep.json"


def test_the_3d_chunk_model_orders_the_chunks_as_the_h200_measured_them():
    """make_plan's 3D chunk model (waves x steps) against the first GPU sweep: zc 16/26/32/64 at 2x3x128³."""
    rows = json.loads(H200_SWEEP.read_text())["rows"]
    for dtype in ("fp32", "bf16", "fp16"):
        measured = {r["plan"]["zc"]: r["ms_graph"] for r in rows if r["case"] == f"3D 2x3x128³ {dtype} k3333"
                    and set(r["overrides"]) <= {"zc"} and r["status"] == "ok"}
        assert len(measured) >= 2

        def predicted(zc: int) -> int:
            return waves(50 * -(-128 // zc), H100_SMS) * (zc + 8)

        assert sorted(measured, key=measured.get) == sorted(measured, key=predicted)
        for zc in measured:  # the ratios too, within 5%
            assert predicted(zc) / predicted(32) == pytest.approx(measured[zc] / measured[32], rel=0.05)
    assert make_plan((2, 3, 128, 128, 128), (3, 3, 3, 3), 2).zc == 26  # the measured best


def test_3d_chunks_follow_the_sm_count_and_bound_the_recomputed_halo():
    shape, ks = (2, 3, 128, 128, 128), (3, 3, 3, 3)
    assert make_plan(list(shape), list(ks), 2) is make_plan(shape, ks, 2)  # planned once, any sequence type
    assert make_plan(shape, ks, 2, sms=100).zc == 64  # 100 SMs: one wave of 100 programs of 70 steps
    assert make_plan(shape, ks, 2, sms=50).zc == 128  # 50 SMs: one wave of whole-depth programs
    for shape in ((1, 1, 32, 32, 32), (1, 1, 5, 40, 40), (2, 4, 64, 64, 64)):
        plan = make_plan(shape, ks, 2)
        assert plan.zc >= min(8, shape[2]) and plan.n_zt * plan.zc >= shape[2]
