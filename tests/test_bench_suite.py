"""The benchmark suite on a CPU: registry, options, outputs, failures recorded as failed, anchors."""
import argparse
import json

import pytest
import torch

from fedgin import reference_apply
from fedgin.bench import IMPLEMENTATIONS, PRESETS, Case, Impl, run_suite, select
from fedgin.bench.anchors import compare_anchors, load_anchors
from fedgin.bench.cases import draw_params
from fedgin.bench.cli import main
from fedgin.bench.registry import skip_reason
from fedgin.commands import bench as bench_command

CPU = torch.device("cpu")


def test_registry_has_the_issue_implementations_and_reference_first():
    assert {"reference", "compile", "triton", "triton-1launch", "loop", "authors"} <= set(IMPLEMENTATIONS)
    assert [i.name for i in select(["loop", "triton"])] == ["reference", "loop", "triton"]
    assert IMPLEMENTATIONS["authors"].shared_network and not IMPLEMENTATIONS["authors"].graphable


def test_unknown_names_are_clear_errors(capsys):
    with pytest.raises(ValueError, match=r"unknown implementation\(s\) \['nope'\].*reference"):
        select(["nope"])
    assert main(["--preset", "nope", "--no-progress"]) == 2
    assert "unknown preset 'nope'" in capsys.readouterr().err
    assert main(["--impl", "reference,nope", "--no-progress"]) == 2
    assert "unknown implementation(s) ['nope']" in capsys.readouterr().err


def test_unsupported_cases_are_skipped_with_a_reason():
    assert "2D only" in IMPLEMENTATIONS["authors"].supports(Case(1, 1, (8, 8, 8)), CPU)
    assert "interpreter" in IMPLEMENTATIONS["triton"].supports(Case(2, 3, (64, 64)), CPU)
    heavy = skip_reason(IMPLEMENTATIONS["compile"], Case(1, 1, (8, 8)), CPU, "quick", float("inf"))
    assert "key cases" in heavy
    assert "budget" in skip_reason(IMPLEMENTATIONS["loop"], Case(1, 1, (8, 8)), CPU, "quick", 0.0)


def test_one_launch_row_runs_the_finishing_plan_and_names_what_it_skips():
    one = IMPLEMENTATIONS["triton-1launch"]
    assert "float16" in one.supports(Case(1, 1, (16, 16), "fp16"), CPU)
    assert "whole sample" in one.supports(Case(1, 3, (1024, 1024)), CPU)
    case = Case(2, 1, (9, 13), kernel_sizes=(3, 3))
    assert one.supports(case, CPU) is None
    params = draw_params(case, CPU)
    x = torch.rand(case.shape, generator=torch.Generator().manual_seed(0)) + 0.5
    torch.testing.assert_close(one.prepare(case, CPU)(x, params), reference_apply(x, params), rtol=1e-5, atol=1e-5)


def test_quick_preset_writes_json_markdown_and_png(tmp_path, capsys):
    assert main(["--preset", "quick", "--max-cases", "1", "--impl", "loop", "authors", "--out", str(tmp_path),
                 "--no-progress"]) == 0
    printed = capsys.readouterr().out
    stem = tmp_path / next(p.stem for p in tmp_path.glob("*-cpu-quick.json"))
    report = json.loads(stem.with_suffix(".json").read_text())
    assert stem.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    assert stem.with_suffix(".md").read_text() in printed
    assert report["environment"]["torch"] == torch.__version__ and "commit" in report["environment"]["git"]
    assert report["copy"]["gb_s"] > 0
    rows = report["rows"]
    assert [r["impl"] for r in rows] == ["reference", "loop", "authors"]
    for r in rows:
        assert r["status"] == "ok", r
        assert 0 <= r["rel_error"] < 1e-4 and r["ms"] > 0 and r["gpix_s"] > 0
        assert r["gb_s"] == pytest.approx(r["min_bytes"] / (r["ms"] * 1e6))
    assert rows[0]["speedup"] == 1.0
    steps = report["e2e"]
    assert [r["impl"] for r in steps] == ["no-gin", "reference", "loop", "authors"]
    assert all(r["status"] == "ok" and r["step_ms"] > 0 for r in steps)
    assert steps[0]["gin_ms"] == 0 and all(0 < r["gin_share"] < 1 for r in steps[1:])


def _fails_check(case, device):
    return lambda x, params: x * 2


def _raises(case, device):
    def fn(x, params):
        raise RuntimeError("kernel exploded")
    return fn


