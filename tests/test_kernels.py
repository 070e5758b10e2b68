"""The fused Triton kernel against the float64 reference, through Triton's interpreter on the CPU."""
import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import triton
import triton.language as tl

from fedgin import gin_apply
from fedgin.kernels import gin_fused, make_plan
from fedgin.kernels.gin import sample_base
from fedgin.kernels.launch import (
    WARGS_MAX_FLOATS,
    Plan,
    _host_rows,
    _plan_for,
    arg_floats,
    default_wargs,
    pack_params,
)

from kernel_cases import TOL, assert_plan_covers, count_launches, draw, image_like, rel_error

F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16

CASES = [  # shape, kernel sizes, interm channels, dtype
    ((2, 3, 11, 13), (3, 3, 3, 3), 2, F32),
    ((1, 1, 1, 1), (3, 3), 2, F32),
    ((2, 3, 9, 7), (1, 3, 5), 2, BF16),
    ((1, 2, 5, 150), (3, 1), 2, F16),
    ((3, 4, 7, 9), (3, 1), 8, F32),
    ((1, 1, 6, 5), (5, 5), 1, F32),
    ((1, 3, 5, 7, 9), (3, 3), 2, F32),
    ((2, 1, 4, 6, 5), (1, 3, 3), 2, BF16),
    ((1, 2, 3, 4, 5), (5, 1), 3, F16),
    ((1, 1, 1, 9, 11), (3, 3), 2, F32),
]


def _run(x, params, plan=None):
    out = torch.full_like(x, float("nan"))
    gin_fused(x, params, out=out, plan=plan)
    return out


@pytest.mark.parametrize("shape,ks,interm,dtype", CASES, ids=[f"{c[0]}-{c[1]}-M{c[2]}-{c[3]}" for c in CASES])
def test_matches_float64_reference(shape, ks, interm, dtype):
    params = draw(shape, ks, interm, seed=len(shape) + sum(ks))
    x = image_like(shape, dtype, seed=sum(shape))
    out = _run(x, params)
    assert out.dtype == dtype and out.shape == x.shape
    assert rel_error(out, x, params) <= TOL[dtype]


@pytest.mark.parametrize("shape,plan", [
    ((1, 2, 13, 29), Plan(th=2, tw=16, zc=3, n_zt=3, n_pt=1, n_wt=3, bands=True, num_warps=1)),
    ((2, 1, 5, 11, 13), Plan(th=8, tw=8, zc=2, n_zt=3, n_pt=2, n_wt=3, bands=False, num_warps=1)),
])
@pytest.mark.slow
def test_tile_borders(shape, plan):
    """Small tiles: every tile, band and stream-chunk border is crossed; the result must not show them."""
    params = draw(shape, (3, 3), seed=3)
    x = image_like(shape, F32, seed=4)
    assert rel_error(_run(x, params, plan), x, params) <= TOL[F32]


ONE_LAUNCH = [  # shape, kernel sizes, dtype, plan (several tiles a sample: the counter elects across them)
    ((2, 3, 11, 37), (3, 3, 3), F32, Plan(th=2, tw=16, zc=4, n_zt=2, n_pt=1, n_wt=4, bands=True, num_warps=1,
                                          finish=True)),
    ((2, 1, 5, 11, 13), (3, 3), BF16, Plan(th=8, tw=8, zc=2, n_zt=3, n_pt=2, n_wt=3, bands=False, num_warps=1,
                                           finish=True)),
    ((1, 2, 5, 40), (3, 1), F16, make_plan((1, 2, 5, 40), (3, 1), 2, tw=16, finish=True)),  # fp16: two passes
]


@pytest.mark.slow
@pytest.mark.parametrize("shape,ks,dtype,plan", ONE_LAUNCH, ids=[f"{c[0]}-{c[2]}" for c in ONE_LAUNCH])
def test_one_launch_renormalizes_in_the_last_program(monkeypatch, shape, ks, dtype, plan):
    """``Plan.finish``: float32/bfloat16 in one stream launch (no scale pass); float16 keeps its two passes."""
    params = draw(shape, ks, seed=13)
    x = image_like(shape, dtype, seed=14)
    launched = count_launches(monkeypatch)
    out = _run(x, params, plan)
    assert launched == ["gin_stream_kernel"] * (2 if dtype == F16 else 1)
    assert rel_error(out, x, params) <= TOL[dtype]


