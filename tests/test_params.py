"""GINConfig validation and GINParams.draw: shapes, the kernel-size pool, distributions, seeding."""
import pytest
import torch

from fedgin import GINConfig, GINParams
from fedgin.params import to_device


def gen(seed):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("dims", [2, 3])
def test_draw_shapes(dims):
    p = GINParams.draw(5, in_channels=4, interm_channels=3, n_layers=6, kernel_sizes=(1, 3, 5), spatial_dims=dims,
                       generator=gen(0))
    assert p.batch == 5 and p.device == torch.device("cpu")
    assert p.config == GINConfig(4, 4, 3, 6, (1, 3, 5), dims)
    assert len(p.kernel_sizes) == len(p.weights) == len(p.biases) == 6
    chain = [4, 3, 3, 3, 3, 3, 4]
    for layer, (k, w, b) in enumerate(zip(p.kernel_sizes, p.weights, p.biases, strict=True)):
        assert k in (1, 3, 5)
        assert w.shape == (5, chain[layer + 1], chain[layer]) + (k,) * dims
        assert b.shape == (5, chain[layer + 1])
        assert w.dtype == b.dtype == torch.float32
    assert p.alphas.shape == (5,) and ((p.alphas >= 0) & (p.alphas < 1)).all()


def test_kernel_sizes_come_from_the_pool_one_per_layer():
    """One size per layer for the whole batch; over many draws every size of the pool appears at every layer."""
    seen = [set() for _ in range(4)]
    for seed in range(40):
        p = GINParams.draw(3, kernel_sizes=(1, 3, 5), generator=gen(seed))
        assert isinstance(p.kernel_sizes, tuple) and len(p.kernel_sizes) == 4
        for layer, k in enumerate(p.kernel_sizes):
            seen[layer].add(k)
            assert p.weights[layer].shape[-2:] == (k, k)
    assert all(s == {1, 3, 5} for s in seen)
    assert GINParams.draw(2, kernel_sizes=(7,), generator=gen(0)).kernel_sizes == (7,) * 4
    assert GINParams.draw(2, kernel_sizes=5, generator=gen(0)).kernel_sizes == (5,) * 4  # one int: that size


def test_draw_distributions():
    """Weights and biases N(0, 1), alphas U(0, 1), independent across samples."""
    p = GINParams.draw(4000, in_channels=1, interm_channels=1, n_layers=2, kernel_sizes=(3,), generator=gen(1))
    w = p.weights[0].flatten()
    assert abs(float(w.mean())) < 0.03 and abs(float(w.std()) - 1) < 0.03
    b = p.biases[0].flatten()
    assert abs(float(b.mean())) < 0.05 and abs(float(b.std()) - 1) < 0.05
    assert abs(float(p.alphas.mean()) - 0.5) < 0.02 and abs(float(p.alphas.var()) - 1 / 12) < 0.01
    assert not torch.equal(p.weights[1][0], p.weights[1][1])


def test_per_sample_false_shares_the_network():
    p = GINParams.draw(4, per_sample=False, generator=gen(2))
    for w, b in zip(p.weights, p.biases, strict=True):
        assert (w == w[:1]).all() and (b == b[:1]).all()
    assert len(set(p.alphas.tolist())) == 4


def test_seeded_determinism():
    a = GINParams.draw(3, spatial_dims=3, generator=gen(7))
    b = GINParams.draw(3, spatial_dims=3, generator=gen(7))
    c = GINParams.draw(3, spatial_dims=3, generator=gen(8))
    assert a.kernel_sizes == b.kernel_sizes
    assert all(torch.equal(u, v) for u, v in zip(a.weights + a.biases, b.weights + b.biases, strict=True))
    assert torch.equal(a.alphas, b.alphas)
    assert not torch.equal(a.alphas, c.alphas)
    assert not all(torch.equal(u, v) for u, v in zip(a.biases, c.biases, strict=True))


def test_global_rng_without_generator():
    torch.manual_seed(3)
    a = GINParams.draw(2)
    torch.manual_seed(3)
    assert torch.equal(GINParams.draw(2).alphas, a.alphas)
    assert not torch.equal(GINParams.draw(2).alphas, a.alphas)


def test_draw_config_equals_draw():
    cfg = GINConfig(in_channels=2, interm_channels=4, n_layers=3, kernel_sizes=(3, 5), spatial_dims=3)
    a = GINParams.draw_config(2, cfg, generator=gen(4))
    b = GINParams.draw(2, in_channels=2, interm_channels=4, n_layers=3, kernel_sizes=(3, 5), spatial_dims=3,
                       generator=gen(4))
    assert a.config == b.config and a.kernel_sizes == b.kernel_sizes
    assert all(torch.equal(u, v) for u, v in zip(a.weights, b.weights, strict=True))