def test_failing_implementations_are_reported_failed_never_timed(monkeypatch):
    monkeypatch.setitem(IMPLEMENTATIONS, "wrong", Impl("wrong", "returns 2x", _fails_check))
    monkeypatch.setitem(IMPLEMENTATIONS, "raises", Impl("raises", "raises", _raises))
    report = run_suite("quick", ["wrong", "raises"], max_cases=1, e2e=False, progress=False)
    rows = {r["impl"]: r for r in report["rows"]}
    assert rows["reference"]["status"] == "ok"
    wrong, raises = rows["wrong"], rows["raises"]
    assert wrong["status"] == "failed" and wrong["ms"] is None and wrong["gpix_s"] is None
    assert wrong["rel_error"] > 0.1 and "exceeds" in wrong["reason"]
    assert raises["status"] == "failed" and raises["ms"] is None and "kernel exploded" in raises["reason"]


def test_anchors_match_paper_cases_and_compare_on_the_same_card():
    ids = {c.id for c in PRESETS["paper"].cases}
    e2e_ids = {e.gin.id for e in PRESETS["paper"].e2e}
    for a in load_anchors():
        assert a.get("case_id", a.get("e2e_case_id")) in ids | e2e_ids or a["metric"] == "copy_gb_s", a
    key = "2d-b64-c3-256x256-fp32-k3333-m2"
    report = {"environment": {"device": "NVIDIA H100 80GB HBM3"}, "copy": {"gb_s": 2900.0}, "e2e": [],
              "rows": [{"case_id": key, "impl": "reference", "status": "ok", "ms": 1.31, "floor_ms": 0.035}]}
    out = {(a["metric"], a.get("case_id"), a.get("impl")): a for a in compare_anchors(report)}
    assert out[("gin_ms", key, "reference")]["ratio"] == pytest.approx(1.31 / 1.3107, rel=1e-3)
    assert out[("copy_gb_s", None, None)]["measured"] == 2900.0
    assert out[("gin_ms", key, "compile")]["measured"] is None
    assert compare_anchors({**report, "environment": {"device": "AMD EPYC"}}) == []


def test_fedgin_bench_command_lists():
    parser = argparse.ArgumentParser()
    bench_command.add_arguments(parser)
    assert bench_command.HELP and bench_command.run(parser.parse_args(["--list"])) == 0


def test_light_gin_rows_run_on_every_case_before_the_others(monkeypatch):
    calls = []

    def recorded(name, scale):
        def prepare(case, device):
            calls.append((name, case.label))
            return lambda x, params: reference_apply(x, params) * scale
        return prepare

    monkeypatch.setitem(IMPLEMENTATIONS, "light", Impl("light", "GIN, checked", recorded("light", 1)))
    monkeypatch.setitem(IMPLEMENTATIONS, "other", Impl("other", "not GIN", recorded("other", 2),
                                                       reference_check=False))
    report = run_suite("quick", ["other", "light"], max_cases=2, e2e=False, progress=False)
    labels = [c.label for c in PRESETS["quick"].cases[:2]]
    assert calls == [("light", labels[0]), ("light", labels[1]), ("other", labels[0]), ("other", labels[1])]
    rows = report["rows"]
    assert [(r["case"], r["impl"]) for r in rows] == [(c, i) for c in labels for i in ("reference", "other", "light")]
    assert all(r["status"] == "ok" and r["speedup"] > 0 for r in rows)


def test_host_cost_times_the_draw_and_the_call_of_each_implementation(capsys):
    """The host-cost probe (bench/gpu.sh's ``host`` step) on the CPU: a row per implementation with positive
    times, the drained call no cheaper than the draw, and the profiler's table of host ops."""
    from fedgin.bench import host_cost

    rows = host_cost.host_cost(Case(2, 3, (17, 13)), ["reference", "loop"], torch.device("cpu"), reps=3)
    assert [r["impl"] for r in rows] == ["reference", "loop"]
    assert all(r["draw_us"] > 0 and r["call_us"] > 0 and r["drained_us"] > r["draw_us"] for r in rows)
    loop = host_cost.profile_table(Case(2, 3, (17, 13)), "loop", torch.device("cpu"), rows=40)
    assert "Self CPU" in loop and "aten::select " in loop  # the loop's ops (a conv a sample), not the reference's
    assert host_cost.main(["--reps", "1", "--impl", "reference", "triton"]) == 0
    out = capsys.readouterr().out
    assert "| reference |" in out and "| triton |" not in out  # the interpreter is not timed
    assert "queued host time of gin_fused" not in out  # the plans: on a GPU only


@pytest.mark.slow
def test_plan_host_cost_times_each_plan_and_profiles_the_last():
    from fedgin.bench import host_cost

    case = Case(2, 1, (3, 5, 7), kernel_sizes=(1, 3))
    rows = host_cost.plan_host_cost(case, ({}, {"wargs": True}), torch.device("cpu"), reps=1)
    assert [r["overrides"] for r in rows] == [{}, {"wargs": True}] and all(r["call_us"] > 0 for r in rows)
    assert "function calls" in rows[-1]["profile"] and "tottime" in rows[-1]["profile"]