@pytest.mark.parametrize("shape,ks,interm,dtype", [
    ((2, 3, 11, 13), (3, 1, 5), 2, F32),  # 2D: weight groups of 6, 2 and 10, padded to 8, 4 and 12
    ((1, 1, 4, 6, 5), (1, 3), 1, BF16),  # 3D: groups of 1 and 3, padded to 4
])
@pytest.mark.slow
@pytest.mark.interpreter_bits
def test_weights_four_at_a_time_give_the_same_output(shape, ks, interm, dtype):
    """``wvec=4`` (128-bit weight loads, split into scalars) against one by one: the same bits."""
    params = draw(shape, ks, interm, seed=3)
    x = image_like(shape, dtype, seed=4)
    one, four = (_run(x, params, make_plan(shape, ks, interm, wvec=w)) for w in (1, 4))
    assert not torch.isnan(four).any() and torch.equal(one, four)
    assert rel_error(four, x, params) <= TOL[dtype]


@pytest.mark.parametrize("shape,ks,interm,dtype,th", [
    ((1, 2, 5, 13, 11), (3, 3, 3), 2, F32, 8),  # 4 tiles of 8 x 16: the scratch's edge reads cross tile borders
    ((2, 1, 4, 9, 7), (1, 5, 3), 3, BF16, 16),  # a 5x5 layer: shifts of 2 rows into the guard
    ((1, 1, 3, 6, 5), (3, 3), 2, F16, 8),  # float16: both passes
])
@pytest.mark.slow
@pytest.mark.filterwarnings("error::RuntimeWarning")  # an overflow in the interpreter: a read of garbage
@pytest.mark.interpreter_bits
def test_scratch_shifts_give_the_same_output_as_gathers(shape, ks, interm, dtype, th):
    """3D ``scratch=True`` (later layers' in-plane neighbours stored and read back) against ``tl.gather``."""
    params = draw(shape, ks, interm, seed=3)
    x = image_like(shape, dtype, seed=4)
    gather, scratch = (_run(x, params, make_plan(shape, ks, interm, th=th, scratch=s)) for s in (False, True))
    assert not torch.isnan(scratch).any() and torch.equal(gather, scratch)
    assert rel_error(scratch, x, params) <= TOL[dtype]
    assert not make_plan((1, 1, 8, 8), ks, interm, scratch=True).scratch  # 2D: no shift crosses warps


@pytest.mark.parametrize("shape,ks,interm,dtype", [
    ((2, 2, 5, 13, 11), (3, 3, 3), 2, F32),  # 3D: two samples with their own weights, a launch each
    ((2, 3, 11, 13), (3, 1, 5), 2, BF16),  # 2D, kernel sizes 1 and 5
    ((1, 1, 3, 6, 5), (3, 3), 2, F16),  # float16: both passes
])
@pytest.mark.slow
@pytest.mark.interpreter_bits
def test_weights_as_kernel_arguments_give_the_same_output(monkeypatch, shape, ks, interm, dtype):
    """``wargs``: a launch a sample, its parameter row as kernel arguments, against the same plan reading the rows
    from memory: the same bits."""
    params = draw(shape, ks, interm, seed=3)
    x = image_like(shape, dtype, seed=4)
    plan = make_plan(shape, ks, interm, wargs=True)
    loaded = _run(x, params, dataclasses.replace(plan, wargs=False))
    launched = count_launches(monkeypatch)
    args = _run(x, params, plan)
    assert launched.count("gin_stream_kernel") == (2 if dtype == F16 else 1) * shape[0]
    assert not torch.isnan(args).any() and torch.equal(loaded, args)
    assert rel_error(args, x, params) <= TOL[dtype]


