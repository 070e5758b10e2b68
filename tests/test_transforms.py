"""The MONAI transforms RandGIN / RandGINd: in Compose, seeded, prob, channel replication, types, errors."""
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, RandGaussianNoised, ScaleIntensityd
from monai.utils import MAX_SEED

from fedgin import GIN, GINParams, make_config, reference_apply
from fedgin.transforms import RandGIN, RandGINd


def array(shape, seed=0, dtype=np.float32):
    return (np.random.default_rng(seed).random(shape) + 0.5).astype(dtype)


def norm(a):
    return float(np.linalg.norm(np.asarray(a, dtype=np.float64)))


def test_applies_gin_with_a_seed_drawn_from_its_random_state():
    img = torch.from_numpy(array((3, 9, 8)))
    out = RandGIN(prob=1.0, interm_channels=3, kernel_sizes=(1, 3)).set_random_state(seed=4)(img)
    assert isinstance(out, torch.Tensor) and out.shape == img.shape and out.dtype == img.dtype
    state = np.random.RandomState(4)
    assert state.rand() < 1.0  # the prob draw, then the network's seed
    seed = int(state.randint(MAX_SEED))
    params = GINParams.from_seed(1, make_config(in_channels=3, interm_channels=3, kernel_sizes=(1, 3)), seed)
    assert torch.equal(out, reference_apply(img[None], params)[0])
    assert abs(norm(out) - norm(img)) <= 1e-5 * norm(img)


def test_deterministic_under_set_random_state():
    img = array((1, 12, 10))
    t = RandGIN(prob=1.0, replicate_to=3)
    first = [t(img) for _ in range(3)]
    assert not np.array_equal(first[0], first[1])  # a fresh network every call
    t.set_random_state(seed=11)
    a = [t(img) for _ in range(3)]
    t.set_random_state(seed=11)
    b = [t(img) for _ in range(3)]
    assert all(np.array_equal(u, v) for u, v in zip(a, b, strict=True))
    t.set_random_state(seed=12)
    assert not np.array_equal(t(img), a[0])
    c, d = (Compose([RandGIN(prob=1.0, replicate_to=3)]).set_random_state(seed=13) for _ in range(2))
    assert np.array_equal(c(img), d(img))


def test_prob_zero_is_identity():
    img = array((2, 6, 7))
    assert RandGIN(prob=0.0)(img) is img
    t = torch.from_numpy(img)
    assert RandGIN(prob=0.0)(t) is t


def test_prob_applies_to_a_share_of_the_calls():
    img = array((1, 5, 5), seed=1)
    t = RandGIN(prob=0.3).set_random_state(seed=0)
    applied = sum(not np.array_equal(t(img), img) for _ in range(100))
    assert 15 <= applied <= 45


@pytest.mark.parametrize("prob", [0.0, 1.0])
def test_replicate_to_three_channels(prob):
    img = array((1, 7, 6, 5))
    out = RandGIN(prob=prob, replicate_to=3).set_random_state(seed=1)(img)
    assert isinstance(out, np.ndarray) and out.shape == (3, 7, 6, 5) and out.dtype == np.float32
    if prob == 0:
        assert all(np.array_equal(out[c], img[0]) for c in range(3))
    else:
        assert not np.array_equal(out[0], out[1])
        assert abs(norm(out) - np.sqrt(3) * norm(img)) <= 1e-5 * norm(out)


