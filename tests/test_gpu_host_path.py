"""GPU checks of the host path (bench/gpu.sh runs them first): the kernel's own draw against the float64 reference
of the same seed, no synchronization in a call, CUDA-graph capture with a fresh network each replay, and
``torch.compile(fullgraph=True)`` with the kernel."""
import pytest
import torch

import fedgin
from fedgin import GIN, GINParams, draw, gin, gin_views, make_config, reference_apply, warm_up
from fedgin.augment.gin_ipa import GINIPA, GINAugmentation

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
              pytest.mark.usefixtures("no_tf32")]
F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16
TOL = {F32: 1e-5, BF16: 2e-2, F16: 2e-3}  # max error over max |reference|, as tests/test_kernels.py



def image(shape, dtype=F32):
    return ((torch.rand(shape, device="cuda", generator=torch.Generator("cuda").manual_seed(1)) + 0.5) * 50).to(dtype)


@pytest.mark.parametrize("dtype", [F32, BF16, F16])
@pytest.mark.parametrize("shape, config", [((32, 3, 192, 192), {}), ((4, 1, 64, 256), {"per_sample": False}),
                                           ((2, 3, 64, 96, 80), {}), ((3, 4, 37, 61), {"kernel_sizes": (1, 3, 5)})])
def test_the_kernels_draw_is_the_references_on_gpu(shape, config, dtype):
    """Views drawn on the device (libdevice's log/cos: an ulp or two from NumPy's) against float64."""
    x = image(shape, dtype)
    out = gin_views(x, 2, seed=2024, **config)
    cfg = make_config(in_channels=shape[1], spatial_dims=len(shape) - 2, **config)
    for v in range(2):
        params = GINParams.from_seed(shape[0], cfg, 2024 + v * draw.VIEW_STRIDE, device="cuda")
        ref = reference_apply(x.double(), params)
        assert float((out[v].double() - ref).abs().max() / ref.abs().max()) <= TOL[dtype]


@pytest.mark.parametrize("call", [
    lambda x: gin(x), lambda x: GIN(in_channels=3)(x), lambda x: gin_views(x, 3, per_sample=False),
    lambda x: GINAugmentation(n_views=2).views(x, None, torch.Generator().manual_seed(0)),
    lambda x: gin(x.half()), lambda x: GINIPA().views(x, None, torch.Generator().manual_seed(0))])
def test_no_call_synchronizes(call):
    x = image((8, 3, 96, 96))
    warm_up(x)
    warm_up(x.half())
    call(x)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            call(x)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    fedgin.check_errors("cuda")


def test_a_captured_step_draws_a_fresh_network_every_replay():
    x = image((4, 3, 64, 64))
    augment = GIN(in_channels=3)
    warm_up(x, layer_kernel_sizes=(3, 3, 3, 3))  # what a capture launches: the pool's largest sizes
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        augment(x)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = augment(x)
    outs = []
    for _ in range(3):
        graph.replay()
        outs.append(out.clone())
    torch.cuda.synchronize()
    assert not torch.equal(outs[0], outs[1]) and not torch.equal(outs[1], outs[2])
    for o in outs:  # each a GIN of x: the norm of every sample kept
        assert torch.allclose(o.flatten(1).norm(dim=1), x.flatten(1).norm(dim=1), rtol=1e-4)


def test_non_finite_input_is_reported_without_a_sync():
    x = image((4, 3, 32, 32))
    x[2, 1, 5, 5] = float("inf")
    fedgin.check_errors("cuda")
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = gin(x)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    with pytest.raises(ValueError, match="in 1 sample"):
        fedgin.check_errors("cuda")
    assert torch.isfinite(out[0]).all() and not torch.isfinite(out[2]).all()


def test_compiles_with_the_kernel_without_a_graph_break():
    net = torch.nn.Conv2d(3, 2, 3, padding=1).cuda()
    augment = GIN(in_channels=3)
    compiled = torch.compile(lambda x: net(augment(x)).square().mean(), fullgraph=True)
    x = image((4, 3, 32, 32))
    a, b = compiled(x), compiled(x)
    assert torch.isfinite(a) and not torch.equal(a, b)