def test_to_device_keeps_the_draw():
    p = GINParams.draw(2, generator=gen(5))
    q = p.to("meta")
    assert q.device == torch.device("meta") and q.kernel_sizes == p.kernel_sizes and q.config == p.config
    assert all(w.device.type == "meta" for w in q.weights + q.biases)
    assert p.device == torch.device("cpu")  # the original is untouched
    r = GINParams.draw(2, device="meta", generator=gen(5))
    assert r.device == torch.device("meta") and r.kernel_sizes == p.kernel_sizes


def test_a_moved_draw_keeps_its_cpu_copy():
    """Drawn on the CPU and moved, a draw keeps what it was moved from (the kernels' ``wargs`` plans pass those values
    as kernel arguments without waiting for the GPU); a draw on the CPU is its own."""
    cpu = GINParams.draw(3, spatial_dims=3, generator=gen(7))
    for moved in (GINParams.draw(3, spatial_dims=3, device="meta", generator=gen(7)), cpu.to("meta")):
        host = moved.on_host()
        assert host.device == torch.device("cpu") and host.kernel_sizes == cpu.kernel_sizes
        assert all(torch.equal(a, b) for a, b in zip(host.weights + host.biases + [host.alphas],
                                                      cpu.weights + cpu.biases + [cpu.alphas], strict=True))
        assert moved.to("meta").on_host() is host
    assert cpu.on_host() is cpu


def test_empty_batch():
    with pytest.raises(ValueError, match="non-empty batch"):
        GINParams.draw(0)


@pytest.mark.parametrize("kwargs,match", [
    (dict(kernel_sizes=(1, 2)), "odd and positive, got 2"),
    (dict(kernel_sizes=(0,)), "odd and positive, got 0"),
    (dict(kernel_sizes=(-3,)), "odd and positive, got -3"),
    (dict(kernel_sizes=()), "pool is empty"),
    (dict(in_channels=3, out_channels=1), r"out_channels \(1\) must equal in_channels \(3\)"),
    (dict(in_channels=0), "in_channels must be >= 1"),
    (dict(interm_channels=0), "interm_channels must be >= 1"),
    (dict(n_layers=1), "n_layers must be >= 2"),
    (dict(spatial_dims=1), "spatial_dims must be 2 or 3"),
    (dict(eps=0.0), "eps must be > 0"),
])
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GINConfig(**kwargs)


def test_config_defaults_are_the_originals():
    cfg = GINConfig()
    assert (cfg.in_channels, cfg.out_channels, cfg.interm_channels, cfg.n_layers) == (3, 3, 2, 4)
    assert cfg.kernel_sizes == (1, 3) and cfg.slope == 0.01 and cfg.eps == 1e-5
    assert cfg.channels() == [(3, 2), (2, 2), (2, 2), (2, 3)]


def test_layer_kernel_sizes_fix_every_layer():
    p = GINParams.draw(2, in_channels=1, n_layers=3, layer_kernel_sizes=(5, 1, 3), spatial_dims=3,
                       generator=torch.Generator().manual_seed(0))
    assert p.kernel_sizes == (5, 1, 3)
    assert [tuple(w.shape[-3:]) for w in p.weights] == [(5, 5, 5), (1, 1, 1), (3, 3, 3)]
    with pytest.raises(ValueError, match="one size per layer"):
        GINParams.draw(1, n_layers=4, layer_kernel_sizes=(3, 3))
    with pytest.raises(ValueError, match="odd and positive"):
        GINParams.draw(1, n_layers=2, layer_kernel_sizes=(3, 2))


def test_a_draw_for_another_device_travels_as_one_packed_buffer():
    gen = torch.Generator().manual_seed(3)
    p = GINParams.draw(5, in_channels=2, spatial_dims=3, per_sample=False, device="meta", generator=gen)
    cpu = GINParams.draw(5, in_channels=2, spatial_dims=3, per_sample=False, generator=torch.Generator().manual_seed(3))
    parts = [*p.weights, *p.biases]
    assert all(t.device.type == "meta" for t in [*parts, p.alphas])
    assert [t.shape for t in parts] == [t.shape for t in [*cpu.weights, *cpu.biases]]
    assert all(t.stride(0) == 0 for t in parts)  # one network for the batch: still an expanded view, not 5 copies
    moved = to_device([torch.arange(6.0).reshape(2, 3), torch.arange(2.0)], torch.device("meta"))
    assert [m.shape for m in moved] == [(2, 3), (2,)]
    same = [torch.ones(2)]
    assert to_device(same, torch.device("cpu")) is same  # already there: nothing copied
    mixed = to_device([torch.ones(2), torch.ones(3, dtype=torch.float64)], torch.device("meta"))
    assert [(m.device.type, m.dtype) for m in mixed] == [("meta", torch.float32), ("meta", torch.float64)]