@pytest.mark.slow
@pytest.mark.parametrize("shape", [(3, 2, 9, 13), (2, 1, 3, 6, 5)])
@pytest.mark.interpreter_bits
def test_weights_as_kernel_arguments_one_launch_for_a_shared_network(monkeypatch, shape):
    """A draw with one network for the batch (``per_sample=False``, the FedGIN authors'): one ``wargs`` launch for
    all samples, each with its own alpha."""
    ks = (3, 3, 1)
    params = draw(shape, ks, per_sample=False, seed=5)
    x = image_like(shape, F32, seed=6)
    plan = make_plan(shape, ks, 2, wargs=True)
    loaded = _run(x, params, dataclasses.replace(plan, wargs=False))
    launched = count_launches(monkeypatch)
    args = _run(x, params, plan)
    assert launched == ["gin_stream_kernel", "gin_scale_kernel"]
    assert not torch.isnan(args).any() and torch.equal(loaded, args)
    assert rel_error(args, x, params) <= TOL[F32] and len(set(params.alphas.tolist())) == shape[0]


@pytest.mark.slow
@pytest.mark.interpreter_bits
def test_default_plan_passes_a_shared_networks_weights_as_arguments():
    """v1.9's default (third H200 run, bench/NOTES.md): a batch sharing one network in float32 or bfloat16 takes one
    ``wargs`` launch, 3D chunks planned for the batch; a draw a sample, float16, a row too large for arguments or a
    draw whose CPU copy would take a device sync read the weights from memory. In 3D also float16 with a shared
    network and a launch a sample for samples of 128³ voxels or more. The same bits either way."""
    shape, ks = (3, 1, 9, 13), (3, 3, 1)
    shared, own = draw(shape, ks, per_sample=False, seed=5), draw(shape, ks, seed=5)
    x = image_like(shape, F32, seed=6)
    assert default_wargs(x, [shared]) and default_wargs(x.to(BF16), [shared])
    assert not default_wargs(x, [own]) and not default_wargs(x.half(), [shared])
    assert not default_wargs(x, [shared, own])  # GIN-IPA's launch: every draw must share one network
    moved = shared.to("meta")  # drawn on the CPU and moved: its CPU copy comes along
    assert moved.has_host_copy and default_wargs(x, [moved])
    assert not dataclasses.replace(moved, _host=None).has_host_copy
    big = (1, 4, 8, 8, 8)
    assert not default_wargs(image_like(big, F32, seed=1), [draw(big, (3,) * 8, 8, per_sample=False)])
    plan = _plan_for(x, [shared], None)
    assert plan.wargs and not _plan_for(x, [own], None).wargs
    assert torch.equal(_run(x, shared), _run(x, shared, dataclasses.replace(plan, wargs=False)))
    # 3D (the fourth H200 run): a shared network in float16 too, and a launch a sample once a sample is 128³
    small, large = (2, 3, 5, 6, 7), (2, 3, 128, 128, 128)
    assert default_wargs(image_like(small, F16, seed=2), [draw(small, ks, per_sample=False, seed=5)])
    assert not default_wargs(image_like(small, F32, seed=2), [draw(small, ks, seed=5)])
    own3d = draw(large, (3,) * 4, seed=5)
    for dtype in (F32, F16, BF16):
        x3d = torch.empty(large, dtype=dtype, device="meta")  # the rule reads the shape and dtype only
        assert default_wargs(x3d, [own3d]) and default_wargs(x3d, [own3d, own3d])
        assert _plan_for(x3d, [own3d], None) == make_plan(large, (3,) * 4, 2, wargs=True)  # the swept plan
    assert not default_wargs(torch.empty((2, 3, 127, 128, 128), device="meta"), [draw((2, 3, 127, 128, 128),
                                                                                        (3,) * 4, seed=5)])
    volume = (8, 1, 96, 96, 96)
    batch = make_plan(volume, (3,) * 4, 2, wargs=True, shared_network=True)
    assert batch.wargs and batch.zc == make_plan(volume, (3,) * 4, 2).zc > make_plan(volume, (3,) * 4, 2, wargs=True).zc


