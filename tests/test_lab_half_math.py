"""The half-precision arithmetic emulation (``python -m tools.kernel_lab.half_math``) computes GIN, and shows what it
claims."""
import pytest
import torch

from fedgin import GINParams, reference_apply
from tools.kernel_lab.half_math import errors, half_math_gin, main

pytestmark = pytest.mark.slow


def _case(seed=0, interm=2, layers=4):
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand((1, 3, 5, 6, 7), generator=g) * 400 + 100).double()
    params = GINParams.draw(1, in_channels=3, interm_channels=interm, n_layers=layers, spatial_dims=3,
                            layer_kernel_sizes=(3,) * layers, generator=g)
    return x, params


def _error(got, want):
    return float((got - want).norm() / want.norm())


def test_float32_emulation_is_gin_with_and_without_prescaling():
    """No half rounding: the tap-by-tap conv, the prescaling and the unscaling give the reference's GIN."""
    x, params = _case()
    ref = reference_apply(x, params)
    for prescale in (False, True):
        for plane_sums in (False, True):
            assert _error(half_math_gin(x, params, torch.float32, prescale, plane_sums), ref) < 1e-5


def test_float16_overflows_on_ct_intensities_unless_prescaled():
    x, params = _case(seed=1, interm=8, layers=8)
    ref = reference_apply(x, params)
    assert not torch.isfinite(half_math_gin(x, params, torch.float16, False)).all()
    assert _error(half_math_gin(x, params, torch.float16, True, True), ref) < 1e-2


def test_table_lists_every_stack_and_arithmetic_with_the_median_and_max_error(capsys):
    assert main(["--size", "4", "--seeds", "2"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "stack" not in line]
    assert len(rows) == 12 and all(line.count("|") == 5 for line in rows)
    for (stack, name), (a, b) in errors(4, 2).items():  # the median of two draws is their mean
        assert f"| {stack} | {name} | {(a + b) / 2:.1e} | {max(a, b):.1e} |" in rows