def test_replicate_to_passes_an_image_that_has_the_channels():
    img = array((3, 5, 6))
    assert RandGIN(prob=0.0, replicate_to=3)(img) is img
    with pytest.raises(ValueError, match="replicate_to=3 needs a 1-channel image, got 2 channels"):
        RandGIN(prob=0.0, replicate_to=3)(array((2, 5, 6)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_numpy_in_numpy_out(dtype):
    img = array((2, 6, 5, 4), dtype=dtype)
    out = RandGIN(prob=1.0).set_random_state(seed=2)(img)
    assert isinstance(out, np.ndarray) and out.dtype == dtype and out.shape == img.shape
    assert abs(norm(out) - norm(img)) <= 1e-5 * norm(img)


def test_metatensor_keeps_its_metadata():
    img = MetaTensor(torch.from_numpy(array((1, 6, 5))), meta={"filename_or_obj": "case_0.nii.gz"})
    out = RandGIN(prob=1.0, replicate_to=3)(img)
    assert isinstance(out, MetaTensor) and out.shape == (3, 6, 5)
    assert out.meta["filename_or_obj"] == "case_0.nii.gz"


def test_in_compose_dictionary_pipeline():
    """Other keys (the label) are untouched; every image key gets its own network; Compose's seed propagates."""
    data = {"image": array((1, 10, 9), seed=3), "t2": array((1, 10, 9), seed=3),
            "label": (array((1, 10, 9), seed=5) > 1).astype(np.uint8)}

    def pipeline():
        return Compose([ScaleIntensityd(keys=["image", "t2"]),
                        RandGINd(keys=["image", "t2"], prob=1.0, replicate_to=3, n_layers=3),
                        RandGaussianNoised(keys=["image", "t2"], prob=0.0)]).set_random_state(seed=21)

    a, b = pipeline()(dict(data)), pipeline()(dict(data))
    assert a["image"].shape == (3, 10, 9) and a["t2"].shape == (3, 10, 9)
    assert np.array_equal(np.asarray(a["label"]), data["label"])
    assert torch.equal(torch.as_tensor(a["image"]), torch.as_tensor(b["image"]))
    assert not torch.equal(torch.as_tensor(a["image"]), torch.as_tensor(a["t2"]))  # same input, own network
    scaled = (data["image"] - data["image"].min()) / (data["image"].max() - data["image"].min())
    assert abs(norm(a["image"]) - np.sqrt(3) * norm(scaled)) <= 1e-5 * norm(a["image"])
    c = pipeline().set_random_state(seed=22)(dict(data))
    assert not torch.equal(torch.as_tensor(a["image"]), torch.as_tensor(c["image"]))


def test_dictionary_prob_and_missing_keys():
    data = {"image": array((1, 5, 6)), "label": np.zeros((1, 5, 6), np.uint8)}
    out = RandGINd(keys=["image", "t2"], prob=0.0, replicate_to=3, allow_missing_keys=True)(data)
    assert out["image"].shape == (3, 5, 6) and np.array_equal(out["image"][2], data["image"][0])
    assert out["label"] is data["label"] and "t2" not in out
    with pytest.raises(KeyError):
        RandGINd(keys=["image", "t2"], prob=1.0)(data)


def test_as_module_has_the_same_options():
    t = RandGIN(prob=1.0, replicate_to=3, interm_channels=4, kernel_sizes=(3,), backend="reference")
    module = t.as_module(spatial_dims=3)
    assert isinstance(module, GIN) and module.backend == "reference"
    assert (module.config.in_channels, module.config.interm_channels, module.config.kernel_sizes,
            module.config.spatial_dims) == (3, 4, (3,), 3)
    assert t.as_module(in_channels=1).config.in_channels == 1
    with pytest.raises(ValueError, match="needs in_channels"):
        RandGIN().as_module()


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(layers=3), ValueError, r"unknown GIN option\(s\) \['layers'\]"),
    (dict(in_channels=3), ValueError, r"takes \['in_channels'\] from the image"),
    (dict(spatial_dims=3), ValueError, r"takes \['spatial_dims'\] from the image"),
    (dict(kernel_sizes=(2,)), ValueError, "odd and positive"),
    (dict(backend="cuda"), ValueError, "unknown GIN backend 'cuda'"),
    (dict(replicate_to=0), ValueError, "replicate_to must be >= 1"),
])
@pytest.mark.parametrize("cls", [RandGIN, lambda **kw: RandGINd(keys="image", **kw)])
def test_bad_options_fail_at_construction(cls, kwargs, error, match):
    with pytest.raises(error, match=match):
        cls(**kwargs)


@pytest.mark.parametrize("img,error,match", [
    (array((5, 6)), ValueError, r"channel-first image \[C, H, W\] or \[C, D, H, W\], got shape \(5, 6\)"),
    (array((1, 1, 5, 6, 7)), ValueError, "got shape"),
    (np.ones((1, 5, 6), np.int16), TypeError, "floating point"),
    (np.full((1, 5, 6), np.nan, np.float32), ValueError, "non-finite"),
])
@pytest.mark.parametrize("prob", [1.0, 0.0])
def test_bad_images_fail_whether_or_not_gin_fires(img, error, match, prob):
    with pytest.raises(error, match=match):
        RandGIN(prob=prob)(img)
    with pytest.raises(error, match=match):
        RandGINd(keys="image", prob=prob)({"image": img})
