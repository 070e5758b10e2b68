"""The seeded draw and the host path: one seed gives one network on every backend, a GPU call is launches only (no
sync, no host-to-device copy), and GIN compiles under ``torch.compile(fullgraph=True)``."""
import numpy as np
import pytest
import torch
import triton
import triton.language as tl

import fedgin
from fedgin import GIN, GINParams, draw, gin, gin_views, make_config, reference_apply
from fedgin.augment.gin_ipa import GINIPA, GINAugmentation
from fedgin.bench.host_path import STANDIN, DeviceTensor
from fedgin.kernels import launch
from fedgin.kernels.gin import _splitmix64
from fedgin.transforms import RandGIN

F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16
SEEDS = (0, 1, 123456789012, 2**62 - 1)
TOL = {F32: 1e-5, BF16: 2e-2, F16: 2e-3}  # max error over max |reference| (float64), as tests/test_kernels.py


@triton.jit
def _triton_draw(normal_ptr, uniform_ptr, hash_ptr, lo, hi, N: tl.constexpr):
    c = tl.arange(0, N).to(tl.uint32) * 7 + 16
    z = c * 0
    a, b, _, _ = tl.philox_impl(c, z, z, z, lo.to(tl.uint32), hi.to(tl.uint32))
    n, _ = tl.pair_uniform_to_normal(tl.uint_to_uniform_float(a), tl.uint_to_uniform_float(b))
    tl.store(normal_ptr + tl.arange(0, N), n)
    tl.store(uniform_ptr + tl.arange(0, N), tl.uint_to_uniform_float(a))
    h = _splitmix64(hi.to(tl.uint64) * 2147483648 + lo.to(tl.uint64) + c.to(tl.uint64) * 0)
    tl.store(hash_ptr + tl.arange(0, N), h.to(tl.int64, bitcast=True))


@pytest.mark.parametrize("seed", SEEDS)
def test_the_host_draw_is_tritons_philox_bit_for_bit_in_the_interpreter(seed):
    """NumPy's Philox, uniform and Box-Muller give the interpreter's bits (a GPU's libdevice log/cos may differ by
    an ulp or two in the normals; the integers and uniforms are exact everywhere)."""
    normal, uniform, hashed = torch.empty(64), torch.empty(64), torch.empty(64, dtype=torch.int64)
    lo, hi = draw.keys(seed)
    _triton_draw[(1,)](normal, uniform, hashed, lo, hi, N=64)
    counters = np.arange(64, dtype=np.uint32) * 7 + 16
    b0, b1 = draw.philox(seed, counters)
    assert np.array_equal(normal.numpy(), draw.normal(b0, b1))
    assert np.array_equal(uniform.numpy(), draw.uniform(b0))
    assert int(hashed[0].numpy().view(np.uint64)) == draw.splitmix64(seed)  # the kernel sizes' hash


def test_the_draw_has_the_distributions_gin_asks_for():
    cfg = make_config(in_channels=3, interm_channels=4, kernel_sizes=(1, 3, 5))
    params = GINParams.from_seed(512, cfg, 7)
    weights = torch.cat([w.flatten() for w in params.weights])
    assert abs(float(weights.mean())) < 0.05 and abs(float(weights.std()) - 1) < 0.05
    alphas = params.alphas
    assert 0 <= float(alphas.min()) and float(alphas.max()) < 1 and abs(float(alphas.mean()) - 0.5) < 0.05
    sizes = [cfg.seeded_sizes(s) for s in range(3000)]
    counts = np.bincount([k for t in sizes for k in t])[[1, 3, 5]] / (3000 * 4)
    assert np.all(np.abs(counts - 1 / 3) < 0.03), counts


def test_a_smaller_drawn_kernel_is_the_centre_of_the_largest():
    pool = make_config(kernel_sizes=(1, 3, 5), n_layers=3)
    seed = next(s for s in range(100) if pool.seeded_sizes(s)[0] == 3)  # the first layer drew a 3x3
    cube = GINParams.from_seed(2, make_config(kernel_sizes=(1, 3, 5), n_layers=3, layer_kernel_sizes=(5, 5, 5)), seed)
    drawn = GINParams.from_seed(2, pool, seed)
    assert drawn.kernel_sizes[0] == 3 and torch.equal(drawn.weights[0], cube.weights[0][..., 1:4, 1:4])
    assert torch.equal(drawn.alphas, cube.alphas) and torch.equal(drawn.biases[0], cube.biases[0])


