"""The reference GIN (the oracle) against an independent per-sample float64 loop, and GIN's properties."""
import pytest
import torch
import torch.nn.functional as F

from fedgin import GINParams, gin_apply, reference_apply

F64, F32, F16, BF16 = torch.float64, torch.float32, torch.float16, torch.bfloat16
TOL = {F64: 1e-12, F32: 1e-5, F16: 1e-2, BF16: 1e-2}


def image(shape, dtype=F32, seed=0):
    """Positive image-like values with some structure (never all zero)."""
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(shape, generator=g, dtype=F64) * 2 + torch.randn(shape, generator=g, dtype=F64).abs()).to(dtype)


def draw(shape, pool=(1, 3), interm=2, n_layers=4, per_sample=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    return GINParams.draw(shape[0], in_channels=shape[1], interm_channels=interm, n_layers=n_layers,
                          kernel_sizes=pool, spatial_dims=len(shape) - 2, per_sample=per_sample, generator=g)


def zero_pad(h, p):
    return F.pad(h, [p] * 2 * (h.dim() - 2))


def replicate_pad(h, p):
    return F.pad(h, [p] * 2 * (h.dim() - 2), mode="replicate")


def loop_gin(x, params, pad=zero_pad, pad_input_once=False):
    """GIN sample by sample in float64: ``pad`` by k // 2 before every layer's valid convolution (spec: zeros).

    ``pad_input_once`` instead pads only the input, by every layer's margin, with zeros (a wrong variant:
    the intermediates outside the image are then leaky_relu(bias), not 0).
    """
    cfg = params.config
    conv = F.conv2d if cfg.spatial_dims == 2 else F.conv3d
    last = cfg.n_layers - 1
    outs = []
    for b in range(x.shape[0]):
        x0 = x[b:b + 1].to(F64)
        h = zero_pad(x0, sum(k // 2 for k in params.kernel_sizes)) if pad_input_once else x0
        for layer, (k, w, bias) in enumerate(zip(params.kernel_sizes, params.weights, params.biases, strict=True)):
            h = conv(h if pad_input_once else pad(h, k // 2), w[b].to(F64), bias[b].to(F64))
            if layer < last:
                h = F.leaky_relu(h, cfg.slope)
        a = params.alphas[b].to(F64)
        mixed = a * h + (1 - a) * x0
        outs.append(mixed * x0.norm() / (mixed.norm() + cfg.eps))
    return torch.cat(outs)


def rel(a, b):
    return float((a.to(F64) - b.to(F64)).norm() / b.to(F64).norm())


CASES = [  # shape, kernel-size pool, interm channels, layers, dtype
    ((2, 3, 37, 29), (1, 3), 2, 4, F32),
    ((1, 1, 5, 7, 9), (3,), 1, 2, F32),
    ((3, 4, 12, 10), (1, 3, 5), 5, 8, F32),
    ((2, 1, 9, 8), (1,), 2, 2, F32),
    ((2, 3, 6, 5, 7), (5,), 2, 4, F32),
    ((2, 4, 5, 4, 6), (1, 3), 5, 8, F32),
    ((1, 3, 11, 7), (1, 3), 2, 4, F16),
    ((2, 3, 4, 5, 6), (1, 3, 5), 2, 4, BF16),
    ((2, 4, 13, 9), (5,), 5, 2, BF16),
    ((1, 1, 8, 8), (3,), 1, 8, F16),
    ((2, 3, 8, 9), (1, 3, 5), 2, 4, F64),
]


@pytest.mark.parametrize("shape,pool,interm,n_layers,dtype", CASES,
                         ids=[f"{c[0]}-{c[1]}-M{c[2]}-L{c[3]}-{str(c[4])[6:]}" for c in CASES])
def test_matches_per_sample_float64_loop(shape, pool, interm, n_layers, dtype):
    params = draw(shape, pool, interm, n_layers, seed=sum(shape) + n_layers)
    assert set(params.kernel_sizes) <= set(pool)
    x = image(shape, dtype, seed=len(shape))
    out = reference_apply(x, params)
    assert out.dtype == dtype and out.shape == x.shape
    assert rel(out, loop_gin(x, params)) <= TOL[dtype]


def test_samples_get_their_own_network():
    """B > 1 with per-sample weights: each sample's output is its own network's (no mix-up across the batch)."""
    shape = (3, 3, 10, 9)
    params = draw(shape, (3,), seed=1)
    assert not torch.equal(params.weights[0][0], params.weights[0][1])
    x = image(shape, seed=2)
    out = reference_apply(x, params)
    for b in range(shape[0]):
        one = GINParams(params.kernel_sizes, [w[b:b + 1] for w in params.weights], [v[b:b + 1] for v in params.biases],
                        params.alphas[b:b + 1], params.config)
        assert rel(out[b:b + 1], loop_gin(x[b:b + 1], one)) <= TOL[F32]


@pytest.mark.parametrize("shape", [(3, 3, 17, 13), (2, 1, 5, 7, 9)])
def test_output_norm_equals_input_norm(shape):
    x = image(shape, seed=3)
    out = reference_apply(x, draw(shape, seed=4))
    torch.testing.assert_close(out.flatten(1).norm(dim=1), x.flatten(1).norm(dim=1), rtol=1e-5, atol=0)


def test_alpha_zero_returns_the_input():
    shape = (2, 3, 9, 11)
    params = draw(shape, seed=5)
    params.alphas = torch.zeros(2)
    x = image(shape, seed=6)
    torch.testing.assert_close(reference_apply(x, params), x, rtol=1e-5, atol=1e-6)
    params.alphas = torch.full((2,), 0.5)
    assert rel(reference_apply(x, params), x) > 1e-2


@pytest.mark.parametrize("shape", [(2, 3, 7, 6), (1, 4, 3, 5, 4)])
def test_1x1_kernels_are_a_per_pixel_mlp(shape):
    params = draw(shape, (1,), interm=5, n_layers=3, seed=7)
    x = image(shape, seed=8).to(F64)
    extra = (1,) * (len(shape) - 2)
    outs = []
    for b in range(shape[0]):
        h = x[b]
        for layer, (w, bias) in enumerate(zip(params.weights, params.biases, strict=True)):
            h = torch.einsum("oc,c...->o...", w[b].flatten(1).to(F64), h) + bias[b].to(F64).reshape(-1, *extra)
            if layer < 2:
                h = F.leaky_relu(h, 0.01)
        a = params.alphas[b].to(F64)
        mixed = a * h + (1 - a) * x[b]
        outs.append(mixed * x[b].norm() / (mixed.norm() + 1e-5))
    assert rel(reference_apply(x, params), torch.stack(outs)) <= TOL[F64]


@pytest.mark.parametrize("shape", [(1, 2, 9, 10), (1, 1, 5, 6, 7)])
def test_zero_padding_at_every_layer(shape):
    """Intermediates outside the image are 0: other border rules give a measurably different answer."""
    params = draw(shape, (3,), n_layers=3, seed=9)
    params.alphas = torch.ones(1)  # the network output only, so the border rule shows fully
    x = image(shape, seed=10)
    out = reference_apply(x, params)
    assert rel(out, loop_gin(x, params, pad=zero_pad)) <= TOL[F32]
    assert rel(out, loop_gin(x, params, pad_input_once=True)) > 1e-3
    assert rel(out, loop_gin(x, params, pad=replicate_pad)) > 1e-3


def test_gradless():
    shape = (2, 3, 6, 7)
    params = draw(shape, seed=11)
    for w in params.weights:
        w.requires_grad_(True)
    x = image(shape, seed=12)
    out = reference_apply(x, params)
    assert out.grad_fn is None and not out.requires_grad
    out = reference_apply(x.clone().requires_grad_(True), params)
    assert out.grad_fn is None and not out.requires_grad
    with pytest.raises(ValueError, match="gradient"):
        gin_apply(x.clone().requires_grad_(True), draw(shape, seed=11))


def test_zero_image_gives_zeros():
    shape = (2, 3, 8, 5)
    x = image(shape, seed=13)
    x[0] = 0
    out = gin_apply(x, draw(shape, seed=14), "reference")
    assert torch.isfinite(out).all()
    assert torch.equal(out[0], torch.zeros_like(out[0]))
    assert out[1].abs().sum() > 0
    zeros = torch.zeros(1, 1, 4, 5, 6)
    assert torch.equal(gin_apply(zeros, draw(zeros.shape, seed=15), "reference"), zeros)


def test_zero_network_output_gives_zeros():
    """alpha = 1 and a network that outputs exactly 0: the eps keeps 0 / 0 away."""
    shape = (1, 3, 5, 5)
    params = draw(shape, seed=16)
    params.alphas = torch.ones(1)
    params.weights = [torch.zeros_like(w) for w in params.weights]
    params.biases = [torch.zeros_like(b) for b in params.biases]
    out = reference_apply(image(shape, seed=17), params)
    assert torch.equal(out, torch.zeros_like(out))


def test_one_network_for_the_batch():
    shape = (3, 3, 7, 8)
    shared = draw(shape, (1, 3), per_sample=False, seed=18)
    for w, b in zip(shared.weights, shared.biases, strict=True):
        assert all(torch.equal(w[0], w[i]) and torch.equal(b[0], b[i]) for i in range(1, 3))
    assert not torch.equal(shared.alphas[0], shared.alphas[1])  # alphas stay per sample
    x = image(shape[1:], seed=19).expand(shape)  # three identical images
    shared.alphas = torch.full((3,), 0.7)
    out = reference_apply(x, shared)
    assert torch.equal(out[0], out[1]) and torch.equal(out[0], out[2])
    own = draw(shape, (1, 3), per_sample=True, seed=18)
    own.alphas = torch.full((3,), 0.7)
    out = reference_apply(x, own)
    assert rel(out[0], out[1]) > 1e-3
