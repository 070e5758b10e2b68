"""GPU checks of the fused kernel (bench/gpu.sh runs them): float64 reference, NaN-poisoned outputs,
determinism, the fused GIN-IPA views, the one-launch plan, and 64-bit indexing on a real volume past 2^31 elements."""
import dataclasses

import pytest
import torch

from fedgin import gin_apply, reference_apply
from fedgin.augment import ipa_mask
from fedgin.kernels import gin_fused, gin_ipa_fused, make_plan
from fedgin.kernels.launch import V15_2D, V15_3D, default_wargs

from kernel_cases import TOL, draw, image_like, rel_error

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
              pytest.mark.usefixtures("no_tf32")]
F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16



CASES = [
    ((64, 3, 256, 256), (3, 3, 3, 3), 2),
    ((32, 3, 192, 192), (1, 3, 1, 3), 2),
    ((8, 1, 512, 512), (5, 3), 4),
    ((3, 4, 37, 300), (3,) * 8, 8),
    ((1, 1, 1, 1), (3, 3), 2),
    ((2, 3, 128, 128, 128), (3, 3, 3, 3), 2),
    ((2, 1, 1, 128, 128), (3, 3), 2),
    ((2, 3, 5, 7, 300), (1, 3, 5), 3),
    ((1, 4, 33, 65, 17), (3, 1, 3), 8),
]


@pytest.mark.parametrize("dtype", [F32, BF16, F16])
@pytest.mark.parametrize("shape,ks,interm", CASES, ids=[f"{c[0]}-{c[1]}-M{c[2]}" for c in CASES])
def test_matches_float64_reference_on_gpu(shape, ks, interm, dtype):
    params = draw(shape, ks, interm, seed=sum(shape), device="cuda")
    x = image_like(shape, dtype, seed=len(ks), device="cuda")
    out = torch.full_like(x, float("nan"))
    gin_fused(x, params, out=out)
    torch.cuda.synchronize()
    assert rel_error(out, x, params) <= TOL[dtype]


def test_deterministic_and_same_as_reference_backend():
    shape = (16, 3, 192, 192)
    params = draw(shape, (3, 3, 3, 3), device="cuda")
    x = image_like(shape, F32, device="cuda")
    a, b = gin_fused(x, params), gin_fused(x, params)
    assert torch.equal(a, b)
    assert torch.allclose(gin_apply(x, params, backend="auto"), a)
    ref = reference_apply(x, params)
    assert float((a - ref).norm() / ref.norm()) <= TOL[F32]


@pytest.mark.parametrize("dtype", [F32, BF16, F16])
@pytest.mark.parametrize("shape,kernel_sizes", [
    ((32, 3, 192, 192), ((3, 3, 3, 3), (1, 3, 1, 3), (3, 3, 3, 3))),  # two launches, draws 0 and 2 in one
    ((2, 3, 128, 128, 128), ((3, 3, 3, 3),) * 3),  # one launch
])  # the plans of CASES: nothing compiles anew (view_step is not specialized)
def test_gin_ipa_views_match_float64_on_gpu(shape, kernel_sizes, dtype):
    draws = [draw(shape, ks, seed=i, device="cuda") for i, ks in enumerate(kernel_sizes)]
    x = image_like(shape, dtype, seed=7, device="cuda")
    mask = ipa_mask((shape[0], *shape[2:]), torch.Generator(device="cuda").manual_seed(0))
    out = torch.full((3, *shape), float("nan"), dtype=dtype, device="cuda")
    gin_ipa_fused(x, draws, mask, out=out)
    g1, g2, g3 = (reference_apply(x.double(), p) for p in draws)
    m = mask.double()
    for got, want in zip(out, (m * g1 + (1 - m) * g2, (1 - m) * g1 + m * g2, g3), strict=True):
        assert not torch.isnan(got).any()
        assert float((got.double() - want).norm() / want.norm()) <= TOL[dtype]


def _twice(x, params, plan):
    """Two runs of ``plan`` into NaN-poisoned outputs (concurrency bugs show as unequal runs or NaNs)."""
    outs = []
    for _ in range(2):
        out = torch.full_like(x, float("nan"))
        gin_fused(x, params, out=out, plan=plan)
        outs.append(out)
    torch.cuda.synchronize()
    return outs


@pytest.mark.parametrize("dtype", [F32, BF16, F16])
@pytest.mark.parametrize("shape,ks,per_sample", [((2, 3, 128, 128, 128), (3, 3, 3, 3), True),
                                                 ((3, 2, 7, 45, 300), (5, 3), True),
                                                 ((64, 3, 256, 256), (3, 3, 3, 3), False)])
def test_v19_weights_as_kernel_arguments_on_gpu(shape, ks, per_sample, dtype):
    """v1.9: the weights as kernel arguments (read from the constant bank), a launch a sample or one for a batch
    sharing one network. Against float64, repeat-equal, and within the
    dtype's tolerance of the same plan reading its weights from memory (the interpreter finds them bit-equal; on the
    GPU the assertion's message counts the outputs that differ)."""
    params = draw(shape, ks, per_sample=per_sample, device="cuda")
    assert params.has_host_copy  # drawn on the CPU: no device sync to read the weights back
    interm = params.config.interm_channels
    x = image_like(shape, dtype, seed=9, device="cuda")
    plan = make_plan(shape, ks, interm, wargs=True)
    outs = _twice(x, params, plan)
    assert torch.equal(outs[0], outs[1]) and not torch.isnan(outs[0]).any()
    assert rel_error(outs[0], x, params) <= TOL[dtype]
    # the default there: a shared network in 2D float32/bfloat16, a launch a sample for 128³ volumes (fourth run)
    assert default_wargs(x, [params]) == (not per_sample and dtype != F16 or shape == (2, 3, 128, 128, 128))
    loaded = gin_fused(x, params, plan=dataclasses.replace(plan, wargs=False))
    differ = int((loaded != outs[0]).sum())
    assert float((outs[0].double() - loaded.double()).norm() / loaded.double().norm()) <= TOL[dtype], differ


