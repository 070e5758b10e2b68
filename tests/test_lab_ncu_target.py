"""tools.kernel_lab.ncu_target: the kernels Nsight Compute profiles (their GIN checked here through the interpreter)."""
import pytest
import torch

from fedgin.bench.cases import Case
from tools.kernel_lab import ncu_target

pytestmark = pytest.mark.slow


def test_ncu_target_names_its_cases_and_needs_a_gpu(capsys):
    assert ncu_target.main([]) == 2 and ncu_target.main(["4d"]) == 2
    assert "usage: python -m tools.kernel_lab.ncu_target 2d|3d" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert ncu_target.main(["2d"]) == 1 and "needs a CUDA device" in capsys.readouterr().err


@pytest.mark.parametrize("dims,case", [("2d", Case(1, 3, (21, 19))),
                                       ("3d", Case(1, 2, (5, 9, 11), kernel_sizes=(3, 3)))])
def test_ncu_target_runs_the_default_and_the_candidate_plan_to_the_same_gin(dims, case):
    """The profiled pair is the same GIN (here through the interpreter, on stand-ins of the headline cases)."""
    assert set(ncu_target.CANDIDATES) == set(ncu_target.CASES)
    default, cand = ncu_target.run_plans(case, ({}, ncu_target.CANDIDATES[dims]), torch.device("cpu"))
    assert torch.isfinite(cand).all()
    torch.testing.assert_close(cand, default, rtol=1e-5, atol=1e-5)
