"""The public GIN calls: gin, gin_apply, GIN, make_config: seeding, backends agreeing, and bad input."""
import pytest
import torch

from fedgin import GIN, GINParams, gin, gin_apply, make_config, reference_apply, warm_up


def gen(seed):
    return torch.Generator().manual_seed(seed)


def image(shape, dtype=torch.float32, seed=0):
    return (torch.rand(shape, generator=gen(100 + seed)) + 0.5).to(dtype)


def seed_of(generator):
    """The seed a call takes from ``generator``: one draw of 62 bits."""
    return int(torch.empty((), dtype=torch.int64).random_(0, 2**62, generator=generator))


def test_gin_is_the_seeded_draw_then_apply():
    x = image((2, 3, 9, 8))
    cfg = dict(interm_channels=3, n_layers=3, kernel_sizes=(1, 3, 5))
    params = GINParams.from_seed(2, make_config(in_channels=3, **cfg), seed_of(gen(1)))
    expected = gin_apply(x, params, "reference")
    assert torch.equal(gin(x, generator=gen(1), backend="reference", **cfg), expected)
    assert torch.equal(gin(x, seed=seed_of(gen(1)), **cfg), expected)
    assert torch.equal(gin(x, generator=gen(1), **cfg), expected)  # auto on the CPU is the reference
    assert not torch.equal(gin(x, generator=gen(2), **cfg), expected)
    assert torch.equal(expected, reference_apply(x, params))


@pytest.mark.parametrize("shape", [(2, 1, 6, 7), (1, 2, 4, 5, 6)])
def test_gin_takes_channels_and_dims_from_the_input(shape):
    x = image(shape)
    out = gin(x, generator=gen(3))
    assert out.shape == x.shape and out.dtype == x.dtype
    cfg = make_config(in_channels=shape[1], spatial_dims=len(shape) - 2)
    assert torch.equal(out, reference_apply(x, GINParams.from_seed(shape[0], cfg, seed_of(gen(3)))))


def test_gin_module():
    cfg = dict(interm_channels=4, kernel_sizes=(3,), per_sample=False)
    module = GIN(**cfg)
    assert list(module.parameters()) == [] and module.config == make_config(**cfg)
    assert "interm_channels=4" in repr(module)
    x = image((3, 3, 7, 7), torch.bfloat16)
    out = module(x, generator=gen(5))
    assert out.dtype == torch.bfloat16 and out.shape == x.shape
    assert torch.equal(out, gin(x, generator=gen(5), **cfg))
    assert torch.equal(module(x, generator=gen(5)), out)
    assert not torch.equal(module(x, generator=gen(6)), out)


def test_make_config_takes_one_kernel_size():
    assert make_config(kernel_sizes=3).kernel_sizes == (3,)
    assert make_config(kernel_sizes=[1, 5]).kernel_sizes == (1, 5)


@pytest.mark.slow
def test_backends_agree_on_a_seed():
    """The same seed gives the same output on every backend (Triton through its interpreter on the CPU)."""
    x = image((2, 3, 9, 11), seed=7)
    ref = gin(x, generator=gen(8), backend="reference")
    out = gin(x, generator=gen(8), backend="triton")
    assert float((out.double() - ref.double()).norm() / ref.double().norm()) <= 1e-5
    one = image((1, 9, 11), seed=9).expand(2, 3, 9, 11)  # a grayscale batch replicated by expand (stride 0)
    ref = GIN(backend="reference")(one, generator=gen(10))
    out = GIN(backend="triton")(one, generator=gen(10))
    assert float((out.double() - ref.double()).norm() / ref.double().norm()) <= 1e-5


# ---- bad input: a clear error naming the problem


PARAMS_2D = GINParams.draw(2, generator=gen(0))


@pytest.mark.parametrize("x,error,match", [
    (image((2, 3, 5, 6)).numpy(), TypeError, "torch.Tensor"),
    (torch.ones(2, 3, 5, 6, dtype=torch.int64), TypeError, "floating point"),
    (torch.ones(2, 3, 5, 6, dtype=torch.uint8), TypeError, "floating point"),
    (torch.ones(2, 3, 5, 6, dtype=torch.bool), TypeError, "floating point"),
    (image((2, 3, 5)), ValueError, "rank 4"),
    (image((2, 3, 4, 5, 6)), ValueError, "rank 4"),
    (image((3, 3, 5, 6)), ValueError, "batch 2, input has batch 3"),
    (image((2, 1, 5, 6)), ValueError, "expect 3 input channels, input has 1"),
    (image((2, 3, 0, 6)), ValueError, "empty spatial size"),
    (torch.ones(2, 3, 5, 6, device="meta"), ValueError, "params are on cpu, input is on meta"),
])
def test_gin_apply_rejects(x, error, match):
    with pytest.raises(error, match=match):
        gin_apply(x, PARAMS_2D)


