"""The comparison augmentations of fedgin.augment: interface, determinism, and each method's defining property."""
import importlib
import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from monai.networks.nets import UNet
from torch import nn

from fedgin import GINParams, gin_apply, make_config
from fedgin.augment import (
    AUGMENTATIONS,
    FMAug,
    HighFreqReconstructionHead,
    ProRandConv,
    ProRandConvBlock,
    RaffeSDG,
    RandConv,
    aggregate_dsbn,
    butterworth_gain,
    butterworth_highpass,
    convert_to_dsbn,
    deformable_conv,
    dsbn_state_keys,
    gin_ipa_views,
    high_frequency_loss,
    high_frequency_target,
    ipa_mask,
    kl_consistency,
    make_augmentation,
    mix_mask,
    random_conv,
    semantic_random_conv,
    set_domain,
    use_domain,
)
from fedgin.augment.dsbn import DomainSpecificBatchNorm2d, DomainSpecificNorm
from fedgin.augment.frequency import CUTOFF_RATIOS, cutoff_index, minmax01, percentile_normalize
from fedgin.augment.masks import bspline_kernel_1d


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def images(shape, seed=0, dtype=torch.float32):
    return torch.randn(shape, generator=gen(seed)).to(dtype)


def labels(shape, seed=0, n_classes=3):
    return torch.randint(0, n_classes, (shape[0], 1, *shape[2:]), generator=gen(seed))


def as_tuple(out):
    return out if isinstance(out, tuple) else (out,)


# ---------------------------------------------------------------- interface


SHAPES = [(2, 3, 24, 20), (2, 1, 6, 10, 12)]


@pytest.mark.parametrize("shape", SHAPES, ids=["2d", "3d"])
@pytest.mark.parametrize("name", sorted(AUGMENTATIONS))
def test_shape_dtype_and_determinism(name, shape):
    aug = make_augmentation(name)
    x, lab = images(shape), labels(shape)
    first = as_tuple(aug(x, label=lab, generator=gen(7)))
    again = as_tuple(aug(x, label=lab, generator=gen(7)))
    other = as_tuple(aug(x, label=lab, generator=gen(8)))
    assert len(first) == aug.n_views
    for a, b, c in zip(first, again, other, strict=True):
        assert a.shape == x.shape and a.dtype == x.dtype and a.device == x.device
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        if name != "none":
            assert not torch.equal(a, c), "another seed must give another augmentation"
    assert torch.equal(x, images(shape)), "the input must not be modified"


@pytest.mark.parametrize("name", sorted(AUGMENTATIONS))
def test_float64_in_float64_out(name):
    x = images((1, 3, 16, 16), dtype=torch.float64)
    for out in as_tuple(make_augmentation(name)(x, label=labels(x.shape), generator=gen(1))):
        assert out.dtype == torch.float64 and out.shape == x.shape


def test_n_views_are_independent_draws():
    x = images((2, 3, 16, 16))
    views = make_augmentation("randconv", n_views=3)(x, generator=gen(0))
    assert len(views) == 3 and not torch.equal(views[0], views[1])


@pytest.mark.parametrize("name,options,message", [
    ("nope", {}, "unknown augmentation 'nope'"),
    ("randconv", {"kernel": 3}, "unknown option(s) ['kernel'] for augmentation 'randconv'"),
    ("gin", {"in_channels": 1}, "unknown option(s) ['in_channels']"),
    ("gin_ipa", {"n_views": 2}, "unknown option(s) ['n_views']"),
    ("randconv", {"kernel_sizes": (2, 3)}, "odd positive integers"),
    ("randconv", {"identity_prob": 1.5}, "identity_prob must be in [0, 1]"),
    ("randconv", {"n_views": 0}, "n_views must be an integer >= 1"),
    ("pro_randconv", {"max_repeats": 0}, "max_repeats must be an integer >= 1"),
    ("pro_randconv", {"kernel_size": 4}, "kernel_size must be an odd positive integer"),
    ("fmaug", {"masks": ("patch", "blob")}, "masks must be a non-empty list"),
    ("fmaug", {"orders": ()}, "orders must be a non-empty list"),
    ("raffesdg", {"identity_fraction": 1.0}, "identity_fraction must be in [0, 1)"),
    ("gin_ipa", {"spacing": 0}, "spacing must be an integer >= 1"),
    ("gin", {"n_layers": 1}, "n_layers must be >= 2"),
    ("gin", {"backend": "cuda"}, "unknown GIN backend"),
    ("semantic_randconv", {"sigma": 0.0}, "sigma must be > 0"),
])
def test_bad_configuration_is_rejected(name, options, message):
    with pytest.raises(ValueError) as err:
        make_augmentation(name, **options)
    assert message in str(err.value)


