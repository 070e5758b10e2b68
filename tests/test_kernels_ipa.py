"""The fused GIN-IPA views (``fedgin.kernels.gin_ipa_fused``) against float64, through Triton's interpreter."""
import dataclasses

import pytest
import torch

from fedgin import reference_apply
from fedgin.augment import gin_ipa_views, ipa_mask
from fedgin.kernels import gin_ipa_fused, make_plan
from fedgin.kernels.launch import stream_modes

from kernel_cases import TOL, count_launches, draw, image_like

F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16

CASES = [  # shape, the three draws' kernel sizes, dtype, stream launches
    ((2, 3, 13, 11), ((3, 3), (3, 3), (3, 3)), F32, 1),  # one kernel-size tuple: one stream launch
    ((2, 1, 9, 7), ((1, 3), (3, 3), (1, 3)), BF16, 2),  # draws 0 and 2 in one launch (every 2nd view)
    ((1, 2, 5, 9), ((3, 1), (3, 1), (1, 3)), F16, 2),  # draws 0 and 1
    ((2, 1, 3, 6, 5), ((3, 3), (1, 3), (3, 1)), F32, 3),  # 3D, three tuples
]


def _draws(shape, kernel_sizes):
    return [draw(shape, ks, seed=10 + i) for i, ks in enumerate(kernel_sizes)]


def _expected(x, draws, mask):
    g1, g2, g3 = (reference_apply(x.double(), p) for p in draws)
    m = mask.double()
    return m * g1 + (1 - m) * g2, (1 - m) * g1 + m * g2, g3


@pytest.mark.slow
@pytest.mark.parametrize("shape,kernel_sizes,dtype,streams", CASES,
                         ids=[f"{c[0]}-{'-'.join(map(str, c[1]))}-{c[2]}" for c in CASES])
def test_views_match_float64_in_the_fewest_launches(monkeypatch, shape, kernel_sizes, dtype, streams):
    draws = _draws(shape, kernel_sizes)
    x = image_like(shape, dtype, seed=sum(shape))
    mask = ipa_mask((shape[0], *shape[2:]), torch.Generator().manual_seed(1), spacing=3)
    out = torch.full((3, *shape), float("nan"), dtype=dtype)  # an unwritten element fails
    launched = count_launches(monkeypatch)
    views = gin_ipa_fused(x, draws, mask, out=out)
    assert launched == ["gin_stream_kernel"] * (streams * len(stream_modes(dtype))) + ["gin_ipa_kernel"]
    for got, want in zip(views, _expected(x, draws, mask), strict=True):
        assert got.dtype == dtype and got.shape == x.shape and not torch.isnan(got).any()
        assert float((got.double() - want).norm() / want.norm()) <= TOL[dtype]


@pytest.mark.slow
@pytest.mark.interpreter_bits
def test_views_with_weights_as_kernel_arguments(monkeypatch):
    """``wargs``: a stream launch a draw and sample, the same views as the rows read from memory."""
    shape, kernel_sizes = (2, 1, 3, 6, 5), ((3, 3), (3, 3), (1, 3))
    draws = _draws(shape, kernel_sizes)
    x = image_like(shape, BF16, seed=5)
    mask = ipa_mask((shape[0], *shape[2:]), torch.Generator().manual_seed(1), spacing=3)
    plan = make_plan(shape, (3, 3), 2, wargs=True)
    loaded = gin_ipa_fused(x, draws, mask, plan=dataclasses.replace(plan, wargs=False))
    launched = count_launches(monkeypatch)
    views = gin_ipa_fused(x, draws, mask, plan=plan)
    assert launched == ["gin_stream_kernel"] * 3 * shape[0] + ["gin_ipa_kernel"]
    for got, want in zip(views, loaded, strict=True):
        assert not torch.isnan(got).any() and torch.equal(got, want)


@pytest.mark.slow
def test_gin_ipa_views_triton_backend_matches_reference_backend():
    """Same generator, same draws and mask: the fused path gives the eager path's views."""
    x = image_like((2, 2, 17, 12), F32, seed=3)
    fused = gin_ipa_views(x, torch.Generator().manual_seed(4), backend="triton", spacing=4)
    eager = gin_ipa_views(x, torch.Generator().manual_seed(4), backend="reference", spacing=4)
    for a, b in zip(fused, eager, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * float(b.abs().max()))


def test_bad_draws_or_mask_are_refused():
    shape = (2, 1, 6, 5)
    x, draws = image_like(shape, F32), _draws(shape, ((3, 3),) * 3)
    mask = torch.rand(2, 1, 6, 5)
    with pytest.raises(ValueError, match="3 GIN draws"):
        gin_ipa_fused(x, draws[:2], mask)
    with pytest.raises(ValueError, match="IPA mask must have shape"):
        gin_ipa_fused(x, draws, mask[:, :, :5])
    with pytest.raises(ValueError, match="out must be"):
        gin_ipa_fused(x, draws, mask, out=torch.empty(shape))