def test_weights_as_kernel_arguments_only_where_they_fit():
    """A parameter row over :data:`WARGS_MAX_FLOATS` (8 layers of 8 channels, 3x3x3) is refused by name; 3D chunks
    are planned for one sample a launch."""
    with pytest.raises(ValueError, match="floats of weights and biases exceed"):
        make_plan((1, 4, 8, 8, 8), (3,) * 8, 8, wargs=True)
    assert arg_floats(4, 8, (3,) * 8, 3) > WARGS_MAX_FLOATS >= arg_floats(3, 2, (3, 3, 3, 3), 3) == 736
    shape = (8, 1, 96, 96, 96)
    per_sample = make_plan(shape, (3, 3, 3, 3), 2, wargs=True)
    assert per_sample == make_plan((1, *shape[1:]), (3, 3, 3, 3), 2, wargs=True) != make_plan(shape, (3,) * 4, 2)


def test_packed_rows_are_aligned_groups_with_alpha_last():
    params = draw((3, 2, 5, 5), (3, 1, 5), 2, seed=1)
    rows = pack_params(params, 2)
    # layer 0: 2 channels x 3 taps along W, groups of 2 x 3 padded to 8, biases 2 -> 4; layer 1: 2 x 1 x (2 -> 4)
    # + 4; layer 2: 2 x 5 x (2 x 5 -> 12) + 4; alpha: 52 + 12 + 124 + 1 = 189 -> 192
    assert rows.shape == (3, 192) and rows.shape[1] % 16 == 0 and torch.equal(rows[:, -1], params.alphas)
    w0 = params.weights[0]  # [B, co, ci, kh, kw]: group (ci 1, kw 2) holds [co, m] = w[co, 1, 2 - m, 2]
    assert torch.equal(rows[:, 5 * 8:5 * 8 + 6].reshape(3, 2, 3), w0[:, :, 1, :, 2].flip(2))
    assert torch.equal(rows[:, 5 * 8 + 6:6 * 8], torch.zeros(3, 2))
    assert torch.equal(rows[:, 48:50], params.biases[0])
    with pytest.raises(ValueError, match="wvec must be 1 or 4"):
        make_plan((1, 1, 8, 8), (3, 3), 2, wvec=2)


@pytest.mark.parametrize("shape,ks,interm,per_sample", [((3, 2, 5, 5), (3, 1, 5), 2, True),
                                                       ((2, 3, 4, 6, 5), (3, 3, 3, 3), 2, False),
                                                       ((1, 4, 3, 3, 3), (1, 5), 8, True)])
def test_host_rows_are_the_packed_rows(shape, ks, interm, per_sample):
    """``wargs`` packs each draw on the host in NumPy: the same floats as :func:`pack_params`."""
    params = draw(shape, ks, interm, per_sample=per_sample, seed=2)
    rows = _host_rows(params, len(shape) - 2)
    assert rows.dtype == np.float32 and np.array_equal(rows, pack_params(params, len(shape) - 2).numpy())


def test_one_network_for_the_batch():
    shape = (3, 1, 8, 10)
    params = draw(shape, (3, 3, 3), per_sample=False, seed=5)
    x = image_like(shape, F32, seed=6)
    assert rel_error(_run(x, params), x, params) <= TOL[F32]


def test_different_weights_per_sample_change_the_output():
    shape = (2, 1, 6, 7)
    params = draw(shape, (3, 3), seed=7)
    x = image_like(shape, F32, seed=8)[:1].expand(shape).contiguous()
    out = _run(x, params)
    assert not torch.allclose(out[0], out[1])


def test_zero_image_gives_zeros():
    shape = (2, 3, 5, 6)
    out = _run(torch.zeros(shape), draw(shape, (3, 3)))
    assert torch.equal(out, torch.zeros(shape))


def test_non_contiguous_input():
    x = image_like((1, 2, 9, 7), F32, seed=9).transpose(2, 3)
    params = draw(x.shape, (3, 3), seed=10)
    assert rel_error(gin_fused(x, params), x, params) <= TOL[F32]