def test_a_shared_network_is_sample_zeros_and_views_are_seed_steps():
    cfg = make_config(per_sample=False)
    shared, own = GINParams.from_seed(3, cfg, 11), GINParams.from_seed(3, make_config(), 11)
    assert all(torch.equal(w[2], o[0]) for w, o in zip(shared.weights, own.weights, strict=True))
    assert torch.equal(shared.alphas, own.alphas)
    x = torch.rand(3, 3, 8, 9) + 0.5
    views = gin_views(x, 2, seed=11)
    assert torch.equal(views[1], gin(x, seed=11 + draw.VIEW_STRIDE))
    assert not torch.equal(views[0], views[1])


@pytest.mark.parametrize("shape, config, dtype", [
    ((2, 3, 13, 11), {}, F32),  # the default pool: the views drew different sizes, one launch at the largest
    pytest.param((3, 1, 5, 7, 9), {"kernel_sizes": (1, 3), "per_sample": False}, F32, marks=pytest.mark.slow),
    pytest.param((2, 3, 9, 10), {"layer_kernel_sizes": (3, 1, 5, 3), "kernel_sizes": (1, 3, 5)}, BF16,
                 marks=pytest.mark.slow),
    pytest.param((2, 2, 7, 12), {"interm_channels": 3, "n_layers": 3}, F16,  # two stream launches, the second
                 marks=pytest.mark.slow),  # reading the rows
])
def test_the_kernel_draws_the_network_the_host_draws(shape, config, dtype):
    """One seed, the same networks: the fused kernel (drawing on the device, through the interpreter) against the
    float64 reference of :meth:`GINParams.from_seed`, every view."""
    x = ((torch.rand(shape, generator=torch.Generator().manual_seed(3)) + 0.5) * 100).to(dtype)
    seed = 98765
    out = gin_views(x, 2, backend="triton", seed=seed, **config)
    assert out.shape == (2, *shape) and out.dtype == dtype
    cfg = make_config(in_channels=shape[1], spatial_dims=len(shape) - 2, **config)
    if "layer_kernel_sizes" not in config:
        assert cfg.seeded_sizes(seed) != cfg.seeded_sizes(seed + draw.VIEW_STRIDE)
    for v in range(2):
        ref = reference_apply(x.double(), GINParams.from_seed(shape[0], cfg, seed + v * draw.VIEW_STRIDE))
        assert float((out[v].double() - ref).abs().max() / ref.abs().max()) <= TOL[dtype]


@pytest.mark.slow
def test_a_seed_on_the_device_runs_every_layer_at_the_pools_largest_size():
    """The captured/compiled path: the seed as an int64 tensor, which the host never reads: every layer launches at
    the pool's largest size, and the drawn sizes take effect in the kernel (zero outer taps)."""
    x = torch.rand(2, 3, 9, 10) + 0.5
    cfg = make_config(in_channels=3)
    seed = next(s for s in range(100) if 1 in cfg.seeded_sizes(s))
    from_tensor = launch.gin_seeded(x, launch.Seeded(cfg, torch.tensor([seed]), cfg.max_sizes()))[0]
    ref = reference_apply(x.double(), GINParams.from_seed(2, cfg, seed))
    assert float((from_tensor.double() - ref).abs().max() / ref.abs().max()) <= TOL[F32]


def test_non_finite_input():
    """On the CPU the call raises at once; in the kernel (here the interpreter, unchecked) the sample is counted on
    the device and :func:`fedgin.check_errors` raises for it later, once."""
    x = torch.rand(2, 3, 8, 9) + 0.5
    x[1, 0, 2, 3] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        gin(x)
    with pytest.raises(ValueError, match="non-finite"):
        gin(x, backend="triton")
    fedgin.check_errors("cpu")  # nothing counted yet
    out = gin(x, backend="triton", check_finite=False, layer_kernel_sizes=(1, 1, 1, 1))
    assert torch.isnan(out[1]).all() and torch.isfinite(out[0]).all()
    with pytest.raises(ValueError, match=r"non-finite values \(NaN or Inf\) in 1 sample"):
        fedgin.check_errors("cpu")
    fedgin.check_errors("cpu")  # reset by the check