def test_gin_apply_rejects_3d_input_for_2d_params():
    with pytest.raises(ValueError, match=r"for 2D must have rank 4 \[B, C, H, W\]"):
        gin_apply(image((2, 3, 4, 5, 6)), PARAMS_2D)
    with pytest.raises(ValueError, match=r"for 3D must have rank 5 \[B, C, D, H, W\]"):
        gin_apply(image((2, 3, 5, 6)), GINParams.draw(2, spatial_dims=3))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_non_finite_input(bad, backend):
    x = image((2, 3, 5, 6))
    x[1, 2, 3, 4] = bad
    with pytest.raises(ValueError, match="non-finite"):
        gin_apply(x, PARAMS_2D, backend)
    with pytest.raises(ValueError, match="non-finite"):
        gin(x, backend=backend)


@pytest.mark.parametrize("call", [
    lambda x: gin(x),
    lambda x: GIN()(x),
    lambda x: GIN(in_channels=3)(x),
])
def test_empty_batch(call):
    with pytest.raises(ValueError, match="empty"):
        call(torch.empty(0, 3, 4, 4))


def test_gin_rejects_a_non_tensor_and_a_bad_rank():
    with pytest.raises(TypeError, match="torch.Tensor"):
        gin([[1.0]])
    with pytest.raises(ValueError, match=r"got shape \(2, 3, 5\)"):
        GIN()(image((2, 3, 5)))
    with pytest.raises(ValueError, match=r"got shape \(4,\)"):
        gin(image((4,)))


@pytest.mark.parametrize("call,x,error", [
    (gin, image((3, 4)), ValueError),
    (gin, image((1, 1, 2, 3, 4, 5)), ValueError),
    (GIN(), [[1.0]], TypeError),
])
def test_bad_rank_or_type_names_the_input(call, x, error):
    with pytest.raises(error, match=r"shape|torch.Tensor"):
        call(x)


@pytest.mark.parametrize("k", [2, 4, 0, -1, (1, 2)])
@pytest.mark.parametrize("build", [make_config, GIN, lambda **c: gin(image((1, 3, 4, 4)), **c)])
def test_even_or_non_positive_kernel_sizes(k, build):
    with pytest.raises(ValueError, match="odd and positive"):
        build(kernel_sizes=k)


@pytest.mark.parametrize("build", [make_config, GIN, lambda **c: gin(image((1, 3, 4, 4)), **c)])
def test_out_channels_must_equal_in_channels(build):
    with pytest.raises(ValueError, match="must equal in_channels"):
        build(in_channels=3, out_channels=1)


@pytest.mark.parametrize("build", [make_config, GIN, lambda **c: gin(image((1, 3, 4, 4)), **c)])
def test_unknown_config_key(build):
    with pytest.raises(ValueError, match=r"unknown GIN option\(s\) \['layers'\]"):
        build(layers=3)


def test_unknown_backend():
    with pytest.raises(ValueError, match="unknown GIN backend 'cuda'"):
        gin_apply(image((2, 3, 5, 6)), PARAMS_2D, "cuda")
    with pytest.raises(ValueError, match="unknown GIN backend 'torch'"):
        GIN(backend="torch")
    with pytest.raises(ValueError, match="unknown GIN backend 'cuda'"):
        gin(image((2, 3, 5, 6)), backend="cuda")


def test_triton_backend_rejects_float64():
    with pytest.raises(TypeError, match="float64"):
        gin_apply(image((2, 3, 5, 6), torch.float64), PARAMS_2D, "triton")


def test_module_rejects_an_input_that_requires_grad():
    with pytest.raises(ValueError, match="does not require grad"):
        GIN()(image((1, 3, 4, 4)).requires_grad_(True))


def test_warm_up_runs_every_kernel_size_tuple_a_draw_can_pick(monkeypatch):
    import itertools

    from fedgin.kernels import launch

    seen = []

    def fake_seeded(x, seeded, host=()):  # what the Triton backend is handed: one call a tuple, on the whole batch
        seen.append((seeded.kernel_sizes, x.shape[0]))
        return x[None].clone()

    monkeypatch.setattr(launch, "gin_seeded", fake_seeded)
    x = torch.rand(3, 2, 9, 11)
    assert warm_up(x, backend="triton") == 16
    assert seen == [(ks, 3) for ks in itertools.product((1, 3), repeat=4)]
    seen.clear()
    assert warm_up(x, backend="triton", n_layers=3, kernel_sizes=(1, 3, 5)) == 27 and len(set(seen)) == 27
    seen.clear()
    assert warm_up(x, backend="triton", layer_kernel_sizes=(3, 1, 1, 3)) == 1 and seen == [((3, 1, 1, 3), 3)]
    assert warm_up(torch.rand(1, 1, 4, 5, 6), backend="reference", kernel_sizes=(3,)) == 1
    with pytest.raises(ValueError, match="empty batch"):
        warm_up(torch.rand(0, 1, 5, 5))
    with pytest.raises(ValueError, match="unknown GIN option"):
        warm_up(x, kernel_size=3)


def test_warm_up_leaves_the_global_random_state_alone():
    torch.manual_seed(0)
    expected = torch.rand(4)
    torch.manual_seed(0)
    warm_up(torch.rand(2, 1, 6, 7, generator=gen(1)), backend="reference")
    assert torch.equal(torch.rand(4), expected)