def test_gin_apply_triton_backend_on_cpu_matches_reference_backend():
    shape = (2, 3, 9, 11)
    params = draw(shape, (1, 3, 3, 1), seed=11)
    x = image_like(shape, F32, seed=12)
    a = gin_apply(x, params, backend="triton")
    b = gin_apply(x, params, backend="reference")
    assert torch.allclose(a, b, rtol=1e-5, atol=1e-5 * float(b.abs().max()))


def test_unsupported_config_is_refused_by_name():
    shape = (1, 5, 4, 4)
    params = draw(shape, (3, 3))
    with pytest.raises(ValueError, match="5 channels"):
        gin_apply(image_like(shape, F32), params, backend="triton")


def test_plan_without_interior_is_refused():
    shape = (1, 1, 8, 8)
    params = draw(shape, (3, 3, 3))
    with pytest.raises(ValueError, match="no tile interior"):
        gin_fused(image_like(shape, F32), params, plan=Plan(1, 4, 8, 1, 1, 2, True, 1))


@pytest.mark.parametrize("shape,plan", [
    ((1, 1, 13, 29), Plan(th=2, tw=16, zc=3, n_zt=2, n_pt=1, n_wt=3, bands=True, num_warps=1)),  # 12 of 13 rows
    ((1, 1, 13, 29), Plan(th=2, tw=16, zc=3, n_zt=3, n_pt=1, n_wt=2, bands=True, num_warps=1)),  # 28 of 29 columns
    ((1, 1, 5, 11, 13), Plan(th=8, tw=8, zc=2, n_zt=3, n_pt=1, n_wt=3, bands=False, num_warps=1)),  # 6 of 11 rows
])
def test_plan_that_misses_part_of_the_image_is_refused(shape, plan):
    with pytest.raises(ValueError, match="does not cover"):
        gin_fused(image_like(shape, F32), draw(shape, (3, 3)), plan=plan)


def test_plans_cover_the_image():
    for shape, ks in [((64, 3, 256, 256), (3, 3, 3, 3)), ((2, 3, 128, 128, 128), (3, 3, 3, 3)),
                      ((1, 1, 7, 300), (5, 5)), ((1, 1, 1, 128, 128), (1, 3))]:
        assert_plan_covers(make_plan(shape, ks, 2), shape[2:], ks)


@triton.jit
def _offsets_kernel(out_ptr, b, c, C, N):
    tl.store(out_ptr, sample_base(b, c, C, N))


def test_sample_offsets_are_64_bit():
    """The per-sample/channel base offset past 2^31 elements (checked on the arithmetic, no huge tensor)."""
    out = torch.zeros(1, dtype=torch.int64)
    b, c, C, N = 3, 2, 4, 1_500_000_000
    _offsets_kernel[(1,)](out, b, c, C, N)
    assert int(out) == (b * C + c) * N > 2**31


GROUPS = """
import json
from fedgin.kernels import aot
print(json.dumps([[label for label, _ in group] for group in aot.stream_jobs()]))
"""


def test_the_sm90_check_compiles_each_distinct_kernel_once():
    """Specializations that compile to one kernel (one plan for two shapes, a batch's network shared or not: the chunk
    is a runtime argument) are grouped, each group compiled once; every specialization is in exactly one group."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run([sys.executable, "-c", GROUPS], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-4000:]
    groups = json.loads(res.stdout.splitlines()[-1])
    labels = [label for group in groups for label in group]
    assert len(labels) == len(set(labels)) > len(groups)
    volume = "stream (2, 3, 128, 128, 128) ks=(3, 3, 3, 3) C=3 M=2 torch.float16 mode=1 {'wargs': True, "
    shared = next(group for group in groups if volume + "'shared_network': True}" in group)
    assert volume + "'shared_network': False}" in shared


@pytest.mark.slow
def test_every_specialization_compiles_for_sm90():
    """The interpreter accepts code the GPU compiler rejects: compile each specialization for sm_90."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run([sys.executable, "-m", "fedgin.kernels.aot"], env=env, capture_output=True, text=True,
                         timeout=900)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    assert "0 failed" in res.stdout