def test_bad_inputs_are_rejected():
    aug = make_augmentation("randconv")
    with pytest.raises(TypeError, match="floating point"):
        aug(torch.zeros(1, 3, 8, 8, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        aug(torch.zeros(3, 8, 8))
    sem = make_augmentation("semantic_randconv")
    x = images((2, 3, 8, 8))
    with pytest.raises(ValueError, match="needs the label map"):
        sem(x)
    with pytest.raises(ValueError, match="does not match the images"):
        sem(x, label=torch.zeros(2, 1, 8, 9, dtype=torch.long))
    with pytest.raises(ValueError, match="integer class indices"):
        sem(x, label=torch.full((2, 1, 8, 8), 0.5))
    with pytest.raises(ValueError, match="n_classes is 2"):
        make_augmentation("semantic_randconv", n_classes=2)(x, label=torch.full((2, 8, 8), 2))


@pytest.mark.parametrize("name", ["gin", "gin_ipa"])
def test_gin_views_check_the_batch_for_non_finite_values_once(name, monkeypatch):
    """The views are one call: one finiteness check a batch (on the CPU; on a GPU none, the kernel counts), and a NaN
    is still named."""
    gin_module = importlib.import_module("fedgin.gin")  # the package's ``gin`` is the function
    checks = []
    check = gin_module.check_finite_on_cpu
    monkeypatch.setattr(gin_module, "check_finite_on_cpu", lambda x, on: (checks.append(on), check(x, on))[1])
    aug = make_augmentation(name, n_views=3) if name == "gin" else make_augmentation(name)
    x = images((2, 3, 16, 16))
    views = aug(x, generator=gen(0))
    assert len(views) == 3 and checks == [True]
    x[1, 2, 3, 4] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        aug(x, generator=gen(0))


# ---------------------------------------------------------------- GIN-IPA


def total_variation(m):
    dims = range(2, m.dim())
    return sum(m.diff(dim=d).abs().mean() for d in dims)


@pytest.mark.parametrize("shape", [(3, 64, 48), (2, 20, 24, 28)], ids=["2d", "3d"])
def test_ipa_mask_spans_zero_to_one_per_sample_and_is_smooth(shape):
    m = ipa_mask(shape, gen(0))
    assert m.shape == (shape[0], 1, *shape[1:]) and m.dtype == torch.float32
    flat = m.flatten(1)
    torch.testing.assert_close(flat.amin(1), torch.zeros(shape[0]), rtol=0, atol=1e-6)
    torch.testing.assert_close(flat.amax(1), torch.ones(shape[0]), rtol=0, atol=1e-6)
    noise = torch.rand(m.shape, generator=gen(1))
    assert total_variation(m) < 0.1 * total_variation(noise)
    assert not torch.equal(m[0], m[1]), "each sample draws its own mask"


@pytest.mark.parametrize("spacing,order", [(24, 2), (5, 3), (4, 0)])
def test_bspline_kernel_is_a_partition_of_unity(spacing, order):
    k = bspline_kernel_1d(spacing, order)
    assert k.numel() == (order + 1) * (spacing - 1) + 1
    padded = F.pad(k, (0, (-k.numel()) % spacing))
    torch.testing.assert_close(padded.reshape(-1, spacing).sum(0), torch.ones(spacing, dtype=k.dtype))


def test_gin_ipa_views_blend_two_gin_draws_with_complementary_masks():
    x = images((2, 3, 40, 36))
    v1, v2, v3 = gin_ipa_views(x, gen(5))
    g = gen(5)  # replay the draws in their documented order: the views' seed, then the mask
    seed = int(torch.randint(0, 2**62, (1,), generator=g))
    cfg = make_config(in_channels=3, spatial_dims=2)
    g1, g2, g3 = (gin_apply(x, GINParams.from_seed(2, cfg, seed + v * 2**31)) for v in range(3))
    m = ipa_mask((2, 40, 36), g)
    torch.testing.assert_close(v1 + v2, g1 + g2)
    torch.testing.assert_close(v1, m * g1 + (1 - m) * g2)
    torch.testing.assert_close(v2, (1 - m) * g1 + m * g2)
    torch.testing.assert_close(v3, g3, rtol=0, atol=0)
    assert not torch.allclose(v1, v2)


# ---------------------------------------------------------------- RandConv


def test_random_conv_with_alpha_zero_is_the_identity():
    x = images((2, 3, 12, 12))
    w = torch.randn(3, 3, 5, 5, generator=gen(1))
    torch.testing.assert_close(random_conv(x, w, alpha=0.0), x, rtol=0, atol=0)
    torch.testing.assert_close(random_conv(x, w, alpha=1.0), F.conv2d(x, w, padding=2))


def fitted_pixel_map(x, out):
    """The C x C matrix W with out[:, :, p] = W x[:, :, p] at every pixel (least squares) and its residual."""
    c = x.shape[1]
    a = x.double().movedim(1, -1).reshape(-1, c)
    b = out.double().movedim(1, -1).reshape(-1, c)
    sol = torch.linalg.lstsq(a, b).solution
    return sol.T, (a @ sol - b).abs().max()


@pytest.mark.parametrize("mixing", [False, True])
def test_1x1_randconv_is_a_per_pixel_linear_map(mixing):
    x = images((2, 3, 10, 10))
    out = RandConv(kernel_sizes=(1,), mixing=mixing)(x, generator=gen(2))
    _, residual = fitted_pixel_map(x, out)
    assert residual < 1e-5
    wide = RandConv(kernel_sizes=(3,), mixing=mixing)(x, generator=gen(2))
    assert fitted_pixel_map(x, wide)[1] > 1e-2, "a 3x3 kernel is not a per-pixel map"


def test_randconv_weights_are_kaiming_normal_with_fan_in():
    x = images((1, 3, 8, 8))
    entries = torch.cat([fitted_pixel_map(x, RandConv(kernel_sizes=(1,), mixing=False)(x, generator=gen(s)))[0]
                         .flatten() for s in range(150)])
    assert abs(float(entries.std()) - 1 / np.sqrt(3)) < 0.05 * (1 / np.sqrt(3)) + 0.02
    assert abs(float(entries.mean())) < 0.05


def test_randconv_identity_prob_one_returns_the_input():
    x = images((2, 3, 8, 8))
    torch.testing.assert_close(RandConv(identity_prob=1.0)(x, generator=gen(0)), x, rtol=0, atol=0)


# ---------------------------------------------------------------- Pro-RandConv


@pytest.mark.parametrize("shape", [(2, 2, 9, 11), (1, 2, 5, 6, 7)], ids=["2d", "3d"])
def test_deformable_conv_with_zero_offsets_is_the_zero_padded_conv(shape):
    x = images(shape)
    dims = len(shape) - 2
    w = torch.randn(3, 2, *(3,) * dims, generator=gen(1))
    offsets = torch.zeros(shape[0], 3 ** dims, dims, *shape[2:])
    conv = F.conv2d if dims == 2 else F.conv3d
    torch.testing.assert_close(deformable_conv(x, w, offsets), conv(x, w, padding=1), rtol=1e-5, atol=1e-5)


def test_deformable_conv_offsets_shift_along_the_named_axis():
    x = images((1, 1, 8, 9))
    w = torch.randn(1, 1, 3, 3, generator=gen(2))
    offsets = torch.zeros(1, 9, 2, 8, 9)
    offsets[:, :, 1] = 1.0  # every tap one voxel further along W
    full = F.conv2d(F.pad(x, (2, 2, 2, 2)), w)  # full[i, j] = sum_t w[t] x[(i, j) + t - (2, 2)], zero outside
    expected = full[..., 1:9, 2:11]  # sum_t w[t] x[p + t - (1, 1) + (0, 1)]
    torch.testing.assert_close(deformable_conv(x, w, offsets), expected, rtol=1e-5, atol=1e-5)


def test_pro_randconv_output_is_in_the_tanh_range_and_repeats_are_in_range():
    x = 100 * images((2, 3, 12, 12))
    aug = ProRandConv(max_repeats=3)
    seen = set()
    for seed in range(40):
        block = aug.draw(x, gen(seed))
        assert 1 <= block.repeats <= 3
        seen.add(block.repeats)
    assert seen == {1, 2, 3}
    out = aug(x, generator=gen(0))
    assert out.abs().max() <= 1.0 and out.std() > 0


def test_pro_randconv_repeats_the_same_block():
    x = images((2, 2, 10, 10))
    block = ProRandConv().draw(x, gen(3))
    once = ProRandConvBlock(block.weight, block.offsets, block.gamma, block.beta, 1)
    twice = ProRandConvBlock(block.weight, block.offsets, block.gamma, block.beta, 2)
    torch.testing.assert_close(ProRandConv.apply(x, twice), ProRandConv.apply(ProRandConv.apply(x, once), once))


# ---------------------------------------------------------------- FMAug / RaffeSDG


@pytest.mark.parametrize("shape", [(1, 2, 16, 20), (1, 1, 6, 8, 10)], ids=["2d", "3d"])
@pytest.mark.parametrize("d0,order", [(1, 1), (3, 2), (5, 3)])
def test_butterworth_highpass_scales_each_frequency_by_its_documented_gain(shape, d0, order):
    x = images(shape, dtype=torch.float64) + 2.0
    dims = tuple(range(2, len(shape)))
    y = butterworth_highpass(x, d0, order)
    ratio = torch.fft.fftn(y, dim=dims) / torch.fft.fftn(x, dim=dims)
    gain = butterworth_gain(shape[2:], d0, order)
    torch.testing.assert_close(ratio, gain.to(ratio.dtype).expand_as(ratio), rtol=1e-9, atol=1e-9)
    assert float(gain.flatten()[0]) == pytest.approx(1 / (1 + d0 ** (2 * order)))  # the DC keeps this share
    torch.testing.assert_close(y.mean(dims), x.mean(dims) / (1 + d0 ** (2 * order)))
    assert bool((gain[gain > 0] <= 1).all()) and bool((gain.flatten()[1:] > gain.flatten()[0]).all())


def test_fmaug_cutoff_bank_matches_the_original():
    assert len(CUTOFF_RATIOS) == 12
    assert CUTOFF_RATIOS[0] == 0.0 and CUTOFF_RATIOS[-1] == pytest.approx(0.1)
    assert cutoff_index(0.1, (512, 512)) == 25 and cutoff_index(0.0, (512, 512)) == 1


def test_percentile_normalize_maps_the_3rd_and_97th_percentiles_to_0_and_1():
    y = images((2, 2, 20, 20)).abs()
    out = percentile_normalize(y)
    for b, c in itertools.product(range(2), range(2)):
        q = np.trunc(y[b, c].numpy().astype(np.float64) * 256) / 256
        lo, hi = np.percentile(q, 3), np.percentile(q, 97)
        np.testing.assert_allclose(out[b, c].numpy(), (y[b, c].numpy() - lo) / (hi - lo), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cls,scale", [(FMAug, 1.0), (RaffeSDG, 2.0)])
def test_fmaug_with_one_filter_is_the_normalized_magnitude_of_the_highpass(cls, scale):
    x = images((2, 3, 20, 24))
    aug = cls(cutoff_ratios=(0.3,), orders=(2,), identity_fraction=0.0)
    d0 = cutoff_index(0.3, (20, 24))
    expected = percentile_normalize(butterworth_highpass(minmax01(x).double(), d0, 2).abs())
    torch.testing.assert_close(aug(x, generator=gen(4)).double(), scale * expected - (scale - 1),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [(3, 1, 20, 24), (2, 2, 6, 8, 10)], ids=["2d", "3d"])
@pytest.mark.parametrize("cls,scale", [(FMAug, 1.0), (RaffeSDG, 2.0)])
def test_frequency_methods_read_the_test_time_highpass_at_evaluation(cls, scale, shape):
    """The originals' network reads only high-passed images: at test time through a fixed Butterworth filter
    (cutoff ratio 0.005, order 1: d0 = 1 at these sizes, so the DC keeps half), normalized as a training view."""
    x = images(shape, dtype=torch.float32) * 300 - 100
    out = cls().eval_input(x)
    expected = percentile_normalize(butterworth_highpass(minmax01(x).double(), 1, 1).abs())
    assert out.dtype == x.dtype and out.shape == x.shape and torch.equal(out, cls().eval_input(x))
    torch.testing.assert_close(out.double(), scale * expected - (scale - 1), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(out, scale * minmax01(x) - (scale - 1), atol=1e-2)  # not the image itself


@pytest.mark.parametrize("method", sorted(set(AUGMENTATIONS) - {"fmaug", "raffesdg"}))
def test_other_methods_read_the_image_at_evaluation(method):
    x = images((2, 1, 12, 12))
    options = {"n_classes": 3} if AUGMENTATIONS[method].needs_label else {}
    assert make_augmentation(method, **options).eval_input(x) is x


def test_fmaug_blends_two_filtered_images_with_a_mask():
    x = images((2, 1, 24, 24))
    out = FMAug(masks="grid")(x, generator=gen(0))
    g = gen(0)
    aug = FMAug(masks="grid")
    y1, y2 = aug.filtered(minmax01(x), g), aug.filtered(minmax01(x), g)
    m = mix_mask("grid", (2, 24, 24))
    torch.testing.assert_close(out, m * y1 + (1 - m) * y2)


@pytest.mark.parametrize("kind", ["patch", "grid", "smooth"])
def test_mix_masks_are_in_unit_range(kind):
    m = mix_mask(kind, (3, 30, 25), gen(0))
    assert m.shape == (3, 1, 30, 25) and m.min() >= 0 and m.max() <= 1 and m.max() > m.min()


def test_high_frequency_target_head_and_loss():
    x = images((2, 3, 32, 32))
    target = high_frequency_target(x)
    assert target.shape == x.shape and target.abs().max() <= 1
    torch.testing.assert_close(high_frequency_target(torch.full((1, 1, 16, 16), 3.0)), torch.zeros(1, 1, 16, 16))
    torch.testing.assert_close(high_frequency_target(5 * x + 2), target, rtol=1e-4, atol=1e-5)  # scale-free
    head = HighFreqReconstructionHead(8, 3)
    pred = head(torch.randn(2, 8, 32, 32))
    assert pred.shape == x.shape and pred.abs().max() < 1
    loss = high_frequency_loss(pred, x)
    loss.backward()
    assert loss > 0 and all(p.grad is not None for p in head.parameters())
    assert high_frequency_loss(target, x) == 0


@pytest.mark.parametrize("conv", [
    nn.ConvTranspose2d(12, 7, 3, stride=2, padding=1, output_padding=1),  # MONAI UNet's last layer
    nn.ConvTranspose3d(6, 4, 4, stride=2, padding=1),  # the original's h_upconv geometry, in 3D
    nn.Conv2d(12, 7, 1),
    nn.Conv3d(6, 4, 3, padding=1),
])
def test_reconstruction_head_mirrors_the_final_convolution(conv):
    feats = torch.randn(2, conv.in_channels, *(9,) * len(conv.kernel_size), generator=gen(0))
    head = HighFreqReconstructionHead.mirroring(conv, 3)
    pred = head(feats)
    assert type(head.conv) is type(conv) and head.conv.out_channels == 3
    assert pred.shape[2:] == conv(feats).shape[2:] and pred.shape[:2] == (2, 3) and pred.abs().max() < 1


@pytest.mark.parametrize("conv", [nn.Conv2d(4, 2, 3, dilation=2), nn.Conv2d(4, 2, 3, groups=2),
                                  nn.Conv2d(4, 2, 3, padding=1, padding_mode="reflect"), nn.Linear(4, 2)])
def test_reconstruction_head_rejects_what_it_cannot_mirror(conv):
    with pytest.raises(ValueError, match="needs a plain convolution"):
        HighFreqReconstructionHead.mirroring(conv, 1)


# ---------------------------------------------------------------- consistency loss


def test_kl_consistency():
    a = torch.randn(2, 4, 5, 5, generator=gen(0))
    b = torch.randn(2, 4, 5, 5, generator=gen(1))
    assert kl_consistency([a, a.clone(), a + 3.0]) == pytest.approx(0.0, abs=1e-6)  # softmax is shift-invariant
    p, q = F.softmax(a, 1), F.softmax(b, 1)
    m = (p + q) / 2
    forward = ((p * (p / m).log()).sum(1).mean() + (q * (q / m).log()).sum(1).mean()) / 2
    reverse = ((m * (m / p).log()).sum(1).mean() + (m * (m / q).log()).sum(1).mean()) / 2
    torch.testing.assert_close(kl_consistency([a, b]), forward)
    torch.testing.assert_close(kl_consistency([a, b], reverse=True), reverse)
    with pytest.raises(ValueError, match="at least two views"):
        kl_consistency([a])


# ---------------------------------------------------------------- DSBN


def small_unet(norm="batch"):
    torch.manual_seed(0)
    return UNet(spatial_dims=2, in_channels=1, out_channels=2, channels=(4, 8), strides=(2,), num_res_units=1,
                norm=norm)


def test_convert_to_dsbn_replaces_every_batchnorm():
    model = small_unet()
    n_bn = sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    convert_to_dsbn(model, 2)
    layers = [m for m in model.modules() if isinstance(m, DomainSpecificNorm)]
    assert len(layers) == n_bn > 0 and all(layer.n_domains == 2 for layer in layers)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) and not isinstance(p, torch.nn.ModuleList)
                   for p in model.modules() for m in p.children())
    with pytest.raises(ValueError, match="already has domain-specific"):
        convert_to_dsbn(model, 2)
    with pytest.raises(ValueError, match="no BatchNorm or affine InstanceNorm"):
        convert_to_dsbn(small_unet("instance"), 2)


def test_dsbn_keeps_separate_statistics_per_domain():
    model = convert_to_dsbn(small_unet(), 2).train()
    with pytest.raises(RuntimeError, match="no domain selected"):
        model(torch.zeros(2, 1, 16, 16))
    ct, mr = images((4, 1, 16, 16)), 50 + 10 * images((4, 1, 16, 16), seed=1)
    first = next(m for m in model.modules() if isinstance(m, DomainSpecificNorm))
    with use_domain(model, 0):
        model(ct)
    mean1_before = first.norms[1].running_mean.clone()
    assert torch.equal(mean1_before, torch.zeros_like(mean1_before)), "domain 1 untouched by domain 0's batch"
    with use_domain(model, 1):
        model(mr)
    assert first.domain is None, "use_domain restores the previous choice"
    assert first.norms[1].running_mean.abs().max() > 10 * first.norms[0].running_mean.abs().max()
    assert int(first.norms[0].num_batches_tracked) == 1 == int(first.norms[1].num_batches_tracked)
    with pytest.raises(ValueError, match=r"domain must be an integer in \[0, 2\)"):
        set_domain(model, 2)
    layer = DomainSpecificBatchNorm2d(4, 3)
    assert layer.n_domains == 3 and isinstance(layer.norms[2], torch.nn.BatchNorm2d)


def test_dsbn_state_keys_name_every_domain_specific_entry():
    model = convert_to_dsbn(small_unet(), 2)
    keys = dsbn_state_keys(model)
    state = model.state_dict()
    assert set(keys) <= set(state) and set(keys.values()) == {0, 1}
    assert all(f".norms.{d}." in k for k, d in keys.items())
    assert not any("conv" in k and "norms" not in k for k in keys), "conv weights are shared"


@pytest.mark.parametrize("as_numpy", [False, True])
def test_aggregate_dsbn_never_averages_statistics_across_modalities(as_numpy):
    model = convert_to_dsbn(small_unet(), 2)
    keys = dsbn_state_keys(model)
    base = model.state_dict()
    domains, weights = [0, 0, 1, 1], [1.0, 3.0, 2.0, 2.0]
    states = []
    def offset(site, key):  # what site adds to every entry; counters (integers) get whole numbers
        return site + 0.5 if base[key].is_floating_point() else site

    for site, d in enumerate(domains):
        state = {}
        for k, v in base.items():
            if k in keys and keys[k] != d:
                v = torch.full_like(v, 10 ** 6)  # another modality's copy at this site: must never leak in
            else:
                v = v + offset(site, k)
            state[k] = v.numpy() if as_numpy else v
        states.append(state)
    out = aggregate_dsbn(states, weights, domains, keys)
    for k, v in base.items():
        members = [i for i, d in enumerate(domains) if d == keys[k]] if k in keys else range(4)
        total = sum(weights[i] for i in members)
        expected = v.double() + sum(weights[i] / total * offset(i, k) for i in members)
        if not v.is_floating_point():
            expected = expected.round()
        got = torch.as_tensor(out[k]).double()
        torch.testing.assert_close(got, expected)
        assert torch.as_tensor(out[k]).dtype == base[k].dtype
        assert float(got.abs().max()) < 10 ** 5, f"{k} mixed in another modality's statistics"
    with pytest.raises(ValueError, match="site domains"):
        aggregate_dsbn(states, weights, [0, 0, 1, 2], keys)
    with pytest.raises(ValueError, match="4 states, 3 weights"):
        aggregate_dsbn(states, weights[:3], domains, keys)


# ---------------------------------------------------------------- semantic-aware random convolution


def test_semantic_randconv_changes_only_near_the_relabelled_region():
    x = images((2, 3, 40, 40))
    lab = torch.zeros(2, 1, 40, 40, dtype=torch.long)
    lab[:, :, 5:20, 5:25] = 1
    lab[:, :, 25:35, 20:35] = 2
    changed = lab.clone()
    changed[:, :, 28:32, 24:28] = 1
    sigma = 1.5
    a = semantic_random_conv(x, lab, gen(3), n_classes=3, sigma=sigma)
    b = semantic_random_conv(x, changed, gen(3), n_classes=3, sigma=sigma)
    radius = int(4 * sigma + 0.5)  # MONAI's Gaussian kernel half-width at truncation 4 sigma
    region = (lab != changed).float()
    near = F.max_pool2d(region, 2 * radius + 1, stride=1, padding=radius) > 0
    diff = (a - b).abs().amax(1, keepdim=True)
    assert diff[~near].max() == 0
    assert diff[region > 0].min() > 0


def test_semantic_randconv_with_one_class_is_that_class_gin():
    x = images((2, 3, 16, 16))
    out = semantic_random_conv(x, torch.zeros(2, 16, 16, dtype=torch.long), gen(2), n_classes=2)
    params = GINParams.draw_config(2, make_config(in_channels=3), generator=gen(2))
    torch.testing.assert_close(out, gin_apply(x, params))


# ---------------------------------------------------------------- devices


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("name", sorted(AUGMENTATIONS))
def test_same_seed_gives_the_same_augmentation_on_cpu_and_cuda(name):
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    x, lab = images((2, 3, 32, 32)), labels((2, 3, 32, 32))
    aug = make_augmentation(name, backend="reference") if "gin" in name or "semantic" in name \
        else make_augmentation(name)
    cpu = as_tuple(aug(x, label=lab, generator=gen(0)))
    gpu = as_tuple(aug(x.cuda(), label=lab.cuda(), generator=gen(0)))
    for a, b in zip(cpu, gpu, strict=True):
        assert b.is_cuda
        torch.testing.assert_close(b.cpu(), a, rtol=1e-4, atol=1e-4)