@pytest.fixture
def stood_in():
    """CUDA stood in for on the CPU (``bench.host_path``): device work is counted, not run."""
    with STANDIN.installed(launch) as counts:
        yield counts


def _queued(counts, fn):
    before = dict(counts)
    fn()
    return {k: counts[k] - before[k] for k in counts}


@pytest.mark.parametrize("call, dtype", [
    (lambda x: gin(x), F32),
    (lambda x: GIN(in_channels=3)(x), BF16),
    (lambda x: gin_views(x, 4, per_sample=False), F32),
    (lambda x: GINAugmentation(n_views=2).views(x, None, torch.Generator().manual_seed(0)), F32),
    (lambda x: gin(x), F16),  # norms, then the renormalized store: two stream launches, no scale pass
    (lambda x: RandGIN(prob=1.0)(x[0]), F32),
])
def test_a_gpu_call_never_waits_and_copies_no_weights(stood_in, call, dtype):
    """Following the call path with CUDA stood in for: no operator that would synchronize (``.item()``,
    ``bool()``, ``.cpu()``, ``.tolist()``, ``nonzero``), no host-to-device copy, only the kernels' launches (after
    :func:`fedgin.warm_up`, which also copies each kernel-size tuple's draw table to the device once)."""
    x = DeviceTensor(torch.empty((4, 3, 32, 40), dtype=dtype, device="meta"))
    fedgin.warm_up(x)
    assert _queued(stood_in, lambda: fedgin.warm_up(x))["h2d"] == 0  # the tables are built once
    for _ in range(5):
        assert _queued(stood_in, lambda: call(x)) == {"launches": 2, "device_ops": 0, "syncs": 0, "h2d": 0}


def test_gin_ipa_queues_no_sync_and_two_launches(stood_in):
    x = DeviceTensor(torch.empty((2, 3, 48, 48), device="meta"))
    aug = GINIPA()
    queued = _queued(stood_in, lambda: aug.views(x, None, torch.Generator().manual_seed(0)))
    assert queued["syncs"] == 0 and queued["launches"] == 2


def test_the_old_finiteness_check_is_what_the_stand_in_catches(stood_in):
    """The stand-in is not blind: a finiteness check by reduction and ``bool`` counts as a sync."""
    x = DeviceTensor(torch.empty((4, 3, 32, 40), device="meta"))
    queued = _queued(stood_in, lambda: bool(torch.isfinite(x).all()))
    assert queued["syncs"] == 1 and queued["device_ops"] >= 1


def test_gin_compiles_into_a_training_step_without_a_graph_break():
    """``torch.compile(fullgraph=True)`` of a step that calls GIN (the reference on the CPU), each call drawing
    afresh; the gradient flows to the network, not through GIN."""
    torch.manual_seed(0)
    net = torch.nn.Conv2d(3, 2, 3, padding=1)
    augment = GIN(in_channels=3)

    def step(x, y):
        return torch.nn.functional.mse_loss(net(augment(x)), y)

    compiled = torch.compile(step, fullgraph=True)
    x, y = torch.rand(2, 3, 12, 12) + 0.5, torch.rand(2, 2, 12, 12)
    first, second = compiled(x, y), compiled(x, y)
    assert torch.isfinite(first) and not torch.equal(first, second)
    first.backward()
    assert net.weight.grad is not None and torch.isfinite(net.weight.grad).all()
    views = torch.compile(lambda t: gin_views(t, 3, interm_channels=3), fullgraph=True)(x)
    assert views.shape == (3, *x.shape) and not torch.equal(views[0], views[1])


def test_a_thread_whose_first_call_is_under_inference_mode_draws_outside_it_too():
    """The seed is drawn into a per-thread buffer: made under ``torch.inference_mode`` it must still take in-place
    draws outside (an inference tensor would refuse them)."""
    import threading

    outs, errors = [], []

    def worker():
        try:
            x = torch.rand(2, 3, 8, 9) + 0.5
            with torch.inference_mode():
                outs.append(gin(x, seed=None))
            outs.append(gin(x))
        except Exception as err:  # reported below, in the test's thread
            errors.append(err)

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert not errors and len(outs) == 2 and not torch.equal(outs[0], outs[1])