@pytest.mark.parametrize("dtype", [F32, BF16])
@pytest.mark.parametrize("shape,ks", [((64, 3, 256, 256), (3, 3, 3, 3)), ((4, 1, 96, 96, 96), (1, 3, 1, 3))])
def test_one_launch_plan_on_gpu(shape, ks, dtype):
    """``Plan.finish`` under real concurrency: the atomic election across SMs renormalizes every sample exactly
    once, whichever program ends last (equal results on repeat, float64 bound, nothing left unwritten)."""
    params = draw(shape, ks, seed=5, device="cuda")
    x = image_like(shape, dtype, seed=6, device="cuda")
    plan = make_plan(shape, ks, params.config.interm_channels, finish=True)
    outs = _twice(x, params, plan)
    assert torch.equal(outs[0], outs[1])
    assert rel_error(outs[0], x, params) <= TOL[dtype]


def test_past_2_pow_31_elements():
    """B*C*D*H*W > 2^31: the last sample must match its own reference (no int32 wrap-around)."""
    shape = (3, 4, 512, 512, 1024)
    free, _ = torch.cuda.mem_get_info()
    if free < 40 * 2**30:
        pytest.skip("needs about 40 GiB of free GPU memory")
    params = draw(shape, (3, 3), device="cuda")
    x = torch.empty(shape, dtype=BF16, device="cuda").uniform_(0.5, 2.0)
    out = torch.full_like(x, float("nan"))
    gin_fused(x, params, out=out)
    last = (slice(2, 3),)
    p_last = draw(shape[:0] + (1,) + shape[1:], (3, 3), device="cuda")
    p_last.weights = [w[last] for w in params.weights]
    p_last.biases = [b[last] for b in params.biases]
    p_last.alphas = params.alphas[last]
    ref = reference_apply(x[last].float(), p_last)
    err = float((out[last].float() - ref).norm() / ref.norm())
    assert not torch.isnan(out[last]).any() and err <= TOL[BF16]


def test_a_draw_sent_to_the_gpu_in_one_async_copy_is_the_cpu_draw():
    """``GINParams.draw_config`` packs a draw into one pinned buffer and copies it without blocking: each draw on
    the GPU must equal the same seed's CPU draw, also while later draws reuse the pinned memory."""
    from fedgin import GINParams

    on_gpu = [GINParams.draw(4, spatial_dims=3, device="cuda", generator=torch.Generator().manual_seed(s))
              for s in range(8)]
    torch.cuda.synchronize()
    for s, p in enumerate(on_gpu):
        cpu = GINParams.draw(4, spatial_dims=3, generator=torch.Generator().manual_seed(s))
        assert p.kernel_sizes == cpu.kernel_sizes and torch.equal(p.alphas.cpu(), cpu.alphas)
        for got, want in zip([*p.weights, *p.biases], [*cpu.weights, *cpu.biases], strict=True):
            assert got.is_cuda and torch.equal(got.cpu(), want)


@pytest.mark.parametrize("dtype", [F32, BF16, F16])
@pytest.mark.parametrize("shape,ks", [((2, 3, 128, 128, 128), (3, 3, 3, 3)), ((4, 1, 96, 96, 96), (1, 3, 1, 3)),
                                      ((1, 2, 7, 45, 300), (5, 3)), ((64, 3, 256, 256), (3, 3, 3, 3))])
def test_v18_default_plans_against_v15_plans_on_gpu(shape, ks, dtype):
    """v1.8's default plans under real concurrency (3D: the scratch's barriers order the stores and the shifted reads
    of 16 warps; 2D: 128-bit weight loads), against float64, repeat-equal, and within the dtype's tolerance of
    v1.5's plans. Not bit-equal there: on an H200 the scratch changed the rounding of 11.1M of 12.6M float32 outputs
    (max 4.8e-6, bench/results/2026-11-27-h200-b/probe-v16.txt). The weight loads' width changes no bit."""
    params = draw(shape, ks, device="cuda")
    interm = params.config.interm_channels
    x = image_like(shape, dtype, seed=8, device="cuda")
    outs = _twice(x, params, make_plan(shape, ks, interm))
    assert torch.equal(outs[0], outs[1]) and not torch.isnan(outs[0]).any()
    assert rel_error(outs[0], x, params) <= TOL[dtype]
    v15 = gin_fused(x, params, plan=make_plan(shape, ks, interm, **(V15_3D if len(shape) == 5 else V15_2D)))
    assert float((outs[0].double() - v15.double()).norm() / v15.double().norm()) <= TOL[dtype]
    other_width = make_plan(shape, ks, interm, wvec=5 - make_plan(shape, ks, interm).wvec)  # 4 <-> 1
    assert torch.equal(outs[0], gin_fused(x, params, plan=other_width))
